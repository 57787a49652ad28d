"""Lee & Seung's multiplicative updates for the Frobenius norm and the KL divergence.

The update rules, their regularisation and their treatment of zero denominators
follow scikit-learn's ``_multiplicative_update_w/h`` so that, from the same start,
the iterates agree with ``sklearn.decomposition.NMF(solver="mu")``.

References
----------
Lee, D. D. and Seung, H. S. (2000). Algorithms for non-negative matrix
factorization. Advances in Neural Information Processing Systems 13.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _kernels
from ._base import (
    EPSILON,
    Array,
    PanelContext,
    Regularization,
    Solver,
    Stats,
    solve_rows,
    t_dot,
)
from ._frobenius import FrobeniusSolver

__all__ = ["KLMultiplicative", "Multiplicative"]


class Multiplicative(FrobeniusSolver):
    """MU for ½‖V − WH‖²: ``W ← W ∘ (V·Hᵀ) / (W·H·Hᵀ + l1 + l2·W)``."""

    def step(
        self,
        X: np.ndarray,
        P: np.ndarray,
        G: np.ndarray,
        l1: float,
        l2: float,
        rho: float,
        *,
        compiled: bool = False,
    ) -> np.ndarray:
        denominator = X @ G.astype(X.dtype, copy=False)
        if l1 > 0:
            denominator += l1
        if l2 > 0:
            denominator = denominator + l2 * X
        denominator[denominator == 0] = EPSILON
        delta = P / denominator
        return X * delta


#: Stored entries per block when forming W·H at V's non-zeros: bounds the temporaries
#: (two blocks × k values) whatever the panel's nnz.
NNZ_BLOCK = 1 << 16


#: Entries per block when reducing over a panel's values in float64 (8 MiB each).
SUM_BLOCK = 1 << 20


def _sparse(V: Array) -> bool:
    """``sp.issparse(V)``, without its ABC check for the common dense panel."""
    return not isinstance(V, np.ndarray) and sp.issparse(V)


def _wh_at(W: np.ndarray, H: np.ndarray, V: Array, compiled: bool = False) -> np.ndarray:
    """``W·H`` floored at EPSILON, dense, or at the stored entries of a CSR V.

    For sparse V the values come in ``V.data``'s order, computed block by block of
    stored entries (O(nnz·k) work, O(NNZ_BLOCK·k) extra memory); ``compiled``: in
    one compiled loop over the rows instead (no temporaries; same values to rounding).
    """
    if _sparse(V):
        indptr, indices = V.indptr, V.indices
        Ht = np.ascontiguousarray(H.T)
        values = np.empty(indices.shape[0], dtype=np.result_type(W.dtype, H.dtype))
        if compiled:
            _kernels.wh_at_csr(indptr, indices, np.ascontiguousarray(W), Ht, values)
            _floor(values)
            return values
        for start in range(0, values.shape[0], NNZ_BLOCK):
            stop = min(start + NNZ_BLOCK, values.shape[0])
            rows = np.searchsorted(indptr, np.arange(start, stop), side="right") - 1
            values[start:stop] = np.einsum("ij,ij->i", W[rows], Ht[indices[start:stop]])
    else:
        values = W @ H
    _floor(values)
    return values


def _floor(values: np.ndarray) -> None:
    """``values = max(values, EPSILON)`` in place (a masked store: a third of
    ``np.maximum``'s time on small arrays; NaN stays NaN as it would there)."""
    values[values < EPSILON] = EPSILON


def _csr(V: Array) -> Array:
    """A sparse panel in CSR form (no copy when it already is)."""
    return V.tocsr() if _sparse(V) and V.format != "csr" else V


def _ratio(V: Array, WH: np.ndarray) -> Array:
    """``V / (W·H)`` (dense) or the same at V's stored entries (sparse, CSR).

    The quotient is written over ``WH``, which the caller hands over.
    """
    if _sparse(V):
        np.divide(V.data, WH, out=WH)
        return sp.csr_matrix((WH, V.indices, V.indptr), shape=V.shape)
    np.divide(V, WH, out=WH)
    return WH


def _kl_pieces(V: Array, WH: np.ndarray, W: np.ndarray) -> Stats:
    """Σ v·log(v/wh) and Σ v over entries with v > EPSILON, and column sums of W.

    Summed in float64 block by block (fixed order), so the temporaries stay
    O(SUM_BLOCK) however large the panel.
    """
    data = V.data if sp.issparse(V) else V.ravel()
    wh = WH.ravel()
    xlog = np.zeros(1)
    xsum = np.zeros(1)
    for start in range(0, data.shape[0], SUM_BLOCK):
        block = slice(start, start + SUM_BLOCK)
        x, y = data[block], wh[block]
        keep = x > EPSILON
        x = x[keep].astype(np.float64)
        xlog += np.dot(x, np.log(x / y[keep]))
        xsum += x.sum()
    W64 = W.astype(np.float64, copy=False)
    return {"kl_xlog": xlog, "kl_xsum": xsum, "w_sum0": W.sum(axis=0, dtype=np.float64),
            "w_sq0": np.array([np.vdot(W64, W64)])}


def _kl_pieces_from_ratio(V: np.ndarray, R: np.ndarray, W: np.ndarray) -> Stats:
    """:func:`_kl_pieces` of a dense float64 panel from ``R = V / WH`` (WH floored).

    ``log(v / wh)`` is ``log(R)``, the quotient the W-step needs anyway, so the loss
    costs one log per entry and two dot products: no masked copies. Entries with
    v ≤ EPSILON are left out as there (their log taken as 0). Same values per entry as
    :func:`_kl_pieces` (float64 throughout); the sums differ only in their order.
    """
    x, r = V.ravel(), R.ravel()
    xlog = np.zeros(1)
    xsum = np.zeros(1)
    for start in range(0, x.shape[0], SUM_BLOCK):
        block = slice(start, start + SUM_BLOCK)
        xb, rb = x[block], r[block]
        keep = xb > EPSILON
        if keep.all():
            logs = np.log(rb)
            xsum += xb.sum()
        else:
            logs = np.where(keep, rb, 1.0)
            np.log(logs, out=logs)
            xsum += np.add.reduce(xb, where=keep)
        xlog += np.dot(xb, logs)
    return {"kl_xlog": xlog, "kl_xsum": xsum, "w_sum0": W.sum(axis=0, dtype=np.float64),
            "w_sq0": np.array([np.vdot(W, W)])}


def _fused(V: Array, W: np.ndarray, H: np.ndarray) -> bool:
    """A dense (C order) or CSR float32/float64 panel with factors of its dtype: the
    case of the compiled :func:`._kernels.kl_dense` and :func:`._kernels.kl_csr`."""
    if W.dtype != V.dtype or H.dtype != V.dtype or V.dtype not in (np.float32, np.float64):
        return False
    if isinstance(V, np.ndarray):
        return True
    return _sparse(V) and V.format == "csr"


def _dense64(V: Array, W: np.ndarray, H: np.ndarray) -> bool:
    """A dense float64 panel with float64 factors (where :func:`_kl_pieces_from_ratio`
    gives :func:`_kl_pieces`'s values entry for entry)."""
    return (isinstance(V, np.ndarray) and V.dtype == np.float64 and W.dtype == np.float64
            and H.dtype == np.float64)


class KLMultiplicative(Solver):
    """MU for the generalised KL divergence D(V ‖ WH).

    The W-step needs ``V_i / (W_i·H)``; after it, the same task computes
    ``W_iᵀ·(V_i / (W_i^{new}·H))`` and the column sums of the new W_i for the
    H-step, from the panel already in memory. The loss at the (W, H) a pass starts
    from falls out of the first product, so the loss of iteration t is known during
    pass t + 1.
    """

    beta = 1.0
    exact_loss_after_update = False
    uses_gram = False

    def update_panel(
        self, V: Array, W: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> tuple[np.ndarray, Stats]:
        H = ctx.H
        V = _csr(V)
        compiled = ctx.compiled
        if compiled and _fused(V, W, H):
            return self._fused_panel(V, W, ctx, reg)
        WH = _wh_at(W, H, V, compiled)
        if _dense64(V, W, H):
            R = _ratio(V, WH)  # over WH
            pieces = _kl_pieces_from_ratio(V, R, W)
        else:
            pieces = _kl_pieces(V, WH, W)
            R = _ratio(V, WH)
        del WH
        W_new = self._step_from_ratio(W, np.asarray(R @ H.T), ctx, reg)
        del R
        A = t_dot(W_new, _ratio(V, _wh_at(W_new, H, V, compiled)))
        pieces["A"] = A.astype(np.float64, copy=False)
        pieces["w_sum"] = W_new.sum(axis=0, dtype=np.float64)
        W64 = W_new.astype(np.float64, copy=False)
        pieces["w_sq"] = np.array([np.vdot(W64, W64)])
        return W_new, pieces

    #: The W- and H-steps: amu's over-relaxed ones (:mod:`._kl`) or MU's.
    accelerated = False
    omegas: tuple[float, ...] = ()
    _omega_array = np.zeros(0)

    def _fused_panel(
        self, V: Array, W: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> tuple[np.ndarray, Stats]:
        """:meth:`update_panel` in one compiled loop over blocks of rows
        (:func:`._kernels.kl_dense`, :func:`._kernels.kl_csr`): the same values to
        rounding."""
        k = W.shape[1]
        fused = _kernels.kl_csr if _sparse(V) else _kernels.kl_dense
        W_new, A, sums = fused(
            V if _sparse(V) else np.ascontiguousarray(V), np.ascontiguousarray(W),
            np.ascontiguousarray(ctx.H), ctx.H_sum.astype(W.dtype, copy=False), reg.l1_W,
            reg.l2_W,
            self._omega_array, self.accelerated, EPSILON)
        return W_new, {
            "kl_xlog": sums[0:1], "kl_xsum": sums[1:2], "w_sum0": sums[2:2 + k],
            "w_sq0": sums[2 + k:3 + k], "A": A.astype(np.float64, copy=False),
            "w_sum": sums[3 + k:3 + 2 * k], "w_sq": sums[3 + 2 * k:4 + 2 * k],
        }

    def _step_W(
        self, V: Array, W: np.ndarray, WH: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        """``W ∘ ((V / WH)·Hᵀ) / (row sums of H + l1 + l2·W)``; overwrites ``WH``."""
        return self._step_from_ratio(W, np.asarray(_ratio(V, WH) @ ctx.H.T), ctx, reg)

    @staticmethod
    def _step_from_ratio(
        W: np.ndarray, numerator: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        """The W-step from MU's numerator ``(V / WH)·Hᵀ`` (overwritten)."""
        denominator = ctx.H_sum.astype(W.dtype)[np.newaxis, :]
        if reg.l1_W > 0:
            denominator = denominator + reg.l1_W
        if reg.l2_W > 0:
            denominator = denominator + reg.l2_W * W
        if np.any(denominator == 0):
            denominator = np.broadcast_to(denominator, W.shape).copy()
            denominator[denominator == 0] = EPSILON
        numerator /= denominator
        return W * numerator

    def update_H(
        self, H: np.ndarray, stats: Stats, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        w_sum = stats["w_sum"].copy()
        w_sum[w_sum == 0] = 1.0
        denominator = np.broadcast_to(w_sum[:, np.newaxis], H.shape).copy()
        if reg.l1_H > 0:
            denominator += reg.l1_H
        if reg.l2_H > 0:
            denominator = denominator + reg.l2_H * H
        denominator[denominator == 0] = EPSILON
        H_new = H * (stats["A"] / denominator)
        # scikit-learn's step for beta <= 1 ("necessary for stability"): entries below
        # float64's eps become exact zeros, so an exact reconstruction can reach 0.
        H_new[H_new < np.finfo(np.float64).eps] = 0.0
        return H_new

    def loss_pieces(self, V: Array, W: np.ndarray, ctx: PanelContext) -> Stats:
        V = _csr(V)
        compiled = ctx.compiled
        return _kl_pieces(V, _wh_at(W, ctx.H, V, compiled), W)

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        sum_wh = float(np.dot(stats["w_sum0"], ctx.H_sum.astype(np.float64, copy=False)))
        value = float(stats["kl_xlog"][0]) + sum_wh - float(stats["kl_xsum"][0])
        return max(value, 0.0)

    def rounding(self, norm_sq: float, total: float, eps: float) -> float:
        # Σ v·log(v/wh) + Σ wh − Σ v: terms of the size of Σ v.
        return 64.0 * eps * total

    def transform_panel(
        self,
        V: Array,
        W: np.ndarray,
        ctx: PanelContext,
        reg: Regularization,
        max_iter: int,
        tol: float,
    ) -> np.ndarray:
        V = _csr(V)
        H = ctx.H
        compiled = ctx.compiled

        def step(rows: np.ndarray, Xr: np.ndarray) -> np.ndarray:
            Vr = V if rows.size == V.shape[0] else V[rows]
            return self._step_W(Vr, Xr, _wh_at(Xr, H, Vr, compiled), ctx, reg)

        return solve_rows(step, W.copy(), max_iter, tol)
