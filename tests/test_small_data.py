"""Small data in memory: no task machinery per iteration, the panel path's answers.

A V under 4 MiB with the local scheduler is one panel: every pass is a direct call
(no Dask graph), and the whole fit holds one BLAS thread. The same data split into
several panels goes through Dask's threads scheduler; the answers agree to rounding
(the panels' sums are added in another order).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dnmf
from dnmf import _backend
from dnmf.testing import planted


def _fit(V, max_iter=30, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dnmf.NMF(6, max_iter=max_iter, tol=0, random_state=0, scheduler="threads",
                         **params)
        W = model.fit_transform(V)
    return model, W


@pytest.mark.parametrize("solver", ["hals", "als", "mu"])
def test_one_panel_fit_matches_the_panel_path(solver):
    V, _, _ = planted(300, 100, 6, seed=7, noise=0.05)
    one, W1 = _fit(V, solver=solver)
    many, W3 = _fit(V, solver=solver, panel_rows=100)
    np.testing.assert_allclose(one.loss_history_, many.loss_history_, rtol=1e-10)
    np.testing.assert_allclose(W1, W3, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(one.components_, many.components_, rtol=1e-7, atol=1e-10)


def test_kl_one_panel_matches_the_panel_path():
    V, _, _ = planted(300, 100, 6, seed=8, noise=0.05)
    one, _ = _fit(V, solver="mu", beta_loss="kullback-leibler")
    many, _ = _fit(V, solver="mu", beta_loss="kullback-leibler", panel_rows=75)
    np.testing.assert_allclose(one.loss_history_, many.loss_history_, rtol=1e-10)


def test_small_fit_builds_no_graph_and_holds_one_blas_thread(monkeypatch):
    graphs = []
    limits = []
    real_get = _backend.dask.threaded.get
    real_limited = _backend._limited

    def counting_get(dsk, keys, **kwargs):
        graphs.append(len(dsk))
        return real_get(dsk, keys, **kwargs)

    def counting_limited(controller, blas):
        limits.append(blas)
        return real_limited(controller, blas)

    monkeypatch.setattr(_backend.dask.threaded, "get", counting_get)
    monkeypatch.setattr(_backend, "_limited", counting_limited)
    V, _, _ = planted(300, 100, 6, seed=9, noise=0.05)
    model, _ = _fit(V)
    assert model.n_iter_ == 30
    assert graphs == []  # every pass was a direct call
    # One BLAS limit for the scan, one for the start, one for the loop, two for the
    # final balancing (a read of W's column maxima, a write); none per pass (30 here).
    assert limits and set(limits) == {1} and len(limits) <= 5
    # A larger V (over 4 MiB) is split and scheduled as before.
    big, _, _ = planted(2700, 200, 6, seed=9, noise=0.05)  # 4.3 MB
    _fit(big, max_iter=2)
    assert graphs


# ------------------------------------------- KL at small sizes: fewer array operations
def _relaxed_step_reference(X0, numerator, linear, l1, l2, omegas=(1.9, 1.5)):
    """amu's step as first written: the docstring evaluated operation by operation."""
    from dnmf._solvers import EPSILON

    linear = np.broadcast_to(linear, X0.shape)
    denominator = linear + l1
    if l2 > 0:
        denominator = denominator + l2 * X0
    denominator = np.where(denominator == 0, EPSILON, denominator)
    rho = numerator / denominator
    out = X0 * rho
    movable = (X0 > 0) & (rho > 0)
    if not movable.any():
        return out
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_rho = np.log(np.where(movable, rho, 1.0))
        chosen = ~movable
        for omega in omegas:
            r = np.exp(omega * log_rho)
            change = (linear + l1) * (r - 1.0) - numerator * omega * log_rho
            if l2 > 0:
                change = change + 0.5 * l2 * X0 * (r * r - 1.0)
            accept = ~chosen & (change <= 0) & np.isfinite(r)
            out = np.where(accept, X0 * r, out)
            chosen |= accept
    return out


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2), (0.3, 0.2)])
def test_relaxed_step_is_bit_for_bit_the_reference(l1, l2):
    from dnmf._solvers._kl import relaxed_step

    rng = np.random.default_rng(3)
    for shape, axis in [((300, 10), 0), ((10, 100), 1)]:
        X0 = rng.random(shape)
        X0[rng.random(shape) < 0.1] = 0.0
        numerator = rng.random(shape) * 3.0
        numerator[rng.random(shape) < 0.05] = 0.0
        numerator[0, 0] = 1e300  # ρ^ω overflows: MU's step there
        linear = rng.random(shape[1 - axis]) + 0.2
        linear[1] = 0.0  # a zero denominator when unpenalised
        linear = linear[np.newaxis, :] if axis == 0 else linear[:, np.newaxis]
        with np.errstate(all="ignore"):
            expected = _relaxed_step_reference(X0, numerator, linear, l1, l2)
            got = relaxed_step(X0, numerator, linear, l1, l2)
        np.testing.assert_array_equal(got, expected)
        assert not np.array_equal(got, X0 * numerator / np.where(linear + l1 == 0, 1, linear + l1))


def test_kl_loss_from_the_ratio_equals_the_masked_sums():
    from dnmf._solvers import EPSILON
    from dnmf._solvers._mu import _kl_pieces, _kl_pieces_from_ratio

    rng = np.random.default_rng(4)
    V = rng.random((120, 70)) * (rng.random((120, 70)) < 0.6)  # exact zeros
    V[3, :5] = EPSILON / 4  # positive entries at or below eps are left out
    W, H = rng.random((120, 5)), rng.random((5, 70))
    for panel in (V, np.abs(V) + 0.5):  # with and without left-out entries
        WH = np.maximum(W @ H, EPSILON)
        expected = _kl_pieces(panel, WH.copy(), W)
        got = _kl_pieces_from_ratio(panel, panel / WH, W)
        for key in ("kl_xlog", "kl_xsum"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-13)
        np.testing.assert_array_equal(got["w_sum0"], expected["w_sum0"])


@pytest.mark.parametrize("solver", ["mu", "amu"])
def test_kl_one_panel_matches_the_panel_path_with_zeros(solver):
    # Exact zeros take the loss's masked branch; amu's steps as well as mu's.
    V, _, _ = planted(300, 100, 6, seed=10, noise=0.05)
    V[V < np.quantile(V, 0.3)] = 0.0
    one, W1 = _fit(V, solver=solver, beta_loss="kullback-leibler")
    many, W3 = _fit(V, solver=solver, beta_loss="kullback-leibler", panel_rows=75)
    np.testing.assert_allclose(one.loss_history_, many.loss_history_, rtol=1e-10)
    np.testing.assert_allclose(W1, W3, rtol=1e-7, atol=1e-10)
    assert np.all(np.diff(one.loss_history_) <= 1e-12 * one.loss_history_[0])
