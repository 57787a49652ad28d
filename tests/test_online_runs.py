"""Online runs (``dnmf fit --online``, ``MiniBatchNMF(out=...)``) read by every run command.

A real ``dnmf fit --online`` process is SIGKILLed at a commit point and continued by a
real ``dnmf resume`` process: the result must be the uninterrupted fit bit for bit.
``info``, ``export``, ``top``, ``plot`` and ``transform`` then read the run back; a
``partial_fit`` stream is read where it can be and refused in one line where it
cannot. On a real ``dnmf scheduler``/``dnmf worker`` cluster the result must not
depend on the number of workers or threads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import dnmf
from dnmf._runs import OnlineRun

ROOT = Path(__file__).resolve().parents[1]
FIT = ["-k", "3", "--online", "--batch-size", "64", "--max-iter", "4", "--seed", "0",
       "--init", "random", "--checkpoint-every", "3"]
PARAMS = dict(n_components=3, init="random", batch_size=64, max_iter=4, random_state=0,
              scheduler="threads")


def dnmf_process(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300
                 ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnmf", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def run_here(*args: str, cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    from dnmf.cli import run

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    status = run(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)


def one_error_line(proc, text: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and text in lines[-1], proc.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, proc.stderr


def kill_at(args: list[str], cwd: Path, point: str, marker: Path, env: dict | None = None,
            timeout: float = 240.0) -> None:
    """Start ``dnmf ARGS``, SIGKILL it once it stops at ``point``."""
    env = {**os.environ, **(env or {}), "DNMF_TEST_PAUSE_AT": point,
           "DNMF_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "dnmf", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"dnmf ended before {point}: {proc.stdout.read()}")
            assert time.monotonic() < deadline, f"dnmf never reached {point}"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    V = (rng.random((300, 3)) @ rng.random((3, 15)) + 0.05 * rng.random((300, 15)))
    np.save(tmp_path / "V.npy", V.astype(np.float32))
    return tmp_path


def reference(path: str, **kw) -> tuple[dnmf.MiniBatchNMF, np.ndarray]:
    est = dnmf.MiniBatchNMF(**{**PARAMS, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        W = est.fit_transform(path)
    return est, W


def assert_same_as(run: OnlineRun, est: dnmf.MiniBatchNMF, W: np.ndarray) -> None:
    np.testing.assert_array_equal(run.W, W)
    np.testing.assert_array_equal(run.H, est.components_)
    np.testing.assert_array_equal(run.A, est._components_numerator)
    np.testing.assert_array_equal(run.B, est._components_denominator)
    assert run.n_steps == est.n_steps_ and run.n_iter == est.n_iter_
    assert run.reconstruction_err == est.reconstruction_err_


def test_killed_online_fit_resumed_by_dnmf_resume_then_read_by_every_command(
        data, capsys, monkeypatch):
    # fit --online in a real process, SIGKILLed with steps 9-11 written, 6 committed
    kill_at(["fit", "V.npy", "-o", "run", *FIT], data, "online:written@9",
            data / "marker")
    run = dnmf.open_run(str(data / "run"))
    assert isinstance(run, OnlineRun) and not run.complete and run.n_steps == 6
    info = dnmf_process("info", "run", "--json", cwd=data)
    assert info.returncode == 0, info.stderr
    record = json.loads(info.stdout)
    assert (record["kind"], record["steps"], record["epochs"], record["complete"]) == \
        ("online", 6, 2, False)
    assert record["batches_per_epoch"] == 5 and record["loss"] == run.loss_history[-1]
    assert record["source"]["location"] == str(data / "V.npy")  # read in place
    assert not (data / "run.input.zarr").exists()

    resumed = dnmf_process("resume", "run", cwd=data)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the online run run at step 6" in resumed.stderr
    assert "after 20 batches (4 passes)" in resumed.stdout, resumed.stdout
    est, W = reference(str(data / "V.npy"))
    run = dnmf.open_run(str(data / "run"))
    assert run.complete and run.stop_reason == "max_iter"
    assert_same_as(run, est, W)
    # the smoothed cost recorded at every commit: steps 3, 6, ... and the last
    assert run.history_steps == [3, 6, 9, 12, 15, 18, 20]

    # info: steps, epochs, the cost and the final error, in text and JSON
    text = run_here("info", "run", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert text.returncode == 0, text.stderr
    assert "20 of 20 batches: epoch 4 of max_iter 4" in text.stdout
    assert f"reconstruction error {est.reconstruction_err_:.6g}" in text.stdout
    assert "complete: reached max_iter" in text.stdout
    record = json.loads(run_here("info", "run", "--json", cwd=data, capsys=capsys,
                                 monkeypatch=monkeypatch).stdout)
    assert record["reconstruction_err"] == est.reconstruction_err_
    assert record["steps"] == 20 and record["epochs"] == 4

    # a second resume: complete, nothing refitted
    again = run_here("resume", "run", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert again.returncode == 0 and "already complete" in again.stdout

    # export: the run's W and H
    exp = run_here("export", "run", "--out", "ex", cwd=data, capsys=capsys,
                   monkeypatch=monkeypatch)
    assert exp.returncode == 0, exp.stderr
    np.testing.assert_array_equal(np.load(data / "ex" / "W.npy"), W)
    np.testing.assert_array_equal(np.load(data / "ex" / "H.npy"), est.components_)

    # top: the largest entries of each row of H
    top = run_here("top", "run", "--n", "4", "--json", cwd=data, capsys=capsys,
                   monkeypatch=monkeypatch)
    assert top.returncode == 0, top.stderr
    got = [[f["index"] for f in c["features"]] for c in json.loads(top.stdout)["components"]]
    want = np.argsort(-est.components_.astype(np.float64), axis=1, kind="stable")[:, :4]
    assert got == want.tolist()

    # plot: the cost curve, H's top features, W's columns
    pytest.importorskip("matplotlib")
    plot = run_here("plot", "run", "--loss", "loss.png", "--top", "top.png", "--basis",
                    "basis.png", "--of", "W", "--image-shape", "20x15", cwd=data,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert plot.returncode == 0, plot.stderr
    for name in ("loss.png", "top.png", "basis.png"):
        assert (data / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # transform: W of new rows with the run's H fixed, as the estimator computes it
    new = np.load(data / "V.npy")[:50] * 1.5
    np.save(data / "new.npy", new)
    tr = run_here("transform", "run", "new.npy", "--out", "Wnew.zarr", cwd=data,
                  capsys=capsys, monkeypatch=monkeypatch)
    assert tr.returncode == 0, tr.stderr
    np.testing.assert_allclose(zarr.open_array(str(data / "Wnew.zarr"))[...],
                               est.transform(new), rtol=1e-6, atol=1e-7)
    bad = run_here("transform", "run", "new.npy", "--out", "W2.zarr", "--panel-size",
                   "1MiB", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    one_error_line(bad, "--panel-size does not apply to the online run")


def test_extending_an_online_run_equals_the_longer_fit(data):
    path = str(data / "V.npy")
    out = str(data / "run")
    reference(path, max_iter=2, out=out)
    run = dnmf.resume(out, max_iter=4)
    assert isinstance(run, OnlineRun) and run.n_steps == 20 and run.params["max_iter"] == 4
    est, W = reference(path)
    assert_same_as(run, est, W)
    # the same estimator rebuilt from the run transforms as the fitted one does
    X = np.load(path)
    np.testing.assert_array_equal(run.to_estimator().transform(X), est.transform(X))


def test_a_partial_fit_stream_is_read_where_it_can_be(data, capsys, monkeypatch):
    X = np.load(data / "V.npy")
    stream = dnmf.MiniBatchNMF(3, init="random", random_state=0, out=str(data / "s"))
    for a in range(0, 300, 100):
        stream.partial_fit(X[a:a + 100])
    info = run_here("info", "s", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert info.returncode == 0, info.stderr
    assert "3 partial_fit calls" in info.stdout and "partial_fit stream" in info.stdout
    exp = run_here("export", "s", "--out", "ex", cwd=data, capsys=capsys,
                   monkeypatch=monkeypatch)
    assert exp.returncode == 0 and "keeps no W" in exp.stdout
    np.testing.assert_array_equal(np.load(data / "ex" / "H.npy"), stream.components_)
    assert not (data / "ex" / "W.npy").exists()
    one_error_line(run_here("resume", "s", cwd=data, capsys=capsys, monkeypatch=monkeypatch),
                   "is a stream of partial_fit calls")
    with pytest.raises(dnmf.InvalidInputError, match="keeps no W"):
        dnmf.to_anndata(str(data / "s"))


# ------------------------------------------------------------------ a real cluster
def _start_cluster(d: Path, workers: int, threads: int) -> dict:
    spec = importlib.util.spec_from_file_location(
        "dnmf_cluster_local", ROOT / "cluster" / "local" / "start_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dnmf_cluster_local"] = module
    spec.loader.exec_module(module)
    info = module.start(d, workers=workers, threads_per_worker=threads,
                        memory_limit="1GiB", port=0, dashboard_port=0)
    return {"module": module, "dir": d, **info}


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="start_cluster.py is POSIX only")
@pytest.mark.heavy  # suite time; test_online's cluster and SIGKILL tests stay
def test_online_on_a_cluster_does_not_depend_on_its_threads_and_resumes_bit_for_bit(
        data):
    pytest.importorskip("distributed")
    V = np.load(data / "V.npy")
    z = zarr.create_array(str(data / "V.zarr"), shape=V.shape, chunks=(64, 15),
                          dtype=V.dtype)
    z[...] = V
    results = []
    for workers, threads in ((1, 1), (2, 2)):  # 1 and 4 worker threads
        # the same values from a Zarr array, then from the .npy read in place (the
        # workers map the file themselves)
        args = ["fit", "V.zarr" if workers == 1 else "V.npy", *FIT, "--in-flight", "3"]
        cluster = _start_cluster(data / f"cluster{workers}", workers, threads)
        sched = ["--scheduler-file", cluster["scheduler_file"]]
        try:
            out = f"run{workers}"
            proc = dnmf_process(*args, "-o", out, *sched, cwd=data)
            assert proc.returncode == 0, proc.stderr
            assert "on the Dask cluster" in proc.stderr
            results.append(dnmf.open_run(str(data / out)))
            if workers == 2:
                # killed after its commit at step 12 (rounds of 3: 0-2, 3-5, ...), with
                # steps 13-15 written; dnmf resume continues on the cluster
                kill_at([*args, "-o", "killed", *sched], data, "online:written@15",
                        data / "marker")
                assert dnmf.open_run(str(data / "killed")).n_steps == 12
                proc = dnmf_process("resume", "killed", *sched, cwd=data)
                assert proc.returncode == 0, proc.stderr
                results.append(dnmf.open_run(str(data / "killed")))
        finally:
            cluster["module"].stop(cluster["dir"])
    first = results[0]
    for other in results[1:]:
        np.testing.assert_array_equal(other.W, first.W)
        np.testing.assert_array_equal(other.H, first.H)
        np.testing.assert_array_equal(other.A, first.A)
        np.testing.assert_array_equal(other.B, first.B)
        assert other.reconstruction_err == first.reconstruction_err
        assert other.n_steps == first.n_steps == 20
    # rounds of 3 batches against one H: another path than one process, same quality
    est, _ = reference(str(data / "V.zarr"))
    assert not np.array_equal(first.H, est.components_)
    assert abs(first.reconstruction_err - est.reconstruction_err_) < \
        0.05 * est.reconstruction_err_
