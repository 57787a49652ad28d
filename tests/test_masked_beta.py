"""Masked fits for every β MU supports (β other than 1 and 2): the masked rule equals
an explicit dense reference — scikit-learn's β-MU with weight 0 at unobserved
entries, written out here in NumPy — to 1e-10, for NaN, explicit masks, sparse
``missing="unstored"`` and hold-outs; and rank selection with such a loss."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf import ConvergenceWarning, InvalidParameterError, SpeckledHoldout
from dnmf._solvers import EPSILON
from dnmf._validation import regularization

EPS64 = np.finfo(np.float64).eps
BETAS = [0.0, 0.5, 1.5, 3.0]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _gamma(beta):
    return 1 / (2 - beta) if beta < 1 else (1 / (beta - 1) if beta > 2 else 1.0)


def _factors(M, V, W, H, beta):
    """(M∘V∘Q, M∘D) with scikit-learn's floors (Q's base floored when β < 2, D's when
    β < 1), the weights M in {0, 1}."""
    WH = W @ H
    base_q = np.maximum(WH, EPSILON) if beta < 2 else WH
    base_d = np.maximum(WH, EPSILON) if beta < 1 else WH
    return M * V * base_q ** (beta - 2), M * base_d ** (beta - 1)


def _delta(num, den, X, l1, l2, gamma):
    den = den + l1 + l2 * X
    den[den == 0] = EPSILON
    return (num / den) ** gamma


def reference_fit(V, M, W, H, beta, n_iter, l1=(0.0, 0.0), l2=(0.0, 0.0)):
    """Weighted β-MU, written from the update rules; losses after each iteration."""
    V = np.where(M, V, 0.0)
    gamma = _gamma(beta)
    losses = []
    for _ in range(n_iter):
        XQ, MD = _factors(M, V, W, H, beta)
        W = W * _delta(XQ @ H.T, MD @ H.T, W, l1[0], l2[0], gamma)
        if beta < 1:
            W[W < EPS64] = 0.0
        XQ, MD = _factors(M, V, W, H, beta)
        H = H * _delta(W.T @ XQ, W.T @ MD, H, l1[1], l2[1], gamma)
        if beta <= 1:
            H[H < EPS64] = 0.0
        losses.append(divergence(V, M, W, H, beta))
    return W, H, losses


def divergence(V, M, W, H, beta):
    """scikit-learn's β-divergence summed over the entries where M is True."""
    x, y = V[M], (W @ H)[M]
    keep = x > EPSILON
    xs, ys = x[keep], np.maximum(y[keep], EPSILON)
    if beta == 0:
        return float(np.sum(xs / ys) - x.size - np.sum(np.log(xs / ys)))
    return float((np.sum(xs ** beta) - beta * np.dot(xs, ys ** (beta - 1))
                  + (beta - 1) * np.sum(y ** beta)) / (beta * (beta - 1)))


def _data(seed=0, n=70, m=40, k=3, missing=0.2):
    rng = np.random.default_rng(seed)
    V = rng.random((n, k)) @ rng.random((k, m)) + 0.05 + 0.05 * rng.random((n, m))
    M = rng.random((n, m)) > missing
    M[np.arange(n), np.arange(n) % m] = True
    W0 = rng.random((n, k)) + 0.1
    H0 = rng.random((k, m)) + 0.1
    return V, M, W0, H0


def _fit(X, W0, H0, beta, n_iter, mask=None, **params):
    est = dnmf.NMF(W0.shape[1], solver="mu", beta_loss=beta, init="custom", max_iter=n_iter,
                   tol=0, **params)
    W = est.fit_transform(X, W=W0.copy(), H=H0.copy(), mask=mask)
    return est, np.asarray(W)


@pytest.mark.parametrize("beta", BETAS)
def test_masked_beta_mu_equals_the_weighted_dense_reference(beta):
    V, M, W0, H0 = _data(seed=int(beta * 10))
    n_iter = 12
    Wr, Hr, losses = reference_fit(V, M, W0, H0, beta, n_iter)
    est, W = _fit(np.where(M, V, np.nan), W0, H0, beta, n_iter, missing="nan")
    np.testing.assert_allclose(est.components_, Hr, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(W, Wr, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(est.loss_history_, losses, rtol=1e-10)
    # it is not the unmasked fit (whose zeros would count)
    assert np.abs(est.components_ - reference_fit(V, np.ones_like(M), W0, H0, beta,
                                                  n_iter)[1]).max() > 1e-3
    # an explicit mask, and the same mask with missing="nan" on NaN data, are the same fit
    est2, W2 = _fit(V, W0, H0, beta, n_iter, mask=M)
    np.testing.assert_array_equal(est2.components_, est.components_)
    np.testing.assert_array_equal(W2, W)


def test_masked_beta_with_regularization_equals_the_reference():
    beta = 0.5
    V, M, W0, H0 = _data(seed=3)
    params = dict(alpha_W=0.05, alpha_H="same", l1_ratio=0.4)
    reg = regularization(0.05, "same", 0.4, *V.shape)
    Wr, Hr, _ = reference_fit(V, M, W0, H0, beta, 10, l1=(reg.l1_W, reg.l1_H),
                              l2=(reg.l2_W, reg.l2_H))
    est, W = _fit(V, W0, H0, beta, 10, mask=M, **params)
    np.testing.assert_allclose(est.components_, Hr, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(W, Wr, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("beta", [0.5, 1.5, 3.0])
def test_sparse_unstored_equals_the_reference_on_the_stored_entries(beta):
    V, M, W0, H0 = _data(seed=7, missing=0.6)
    X = sp.csr_matrix(np.where(M, V, 0.0))  # every value > 0: stored = observed
    assert X.nnz == M.sum()
    Wr, Hr, losses = reference_fit(V, M, W0, H0, beta, 10)
    est, W = _fit(X, W0, H0, beta, 10, missing="unstored")
    np.testing.assert_allclose(est.components_, Hr, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(W, Wr, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(est.loss_history_, losses, rtol=1e-10)


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_heldout_loss_is_the_divergence_at_the_held_out_entries(beta):
    V, M, W0, H0 = _data(seed=11, missing=0.1)
    holdout = SpeckledHoldout(0.1, seed=5)
    held = holdout.heldout(0, V.shape[0], V.shape[1]) & M
    fit_mask = M & ~held
    n_iter = 8
    _, Hr, _ = reference_fit(V, fit_mask, W0, H0, beta, n_iter)
    est, W = _fit(V, W0, H0, beta, n_iter, mask=(M, holdout))
    np.testing.assert_allclose(est.components_, Hr, rtol=1e-10, atol=1e-14)
    assert est.n_heldout_ == held.sum()
    np.testing.assert_allclose(est.heldout_loss_, divergence(V, held, W, est.components_,
                                                             beta), rtol=1e-10)


def test_masked_transform_and_out_of_core_resume(tmp_path):
    beta = 1.5
    V, M, W0, H0 = _data(seed=13)
    X = np.where(M, V, np.nan)
    est, W = _fit(X, W0, H0, beta, 6, missing="nan")
    Wt = est.transform(X[:10])
    # transform solves each row's W on its observed entries: the fitted W is close to
    # a fixed point there, so the masked loss of the rows does not exceed the fit's
    H = est.components_
    assert divergence(V[:10], M[:10], Wt, H, beta) <= divergence(V[:10], M[:10], W[:10], H,
                                                                 beta) * 1.0001
    # a run store, resumed, repeats the uninterrupted fit bit for bit
    out = str(tmp_path / "run.zarr")
    part = dnmf.NMF(3, solver="mu", beta_loss=beta, init="random", random_state=2,
                    max_iter=4, tol=0, missing="nan", out=out).fit(X)
    assert part.n_iter_ == 4
    run = dnmf.resume(out, X=X, max_iter=9)
    whole = dnmf.NMF(3, solver="mu", beta_loss=beta, init="random", random_state=2,
                     max_iter=9, tol=0, missing="nan").fit(X)
    np.testing.assert_array_equal(run.H, whole.components_)


def test_masked_beta_refusals():
    V, M, _, _ = _data()
    with pytest.raises(InvalidParameterError, match=r"missing values .* any other beta_loss "
                                                    r"with solver 'mu'.*solver='amu'"):
        dnmf.NMF(3, solver="amu", beta_loss="kullback-leibler").fit(V, mask=M)
    Z = V.copy()
    Z[0, 0] = 0.0
    with pytest.raises(ValueError, match="beta_loss <= 0 and X contains zeros"):
        dnmf.NMF(3, solver="mu", beta_loss="itakura-saito").fit(Z, mask=M | True)
    # a zero at an unobserved entry does not count
    M2 = M.copy()
    M2[0, 0] = False
    dnmf.NMF(3, solver="mu", beta_loss="itakura-saito", max_iter=3).fit(Z, mask=M2)


def test_select_rank_cv_with_a_beta_loss_and_missing_values():
    """cv with β = 1.5 on data with 20 % NaN finds the planted rank."""
    rng = np.random.default_rng(4)
    k = 3
    W = rng.random((120, k)) * (rng.random((120, k)) < 0.6) + np.eye(120, k)
    H = rng.random((k, 50)) * (rng.random((k, 50)) < 0.6) + np.eye(k, 50)
    V = rng.gamma(50.0, (W @ H + 0.01) / 50.0)  # multiplicative noise, V > 0
    V[rng.random(V.shape) < 0.2] = np.nan
    res = dnmf.select_rank(V, [2, 3, 4, 5], method="cv", n_replicates=2, solver="mu",
                           beta_loss=1.5, missing="nan", max_iter=300, tol=1e-6)
    assert res.k == k, res.summary.to_string()
    assert all(np.isfinite(r["test_error"]) and r["n_heldout"] > 0 for r in res.rows)
