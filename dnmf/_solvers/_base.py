"""What every solver provides to the iteration driver, and the pieces they share.

A solver is pure NumPy/SciPy mathematics on blocks. It never sees Dask, Zarr or a
scheduler: the driver hands it one row panel ``V_i`` of the data with the matching
block ``W_i`` of W and the small H-sized arrays, and it returns the new ``W_i`` plus
*panel statistics*: a dict of arrays (``k × m``, ``k × k``, scalars) that the driver
sums over panels in a fixed order. From the summed statistics the solver updates H
and evaluates the loss, so an iteration reads V exactly once.
"""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "EPSILON",
    "ROW_ITERATIONS",
    "PanelContext",
    "Regularization",
    "Solver",
    "Stats",
    "add_stats",
    "penalised",
    "penalty",
    "record_row_iterations",
    "solve_rows",
    "t_dot",
    "w_pieces",
]

#: The floor scikit-learn's NMF uses for denominators and for WH in the KL terms.
EPSILON = float(np.finfo(np.float32).eps)

Stats = dict[str, np.ndarray]
Array = Any  # a dense ndarray or a SciPy sparse matrix (row panel of V)


@dataclass(frozen=True)
class Regularization:
    """Scaled L1/L2 penalties, with scikit-learn's semantics.

    ``l1_W = n_features * alpha_W * l1_ratio`` and so on (see
    :func:`dnmf._validation.regularization`).
    """

    l1_W: float = 0.0
    l2_W: float = 0.0
    l1_H: float = 0.0
    l2_H: float = 0.0


class PanelContext:
    """H-derived data computed once per pass on the driver and shared by all panels.

    Attributes
    ----------
    H : ndarray of shape (n_components, n_features)
        The current H, in the data's dtype.
    gram : ndarray of shape (n_components, n_components)
        ``H @ H.T`` in float64. Given, or computed on first use (the driver computes
        it for the solvers that use it, :attr:`Solver.uses_gram`, before a pass).
    H_sum : ndarray of shape (n_components,)
        Row sums of H (KL).
    shape : tuple of int
        ``(n_samples, n_features)`` of the whole V (for rules that must not depend
        on how V is split into panels).
    nnz : int
        Number of non-zero entries of V, whatever its format (before the validation
        pass has counted them: the stored entries, ``n * m`` when dense).
    iteration : int or None
        Iterations done before this pass (0 for the first) in a fit; None outside
        one (transform). Rules that change over a fit (HALS's warm-up) read it.

    A plain class with slots rather than a frozen dataclass: one is made per
    iteration, and on small data its construction was a visible share of one.
    """

    __slots__ = ("H", "H_sum", "_compiled", "_gram", "iteration", "nnz", "shape")

    def __init__(self, H: np.ndarray, gram: np.ndarray | None = None, *,
                 H_sum: np.ndarray, shape: tuple[int, int], nnz: int,
                 iteration: int | None = None, compiled: bool | None = None) -> None:
        self.H = H
        self._gram = gram
        self.H_sum = H_sum
        self.shape = shape
        self.nnz = nnz
        self.iteration = iteration
        self._compiled = compiled

    @property
    def gram(self) -> np.ndarray:
        if self._gram is None:
            H64 = self.H.astype(np.float64, copy=False)
            self._gram = H64 @ H64.T
        return self._gram

    @property
    def compiled(self) -> bool:
        """:func:`._kernels.enabled` for this fit's shape and k (with the default
        threshold): asked once, then carried from pass to pass by the H-step, so
        the environment is read once per fit and not in every step of every pass
        (a worker that receives a context decides again, from its own)."""
        if self._compiled is None:
            from . import _kernels

            self._compiled = _kernels.enabled(self.shape, self.H.shape[0])
        return self._compiled

    def __reduce__(self) -> tuple[Any, ...]:
        return (_panel_context, (self.H, self._gram, self.H_sum, self.shape, self.nnz,
                                 self.iteration))

    def __repr__(self) -> str:
        return (f"PanelContext(H={self.H.shape}, shape={self.shape}, nnz={self.nnz}, "
                f"iteration={self.iteration})")


def _panel_context(H: np.ndarray, gram: np.ndarray | None, H_sum: np.ndarray,
                   shape: tuple[int, int], nnz: int, iteration: int | None) -> PanelContext:
    return PanelContext(H, gram, H_sum=H_sum, shape=shape, nnz=nnz, iteration=iteration)


def penalty(reg: Regularization, w_sum: float, w_sq: float, H: np.ndarray) -> float:
    """The penalty terms of the objective, scikit-learn's scaling.

    ``l1_W·Σ W + ½·l2_W·‖W‖² + l1_H·Σ H + ½·l2_H·‖H‖²``, with W given by its sum
    and sum of squares (summed over panels), H by itself. 0.0 without penalties.
    """
    value = 0.0
    if reg.l1_W:
        value += reg.l1_W * w_sum
    if reg.l2_W:
        value += 0.5 * reg.l2_W * w_sq
    if reg.l1_H or reg.l2_H:
        H64 = np.asarray(H, dtype=np.float64)
        if reg.l1_H:
            value += reg.l1_H * float(H64.sum())
        if reg.l2_H:
            value += 0.5 * reg.l2_H * float(np.vdot(H64, H64))
    return value


def penalised(reg: Regularization) -> bool:
    """Whether any of the four penalties is non-zero."""
    return bool(reg.l1_W or reg.l2_W or reg.l1_H or reg.l2_H)


def w_pieces(W: np.ndarray, suffix: str = "0") -> Stats:
    """Column sums and the sum of squares of a W panel (the penalties' W terms)."""
    W64 = np.asarray(W, dtype=np.float64)
    return {f"w_sum{suffix}": W64.sum(axis=0), f"w_sq{suffix}": np.array([np.vdot(W64, W64)])}


def add_stats(a: Stats, b: Stats) -> Stats:
    """Sum two panels' statistics key by key (the reduction operator)."""
    return {key: a[key] + b[key] for key in a}


def t_dot(W: np.ndarray, V: Array) -> np.ndarray:
    """``W.T @ V`` for a dense or sparse panel ``V``, as a dense array."""
    if not isinstance(V, np.ndarray) and sp.issparse(V):
        return np.asarray((V.T @ W).T)
    return W.T @ V


#: Entries of a dense panel cast to float64 at a time by :func:`exact_t_dot`
#: (16 MiB of float64): the cast never doubles a large panel's memory.
EXACT_BLOCK = 2**21


def exact_t_dot(W: np.ndarray, V: Array) -> np.ndarray:
    """``W.T @ V`` accumulated in float64 from float64 casts of ``W`` and ``V``.

    For float32 data: every product of two float32 numbers is exact in float64, so
    the result has float64's rounding instead of float32's. Dense panels are cast a
    block of rows at a time (summed in a fixed order: deterministic).
    """
    W64 = np.asarray(W, dtype=np.float64)
    n, m = V.shape
    rows = max(1, EXACT_BLOCK // max(m, 1))
    if rows >= n or (not isinstance(V, np.ndarray) and sp.issparse(V)):
        return t_dot(W64, V.astype(np.float64))  # a sparse cast copies only its values
    out = np.zeros((W64.shape[1], m))
    for start in range(0, n, rows):
        out += W64[start:start + rows].T @ np.asarray(V[start:start + rows], dtype=np.float64)
    return out


#: Where row solves (``transform``) report how many iterations they ran: a list set
#: by the caller for the duration of one task (per thread: ContextVars are), or None.
ROW_ITERATIONS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "dnmf_row_iterations", default=None)


def record_row_iterations(count: int) -> None:
    """Report ``count`` iterations of a row solve to the caller that asked for them."""
    sink = ROW_ITERATIONS.get()
    if sink is not None:
        sink.append(int(count))


def solve_rows(
    step: Callable[[np.ndarray, np.ndarray], np.ndarray],
    X: np.ndarray,
    max_iter: int,
    tol: float,
) -> np.ndarray:
    """Iterate a row-wise update until each row converges on its own (``transform``).

    ``step(rows, X[rows])`` returns the updated rows. A row stops once its change is
    at most ``tol`` times its norm, so its answer does not depend on which other rows
    share its panel. ``X`` is updated in place and returned; the iterations the
    slowest row needed go to :data:`ROW_ITERATIONS`.
    """
    active = np.arange(X.shape[0])
    done = 0
    for _ in range(max_iter):
        if active.size == 0:
            break
        old = X[active]
        new = step(active, old)
        X[active] = new
        done += 1
        change = np.linalg.norm(new - old, axis=1)
        scale = np.linalg.norm(new, axis=1)
        active = active[change > tol * np.maximum(scale, 1e-300)]
    record_row_iterations(done)
    return X


class Solver(ABC):
    """The contract between a solver and the iteration driver.

    Attributes
    ----------
    beta : float
        The beta divergence minimised: 2 for Frobenius, 1 for Kullback-Leibler.
    exact_loss_after_update : bool
        True if :meth:`loss_after` can give the loss of the updated (W, H) from the
        pass's statistics (Frobenius). Otherwise the loss of an iteration is only
        known during the next pass (from :meth:`loss_before`).
    """

    beta: float = 2.0
    exact_loss_after_update: bool = True
    #: Does an unpenalised fit end with ``engine.balance`` (HALS, ALS)?
    balances: bool = False
    #: Are the statistics behind the loss (and the H-step) accumulated in float64
    #: from products of float64 casts, whatever V's dtype? See :meth:`with_exact_stats`.
    exact_stats: bool = False
    #: Do the panels read ``ctx.gram`` (H·Hᵀ)? Then the driver computes it once per
    #: pass; otherwise it is not computed at all.
    uses_gram: bool = True

    def with_exact_stats(self) -> Solver | None:
        """This solver with its loss statistics computed exactly in float64 for a
        float32 V (None: not available). A float32 loss computed from float32 products
        cannot resolve changes below ~1e-7·‖V‖²; the engine switches to this when the
        loss it records rises (:func:`dnmf._engine.iterate`)."""
        return None

    def stats_eps(self, dtype: Any) -> float:
        """The machine epsilon the loss statistics are accumulated with for V's dtype."""
        return float(np.finfo(np.float64 if self.exact_stats else dtype).eps)

    @abstractmethod
    def update_panel(
        self, V: Array, W: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> tuple[np.ndarray, Stats]:
        """Update one panel of W and return it with the panel's statistics."""

    @abstractmethod
    def update_H(
        self, H: np.ndarray, stats: Stats, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        """Update H (float64) from the statistics summed over all panels."""

    @abstractmethod
    def loss_pieces(self, V: Array, W: np.ndarray, ctx: PanelContext) -> Stats:
        """Statistics from which :meth:`loss_before` evaluates the loss at (W, H)."""

    @abstractmethod
    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        """Loss at the (W, H) a pass started from, from its summed statistics."""

    def loss_after(self, stats: Stats, H_new: np.ndarray, norm_sq: float) -> float | None:
        """Loss at the updated (W, H) if it follows from the statistics, else None."""
        return None

    def penalty_before(self, stats: Stats, H: np.ndarray, reg: Regularization) -> float:
        """The penalties at the (W, H) a pass started from (``w_sum0``, ``w_sq0``)."""
        if not penalised(reg):
            return 0.0
        return penalty(reg, float(np.sum(stats["w_sum0"])), float(stats["w_sq0"][0]), H)

    def penalty_after(self, stats: Stats, H_new: np.ndarray, reg: Regularization) -> float:
        """The penalties at the updated (W, H) (``w_sum``, ``w_sq`` of the new W)."""
        if not penalised(reg):
            return 0.0
        return penalty(reg, float(np.sum(stats["w_sum"])), float(stats["w_sq"][0]), H_new)

    def rounding(self, norm_sq: float, total: float, eps: float) -> float:
        """How far the computed data term can be off by rounding alone.

        A loss that rises by less than this has stopped decreasing; one that rises
        by more has not converged. The Frobenius loss is a difference of terms of
        the size of ‖V‖² (its rounding does not shrink with the loss).
        """
        return 64.0 * eps * norm_sq

    @abstractmethod
    def transform_panel(
        self,
        V: Array,
        W: np.ndarray,
        ctx: PanelContext,
        reg: Regularization,
        max_iter: int,
        tol: float,
    ) -> np.ndarray:
        """Solve for a panel of W with H fixed (used by ``transform``)."""
