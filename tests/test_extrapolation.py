"""Extrapolation with restarts for HALS and ALS (dnmf/_extrapolation.py).

The fit still reads V once per iteration; its recorded loss never rises, is the exact
loss of the factors returned, and reaches a given loss in fewer iterations than the
plain solver; β follows Ang & Gillis's schedule; the result is deterministic and does
not depend on how V is split into panels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dnmf
from dnmf._extrapolation import ETA, GAMMA, GAMMA_BAR, START_BELOW, Extrapolation
from dnmf.errors import InvalidParameterError
from dnmf.testing import planted


def _fit(V, **params):
    kw = dict(n_components=8, random_state=0, tol=0.0, max_iter=60, scheduler="threads")
    kw.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dnmf.NMF(**kw)
        W = model.fit_transform(V)
    return model, W


def _loss(V, W, H):
    return 0.5 * float(np.linalg.norm(V - W @ H) ** 2)


@pytest.mark.parametrize("solver", ["hals", "als"])
def test_loss_never_rises_and_is_the_loss_of_the_factors_returned(solver):
    V, _, _ = planted(200, 80, 8, seed=1, noise=0.05)
    model, W = _fit(V, solver=solver, extrapolate=True)
    history = np.array(model.loss_history_)
    assert model.n_iter_ == 60 and history.size == 60
    assert np.all(np.diff(history) <= 0.0)
    assert history[-1] == pytest.approx(_loss(V, W, model.components_), rel=1e-10)
    assert W.min() >= 0 and model.components_.min() >= 0


@pytest.mark.parametrize("solver,within", [("hals", 0.7), ("als", 0.5)])
def test_reaches_the_plain_solvers_loss_in_fewer_iterations(solver, within):
    V, _, _ = planted(300, 100, 10, seed=0, noise=0.1)
    plain, _ = _fit(V, n_components=10, solver=solver, extrapolate=False, max_iter=100)
    target = plain.loss_history_[-1]
    fast, _ = _fit(V, n_components=10, solver=solver, extrapolate=True, max_iter=100)
    reached = int(np.argmax(np.array(fast.loss_history_) <= target)) + 1
    assert fast.loss_history_[reached - 1] <= target
    # Measured: hals 100 → 57, als 100 → 24 iterations to the same loss.
    assert reached <= within * 100, reached


def test_auto_by_default_and_auto_is_on_where_available(tmp_path):
    V, _, _ = planted(120, 50, 4, seed=2, noise=0.05)
    for solver in ("hals", "als"):
        default, _ = _fit(V, n_components=4, solver=solver, max_iter=30)
        off, _ = _fit(V, n_components=4, solver=solver, max_iter=30, extrapolate=False)
        auto, _ = _fit(V, n_components=4, solver=solver, max_iter=30, extrapolate="auto")
        on, _ = _fit(V, n_components=4, solver=solver, max_iter=30, extrapolate=True)
        assert dnmf.NMF().extrapolate == "auto"
        assert default.loss_history_ == auto.loss_history_
        assert auto.loss_history_ == on.loss_history_ != off.loss_history_
        # the function form passes it through (default "auto")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for value, model in ((False, off), ("auto", auto)):
                _, H, n_iter = dnmf.non_negative_factorization(
                    V, n_components=4, solver=solver, max_iter=30, tol=0.0,
                    random_state=0, scheduler="threads", extrapolate=value)
                assert n_iter == model.n_iter_
                np.testing.assert_array_equal(H, model.components_)
    # shuffle=True asks for HALS's seeded sweep order, which extrapolated passes do
    # not have: "auto" then runs plain
    sh, _ = _fit(V, n_components=4, max_iter=20, shuffle=True)
    sh_off, _ = _fit(V, n_components=4, max_iter=20, shuffle=True, extrapolate=False)
    assert sh.loss_history_ == sh_off.loss_history_
    # "auto" where it is unavailable: the plain iterations, no error
    mu, _ = _fit(V, n_components=4, solver="mu", max_iter=30, extrapolate="auto")
    mu_off, _ = _fit(V, n_components=4, solver="mu", max_iter=30, extrapolate=False)
    assert mu.loss_history_ == mu_off.loss_history_
    # k >= min(n, m): an exact factorization is a continuum; auto stays plain
    small = V[:, :4]
    a, _ = _fit(small, n_components=4, max_iter=20, extrapolate="auto")
    b, _ = _fit(small, n_components=4, max_iter=20, extrapolate=False)
    assert a.loss_history_ == b.loss_history_


def test_deterministic_and_independent_of_the_panels():
    V, _, _ = planted(300, 90, 6, seed=3, noise=0.05)
    one, W1 = _fit(V, n_components=6, extrapolate=True, max_iter=40)
    again, W2 = _fit(V, n_components=6, extrapolate=True, max_iter=40)
    assert one.loss_history_ == again.loss_history_
    np.testing.assert_array_equal(W1, W2)
    many, W3 = _fit(V, n_components=6, extrapolate=True, max_iter=40, panel_rows=70)
    np.testing.assert_allclose(many.loss_history_, one.loss_history_, rtol=1e-10)
    np.testing.assert_allclose(W3, W1, rtol=1e-7, atol=1e-10)


def test_stopping_rule_and_callback_see_the_recorded_losses():
    V, _, _ = planted(200, 60, 5, seed=4, noise=0.05)
    seen = []
    model, W = _fit(V, n_components=5, extrapolate=True, tol=1e-5, max_iter=500,
                    callback=lambda it, loss: seen.append((it, loss)) and False)
    assert 2 < model.n_iter_ < 500  # converged
    assert [loss for _, loss in seen] == model.loss_history_
    assert [it for it, _ in seen] == list(range(1, model.n_iter_ + 1))
    assert model.loss_history_[-1] == pytest.approx(_loss(V, W, model.components_), rel=1e-10)
    # a callback's stop keeps the iterate it saw
    stopped, W = _fit(V, n_components=5, extrapolate=True, max_iter=500,
                      callback=lambda it, loss: it == 7)
    assert stopped.n_iter_ == 7
    assert stopped.loss_history_[-1] == pytest.approx(_loss(V, W, stopped.components_),
                                                      rel=1e-10)


def test_plain_passes_until_the_loss_falls_slowly_then_extrapolation_starts():
    H = np.ones((2, 3))
    ex = Extrapolation.start("hals", H)
    assert ex.waiting and ex.beta == 0.0
    H1 = np.full((2, 3), 2.0)
    assert ex.judge(10.0, H1)  # the first pass: no decrease to judge by
    np.testing.assert_array_equal(ex.H_y, H1)  # no push
    assert START_BELOW == 0.1
    assert ex.judge(8.0, H1)  # fell by 20 %: still plain
    assert ex.waiting and ex.beta == 0.0 and ex.loss_prev == 8.0
    assert ex.judge(7.5, H1)  # fell by 6.25 %: extrapolation starts
    assert not ex.waiting and (ex.beta, ex.beta_max) == (0.5, 1.0) and ex.restarts == 0
    rose = Extrapolation.start("hals", H)
    assert rose.judge(10.0, H1) and rose.judge(10.5, H1)  # a plain pass is taken as it is
    assert not rose.waiting and rose.loss_prev == 10.5
    # a manifest written before the waiting phase existed restores as not waiting
    scalars = ex.scalars()
    del scalars["waiting"], scalars["plain"]
    old = Extrapolation.restore("hals", H1, H1, scalars)
    assert not old.waiting and not old.plain


def test_a_fit_on_exact_rank_deficient_data_stays_plain():
    # The swimmer (rank 13, k = 17): its loss falls by more than START_BELOW every
    # iteration down to the floor, so "auto" never pushes and gives plain HALS's fit
    # (extrapolating from the first pass: min part cosine 0.35-0.65 over seeds 0-4).
    # (float64: a float32 plain fit switches to exact float64 statistics near its floor,
    # an extrapolating one does not — its float32 fit stops at float32's floor.)
    from dnmf._demo import swimmer

    X = swimmer(np.float64)
    auto, _ = _fit(X, n_components=17, init="random", max_iter=400, tol=1e-6)
    off, _ = _fit(X, n_components=17, init="random", max_iter=400, tol=1e-6,
                  extrapolate=False)
    assert auto.loss_history_ == off.loss_history_
    np.testing.assert_array_equal(auto.components_, off.components_)


def test_ties_at_the_floor_end_extrapolation_and_sparse_copies_agree():
    # Exact data (5 of 10 columns zero, k = 5): the fit reaches its floor within 100
    # iterations; ties there are decided by rounding. A dense V and its sparse copy
    # stop at the floor (objective within rounding of 0) and agree entrywise. Which of
    # two floor iterations (losses ~1e-14 apart, the sums' rounding) ends a fit depends
    # on the BLAS's rounding: the copies may stop one iteration apart (39 and 40 with
    # numpy 2.4's OpenBLAS, together with earlier builds).
    import scipy.sparse as sp

    A = np.abs(np.random.RandomState(42).randn(10, 10))
    A[:, 2 * np.arange(5)] = 0
    dense, Wd = _fit(A, n_components=5, init="random", max_iter=100)
    sparse, Ws = _fit(sp.csr_matrix(A), n_components=5, init="random", max_iter=100)
    assert max(dense.n_iter_, sparse.n_iter_) < 100
    assert abs(dense.n_iter_ - sparse.n_iter_) <= 1
    rounding = 64 * np.finfo(np.float64).eps * 0.5 * (A ** 2).sum()
    assert dense.loss_history_[-1] <= rounding and sparse.loss_history_[-1] <= rounding
    # (an extra floor iteration moves entries by ~3e-8 of the largest: 1e-7 of it)
    np.testing.assert_allclose(Wd, Ws, rtol=1e-7, atol=1e-7 * np.abs(Wd).max())
    np.testing.assert_allclose(dense.components_, sparse.components_, rtol=1e-7,
                               atol=1e-7 * np.abs(dense.components_).max())


def test_beta_schedule_grows_on_decrease_and_restarts_on_increase():
    H = np.ones((2, 3))
    ex = Extrapolation.start("hals", H, wait=False)
    assert (ex.beta, ex.beta_max) == (0.5, 1.0)
    H1 = np.full((2, 3), 2.0)
    assert ex.judge(10.0, H1)
    np.testing.assert_array_equal(ex.H_y, H1 + 0.5 * (H1 - H))  # pushed along the move
    assert ex.beta == pytest.approx(0.5 * GAMMA["hals"])
    assert ex.beta_max == 1.0  # min(1, γ̄·1)
    beta = ex.beta
    assert not ex.judge(11.0, np.zeros((2, 3)))  # the loss rose: restart
    assert ex.restarts == 1 and not ex.from_extrapolated
    np.testing.assert_array_equal(ex.H_y, H1)  # back to the accepted H, no push
    assert ex.beta == pytest.approx(beta / ETA) and ex.beta_max == pytest.approx(0.5)
    assert ex.loss_prev == 10.0
    assert ex.judge(9.0, H1)  # accepted again: grows up to its new ceiling
    assert ex.beta == pytest.approx(min(0.5, beta / ETA * GAMMA["hals"]))
    assert ex.beta_max == pytest.approx(0.5 * GAMMA_BAR["hals"])
    als = Extrapolation.start("als", H)
    assert als.gamma == GAMMA["als"] > GAMMA["hals"]


def test_extrapolate_is_refused_where_it_is_not_available(tmp_path):
    V, _, _ = planted(60, 30, 3, seed=5)
    with pytest.raises(InvalidParameterError, match=r"extrapolate=True.*solver='mu'"):
        dnmf.NMF(3, solver="mu", extrapolate=True).fit(V)
    with pytest.raises(InvalidParameterError, match=r"extrapolate=True.*kullback-leibler"):
        dnmf.NMF(3, solver="mu", beta_loss="kullback-leibler", extrapolate=True).fit(V)
    holes = V.copy()
    holes[0, 0] = np.nan
    with pytest.raises(InvalidParameterError, match=r"extrapolate=True.*missing"):
        dnmf.NMF(3, extrapolate=True, missing="nan").fit(holes)
    with pytest.raises(InvalidParameterError, match=r"extrapolate=True.*shuffle=True"):
        dnmf.NMF(3, extrapolate=True, shuffle=True).fit(V)
    with pytest.raises(InvalidParameterError, match=r"'extrapolate'.*'auto', True or False"):
        dnmf.NMF(3, extrapolate="yes").fit(V)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["hals", "als"])
def test_cluster_gives_the_threads_result(distributed_client, solver):
    # Passes are not queued ahead (each depends on the last verdict); W stays on the
    # workers as (W_n, W_y) pairs, the fit's W is picked there.
    V, _, _ = planted(160, 40, 4, seed=14, noise=0.1)
    kw = dict(n_components=4, solver=solver, extrapolate=True, max_iter=25, panel_rows=40)
    local, W_local = _fit(V, **kw)
    remote, W_remote = _fit(V, **{**kw, "scheduler": distributed_client})
    assert remote.n_iter_ == local.n_iter_ == 25
    np.testing.assert_allclose(remote.loss_history_, local.loss_history_, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(W_remote), W_local, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(remote.components_, local.components_, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("solver,dtype", [("hals", np.float64), ("als", np.float64),
                                          ("hals", np.float32)])
def test_run_store_gives_the_in_memory_fit_and_resumes_bit_for_bit(tmp_path, solver, dtype):
    # The store keeps the pairs (W_n in WP*, W_y in W*), H_y and β's state; a run
    # interrupted anywhere (at a commit or between commits) continues as if it had not
    # been.
    V, _, _ = planted(200, 60, 5, seed=0, noise=0.05)
    V = V.astype(dtype)
    kw = dict(n_components=5, solver=solver, extrapolate=True, max_iter=30, panel_rows=50,
              checkpoint_every=4)
    memory, W_memory = _fit(V, **kw)
    stored, W_stored = _fit(V, out=tmp_path / "whole", **kw)
    assert stored.loss_history_ == memory.loss_history_
    np.testing.assert_array_equal(np.asarray(W_stored), W_memory)
    np.testing.assert_array_equal(stored.components_, memory.components_)
    run = dnmf.open_run(tmp_path / "whole")
    assert run.params["extrapolate"] is True
    assert run.manifest["extrapolation"]["restarts"] >= 1  # the restart path is covered
    for stop_at in (3, 8, 13):  # between commits, at one, after one
        path = tmp_path / f"stopped{stop_at}"

        def interrupt(iteration, loss, stop_at=stop_at):
            if iteration == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _fit(V, out=path, callback=interrupt, **kw)
        assert dnmf.open_run(path).iteration == stop_at - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dnmf.resume(path, X=V)
        again = dnmf.open_run(path)
        assert again.iteration == 30 and again.loss_history == memory.loss_history_
        np.testing.assert_array_equal(np.asarray(again.W), W_memory)
        np.testing.assert_array_equal(again.H, memory.components_)
    # Another extrapolate for the same run is refused, not silently mixed; "auto" (left
    # open) continues a run as it was recorded.
    with pytest.raises(dnmf.errors.IncompatibleRunError, match="extrapolate"):
        _fit(V, out=tmp_path / "whole", **{**kw, "extrapolate": False})
    plain_kw = {**kw, "extrapolate": False, "max_iter": 10}
    _fit(V, out=tmp_path / "plain", **plain_kw)
    more, _ = _fit(V, out=tmp_path / "plain", **{**plain_kw, "extrapolate": "auto",
                                                  "max_iter": 20})
    whole_plain, _ = _fit(V, **{**plain_kw, "max_iter": 20})
    assert more.loss_history_ == whole_plain.loss_history_
    assert "extrapolate" not in dnmf.open_run(tmp_path / "plain").params


def test_a_finished_run_given_more_iterations_goes_on(tmp_path):
    V, _, _ = planted(200, 60, 4, seed=0, noise=0.05)
    kw = dict(n_components=4, extrapolate=True, panel_rows=64)
    first, _ = _fit(V, out=tmp_path / "run", max_iter=3, **kw)
    assert first.n_iter_ == 3
    more, W = _fit(V, out=tmp_path / "run", max_iter=8, **kw)
    longer, W_longer = _fit(V, max_iter=8, **kw)
    assert more.n_iter_ == 8 and more.loss_history_ == longer.loss_history_
    np.testing.assert_array_equal(np.asarray(W), W_longer)
    np.testing.assert_array_equal(more.components_, longer.components_)


def test_zip_run_store_with_extrapolation(tmp_path):
    V, _, _ = planted(120, 40, 4, seed=6, noise=0.05)
    kw = dict(n_components=4, extrapolate=True, max_iter=12, checkpoint_every=5)
    memory, W_memory = _fit(V, **kw)
    stored, _ = _fit(V, out=tmp_path / "run.zip", **kw)
    assert stored.loss_history_ == memory.loss_history_
    run = dnmf.open_run(tmp_path / "run.zip")
    np.testing.assert_array_equal(np.asarray(run.W), W_memory)
