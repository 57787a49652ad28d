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
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._mask import _GAMMA, _MUL1, _MUL2, _S11, _S27, _S30, _S31

_jit = numba.njit(cache=True, nogil=True)
#: For the HALS sweeps: sums may be reassociated and fused (FMA). Results then differ
#: from the NumPy reference by rounding only (tested to 1e-10); inputs are finite.
_jit_fast = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
#: For the KL loops: the same, and divisions by zero give inf/NaN as in NumPy instead
#: of raising (numba's check per division stops the loops from vectorising).
_jit_simd = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"},
                       error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"},
                         error_model="numpy", inline="always")
#: For amu's step: exact IEEE arithmetic as NumPy's (its accept test is a sign).
_jit_exact = numba.njit(cache=True, nogil=True, error_model="numpy")


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


# ------------------------------------------------------------------ KL (mu, amu)
# numba has no SIMD log or exp without Intel's SVML, and a loop calling the C
# library's runs 4-5 × slower than NumPy's. These are fdlibm's (e_log.c, e_exp.c:
# errors below 1 ulp), branch-free on the float's bits, so that loops vectorise.


@intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The IEEE bits of a float64, as an int64 (a bit cast)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _float(typingctx, x):  # type: ignore[no-untyped-def]
    """The float64 of IEEE bits given as an int64 (a bit cast)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_SQRT2 = 1.4142135623730951
_ONE_BITS = 0x3FF0000000000000
_MANTISSA = 0x000FFFFFFFFFFFFF
_INV_LN2 = 1.44269504088896338700e+00
_P1 = 1.66666666666666019037e-01
_P2 = -2.77777777770155933842e-03
_P3 = 6.61375632143793436117e-05
_P4 = -1.65339022054652515390e-06
_P5 = 4.13813679705723846039e-08
#: exp's argument range for the bit-built 2^k (np.exp outside it).
_EXP_LIMIT = 708.0

#: Entries of V per block of rows in the dense KL kernel: its buffers (two of this
#: many values) stay in the core's cache between the products and the quotients.
KL_BLOCK = 16384


@_jit_inline
def _log_bits(b):  # type: ignore[no-untyped-def]
    """log(x) from the bits ``b`` of a positive normal float64 x (fdlibm's log:
    x = 2^e·f, f in [√2/2, √2), log f = 2·atanh(u / (2 + u)), u = f − 1)."""
    e = np.float64(((b >> 52) & 0x7FF) - 1023)
    f = _float((b & _MANTISSA) | _ONE_BITS)
    big = f > _SQRT2
    f = f * 0.5 if big else f
    e = e + 1.0 if big else e
    u = f - 1.0
    s = u / (2.0 + u)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * u * u
    return e * _LN2_HI - ((hfsq - (s * (hfsq + (t2 + t1)) + e * _LN2_LO)) - u)


@_jit_simd
def _ratio_xlog(x, wh, eps, in_place):  # type: ignore[no-untyped-def]
    """(Σ x·log(x / wh), Σ x) over the entries with x > eps, ``wh`` floored at eps;
    ``in_place``: ``wh`` becomes x / max(wh, eps) (float64 only). In float64."""
    n = x.shape[0]
    xlog = 0.0
    xsum = 0.0
    lo = 2047
    hi = 0
    for c in range(n):
        y = wh[c]
        y = y if y >= eps else eps
        v = x[c]
        r = np.float64(v) / np.float64(y)
        if in_place:
            wh[c] = r
        keep = v > eps
        w = np.float64(v) if keep else 0.0
        b = _bits(r) if keep else _ONE_BITS
        field = (b >> 52) & 0x7FF
        lo = min(lo, field)
        hi = max(hi, field)
        xlog += w * _log_bits(b)
        xsum += w
    if lo == 0 or hi == 2047:  # a kept quotient not positive normal: np.log's values
        xlog = 0.0
        for c in range(n):
            if x[c] > eps:
                if in_place:
                    r = wh[c]
                else:
                    y = wh[c]
                    y = y if y >= eps else eps
                    r = np.float64(x[c]) / np.float64(y)
                xlog += np.float64(x[c]) * np.log(r)
    return xlog, xsum


@_jit_simd
def _exps(x, out):  # type: ignore[no-untyped-def]
    """``out = exp(x)`` (fdlibm's exp: x = k·ln2 + r, exp(r) by its rational form,
    times 2^k from the exponent bits; np.exp where |x| > 708 or x is NaN)."""
    n = x.shape[0]
    outside = 0
    for c in range(n):
        v = x[c]
        outside += 0 if (v <= _EXP_LIMIT and v >= -_EXP_LIMIT) else 1
        v = min(max(v, -_EXP_LIMIT), _EXP_LIMIT)
        kf = np.floor(v * _INV_LN2 + 0.5)
        hi = v - kf * _LN2_HI
        lo = kf * _LN2_LO
        r = hi - lo
        t = r * r
        cr = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
        y = 1.0 - ((lo - (r * cr) / (2.0 - cr)) - hi)
        out[c] = y * _float((np.int64(kf) + 1023) << 52)
    if outside:
        for c in range(n):
            if not (x[c] <= _EXP_LIMIT and x[c] >= -_EXP_LIMIT):
                out[c] = np.exp(x[c])


@_jit_simd
def _relaxed_flat(x0, num, s, l1, l2, omegas, eps, out, work):  # type: ignore[no-untyped-def]
    """amu's step on flat arrays (``s``: the linear coefficient per entry), in
    whole-array loops as :func:`dnmf._solvers._kl.relaxed_step` does (vectorised log
    and exp; ``work``: a (4, ≥ n) float64 buffer). Agrees with it to rounding, and in
    every accept decision unless a test falls within rounding of its threshold."""
    n = x0.shape[0]
    rho = work[0]
    log_rho = work[1]
    xr = work[2]
    r = work[3]
    pending = 0
    lo = 2047
    hi = 0
    for c in range(n):
        sl = s[c] + l1
        den = sl + l2 * x0[c] if l2 > 0 else sl
        den = den if den != 0 else eps
        q = num[c] / den
        out[c] = x0[c] * q
        movable = x0[c] > 0 and q > 0
        rho[c] = q if movable else -1.0  # -1: not movable (or already given its ω)
        b = _bits(q) if movable else _ONE_BITS
        field = (b >> 52) & 0x7FF
        lo = min(lo, field)
        hi = max(hi, field)
        log_rho[c] = _log_bits(b)
        pending += 1 if movable else 0
    if pending == 0:
        return
    if lo == 0 or hi == 2047:
        for c in range(n):
            if rho[c] > 0:
                log_rho[c] = np.log(rho[c])
    for t in range(omegas.shape[0]):
        omega = omegas[t]
        for c in range(n):
            xr[c] = omega * log_rho[c]
        _exps(xr[:n], r[:n])
        for c in range(n):
            sl = s[c] + l1
            change = sl * (r[c] - 1.0)
            change -= num[c] * omega * log_rho[c]
            if l2 > 0:
                change += 0.5 * l2 * x0[c] * (r[c] * r[c] - 1.0)
            accept = rho[c] > 0 and change <= 0 and np.abs(r[c]) < np.inf
            out[c] = x0[c] * r[c] if accept else out[c]
            rho[c] = -1.0 if accept else rho[c]


@_jit_exact
def _mu_entry(x0, num, s, l1, l2, eps):  # type: ignore[no-untyped-def]
    """One entry of KL-MU's W-step, operation for operation as the NumPy reference."""
    den = s
    if l1 > 0:
        den = den + l1
    if l2 > 0:
        den = den + l2 * x0
    if den == 0:
        den = eps
    return x0 * (num / den)


@_jit_simd
def relaxed_rows(X0, numerator, linear, per_row, l1, l2, omegas, eps, floor, out):  # type: ignore[no-untyped-def]
    """``out = relaxed_step(X0, numerator, linear)``: ``linear[i]`` for row i
    (``per_row``, the H-step) or ``linear[j]`` for column j (the W-step); entries
    of ``out`` below ``floor`` become 0."""
    n, k = X0.shape
    s = np.empty(n * k)
    for i in range(n):
        for j in range(k):
            s[i * k + j] = linear[i] if per_row else linear[j]
    work = np.empty((4, n * k))
    flat = out.reshape(n * k)
    _relaxed_flat(X0.reshape(n * k), numerator.reshape(n * k), s, l1, l2, omegas, eps,
                  flat, work)
    if floor > 0:
        for c in range(n * k):
            if flat[c] < floor:
                flat[c] = 0.0


@_jit_simd
def _floored_ratio(x, wh, eps):  # type: ignore[no-untyped-def]
    """``wh = x / max(wh, eps)`` in place (the floor as the reference's masked store)."""
    for c in range(x.shape[0]):
        y = wh[c]
        if y < eps:
            y = eps
        wh[c] = x[c] / y


@_jit_inline
def _pass_sums(xlog, xsum, W, W_new, sums):  # type: ignore[no-untyped-def]
    """``sums`` of a KL pass: Σ v·log(v/wh), Σ v, then for W and for W_new their
    column sums (float64) and the sum of their squares (k + 1 values each)."""
    n, k = W.shape
    sums[0] = xlog
    sums[1] = xsum
    for which in range(2):
        X = W if which == 0 else W_new
        base = 2 + which * (k + 1)
        sq = 0.0
        for j in range(k):
            sums[base + j] = 0.0
        for i in range(n):
            for j in range(k):
                x = np.float64(X[i, j])
                sums[base + j] += x
                sq += x * x
        sums[base + k] = sq


@_jit_simd
def kl_dense(V, W, H, Ht, linear, l1, l2, omegas, accelerated, eps, W_new, A, sums):  # type: ignore[no-untyped-def]
    """One KL pass over a dense panel (see :func:`._kernels.kl_dense`).

    ``sums`` (float64, 2 + 2·(k + 1)): Σ x·log(x/wh), Σ x, then the column sums and
    the sum of squares of W, then the same of W_new.
    """
    n, m = V.shape
    k = W.shape[1]
    rows = max(1, min(n, KL_BLOCK // max(m, 1)))
    WH = np.empty((rows, m), dtype=V.dtype)
    N = np.empty((rows, k), dtype=V.dtype)
    Ab = np.empty((k, m), dtype=V.dtype)
    lin = np.empty(rows * k)
    for i in range(rows):
        for j in range(k):
            lin[i * k + j] = linear[j]
    work = np.empty((4, rows * k))
    narrow = V.itemsize < 8
    xlog = 0.0
    xsum = 0.0
    A[:, :] = 0.0
    for i0 in range(0, n, rows):
        b = min(rows, n - i0)
        Vb = V[i0:i0 + b].reshape(b * m)
        WHb = WH[:b]
        np.dot(W[i0:i0 + b], H, WHb)
        whf = WHb.reshape(b * m)
        if narrow:
            # float32: the loss's quotients in float64 from the floored WH (as the
            # reference's), the W-step's in float32
            a, t = _ratio_xlog(Vb, whf, eps, False)
            _floored_ratio(Vb, whf, eps)
        else:
            a, t = _ratio_xlog(Vb, whf, eps, True)
        xlog += a
        xsum += t
        Nb = N[:b]
        np.dot(WHb, Ht, Nb)
        if accelerated:
            _relaxed_flat(W[i0:i0 + b].reshape(b * k), Nb.reshape(b * k), lin[:b * k], l1,
                          l2, omegas, eps, W_new[i0:i0 + b].reshape(b * k), work)
        else:
            for i in range(b):
                for j in range(k):
                    W_new[i0 + i, j] = _mu_entry(W[i0 + i, j], Nb[i, j], linear[j], l1, l2,
                                                 eps)
        np.dot(W_new[i0:i0 + b], H, WHb)
        _floored_ratio(Vb, whf, eps)
        np.dot(W_new[i0:i0 + b].T, WHb, Ab)
        for i in range(k):
            for c in range(m):
                A[i, c] += Ab[i, c]
    _pass_sums(xlog, xsum, W, W_new, sums)


@_jit_simd
def kl_csr(indptr, indices, data, W, Ht, linear, l1, l2, omegas, accelerated, eps, W_new, At,
           sums):  # type: ignore[no-untyped-def]
    """One KL pass over a CSR panel (see :func:`._kernels.kl_csr`)."""
    n, k = W.shape
    longest = 0
    for i in range(n):
        longest = max(longest, indptr[i + 1] - indptr[i])
    size = max(KL_BLOCK, longest)
    Q = np.empty(size, dtype=data.dtype)
    N = np.empty((n if n < 1024 else 1024) * k)
    lin = np.empty(N.shape[0])
    for i in range(N.shape[0] // k):
        for j in range(k):
            lin[i * k + j] = linear[j]
    work = np.empty((4, N.shape[0]))
    narrow = data.itemsize < 8
    xlog = 0.0
    xsum = 0.0
    At[:, :] = 0.0
    i0 = 0
    while i0 < n:
        # a block of rows: at most KL_BLOCK stored entries (or one long row), 1024 rows
        i1 = i0 + 1
        while i1 < n and i1 - i0 < 1024 and indptr[i1 + 1] - indptr[i0] <= size:
            i1 += 1
        e0 = indptr[i0]
        e1 = indptr[i1]
        for i in range(i0, i1):
            for e in range(indptr[i], indptr[i + 1]):
                c = indices[e]
                t = 0.0
                for r in range(k):
                    t += W[i, r] * Ht[c, r]
                Q[e - e0] = t
        x = data[e0:e1]
        q = Q[:e1 - e0]
        if narrow:
            a, s = _ratio_xlog(x, q, eps, False)
            _floored_ratio(x, q, eps)
        else:
            a, s = _ratio_xlog(x, q, eps, True)
        xlog += a
        xsum += s
        b = i1 - i0
        for i in range(i0, i1):
            row = (i - i0) * k
            for r in range(k):
                N[row + r] = 0.0
            for e in range(indptr[i], indptr[i + 1]):
                c = indices[e]
                v = Q[e - e0]
                for r in range(k):
                    N[row + r] += v * Ht[c, r]
        if accelerated:
            _relaxed_flat(W[i0:i1].reshape(b * k), N[:b * k], lin[:b * k], l1, l2, omegas, eps,
                          W_new[i0:i1].reshape(b * k), work)
        else:
            for i in range(b):
                for j in range(k):
                    W_new[i0 + i, j] = _mu_entry(W[i0 + i, j], N[i * k + j], linear[j], l1,
                                                 l2, eps)
        for i in range(i0, i1):
            for e in range(indptr[i], indptr[i + 1]):
                c = indices[e]
                t = 0.0
                for r in range(k):
                    t += W_new[i, r] * Ht[c, r]
                Q[e - e0] = t
        _floored_ratio(x, q, eps)
        for i in range(i0, i1):
            for e in range(indptr[i], indptr[i + 1]):
                c = indices[e]
                v = np.float64(Q[e - e0])
                for r in range(k):
                    At[c, r] += v * W_new[i, r]
        i0 = i1
    _pass_sums(xlog, xsum, W, W_new, sums)


# ---------------------------------------------------------- the hold-out hash
# SplitMix64 as dnmf._mask.splitmix64, with its constants (all np.uint64: numba would
# turn a uint64 op an int64 into float64).


@_jit_inline
def _splitmix64(x):  # type: ignore[no-untyped-def]
    z = x + _GAMMA
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


@_jit_simd
def heldout_rows(row_keys, threshold, out):  # type: ignore[no-untyped-def]
    """``out[i, j] = splitmix64(row_keys[i] ^ j) >> 11 < threshold`` (bool, n × m):
    :meth:`dnmf.SpeckledHoldout.heldout`'s hash, bit for bit."""
    n, m = out.shape
    for i in range(n):
        key = row_keys[i]
        for j in range(m):
            out[i, j] = (_splitmix64(key ^ np.uint64(j)) >> _S11) < threshold


@_jit_simd
def heldout_pairs(seed_key, rows, cols, threshold, out):  # type: ignore[no-untyped-def]
    """``out[e] = splitmix64(splitmix64(seed_key ^ rows[e]) ^ cols[e]) >> 11 <
    threshold``: :meth:`dnmf.SpeckledHoldout.heldout_at`'s hash, bit for bit."""
    for e in range(rows.shape[0]):
        h = _splitmix64(_splitmix64(seed_key ^ rows[e]) ^ cols[e])
        out[e] = (h >> _S11) < threshold
