"""Online (mini-batch) NMF steps: pure functions on one batch of rows.

Lefèvre, Bach & Févotte's online multiplicative updates for the β-divergence, with
scikit-learn's ``MiniBatchNMF`` rules (``sklearn/decomposition/_nmf.py``, 1.9):

- the W-step is one multiplicative update of the batch's rows of W with H fixed
  (or, on a fresh restart, updates from a flat start until W stops changing);
- the H-step folds the batch into two running sums, the numerator ``A`` and the
  denominator ``B`` of the multiplicative update, each first scaled by the forget
  factor ``rho``, and sets ``H = (A / B)`` (with the MM exponent ``gamma`` for
  β outside [1, 2]).

Nothing here reads storage, schedules work or keeps state between calls: every
function returns new arrays and leaves its inputs untouched, so a driver that
commits (H, A, B) and the step count can resume bit for bit.

What differs from scikit-learn, on purpose: for the Frobenius loss on dense
batches the batch cost comes from the products the W-step already made
(½(‖X‖² − 2⟨X·Hᵀ, W⟩ + ⟨WᵀW, H·Hᵀ⟩), accumulated in float64) instead of forming
W·H; :func:`batch_divergence` with ``exact=True`` forms the residual, as
scikit-learn does, for the final ``reconstruction_err_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ._base import EPSILON

__all__ = [
    "EPS64",
    "batch_divergence",
    "fold_H",
    "gamma_for",
    "h_terms",
    "solve_W",
    "sparse_product_at_nonzeros",
    "update_H_online",
    "update_W",
]

#: scikit-learn's threshold below which W (β < 1) and H (β ≤ 1) are set to 0.
EPS64 = float(np.finfo(np.float64).eps)

Array = Any  # a dense ndarray or a SciPy CSR matrix


def gamma_for(beta: float) -> float:
    """The exponent of the majorisation-minimisation update (Févotte & Idier 2011)."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def sparse_product_at_nonzeros(W: np.ndarray, H: np.ndarray, X: sp.csr_matrix) -> sp.csr_matrix:
    """(W·H) at the stored entries of ``X`` only, as a CSR matrix of X's pattern."""
    X = X.tocsr()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    cols = X.indices
    values = np.empty(cols.shape[0], dtype=np.result_type(W.dtype, H.dtype))
    k = W.shape[1]
    step = max(k, cols.shape[0] // max(k, 1))
    Ht = H.T
    for lo in range(0, cols.shape[0], step):
        hi = lo + step
        values[lo:hi] = np.einsum("ij,ij->i", W[rows[lo:hi]], Ht[cols[lo:hi]])
    return sp.csr_matrix((values, cols.copy(), X.indptr.copy()), shape=X.shape)


def _weighted_ratio(X: Array, W: np.ndarray, H: np.ndarray, beta: float
                    ) -> tuple[Array, np.ndarray | None]:
    """(W·H)^(β−2) ∘ X (at X's entries for sparse X) and, for dense X, W·H itself.

    W·H is floored at ε where a negative power would blow up, as scikit-learn does.
    """
    if sp.issparse(X):
        WH_X = sparse_product_at_nonzeros(W, H, X)
        values, x_values = WH_X.data, X.data
        WH = None
    else:
        WH_X = W @ H
        values, x_values = WH_X, X
        WH = WH_X.copy()
        if beta < 1:
            WH[WH < EPSILON] = EPSILON
    if beta < 2:
        values[values < EPSILON] = EPSILON
    if beta == 1:
        np.divide(x_values, values, out=values)
    elif beta == 0:
        values **= -1
        values **= 2
        values *= x_values
    else:
        values **= beta - 2
        values *= x_values
    return WH_X, WH


def _finish(numerator: np.ndarray, denominator: np.ndarray, current: np.ndarray,
            l1: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
    if l1 > 0:
        denominator = denominator + l1
    if l2 > 0:
        denominator = denominator + l2 * current
    denominator[denominator == 0] = EPSILON
    return numerator, denominator


def update_W(
    X: Array, W: np.ndarray, H: np.ndarray, beta: float, l1_W: float, l2_W: float,
    gamma: float, HHt: np.ndarray | None = None, XHt: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One multiplicative update of W (n_b × k) for the batch ``X`` with H fixed.

    Returns the new W, and for β = 2 the products ``X·Hᵀ`` and ``H·Hᵀ`` it used (the
    batch cost and further W-updates with the same H reuse them); None for other β.
    """
    if beta == 2:
        if XHt is None:
            XHt = np.asarray(X @ H.T)
        if HHt is None:
            HHt = H @ H.T
        numerator, denominator = XHt, W @ HHt
    else:
        XHt = None
        WH_X, WH = _weighted_ratio(X, W, H, beta)
        numerator = np.asarray(WH_X @ H.T)
        if beta == 1:
            denominator = np.broadcast_to(H.sum(axis=1)[np.newaxis, :], W.shape).copy()
        elif sp.issparse(X):
            # Row by row: the dense W·H of the batch is never formed.
            denominator = np.empty(W.shape, dtype=W.dtype)
            for i in range(X.shape[0]):
                WHi = W[i] @ H
                if beta < 1:
                    WHi[WHi < EPSILON] = EPSILON
                WHi **= beta - 1
                denominator[i] = WHi @ H.T
        else:
            assert WH is not None
            WH **= beta - 1
            denominator = WH @ H.T
        HHt = None
    numerator, denominator = _finish(numerator, denominator, W, l1_W, l2_W)
    delta = numerator / denominator
    if gamma != 1:
        delta **= gamma
    return W * delta, XHt, HHt


def h_terms(X: Array, W: np.ndarray, H: np.ndarray, beta: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """The numerator and denominator of the multiplicative H-update for the batch.

    Both are sums over the batch's rows, so row blocks of one batch can compute
    theirs apart and add them (in a fixed order). No regularisation yet; for β = 1
    the denominator is W's column sums (broadcast), zeros left for :func:`fold_H`.
    """
    if beta == 2:
        numerator = np.asarray((X.T @ W).T) if sp.issparse(X) else W.T @ X
        return numerator, (W.T @ W) @ H
    WH_X, WH = _weighted_ratio(X, W, H, beta)
    numerator = np.asarray((WH_X.T @ W).T) if sp.issparse(X) else W.T @ WH_X
    if beta == 1:
        return numerator, np.broadcast_to(W.sum(axis=0)[:, np.newaxis], H.shape).copy()
    if sp.issparse(X):
        denominator = np.empty(H.shape, dtype=H.dtype)
        for j in range(X.shape[1]):
            WHj = W @ H[:, j]
            if beta < 1:
                WHj[WHj < EPSILON] = EPSILON
            WHj **= beta - 1
            denominator[:, j] = W.T @ WHj
        return numerator, denominator
    assert WH is not None
    WH **= beta - 1
    return numerator, W.T @ WH


def fold_H(
    numerator: np.ndarray, denominator: np.ndarray, H: np.ndarray, beta: float,
    l1_H: float, l2_H: float, gamma: float, A: np.ndarray, B: np.ndarray, rho: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold one batch's H-update terms into the running sums: the new ``(H, A, B)``.

    ``A ← rho·A + H^(1/γ) ∘ N`` and ``B ← rho·B + D`` with N, D the (regularised)
    numerator and denominator; ``H = (A / B)^γ``.
    """
    if beta == 1:
        denominator = denominator.copy()
        denominator[denominator == 0] = 1.0  # a column of W that is all zero
    numerator, denominator = _finish(numerator, denominator, H, l1_H, l2_H)
    H_g = H ** (1 / gamma) if gamma != 1 else H
    A_new = A * rho
    A_new += numerator * H_g
    B_new = B * rho
    B_new += denominator
    H_new = A_new / B_new
    if gamma != 1:
        H_new **= gamma
    return H_new, A_new, B_new


def update_H_online(
    X: Array, W: np.ndarray, H: np.ndarray, beta: float, l1_H: float, l2_H: float,
    gamma: float, A: np.ndarray, B: np.ndarray, rho: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's H-update folded into the running sums: the new ``(H, A, B)``."""
    numerator, denominator = h_terms(X, W, H, beta)
    return fold_H(numerator, denominator, H, beta, l1_H, l2_H, gamma, A, B, rho)


def solve_W(
    X: Array, H: np.ndarray, beta: float, l1_W: float, l2_W: float, gamma: float,
    max_iter: int, tol: float, mean: float | None = None,
    XHt: np.ndarray | None = None, HHt: np.ndarray | None = None,
) -> np.ndarray:
    """W for the rows ``X`` with H fixed: MU from a flat start until W stops changing.

    The start is ``sqrt(mean(X) / k)`` (``mean`` overrides X's own mean, e.g. the mean
    of the whole data when X is one batch of it); the loop stops after ``max_iter``
    updates or when ‖ΔW‖ / ‖W‖ ≤ ``tol`` (with ``tol > 0``).
    """
    k = H.shape[0]
    dtype = X.dtype
    if mean is None:
        mean = float(X.mean())
    W = np.full((X.shape[0], k), np.sqrt(mean / k), dtype=dtype)
    # For β = 2, X·Hᵀ and H·Hᵀ do not change while W does: computed once, they make
    # an update O(n_b k²) instead of O(n_b m k) (scikit-learn recomputes X·Hᵀ each
    # time; the values are the same).
    if beta == 2:
        HHt = H @ H.T if HHt is None else HHt
        XHt = np.asarray(X @ H.T) if XHt is None else XHt
    for _ in range(max_iter):
        W_new, _, _ = update_W(X, W, H, beta, l1_W, l2_W, gamma, HHt=HHt, XHt=XHt)
        norm = np.linalg.norm(W_new)
        change = np.linalg.norm(W_new - W) / norm if norm > 0 else 0.0
        W = W_new
        if tol > 0 and change <= tol:
            break
    return W


def batch_divergence(
    X: Array, W: np.ndarray, H: np.ndarray, beta: float, *,
    XHt: np.ndarray | None = None, HHt: np.ndarray | None = None,
    X_sq: float | None = None, exact: bool = False,
) -> float:
    """The β-divergence D_β(X ‖ W·H) of one batch (½‖X − WH‖² for β = 2).

    Additive over row blocks, so the divergence of the whole data is the sum over its
    batches. For β = 2 with ``exact=False`` it comes from Grams and ``X·Hᵀ`` (pass
    them if they are at hand) without forming W·H; otherwise scikit-learn's formulas.
    """
    if beta == 2:
        if exact and not sp.issparse(X):
            residual = X - W @ H
            return float(np.dot(residual.ravel(), residual.ravel())) / 2.0
        if X_sq is None:
            data = X.data if sp.issparse(X) else np.asarray(X).ravel()
            data = data.astype(np.float64, copy=False)
            X_sq = float(np.dot(data, data))
        if XHt is None:
            XHt = np.asarray(X @ H.T)
        if HHt is None:
            HHt = H @ H.T
        W64 = W.astype(np.float64, copy=False)
        cross = float(np.dot(XHt.astype(np.float64, copy=False).ravel(), W64.ravel()))
        gram = float(np.dot((W64.T @ W64).ravel(), HHt.astype(np.float64, copy=False).ravel()))
        return (X_sq - 2.0 * cross + gram) / 2.0

    if sp.issparse(X):
        WH_data = sparse_product_at_nonzeros(W, H, X).data
        X_data = X.data
    else:
        WH = W @ H
        WH_data = WH.ravel()
        X_data = np.asarray(X).ravel()
    keep = X_data > EPSILON
    WH_data = WH_data[keep]
    X_data = X_data[keep]
    WH_data[WH_data < EPSILON] = EPSILON
    if beta == 1:
        sum_WH = float(np.dot(W.sum(axis=0), H.sum(axis=1)))
        res = float(np.dot(X_data, np.log(X_data / WH_data)))
        return res + sum_WH - float(X_data.sum())
    if beta == 0:
        div = X_data / WH_data
        return float(np.sum(div) - np.prod(X.shape) - np.sum(np.log(div)))
    if sp.issparse(X):
        sum_WH_beta = 0.0
        for j in range(X.shape[1]):
            sum_WH_beta += float(np.sum((W @ H[:, j]) ** beta))
    else:
        sum_WH_beta = float(np.sum(WH**beta))
    sum_X_WH = float(np.dot(X_data, WH_data ** (beta - 1)))
    res = float((X_data**beta).sum()) - beta * sum_X_WH + sum_WH_beta * (beta - 1)
    return res / (beta * (beta - 1))
