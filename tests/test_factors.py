"""What the factors look like after a fit: their scale, and sparse = dense.

- No factor entry exceeds what the data can explain: max(W)·max(H) <= 100·max(V) on
  the swimmer images and on a planted low-rank matrix, for every solver. HALS and ALS
  end with a balancing step that makes it hold by construction (max(W)·max(H) <=
  max(W·H)); MU keeps scikit-learn's iterates and is checked as it is.
- Sparse and dense input of the same matrix give the same W and H (1e-8 relative
  after 30 iterations from a custom start) for every solver and loss.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf._demo import swimmer
from dnmf.testing import planted

SOLVERS = ("hals", "mu", "als")


def _fit(V, k, solver, init, seed=0, max_iter=200, **kwargs):
    est = dnmf.NMF(k, solver=solver, init=init, random_state=seed, max_iter=max_iter,
                   scheduler="threads", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        W = est.fit_transform(V)
    return W, est.components_


@pytest.mark.slow
@pytest.mark.parametrize("init,seed", [("random", 0), ("random", 2), ("nndsvda", 0)])
@pytest.mark.parametrize("solver", SOLVERS)
def test_factor_entries_stay_within_the_data_scale_on_swimmer(solver, init, seed):
    # Before exact zeros and balancing, HALS on swimmer ended with one W column at
    # 1e-16 and its H row at ~7e15 (random, seed 0: max(W)·max(H) = 3.7e15·max(V);
    # nndsvda: 1.4e27), and at 133-153 × max(V) with exact zeros alone.
    V = swimmer(np.float64)
    W, H = _fit(V, 17, solver, init, seed)
    ratio = W.max() * H.max() / V.max()
    assert ratio <= 100.0, ratio
    if solver in ("hals", "als"):
        # Balanced: column maxima of W equal row maxima of H, so the bound is max(WH).
        live = (W.max(axis=0) > 0) & (H.max(axis=1) > 0)
        np.testing.assert_allclose(W.max(axis=0)[live], H.max(axis=1)[live], rtol=1e-6)
        assert W.max() * H.max() <= (W @ H).max() * (1 + 1e-6)


@pytest.mark.parametrize("init", ["random", "nndsvda"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_factor_entries_stay_within_the_data_scale_on_planted_data(solver, init):
    V, _, _ = planted(300, 120, 8, seed=0, noise=0.05)
    W, H = _fit(V, 8, solver, init)
    assert W.max() * H.max() <= 100.0 * V.max()


def test_balancing_keeps_the_product_and_is_skipped_for_penalised_fits():
    V, _, _ = planted(120, 50, 4, seed=3, noise=0.05)
    rng = np.random.default_rng(4)
    W0, H0 = rng.random((120, 4)), rng.random((4, 50))
    W0[:, 0] *= 1e4  # a start whose scale is split very unevenly
    H0[0] /= 1e4
    est = dnmf.NMF(4, solver="hals", init="custom", max_iter=5, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        W = est.fit_transform(V, W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(W.max(axis=0), est.components_.max(axis=1), rtol=1e-12)
    # The loss recorded for the last iterate is that of the balanced factors.
    loss = 0.5 * np.linalg.norm(V - W @ est.components_) ** 2
    assert est.loss_history_[-1] == pytest.approx(loss, rel=1e-9)
    # Penalised: the scale is part of the objective, nothing is rescaled.
    pen = dnmf.NMF(4, solver="hals", init="custom", max_iter=5, tol=0.0, alpha_W=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        Wp = pen.fit_transform(V, W=W0.copy(), H=H0.copy())
    assert not np.allclose(Wp.max(axis=0), pen.components_.max(axis=1), rtol=1e-3)


@pytest.mark.parametrize("solver,beta_loss", [("hals", "frobenius"), ("als", "frobenius"),
                                              ("mu", "frobenius"),
                                              ("mu", "kullback-leibler")])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_and_dense_input_give_the_same_factors(solver, beta_loss, fmt):
    # The case: 0.56 relative difference after 30 HALS iterations from the
    # same custom start (the 1e-16 floor acted on sparse and dense sums differently).
    V, _, _ = planted(150, 60, 5, seed=7, density=0.4)
    V[V < np.quantile(V, 0.5)] = 0.0
    rng = np.random.default_rng(8)
    avg = np.sqrt(V.mean() / 5)
    W0, H0 = avg * rng.random((150, 5)), avg * rng.random((5, 60))
    fits = []
    for X in (V, sp.csr_matrix(V) if fmt == "csr" else sp.csc_matrix(V)):
        est = dnmf.NMF(5, solver=solver, beta_loss=beta_loss, init="custom", max_iter=30,
                       tol=0.0, panel_rows=40)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
            W = est.fit_transform(X, W=W0.copy(), H=H0.copy())
        fits.append((W, est.components_, est.n_iter_))
    (Wd, Hd, nd), (Ws, Hs, ns) = fits
    # tol=0 may stop both at the rounding floor before 30; they stop together.
    assert nd == ns
    assert np.abs(Ws - Wd).max() <= 1e-8 * np.abs(Wd).max()
    assert np.abs(Hs - Hd).max() <= 1e-8 * np.abs(Hd).max()
