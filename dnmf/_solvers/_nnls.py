"""Block principal pivoting solver for many non-negative least squares problems.

This module owns :func:`nnls_bpp`, the in-memory (pure NumPy/SciPy, no Dask) NNLS kernel
used by the alternating NNLS updates of the NMF solvers.  It works on precomputed Gram
matrices, ``gram = A^T A`` and ``rhs = A^T B``, so the tall data matrix never has to be
touched here, and it solves all right-hand sides at once: columns that share a passive set
are solved together with a single Cholesky factorisation (the column-grouping trick of Kim
and Park), and the many tiny groups that arise for small ``k`` are solved by a Cholesky
factorisation vectorised across columns.  There is no Python loop over columns (except
in the rarely needed fallback for columns that exceed ``max_iter``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from . import _kernels

__all__ = ["nnls_bpp"]

# Number of consecutive full exchanges allowed without reducing the number of infeasible
# variables before the backup (single exchange) rule kicks in ("p-bar" in Kim & Park).
_FULL_EXCHANGE_BUDGET = 3

# After Jacobi scaling the Gram matrix has a unit diagonal; a Cholesky pivot below this
# value means the passive columns of A are linearly dependent to working precision.
_SINGULAR_RTOL = 1e-11

# Multiple of k * eps (times a per-column scale) below which a negative value is treated as
# rounding noise rather than as a violated KKT condition.
_FEAS_TOL_FACTOR = 10.0

# Cost model (in microseconds, roughly) used to route each group of columns sharing a
# passive set of size m: one LAPACK Cholesky per group costs about _GROUP_COST, the
# Cholesky vectorised across columns about 1 + m**3 / _BATCH_CUBIC per column.  Groups for
# which the latter is cheaper (many small groups when k is small) are batched.
_GROUP_COST = 40.0
_BATCH_CUBIC = 500.0
# Upper bound on the number of float64 entries of a stacked (m, m, n) batch of systems.
_BATCH_MAX_ELEMS = 1 << 18


def nnls_bpp(
    gram: np.ndarray,
    rhs: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    max_iter: int | None = None,
    compiled: bool = False,
) -> np.ndarray:
    """Solve many non-negative least squares problems by block principal pivoting.

    Solves ``min_{X >= 0} ||A X - B||_F^2`` given only ``gram = A^T A`` and
    ``rhs = A^T B``.  The problem separates over the ``r`` columns of ``B``; all of them
    are solved together with the block principal pivoting method of Kim and Park [1]_
    (full exchange rule with the backup single-exchange rule, so that it terminates),
    grouping the columns that share the same passive set so that each distinct passive set
    costs one Cholesky factorisation.

    Parameters
    ----------
    gram : ndarray, shape (k, k)
        ``A^T A``; symmetric positive semi-definite.  A zero diagonal entry (a zero column
        of ``A``) is allowed: the corresponding variable is kept at zero.  A singular
        Gram matrix (linearly dependent columns of ``A``) is allowed; the passive-set
        systems then fall back to a truncated least squares solve.
    rhs : ndarray, shape (k, r) or (k,)
        ``A^T B``.
    x0 : ndarray, shape (k, r) or (k,), optional
        Non-negative warm start, e.g. the previous iterate of an alternating NNLS loop.
        Only its sign pattern is used: the initial passive set is ``x0 > 0``.  Without it
        the solver starts from ``X = 0`` (everything active).
    max_iter : int, optional
        Maximum number of block pivoting iterations (default ``max(5 * k, 50)``).  Columns
        still not optimal after that are finished with SciPy's Lawson-Hanson active-set
        solver on an equivalent ``k``-row problem, so the result is always optimal.

    Returns
    -------
    X : ndarray, shape (k, r) or (k,)
        The non-negative minimiser, with the floating dtype of ``rhs`` (``float64`` for
        integer input).  Computations are carried out in ``float64``.

    Raises
    ------
    ValueError
        If the shapes are inconsistent or the inputs are not finite.

    Notes
    -----
    The optimality (KKT) conditions are ``X >= 0``, ``Y = gram @ X - rhs >= 0`` and
    ``X * Y = 0``.  Each iteration fixes ``X = 0`` on the active set, solves the
    unconstrained problem on the passive set ``F`` (``gram[F, F] X_F = rhs_F``), and then
    exchanges every infeasible variable (``X_i < 0`` with ``i`` passive or ``Y_i < 0``
    with ``i`` active) between the two sets.  If the number of infeasible variables of a
    column fails to decrease for ``p = 3`` consecutive full exchanges, only the infeasible
    variable with the largest index is exchanged until the count drops again; this backup
    rule guarantees finite termination.  Internally the problem is rescaled to a Gram matrix
    with unit diagonal, which leaves the solution set unchanged and makes the tolerances
    scale invariant.

    References
    ----------
    .. [1] J. Kim and H. Park, "Fast nonnegative matrix factorization: an active-set-like
       method and comparisons", SIAM J. Sci. Comput. 33(6), 3261-3281 (2011).
       :doi:`10.1137/110821172`

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.random((50, 4)), rng.random((50, 3))
    >>> X = nnls_bpp(A.T @ A, A.T @ B)
    >>> X.shape, bool((X >= 0).all())
    ((4, 3), True)
    """
    gram_arr = np.asarray(gram)
    rhs_arr = np.asarray(rhs)
    if gram_arr.ndim != 2 or gram_arr.shape[0] != gram_arr.shape[1]:
        raise ValueError(f"gram must be a square 2-D array, got shape {gram_arr.shape}")
    k = gram_arr.shape[0]
    vector = rhs_arr.ndim == 1
    if rhs_arr.ndim not in (1, 2) or rhs_arr.shape[0] != k:
        raise ValueError(f"rhs must have shape ({k}, r) or ({k},), got {rhs_arr.shape}")
    out_dtype = rhs_arr.dtype if np.issubdtype(rhs_arr.dtype, np.floating) else np.float64

    G = np.array(gram_arr, dtype=np.float64)
    R = np.array(rhs_arr, dtype=np.float64)
    if vector:
        R = R[:, None]
    r = R.shape[1]
    if not (np.isfinite(G).all() and np.isfinite(R).all()):
        raise ValueError("gram and rhs must be finite")
    passive: np.ndarray
    if x0 is None:
        passive = np.zeros((k, r), dtype=bool)
    else:
        x0_arr = np.asarray(x0)
        if x0_arr.shape != rhs_arr.shape:
            raise ValueError(f"x0 must have the shape of rhs {rhs_arr.shape}, got {x0_arr.shape}")
        passive = x0_arr > 0
        if vector:
            passive = passive[:, None]
    if max_iter is None:
        max_iter = max(5 * k, 50)
    if k == 0 or r == 0:
        return np.zeros(rhs_arr.shape, dtype=out_dtype)

    # Jacobi scaling: X = S Z with S = diag(gram)^(-1/2).  Variables with a zero (or, for
    # an invalid input, negative) diagonal have a zero column in A and are pinned to zero.
    diag = np.diag(G).copy()
    usable = diag > 0
    scale = np.zeros(k)
    scale[usable] = 1.0 / np.sqrt(diag[usable])
    Gs = G * scale[:, None] * scale[None, :]
    Gs = 0.5 * (Gs + Gs.T)
    np.fill_diagonal(Gs, np.where(usable, 1.0, 0.0))
    Rs = R * scale[:, None]
    passive &= usable[:, None]

    if compiled:
        Z, status = _kernels.nnls_columns(Gs, Rs, passive, usable, max_iter)
        # Columns the compiled loop hands back (a singular passive system, or
        # max_iter reached) are solved again from the start by the reference.
        redo = np.flatnonzero(status)
        if redo.size:
            Z[:, redo] = _bpp(Gs, Rs[:, redo], passive[:, redo], usable, max_iter)
    else:
        Z = _bpp(Gs, Rs, passive, usable, max_iter)

    # Passive values within rounding of zero may be slightly negative.
    np.maximum(Z, 0.0, out=Z)
    X = Z * scale[:, None]
    if vector:
        X = X[:, 0]
    return X.astype(out_dtype, copy=False)



def _bpp(Gs: np.ndarray, Rs: np.ndarray, passive: np.ndarray, usable: np.ndarray,
         max_iter: int) -> np.ndarray:
    """Block principal pivoting on the Jacobi-scaled problem: the NumPy reference.

    ``passive`` (k × r, bool) is the initial passive set and is updated in place.
    Returns the scaled solution ``Z`` (before clipping and unscaling).
    """
    k, r = Rs.shape
    Z = np.zeros((k, r))
    Y = -Rs
    if passive.any():
        start = np.flatnonzero(passive.any(axis=0))
        Z[:, start], Y[:, start] = _solve_passive(Gs, Rs[:, start], passive[:, start])

    # Per-column state of the exchange rules: alpha = remaining full exchanges without
    # improvement, beta = smallest number of infeasible variables seen so far.
    alpha = np.full(r, _FULL_EXCHANGE_BUDGET, dtype=np.int64)
    beta = np.full(r, k + 1, dtype=np.int64)
    rhs_scale = np.abs(Rs).max(axis=0)
    tol_factor = _FEAS_TOL_FACTOR * k * np.finfo(np.float64).eps

    cols = np.arange(r)
    n_iter = 0
    while True:
        sel = slice(None) if cols.size == r else cols  # avoid gathers while all are active
        Fc = passive[:, sel]
        Zc = Z[:, sel]
        Yc = Y[:, sel]
        tol_z = tol_factor * np.abs(Zc).max(axis=0)
        tol_y = tol_factor * (np.abs(Zc).sum(axis=0) + rhs_scale[sel])
        infeasible = np.where(Fc, Zc < -tol_z, Yc < -tol_y)
        infeasible &= usable[:, None]
        n_infeasible = infeasible.sum(axis=0)
        not_opt = n_infeasible > 0
        cols = cols[not_opt]
        if cols.size == 0:
            break
        if n_iter >= max_iter:
            Z[:, cols] = _lawson_hanson_fallback(Gs, Rs[:, cols], usable)
            break
        n_iter += 1

        exchange, alpha[cols], beta[cols] = _exchange_rule(
            infeasible[:, not_opt], alpha[cols], beta[cols]
        )
        Fc = passive[:, cols] ^ exchange
        passive[:, cols] = Fc
        Z[:, cols], Y[:, cols] = _solve_passive(Gs, Rs[:, cols], Fc)
    return Z


def _exchange_rule(
    infeasible: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the full exchange rule with the backup rule of Kim and Park.

    Parameters
    ----------
    infeasible : ndarray of bool, shape (k, n)
        Infeasible variables of ``n`` columns, each with at least one.
    alpha, beta : ndarray of int, shape (n,)
        Remaining full exchanges allowed without improvement, and the smallest number of
        infeasible variables seen so far, per column.

    Returns
    -------
    exchange : ndarray of bool, shape (k, n)
        Variables to move between the passive and the active set.
    alpha, beta : ndarray of int, shape (n,)
        Updated counters.
    """
    k = infeasible.shape[0]
    n_infeasible = infeasible.sum(axis=0)
    improved = n_infeasible < beta
    beta = np.where(improved, n_infeasible, beta)
    alpha = np.where(improved, _FULL_EXCHANGE_BUDGET, alpha)
    full = improved | (alpha >= 1)
    alpha = np.where(full & ~improved, alpha - 1, alpha)
    exchange = infeasible.copy()
    single = ~full
    if single.any():
        # Backup rule: exchange only the infeasible variable with the largest index.
        last = k - 1 - np.argmax(infeasible[::-1, single], axis=0)
        exchange[:, single] = np.arange(k)[:, None] == last[None, :]
    return exchange, alpha, beta


def _solve_passive(G: np.ndarray, R: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve the unconstrained problems on the passive sets.

    For every column ``j``: ``Z[F_j, j] = G[F_j, F_j]^{-1} R[F_j, j]``, ``Z[~F_j, j] = 0``.
    Returns ``Z`` and the gradient ``Y = G Z - R`` with ``Y[F] = 0``.  ``G`` must have a
    unit diagonal on every variable that can be passive.
    """
    k, n = R.shape
    Z = np.zeros((k, n))
    nonempty = np.flatnonzero(F.any(axis=0))
    if nonempty.size:
        inverse, counts = _group_columns(F[:, nonempty])
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(counts)))
        sizes = F[:, nonempty].sum(axis=0)
        group_size = np.zeros(counts.size)
        group_size[inverse] = sizes
        batch_group = counts * (1.0 + group_size**3 / _BATCH_CUBIC) < _GROUP_COST
        small = batch_group[inverse]
        large_groups = np.flatnonzero(~batch_group)
        for g in large_groups:
            idx = nonempty[order[bounds[g] : bounds[g + 1]]]
            _solve_group(G, R, F, Z, idx)
        if small.any():
            _solve_batched(G, R, F, Z, nonempty[small])
    Y = G @ Z
    Y -= R
    Y[F] = 0.0
    return Z, Y


def _group_columns(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the columns of a boolean ``(k, n)`` array by their distinct patterns.

    Returns ``inverse`` (group label of each column) and ``counts`` (size of each group).
    """
    n = F.shape[1]
    packed = np.packbits(F, axis=0)  # (ceil(k / 8), n) uint8
    n_bytes = packed.shape[0]
    n_words = -(-n_bytes // 8)
    buf = np.zeros((n, 8 * n_words), dtype=np.uint8)
    buf[:, :n_bytes] = packed.T
    keys = buf.view(np.uint64)  # (n, n_words)
    if n_words == 1:
        _, inverse, counts = np.unique(keys[:, 0], return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def _solve_group(
    G: np.ndarray, R: np.ndarray, F: np.ndarray, Z: np.ndarray, idx: np.ndarray
) -> None:
    """Solve the columns ``idx`` (all with the same passive set) into ``Z`` in place."""
    f = np.flatnonzero(F[:, idx[0]])
    Gff = G[np.ix_(f, f)]
    Rf = R[np.ix_(f, idx)]
    Z[np.ix_(f, idx)] = _spd_solve(Gff, Rf)


def _spd_solve(Gff: np.ndarray, Rf: np.ndarray) -> np.ndarray:
    """Solve ``Gff X = Rf`` for a unit-diagonal PSD ``Gff``, robust to singularity."""
    try:
        c, lower = scipy.linalg.cho_factor(Gff, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        singular = True
    else:
        singular = bool(np.min(np.diag(c)) ** 2 < _SINGULAR_RTOL)
    if not singular:
        return np.asarray(scipy.linalg.cho_solve((c, lower), Rf, check_finite=False))
    # Linearly dependent passive columns: minimum-norm least squares solution with the
    # numerically zero directions truncated.
    sol, *_ = np.linalg.lstsq(Gff, Rf, rcond=_SINGULAR_RTOL)
    return np.asarray(sol)


def _solve_batched(
    G: np.ndarray, R: np.ndarray, F: np.ndarray, Z: np.ndarray, cols: np.ndarray
) -> None:
    """Solve the columns ``cols`` (arbitrary passive sets) into ``Z`` in place.

    Columns are bucketed by the size ``m`` of their passive set; within a bucket the
    ``m x m`` passive Gram blocks are gathered into a stack and solved by a Cholesky
    factorisation vectorised across columns.  Columns whose passive Gram block is
    numerically singular are re-solved group by group with the least squares fallback.
    """
    Fc = F[:, cols]
    sizes = Fc.sum(axis=0)
    # Row indices of the passive variables of each column, in increasing order, first.
    passive_rows = np.argsort(~Fc, axis=0, kind="stable")
    by_size = np.argsort(sizes, kind="stable")
    size_counts = np.bincount(sizes)
    bounds = np.concatenate(([0], np.cumsum(size_counts)))
    bad_cols: list[np.ndarray] = []
    for m in np.flatnonzero(size_counts).tolist():
        if m == 0:
            continue
        members = by_size[bounds[m] : bounds[m + 1]]
        chunk = max(1, _BATCH_MAX_ELEMS // (m * m))
        for start in range(0, members.size, chunk):
            sub = members[start : start + chunk]
            P = passive_rows[:m, sub]  # (m, n)
            sel = cols[sub]
            M = G[P[:, None, :], P[None, :, :]]  # (m, m, n)
            b = R[P, sel[None, :]]
            x, bad = _batched_cholesky_solve(M, b)
            good = ~bad
            Z[P[:, good], sel[None, good]] = x[:, good]
            if bad.any():
                bad_cols.append(sel[bad])
    if bad_cols:
        redo = np.concatenate(bad_cols)
        inverse, counts = _group_columns(F[:, redo])
        order = np.argsort(inverse, kind="stable")
        group_bounds = np.concatenate(([0], np.cumsum(counts)))
        for g in range(counts.size):
            _solve_group(G, R, F, Z, redo[order[group_bounds[g] : group_bounds[g + 1]]])


def _batched_cholesky_solve(M: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve the stacked unit-diagonal PSD systems ``M[:, :, i] x[:, i] = b[:, i]``.

    ``M`` has shape ``(m, m, n)`` (the stacking axis last, so that every operation is a
    contiguous vector operation over the ``n`` systems) and is overwritten.  Returns ``x``
    with shape ``(m, n)`` and a boolean ``bad`` of shape ``(n,)`` flagging the systems
    found numerically singular (their ``x`` is meaningless but finite).
    """
    m, _, n = M.shape
    y = np.array(b, dtype=np.float64)
    piv = np.empty((m, n))
    bad = np.zeros(n, dtype=bool)
    tmp = np.empty((max(m - 1, 0), max(m - 1, 0), n))
    # Right-looking Cholesky M = L L^T (L kept in the lower triangle of M), with the
    # forward substitution L y = b done on the fly.
    for j in range(m):
        d = M[j, j]
        tiny = d < _SINGULAR_RTOL
        bad |= tiny
        ljj = np.sqrt(np.where(tiny, 1.0, d))
        piv[j] = ljj
        y[j] /= ljj
        if j + 1 < m:
            col = M[j + 1 :, j]
            col /= ljj
            y[j + 1 :] -= col * y[j]
            t = tmp[: m - j - 1, : m - j - 1]
            np.multiply(col[:, None, :], col[None, :, :], out=t)
            M[j + 1 :, j + 1 :] -= t
    # Back substitution L^T x = y.
    x = y
    for j in range(m - 1, -1, -1):
        if j + 1 < m:
            x[j] -= np.einsum("in,in->n", M[j + 1 :, j], x[j + 1 :])
        x[j] /= piv[j]
    return x, bad


def _lawson_hanson_fallback(G: np.ndarray, R: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Solve the given columns one by one with :func:`scipy.optimize.nnls`.

    Only reached for columns on which block pivoting hit ``max_iter``.  The problem is
    rewritten with a ``k``-row factor ``C`` of ``G`` (``C^T C = G``, from an eigendecomposition
    so that singular ``G`` is fine) and ``d`` with ``C^T d = R``.
    """
    from scipy.optimize import nnls  # rarely needed; slow to import

    k, n = R.shape
    Z = np.zeros((k, n))
    u = np.flatnonzero(usable)
    if u.size == 0:
        return Z
    w, V = np.linalg.eigh(G[np.ix_(u, u)])
    keep = w > _SINGULAR_RTOL * max(float(w.max()), 1.0)
    sw = np.sqrt(w[keep])
    C = sw[:, None] * V[:, keep].T
    D = (V[:, keep].T @ R[u]) / sw[:, None]
    for j in range(n):
        Z[u, j] = nnls(C, D[:, j])[0]
    return Z
