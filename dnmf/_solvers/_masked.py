"""Masked kernels: every solver restricted to the observed entries of a panel.

A masked panel is an :class:`Observed`: V's values with 0 wherever an entry is not
used for fitting, the pattern of the entries that are (a dense boolean mask, or "the
stored entries" of a CSR panel), and the held-out entries of a cross-validation
hold-out with their values. Every sum over entries becomes a sum over observed ones
(DESIGN.md, "Masks"):

- **MU, Frobenius**: ``W ← W ∘ (M∘V)Hᵀ / (M∘(WH))Hᵀ``; the H-step needs the k × m
  sums ``Σ W_iᵀ(M_i∘V_i)`` and ``Σ W_iᵀ(M_i∘(W_iH))``, made in the panel task.
- **MU, KL**: ``(M∘V/(WH))Hᵀ / (M·Hᵀ)`` for W and ``Wᵀ(M∘V/(WH)) / (WᵀM)`` for H.
- **HALS / ALS**: row r of W has its own Gram ``G_r = H_{:,O_r}·H_{:,O_r}ᵀ`` over its
  observed columns; column j of H has ``Σ_{r∈O_j} w_r w_rᵀ``. Both are made as one
  matrix product of the 0/1 pattern with the k(k+1)/2 pairwise products of the
  factor's rows (``M @ Qᵀ``, dense BLAS or sparse), and rows that share a pattern
  share the product. Measured (2000 × 2000 panel, k = 20, 10 % missing, one core):
  this product takes 34 ms against 62 ms for gathering each row's missing columns
  and correcting ``G − Σ_{j∉O_r} h_j h_jᵀ`` in batched matmuls, and 107 ms for the
  same correction as a sparse product. The per-column Grams are an m × k(k+1)/2
  panel statistic; above :data:`COLUMN_GRAM_LIMIT` values the H-step falls back to
  the MU-style step from k × m sums (documented in docs/missing.md).

The loss of a masked fit is evaluated at the (W, H) a pass starts from, from sums the
pass makes anyway (``exact_loss_after_update = False``): so is the loss over the
held-out entries, a panel-local sum at the same (W, H), never an extra read.

Everything here is NumPy/SciPy on one panel, but for the per-row HALS sweeps:
:func:`hals_rows` is the NumPy reference and :func:`hals_rows_packed` its compiled
twin (numba, on the packed Grams; chosen by ``DNMF_KERNELS`` as the unmasked
kernels are). :func:`pattern_grams` is one matrix product already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._base import (
    EPSILON,
    Array,
    PanelContext,
    Regularization,
    Solver,
    Stats,
    record_row_iterations,
    t_dot,
)
from ._hals import ALPHA, DELTA, warm_rho
from ._nnls import nnls_bpp

__all__ = [
    "COLUMN_GRAM_LIMIT",
    "MaskedALS",
    "MaskedBeta",
    "MaskedHALS",
    "MaskedKL",
    "MaskedMU",
    "Observed",
    "get_masked_solver",
    "hals_rows",
    "hals_rows_packed",
    "pattern_grams",
]

#: Largest per-column Gram statistic (m × k(k+1)/2 float64 values, 128 MiB) for which
#: the HALS/ALS H-step is exact; beyond it the H-step is multiplicative.
COLUMN_GRAM_LIMIT = 1 << 24


@dataclass
class Observed:
    """One row panel of V with the entries a masked fit uses.

    Attributes
    ----------
    values : ndarray or scipy.sparse.csr_matrix of shape (rows, m)
        V with 0 at every entry not used for fitting (dense), or a CSR matrix.
    mask : ndarray of bool of shape (rows, m) or None
        True where the entry is used for fitting. None: exactly the stored entries
        of the CSR ``values`` are (``missing="unstored"``).
    held_rows, held_cols : ndarray of int
        Panel-local row and column of each held-out entry (observed in the data,
        excluded from the fit by a :class:`~dnmf.SpeckledHoldout`).
    held_values : ndarray
        Their values.
    """

    values: Array
    mask: np.ndarray | None
    held_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    held_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    held_values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def stored_only(self) -> bool:
        """True when the observed entries are exactly the stored ones of a CSR panel."""
        return self.mask is None

    def checked_values(self) -> tuple[Any, bool]:
        """What a pass checks (``_source.check_panel``): the values used, NaN not allowed."""
        return self.values, False

    def completion_base(self) -> np.ndarray:
        """A fresh C-ordered copy of the panel whose unobserved entries may be overwritten."""
        return np.array(self.values, order="C")

    def norm_sq(self) -> float:
        """Σ of the squared fitting values (float64), made once per panel."""
        cached = self.__dict__.get("_norm_sq")
        if cached is None:
            v = np.asarray(self.values.data if self.mask is None else self.values).ravel()
            cached = self.__dict__["_norm_sq"] = float(np.dot(v, v.astype(np.float64, copy=False))
                                                       if v.dtype == np.float64 else
                                                       np.dot(v.astype(np.float64),
                                                              v.astype(np.float64)))
        return cached

    def missing_index(self) -> np.ndarray:
        """Flat indices of the entries not used for fitting (dense masks), made once."""
        cached = self.__dict__.get("_missing")
        if cached is None:
            assert self.mask is not None
            cached = self.__dict__["_missing"] = np.flatnonzero(~self.mask.ravel())
        return cached

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def pattern(self) -> Array:
        """The observed pattern as float64 0/1 (dense) or a CSR of ones."""
        if self.mask is None:
            V = self.values
            return sp.csr_matrix((np.ones(V.indices.shape[0]), V.indices, V.indptr),
                                 shape=V.shape)
        return self.mask.astype(np.float64)

    def masked_product(self, W: np.ndarray, H: np.ndarray) -> Array:
        """``M ∘ (W·H)``: dense, or a CSR at the observed (stored) entries."""
        if self.mask is None:
            return sp.csr_matrix((_wh_stored(W, H, self.values), self.values.indices,
                                  self.values.indptr), shape=self.values.shape)
        WH = W @ H
        WH *= self.mask
        return WH


class NaNObserved(Observed):
    """A dense panel whose NaN entries (exactly) are the unobserved ones.

    Keeps the panel as read, with the flat indices of its NaN entries; the zero-filled
    values and the boolean mask are made only if a kernel asks for them (majorized HALS
    needs neither: it copies the panel once and overwrites the NaN entries).
    """

    def __init__(self, raw: np.ndarray, missing_index: np.ndarray) -> None:
        self.raw = raw
        self.__dict__["_missing"] = missing_index
        self._values: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self.held_rows = np.zeros(0, np.int64)
        self.held_cols = np.zeros(0, np.int64)
        self.held_values = np.zeros(0)

    @property  # type: ignore[override]
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = ~np.isnan(self.raw)
        return self._mask

    @property  # type: ignore[override]
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.where(self.mask, self.raw, 0).astype(self.raw.dtype, copy=False)
        return self._values

    @property
    def stored_only(self) -> bool:
        return False

    def checked_values(self) -> tuple[Any, bool]:
        return self.raw, True  # NaN is what is missing here

    def completion_base(self) -> np.ndarray:
        return np.array(self.raw, order="C")

    def __reduce__(self) -> tuple[Any, ...]:
        return (NaNObserved, (self.raw, self.__dict__["_missing"]))


def _wh_stored(W: np.ndarray, H: np.ndarray, V: sp.csr_matrix) -> np.ndarray:
    """``(W·H)`` at the stored entries of a CSR ``V``, in ``V.data``'s order."""
    rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
    out = np.empty(V.indices.shape[0], dtype=np.result_type(W.dtype, H.dtype))
    block = 1 << 16
    Ht = np.ascontiguousarray(H.T)
    for a in range(0, out.shape[0], block):
        b = min(a + block, out.shape[0])
        out[a:b] = np.einsum("ij,ij->i", W[rows[a:b]], Ht[V.indices[a:b]])
    return out


# ------------------------------------------------------------------ the Grams
def _pairs(F: np.ndarray) -> np.ndarray:
    """The k(k+1)/2 products ``F[a] ∘ F[b]`` (a ≤ b) of the rows of F (k × m), float64."""
    k = F.shape[0]
    a, b = np.triu_indices(k)
    F64 = np.asarray(F, dtype=np.float64)
    return F64[a] * F64[b]


def unpack(packed: np.ndarray, k: int) -> np.ndarray:
    """(r, k(k+1)/2) upper triangles → (r, k, k) symmetric matrices."""
    a, b = np.triu_indices(k)
    full = np.empty((packed.shape[0], k, k))
    full[:, a, b] = packed
    full[:, b, a] = packed
    return full


def pattern_grams(obs: Observed, F: np.ndarray, *, by_column: bool = False) -> np.ndarray:
    """Packed Grams of ``F`` restricted to each row's (or column's) observed entries.

    Rows: ``F`` is H (k × m) and row r gets ``Σ_{c∈O_r} h_c h_cᵀ`` → (rows, p).
    Columns (``by_column``): ``F`` is a panel of W (rows × k) and column c gets
    ``Σ_{r∈O_c} w_r w_rᵀ`` → (m, p); summed over panels it is the H-step's Gram.
    Rows of a dense mask that share a pattern are computed once.
    """
    Q = _pairs(F.T if by_column else F)  # (p, m) or (p, rows)
    if obs.mask is None:
        S = obs.pattern()
        return np.asarray((S.T @ Q.T) if by_column else (S @ Q.T))
    mask = obs.mask.T if by_column else obs.mask
    if mask.shape[0] == 0:
        return np.zeros((0, Q.shape[0]))
    unique, inverse = np.unique(np.packbits(mask, axis=1), axis=0, return_inverse=True)
    if unique.shape[0] * 2 <= mask.shape[0]:
        rows = np.unpackbits(unique, axis=1, count=mask.shape[1]).astype(np.float64)
        return (rows @ Q.T)[inverse.ravel()]
    return mask.astype(np.float64) @ Q.T


# ------------------------------------------------------- row-wise subproblems
def hals_rows(X: np.ndarray, P: np.ndarray, G: np.ndarray, l1: float, l2: float,
              max_sweeps: int) -> np.ndarray:
    """HALS sweeps on rows that each have their own Gram.

    Row r minimises ½ x·G_r·x − P_r·x (+ l1·Σx + ½ l2‖x‖²) over x ≥ 0, one coordinate
    at a time: ``x_j ← max(0, x_j + (P_rj − l1 − (G_r x)_j − l2 x_j) / (G_r[j, j] + l2))``
    (exact zeros, as scikit-learn's cd); a coordinate whose diagonal is not > 0 is
    left unchanged. A row sweeps again while its change exceeds ``DELTA`` times its
    first sweep's (the rule of unmasked HALS), so a row's result depends on its own
    data only. Returns a new float64 array.
    """
    X = np.array(X, dtype=np.float64)
    n, k = X.shape
    if n == 0:
        return X
    P = np.asarray(P, dtype=np.float64)
    diag = np.einsum("rjj->rj", G) + l2
    live = diag > 0
    inv = np.where(live, 1.0 / np.where(live, diag, 1.0), 0.0)
    active = np.arange(n)
    first: np.ndarray | None = None
    for _ in range(max(1, max_sweeps)):
        Xa, Pa, Ga, inva = X[active], P[active], G[active], inv[active]
        old = Xa.copy()
        for j in range(k):
            grad = Pa[:, j] - l1 - np.einsum("rl,rl->r", Ga[:, j, :], Xa) - l2 * Xa[:, j]
            np.maximum(Xa[:, j] + grad * inva[:, j], 0.0, out=Xa[:, j])
            # a dead coordinate (inv = 0) keeps its value: x + 0
        X[active] = Xa
        change = np.einsum("rj,rj->r", old - Xa, old - Xa)
        if first is None:
            first = change
            keep = change > 0
        else:
            keep = change > (DELTA * DELTA) * first
        active, first = active[keep], first[keep]
        if active.size == 0:
            break
    return X


def _use_compiled(rows: int, k: int) -> bool:
    """Whether :func:`hals_rows_packed` runs compiled for a block of ``rows`` rows: the
    ``DNMF_KERNELS`` rule (:func:`dnmf._solvers._kernels.enabled`) on the block's
    shape, so a panel takes the same path in every process and on every resume."""
    from . import _kernels

    return _kernels.enabled((rows, 0), k) and _numba_hals_rows() is not None


_HALS_ROWS: Any = None


def _numba_hals_rows() -> Any:
    """The compiled per-row HALS kernel (numba, cached on disk), or None without numba."""
    global _HALS_ROWS
    if _HALS_ROWS is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _HALS_ROWS = False
            return None

        @numba.njit(cache=True, nogil=True)
        def kernel(X, P, packed, index, l1, l2, max_sweeps, delta_sq):  # pragma: no cover
            n, k = X.shape
            old = np.empty(k)
            for r in range(n):
                x = X[r]
                first = -1.0
                for sweep in range(max_sweeps):
                    for j in range(k):
                        old[j] = x[j]
                    for j in range(k):
                        d = packed[r, index[j, j]] + l2
                        if not d > 0:
                            continue  # a dead coordinate keeps its value
                        dot = 0.0
                        for c in range(k):
                            dot += packed[r, index[j, c]] * x[c]
                        grad = P[r, j] - l1 - dot - l2 * x[j]
                        value = x[j] + grad * (1.0 / d)
                        x[j] = value if value > 0.0 else 0.0
                    change = 0.0
                    for j in range(k):
                        change += (old[j] - x[j]) * (old[j] - x[j])
                    if sweep == 0:
                        first = change
                        if not change > 0:
                            break
                    elif not change > delta_sq * first:
                        break
            return X

        _HALS_ROWS = kernel
    return _HALS_ROWS or None


def hals_rows_packed(X: np.ndarray, P: np.ndarray, packed: np.ndarray, l1: float,
                     l2: float, max_sweeps: int) -> np.ndarray:
    """:func:`hals_rows` compiled, on the packed upper triangles of the rows' Grams
    ((rows, k(k+1)/2), as :func:`pattern_grams` makes them: no (rows, k, k) copy).

    The same sweeps, the same stopping rule per row, row by row; the sums of each
    coordinate step are taken in another order than NumPy's einsum, so results agree
    with :func:`hals_rows` to rounding (tests: 1e-10). Returns a new float64 array.
    """
    X = np.array(X, dtype=np.float64, order="C")
    n, k = X.shape
    if n == 0:
        return X
    a, b = np.triu_indices(k)
    index = np.empty((k, k), dtype=np.int64)
    index[a, b] = np.arange(a.size)
    index[b, a] = np.arange(a.size)
    kernel = _numba_hals_rows()
    return kernel(X, np.ascontiguousarray(P, dtype=np.float64),
                  np.ascontiguousarray(packed, dtype=np.float64), index, float(l1),
                  float(l2), max(1, int(max_sweeps)), float(DELTA * DELTA))


def als_rows(X: np.ndarray, P: np.ndarray, G: np.ndarray, packed: np.ndarray,
             l1: float, l2: float) -> np.ndarray:
    """Exact NNLS per row with its own Gram; rows with equal Grams solved together."""
    X = np.array(X, dtype=np.float64)
    n, k = X.shape
    if n == 0:
        return X
    rhs_all = np.asarray(P, dtype=np.float64) - l1
    gram_all = G + l2 * np.eye(k) if l2 > 0 else G
    # Where a row's unconstrained least-squares solution is non-negative (and its Gram
    # positive definite) it is the NNLS solution: solve those in one batched call.
    # The rest go through block principal pivoting, rows with equal Grams together.
    todo = np.ones(n, dtype=bool)
    try:
        L = np.linalg.cholesky(gram_all)
        y = np.linalg.solve(L, rhs_all[:, :, None])
        free = np.linalg.solve(np.swapaxes(L, 1, 2), y)[:, :, 0]
        ok = np.all(np.isfinite(free), axis=1) & np.all(free >= 0, axis=1)
        X[ok] = free[ok]
        todo = ~ok
    except np.linalg.LinAlgError:
        pass  # some Gram is singular: every row by pivoting
    if not todo.any():
        return X
    rows_todo = np.flatnonzero(todo)
    X[rows_todo] = _als_pivoting(X[rows_todo], rhs_all[rows_todo], G[rows_todo],
                                 packed[rows_todo], l2)
    return X


def _als_pivoting(X: np.ndarray, rhs_all: np.ndarray, G: np.ndarray, packed: np.ndarray,
                  l2: float) -> np.ndarray:
    k = X.shape[1]
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(first.size + 1))
    for g in range(first.size):
        rows = order[bounds[g]:bounds[g + 1]]
        gram = G[rows[0]].copy()
        if l2 > 0:
            gram[np.diag_indices(k)] += l2
        X[rows] = nnls_bpp(gram, rhs_all[rows].T, X[rows].T).T
    return X


def _sweeps(rho: float) -> int:
    return max(1, int(1 + ALPHA * rho))


def _mu_denominator(D: np.ndarray, X: np.ndarray, l1: float, l2: float) -> np.ndarray:
    if l1 > 0:
        D = D + l1
    if l2 > 0:
        D = D + l2 * X
    D = np.array(D)
    D[D == 0] = EPSILON
    return D


# --------------------------------------------------------- held-out entries
def _held_wh(obs: Observed, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    if obs.held_rows.size == 0:
        return np.zeros(0)
    return np.einsum("ij,ij->i", np.asarray(W, np.float64)[obs.held_rows],
                     np.asarray(H, np.float64).T[obs.held_cols])


def _held_frobenius(obs: Observed, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    r = obs.held_values.astype(np.float64) - _held_wh(obs, W, H)
    return np.array([0.5 * float(np.dot(r, r))])


def _held_kl(obs: Observed, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    wh = np.maximum(_held_wh(obs, W, H), EPSILON)
    v = obs.held_values.astype(np.float64)
    keep = v > EPSILON
    value = float(np.dot(v[keep], np.log(v[keep] / wh[keep]))) - float(v.sum()) + float(wh.sum())
    return np.array([value])


# ------------------------------------------------------------------ solvers
class _MaskedSolver(Solver):
    """What the masked solvers share: lagged losses and the held-out loss."""

    exact_loss_after_update = False
    masked = True

    def heldout_before(self, stats: Stats) -> float | None:
        """Loss over the held-out entries at the (W, H) the pass started from."""
        return float(stats["held0"][0]) if "held0" in stats else None

    @staticmethod
    def _rho_W(ctx: PanelContext, k: int) -> float:
        n, m = ctx.shape
        return warm_rho(ctx, 1.0 + (ctx.nnz + m * k) / (n * (k + 1.0)))

    @staticmethod
    def _rho_H(ctx: PanelContext, k: int) -> float:
        n, m = ctx.shape
        return warm_rho(ctx, 1.0 + (ctx.nnz + n * k) / (m * (k + 1.0)))


class _MaskedFrobenius(_MaskedSolver):
    """Frobenius solvers with per-row Grams (HALS, ALS); ``rows`` solves one step."""

    beta = 2.0

    def rows(self, X: np.ndarray, P: np.ndarray, packed: np.ndarray, l1: float, l2: float,
             rho: float) -> np.ndarray:
        raise NotImplementedError

    def _column_grams(self, ctx: PanelContext, k: int) -> bool:
        return ctx.shape[1] * k * (k + 1) // 2 <= COLUMN_GRAM_LIMIT

    def update_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                     reg: Regularization) -> tuple[np.ndarray, Stats]:
        H = ctx.H
        k = H.shape[0]
        P = np.asarray(V.values @ H.T).astype(np.float64)
        packed = pattern_grams(V, H)
        W64 = W.astype(np.float64)
        stats: Stats = {"cross0": np.array([np.vdot(P, W64)]),
                        "quad0": np.array([_quad(packed, W64, k)])}
        W_new = self.rows(W64, P, packed, reg.l1_W, reg.l2_W,
                          self._rho_W(ctx, k)).astype(W.dtype, copy=False)
        stats["A"] = t_dot(W_new, V.values).astype(np.float64)
        if self._column_grams(ctx, k):
            stats["C"] = pattern_grams(V, W_new, by_column=True)
        else:
            stats["D"] = t_dot(W_new, V.masked_product(W_new, H)).astype(np.float64)
        if V.held_rows.size:
            stats["held0"] = _held_frobenius(V, W, H)
        return W_new, stats

    def update_H(self, H: np.ndarray, stats: Stats, ctx: PanelContext,
                 reg: Regularization) -> np.ndarray:
        k = H.shape[0]
        if "C" in stats:
            Ht = self.rows(H.T, stats["A"].T, stats["C"], reg.l1_H, reg.l2_H,
                           self._rho_H(ctx, k))
            return np.ascontiguousarray(Ht.T)
        D = _mu_denominator(stats["D"], H, reg.l1_H, reg.l2_H)
        return H * (stats["A"] / D)

    def loss_pieces(self, V: Observed, W: np.ndarray, ctx: PanelContext) -> Stats:
        H = ctx.H
        W64 = W.astype(np.float64)
        P = np.asarray(V.values @ H.T).astype(np.float64)
        stats: Stats = {"cross0": np.array([np.vdot(P, W64)]),
                        "quad0": np.array([_quad(pattern_grams(V, H), W64, H.shape[0])])}
        if V.held_rows.size:
            stats["held0"] = _held_frobenius(V, W, H)
        return stats

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        value = 0.5 * (norm_sq - 2.0 * float(stats["cross0"][0]) + float(stats["quad0"][0]))
        return max(value, 0.0)

    def transform_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                        reg: Regularization, max_iter: int, tol: float) -> np.ndarray:
        H = ctx.H
        P = np.asarray(V.values @ H.T).astype(np.float64)
        packed = pattern_grams(V, H)
        X = W.astype(np.float64)
        # P and the Grams are fixed with H: iterate until each row's change is small.
        active = np.arange(X.shape[0])
        done = 0
        for _ in range(max_iter):
            if active.size == 0:
                break
            old = X[active]
            new = self.rows(old, P[active], packed[active], reg.l1_W, reg.l2_W, 1.0)
            X[active] = new
            done += 1
            change = np.linalg.norm(new - old, axis=1)
            active = active[change > tol * np.maximum(np.linalg.norm(new, axis=1), 1e-300)]
        record_row_iterations(done)
        return X.astype(W.dtype, copy=False)


def _quad(packed: np.ndarray, W64: np.ndarray, k: int) -> float:
    """Σ_r w_rᵀ G_r w_r from the packed upper triangles of the G_r."""
    a, b = np.triu_indices(k)
    weight = np.where(a == b, 1.0, 2.0)
    return float(np.einsum("rp,rp->", packed, W64[:, a] * W64[:, b] * weight))


class MaskedHALS(_MaskedFrobenius):
    """HALS on observed entries: per-row (per-column for H) Grams, exact zeros.

    With ``majorize=True`` (dense masks with few entries missing, chosen by
    :func:`get_masked_solver`) each step is instead unmasked HALS on the panel with
    its missing entries filled by the current W·H: that completed panel's loss
    majorizes the masked loss and touches it at the pass's (W, H); the W-step and the
    H-step both decrease it, so each iteration decreases the masked loss (an EM
    iteration with a partial M-step), with one Gram H·Hᵀ for all rows instead of one
    per row, and one W·H per pass.
    """

    def __init__(self, majorize: bool = False) -> None:
        self.majorize = majorize

    def rows(self, X: np.ndarray, P: np.ndarray, packed: np.ndarray, l1: float, l2: float,
             rho: float) -> np.ndarray:
        if _use_compiled(X.shape[0], X.shape[1]):
            return hals_rows_packed(X, P, packed, l1, l2, _sweeps(rho))
        return hals_rows(X, P, unpack(packed, X.shape[1]), l1, l2, _sweeps(rho))

    def update_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                     reg: Regularization) -> tuple[np.ndarray, Stats]:
        if not self.majorize or V.stored_only:
            return super().update_panel(V, W, ctx, reg)
        from ._hals import HALS

        H = ctx.H
        k = H.shape[0]
        W64 = W.astype(np.float64)
        filled = _completed(V, W64, H)
        P = np.asarray(filled @ H.T, dtype=np.float64)
        sq0 = _completed_sq(V, filled, P, W64, ctx.gram)
        W_new = HALS().step(W64, P, ctx.gram, reg.l1_W, reg.l2_W,
                            self._rho_W(ctx, k)).astype(W.dtype, copy=False)
        # The H-step works on the same completed panel: ‖filled − W·H‖² majorizes the
        # masked loss everywhere and equals it at the pass's (W, H), and both steps
        # decrease it, so the masked loss decreases over the iteration (one E-step per
        # iteration, EM's partial M-step), without a second W·H.
        stats: Stats = {"sq0": np.array([sq0]),
                        "A": t_dot(W_new, filled).astype(np.float64),
                        "B": (W_new.T @ W_new).astype(np.float64)}
        if V.held_rows.size:
            stats["held0"] = _held_frobenius(V, W, H)
        return W_new, stats

    def update_H(self, H: np.ndarray, stats: Stats, ctx: PanelContext,
                 reg: Regularization) -> np.ndarray:
        if "B" not in stats:
            return super().update_H(H, stats, ctx, reg)
        from ._hals import HALS

        k = H.shape[0]
        Ht = HALS().step(np.ascontiguousarray(H.T, dtype=np.float64), stats["A"].T,
                         stats["B"], reg.l1_H, reg.l2_H, self._rho_H(ctx, k))
        return np.ascontiguousarray(Ht.T)

    def loss_pieces(self, V: Observed, W: np.ndarray, ctx: PanelContext) -> Stats:
        if not self.majorize or V.stored_only:
            return super().loss_pieces(V, W, ctx)
        W64 = W.astype(np.float64)
        filled = _completed(V, W64, ctx.H)
        P = np.asarray(filled @ ctx.H.T, dtype=np.float64)
        stats: Stats = {"sq0": np.array([_completed_sq(V, filled, P, W64, ctx.gram)])}
        if V.held_rows.size:
            stats["held0"] = _held_frobenius(V, W, ctx.H)
        return stats

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        if "sq0" in stats:
            return max(0.5 * float(stats["sq0"][0]), 0.0)
        return super().loss_before(stats, ctx, norm_sq)


def _completed(V: Observed, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The panel with its unobserved entries set to W·H.

    The unobserved entries are set through their flat indices (made once per panel):
    a masked ``copyto`` over the whole panel costs several times more.
    """
    WH = W @ np.asarray(H, dtype=np.float64)
    filled = V.completion_base()
    idx = V.missing_index()
    filled.ravel()[idx] = WH.ravel()[idx]
    return filled


def _completed_sq(V: Observed, filled: np.ndarray, P: np.ndarray, W: np.ndarray,
                  gram: np.ndarray) -> float:
    """Σ_obs (v − wh)² = ‖filled − W·H‖² (0 at the filled entries), without forming it.

    """
    f = filled.ravel()
    norm_sq = float(np.dot(f, f) if f.dtype == np.float64
                    else np.einsum("i,i->", f, f, dtype=np.float64))
    value = norm_sq - 2.0 * float(np.vdot(P, W)) + float(np.vdot(W.T @ W, gram))
    return max(value, 0.0)


class MaskedALS(_MaskedFrobenius):
    """ANLS on observed entries: exact NNLS per row with its own Gram."""

    def rows(self, X: np.ndarray, P: np.ndarray, packed: np.ndarray, l1: float, l2: float,
             rho: float) -> np.ndarray:
        return als_rows(X, P, unpack(packed, X.shape[1]), packed, l1, l2)


class MaskedMU(_MaskedFrobenius):
    """Lee & Seung's MU on observed entries: ``W ∘ (M∘V)Hᵀ / (M∘(WH))Hᵀ``."""

    def _step(self, V: Observed, W: np.ndarray, H: np.ndarray, P: np.ndarray,
              reg: Regularization) -> tuple[np.ndarray, Array]:
        MWH = V.masked_product(W, H)
        D = _mu_denominator(np.asarray(MWH @ H.T, dtype=np.float64), W, reg.l1_W, reg.l2_W)
        return W * (P / D), MWH

    def update_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                     reg: Regularization) -> tuple[np.ndarray, Stats]:
        H = ctx.H
        P = np.asarray(V.values @ H.T).astype(np.float64)
        W64 = W.astype(np.float64)
        step, MWH = self._step(V, W64, H, P, reg)
        stats: Stats = {"sq0": np.array([_masked_sq(V, MWH)])}
        W_new = step.astype(W.dtype, copy=False)
        stats["A"] = t_dot(W_new, V.values).astype(np.float64)
        stats["D"] = t_dot(W_new, V.masked_product(W_new, H)).astype(np.float64)
        if V.held_rows.size:
            stats["held0"] = _held_frobenius(V, W, H)
        return W_new, stats

    def update_H(self, H: np.ndarray, stats: Stats, ctx: PanelContext,
                 reg: Regularization) -> np.ndarray:
        D = _mu_denominator(stats["D"], H, reg.l1_H, reg.l2_H)
        return H * (stats["A"] / D)

    def loss_pieces(self, V: Observed, W: np.ndarray, ctx: PanelContext) -> Stats:
        stats: Stats = {"sq0": np.array([_masked_sq(V, V.masked_product(W, ctx.H))])}
        if V.held_rows.size:
            stats["held0"] = _held_frobenius(V, W, ctx.H)
        return stats

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        return max(0.5 * float(stats["sq0"][0]), 0.0)

    def transform_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                        reg: Regularization, max_iter: int, tol: float) -> np.ndarray:
        H = ctx.H
        P = np.asarray(V.values @ H.T).astype(np.float64)
        X = W.astype(np.float64)
        return _solve_masked_rows(V, X, lambda Vr, Xr, rows: self._step(
            Vr, Xr, H, P[rows], reg)[0], max_iter, tol).astype(W.dtype, copy=False)


def _masked_sq(V: Observed, MWH: Array) -> float:
    """Σ over observed entries of (v − wh)², in float64."""
    if sp.issparse(MWH):
        r = V.values.data.astype(np.float64) - MWH.data
    else:
        r = (V.values - MWH).astype(np.float64, copy=False).ravel()
    return float(np.dot(r, r))


def _row_subset(V: Observed, rows: np.ndarray) -> Observed:
    if rows.size == V.shape[0]:
        return V
    return Observed(V.values[rows], None if V.mask is None else V.mask[rows])


def _solve_masked_rows(V: Observed, X: np.ndarray, step: Any, max_iter: int,
                       tol: float) -> np.ndarray:
    """Iterate ``step(V_rows, X_rows, rows)`` until each row converges on its own."""
    active = np.arange(X.shape[0])
    done = 0
    for _ in range(max_iter):
        if active.size == 0:
            break
        old = X[active]
        new = step(_row_subset(V, active), old, active)
        X[active] = new
        done += 1
        change = np.linalg.norm(new - old, axis=1)
        active = active[change > tol * np.maximum(np.linalg.norm(new, axis=1), 1e-300)]
    record_row_iterations(done)
    return X


class MaskedKL(_MaskedSolver):
    """MU for the KL divergence on observed entries."""

    beta = 1.0

    @staticmethod
    def _ratio(V: Observed, W: np.ndarray, H: np.ndarray) -> tuple[Array, np.ndarray]:
        """``M∘V/(WH)`` (WH floored at EPSILON) and WH at the observed entries."""
        if V.mask is None:
            wh = np.maximum(_wh_stored(W, H, V.values), EPSILON)
            ratio = sp.csr_matrix((V.values.data / wh, V.values.indices, V.values.indptr),
                                  shape=V.values.shape)
            return ratio, wh
        WH = np.maximum(W @ H, EPSILON)
        # V is 0 where not observed, so the quotient is too
        return V.values / WH, WH

    @staticmethod
    def _pieces(V: Observed, wh: np.ndarray) -> tuple[float, float]:
        if V.mask is None:
            x = V.values.data.astype(np.float64)
            y = wh
        else:
            keep = V.mask.ravel()
            x = V.values.ravel()[keep].astype(np.float64)
            y = wh.ravel()[keep]
        pos = x > EPSILON
        return float(np.dot(x[pos], np.log(x[pos] / y[pos]))), float(x.sum())

    def _step(self, V: Observed, W: np.ndarray, H: np.ndarray, reg: Regularization,
              ratio: Array, MH: np.ndarray) -> np.ndarray:
        numerator = np.asarray(ratio @ H.T, dtype=np.float64)
        D = _mu_denominator(MH, W, reg.l1_W, reg.l2_W)
        return W * (numerator / D)

    def update_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                     reg: Regularization) -> tuple[np.ndarray, Stats]:
        H = ctx.H
        W64 = W.astype(np.float64)
        ratio, wh = self._ratio(V, W64, H)
        MH = np.asarray(V.pattern() @ np.asarray(H, np.float64).T)  # Σ_{c∈O_r} h_c
        xlog, xsum = self._pieces(V, wh)
        stats: Stats = {"kl_xlog": np.array([xlog]), "kl_xsum": np.array([xsum]),
                        "wh_sum0": np.array([np.vdot(MH, W64)])}
        W_new = self._step(V, W64, H, reg, ratio, MH).astype(W.dtype, copy=False)
        ratio_new, _ = self._ratio(V, W_new, H)
        stats["A"] = t_dot(W_new, ratio_new).astype(np.float64)
        stats["WM"] = t_dot(W_new.astype(np.float64), V.pattern())
        if V.held_rows.size:
            stats["held0"] = _held_kl(V, W, H)
        return W_new, stats

    def update_H(self, H: np.ndarray, stats: Stats, ctx: PanelContext,
                 reg: Regularization) -> np.ndarray:
        WM = stats["WM"].copy()
        WM[WM == 0] = 1.0
        D = _mu_denominator(WM, H, reg.l1_H, reg.l2_H)
        return H * (stats["A"] / D)

    def loss_pieces(self, V: Observed, W: np.ndarray, ctx: PanelContext) -> Stats:
        H = ctx.H
        W64 = W.astype(np.float64)
        _, wh = self._ratio(V, W64, H)
        xlog, xsum = self._pieces(V, wh)
        MH = np.asarray(V.pattern() @ np.asarray(H, np.float64).T)
        stats: Stats = {"kl_xlog": np.array([xlog]), "kl_xsum": np.array([xsum]),
                        "wh_sum0": np.array([np.vdot(MH, W64)])}
        if V.held_rows.size:
            stats["held0"] = _held_kl(V, W, H)
        return stats

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        value = (float(stats["kl_xlog"][0]) + float(stats["wh_sum0"][0])
                 - float(stats["kl_xsum"][0]))
        return max(value, 0.0)

    def transform_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                        reg: Regularization, max_iter: int, tol: float) -> np.ndarray:
        H = ctx.H
        H64 = np.asarray(H, np.float64)

        def step(Vr: Observed, Xr: np.ndarray, rows: np.ndarray) -> np.ndarray:
            ratio, _ = self._ratio(Vr, Xr, H)
            MH = np.asarray(Vr.pattern() @ H64.T)
            return self._step(Vr, Xr, H, reg, ratio, MH)

        return _solve_masked_rows(V, W.astype(np.float64), step, max_iter,
                                  tol).astype(W.dtype, copy=False)


#: HALS on a dense mask majorizes (fills the missing entries) when at least this share
#: of the entries is observed; below it, per-row Grams (see MaskedHALS).
MAJORIZE_ABOVE = 0.7


def get_masked_solver(name: str, beta_loss: str, observed: float = 1.0) -> Solver:
    """The masked kernel for ``solver=name`` and ``beta_loss``.

    ``observed`` is the share of V's entries used for fitting (from the scan).
    """
    if beta_loss in ("kullback-leibler", 1, 1.0):
        return MaskedKL()
    if beta_loss not in ("frobenius", 2, 2.0):
        return MaskedBeta(0.0 if beta_loss == "itakura-saito" else float(beta_loss))
    if name in ("hals", "cd"):  # (scikit-learn's cd has no missing values: HALS's)
        return MaskedHALS(majorize=observed >= MAJORIZE_ABOVE)
    kernels: dict[str, type[Solver]] = {"mu": MaskedMU, "als": MaskedALS}
    return kernels[name]()


# ------------------------------------------------------------------ any β
def _held_beta(obs: Observed, W: np.ndarray, H: np.ndarray, beta: float) -> np.ndarray:
    """The β-divergence over the held-out entries (scikit-learn's formula, floors and
    all, with the held-out count in place of n·m)."""
    from ._beta import beta_divergence_pieces, power

    wh = _held_wh(obs, W, H)
    v = obs.held_values.astype(np.float64)
    a, b, _ = beta_divergence_pieces(v, wh, beta)
    c = 0.0 if beta == 0 else float(power(wh, beta).sum())
    return np.array([_beta_value(a, b, c, float(v.size), beta)])


def _beta_value(a: float, b: float, c: float, count: float, beta: float) -> float:
    """The divergence from its sums (see :func:`dnmf._solvers._beta.beta_divergence_pieces`)."""
    if beta == 0:
        return a - count - b
    return (a - beta * b + (beta - 1.0) * c) / (beta * (beta - 1.0))


class MaskedBeta(_MaskedSolver):
    """scikit-learn's β-divergence MU (any β other than 1 and 2) on observed entries.

    With M the observed pattern, Q = (WH)^(β−2) and D = (WH)^(β−1) (scikit-learn's
    floors, :func:`dnmf._solvers._beta._q_and_d`):

        W ← W ∘ [((M∘V∘Q)·Hᵀ) / ((M∘D)·Hᵀ + l1 + l2·W)]^γ(β),
        H ← H ∘ [(Wᵀ·(M∘V∘Q)) / (Wᵀ·(M∘D) + l1 + l2·H)]^γ(β),

    the H-step's two k × m sums made in the panel task with the new W_i. It is the
    unmasked rule (:class:`~dnmf._solvers._beta.BetaMultiplicative`) with weights 0
    at unobserved entries. A dense mask costs what an unmasked dense panel does (WH
    per block of rows); ``missing="unstored"`` works at the stored entries only,
    O(nnz·k) per pass. The loss is the divergence summed over observed entries
    (for β = 0 the −1 per entry counts observed entries).
    """

    def __init__(self, beta: float) -> None:
        from ._beta import beta_gamma

        self.beta = float(beta)
        self.gamma = beta_gamma(self.beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta!r})"

    def _blocks(self, V: Observed) -> list[slice]:
        from ._beta import _row_blocks

        n, m = V.shape
        return _row_blocks(n, m)

    def _weighted(self, V: Observed, rows: slice, W: np.ndarray, H: np.ndarray,
                  pieces: list[float] | None) -> tuple[Array, Array]:
        """``M∘V∘Q`` and ``M∘D`` for a block of rows (dense, or CSR at the stored
        entries), adding the loss sums at (W, H) to ``pieces`` if given."""
        from ._beta import _q_and_d

        beta = self.beta
        if V.mask is None:
            block = V.values[rows]
            wh = _wh_stored(W, H, block)
            Q, D = _q_and_d(wh, beta)
            x = block.data
            if pieces is not None:
                self._add(pieces, x, wh, wh.size)
            shape = block.shape
            return (sp.csr_matrix((x * Q, block.indices, block.indptr), shape=shape),
                    sp.csr_matrix((D, block.indices, block.indptr), shape=shape))
        mask = V.mask[rows]
        WH = W @ H
        Q, D = _q_and_d(WH, beta)
        if pieces is not None:
            keep = mask.ravel()
            self._add(pieces, V.values[rows].ravel()[keep], WH.ravel()[keep],
                      int(np.count_nonzero(keep)))
        del WH
        Q *= V.values[rows]  # 0 at unobserved entries
        D *= mask
        return Q, D

    def _add(self, pieces: list[float], x: np.ndarray, wh: np.ndarray, count: int) -> None:
        from ._beta import beta_divergence_pieces, power

        a, b, _ = beta_divergence_pieces(x, wh, self.beta)
        pieces[0] += a
        pieces[1] += b
        if self.beta != 0:
            pieces[2] += float(power(np.asarray(wh, np.float64), self.beta).sum())
        pieces[3] += float(count)

    def _delta(self, numerator: np.ndarray, denominator: np.ndarray, X: np.ndarray,
               l1: float, l2: float) -> np.ndarray:
        from ._beta import power

        if l1 > 0:
            denominator = denominator + l1
        if l2 > 0:
            denominator = denominator + l2 * X
        denominator = np.array(denominator, dtype=np.float64)
        denominator[denominator == 0] = EPSILON
        numerator = np.asarray(numerator, dtype=np.float64) / denominator
        if self.gamma != 1:
            power(numerator, self.gamma, out=numerator)
        return numerator

    def _step(self, V: Observed, W: np.ndarray, H: np.ndarray, reg: Regularization,
              pieces: list[float] | None) -> np.ndarray:
        from ._beta import EPS64

        out = np.empty(W.shape, dtype=np.float64)
        for rows in self._blocks(V):
            XQ, MD = self._weighted(V, rows, W[rows], H, pieces)
            numerator = np.asarray(XQ @ H.T, dtype=np.float64)
            denominator = np.asarray(MD @ H.T, dtype=np.float64)
            out[rows] = W[rows] * self._delta(numerator, denominator, W[rows],
                                              reg.l1_W, reg.l2_W)
        if self.beta < 1:
            out[out < EPS64] = 0.0
        return out

    def update_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                     reg: Regularization) -> tuple[np.ndarray, Stats]:
        H = np.asarray(ctx.H, dtype=np.float64)
        W64 = W.astype(np.float64)
        pieces = [0.0, 0.0, 0.0, 0.0]
        W_new = self._step(V, W64, H, reg, pieces).astype(W.dtype, copy=False)
        A = np.zeros(H.shape, dtype=np.float64)
        B = np.zeros(H.shape, dtype=np.float64)
        Wn = W_new.astype(np.float64)
        for rows in self._blocks(V):
            XQ, MD = self._weighted(V, rows, Wn[rows], H, None)
            A += t_dot(Wn[rows], XQ)
            B += t_dot(Wn[rows], MD)
        stats: Stats = {"beta": np.array(pieces), "A": A, "B": B}
        if V.held_rows.size:
            stats["held0"] = _held_beta(V, W, H, self.beta)
        return W_new, stats

    def update_H(self, H: np.ndarray, stats: Stats, ctx: PanelContext,
                 reg: Regularization) -> np.ndarray:
        from ._beta import EPS64

        H = np.asarray(H, dtype=np.float64)
        H_new = H * self._delta(stats["A"], stats["B"], H, reg.l1_H, reg.l2_H)
        if self.beta <= 1:
            H_new[H_new < EPS64] = 0.0
        return H_new

    def loss_pieces(self, V: Observed, W: np.ndarray, ctx: PanelContext) -> Stats:
        from ._beta import _row_blocks

        H = np.asarray(ctx.H, dtype=np.float64)
        W64 = W.astype(np.float64)
        pieces = [0.0, 0.0, 0.0, 0.0]
        for rows in _row_blocks(*V.shape):
            if V.mask is None:
                block = V.values[rows]
                self._add(pieces, block.data, _wh_stored(W64[rows], H, block),
                          block.data.size)
            else:
                keep = V.mask[rows].ravel()
                self._add(pieces, V.values[rows].ravel()[keep],
                          (W64[rows] @ H).ravel()[keep], int(np.count_nonzero(keep)))
        stats: Stats = {"beta": np.array(pieces)}
        if V.held_rows.size:
            stats["held0"] = _held_beta(V, W, ctx.H, self.beta)
        return stats

    def loss_before(self, stats: Stats, ctx: PanelContext, norm_sq: float) -> float:
        a, b, c, count = (float(v) for v in stats["beta"])
        return _beta_value(a, b, c, count, self.beta)

    def transform_panel(self, V: Observed, W: np.ndarray, ctx: PanelContext,
                        reg: Regularization, max_iter: int, tol: float) -> np.ndarray:
        H = np.asarray(ctx.H, dtype=np.float64)

        def step(Vr: Observed, Xr: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return self._step(Vr, Xr, H, reg, None)

        return _solve_masked_rows(V, W.astype(np.float64), step, max_iter,
                                  tol).astype(W.dtype, copy=False)
