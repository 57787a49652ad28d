"""Per-panel kernels against slow dense references (no Dask involved)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

from dnmf._engine import context_for
from dnmf._solvers import EPSILON, Regularization, add_stats, get_solver
from dnmf._solvers._hals import HALS
from dnmf._source import PanelSource
from dnmf.testing import planted


def _ctx(H, V):
    src = PanelSource("numpy", V, V.shape, V.dtype)
    return context_for(H, src)


def _frob(V, W, H):
    return 0.5 * np.linalg.norm(V - W @ H) ** 2


def _kl(V, W, H):
    WH = np.maximum(W @ H, EPSILON)
    mask = V > EPSILON
    return float(np.sum(V[mask] * np.log(V[mask] / WH[mask])) + WH.sum() - V[mask].sum())


@pytest.mark.parametrize("name", ["mu", "hals", "als"])
def test_frobenius_panel_stats_are_the_products(name):
    V, _, _ = planted(40, 30, 4, seed=1, noise=0.1)
    rng = np.random.default_rng(2)
    W, H = rng.random((40, 4)), rng.random((4, 30))
    solver = get_solver(name, "frobenius")
    ctx = _ctx(H, V)
    W_new, stats = solver.update_panel(V, W, ctx, Regularization())
    np.testing.assert_allclose(stats["A"], W_new.T @ V, rtol=1e-12)
    np.testing.assert_allclose(stats["B"], W_new.T @ W_new, rtol=1e-12)
    # The loss from the sums equals the loss from the dense product.
    before = solver.loss_before(stats, ctx, float(np.sum(V**2)))
    assert before == pytest.approx(_frob(V, W, H), rel=1e-10)
    H_new = solver.update_H(H, stats, ctx, Regularization())
    after = solver.loss_after(stats, H_new, float(np.sum(V**2)))
    assert after == pytest.approx(_frob(V, W_new, H_new), rel=1e-10)
    assert after <= before * (1 + 1e-12)
    assert np.all(W_new >= 0) and np.all(H_new >= 0)


def test_mu_step_is_lee_seung_rule():
    V, _, _ = planted(30, 20, 3, seed=3)
    rng = np.random.default_rng(4)
    W, H = rng.random((30, 3)), rng.random((3, 20))
    solver = get_solver("mu", "frobenius")
    W_new, stats = solver.update_panel(V, W, _ctx(H, V), Regularization())
    np.testing.assert_allclose(W_new, W * (V @ H.T) / (W @ H @ H.T), rtol=1e-12)
    H_new = solver.update_H(H, stats, _ctx(H, V), Regularization())
    np.testing.assert_allclose(H_new, H * (W_new.T @ V) / (W_new.T @ W_new @ H), rtol=1e-12)


def test_kl_step_is_lee_seung_rule_and_loss_pieces_match():
    V, _, _ = planted(30, 20, 3, seed=5)
    rng = np.random.default_rng(6)
    W, H = rng.random((30, 3)), rng.random((3, 20))
    solver = get_solver("mu", "kullback-leibler")
    ctx = _ctx(H, V)
    W_new, stats = solver.update_panel(V, W, ctx, Regularization())
    ref = W * ((V / (W @ H)) @ H.T) / H.sum(axis=1)[np.newaxis, :]
    np.testing.assert_allclose(W_new, ref, rtol=1e-12)
    assert solver.loss_before(stats, ctx, 0.0) == pytest.approx(_kl(V, W, H), rel=1e-10)
    H_new = solver.update_H(H, stats, ctx, Regularization())
    ref_H = H * (W_new.T @ (V / (W_new @ H))) / W_new.sum(axis=0)[:, np.newaxis]
    np.testing.assert_allclose(H_new, ref_H, rtol=1e-12)
    assert _kl(V, W_new, H_new) <= _kl(V, W, H)


@pytest.mark.parametrize("name,loss", [("mu", "frobenius"), ("hals", "frobenius"),
                                       ("als", "frobenius"), ("mu", "kullback-leibler")])
def test_sparse_panel_equals_dense_panel(name, loss):
    rng = np.random.default_rng(7)
    V = rng.random((50, 40)) * (rng.random((50, 40)) < 0.3)
    W, H = rng.random((50, 5)), rng.random((5, 40))
    solver = get_solver(name, loss)
    ctx = _ctx(H, V)
    Wd, sd = solver.update_panel(V, W, ctx, Regularization())
    Ws, ss = solver.update_panel(sp.csr_matrix(V), W, ctx, Regularization())
    np.testing.assert_allclose(Ws, Wd, rtol=1e-10, atol=1e-14)
    for key in sd:
        np.testing.assert_allclose(ss[key], sd[key], rtol=1e-10, atol=1e-12)


def test_als_w_step_solves_each_row_exactly():
    rng = np.random.default_rng(8)
    V = rng.random((25, 15))
    W, H = rng.random((25, 4)), rng.random((4, 15))
    solver = get_solver("als", "frobenius")
    W_new, _ = solver.update_panel(V, W, _ctx(H, V), Regularization())
    ref = np.stack([nnls(H.T, V[i])[0] for i in range(V.shape[0])])
    np.testing.assert_allclose(W_new, ref, rtol=1e-8, atol=1e-10)


def test_hals_converges_to_the_nnls_solution_row_by_row():
    rng = np.random.default_rng(9)
    V = rng.random((20, 30))
    H = rng.random((3, 30))
    W = rng.random((20, 3))
    P, G = V @ H.T, H @ H.T
    X = W
    for _ in range(200):
        X = HALS().step(X, P, G, 0.0, 0.0, rho=1.0)
    ref = np.stack([nnls(H.T, V[i])[0] for i in range(V.shape[0])])
    np.testing.assert_allclose(X, ref, atol=1e-8)


def test_hals_step_is_independent_of_row_grouping():
    rng = np.random.default_rng(10)
    V = rng.random((64, 50))
    H = rng.random((6, 50))
    W = rng.random((64, 6))
    P, G = V @ H.T, H @ H.T
    whole = HALS().step(W, P, G, 0.0, 0.0, rho=40.0)
    parts = np.vstack([HALS().step(W[a:a + 16], P[a:a + 16], G, 0.0, 0.0, rho=40.0)
                       for a in range(0, 64, 16)])
    # Same rows, same sweeps: equal up to the rounding of BLAS kernels on other lengths.
    np.testing.assert_allclose(whole, parts, rtol=1e-12, atol=1e-15)


def _cd_sweep(X, P, G):
    """One cyclic coordinate-descent sweep as scikit-learn's ``_update_cdnmf_fast``."""
    X = X.copy()
    for j in range(X.shape[1]):
        for i in range(X.shape[0]):
            if G[j, j] != 0:
                X[i, j] = max(X[i, j] - (X[i] @ G[:, j] - P[i, j]) / G[j, j], 0.0)
    return X


@pytest.mark.parametrize("sweeps_rho", [1.0, 40.0])
def test_hals_reaches_exact_zeros_and_skips_a_dead_component(sweeps_rho):
    rng = np.random.default_rng(21)
    V = rng.random((40, 30))
    H = rng.random((4, 30))
    H[2] = 0.0  # a dead component: G[2, 2] = 0
    W = rng.random((40, 4))
    P, G = V @ H.T, H @ H.T
    X = HALS().step(W, P, G, 0.0, 0.0, rho=sweeps_rho)
    # The dead component is skipped (nothing depends on it), not reset to a floor.
    np.testing.assert_array_equal(X[:, 2], W[:, 2])
    # The others are clipped at exactly 0, never at a tiny positive floor.
    assert np.count_nonzero(X == 0.0) > 0
    assert X[X > 0].min() > 1e-10
    if sweeps_rho == 1.0:
        # One sweep is scikit-learn's cd sweep (same order, same rule).
        np.testing.assert_allclose(X, _cd_sweep(W, P, G), rtol=1e-12, atol=1e-14)


def test_hals_dead_component_stays_dead_instead_of_exploding():
    # A dead component (its W column and H row both 0) stays exactly 0 through a
    # whole iteration. With the old 1e-16 floor its W column came back at 1e-16 and
    # the H-step divided by B[j, j] ~ 1e-32: its H row grew to ~1e15.
    V, _, _ = planted(60, 40, 2, seed=22)
    rng = np.random.default_rng(23)
    W0, H0 = rng.random((60, 3)), rng.random((3, 40))
    W0[:, 2] = 0.0
    H0[2] = 0.0
    solver = HALS()
    ctx = _ctx(H0, V)
    W1, stats = solver.update_panel(V, W0, ctx, Regularization())
    H1 = solver.update_H(H0.astype(np.float64), stats, ctx, Regularization())
    assert not W1[:, 2].any() and not H1[2].any()
    assert np.isfinite(H1).all() and H1.max() < 10 * V.max()


@pytest.mark.parametrize("name", ["mu", "hals", "als"])
def test_l1_and_l2_penalties_shrink_w(name):
    V, _, _ = planted(30, 20, 3, seed=11)
    rng = np.random.default_rng(12)
    W, H = rng.random((30, 3)), rng.random((3, 20))
    solver = get_solver(name, "frobenius")
    free, _ = solver.update_panel(V, W, _ctx(H, V), Regularization())
    penalised, _ = solver.update_panel(V, W, _ctx(H, V), Regularization(l1_W=5.0, l2_W=5.0))
    assert penalised.sum() < free.sum()


def test_add_stats_sums_every_key():
    a = {"A": np.ones((2, 3)), "s": np.array([1.0])}
    b = {"A": 2 * np.ones((2, 3)), "s": np.array([2.5])}
    out = add_stats(a, b)
    np.testing.assert_array_equal(out["A"], 3 * np.ones((2, 3)))
    np.testing.assert_array_equal(out["s"], [3.5])


def test_kl_sparse_wh_is_blocked_and_equal_to_dense(monkeypatch):
    from dnmf._solvers import _mu

    monkeypatch.setattr(_mu, "NNZ_BLOCK", 7)  # many blocks, cut mid-row
    rng = np.random.default_rng(13)
    V = rng.random((40, 30)) * (rng.random((40, 30)) < 0.2)
    W, H = rng.random((40, 4)), rng.random((4, 30))
    csr = sp.csr_matrix(V)
    values = _mu._wh_at(W, H, csr)
    rows = np.repeat(np.arange(40), np.diff(csr.indptr))
    np.testing.assert_allclose(values, np.maximum((W @ H)[rows, csr.indices], EPSILON),
                               rtol=1e-13)
    solver = get_solver("mu", "kullback-leibler")
    ctx = _ctx(H, V)
    Wd, sd = solver.update_panel(V, W, ctx, Regularization())
    Ws, ss = solver.update_panel(csr.tocoo(), W, ctx, Regularization())  # COO: converted
    np.testing.assert_allclose(Ws, Wd, rtol=1e-10)
    np.testing.assert_allclose(ss["A"], sd["A"], rtol=1e-10)
