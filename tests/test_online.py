"""dnmf.MiniBatchNMF beyond scikit-learn: run stores, SIGKILL and resume, streams.

The crash tests start ``online_worker.py`` (a real fit on a Zarr V on disk) in its
own process, stop it at an exact point with ``DNMF_TEST_PAUSE_AT`` or at a random
instant, SIGKILL it, and fit again with the same ``out``: the resumed fit must equal
an uninterrupted one bit for bit (W, H, the running sums, the step count, the loss).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import zarr

import dnmf
from dnmf import ConvergenceWarning, IncompatibleRunError, MiniBatchNMF

sys.path.insert(0, os.path.dirname(__file__))
from online_worker import params as worker_params

WORKER = os.path.join(os.path.dirname(__file__), "online_worker.py")
N, M = 400, 30


@pytest.fixture(scope="module")
def V_path(tmp_path_factory) -> str:
    rng = np.random.default_rng(1)
    V = (rng.random((N, 5)) @ rng.random((5, M)) + 0.1 * rng.random((N, M))).astype(np.float32)
    path = str(tmp_path_factory.mktemp("data") / "V.zarr")
    arr = zarr.create_array(store=path, shape=V.shape, chunks=(40, M), dtype=V.dtype)
    arr[...] = V
    return path


def fit_here(V_path, out=None, beta="frobenius", every=5):
    est = MiniBatchNMF(**worker_params(beta), out=out, checkpoint_every=every,
                       scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = est.fit_transform(V_path)
    return est, W


def same(a, b):
    (est_a, W_a), (est_b, W_b) = a, b
    np.testing.assert_array_equal(W_a, W_b)
    np.testing.assert_array_equal(est_a.components_, est_b.components_)
    np.testing.assert_array_equal(est_a._components_numerator, est_b._components_numerator)
    np.testing.assert_array_equal(est_a._components_denominator,
                                  est_b._components_denominator)
    assert est_a.n_steps_ == est_b.n_steps_ and est_a.n_iter_ == est_b.n_iter_
    assert est_a.reconstruction_err_ == est_b.reconstruction_err_


def kill_at(args, point, marker, timeout=120.0):
    env = dict(os.environ, DNMF_TEST_PAUSE_AT=point, DNMF_TEST_PAUSE_FILE=marker)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not os.path.exists(marker):
            if proc.poll() is not None:
                raise AssertionError(f"worker ended before {point}: {proc.stdout.read()}")
            assert time.monotonic() < deadline, f"worker never reached {point}"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def committed_step(out) -> int:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)["manifest"]["iteration"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("beta", ["frobenius",
                                  pytest.param("kullback-leibler", marks=pytest.mark.heavy)])
def test_sigkill_at_commit_points_then_resume_is_bit_identical(V_path, tmp_path, beta):
    reference = fit_here(V_path, beta=beta)
    out = str(tmp_path / "run")
    args = [sys.executable, WORKER, V_path, out, "--every", "5", "--beta", beta]
    # arrays written but no manifest yet; manifest written but not renamed; just after
    for i, (point, step) in enumerate([("online:written", 10), ("commit:manifest", 20),
                                       ("commit:done", 25)]):
        kill_at(args, f"{point}@{step}", str(tmp_path / f"marker{i}"))
        expected = step - 5 if point != "commit:done" else step
        assert committed_step(out) == expected, point
    resumed = fit_here(V_path, out=out, beta=beta)
    same(resumed, reference)
    # the run is complete: a fit with the same out reads it back without computing
    again = fit_here(V_path, out=out, beta=beta)
    same(again, reference)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_at_random_instants(V_path, tmp_path):
    reference = fit_here(V_path)
    out = str(tmp_path / "run")
    args = [sys.executable, WORKER, V_path, out, "--every", "3", "--sleep", "0.01"]
    rnd = random.Random(5)
    steps_seen = []
    for _ in range(3):
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        # wait for a commit beyond the last one seen, then a random delay
        while True:
            if proc.poll() is not None:
                break
            if os.path.exists(os.path.join(out, "manifest.json")):
                with open(os.path.join(out, "manifest.json")) as f:
                    try:
                        step = json.load(f)["manifest"]["iteration"]
                    except ValueError:
                        step = -1
                if step > (steps_seen[-1] if steps_seen else 0):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        steps_seen.append(committed_step(out))
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > 0
    same(fit_here(V_path, out=out, every=3), reference)


def test_other_parameters_are_refused(V_path, tmp_path):
    out = str(tmp_path / "run")
    fit_here(V_path, out=out)
    est = MiniBatchNMF(**{**worker_params("frobenius"), "batch_size": 60}, out=out)
    with pytest.raises(IncompatibleRunError, match="batch_size: 50 \\(run\\) vs 60 \\(now\\)"):
        est.fit(V_path)
    with pytest.raises(IncompatibleRunError, match="not of 'online'"):
        # an NMF run store is not an online run
        nmf_out = str(tmp_path / "nmf")
        dnmf.NMF(2, max_iter=3, out=nmf_out).fit(np.asarray(zarr.open_array(V_path)))
        MiniBatchNMF(**worker_params("frobenius"), out=nmf_out).fit(V_path)


def test_partial_fit_stream_commits_and_continues(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.random((40, 12)) for _ in range(8)]
    p = dict(n_components=3, init="random", random_state=0)
    whole = MiniBatchNMF(**p)
    for X in batches:
        whole.partial_fit(X)
    out = str(tmp_path / "stream")
    first = MiniBatchNMF(**p, out=out)
    for X in batches[:5]:
        first.partial_fit(X)
    # a new process would start from a new model: the stream continues from the store
    second = MiniBatchNMF(**p, out=out)
    for X in batches[5:]:
        second.partial_fit(X)
    assert second.n_steps_ == whole.n_steps_ == 8
    np.testing.assert_array_equal(second.components_, whole.components_)
    np.testing.assert_array_equal(second._components_numerator, whole._components_numerator)
    # the stream's H transforms new rows as the uninterrupted model does
    np.testing.assert_array_equal(second.transform(batches[0]), whole.transform(batches[0]))


def test_partial_fit_accepts_dask_and_zarr_batches(tmp_path):
    import dask.array as da

    rng = np.random.default_rng(1)
    X = rng.random((120, 10))
    z = zarr.create_array(store=str(tmp_path / "X.zarr"), shape=X.shape, chunks=(40, 10),
                          dtype=X.dtype)
    z[...] = X
    a = MiniBatchNMF(3, init="random", random_state=0)
    b = MiniBatchNMF(3, init="random", random_state=0)
    c = MiniBatchNMF(3, init="random", random_state=0)
    for lo in range(0, 120, 40):
        a.partial_fit(X[lo:lo + 40])
        b.partial_fit(da.from_array(X)[lo:lo + 40])
        c.partial_fit(z[lo:lo + 40])
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.components_, c.components_)


def test_bad_parameters_name_the_fix():
    X = np.ones((4, 3))
    with pytest.raises(dnmf.InvalidParameterError, match=r"'batch_size' parameter of "
                       r"MiniBatchNMF must be a positive int\. Got 0"):
        MiniBatchNMF(batch_size=0).fit(X)
    with pytest.raises(dnmf.InvalidParameterError, match="forget_factor"):
        MiniBatchNMF(forget_factor=1.5).fit(X)
    with pytest.raises(dnmf.InvalidParameterError, match="zip"):
        MiniBatchNMF(out="run.zip").fit(X)


def test_zarr_is_read_in_row_ranges_never_whole(tmp_path, monkeypatch):
    # Every read of V by a step is its batch's row range.
    from dnmf import _source

    rng = np.random.default_rng(2)
    X = rng.random((600, 20)).astype(np.float32)
    z = zarr.create_array(store=str(tmp_path / "X.zarr"), shape=X.shape, chunks=(50, 20),
                          dtype=X.dtype)
    z[...] = X
    sizes = []
    load = _source.ZarrPanel.load

    def spy(self):
        sizes.append(self.stop - self.start)
        return load(self)

    monkeypatch.setattr(_source.ZarrPanel, "load", spy)
    est = MiniBatchNMF(3, init="random", batch_size=100, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(str(tmp_path / "X.zarr"))
    # one validation panel (init="random" needs V's mean; V is small: one panel), one
    # read per step; fit makes no W and no final loss pass...
    assert est.n_steps_ == 18
    assert sizes == [600] + [100] * est.n_steps_, sizes
    # ...until reconstruction_err_ is read (one pass, blocks of 4096 rows), once
    err = est.reconstruction_err_
    assert sizes[-1] == 600 and len(sizes) == 2 + est.n_steps_
    assert est.reconstruction_err_ == err and len(sizes) == 2 + est.n_steps_


@pytest.mark.slow
def test_cluster_runs_batches_in_flight_deterministically(V_path):
    # On a cluster, P = 2 batches are in flight per round against the same H; the
    # workers read their rows from the Zarr store; the terms are folded in batch
    # order, so two fits agree exactly, and the loss is close to the one-process fit.
    from distributed import Client, LocalCluster

    params = dict(n_components=4, init="random", batch_size=50, max_iter=4, tol=0.0,
                  max_no_improvement=None, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        here = MiniBatchNMF(**params, scheduler="threads")
        W_here = here.fit_transform(V_path)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            runs = []
            for _ in range(2):
                est = MiniBatchNMF(**params, scheduler=client)
                runs.append((est.fit_transform(V_path), est))
    (W1, a), (W2, b) = runs
    np.testing.assert_array_equal(W1, W2)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert a.n_steps_ == here.n_steps_ == 32
    assert not np.array_equal(a.components_, here.components_)  # another path ...
    assert abs(a.reconstruction_err_ - here.reconstruction_err_) < 0.05 * \
        here.reconstruction_err_  # ... to about the same loss
    assert W1.shape == W_here.shape
