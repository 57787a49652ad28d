"""The numba-compiled kernels; imported only through :mod:`._kernels`, which decides.

Each function does the arithmetic of a NumPy reference (named in its docstring in
:mod:`._kernels`) in plain loops. ``cache=True`` keeps the machine code on disk beside
this file (or in numba's user cache), so only the first process after an install
compiles; ``nogil=True`` lets Dask's threads run panels at the same time.
``.py_func`` of each is the same code run by Python (the tests use it).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def hals_rows(X, Ps, Gs, columns, max_sweeps, delta_sq, floor):  # type: ignore[no-untyped-def]
    n, k = X.shape
    for i in range(n):
        bound = 0.0
        for sweep in range(max_sweeps):
            change = 0.0
            for jj in range(columns.shape[0]):
                j = columns[jj]
                t = Ps[i, j]
                for r in range(k):
                    t -= Gs[j, r] * X[i, r]
                if t < floor:
                    t = floor
                d = t - X[i, j]
                change += d * d
                X[i, j] = t
            if sweep == 0:
                if change <= 0.0:
                    break
                bound = delta_sq * change
            elif change <= bound:
                break


@_jit
def wh_at_csr(indptr, indices, W, Ht, out):  # type: ignore[no-untyped-def]
    n = indptr.shape[0] - 1
    k = W.shape[1]
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            c = indices[e]
            t = 0.0
            for r in range(k):
                t += W[i, r] * Ht[c, r]
            out[e] = t


@_jit
def _solve_column(Gs, Rs, c, F, z, y, L, f, b, rtol):  # type: ignore[no-untyped-def]
    """z: the solution on the passive set F of column c (0 elsewhere); y = Gs·z − R
    (0 on F). False if the passive block is singular to working precision (a
    Cholesky pivot below ``rtol``: the reference's test)."""
    k = Gs.shape[0]
    p = 0
    for i in range(k):
        z[i] = 0.0
        if F[i]:
            f[p] = i
            p += 1
    # Cholesky Gs[f, f] = L·Lᵀ with the forward substitution L·b = R[f, c].
    for j in range(p):
        d = Gs[f[j], f[j]]
        for t in range(j):
            d -= L[j, t] * L[j, t]
        if d < rtol:
            return False
        ljj = np.sqrt(d)
        L[j, j] = ljj
        for i in range(j + 1, p):
            v = Gs[f[i], f[j]]
            for t in range(j):
                v -= L[i, t] * L[j, t]
            L[i, j] = v / ljj
        w = Rs[f[j], c]
        for t in range(j):
            w -= L[j, t] * b[t]
        b[j] = w / ljj
    # Back substitution Lᵀ·x = b.
    for j in range(p - 1, -1, -1):
        v = b[j]
        for t in range(j + 1, p):
            v -= L[t, j] * b[t]
        b[j] = v / L[j, j]
    for j in range(p):
        z[f[j]] = b[j]
    for i in range(k):
        if F[i]:
            y[i] = 0.0
        else:
            v = -Rs[i, c]
            for j in range(p):
                v += Gs[i, f[j]] * b[j]
            y[i] = v
    return True


@_jit
def nnls_columns(Gs, Rs, passive, usable, max_iter, Z, status, tol_factor, rtol,
                 budget):  # type: ignore[no-untyped-def]
    k, r = Rs.shape
    F = np.empty(k, dtype=np.bool_)
    infeasible = np.empty(k, dtype=np.bool_)
    z = np.empty(k)
    y = np.empty(k)
    L = np.empty((k, k))
    f = np.empty(k, dtype=np.int64)
    b = np.empty(k)
    for c in range(r):
        rhs_scale = 0.0
        for i in range(k):
            F[i] = passive[i, c]
            rhs_scale = max(rhs_scale, abs(Rs[i, c]))
        if not _solve_column(Gs, Rs, c, F, z, y, L, f, b, rtol):
            status[c] = 1
            continue
        alpha = budget
        beta = k + 1
        n_iter = 0
        while True:
            zmax = 0.0
            zsum = 0.0
            for i in range(k):
                zmax = max(zmax, abs(z[i]))
                zsum += abs(z[i])
            tol_z = tol_factor * zmax
            tol_y = tol_factor * (zsum + rhs_scale)
            n_inf = 0
            last = -1
            for i in range(k):
                bad = usable[i] and ((F[i] and z[i] < -tol_z) or (not F[i] and y[i] < -tol_y))
                infeasible[i] = bad
                if bad:
                    n_inf += 1
                    last = i
            if n_inf == 0:
                break
            if n_iter >= max_iter:
                status[c] = 1
                break
            n_iter += 1
            # Kim & Park's full exchange, with the backup rule (exchange only the
            # infeasible variable of largest index) after `budget` full exchanges
            # that did not reduce the number of infeasible variables.
            if n_inf < beta:
                beta = n_inf
                alpha = budget
                full = True
            elif alpha >= 1:
                alpha -= 1
                full = True
            else:
                full = False
            if full:
                for i in range(k):
                    if infeasible[i]:
                        F[i] = not F[i]
            else:
                F[last] = not F[last]
            if not _solve_column(Gs, Rs, c, F, z, y, L, f, b, rtol):
                status[c] = 1
                break
        if status[c] == 0:
            for i in range(k):
                Z[i, c] = z[i]
