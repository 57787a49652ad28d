"""The compiled per-row HALS kernel of masked fits against its NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from dnmf._solvers._masked import (
    Observed,
    hals_rows,
    hals_rows_packed,
    pattern_grams,
    unpack,
)


def _problem(n, m, k, observed, seed, dead=()):
    rng = np.random.default_rng(seed)
    H = rng.random((k, m))
    for j in dead:
        H[j] = 0.0  # G[j, j] = 0: a coordinate the sweeps must leave alone
    V = rng.random((n, k)) @ H + 0.01 * rng.random((n, m))
    mask = rng.random((n, m)) < observed
    if n:
        mask[0] = False  # a row with nothing observed: G = 0, P = 0
    if n > 3:
        mask[3] = mask[2]  # rows sharing a pattern
    obs = Observed(np.where(mask, V, 0.0), mask)
    packed = pattern_grams(obs, H)
    P = np.asarray(obs.values) @ H.T
    X = rng.random((n, k))
    return X, P, packed


@pytest.mark.parametrize(("n", "m", "k", "observed", "l1", "l2", "sweeps", "dead"), [
    (60, 40, 5, 0.5, 0.0, 0.0, 1, ()),
    (60, 40, 5, 0.3, 0.0, 0.0, 20, ()),
    (50, 30, 8, 0.6, 0.05, 0.1, 12, (2,)),
    (40, 25, 1, 0.4, 0.0, 0.0, 5, ()),
    (30, 60, 12, 0.2, 0.2, 0.0, 50, (0, 11)),
    (0, 10, 3, 0.5, 0.0, 0.0, 3, ()),
])
def test_compiled_hals_rows_equal_the_numpy_reference(n, m, k, observed, l1, l2, sweeps,
                                                      dead):
    X, P, packed = _problem(n, m, k, observed, seed=n + k, dead=dead)
    ref = hals_rows(X, P, unpack(packed, k), l1, l2, sweeps)
    out = hals_rows_packed(X, P, packed, l1, l2, sweeps)
    assert out.shape == ref.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max(
        initial=0.0)))
    assert (out >= 0).all()
    if n:
        assert not np.array_equal(out, X)  # the sweeps did something
    if n and l2 == 0:
        # nothing observed in row 0, and the zero rows of H: G[j, j] = 0, left alone
        np.testing.assert_array_equal(out[0], X[0])
        for j in dead:
            np.testing.assert_array_equal(out[:, j], X[:, j])
    X32 = X.astype(np.float32)
    np.testing.assert_allclose(hals_rows_packed(X32, P, packed, l1, l2, sweeps),
                               hals_rows(X32, P, unpack(packed, k), l1, l2, sweeps),
                               rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max(initial=0.0)))


def test_masked_fits_with_either_kernels_agree(monkeypatch):
    import dnmf

    rng = np.random.default_rng(5)
    V = rng.random((300, 8)) @ rng.random((8, 120))
    V[rng.random(V.shape) < 0.4] = np.nan  # 60 % observed: per-row Grams
    fits = {}
    for mode in ("numpy", "numba"):
        monkeypatch.setenv("DNMF_KERNELS", mode)
        est = dnmf.NMF(6, solver="hals", missing="nan", init="random", random_state=0,
                       max_iter=25, tol=0.0)
        W = est.fit_transform(V)
        fits[mode] = (W, est.components_, est.loss_history_)
    (W0, H0, l0), (W1, H1, l1) = fits["numpy"], fits["numba"]
    np.testing.assert_allclose(W1, W0, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(H1, H0, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(l1, l0, rtol=1e-10)
