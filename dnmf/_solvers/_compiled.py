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
#: For the HALS sweeps: sums may be reassociated and fused (FMA). Results then differ
#: from the NumPy reference by rounding only (tested to 1e-10); inputs are finite.
_jit_fast = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})


@_jit_fast
def hals_step(X, P, G, l1, l2, max_sweeps, delta_sq, floor, skip_dead):  # type: ignore[no-untyped-def]
    """A new X after the HALS sweeps (see :func:`._kernels.hals_step`)."""
    n, k = X.shape
    # The reference's scaling: Gs = (G + l2·I)[j, :] / G_jj with a zero diagonal,
    # right-hand sides (P − l1) / G_jj; components with G_jj ≤ 0 get 0 (or are skipped).
    Gs = np.empty((k, k))
    inv = np.zeros(k)
    columns = np.empty(k, dtype=np.int64)
    n_columns = 0
    for j in range(k):
        d = G[j, j] + l2 if l2 > 0 else G[j, j]
        if d > 0:
            inv[j] = 1.0 / d
        if d > 0 or not skip_dead:
            columns[n_columns] = j
            n_columns += 1
    for j in range(k):
        for r in range(k):
            Gs[j, r] = G[j, r] * inv[j]
        Gs[j, j] = 0.0
    out = X.copy()
    # Rows in blocks of BLOCK, transposed (component-major), so that one component's
    # update runs across the block's rows in SIMD lanes; a row that has stopped keeps
    # its values (it is computed with the others but not written back).
    B = 16
    xt = np.empty((k, B))
    pt = np.empty((k, B))
    acc = np.empty(B)
    change = np.empty(B)
    bound = np.empty(B)
    active = np.empty(B, dtype=np.bool_)
    for i0 in range(0, n, B):
        c = min(B, n - i0)
        for b in range(c):
            for j in range(k):
                xt[j, b] = out[i0 + b, j]
                pt[j, b] = (P[i0 + b, j] - l1) * inv[j] if l1 > 0 else P[i0 + b, j] * inv[j]
            active[b] = True
        n_active = c
        for sweep in range(max_sweeps):
            for b in range(c):
                change[b] = 0.0
            for jj in range(n_columns):
                j = columns[jj]
                for b in range(c):
                    acc[b] = pt[j, b]
                for r in range(k):
                    g = Gs[j, r]
                    for b in range(c):
                        acc[b] -= g * xt[r, b]
                for b in range(c):
                    t = acc[b] if acc[b] > floor else floor
                    if active[b]:
                        d = t - xt[j, b]
                        change[b] += d * d
                        xt[j, b] = t
            for b in range(c):
                if active[b]:
                    if sweep == 0:
                        if change[b] <= 0.0:
                            active[b] = False
                            n_active -= 1
                        else:
                            bound[b] = delta_sq * change[b]
                    elif change[b] <= bound[b]:
                        active[b] = False
                        n_active -= 1
            if n_active == 0:
                break
        for b in range(c):
            for j in range(k):
                out[i0 + b, j] = xt[j, b]
    return out


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
