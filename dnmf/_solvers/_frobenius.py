"""The shared structure of the Frobenius-loss solvers (MU, HALS, ALS).

For ½‖V − WH‖² a panel needs only ``P_i = V_i·Hᵀ`` and the Gram ``G = H·Hᵀ`` to
update its rows of W; it then returns ``A_i = W_iᵀ·V_i`` and ``B_i = W_iᵀ·W_i``. H
is the transposed problem: the H-step is the W-step applied to ``(Hᵀ, Aᵀ, B)``. The
loss follows from the same sums without forming WH:

    ½‖V − WH‖² = ½(‖V‖² − 2⟨A, H⟩ + ⟨B, H·Hᵀ⟩).

Subclasses only provide ``step``: one W-step on a block of rows given ``P`` and
``G``, row-local so that how V is split into panels does not change the result.
"""

from __future__ import annotations

import copy
from abc import abstractmethod

import numpy as np

from . import _kernels
from ._base import (
    Array,
    PanelContext,
    Regularization,
    Solver,
    Stats,
    exact_t_dot,
    penalty,
    solve_rows,
    t_dot,
)

__all__ = ["FrobeniusSolver"]


class FrobeniusSolver(Solver):
    """Base class of the Frobenius solvers; see the module docstring."""

    beta = 2.0
    exact_loss_after_update = True
    #: Below this (n + m)·k the NumPy step runs in ``auto`` mode (see
    #: :func:`dnmf._solvers._kernels.enabled`).
    tiny = _kernels.TINY

    @abstractmethod
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
        """One update of the rows of ``X`` (n × k) for min ½‖Y − X·Fᵀ‖² + penalties.

        ``P = Y·F`` (n × k) and ``G = Fᵀ·F`` (k × k). ``rho`` is the ratio of the cost
        of forming ``P`` to the cost of one sweep over ``X`` (accelerated HALS).
        ``compiled``: use the compiled kernel where the solver has one (the fit's
        choice, :func:`dnmf._solvers._kernels.enabled`); the result agrees with the
        NumPy reference to rounding. Returns a new array; ``X`` is not modified.
        """

    def sweep_ratio(self, ctx: PanelContext, rho: float) -> float:
        """The cost ratio ``step`` is given in this pass (HALS: a warm-up of 0)."""
        return rho

    def component_order(self, ctx: PanelContext, factor: int, k: int) -> np.ndarray | None:
        """The order in which ``step`` visits the components (None: 0, 1, ..., k - 1)."""
        return None

    def _ordered_step(self, ctx: PanelContext, factor: int, X: np.ndarray, P: np.ndarray,
                      G: np.ndarray, l1: float, l2: float, rho: float,
                      compiled: bool) -> np.ndarray:
        """``step`` with the components visited in :meth:`component_order`."""
        order = self.component_order(ctx, factor, G.shape[0])
        if order is None:
            return self.step(X, P, G, l1, l2, rho, compiled=compiled)
        back = np.argsort(order)
        out = self.step(np.ascontiguousarray(X[:, order]), np.ascontiguousarray(P[:, order]),
                        G[np.ix_(order, order)], l1, l2, rho, compiled=compiled)
        return np.ascontiguousarray(out[:, back])

    def _w_step(self, V: Array, W: np.ndarray, ctx: PanelContext,
                reg: Regularization) -> tuple[np.ndarray, Stats]:
        """The W-step of a panel from ``W`` (the solver's output, before any cast) and
        the statistics of the pass's starting W: the loss at (W^t, H^t), for the first
        iteration's reference value, and W's column sums (the penalties)."""
        H = ctx.H
        P = np.asarray(V @ H.T)
        start = {"cross0": np.array([np.vdot(P, W)], dtype=np.float64),
                 "gram0": (W.T @ W).astype(np.float64),
                 "w_sum0": W.sum(axis=0, dtype=np.float64)}
        n, m = ctx.shape
        k = H.shape[0]
        rho = self.sweep_ratio(ctx, 1.0 + (ctx.nnz + m * k) / (n * (k + 1.0)))
        W_new = self._ordered_step(ctx, 0, W, P, ctx.gram, reg.l1_W, reg.l2_W, rho,
                                   _kernels.enabled(ctx.shape, k, self.tiny))
        return W_new, start

    def with_exact_stats(self) -> FrobeniusSolver:
        exact = copy.copy(self)
        exact.exact_stats = True
        return exact

    def _h_sums(self, V: Array, W: np.ndarray) -> Stats:
        """What the H-step needs of the panel's new W: ``A = Wᵀ·V``, ``B = Wᵀ·W`` and
        W's column sums (the penalties). With :attr:`exact_stats`, from float64 casts
        of a float32 W and V (the products of float32 numbers are exact in float64)."""
        if self.exact_stats and W.dtype != np.float64:
            W = W.astype(np.float64)
            A = exact_t_dot(W, V)
        else:
            A = t_dot(W, V).astype(np.float64)
        return {"A": A, "B": (W.T @ W).astype(np.float64, copy=False),
                "w_sum": W.sum(axis=0, dtype=np.float64)}

    def update_panel(
        self, V: Array, W: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> tuple[np.ndarray, Stats]:
        W_new, start = self._w_step(V, W, ctx, reg)
        W_new = W_new.astype(W.dtype, copy=False)
        return W_new, {**self._h_sums(V, W_new), **start}

    def update_panel_extrapolated(
        self, V: Array, W_start: np.ndarray, W_prev: np.ndarray, ctx: PanelContext,
        reg: Regularization, beta: float
    ) -> tuple[tuple[np.ndarray, np.ndarray], Stats]:
        """The W-step from ``W_start``, then the extrapolated W the H-step works with.

        ``W_new = step(W_start)`` (H = ``ctx.H``, the extrapolated H) and
        ``W_y = max(0, W_new + beta·(W_new − W_prev))``, ``W_prev`` being the last
        accepted W-step (Ang & Gillis 2019); the statistics ``A``, ``B`` are those of
        ``W_y``, so the loss after the H-step is the loss at (W_y, H_new). Returns
        ``(W_new, W_y)`` and the statistics.
        """
        W_new, start = self._w_step(V, W_start, ctx, reg)
        W_y = np.asarray(W_new, dtype=np.float64) - W_prev
        W_y *= beta
        W_y += W_new
        np.maximum(W_y, 0.0, out=W_y)
        W_new = W_new.astype(W_start.dtype, copy=False)
        W_y = W_y.astype(W_start.dtype, copy=False)
        return (W_new, W_y), {**self._h_sums(V, W_y), **start}

    def update_H(
        self, H: np.ndarray, stats: Stats, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        n, m = ctx.shape
        k = H.shape[0]
        # Cost of the pass that produced A (≈ nnz·k) over the cost of an H sweep (m·k²).
        rho = self.sweep_ratio(ctx, 1.0 + (ctx.nnz + n * k) / (m * (k + 1.0)))
        Ht = self._ordered_step(
            ctx, 1,
            np.ascontiguousarray(H.T, dtype=np.float64),
            stats["A"].T,
            stats["B"],
            reg.l1_H,
            reg.l2_H,
            rho,
            _kernels.enabled(ctx.shape, k, self.tiny),
        )
        return np.ascontiguousarray(Ht.T)

    def loss_pieces(self, V: Array, W: np.ndarray, ctx: PanelContext) -> Stats:
        P = np.asarray(V @ ctx.H.T)
        return {
            "cross0": np.array([np.vdot(P, W)], dtype=np.float64),
            "gram0": (W.T @ W).astype(np.float64),
            "w_sum0": W.sum(axis=0, dtype=np.float64),
        }

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        value = 0.5 * (
            norm_sq - 2.0 * float(stats["cross0"][0]) + float(np.vdot(stats["gram0"], ctx.gram))
        )
        return max(value, 0.0)

    def penalty_before(self, stats: Stats, H: np.ndarray, reg: Regularization) -> float:
        if not (reg.l1_W or reg.l2_W or reg.l1_H or reg.l2_H):
            return 0.0
        return penalty(reg, float(np.sum(stats["w_sum0"])), float(np.trace(stats["gram0"])), H)

    def penalty_after(self, stats: Stats, H_new: np.ndarray, reg: Regularization) -> float:
        if not (reg.l1_W or reg.l2_W or reg.l1_H or reg.l2_H):
            return 0.0
        return penalty(reg, float(np.sum(stats["w_sum"])), float(np.trace(stats["B"])), H_new)

    def loss_after(self, stats: Stats, H_new: np.ndarray, norm_sq: float) -> float | None:
        H64 = H_new.astype(np.float64, copy=False)
        value = 0.5 * (
            norm_sq
            - 2.0 * float(np.vdot(stats["A"], H64))
            + float(np.vdot(stats["B"], H64 @ H64.T))
        )
        return max(value, 0.0)

    def transform_panel(
        self,
        V: Array,
        W: np.ndarray,
        ctx: PanelContext,
        reg: Regularization,
        max_iter: int,
        tol: float,
    ) -> np.ndarray:
        P = np.asarray(V @ ctx.H.T).astype(np.float64)
        # H is fixed, so P and G are too: iterate the W-step without touching V again.
        compiled = _kernels.enabled(ctx.shape, ctx.H.shape[0], self.tiny)
        X = solve_rows(
            lambda rows, Xr: self.step(Xr, P[rows], ctx.gram, reg.l1_W, reg.l2_W, 1.0,
                                       compiled=compiled),
            W.astype(np.float64),
            max_iter,
            tol,
        )
        return X.astype(W.dtype, copy=False)
