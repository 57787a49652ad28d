"""Hierarchical alternating least squares, accelerated (Gillis & Glineur, 2012).

One sweep updates the k columns of a factor in turn with their exact non-negative
least-squares solution given the others:

    X[:, j] ← max(ε, X[:, j] + (P[:, j] − X·G[:, j]) / G[j, j]).

A sweep costs O(n·k²) while forming ``P`` costs O(nnz·k), so sweeps are repeated
while ``P`` and ``G`` are cached: at most ``1 + α·ρ`` of them, ρ being the ratio of
the two costs, and a row stops as soon as its change falls below ``δ`` times its
first sweep's change. The rule is applied row by row (rows are independent given
``P`` and ``G``), so the result does not depend on how V is split into panels.

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

from ._frobenius import FrobeniusSolver

__all__ = ["HALS"]

#: Gillis & Glineur's constants: sweeps ≤ 1 + ALPHA·ρ, stop below DELTA × first change.
ALPHA = 0.5
DELTA = 0.1
#: Floor that keeps a column from vanishing (a zero column makes G[j, j] = 0).
FLOOR = 1e-16


class HALS(FrobeniusSolver):
    """Accelerated HALS for ½‖V − WH‖² with L1/L2 penalties."""

    def step(
        self,
        X: np.ndarray,
        P: np.ndarray,
        G: np.ndarray,
        l1: float,
        l2: float,
        rho: float,
    ) -> np.ndarray:
        k = X.shape[1]
        # Work on transposes so that one column of X is one contiguous row.
        Xt = np.array(X.T, dtype=np.float64, order="C")
        Pt = np.array(P.T, dtype=np.float64, order="C")
        if l1 > 0:
            Pt -= l1
        Gr = np.array(G, dtype=np.float64)
        if l2 > 0:
            Gr[np.diag_indices(k)] += l2
        diag = np.diag(Gr).copy()
        max_sweeps = max(1, int(1 + ALPHA * rho))
        active: np.ndarray | None = None  # None: every row
        first: np.ndarray | None = None
        for sweep in range(max_sweeps):
            Xa = Xt if active is None else Xt[:, active]
            Pa = Pt if active is None else Pt[:, active]
            old = Xa.copy()
            for j in range(k):
                if diag[j] <= 0:
                    # H (or W) has an all-zero component: nothing determines X[:, j].
                    Xa[j] = FLOOR
                    continue
                update = Xa[j] + (Pa[j] - Gr[j] @ Xa) / diag[j]
                np.maximum(update, FLOOR, out=Xa[j])
            change = np.einsum("ij,ij->j", Xa - old, Xa - old)
            if active is not None:
                Xt[:, active] = Xa
            if sweep == 0:
                first = change
                keep = change > 0
                active = np.flatnonzero(keep)
            else:
                assert first is not None and active is not None
                keep = change > (DELTA * DELTA) * first[active]
                active = active[keep]
            if active.size == 0:
                break
        return np.ascontiguousarray(Xt.T)
