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
@pytest.mark.parametrize("fresh", [False, True])
def test_cluster_runs_batches_in_flight_deterministically(V_path, fresh):
    # On a cluster, P = 2 batches are in flight per round against the same H; the
    # workers read their rows from the Zarr store; the terms are folded in batch
    # order, so two fits agree exactly, and the loss is close to the one-process fit.
    # (fresh: the driver keeps no W and the tasks solve each batch's W afresh.)
    from distributed import Client, LocalCluster

    params = dict(n_components=4, init="random", batch_size=50, max_iter=4, tol=0.0,
                  max_no_improvement=None, random_state=7, fresh_restarts=fresh)
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


# ---------------------------------------------- validation as read, H-only fit
def zarr_of(tmp_path, X, name="X.zarr", chunk=50):
    path = str(tmp_path / name)
    z = zarr.create_array(store=path, shape=X.shape, chunks=(chunk, X.shape[1]),
                          dtype=X.dtype)
    z[...] = X
    return path


def read_sizes(monkeypatch):
    """The row count of every read of a Zarr V (a spy on ZarrPanel.load)."""
    from dnmf import _source

    sizes = []
    load = _source.ZarrPanel.load

    def spy(self):
        sizes.append(self.stop - self.start)
        return load(self)

    monkeypatch.setattr(_source.ZarrPanel, "load", spy)
    return sizes


def clean_V(n=600, m=20, seed=4):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4)) @ rng.random((4, m)) + 0.05 * rng.random((n, m))).astype(
        np.float32)


def custom(X, k=4, seed=11):
    rng = np.random.default_rng(seed)
    return ((rng.random((X.shape[0], k)) + 0.1).astype(X.dtype),
            (rng.random((k, X.shape[1])) + 0.1).astype(X.dtype))


def online(**kw):
    return MiniBatchNMF(**{**dict(n_components=4, init="custom", batch_size=100, max_iter=2,
                                  tol=0.0, max_no_improvement=None, random_state=0,
                                  scheduler="threads"), **kw})


@pytest.mark.parametrize("bad, message", [
    (np.nan, r"NaN or infinity in rows 200-299: 1 entries \(the first at row 250, column 3\)"),
    (np.inf, r"NaN or infinity in rows 200-299: 1 entries \(the first at row 250, column 3\)"),
    (-1.0, r"Negative values .* rows 200-299: 1 entries \(the first at row 250, column 3\)"),
])
def test_a_bad_batch_found_mid_pass_names_its_rows_and_nothing_from_it_is_committed(
        tmp_path, bad, message):
    X = clean_V()
    W0, H0 = custom(X)
    X[250, 3] = bad
    out = str(tmp_path / "run")
    est = online(out=out, checkpoint_every=1, forget_per="batch")
    with pytest.raises(dnmf.InvalidInputError, match=message):
        est.fit(zarr_of(tmp_path, X), W=W0, H=H0)
    # batches 0-99 and 100-199 were folded and committed; 200-299 not at all
    assert committed_step(out) == 2
    run = dnmf.open_run(out)
    assert not run.complete and run.manifest["online"]["scan"]["rows"] == 200
    # the committed H is the H of exactly those two steps (rows 0-199 in memory: with
    # forget_per="batch" the steps do not depend on the number of rows)
    two = online(max_iter=1, forget_per="batch")
    two.fit(X[:200], W=W0[:200], H=H0)
    np.testing.assert_allclose(run.H, two.components_, rtol=1e-6, atol=0)
    np.testing.assert_allclose(run.A, two._components_numerator, rtol=1e-6, atol=0)
    # the same fit again stops at the same rows, its commits untouched
    with pytest.raises(dnmf.InvalidInputError, match=message):
        online(out=out, checkpoint_every=1, forget_per="batch").fit(
            str(tmp_path / "X.zarr"), W=W0, H=H0)
    assert committed_step(out) == 2


def test_zeros_with_beta_at_most_0_are_refused_by_the_batch_that_holds_them(tmp_path):
    X = clean_V() + 0.1
    X[420, 0] = 0.0
    W0, H0 = custom(X)
    with pytest.raises(dnmf.InvalidInputError, match=r"beta_loss <= 0 .* rows 400-499"):
        online(beta_loss="itakura-saito").fit(zarr_of(tmp_path, X), W=W0, H=H0)
    # partial_fit accepts zeros, as scikit-learn's does; a NaN in a later Zarr batch
    # of a stream is refused with its rows
    stream = online(beta_loss="frobenius")
    stream.partial_fit(zarr.open_array(str(tmp_path / "X.zarr"))[:100], W=W0[:100], H=H0)
    bad = X[:100].copy()
    bad[7, 2] = np.nan
    H_before = stream.components_.copy()
    with pytest.raises(dnmf.InvalidInputError, match=r"rows 0-99: 1 entries \(the first at "
                                                     r"row 7, column 2\)"):
        stream.partial_fit(zarr.open_array(zarr_of(tmp_path, bad, "bad.zarr")))
    np.testing.assert_array_equal(stream.components_, H_before)
    assert stream.n_steps_ == 1


def test_rows_a_fit_stopped_before_are_validated_at_its_end(tmp_path, monkeypatch):
    # The stopping rule ends the fit within its first pass; the rows it never read
    # are still read (those only) and checked.
    X = clean_V()
    W0, H0 = custom(X)
    stopper = dict(tol=0.5, max_iter=5)
    early = online(**stopper).fit(X, W=W0, H=H0)
    assert early.n_steps_ < 6
    X_bad = X.copy()
    X_bad[590, 1] = np.nan
    path = zarr_of(tmp_path, X_bad)
    sizes = read_sizes(monkeypatch)
    with pytest.raises(dnmf.InvalidInputError, match="rows 500-599"):
        online(**stopper).fit(path, W=W0, H=H0)
    assert sum(sizes) == 600  # every row read once: the steps', then the rest
    clean = online(**stopper).fit(zarr_of(tmp_path, X, "clean.zarr"), W=W0, H=H0)
    np.testing.assert_array_equal(clean.components_, early.components_)


@pytest.mark.parametrize("fresh", [False, True])
def test_fit_makes_H_only_with_the_same_components_and_a_lazy_error(tmp_path, monkeypatch,
                                                                     fresh):
    import pickle

    X = clean_V()
    W0, H0 = custom(X)
    path = zarr_of(tmp_path, X)
    memory = online(fresh_restarts=fresh)
    W_mem = memory.fit_transform(X, W=W0, H=H0)
    full = online(fresh_restarts=fresh)
    W_full = full.fit_transform(path, W=W0, H=H0)
    sizes = read_sizes(monkeypatch)
    est = online(fresh_restarts=fresh).fit(path, W=W0, H=H0)
    # no validation pass, no W for all rows, no loss pass: the steps' reads only
    assert sizes == [100] * 12 and est.n_steps_ == 12
    np.testing.assert_array_equal(est.components_, full.components_)
    np.testing.assert_allclose(est.components_, memory.components_, rtol=1e-6, atol=0)
    np.testing.assert_allclose(W_full, W_mem, rtol=1e-4, atol=1e-6)
    assert "_pending_err" in est.__dict__
    # reconstruction_err_: computed when first read (one pass), equal to fit_transform's
    assert est.reconstruction_err_ == full.reconstruction_err_
    assert sum(sizes) == 1200 + 600
    assert est.reconstruction_err_ == full.reconstruction_err_ and sum(sizes) == 1800
    assert full.reconstruction_err_ == pytest.approx(memory.reconstruction_err_, rel=1e-5)
    relative = full.reconstruction_err_ / np.linalg.norm(X)
    assert 0.005 < relative < 0.2
    # a pickled fit carries the value, computed before pickling
    again = online(fresh_restarts=fresh).fit(path, W=W0, H=H0)
    copy = pickle.loads(pickle.dumps(again))
    assert "_pending_err" not in copy.__dict__
    assert copy.reconstruction_err_ == full.reconstruction_err_


def test_forget_per_batch_is_a_partial_fit_loop_and_does_not_underflow(tmp_path):
    X = clean_V()
    W0, H0 = custom(X)
    fit = online(fresh_restarts=True, forget_factor=0.6, forget_per="batch", max_iter=1)
    fit.fit(zarr_of(tmp_path, X), W=W0, H=H0)
    loop = online(forget_factor=0.6)
    for a in range(0, 600, 100):
        loop.partial_fit(X[a:a + 100], W=W0[:100], H=H0)
    np.testing.assert_allclose(fit.components_, loop.components_, rtol=1e-6, atol=0)
    # scikit-learn's terms for the same weights: forget_factor 0.6 ** 6 per pass
    per_pass = online(fresh_restarts=True, forget_factor=0.6 ** 6, max_iter=1)
    per_pass.fit(X, W=W0, H=H0)
    np.testing.assert_allclose(per_pass.components_, loop.components_, rtol=1e-5, atol=0)
    # 3000 batches per pass: 0.7 ** 3000 is 0.0, 0.7 per batch is still 0.7
    many = online(batch_size=1000, forget_factor=0.7 ** 3000)
    many._check_params(3_000_000, 20)
    assert many._rho == 0.0
    per_batch = online(batch_size=1000, forget_factor=0.7, forget_per="batch")
    per_batch._check_params(3_000_000, 20)
    assert per_batch._rho == pytest.approx(0.7, rel=1e-15)
    with pytest.raises(dnmf.InvalidParameterError, match="forget_per"):
        online(forget_per="step").fit(X, W=W0, H=H0)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_mid_first_pass_of_a_validated_as_read_fit_resumes_bit_for_bit(V_path,
                                                                               tmp_path):
    from online_worker import custom_start

    W0, H0 = custom_start(N, M)
    params = {**worker_params("frobenius"), "init": "custom"}

    def fit(out=None):
        est = MiniBatchNMF(**params, out=out, checkpoint_every=3, scheduler="threads")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return est, est.fit_transform(V_path, W=W0, H=H0)

    reference = fit()
    out = str(tmp_path / "run")
    args = [sys.executable, WORKER, V_path, out, "--every", "3", "--custom"]
    kill_at(args, "online:written@6", str(tmp_path / "marker"))
    run = dnmf.open_run(out)
    assert run.n_steps == 3 and run.manifest["online"]["scan"]["rows"] == 150
    np.testing.assert_allclose(run.manifest["online"]["scan"]["total"],
                               np.asarray(zarr.open_array(V_path))[:150].sum(dtype=np.float64),
                               rtol=1e-6)
    same(fit(out), reference)
    assert dnmf.open_run(out).manifest["online"]["scan"]["rows"] == N


@pytest.mark.slow
def test_on_a_cluster_the_workers_validate_the_batches_they_read(tmp_path):
    # in_flight=2: the round with the bad batch is dropped whole; the fit on clean data
    # reads each batch once in its first pass, and the scan's sum is V's
    from distributed import Client, LocalCluster

    X = clean_V()
    W0, H0 = custom(X)
    bad = X.copy()
    bad[333, 5] = -2.0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with pytest.raises(dnmf.InvalidInputError, match=r"rows 300-399: 1 entries \(the "
                                                         r"first at row 333, column 5\)"):
            online(scheduler=client, in_flight=2).fit(zarr_of(tmp_path, bad, "bad.zarr"),
                                                       W=W0, H=H0)
        out = str(tmp_path / "run")
        est = online(scheduler=client, in_flight=2, out=out)
        W = est.fit_transform(zarr_of(tmp_path, X), W=W0, H=H0)
    scan = dnmf.open_run(out).manifest["online"]["scan"]
    assert scan["rows"] == 600
    np.testing.assert_allclose(scan["total"], X.sum(dtype=np.float64), rtol=1e-6)
    assert W.shape == (600, 4) and est.n_steps_ == 12


def test_check_batch_sums_and_refuses_as_a_validation_pass_would():
    import scipy.sparse as sp

    from dnmf._online import check_batch

    rng = np.random.default_rng(8)
    X = rng.random((300, 40)).astype(np.float32)
    assert check_batch(X, 0, False) == pytest.approx(X.sum(dtype=np.float64), rel=1e-6)
    # finite values whose float32 column sums overflow: accepted, summed in float64
    big = np.full((4, 3), 2e38, dtype=np.float32)
    assert check_batch(big, 0, False) == pytest.approx(2.4e39, rel=1e-6)
    Xs = sp.random(300, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    assert check_batch(Xs, 0, False) == pytest.approx(Xs.data.sum(dtype=np.float64),
                                                      rel=1e-9)
    # a sparse batch has implicit zeros: refused for beta <= 0
    with pytest.raises(dnmf.InvalidInputError, match="rows 1000-1299 contain zeros"):
        check_batch(Xs, 1000, True)
    Xs.data[5] = -np.inf
    row = int(np.searchsorted(Xs.indptr, 5, side="right")) - 1
    with pytest.raises(dnmf.InvalidInputError,
                       match=rf"rows 1000-1299: 1 entries \(the first at row {1000 + row}, "):
        check_batch(Xs, 1000, False)
    assert check_batch(X[:0], 7, True) == 0.0


@pytest.mark.parametrize("which", ["W", "H"])
@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "zeros"])
def test_a_bad_custom_start_is_refused_before_anything_runs(which, bad):
    rng = np.random.default_rng(0)
    X = rng.random((40, 12))
    W, H = rng.random((40, 3)) + 0.1, rng.random((3, 12)) + 0.1
    start = {"W": W, "H": H}
    target = start[which]
    if bad == "zeros":
        target[:] = 0.0
    else:
        target[5 % target.shape[0], 1] = {"nan": np.nan, "inf": np.inf, "negative": -1e-3}[bad]
    want = (rf"\(input {which}\) is full of zeros" if bad == "zeros"
            else rf"Negative values or NaN .*\(input {which}\)")
    with pytest.raises(dnmf.InvalidInputError, match=want):
        MiniBatchNMF(3, init="custom", batch_size=10, max_iter=2,
                     scheduler="threads").fit(X, **start)
    # a good start of the same shapes fits
    good = {"W": rng.random((40, 3)) + 0.1, "H": rng.random((3, 12)) + 0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MiniBatchNMF(3, init="custom", batch_size=10, max_iter=2,
                     scheduler="threads").fit(X, **good)


def test_fresh_restarts_neither_read_nor_hold_the_custom_W(tmp_path):
    """With fresh_restarts every batch's W is solved afresh (scikit-learn's rule), so a
    custom W is only checked: two different ones give the same fit, the caller's array
    is untouched, and a fit from a Zarr path allocates nothing of W's n × k size."""
    import tracemalloc

    rng = np.random.default_rng(3)
    n, m, k = 60000, 8, 10
    V = rng.random((n, 4)) @ rng.random((4, m)) + 0.05
    path = str(tmp_path / "V.zarr")
    zarr.create_array(store=path, shape=V.shape, chunks=(6000, m), dtype=V.dtype)[...] = V
    H0 = rng.random((k, m)) + 0.1
    W_a = rng.random((n, k)) + 0.1
    W_b = np.full((n, k), 0.5)
    kept = W_a.copy()

    def fit(W: np.ndarray) -> MiniBatchNMF:
        model = MiniBatchNMF(k, init="custom", fresh_restarts=True, batch_size=2048,
                             max_iter=1, tol=0.0, scheduler="threads")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(path, W=W, H=H0)

    fit(W_a)  # warm (numba, imports)
    tracemalloc.start()
    try:
        first = fit(W_a)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    second = fit(W_b)
    np.testing.assert_array_equal(first.components_, second.components_)
    assert first.n_steps_ == second.n_steps_ == 30
    np.testing.assert_array_equal(W_a, kept)
    # W is n × k float64 = 4.8 MB; a copy of it would be in the peak
    assert peak < W_a.nbytes * 0.6, f"peak {peak} bytes for a W of {W_a.nbytes}"



@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_the_start_can_make_H_alone(tmp_path, init):
    """``initialize(want_W=False)`` (a fresh-restarts fit's start) makes the same H as
    the start that makes W, and no W panel."""
    from dnmf import _engine
    from dnmf._prepared import PreparedInput

    rng = np.random.default_rng(4)
    V = rng.random((3000, 4)) @ rng.random((4, 12)) + 0.05
    prep = PreparedInput(zarr_of(tmp_path, V, chunk=500), "threads", None)
    kwargs = dict(init=init, k=6, seed=5, summary=prep.scan())
    W_kept, H_kept = _engine.initialize(prep.backend, prep.source, prep.refs, prep.bounds,
                                        **kwargs)
    no_W, H_only = _engine.initialize(prep.backend, prep.source, prep.refs, prep.bounds,
                                      want_W=False, **kwargs)
    assert no_W == [] and len(W_kept) == len(prep.refs) >= 1
    np.testing.assert_array_equal(H_only, H_kept)


def test_a_fresh_restarts_fit_from_a_random_start_holds_no_W(tmp_path):
    """fit(path) with fresh restarts and init="random": no n × k array at any point
    (a W of 40 columns over 4 of V: W, were it made, would dwarf everything else)."""
    import tracemalloc

    rng = np.random.default_rng(4)
    n, m, k = 60000, 4, 40
    V = rng.random((n, 2)) @ rng.random((2, m)) + 0.05
    path = zarr_of(tmp_path, V, chunk=6000)

    def fit() -> MiniBatchNMF:
        model = MiniBatchNMF(k, init="random", fresh_restarts=True, batch_size=2048,
                             max_iter=1, tol=0.0, random_state=5, scheduler="threads")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.fit(path)

    fit()  # warm
    tracemalloc.start()
    try:
        fit()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * k * 8 * 0.6, f"peak {peak} bytes for a W of {n * k * 8}"
