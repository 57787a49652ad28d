"""Hierarchical alternating least squares, accelerated (Gillis & Glineur, 2012).

One sweep updates the k columns of a factor in turn with their exact non-negative
least-squares solution given the others:

    X[:, j] ← max(0, X[:, j] + (P[:, j] − X·G[:, j]) / G[j, j]).

Factors reach exact zeros, as in scikit-learn's coordinate descent (``solver="cd"``).
A component whose Gram diagonal ``G[j, j]`` is not > 0 (the matching row of the
other factor is all zero, and there is no L2 penalty) is skipped: ``X[:, j]`` is left
unchanged, since nothing in the objective depends on it. An earlier floor at 1e-16
kept such a column alive at 1e-16 and let its partner grow to ~1e15.

A sweep costs O(n·k²) while forming ``P`` costs O(nnz·k), so sweeps are repeated
while ``P`` and ``G`` are cached: at most ``1 + α·ρ`` of them, ρ being the ratio of
the two costs, and a row stops as soon as its change falls below ``δ`` times its
first sweep's change. The rule is applied row by row (rows are independent given
``P`` and ``G``), so the result does not depend on how V is split into panels.

Rows are swept in blocks small enough to stay in cache through all their sweeps
(one block is k × ~3000 values), with ``G`` and ``P`` scaled by ``1/G[j, j]`` and
``G``'s diagonal zeroed, so that a column update is one gemv, one subtraction and
one maximum: ``X[:, j] ← max(0, P[:, j]/G_jj − Σ_{r≠j} (G_jr/G_jj)·X[:, r])``.

References
----------
Cichocki, A. and Phan, A.-H. (2009). Fast local algorithms for large scale
nonnegative matrix and tensor factorizations. IEICE Trans. Fundamentals E92-A(3).
Gillis, N. and Glineur, F. (2012). Accelerated multiplicative updates and
hierarchical ALS algorithms for nonnegative matrix factorization. Neural
Computation 24(4), 1085–1105. doi:10.1162/NECO_a_00256
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._frobenius import FrobeniusSolver

__all__ = ["HALS", "WARMUP_ITERATIONS", "CoordinateDescent", "warm_rho"]

#: Gillis & Glineur's constants: sweeps ≤ 1 + ALPHA·ρ, stop below DELTA × first change.
ALPHA = 0.5
DELTA = 0.1
#: Least number of sweeps. On very sparse V ρ ≈ 1 gives one sweep per pass; measured
#: (50000 × 5000, 0.1 % density, k = 20, same start as scikit-learn's cd) a second
#: W sweep cuts the passes to cd's 200-iteration loss only from 209 to 203 for about
#: +5 ms per pass (and from 35 to 27 passes at 20000 × 2000): the tail is set by the
#: alternation, not by the inner solves, so one sweep is kept.
MIN_SWEEPS = 1
#: Iterations at the start of a fit with one sweep per factor (no inner repeats).
#: The first passes move W and H far; solving each factor exactly against a partner
#: that is still far from its final value commits the fit early to one of the many
#: exact factorizations of a rank-deficient V. On the swimmer (rank 13, k = 17,
#: init="random", seeds 0-4, min cosine of the 17 parts) accelerated sweeps from the
#: first pass gave 0.53-0.84; one sweep always (scikit-learn's cd) 0.39-0.97; 3
#: single-sweep passes first 0.86-0.97 (1: 0.38-0.90, 2: 0.60-0.95, 5: 0.39-0.97).
#: Cost, measured at 2000 × 500 (k = 10, passes to cd's 200-iteration loss): 34
#: instead of 29 (one sweep always: 201). Not with ``extrapolate`` (its own schedule:
#: with the warm-up it needed 89 instead of 57 passes to plain HALS's 100-pass loss).
WARMUP_ITERATIONS = 3


def warm_rho(ctx: object, rho: float) -> float:
    """``rho``, or 0 (one sweep) in the first WARMUP_ITERATIONS passes of a fit."""
    iteration = getattr(ctx, "iteration", None)
    return 0.0 if iteration is not None and iteration < WARMUP_ITERATIONS else rho


#: Rows × k of the block of X swept at a time (a few hundred KiB: stays in cache).
CHUNK_ELEMENTS = 2**16


class HALS(FrobeniusSolver):
    """Accelerated HALS for ½‖V − WH‖² with L1/L2 penalties."""

    #: Fits end by balancing the scale of W's columns and H's rows (engine.balance).
    balances = True

    #: ``shuffle=True``: the seed of the fit; each pass sweeps the components of W and
    #: of H in an order drawn from (seed, iteration, factor). None: in order.
    shuffle_seed: int | None = None

    def sweep_ratio(self, ctx: object, rho: float) -> float:
        return warm_rho(ctx, rho)

    def component_order(self, ctx: object, factor: int, k: int) -> np.ndarray | None:
        iteration = getattr(ctx, "iteration", None)
        if self.shuffle_seed is None or iteration is None:
            return None
        return np.random.default_rng([self.shuffle_seed, iteration, factor]).permutation(k)

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
        n, k = X.shape
        max_sweeps = max(MIN_SWEEPS, int(1 + ALPHA * rho))
        if compiled:
            # The same sweeps, row by row in one compiled loop (scaling included).
            return _kernels.hals_step(X, P, G, l1, l2, max_sweeps, DELTA, 0.0, True)
        Gr = np.array(G, dtype=np.float64)
        if l2 > 0:
            Gr[np.diag_indices(k)] += l2
        diag = np.diag(Gr).copy()
        # A diagonal that is not > 0 means an all-zero component of the other factor:
        # nothing determines X[:, j], so its update is skipped (scikit-learn's cd does
        # the same: ``if hess != 0``).
        live = diag > 0
        columns = np.flatnonzero(live)
        inv = np.where(live, 1.0 / np.where(live, diag, 1.0), 0.0)
        # Scaled so that one column update is one gemv, one subtraction, one max:
        #   X[:, j] ← max(0, P[:, j]/G_jj − Σ_{r≠j} (G_jr/G_jj)·X[:, r]).
        Gs = Gr * inv[:, np.newaxis]
        Gs[np.diag_indices(k)] = 0.0
        X64 = np.asarray(X, dtype=np.float64)
        P64 = np.asarray(P, dtype=np.float64)
        out = np.empty((n, k))
        # Rows are independent given P and G: sweep a block of rows that stays in
        # cache through all its sweeps, instead of streaming X k times per sweep. The
        # block is transposed (one column of X = one contiguous row) on the way in.
        chunk = min(max(256, CHUNK_ELEMENTS // max(k, 1)), n)
        # Buffers reused for every block and sweep: no allocation per sweep (with
        # glibc's eager trimming, which Dask sets for its workers, each would be a
        # fresh mmap and its page faults).
        Xbuf = np.empty((k, chunk))
        Pbuf = np.empty((k, chunk))
        scratch = np.empty((k, chunk))
        tmp = np.empty(chunk)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            Xc, Pc = Xbuf[:, : b - a], Pbuf[:, : b - a]
            if b - a < chunk:
                Xc, Pc = np.empty((k, b - a)), np.empty((k, b - a))
            Xc[...] = X64[a:b].T
            if l1 > 0:
                np.subtract(P64[a:b].T, l1, out=Pc)
                Pc *= inv[:, np.newaxis]
            else:
                np.multiply(P64[a:b].T, inv[:, np.newaxis], out=Pc)
            _sweeps(Xc, Pc, Gs, columns, max_sweeps, tmp[: b - a], scratch)
            out[a:b] = Xc.T
        return out



class CoordinateDescent(HALS):
    """``solver="cd"``: scikit-learn's coordinate descent, iterate for iterate.

    The same exact coordinate updates as :class:`HALS`, on scikit-learn's schedule:
    one sweep over W's components, then one over H's, per iteration (no inner
    repeats), and no rescaling of W and H at the end. From the same custom start
    the iterates are scikit-learn's ``solver="cd"`` ones to ~1e-14 (the sums'
    order differs); ``extrapolate="auto"`` leaves it plain. ``solver="hals"`` (the
    default) reaches the same loss in several times fewer passes.
    """

    balances = False

    def sweep_ratio(self, ctx: object, rho: float) -> float:
        return 0.0  # one sweep per factor and iteration


def _sweep(Xa: np.ndarray, Pa: np.ndarray, Gs: np.ndarray, columns: np.ndarray,
           tmp: np.ndarray) -> None:
    """One HALS sweep over the components ``columns`` of ``Xa`` (k × c), in place."""
    for j in columns:
        np.dot(Gs[j], Xa, out=tmp)
        np.subtract(Pa[j], tmp, out=tmp)
        np.maximum(tmp, 0.0, out=Xa[j])


def _sweeps(Xc: np.ndarray, Pc: np.ndarray, Gs: np.ndarray, columns: np.ndarray,
            max_sweeps: int,
            buf: np.ndarray, scratch: np.ndarray) -> None:
    """Up to ``max_sweeps`` sweeps on a block of rows, with the per-row stopping rule.

    A row (a column of ``Xc``) keeps sweeping while its change exceeds ``DELTA`` times
    its first sweep's change. While most rows are active the whole block is swept and
    the stopped rows are put back (cheaper than gathering the active ones); once few
    are, they are gathered.
    """
    if max_sweeps == 1:
        _sweep(Xc, Pc, Gs, columns, buf)
        return
    c = Xc.shape[1]
    old = scratch[:, :c]
    np.copyto(old, Xc)
    _sweep(Xc, Pc, Gs, columns, buf)
    old -= Xc
    first = np.einsum("ij,ij->j", old, old)
    active = first > 0
    bound = (DELTA * DELTA) * first
    gathered: np.ndarray | None = None
    for sweep in range(1, max_sweeps):
        n_active = int(np.count_nonzero(active))
        if n_active == 0:
            return
        last = sweep == max_sweeps - 1
        if 2 * n_active >= c:
            old = scratch[:, :c]
            np.copyto(old, Xc)
            _sweep(Xc, Pc, Gs, columns, buf)
            if n_active < c:
                np.copyto(Xc, old, where=~active)
            if last:
                return
            old -= Xc
            active &= np.einsum("ij,ij->j", old, old) > bound
        else:
            if gathered is None:
                # Buffers for the gathered active rows, made once per block: a fresh
                # array per sweep is an mmap and its page faults under the eager
                # trimming Dask sets for its workers.
                gathered = np.empty((2, Xc.size))
            size = Xc.shape[0] * n_active
            Xa, Pa = (gathered[i, :size].reshape(Xc.shape[0], n_active) for i in range(2))
            old = scratch[:, :n_active]
            idx = np.flatnonzero(active)
            np.take(Xc, idx, axis=1, out=Xa, mode="clip")
            np.take(Pc, idx, axis=1, out=Pa, mode="clip")
            np.copyto(old, Xa)
            _sweep(Xa, Pa, Gs, columns, buf[:n_active])
            Xc[:, idx] = Xa
            if last:
                return
            old -= Xa
            active[idx] = np.einsum("ij,ij->j", old, old) > bound[idx]
