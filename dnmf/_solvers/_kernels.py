"""Compiled inner loops (numba), beside the NumPy references they must agree with.

Python loops dominate a few kernels: the HALS sweeps (k small vector operations per
sweep, up to hundreds of sweeps per H-step) and the KL quotient at the stored
entries of a sparse V. KL's pass is elementwise work between products: compiled,
it runs block of rows by block of rows (:func:`kl_dense`, :func:`kl_csr`), so the
panel-sized quotients never go to memory and the log of the loss vectorises. Each has
a NumPy reference in the solver's own module; the compiled version does the same
arithmetic in loops, and the tests compare the two (to 1e-10).

Which one runs is decided once per fit, from the environment and V's shape only
(:func:`enabled`), never from what this process happens to have loaded, so a run
resumed in another process, or a panel recomputed on another worker, takes the same
path:

* ``DNMF_KERNELS=numpy``: always the NumPy references; ``DNMF_KERNELS=numba``: always
  the compiled kernels (an error if numba cannot be imported);
* unset (``auto``): compiled when numba imports, except for tiny problems
  (``(n + m)·k < TINY``), where loading numba (about half a second per process) costs
  more than the whole fit in NumPy; ALS's NNLS is compiled at every size.

numba is imported on first use, not with dnmf. Compiled code is cached on disk
(``cache=True``), so only the first process after an install pays the compilation
(about a second per kernel).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["TINY", "choice", "enabled", "hals_step", "kl_csr", "kl_dense", "nnls_columns",
           "relaxed_step", "wh_at_csr"]

#: Below this (n + m)·k the NumPy references run in ``auto`` mode.
TINY = 1000

_compiled: Any = None
_import_error: Exception | None = None


def choice() -> str:
    """The ``DNMF_KERNELS`` setting: "auto", "numba" or "numpy"."""
    value = os.environ.get("DNMF_KERNELS")
    if value is None:
        return "auto"
    value = value.strip().lower() or "auto"
    if value not in ("auto", "numba", "numpy"):
        from ..errors import InvalidParameterError

        raise InvalidParameterError(
            f"DNMF_KERNELS={value!r} is not one of 'auto', 'numba', 'numpy': unset it, or "
            f"set DNMF_KERNELS=numpy to use the pure-NumPy kernels."
        )
    return value


#: :func:`enabled`'s answers, by (DNMF_KERNELS as set, n, m, k, tiny): solvers ask once
#: or twice per pass, and on small data the full test was a visible share of one.
_ENABLED: dict[tuple[Any, ...], bool] = {}


def enabled(shape: tuple[int, int], k: int, tiny: int = TINY) -> bool:
    """Whether a fit of V of ``shape`` with ``k`` components uses the compiled kernels.

    ``tiny`` is the solver's own threshold in ``auto`` mode (ALS passes 0: its NumPy
    NNLS loops over columns in Python, slower than loading numba at every size)."""
    key = (os.environ.get("DNMF_KERNELS"), shape[0], shape[1], k, tiny)
    known = _ENABLED.get(key)
    if known is None:
        known = _enabled(shape, k, tiny)
        if len(_ENABLED) < 1024:
            _ENABLED[key] = known
    return known


def _enabled(shape: tuple[int, int], k: int, tiny: int) -> bool:
    mode = choice()
    if mode == "numpy":
        return False
    if mode == "auto" and (shape[0] + shape[1]) * k < tiny:
        return False
    if _load() is None:
        if mode == "numba":
            from ..errors import InvalidParameterError

            raise InvalidParameterError(
                f"DNMF_KERNELS=numba, but numba cannot be imported ({_import_error}): "
                f"pip install numba, or unset DNMF_KERNELS to fall back to NumPy."
            )
        return False
    return True


def _load() -> Any:
    """The module of compiled kernels (:mod:`._compiled`, importing numba), or None."""
    global _compiled, _import_error
    if _compiled is None and _import_error is None:
        try:
            from . import _compiled as compiled
        except ImportError as exc:  # numba is a dependency, but may be missing
            _import_error = exc
            return None
        _compiled = compiled
    return _compiled


#: Entries of a hold-out below which the NumPy hash runs (loading numba costs more).
HASH_TINY = 1 << 18


def hash_enabled(entries: int) -> bool:
    """Whether the hold-out hash of ``entries`` entries runs compiled (the
    ``DNMF_KERNELS`` setting as for the solvers; NumPy below :data:`HASH_TINY`)."""
    return enabled((entries, 0), 1, tiny=HASH_TINY)


def heldout_rows(row_keys: np.ndarray, threshold: np.uint64, out: np.ndarray) -> None:
    """``out`` (bool, len(row_keys) × m) = which entries the hold-out hash holds out."""
    kernels = _load()
    assert kernels is not None
    kernels.heldout_rows(np.ascontiguousarray(row_keys, dtype=np.uint64), np.uint64(threshold),
                         out)


def heldout_pairs(seed_key: np.uint64, rows: np.ndarray, cols: np.ndarray,
                  threshold: np.uint64, out: np.ndarray) -> None:
    """``out[e]`` = whether entry (rows[e], cols[e]) is held out."""
    kernels = _load()
    assert kernels is not None
    kernels.heldout_pairs(np.uint64(seed_key), np.ascontiguousarray(rows, dtype=np.uint64),
                          np.ascontiguousarray(cols, dtype=np.uint64), np.uint64(threshold),
                          out)


def hals_step(X: np.ndarray, P: np.ndarray, G: np.ndarray, l1: float, l2: float,
              max_sweeps: int, delta: float, floor: float, skip_dead: bool) -> np.ndarray:
    """HALS sweeps on the rows of ``X`` (n × k), each row with its own stopping rule.

    ``P`` (n × k) holds the right-hand sides and ``G`` (k × k) the Gram. Scaled as the
    reference does (:meth:`dnmf._solvers._hals.HALS.step`): one sweep sets, for each
    component j with ``G[j, j] + l2 > 0``, ``X[i, j] = max(floor, (P[i, j] − l1)/d_j −
    Σ_{r≠j} (G[j, r]/d_j)·X[i, r])``, ``d_j = G[j, j] + l2``; a component with
    ``d_j ≤ 0`` is skipped (``skip_dead``) or set to ``floor``. A row sweeps again while
    its change (squared norm over a sweep) exceeds ``delta²`` times its first sweep's,
    at most ``max_sweeps`` times. Returns a new float64 array.
    """
    kernels = _load()
    assert kernels is not None
    return kernels.hals_step(np.ascontiguousarray(X, dtype=np.float64),
                             np.ascontiguousarray(P, dtype=np.float64),
                             np.ascontiguousarray(G, dtype=np.float64), float(l1), float(l2),
                             int(max_sweeps), float(delta) * float(delta), float(floor),
                             bool(skip_dead))


def wh_at_csr(indptr: np.ndarray, indices: np.ndarray, W: np.ndarray, Ht: np.ndarray,
              out: np.ndarray) -> None:
    """``out[e] = W[row(e)] · Ht[indices[e]]``: W·H at the stored entries of a CSR V.

    ``W`` is n × k, ``Ht`` is m × k (H transposed, C order); ``out`` has V's nnz
    entries, in ``V.data``'s order. Reference: :func:`dnmf._solvers._mu._wh_at`.
    """
    kernels = _load()
    assert kernels is not None
    kernels.wh_at_csr(indptr, indices, W, Ht, out)


def nnls_columns(Gs: np.ndarray, Rs: np.ndarray, passive: np.ndarray, usable: np.ndarray,
                 max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Block principal pivoting column by column, on the Jacobi-scaled problem.

    The arithmetic and the exchange rules of :func:`dnmf._solvers._nnls._bpp` (the
    reference), one column at a time with its own Cholesky of the passive block.
    Returns the scaled solution ``Z`` (k × r) and a status per column: 0 solved;
    1 handed back, because a passive system is singular to working precision or
    ``max_iter`` was reached (the reference then solves that column from the start,
    with its least-squares and Lawson-Hanson fallbacks). ``passive`` is not modified.
    """
    from ._nnls import _FEAS_TOL_FACTOR, _FULL_EXCHANGE_BUDGET, _SINGULAR_RTOL

    kernels = _load()
    assert kernels is not None
    k, r = Rs.shape
    Z = np.zeros((k, r))
    status = np.zeros(r, dtype=np.int8)
    kernels.nnls_columns(np.ascontiguousarray(Gs), np.ascontiguousarray(Rs),
                            np.ascontiguousarray(passive), usable, int(max_iter), Z, status,
                            _FEAS_TOL_FACTOR * k * np.finfo(np.float64).eps,
                            _SINGULAR_RTOL, _FULL_EXCHANGE_BUDGET)
    return Z, status


def kl_dense(V: np.ndarray, W: np.ndarray, H: np.ndarray, linear: np.ndarray, l1: float,
             l2: float, omegas: np.ndarray, accelerated: bool,
             eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One KL pass over a dense panel, fused: (W_new, A, sums).

    For blocks of rows of V (``V``, ``W``, ``H`` of one dtype, float32 or float64):
    WH = W·H (BLAS) floored at ``eps``, the quotient V / WH, the loss sums at the
    entries with v > ``eps`` (in float64, a vectorised log), MU's numerator
    (V / WH)·Hᵀ, the W-step (amu's :func:`dnmf._solvers._kl.relaxed_step` over the
    ``omegas`` (a float64 array) if ``accelerated``, else KL-MU's; ``linear`` = the
    row sums of H), then the H-step's A = W_newᵀ·(V / (W_new·H)) from the same block
    of V. No panel-sized temporaries. ``sums`` (float64): Σ v·log(v/wh), Σ v, the
    column sums of W and Σ W², the same of W_new. Reference:
    :meth:`dnmf._solvers._mu.KLMultiplicative.update_panel`.
    """
    kernels = _load()
    assert kernels is not None
    k = W.shape[1]
    W_new = np.empty(W.shape, dtype=V.dtype)
    A = np.empty((k, V.shape[1]), dtype=V.dtype)
    sums = np.empty(2 + 2 * (k + 1))
    kernels.kl_dense(V, W, H, np.ascontiguousarray(H.T), linear, float(l1), float(l2), omegas,
                     bool(accelerated), float(eps), W_new, A, sums)
    return W_new, A, sums


def kl_csr(V: Any, W: np.ndarray, H: np.ndarray, linear: np.ndarray, l1: float, l2: float,
           omegas: np.ndarray, accelerated: bool,
           eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`kl_dense` for a CSR panel ``V``: W·H, the quotients and the loss at the
    stored entries only, block of rows by block of rows (O(nnz·k) work, no nnz-sized
    temporaries); A = W_newᵀ·(V / (W_new·H)) accumulated in float64. Reference:
    :meth:`dnmf._solvers._mu.KLMultiplicative.update_panel`.
    """
    kernels = _load()
    assert kernels is not None
    k = W.shape[1]
    W_new = np.empty(W.shape, dtype=W.dtype)
    At = np.empty((V.shape[1], k))
    sums = np.empty(2 + 2 * (k + 1))
    kernels.kl_csr(V.indptr, V.indices, V.data, W, np.ascontiguousarray(H.T), linear,
                   float(l1), float(l2), omegas, bool(accelerated), float(eps), W_new, At, sums)
    return W_new, At.T, sums


def relaxed_step(X0: np.ndarray, numerator: np.ndarray, linear: np.ndarray, per_row: bool,
                 l1: float, l2: float, omegas: Any, eps: float,
                 floor: float = 0.0) -> np.ndarray:
    """:func:`dnmf._solvers._kl.relaxed_step` in one compiled loop (a new float64
    array); ``linear`` is a vector: per row of ``X0`` (``per_row``) or per column;
    entries below ``floor`` become 0 (the H-step's: scikit-learn's float64 eps; 0:
    none)."""
    kernels = _load()
    assert kernels is not None
    X0 = np.ascontiguousarray(X0, dtype=np.float64)
    out = np.empty_like(X0)
    kernels.relaxed_rows(X0, np.ascontiguousarray(numerator, dtype=np.float64),
                         np.ascontiguousarray(linear, dtype=np.float64), bool(per_row),
                         float(l1), float(l2), np.asarray(omegas, dtype=np.float64),
                         float(eps), float(floor), out)
    return out
