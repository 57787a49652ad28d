"""Multiplicative updates for the β-divergence, any real β other than 1 and 2.

The rules are scikit-learn's (``_multiplicative_update_w/h`` in
``sklearn/decomposition/_nmf.py``; Févotte & Idier 2011): with Q = (WH)^(β−2) and
D = (WH)^(β−1),

    W ← W ∘ [((V ∘ Q)·Hᵀ) / (D·Hᵀ + l1 + l2·W)]^γ(β),
    H ← H ∘ [(Wᵀ·(V ∘ Q)) / (Wᵀ·D + l1 + l2·H)]^γ(β),

γ = 1/(2 − β) for β < 1, 1 for 1 ≤ β ≤ 2, 1/(β − 1) for β > 2. scikit-learn's
treatment of small values is kept exactly: WH is floored at ``EPSILON`` in Q when
β < 2 and in D when β < 1, a zero denominator becomes ``EPSILON``, and for β < 1
entries of W (after the W-step) and of H (after the H-step) below float64's eps are
set to 0. β = 1 (KL) and β = 2 (Frobenius) have their own kernels in ``_mu``.

One task per panel, reading V_i once: W_i·H gives the loss pieces at (W_i, H) and
the W-step; the new W_i·H (a second panel-local product) gives the panel's parts of
the two k × m sums of the H-step. Both run block by block of rows, so the
temporaries (WH, Q, D) stay O(BLOCK_ENTRIES) whatever the panel's size. For sparse
V, V ∘ Q is needed only at the stored entries, but D (and Σ(WH)^β in the loss)
involve every entry, so the work is that of a dense panel; only V itself stays
sparse. (For β = 1 the D-term is a row sum of H, which is why KL alone runs at
O(nnz·k).)

The powers take fast paths (reciprocal, sqrt, squares) for the exponents the
common β give (β = 0, 0.5, 1.5, 3 ...), and D is formed as Q ∘ WH, so a pass needs
at most one general ``np.power`` per product where scikit-learn needs two.

References
----------
Févotte, C. and Idier, J. (2011). Algorithms for nonnegative matrix factorization
with the β-divergence. Neural Computation 23(9). doi:10.1162/NECO_a_00168
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._base import (
    EPSILON,
    Array,
    PanelContext,
    Regularization,
    Solver,
    Stats,
    solve_rows,
    w_pieces,
)

__all__ = ["BetaMultiplicative", "beta_divergence_pieces", "beta_gamma", "power"]

#: Entries of a block of rows of WH: bounds the temporaries (a few of these, 8 MiB each).
BLOCK_ENTRIES = 1 << 20

#: The float64 eps below which scikit-learn sets W and H entries to 0 when β < 1.
EPS64 = float(np.finfo(np.float64).eps)


def beta_gamma(beta: float) -> float:
    """The exponent γ(β) of the majorisation-minimisation step (Févotte & Idier)."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def power(x: np.ndarray, p: float, out: np.ndarray | None = None) -> np.ndarray:
    """``x ** p`` elementwise, with fast paths for the exponents common β give.

    The fast paths (reciprocal, square, sqrt and their products) agree with
    ``np.power`` to a few ulps; any other exponent is ``np.power``.
    """
    if out is None:
        out = np.empty_like(x)
    if p == 1:
        np.copyto(out, x)
    elif p == 0:
        out.fill(1)
    elif p == -1:
        np.reciprocal(x, out=out)
    elif p == 2:
        np.multiply(x, x, out=out)
    elif p == -2:
        np.multiply(x, x, out=out)
        np.reciprocal(out, out=out)
    elif p == 0.5:
        np.sqrt(x, out=out)
    elif p == -0.5:
        np.sqrt(x, out=out)
        np.reciprocal(out, out=out)
    elif p == 1.5:
        np.sqrt(x, out=out)
        out *= x
    elif p == -1.5:
        np.sqrt(x, out=out)
        out *= x
        np.reciprocal(out, out=out)
    elif p == 3:
        np.multiply(x, x, out=out)
        out *= x
    else:
        np.power(x, p, out=out)
    return out


def _q_and_d(WH: np.ndarray, beta: float, wh_min: float | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Q = WH^(β−2) and D = WH^(β−1) with scikit-learn's floors (see the module).

    ``WH`` (raw) is not modified; ``wh_min`` is its minimum if the caller has it.
    """
    floor_q = beta < 2
    floor_d = beta < 1
    if wh_min is None:
        wh_min = float(WH.min()) if WH.size else 1.0
    if wh_min >= EPSILON and beta - 1.0 in (0.5, 1.5, 2.0):
        # No floor is active and D has a fast power (β = 1.5, 2.5, 3): D first, then
        # Q = D / WH, one pass fewer than Q's power and a product.
        D = power(WH, beta - 1.0)
        return np.divide(D, WH), D
    base = np.maximum(WH, EPSILON) if floor_q and wh_min < EPSILON else WH
    if beta == 0:
        # Itakura-Saito: both floored alike; D = 1/base, Q = D², two passes.
        D = np.reciprocal(base)
        return np.multiply(D, D), D
    Q = power(base, beta - 2.0)
    # D = Q·base when both use the same base; for 1 ≤ β < 2 D takes the raw WH, which
    # differs from the floored base only where WH < EPSILON.
    D = np.multiply(Q, base)
    if floor_q and not floor_d and wh_min < EPSILON:
        small = WH < EPSILON
        D[small] = np.power(WH[small], beta - 1.0)
    return Q, D


def _fast_loss(Xb: Array, r: np.ndarray | None, c: np.ndarray | None, WH: np.ndarray,
               D: np.ndarray, wh_min: float, beta: float) -> tuple[float, float, float] | None:
    """The loss sums of one block from D = WH^(β−1) already made for the step.

    Valid when no x lies in (0, EPSILON] (zeros add nothing to the x-terms) and WH
    has no entry below EPSILON (so no floor is active); None otherwise, and the caller
    takes the exact path (:func:`beta_divergence_pieces`).
    """
    if wh_min < EPSILON:
        return None
    x = np.asarray(Xb).ravel()
    if x.size and float(x.min()) > EPSILON:
        small = np.zeros(0, dtype=bool)  # no entry at or below EPSILON: no mask needed
    else:
        small = x <= EPSILON
        if np.any(x[small] > 0):
            return None
    d = D.ravel() if r is None else D[r, c]
    x64 = x if x.dtype == np.float64 else x.astype(np.float64)
    d64 = d if d.dtype == np.float64 else d.astype(np.float64)
    cross = float(np.dot(x64, d64))
    if beta == 0:
        if small.any():
            x64, d64 = x64[~small], d64[~small]
        return cross, float(np.log(x64 * d64).sum()), 0.0
    if small.any():
        x64 = x64[~small]
    total = float(np.dot(D.ravel().astype(np.float64, copy=False),
                         WH.ravel().astype(np.float64, copy=False)))
    # Σ x^β as x·x^(β−1): a dot instead of a product and a sum.
    return float(np.dot(x64, power(x64, beta - 1.0))), cross, total


def beta_divergence_pieces(X: Array, WH: np.ndarray, beta: float) -> tuple[float, float, float]:
    """The data-dependent sums of scikit-learn's ``_beta_divergence`` for one block.

    ``X`` is a dense block, or the stored values of a sparse block with ``WH`` taken
    at the same entries; ``WH`` is raw. Only entries with x > EPSILON count and WH is
    floored at EPSILON there, as in scikit-learn. Returns, in float64:

    - β = 0: (Σ x/wh, Σ log(x/wh), 0)
    - else:  (Σ x^β, Σ x·wh^(β−1), 0)

    The third slot is unused here (Σ (WH)^β over every entry is summed by the caller).
    """
    x = np.asarray(X).ravel()
    y = np.asarray(WH).ravel()
    keep = x > EPSILON
    if not keep.all():
        x, y = x[keep], y[keep]
    x = x.astype(np.float64, copy=False)
    y = np.maximum(y, EPSILON).astype(np.float64, copy=False)
    if beta == 0:
        div = x / y
        return float(div.sum()), float(np.log(div).sum()), 0.0
    return float(power(x, beta).sum()), float(np.dot(x, power(y, beta - 1.0))), 0.0


def _row_blocks(n: int, m: int) -> list[slice]:
    rows = max(1, BLOCK_ENTRIES // max(m, 1))
    return [slice(a, min(a + rows, n)) for a in range(0, n, rows)]


def _block(V: Array, rows: slice) -> tuple[Array, np.ndarray | None, np.ndarray | None]:
    """A block of rows of V: dense as is; sparse as (values, local rows, columns)."""
    if sp.issparse(V):
        lo, hi = V.indptr[rows.start], V.indptr[rows.stop]
        counts = np.diff(V.indptr[rows.start:rows.stop + 1])
        local = np.repeat(np.arange(rows.stop - rows.start), counts)
        return V.data[lo:hi], local, V.indices[lo:hi]
    return V[rows], None, None


def _xq(Xb: Array, r: np.ndarray | None, c: np.ndarray | None, Q: np.ndarray,
        shape: tuple[int, int]) -> Array:
    """V ∘ Q for a block: dense, or a CSR block at the stored entries."""
    if r is None:
        return np.multiply(Xb, Q)
    values = Xb * Q[r, c]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=shape[0]))])
    return sp.csr_matrix((values, c, indptr), shape=shape)


def _rmatmul_T(XQ: Array, M: np.ndarray) -> np.ndarray:
    """``M.T @ XQ`` (k × m) for a dense or CSR block."""
    if sp.issparse(XQ):
        return np.asarray((XQ.T @ M).T)
    return M.T @ XQ


class BetaMultiplicative(Solver):
    """scikit-learn's MU for the β-divergence, β ∉ {1, 2}; see the module docstring.

    Parameters
    ----------
    beta : float
        The β of the divergence.
    """

    exact_loss_after_update = False
    uses_gram = False

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)
        self.gamma = beta_gamma(self.beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta!r})"

    # ------------------------------------------------------------- W-step
    def _delta(self, numerator: np.ndarray, denominator: np.ndarray, X: np.ndarray,
               l1: float, l2: float) -> np.ndarray:
        """``(numerator / (denominator + l1 + l2·X))^γ`` with sklearn's zero rule."""
        if l1 > 0:
            denominator += l1
        if l2 > 0:
            denominator = denominator + l2 * X
        denominator[denominator == 0] = EPSILON
        numerator /= denominator
        if self.gamma != 1:
            power(numerator, self.gamma, out=numerator)
        return numerator

    def _step_rows(self, Xb: Array, r: np.ndarray | None, c: np.ndarray | None,
                   W: np.ndarray, H: np.ndarray, reg: Regularization,
                   pieces: list[float] | None) -> np.ndarray:
        """The W-step for a block of rows (with the loss pieces at (W, H) if asked)."""
        WH = W @ H
        wh_min = float(WH.min()) if WH.size else 1.0
        Q, D = _q_and_d(WH, self.beta, wh_min)
        if pieces is not None:
            sums = _fast_loss(Xb, r, c, WH, D, wh_min, self.beta)
            if sums is None:
                self._add_loss(pieces, Xb, r, c, WH)
            else:
                for i in range(3):
                    pieces[i] += sums[i]
        del WH
        numerator = np.asarray(_xq(Xb, r, c, Q, W.shape[:1] + H.shape[1:]) @ H.T)
        denominator = D @ H.T
        del Q, D
        W_new = W * self._delta(numerator, denominator, W, reg.l1_W, reg.l2_W)
        if self.beta < 1:
            W_new[W_new < EPS64] = 0.0
        return W_new

    def _add_loss(self, pieces: list[float], Xb: Array, r: np.ndarray | None,
                  c: np.ndarray | None, WH: np.ndarray) -> None:
        """The loss sums by the exact (slower) path: scikit-learn's own formulas."""
        a, b, _ = beta_divergence_pieces(Xb, WH if r is None else WH[r, c], self.beta)
        pieces[0] += a
        pieces[1] += b
        if self.beta != 0:
            pieces[2] += float(power(WH.astype(np.float64, copy=False), self.beta).sum())

    def update_panel(
        self, V: Array, W: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> tuple[np.ndarray, Stats]:
        H = ctx.H
        if sp.issparse(V) and V.format != "csr":
            V = V.tocsr()
        n, m = V.shape
        W_new = np.empty_like(W)
        numerator = np.zeros(H.shape, dtype=np.float64)
        denominator = np.zeros(H.shape, dtype=np.float64)
        pieces = [0.0, 0.0, 0.0]
        for rows in _row_blocks(n, m):
            Xb, r, c = _block(V, rows)
            Wb = self._step_rows(Xb, r, c, W[rows], H, reg, pieces)
            W_new[rows] = Wb
            # The H-step's sums at (W_new, H), from the block already in memory.
            Q, D = _q_and_d(Wb @ H, self.beta)
            numerator += _rmatmul_T(_xq(Xb, r, c, Q, (Wb.shape[0], m)), Wb)
            denominator += Wb.T @ D
        return W_new, {"num": numerator, "den": denominator,
                       "loss": np.array(pieces, dtype=np.float64), **w_pieces(W)}

    # ------------------------------------------------------------- H-step
    def update_H(
        self, H: np.ndarray, stats: Stats, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        H = np.asarray(H, dtype=np.float64)
        delta = self._delta(stats["num"].copy(), stats["den"].copy(), H, reg.l1_H, reg.l2_H)
        H_new = H * delta
        if self.beta <= 1:
            H_new[H_new < EPS64] = 0.0
        return H_new

    # --------------------------------------------------------------- loss
    def loss_pieces(self, V: Array, W: np.ndarray, ctx: PanelContext) -> Stats:
        if sp.issparse(V) and V.format != "csr":
            V = V.tocsr()
        n, m = V.shape
        pieces = [0.0, 0.0, 0.0]
        for rows in _row_blocks(n, m):
            Xb, r, c = _block(V, rows)
            self._add_loss(pieces, Xb, r, c, W[rows] @ ctx.H)
        return {"loss": np.array(pieces, dtype=np.float64), **w_pieces(W)}

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        a, b, c = (float(v) for v in stats["loss"])
        beta = self.beta
        if beta == 0:
            n, m = ctx.shape
            return a - float(n) * float(m) - b
        return (a - beta * b + (beta - 1.0) * c) / (beta * (beta - 1.0))

    # ---------------------------------------------------------- transform
    def transform_panel(
        self,
        V: Array,
        W: np.ndarray,
        ctx: PanelContext,
        reg: Regularization,
        max_iter: int,
        tol: float,
    ) -> np.ndarray:
        if sp.issparse(V) and V.format != "csr":
            V = V.tocsr()
        H = ctx.H

        def step(rows: np.ndarray, Xr: np.ndarray) -> np.ndarray:
            Vr = V if rows.size == V.shape[0] else V[rows]
            out = np.empty_like(Xr)
            for block in _row_blocks(Xr.shape[0], V.shape[1]):
                Xb, r, c = _block(Vr, block)
                out[block] = self._step_rows(Xb, r, c, Xr[block], H, reg, None)
            return out

        return solve_rows(step, W.copy(), max_iter, tol)
