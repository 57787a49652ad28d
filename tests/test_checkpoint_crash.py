"""SIGKILL a fitting process at chosen instants, resume, and compare bit for bit.

Each test starts ``checkpoint_worker.py`` (a real fit on a Zarr V on disk) in its own
process. ``DNMF_TEST_PAUSE_AT`` makes dnmf._store stop that process at an exact
point (inside a panel task writing W, after H is written, with the new manifest
written to its temporary file but not yet renamed, just after the rename); the test
waits for the marker file and sends SIGKILL. After every kill the last committed
state must open and verify, and the final resumed run must equal an uninterrupted
one exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import zarr

import dnmf
from dnmf import ConvergenceWarning, StoreError

WORKER = os.path.join(os.path.dirname(__file__), "checkpoint_worker.py")
N, M, K, ROWS, MAX_ITER, EVERY = 600, 60, 4, 100, 12, 2

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


@pytest.fixture(scope="module")
def V_path(tmp_path_factory) -> str:
    rng = np.random.default_rng(1)
    V = (rng.random((N, 5)) @ rng.random((5, M)) + 0.1 * rng.random((N, M))).astype(np.float32)
    path = str(tmp_path_factory.mktemp("data") / "V.zarr")
    arr = zarr.create_array(store=path, shape=V.shape, chunks=(50, M), dtype=V.dtype)
    arr[...] = V
    return path


def reference(V_path: str, solver: str, beta: str, init: str):
    est = dnmf.NMF(K, solver=solver, beta_loss=beta, init=init, max_iter=MAX_ITER, tol=0.0,
                   random_state=7, panel_rows=ROWS, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = np.asarray(est.fit_transform(V_path))
    return W, est.components_, est.loss_history_


def worker_args(V_path, out, solver, beta, init, mode="fit") -> list[str]:
    return [sys.executable, WORKER, V_path, str(out), "--max-iter", str(MAX_ITER),
            "--every", str(EVERY), "--solver", solver, "--beta", beta, "--init", init,
            "--k", str(K), "--panel-rows", str(ROWS), "--mode", mode]


def kill_at(args: list[str], point: str, marker: str, timeout: float = 120.0) -> str:
    """Run ``args`` until it pauses at ``point``; SIGKILL it there. Returns the point."""
    env = dict(os.environ, DNMF_TEST_PAUSE_AT=point, DNMF_TEST_PAUSE_FILE=marker)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not os.path.exists(marker):
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker ended before reaching {point}: {proc.stdout.read().decode()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"worker never reached {point}")
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with open(marker) as f:
        reached = f.read().strip()
    os.unlink(marker)
    return reached


def committed(out) -> dnmf.Run:
    """The state a SIGKILL left behind: it must open and verify completely."""
    run = dnmf.open_run(out, verify=True)
    run.W.compute()
    return run


def finish_and_compare(out, ref, V_path=None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if V_path is not None and not os.path.exists(out / "manifest.json"):
            # Killed before the first commit every time: a fit starts afresh.
            dnmf.NMF(K, init="nndsvda", max_iter=MAX_ITER, tol=0.0, random_state=7,
                     panel_rows=ROWS, out=out, checkpoint_every=EVERY).fit(V_path)
        run = dnmf.resume(out, scheduler="threads")
    W_ref, H_ref, loss_ref = ref
    assert run.complete and run.iteration == MAX_ITER
    np.testing.assert_array_equal(run.W.compute(), W_ref)
    np.testing.assert_array_equal(run.H, H_ref)
    assert run.loss_history == loss_ref


@pytest.mark.parametrize(
    ("solver", "beta", "init"),
    [
        ("hals", "frobenius", "nndsvda"),
        # KL's loss lags one pass; in-process interrupts cover it in test_run.py.
        pytest.param("mu", "kullback-leibler", "random", marks=pytest.mark.heavy),
    ],
)
def test_sigkill_at_each_commit_stage_then_resume_is_bit_for_bit(tmp_path, V_path, solver,
                                                                 beta, init):
    ref = reference(V_path, solver, beta, init)
    out = tmp_path / "run"
    marker = str(tmp_path / "paused")
    fit = worker_args(V_path, out, solver, beta, init)
    cont = worker_args(V_path, out, solver, beta, init, mode="resume")

    # 1. During initialisation, inside a task writing W: nothing committed yet.
    assert kill_at(fit, "sink@0", marker) == "sink@0"
    with pytest.raises(StoreError, match="no committed state"):
        dnmf.open_run(out)

    # 2. The new manifest fsynced in its temporary file, not yet renamed.
    kill_at(fit, "commit:manifest@4", marker)
    assert [p for p in os.listdir(out) if p.startswith(".manifest.json.")]
    assert committed(out).iteration == 2

    # 3. H of the next commit written, its manifest not.
    kill_at(cont, "commit:H@6", marker)
    assert committed(out).iteration == 4

    # 4. In the middle of a pass, inside a panel task that has written its W chunk.
    kill_at(cont, "sink@7", marker)
    assert committed(out).iteration == 6

    # 5. Just after the manifest became visible.
    kill_at(cont, "commit:done@8", marker)
    run = committed(out)
    assert run.iteration == 8 and not run.complete
    assert json.loads((out / "lock.json").read_text())["pid"] != os.getpid()

    finish_and_compare(out, ref)
    assert not (out / "lock.json").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".manifest.json.")]


@pytest.mark.slow
def test_sigkill_at_random_instants_then_resume_is_bit_for_bit(tmp_path, V_path):
    ref = reference(V_path, "hals", "frobenius", "nndsvda")
    out = tmp_path / "run"
    rng = random.Random(0)
    fit = worker_args(V_path, out, "hals", "frobenius", "nndsvda")
    cont = worker_args(V_path, out, "hals", "frobenius", "nndsvda", mode="resume")
    # How long an uninterrupted worker takes, start-up included.
    t0 = time.monotonic()
    subprocess.run(worker_args(V_path, tmp_path / "timing", "hals", "frobenius", "nndsvda"),
                   check=True, capture_output=True)
    whole = time.monotonic() - t0
    kills = 0
    for _ in range(6):  # 6 rounds of kills at random instants (each ~0.3-0.9 of a fit)
        args = cont if os.path.exists(out / "manifest.json") else fit
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(0.3, 0.9) * whole)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stdout.read().decode()
            if kills:
                break
            shutil.rmtree(out)  # it outran every kill: start again, to kill it this time
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        if os.path.exists(out / "manifest.json"):
            committed(out)
    assert kills >= 1
    finish_and_compare(out, ref, V_path)
