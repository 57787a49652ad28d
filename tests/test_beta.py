"""MU for every real β (scikit-learn's rules): parity, sparse = dense, loss, runs, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf
from dnmf import ConvergenceWarning, InvalidInputError, InvalidParameterError
from dnmf._engine import context_for
from dnmf._solvers import Regularization, get_solver
from dnmf._solvers._beta import beta_gamma, power
from dnmf._source import PanelSource
from dnmf.testing import planted

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import NMF as SkNMF  # noqa: E402
from sklearn.decomposition._nmf import _beta_divergence  # noqa: E402

BETAS = [0.0, 0.5, 1.5, 3.0, -0.5, 2.5]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _start(V, k, seed=0):
    rng = np.random.default_rng(seed)
    avg = np.sqrt(V.mean() / k)
    return avg * rng.random((V.shape[0], k)), avg * rng.random((k, V.shape[1]))


def _positive(n=120, m=60, k=5, seed=1):
    V, _, _ = planted(n, m, k, seed=seed, noise=0.05)
    return V + 0.01


def _with_zeros(n=120, m=60, k=5, seed=1):
    V, _, _ = planted(n, m, k, seed=seed, noise=0.05)
    V[np.random.default_rng(seed).random(V.shape) < 0.3] = 0.0
    return V


def _fit_both(V, beta, W0, H0, max_iter=30, **kw):
    params = dict(solver="mu", beta_loss=beta, init="custom", max_iter=max_iter, tol=0.0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkNMF(W0.shape[1], **params)
        W_ref = ref.fit_transform(V, W=W0.copy(), H=H0.copy())
    ours = dnmf.NMF(W0.shape[1], panel_rows=32, **params)
    W = ours.fit_transform(V, W=W0, H=H0)
    return ours, W, ref, W_ref


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("beta", [*BETAS, "itakura-saito"])
@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_iterates_match_scikit_learn_mu(beta, alpha):
    # Tolerance: 1e-8 relative after 30 iterations (measured: ~3e-15; the products
    # are summed in another order, and D is formed as Q·WH).
    V = _positive()
    W0, H0 = _start(V, 5)
    ours, W, ref, W_ref = _fit_both(V, beta, W0, H0, alpha_W=alpha, l1_ratio=0.5)
    assert ours.n_iter_ == 30
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.components_, ref.components_, rtol=1e-8, atol=1e-12)
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-9)


@pytest.mark.parametrize("beta", [0.5, 1.5, 3.0])
def test_iterates_match_scikit_learn_on_data_with_zeros(beta):
    # Zeros exercise the floors of WH (in Q for beta < 2, in D for beta < 1) and
    # the x > eps rule of the loss.
    V = _with_zeros()
    W0, H0 = _start(V, 5)
    ours, W, ref, W_ref = _fit_both(V, beta, W0, H0)
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.components_, ref.components_, rtol=1e-8, atol=1e-12)
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-9)


def test_small_beta_sets_tiny_entries_to_zero_as_scikit_learn():
    # A rank-2 V fitted with 4 components: MU drives spare entries towards 0, and
    # for beta < 1 scikit-learn sets W, H entries below float64's eps to exactly 0.
    rng = np.random.default_rng(3)
    V = rng.random((40, 2)) @ rng.random((2, 30)) + 1e-3
    W0, H0 = _start(V, 4, seed=4)
    H0[0, :5] = 1e-17
    ours, _, ref, _ = _fit_both(V, 0.5, W0, H0, max_iter=5)
    np.testing.assert_array_equal(ours.components_ == 0, ref.components_ == 0)
    assert np.count_nonzero(ours.components_ == 0) >= 5
    np.testing.assert_allclose(ours.components_, ref.components_, rtol=1e-8, atol=1e-12)


def test_gamma_and_powers():
    assert beta_gamma(0.0) == 0.5 and beta_gamma(-1.0) == pytest.approx(1 / 3)
    assert beta_gamma(1.5) == 1.0 and beta_gamma(3.0) == 0.5
    x = np.random.default_rng(0).random(1000) + 1e-3
    for p in [1, 0, -1, 2, -2, 0.5, -0.5, 1.5, -1.5, 3, 0.7, -1.3]:
        np.testing.assert_allclose(power(x, p), x**p, rtol=4e-16 * 8)


# ------------------------------------------------------------------ the loss
@pytest.mark.parametrize("beta", BETAS)
def test_panel_loss_is_scikit_learns_beta_divergence(beta):
    V = _positive(50, 30, 4) if beta <= 0 else _with_zeros(50, 30, 4)
    W, H = _start(V, 4, seed=2)
    solver = get_solver("mu", beta)
    ctx = context_for(H, PanelSource("numpy", V, V.shape, V.dtype))
    total = {}
    for rows in (slice(0, 17), slice(17, 50)):  # two panels, summed
        _, stats = solver.update_panel(V[rows], W[rows], ctx, Regularization())
        total = {key: total.get(key, 0) + stats[key] for key in stats}
    assert solver.loss_before(total, ctx, 0.0) == pytest.approx(
        _beta_divergence(V, W, H, beta), rel=1e-11)
    pieces = solver.loss_pieces(sp.csr_matrix(V), W, ctx)
    assert solver.loss_before(pieces, ctx, 0.0) == pytest.approx(
        _beta_divergence(V, W, H, beta), rel=1e-11)


@pytest.mark.parametrize("beta", [-0.5, 0.0, 0.5, 1.5, 2.5, 3.0])
def test_loss_decreases_monotonically(beta):
    V = _positive(80, 40, 4, seed=5)
    est = dnmf.NMF(4, solver="mu", beta_loss=beta, init="random", random_state=0,
                   max_iter=40, tol=0.0, panel_rows=30).fit(V)
    history = np.array(est.loss_history_)
    assert len(history) == 40
    assert np.all(np.diff(history) <= 1e-10 * history[:-1])
    assert history[-1] < 0.5 * history[0]
    # The recorded loss is the divergence of the returned factors.
    W = dnmf.NMF(4, solver="mu", beta_loss=beta, init="random", random_state=0,
                 max_iter=40, tol=0.0, panel_rows=30).fit_transform(V)
    assert history[-1] == pytest.approx(_beta_divergence(V, W, est.components_, beta),
                                        rel=1e-10)


# ------------------------------------------------------------- sparse = dense
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.5, 3.0])
def test_sparse_equals_dense(beta, monkeypatch):
    from dnmf._solvers import _beta

    monkeypatch.setattr(_beta, "BLOCK_ENTRIES", 200)  # many row blocks per panel
    V = _positive() if beta <= 0 else _with_zeros()
    W0, H0 = _start(V, 5)
    kw = dict(solver="mu", beta_loss=beta, init="custom", max_iter=30, tol=0.0, panel_rows=32)
    dense = dnmf.NMF(5, **kw)
    Wd = dense.fit_transform(V, W=W0, H=H0)
    sparse = dnmf.NMF(5, **kw)
    Ws = sparse.fit_transform(sp.csr_matrix(V), W=W0, H=H0)
    np.testing.assert_allclose(Ws, Wd, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-8, atol=1e-14)
    assert sparse.loss_history_ == pytest.approx(dense.loss_history_, rel=1e-10)


def test_transform_matches_scikit_learn():
    V = _positive()
    W0, H0 = _start(V, 5)
    kw = dict(solver="mu", beta_loss=1.5, init="custom", max_iter=50, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkNMF(5, **kw).fit(V, W=W0.copy(), H=H0.copy())
        W_ref = ref.transform(V[:20])
    ours = dnmf.NMF(5, **kw).fit(V, W=W0, H=H0)
    np.testing.assert_allclose(ours.transform(V[:20]), W_ref, rtol=1e-7, atol=1e-10)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("beta", [0, 0.0, "itakura-saito", -1.5])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_zeros_with_beta_at_most_zero_are_refused_as_scikit_learn(beta, kind):
    V = _positive(30, 20, 3)
    V[3, 4] = 0.0
    X = V if kind == "dense" else sp.csr_matrix(V)
    with pytest.raises(ValueError, match="When beta_loss <= 0 and X contains zeros"):
        SkNMF(3, solver="mu", beta_loss=beta).fit(X)
    with pytest.raises(InvalidInputError, match="When beta_loss <= 0 and X contains zeros"):
        dnmf.NMF(3, solver="mu", beta_loss=beta).fit(X)


def test_sparse_without_implicit_zeros_is_accepted_for_itakura_saito():
    V = _positive(30, 20, 3)
    W0, H0 = _start(V, 3)
    kw = dict(solver="mu", beta_loss="itakura-saito", init="custom", max_iter=5, tol=0.0)
    ref = SkNMF(3, **kw).fit(sp.csr_matrix(V), W=W0.copy(), H=H0.copy())
    ours = dnmf.NMF(3, **kw).fit(sp.csr_matrix(V), W=W0, H=H0)
    np.testing.assert_allclose(ours.components_, ref.components_, rtol=1e-8)


def test_zeros_with_beta_at_most_zero_are_refused_by_runs_and_transform(tmp_path):
    V = _positive(30, 20, 3)
    est = dnmf.NMF(3, solver="mu", beta_loss=0, max_iter=3).fit(V)
    V[0, 0] = 0.0
    with pytest.raises(InvalidInputError, match="X contains zeros"):
        est.transform(V)
    with pytest.raises(InvalidInputError, match="X contains zeros"):
        dnmf.NMF(3, solver="mu", beta_loss=-1.0, out=tmp_path / "run").fit(V)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("params", "match"), [
    ({"solver": "hals", "beta_loss": 1.5}, r"solver 'hals' does not handle beta_loss = 1.5"),
    ({"solver": "als", "beta_loss": "itakura-saito"}, r"solver 'als' does not handle"),
    ({"solver": "mu", "beta_loss": "itakura"}, r"'beta_loss' parameter of NMF must be"),
    ({"solver": "mu", "beta_loss": float("nan")}, r"'beta_loss' parameter of NMF must be"),
    ({"solver": "mu", "beta_loss": float("inf")}, r"'beta_loss' parameter of NMF must be"),
    ({"solver": "mu", "beta_loss": True}, r"'beta_loss' parameter of NMF must be"),
])
def test_bad_beta_parameters(params, match):
    with pytest.raises(InvalidParameterError, match=match):
        dnmf.NMF(2, **params).fit(_positive(20, 10, 2))


# ----------------------------------------------------- Zarr, out of core, resume
def _zarr(path, V, rows=25):
    arr = zarr.create_array(store=str(path), shape=V.shape, chunks=(rows, V.shape[1]),
                            dtype=V.dtype)
    arr[...] = V
    return str(path)


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_zarr_out_of_core_resume_is_bit_for_bit(tmp_path, beta):
    V = _positive(150, 40, 4, seed=7)
    path = _zarr(tmp_path / "V.zarr", V)
    kw = dict(solver="mu", beta_loss=beta, init="random", random_state=1, tol=0.0,
              max_iter=12, panel_rows=50, scheduler="threads")
    ref = dnmf.NMF(4, **kw)
    W_ref = ref.fit_transform(V)

    def interrupt(iteration, loss):
        if iteration == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        dnmf.NMF(4, out=out, checkpoint_every=100, callback=interrupt, **kw).fit(path)
    run = dnmf.open_run(out)
    assert run.iteration == 7 and not run.complete
    assert run.params["beta_loss"] == ("itakura-saito" if beta == 0 else 1.5)
    # Another beta is another run: refused.
    with pytest.raises(dnmf.IncompatibleRunError, match="beta_loss"):
        dnmf.NMF(4, out=out, **{**kw, "beta_loss": 0.5}).fit(path)
    run = dnmf.resume(out)
    np.testing.assert_array_equal(run.W.compute(), W_ref)
    np.testing.assert_array_equal(run.H, ref.components_)
    assert run.loss_history == ref.loss_history_


# --------------------------------------------- solver="amu": accelerated KL-MU
def _kl(V, W, H):
    return float(_beta_divergence(V, W, H, 1))


def test_relaxed_step_never_raises_the_majorant_and_beats_mu():
    from dnmf._solvers._kl import relaxed_step

    rng = np.random.default_rng(8)
    X0 = rng.random((50, 6)) + 0.01
    numerator = rng.random((50, 6)) * 3
    linear = np.broadcast_to(rng.random(6) + 0.5, X0.shape)
    for l1, l2 in [(0.0, 0.0), (0.3, 0.0), (0.0, 0.7), (0.2, 0.5)]:
        new = relaxed_step(X0, numerator, linear, l1, l2)
        mu = X0 * numerator / (linear + l1 + l2 * X0)

        def G(x, l1=l1, l2=l2):
            return (linear + l1) * x + 0.5 * l2 * x**2 - numerator * X0 * np.log(x)

        assert np.all(G(new) <= G(X0) + 1e-12)
        # it moves at least as far as MU, in MU's direction, and sometimes further
        assert np.all(np.abs(np.log(new / X0)) >= np.abs(np.log(mu / X0)) - 1e-12)
        assert np.mean(np.abs(np.log(new / X0)) > np.abs(np.log(mu / X0)) + 1e-9) > 0.5


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_amu_is_monotone_and_needs_fewer_iterations_than_mu(kind):
    V, _, _ = planted(200, 80, 5, seed=9, noise=0.2)
    if kind == "sparse":
        V = sp.csr_matrix(V * (np.random.default_rng(9).random(V.shape) < 0.4))
    kw = dict(beta_loss="kullback-leibler", init="random", random_state=0, tol=0.0,
              panel_rows=64)
    mu = dnmf.NMF(5, solver="mu", max_iter=60, **kw).fit(V)
    amu = dnmf.NMF(5, solver="amu", max_iter=60, **kw)
    W = amu.fit_transform(V)
    history = np.array(amu.loss_history_)
    assert np.all(np.diff(history) <= 1e-12 * history[:-1])
    assert history[-1] == pytest.approx(
        _kl(V.toarray() if kind == "sparse" else V, W, amu.components_), rel=1e-10)
    # amu reaches mu's 60-iteration loss within 36 iterations (measured: 33 dense,
    # 30 sparse; deterministic, seeded)
    assert history[35] < mu.loss_history_[-1]


def test_amu_sparse_equals_dense_and_zarr_resume_is_bit_for_bit(tmp_path):
    V = _with_zeros(150, 40, 4)
    kw = dict(solver="amu", beta_loss=1, init="random", random_state=2, tol=0.0,
              max_iter=12, panel_rows=50, scheduler="threads")
    ref = dnmf.NMF(4, **kw)
    W_ref = ref.fit_transform(V)
    sparse = dnmf.NMF(4, **kw)
    np.testing.assert_allclose(sparse.fit_transform(sp.csr_matrix(V)), W_ref, rtol=1e-8,
                               atol=1e-14)
    path = _zarr(tmp_path / "V.zarr", V)

    def interrupt(iteration, loss):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dnmf.NMF(4, out=tmp_path / "run", checkpoint_every=100, callback=interrupt,
                 **kw).fit(path)
    assert dnmf.open_run(tmp_path / "run").params["solver"] == "amu"
    run = dnmf.resume(tmp_path / "run")
    np.testing.assert_array_equal(run.W.compute(), W_ref)
    np.testing.assert_array_equal(run.H, ref.components_)
    assert run.loss_history == ref.loss_history_


def test_amu_only_for_kl():
    with pytest.raises(InvalidParameterError, match=r"'amu'.*KL divergence only"):
        dnmf.NMF(2, solver="amu").fit(_positive(20, 10, 2))
    with pytest.raises(InvalidParameterError, match=r"'amu'.*KL divergence only"):
        dnmf.NMF(2, solver="amu", beta_loss=1.5).fit(_positive(20, 10, 2))


def test_cli_fits_any_beta_and_records_it(tmp_path):
    from typer.testing import CliRunner

    from dnmf.cli import app

    V = _positive(60, 20, 3)
    np.save(tmp_path / "v.npy", V)
    runner = CliRunner()
    for loss, recorded in [("1.5", 1.5), ("is", "itakura-saito")]:
        out = tmp_path / f"r{loss}.zarr"
        result = runner.invoke(app, ["fit", str(tmp_path / "v.npy"), "-k", "3", "-o", str(out),
                                     "--solver", "mu", "--loss", loss, "--max-iter", "5"])
        assert result.exit_code == 0, result.output
        assert dnmf.open_run(out).params["beta_loss"] == recorded


@pytest.mark.slow
@pytest.mark.parametrize(("solver", "beta"), [("mu", 1.5), ("mu", "itakura-saito"),
                                              ("amu", "kullback-leibler")])
def test_distributed_cluster_equals_threads(distributed_client, solver, beta):
    # A real LocalCluster (two worker processes): the kernels travel pickled, the
    # panels' sums are reduced in the same fixed tree, so the fit is the threads one.
    V = _positive(160, 40, 4, seed=13)
    kw = dict(solver=solver, beta_loss=beta, init="random", random_state=0, max_iter=25,
              tol=0.0, panel_rows=40)
    local = dnmf.NMF(4, scheduler="threads", **kw)
    W_local = local.fit_transform(V)
    remote = dnmf.NMF(4, scheduler=distributed_client, **kw)
    W_remote = remote.fit_transform(V)
    np.testing.assert_allclose(W_remote, W_local, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(remote.components_, local.components_, rtol=1e-10, atol=1e-14)
    assert remote.loss_history_ == pytest.approx(local.loss_history_, rel=1e-12)


@pytest.mark.parametrize(("beta_loss", "masked", "expected"), [
    ("frobenius", False, "hals"), ("frobenius", True, "hals"),
    ("kullback-leibler", False, "amu"), ("kullback-leibler", True, "mu"),
    (1.5, False, "mu"),
])
def test_solver_auto_picks_hals_amu_or_mu_and_equals_the_named_solver(beta_loss, masked,
                                                                        expected):
    from dnmf._validation import resolve_solver

    V = _positive(60, 24, 3)
    mask = None
    if masked:
        mask = np.random.default_rng(5).random(V.shape) > 0.1
    kw = dict(beta_loss=beta_loss, init="random", random_state=0, max_iter=25, tol=0.0)
    auto = dnmf.NMF(3, **kw)
    assert auto.get_params()["solver"] == "auto"  # the default
    W_auto = auto.fit_transform(V, mask=mask)
    named = dnmf.NMF(3, solver=expected, **kw)
    W_named = named.fit_transform(V, mask=mask)
    assert auto.solver == "auto"  # fit does not change the parameter
    np.testing.assert_array_equal(W_auto, W_named)
    np.testing.assert_array_equal(auto.components_, named.components_)
    assert auto.n_iter_ == named.n_iter_ == 25
    normal = dnmf._validation.normalize_beta_loss(beta_loss)
    assert resolve_solver("auto", normal, masked) == expected
    assert resolve_solver("als", normal, masked) == "als"  # a named solver is kept


def test_solver_auto_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from dnmf.cli import app

    V = _positive(60, 20, 3)
    np.save(tmp_path / "v.npy", V)
    runner = CliRunner()
    for i, (args, recorded) in enumerate([([], "hals"), (["--loss", "kl"], "amu"),
                                          (["--solver", "auto", "--loss", "1.5"], "mu"),
                                          (["--solver", "mu", "--loss", "kl"], "mu")]):
        out = tmp_path / f"r{i}.zarr"
        result = runner.invoke(app, ["fit", str(tmp_path / "v.npy"), "-k", "3", "-o", str(out),
                                     "--max-iter", "5", *args])
        assert result.exit_code == 0, result.output
        assert dnmf.open_run(out).params["solver"] == recorded
        assert f"with rank 3, {recorded}, on local threads" in result.output
