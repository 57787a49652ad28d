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
    # One BLAS limit for the scan, one for the start, one for the loop; none per pass.
    assert limits and set(limits) == {1} and len(limits) <= 3
    # A larger V (over 4 MiB) is split and scheduled as before.
    big, _, _ = planted(2700, 200, 6, seed=9, noise=0.05)  # 4.3 MB
    _fit(big, max_iter=2)
    assert graphs
