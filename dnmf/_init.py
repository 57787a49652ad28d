"""Initial W and H, computed out-of-core.

``random`` and the NNDSVD family follow scikit-learn's definitions. W is produced
panel by panel where the panel lives; its random numbers come from fixed blocks of
rows seeded by ``(seed, block)``, so W's start does not depend on the scheduler or on
how V is split into panels. The SVD NNDSVD needs is a randomized range finder whose
passes read each panel once (``Vᵀ·(V·Q)`` per panel).

References
----------
Boutsidis, C. and Gallopoulos, E. (2008). SVD based initialization: A head start for
nonnegative matrix factorization. Pattern Recognition 41(4), 1350–1362.
doi:10.1016/j.patcog.2007.09.010
Halko, N., Martinsson, P.-G. and Tropp, J. A. (2011). Finding structure with
randomness. SIAM Review 53(2), 217–288. doi:10.1137/090771806
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ._source import load_panel

__all__ = ["RNG_BLOCK_ROWS", "random_H", "random_rows", "range_finder_task"]

#: Height of the row blocks that each get their own random stream.
RNG_BLOCK_ROWS = 4096

#: Stream ids under the run's seed, so different uses never share numbers.
_STREAM_H, _STREAM_W, _STREAM_SVD, _STREAM_W_FILL, _STREAM_H_FILL = range(5)


def random_rows(seed: int, stream: int, start: int, stop: int, k: int) -> np.ndarray:
    """Standard normal rows ``start:stop`` of an (∞ × k) matrix, block-seeded."""
    first, last = start // RNG_BLOCK_ROWS, (stop - 1) // RNG_BLOCK_ROWS
    blocks = [
        np.random.default_rng([seed, stream, b]).standard_normal((RNG_BLOCK_ROWS, k))
        for b in range(first, last + 1)
    ]
    rows = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    offset = first * RNG_BLOCK_ROWS
    return rows[start - offset : stop - offset]


def random_H(seed: int, k: int, m: int, avg: float, dtype: np.dtype) -> np.ndarray:
    """scikit-learn's random H: ``avg·|N(0, 1)|``."""
    rng = np.random.default_rng([seed, _STREAM_H])
    return np.abs(avg * rng.standard_normal((k, m))).astype(dtype)


def random_W_task(start: int, stop: int, k: int, avg: float, seed: int, dtype: str) -> np.ndarray:
    """scikit-learn's random W, rows ``start:stop``."""
    return np.abs(avg * random_rows(seed, _STREAM_W, start, stop, k)).astype(dtype)


def range_finder_task(v_ref: Any, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One panel's share of ``Vᵀ·V·Q`` and of ``(V·Q)ᵀ·(V·Q)``, from one read."""
    V = load_panel(v_ref)
    Y = np.asarray(V @ Q.astype(V.dtype, copy=False))
    Z = np.asarray(V.T @ Y).astype(np.float64)
    return Z, (Y.T @ Y).astype(np.float64)


def svd_sketch(seed: int, m: int, k: int, n_oversamples: int | None = None) -> np.ndarray:
    """The random start of the range finder, orthonormalised (m × (k + p)).

    ``p`` defaults to ``max(10, k)``: on noisy, very sparse V a sketch only ten
    columns wider than k leaves the trailing singular vectors inaccurate, and
    NNDSVD then starts from a worse point than scikit-learn's (measured: 0.5%
    higher loss at the start and a worse stationary point for HALS). The passes
    read V once each whatever the width, so a wider sketch costs little.
    """
    rng = np.random.default_rng([seed, _STREAM_SVD])
    p = max(10, k) if n_oversamples is None else n_oversamples
    width = min(m, k + p)
    Q, _ = np.linalg.qr(rng.standard_normal((m, width)))
    return Q


def svd_from_gram(Q: np.ndarray, C: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k singular values and right vectors of V from ``C = (VQ)ᵀ(VQ)``.

    Signs are fixed so the largest entry of each right vector is positive, which
    depends only on V, not on how it was split.
    """
    evals, evecs = scipy.linalg.eigh(C)
    order = np.argsort(evals)[::-1][:k]
    S = np.sqrt(np.maximum(evals[order], 0.0))
    Vt = (Q @ evecs[:, order]).T
    signs = np.sign(Vt[np.arange(Vt.shape[0]), np.argmax(np.abs(Vt), axis=1)])
    signs[signs == 0] = 1.0
    return S, Vt * signs[:, np.newaxis]


def nndsvd_U_task(v_ref: Any, proj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A panel of U = V·Vᵀ_k / S, and the squared norms of its positive/negative parts."""
    V = load_panel(v_ref)
    U = np.asarray(V @ proj.astype(V.dtype, copy=False)).astype(np.float64)
    pos = np.maximum(U, 0.0)
    neg = np.minimum(U, 0.0)
    norms = np.concatenate([np.einsum("ij,ij->j", pos, pos), np.einsum("ij,ij->j", neg, neg)])
    return U, norms


def nndsvd_H(
    S: np.ndarray, Vt: np.ndarray, x_norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NNDSVD's H, and per component the sign choice and scale applied to U's columns.

    Returns ``H``, ``use_pos`` (bool per component: take U's positive part) and
    ``scale`` (multiplier of the chosen part of U's column).
    """
    k = S.shape[0]
    H = np.zeros_like(Vt)
    use_pos = np.ones(k, dtype=bool)
    scale = np.zeros(k)
    x_p_nrm = np.sqrt(x_norms[:k])
    x_n_nrm = np.sqrt(x_norms[k:])
    for j in range(k):
        y = Vt[j]
        if j == 0:
            # The leading singular pair of a non-negative matrix is non-negative.
            H[0] = np.sqrt(S[0]) * np.abs(y)
            use_pos[0] = True
            scale[0] = np.sqrt(S[0])
            continue
        y_p, y_n = np.maximum(y, 0.0), np.abs(np.minimum(y, 0.0))
        y_p_nrm, y_n_nrm = np.linalg.norm(y_p), np.linalg.norm(y_n)
        m_p, m_n = x_p_nrm[j] * y_p_nrm, x_n_nrm[j] * y_n_nrm
        if m_p > m_n:
            u_nrm, v, sigma, use_pos[j] = x_p_nrm[j], y_p / y_p_nrm, m_p, True
        else:
            u_nrm, v, sigma, use_pos[j] = x_n_nrm[j], y_n / max(y_n_nrm, 1e-300), m_n, False
        lbd = np.sqrt(S[j] * sigma)
        H[j] = lbd * v
        scale[j] = lbd / u_nrm if u_nrm > 0 else 0.0
    return H, use_pos, scale


def nndsvd_W_task(
    U: np.ndarray,
    start: int,
    use_pos: np.ndarray,
    scale: np.ndarray,
    fill: str,
    avg: float,
    seed: int,
    dtype: str,
) -> np.ndarray:
    """A panel of NNDSVD's W from its panel of U, with zeros filled per ``fill``."""
    W = np.where(use_pos, np.maximum(U, 0.0), np.abs(np.minimum(U, 0.0)))
    # Column 0 uses |U| (sign-fixed leading vector).
    W[:, 0] = np.abs(U[:, 0])
    W *= scale
    W[W < 1e-6] = 0.0
    return fill_zeros(W, fill, avg, seed, _STREAM_W_FILL, start).astype(dtype)


def fill_zeros(
    X: np.ndarray, fill: str, avg: float, seed: int, stream: int, start: int
) -> np.ndarray:
    """NNDSVDa (zeros → mean of V) and NNDSVDar (zeros → small random values)."""
    zero = X == 0
    if fill == "nndsvda":
        X[zero] = avg
    elif fill == "nndsvdar":
        noise = random_rows(seed, stream, start, start + X.shape[0], X.shape[1])
        X[zero] = np.abs(avg * noise[zero] / 100)
    return X


def fill_H(H: np.ndarray, fill: str, avg: float, seed: int) -> np.ndarray:
    """Zero filling of NNDSVD's H (see :func:`fill_zeros`)."""
    H[H < 1e-6] = 0.0
    return fill_zeros(H.T.copy(), fill, avg, seed, _STREAM_H_FILL, 0).T.copy()
