"""Masked fits: missing values (NaN, an explicit mask, unstored entries) and hold-outs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf import (
    ConvergenceWarning,
    IncompatibleRunError,
    InvalidInputError,
    InvalidParameterError,
    SpeckledHoldout,
)
from dnmf._engine import _context
from dnmf._solvers import EPSILON, Regularization
from dnmf._solvers._masked import (
    MaskedALS,
    MaskedHALS,
    MaskedKL,
    MaskedMU,
    Observed,
    pattern_grams,
    unpack,
)
from dnmf.testing import planted

WORKER = os.path.join(os.path.dirname(__file__), "masked_worker.py")
KERNELS = {"hals": MaskedHALS, "als": MaskedALS, "mu": MaskedMU, "kl": MaskedKL,
           "hals-majorize": lambda: MaskedHALS(majorize=True)}


def _frob(V, M, W, H):
    return 0.5 * float(np.sum((M * (V - W @ H)) ** 2))


def _kl(V, M, W, H):
    WH = np.maximum(W @ H, EPSILON)
    x, y = V[M], WH[M]
    keep = x > EPSILON
    return float(np.sum(x[keep] * np.log(x[keep] / y[keep])) - x.sum() + y.sum())


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# ------------------------------------------------------------------ kernels
def test_pattern_grams_are_the_grams_of_the_observed_entries():
    rng = np.random.default_rng(0)
    n, m, k = 30, 20, 4
    M = rng.random((n, m)) > 0.3
    M[:10] = M[0]  # ten rows share a pattern: computed once
    obs = Observed(np.zeros((n, m)), M)
    H, W = rng.random((k, m)), rng.random((n, k))
    G = unpack(pattern_grams(obs, H), k)
    C = unpack(pattern_grams(obs, W, by_column=True), k)
    for r in range(n):
        np.testing.assert_allclose(G[r], H[:, M[r]] @ H[:, M[r]].T, rtol=1e-13)
    for c in range(m):
        np.testing.assert_allclose(C[c], W[M[:, c]].T @ W[M[:, c]], rtol=1e-13)
    S = sp.csr_matrix(M.astype(float))
    obs_sparse = Observed(S, None)
    np.testing.assert_allclose(unpack(pattern_grams(obs_sparse, H), k), G, rtol=1e-13)


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernels_decrease_the_masked_loss_and_report_it(name):
    rng = np.random.default_rng(1)
    n, m, k = 50, 30, 3
    V = rng.random((n, k)) @ rng.random((k, m)) + 0.01 * rng.random((n, m))
    M = rng.random((n, m)) > 0.25
    held = ~M & (rng.random((n, m)) > 0.5)  # some of the unobserved entries are held out
    hr, hc = np.nonzero(held)
    obs = Observed(np.where(M, V, 0), M, hr, hc, V[hr, hc])
    loss = _kl if name == "kl" else _frob
    solver, reg = KERNELS[name](), Regularization()
    W, H = rng.random((n, k)), rng.random((k, m))
    norm_sq = float(np.sum(obs.values**2))
    previous = np.inf
    for _ in range(30):
        ctx = _context(H, (n, m), n * m)
        W_new, stats = solver.update_panel(obs, W, ctx, reg)
        # the pass reports the loss and the held-out loss at the (W, H) it started from
        assert solver.loss_before(stats, ctx, norm_sq) == pytest.approx(loss(V, M, W, H),
                                                                        rel=1e-9)
        assert solver.heldout_before(stats) == pytest.approx(loss(V, held, W, H), rel=1e-9)
        H = solver.update_H(H, stats, ctx, reg)
        W = W_new
        current = loss(V, M, W, H)
        assert current <= previous * (1 + 1e-12)
        previous = current


@pytest.mark.parametrize("name", ["hals", "als", "mu", "kl"])
def test_sparse_unstored_equals_dense_with_the_same_pattern(name):
    rng = np.random.default_rng(2)
    n, m, k = 40, 25, 3
    S = sp.random(n, m, density=0.3, random_state=3, format="csr")
    S.data = rng.random(S.nnz) + 0.1
    solver, reg = KERNELS[name](), Regularization()
    W, H = rng.random((n, k)), rng.random((k, m))
    ctx = _context(H, (n, m), n * m)
    a, sa = solver.update_panel(Observed(S, None), W, ctx, reg)
    b, sb = solver.update_panel(Observed(S.toarray(), S.toarray() != 0), W, ctx, reg)
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    for key in sa:
        np.testing.assert_allclose(sa[key], sb[key], rtol=1e-11, atol=1e-12)


def test_hals_chooses_per_row_grams_or_majorization_by_the_observed_share():
    from dnmf._solvers._masked import MAJORIZE_ABOVE, get_masked_solver

    assert get_masked_solver("hals", "frobenius", MAJORIZE_ABOVE).majorize
    assert not get_masked_solver("hals", "frobenius", MAJORIZE_ABOVE - 0.01).majorize
    # sparse panels (no dense mask) always use per-row Grams, whatever the choice
    rng = np.random.default_rng(3)
    S = sp.random(20, 15, density=0.4, random_state=4, format="csr")
    H, W = rng.random((2, 15)), rng.random((20, 2))
    ctx = _context(H, (20, 15), 300)
    a, _ = MaskedHALS(majorize=True).update_panel(Observed(S, None), W, ctx, Regularization())
    b, _ = MaskedHALS().update_panel(Observed(S, None), W, ctx, Regularization())
    np.testing.assert_array_equal(a, b)


def test_hals_masked_step_is_exact_zero_and_skips_dead_components():
    from dnmf._solvers._masked import hals_rows

    G = np.array([[[1.0, 0.0], [0.0, 0.0]]])  # component 1 unobserved: G[1, 1] = 0
    X = np.array([[0.5, 0.7]])
    P = np.array([[-1.0, 3.0]])
    out = hals_rows(X, P, G, 0.0, 0.0, 1)
    assert out[0, 0] == 0.0  # max(0, ·), not a floor
    assert out[0, 1] == 0.7  # left unchanged


# --------------------------------------------------------- planted recovery
def _planted_missing(sparse: bool, seed: int = 0):
    V, _, _ = planted(160, 60, 4, seed=seed, noise=0.02)
    missing = np.random.default_rng(seed + 1).random(V.shape) < 0.2
    return V, missing


CASES = [("hals", "frobenius"), ("als", "frobenius"), ("mu", "frobenius"),
         ("mu", "kullback-leibler")]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(("solver", "beta"), CASES)
def test_masked_fit_predicts_removed_entries(solver, beta, sparse):
    """20 % removed: predicted within 1.5× the noise, and ≥ 5× better than zero-filling."""
    V, missing = _planted_missing(sparse)
    noise_rms = 0.02 * np.sqrt(2 / np.pi) * 1.0  # E|N(0,1)|·σ, the typical noise size
    iters = 150 if solver == "als" else 400
    params = dict(solver=solver, beta_loss=beta, init="random", max_iter=iters, tol=1e-7,
                  random_state=0)
    if sparse:
        X = sp.csr_matrix(np.where(missing, 0, V))  # every kept entry is > 0: stored
        X.eliminate_zeros()
        assert X.nnz == int((~missing).sum())
        model = dnmf.NMF(4, missing="unstored", **params)
    else:
        X = np.where(missing, np.nan, V)
        model = dnmf.NMF(4, missing="nan", **params)
    W = np.asarray(model.fit_transform(X))
    R = W @ model.components_
    err = np.sqrt(np.mean((R[missing] - V[missing]) ** 2))
    filled = np.where(missing, 0, V)
    zero = dnmf.NMF(4, **params).fit(sp.csr_matrix(filled) if sparse else filled)
    Rz = np.asarray(zero.transform(filled)) @ zero.components_
    err_zero = np.sqrt(np.mean((Rz[missing] - V[missing]) ** 2))
    assert err < 1.5 * 0.02 + noise_rms, (err, noise_rms)
    assert err_zero > 5 * err, (err, err_zero)
    # the reported loss is the loss over the observed entries
    ref = (_kl if beta == "kullback-leibler" else _frob)(V, ~missing, W, model.components_)
    assert model.loss_history_[-1] == pytest.approx(ref, rel=1e-6)


def test_explicit_masks_numpy_dask_zarr_give_the_nan_fit(tmp_path):
    import dask.array as da
    import zarr

    V, missing = _planted_missing(False, seed=4)
    params = dict(init="nndsvda", max_iter=20, tol=0.0, random_state=0, panel_rows=40)
    ref = dnmf.NMF(4, missing="nan", **params)
    W_ref = ref.fit_transform(np.where(missing, np.nan, V))
    z = zarr.create_array(store=str(tmp_path / "mask.zarr"), shape=V.shape, chunks=(40, 60),
                          dtype=bool)
    z[...] = ~missing
    for mask in (~missing, da.from_array(~missing, chunks=(40, 60)), z):
        model = dnmf.NMF(4, **params)
        W = np.asarray(model.fit_transform(V, mask=mask))
        np.testing.assert_array_equal(W, W_ref)
        np.testing.assert_array_equal(model.components_, ref.components_)
    # Dask V with a Dask mask, panels from V's chunks
    Vd = da.from_array(V, chunks=(40, 60))
    md = da.from_array(~missing, chunks=(40, 60))
    W = dnmf.NMF(4, **{**params, "panel_rows": None}).fit_transform(Vd, mask=md)
    np.testing.assert_array_equal(np.asarray(W), W_ref)


def test_holdout_loss_is_the_loss_over_the_held_out_entries():
    V, _ = _planted_missing(False, seed=5)
    holdout = SpeckledHoldout(0.1, seed=2)
    model = dnmf.NMF(4, max_iter=60, tol=0.0, random_state=0, panel_rows=50)
    W = np.asarray(model.fit_transform(V, mask=holdout))
    held = holdout.heldout(0, V.shape[0], V.shape[1])
    assert model.n_heldout_ == int(held.sum())
    assert model.heldout_loss_ == pytest.approx(_frob(V, held, W, model.components_),
                                                rel=1e-9)
    assert model.loss_history_[-1] == pytest.approx(_frob(V, ~held, W, model.components_),
                                                    rel=1e-6)
    # fitted without the held-out entries: the same as a mask of the complement
    other = dnmf.NMF(4, max_iter=60, tol=0.0, random_state=0, panel_rows=50)
    np.testing.assert_array_equal(np.asarray(other.fit_transform(V, mask=~held)), W)
    assert not hasattr(other, "heldout_loss_")
    # KL, with NaN missing as well, stopped by tol: the loss is at the state returned
    X = V.copy()
    X[3, :5] = np.nan
    kl = dnmf.NMF(4, solver="mu", beta_loss="kullback-leibler", missing="nan", max_iter=300,
                  tol=1e-3, random_state=0).fit(X, mask=holdout)
    observed = ~np.isnan(X)
    W = kl.transform(np.where(observed, X, 0))  # not used for the check below
    assert kl.n_heldout_ == int((held & observed).sum())
    assert np.isfinite(kl.heldout_loss_) and kl.heldout_loss_ > 0
    del W


def test_sparse_unstored_holdout_hashes_stored_entries():
    S = sp.random(120, 50, density=0.3, random_state=1, format="csr")
    S.data += 0.1
    holdout = SpeckledHoldout(0.2, 5)
    model = dnmf.NMF(3, missing="unstored", max_iter=30, random_state=0).fit(S, mask=holdout)
    rows, cols = S.nonzero()
    held = holdout.heldout(0, 120, 50)[rows, cols]
    assert model.n_heldout_ == int(held.sum())
    W = np.asarray(model.transform(S))
    assert W.shape == (120, 3)


def test_transform_of_rows_with_missing_entries():
    V, missing = _planted_missing(False, seed=6)
    X = np.where(missing, np.nan, V)
    for solver, beta in CASES:
        model = dnmf.NMF(4, solver=solver, beta_loss=beta, missing="nan", init="random",
                         max_iter=100 if solver == "als" else 300, random_state=0).fit(X)
        W = np.asarray(model.transform(X[:20]))
        R = W @ model.components_
        err = np.sqrt(np.mean((R[missing[:20]] - V[:20][missing[:20]]) ** 2))
        assert err < 0.05, (solver, beta, err)
        # a row is solved on its own observed entries: alone or with others, the same
        W_one = np.asarray(model.transform(X[5:6]))
        np.testing.assert_allclose(W_one, W[5:6], rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------ bad input
def test_bad_masks_each_one_clear_error(tmp_path):
    import dask.array as da
    import zarr

    V, missing = _planted_missing(False, seed=7)
    model = dnmf.NMF(3, max_iter=5)
    with pytest.raises(InvalidInputError, match=r"mask has shape \(10, 60\), but X has"):
        model.fit(V, mask=np.ones((10, 60), bool))
    with pytest.raises(InvalidInputError, match="mask has dtype float64, but must be boolean"):
        model.fit(V, mask=np.ones(V.shape))
    with pytest.raises(InvalidInputError, match="mask has dtype int64"):
        model.fit(V, mask=np.ones(V.shape, dtype=np.int64))
    row = ~missing
    row[17] = False
    with pytest.raises(InvalidInputError, match="Row 17 of X has no observed entries"):
        model.fit(V, mask=row)
    col = ~missing
    col[:, 33] = False
    with pytest.raises(InvalidInputError, match="Column 33 of X has no observed entries"):
        model.fit(V, mask=col)
    with pytest.raises(InvalidInputError, match="missing='nan' was given, but X has no NaN"):
        dnmf.NMF(3, missing="nan").fit(V)
    with pytest.raises(InvalidInputError, match=r"contains NaN or infinity.*missing='nan'"):
        dnmf.NMF(3).fit(np.where(missing, np.nan, V))
    X = np.where(missing, np.nan, V)
    with pytest.raises(InvalidInputError, match="NaN or infinity at observed entries"):
        model.fit(X, mask=np.ones(V.shape, bool))  # NaN where the mask says observed
    with pytest.raises(InvalidParameterError, match="missing='unstored' observes the stored"):
        dnmf.NMF(3, missing="unstored").fit(V)
    with pytest.raises(InvalidParameterError, match="missing='nan' is for dense X"):
        dnmf.NMF(3, missing="nan").fit(sp.csr_matrix(V))
    with pytest.raises(InvalidParameterError, match="'missing' parameter of NMF must be"):
        dnmf.NMF(3, missing="zero").fit(V)
    with pytest.raises(InvalidParameterError, match=r"missing values .* are fitted with"):
        dnmf.NMF(3, solver="amu", beta_loss="kullback-leibler",
                 missing="nan").fit(np.where(missing, np.nan, V))
    with pytest.raises(InvalidInputError, match="SciPy sparse matrix"):
        model.fit(V, mask=sp.csr_matrix(~missing))
    # chunking: the mask is read with V's panels
    Vz = zarr.create_array(store=str(tmp_path / "V.zarr"), shape=V.shape, chunks=(40, 60),
                           dtype=V.dtype)
    Vz[...] = V
    mz = zarr.create_array(store=str(tmp_path / "m.zarr"), shape=V.shape, chunks=(30, 60),
                           dtype=bool)
    mz[...] = ~missing
    with pytest.raises(InvalidInputError, match=r"mask is chunked by 30 rows but X by 40.*"
                                                r"chunks=\(40, 60\)"):
        model.fit(Vz, mask=mz)
    Vd = da.from_array(V, chunks=(40, 60))
    with pytest.raises(InvalidInputError, match=r"rechunk\(\{0: X.chunks\[0\]\}\)"):
        model.fit(Vd, mask=da.from_array(~missing, chunks=(50, 60)))
    with pytest.raises(InvalidInputError, match="not a SpeckledHoldout"):
        dnmf.NMF(3, max_iter=5).fit(V).transform(V, mask=SpeckledHoldout())


# ------------------------------------------------------- run stores, resume
def test_masked_run_resumes_bit_for_bit_and_refuses_another_mask(tmp_path):
    V, missing = _planted_missing(False, seed=8)
    X = np.where(missing, np.nan, V)
    holdout = SpeckledHoldout(0.1, 1)
    params = dict(init="nndsvda", tol=0.0, random_state=0, panel_rows=40, missing="nan")
    ref = dnmf.NMF(4, max_iter=12, **params)
    W_ref = ref.fit_transform(X, mask=holdout)
    out = tmp_path / "run"
    def interrupt(iteration, loss):
        if iteration == 7:
            raise KeyboardInterrupt

    stop = dnmf.NMF(4, max_iter=12, out=out, checkpoint_every=3, callback=interrupt, **params)
    with pytest.raises(KeyboardInterrupt):
        stop.fit(X, mask=holdout)
    assert not dnmf.open_run(out).complete
    run = dnmf.resume(out, X=X)  # the hold-out comes from the run
    assert run.complete and run.iteration == 12
    np.testing.assert_array_equal(run.W.compute(), W_ref)
    np.testing.assert_array_equal(run.H, ref.components_)
    assert run.loss_history == ref.loss_history_
    # reading back the complete run keeps the held-out loss
    again = dnmf.NMF(4, max_iter=12, out=out, **params)
    again.fit(X, mask=holdout)
    assert again.heldout_loss_ == ref.heldout_loss_ and again.n_heldout_ == ref.n_heldout_
    with pytest.raises(IncompatibleRunError, match="observed"):
        dnmf.NMF(4, max_iter=12, out=out, **params).fit(X, mask=SpeckledHoldout(0.1, 2))
    with pytest.raises(IncompatibleRunError, match="missing"):
        dnmf.NMF(4, max_iter=12, out=out, **{**params, "missing": None}).fit(
            np.nan_to_num(X), mask=~np.isnan(X))


def _kill_at(args, point, marker, timeout=180.0):
    env = dict(os.environ, DNMF_TEST_PAUSE_AT=point, DNMF_TEST_PAUSE_FILE=marker)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not os.path.exists(marker):
            if proc.poll() is not None:
                raise AssertionError(f"worker ended before {point}: {proc.stdout.read()!r}")
            assert time.monotonic() < deadline, f"worker never reached {point}"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    os.unlink(marker)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("holdout", [pytest.param(0.0, marks=pytest.mark.heavy), 0.1],
                         ids=["zarr-mask", "nan+holdout"])
def test_masked_run_sigkilled_and_resumed_gives_the_same_bytes(tmp_path, holdout):
    import zarr

    rng = np.random.default_rng(1)
    n, m = 600, 60
    V = (rng.random((n, 5)) @ rng.random((5, m)) + 0.1 * rng.random((n, m))).astype(np.float32)
    observed = rng.random((n, m)) > 0.2
    if holdout:
        V[~observed] = np.nan
    V_path, mask_path = str(tmp_path / "V.zarr"), str(tmp_path / "mask.zarr")
    zarr.create_array(store=V_path, shape=V.shape, chunks=(50, m), dtype=V.dtype)[...] = V
    zarr.create_array(store=mask_path, shape=V.shape, chunks=(50, m), dtype=bool)[...] = observed
    mask = SpeckledHoldout(holdout, 3) if holdout else zarr.open_array(mask_path, mode="r")
    ref = dnmf.NMF(4, init="nndsvda", max_iter=12, tol=0.0, random_state=7, panel_rows=100,
                   scheduler="threads", missing="nan" if holdout else None)
    W_ref = np.asarray(ref.fit_transform(V_path, mask=mask))
    out = tmp_path / "run"
    marker = str(tmp_path / "paused")
    extra = ["--holdout", str(holdout)] if holdout else []
    fit = [sys.executable, WORKER, V_path, str(out), mask_path, *extra]
    cont = [sys.executable, WORKER, V_path, str(out), mask_path, "--mode", "resume"]
    _kill_at(fit, "commit:manifest@4", marker)  # manifest 4 written, not yet renamed
    assert dnmf.open_run(out).iteration == 2
    _kill_at(cont, "sink@7", marker)  # inside a panel task of the pass to iteration 7
    assert dnmf.open_run(out).iteration == 6
    subprocess.run(cont, check=True, capture_output=True)
    run = dnmf.open_run(out, verify=True)
    assert run.complete and run.iteration == 12
    np.testing.assert_array_equal(run.W.compute(), W_ref)
    np.testing.assert_array_equal(run.H, ref.components_)
    assert run.loss_history == ref.loss_history_


@pytest.mark.slow
def test_masked_fit_on_a_cluster_equals_threads(distributed_client):
    V, missing = _planted_missing(False, seed=9)
    X = np.where(missing, np.nan, V)
    params = dict(init="nndsvda", max_iter=15, tol=0.0, random_state=0, panel_rows=40,
                  missing="nan")
    local = dnmf.NMF(4, scheduler="threads", **params)
    W_local = local.fit_transform(X, mask=SpeckledHoldout(0.1, 0))
    remote = dnmf.NMF(4, scheduler=distributed_client, **params)
    W_remote = remote.fit_transform(X, mask=SpeckledHoldout(0.1, 0))
    np.testing.assert_array_equal(np.asarray(W_remote), W_local)
    assert remote.heldout_loss_ == local.heldout_loss_


@pytest.mark.parametrize("solver,loss", [("hals", "frobenius"), ("als", "frobenius"),
                                         ("mu", "frobenius"), ("mu", "kullback-leibler")])
def test_penalised_masked_fit_records_data_term_plus_penalties(solver, loss):
    # The objective a masked penalised fit minimises and records: the data term over
    # the observed entries plus scikit-learn's L1/L2 penalties (it raised KeyError).
    rng = np.random.default_rng(3)
    V = rng.random((60, 5)) @ rng.random((5, 30)) + 0.01
    V[rng.random(V.shape) < 0.2] = np.nan
    est = dnmf.NMF(4, solver=solver, beta_loss=loss, missing="nan", alpha_W=0.01,
                   alpha_H=0.02, l1_ratio=0.4, max_iter=40, tol=0.0, random_state=0,
                   scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        W = np.asarray(est.fit_transform(V))
    H = est.components_
    observed = ~np.isnan(V)
    v, wh = V[observed], (W @ H)[observed]
    if loss == "frobenius":
        data = 0.5 * float(np.sum((v - wh) ** 2))
    else:
        data = float(np.sum(v * np.log(v / wh) - v + wh))
    n, m = V.shape
    l1_W, l2_W = m * 0.01 * 0.4, m * 0.01 * 0.6
    l1_H, l2_H = n * 0.02 * 0.4, n * 0.02 * 0.6
    penalty = (l1_W * W.sum() + 0.5 * l2_W * np.sum(W**2)
               + l1_H * H.sum() + 0.5 * l2_H * np.sum(H**2))
    assert est.loss_history_[-1] == pytest.approx(data + penalty, rel=1e-8)
    # reconstruction_err_ is the data term alone, sqrt(2·loss) as scikit-learn's.
    assert est.reconstruction_err_ == pytest.approx(np.sqrt(2 * data), rel=1e-6)
