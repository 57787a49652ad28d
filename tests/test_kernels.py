"""The compiled kernels against their NumPy references, and how a fit chooses them.

Every compiled kernel (dnmf/_solvers/_compiled.py) has a NumPy reference in its
solver's module; from the same inputs the two agree to 1e-10 (relative, with an
absolute floor of 1e-12 of the largest value), and a whole fit with either gives the
same loss history to 1e-8.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf._solvers import _kernels
from dnmf._solvers._hals import HALS
from dnmf._solvers._mu import _wh_at
from dnmf._solvers._nnls import nnls_bpp
from dnmf.errors import InvalidParameterError
from dnmf.testing import planted

pytest.importorskip("numba")


def close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-10) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12 * max(float(np.abs(a).max()), 1e-300))


@pytest.fixture
def numba_mode(monkeypatch):
    monkeypatch.setenv("DNMF_KERNELS", "numba")


def _gram_problem(rng, n, k, m=60):
    A = rng.random((m, k))
    G = A.T @ A
    X = rng.random((n, k)) * (rng.random((n, k)) > 0.3)
    P = rng.random((n, m)) @ A
    return X, P, G


@pytest.mark.parametrize("n,k,rho", [(300, 10, 31.0), (1000, 4, 1.0), (150, 20, 400.0)])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.7)])
def test_hals_step_compiled_matches_numpy(rng, n, k, rho, l1, l2):
    X, P, G = _gram_problem(rng, n, k)
    X0 = X.copy()
    ref = HALS().step(X, P, G, l1, l2, rho)
    fast = HALS().step(X, P, G, l1, l2, rho, compiled=True)
    np.testing.assert_array_equal(X, X0)  # the input is not modified
    assert fast.shape == ref.shape and fast.dtype == np.float64
    close(fast, ref)


def test_hals_step_dead_component(rng):
    # A component whose Gram diagonal is 0 (an all-zero row of the other factor).
    X, P, G = _gram_problem(rng, 200, 6)
    G[3, :] = 0.0
    G[:, 3] = 0.0
    P[:, 3] = 0.0
    close(HALS().step(X, P, G, 0.0, 0.0, 20.0, compiled=True),
          HALS().step(X, P, G, 0.0, 0.0, 20.0))


def test_hals_step_float32_input(rng):
    X, P, G = _gram_problem(rng, 120, 5)
    X32, P32 = X.astype(np.float32), P.astype(np.float32)
    close(HALS().step(X32, P32, G, 0.0, 0.0, 10.0, compiled=True),
          HALS().step(X32, P32, G, 0.0, 0.0, 10.0))


def test_compiled_equals_its_python_source(rng):
    # The compiled function and the same code run by Python (numba's .py_func).
    from dnmf._solvers import _compiled

    X, P, G = _gram_problem(rng, 40, 5)
    args = (X, P, G, 0.1, 0.2, 7, 0.01, 0.0, True)
    close(_compiled.hals_step(*args), _compiled.hals_step.py_func(*args), rtol=1e-12)


@pytest.mark.parametrize("k,r", [(10, 300), (3, 500), (25, 80)])
def test_nnls_compiled_matches_numpy(rng, k, r):
    A, B = rng.random((60, k)), rng.random((60, r))
    x0 = rng.random((k, r)) * (rng.random((k, r)) > 0.5)
    G, R = A.T @ A, A.T @ B
    close(nnls_bpp(G, R, x0, compiled=True), nnls_bpp(G, R, x0))
    close(nnls_bpp(G, R, compiled=True), nnls_bpp(G, R))


def test_nnls_compiled_hands_back_singular_columns(rng):
    # Dependent columns of A: the compiled loop returns them to the reference, whose
    # least-squares fallback gives the answer; a zero column of A stays at zero.
    A = rng.random((40, 4))
    A = np.hstack([A, A[:, :2], np.zeros((40, 1))])
    G, R = A.T @ A, A.T @ rng.random((40, 30))
    fast = nnls_bpp(G, R, compiled=True)
    close(fast, nnls_bpp(G, R))
    assert np.all(fast[-1] == 0.0)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_kl_values_at_stored_entries(rng, dtype, rtol):
    V = sp.random(300, 120, density=0.05, format="csr", random_state=3, dtype=dtype)
    W = rng.random((300, 7)).astype(dtype)
    H = rng.random((7, 120)).astype(dtype)
    fast, ref = _wh_at(W, H, V, compiled=True), _wh_at(W, H, V)
    assert fast.dtype == ref.dtype
    np.testing.assert_allclose(fast, ref, rtol=rtol)


def _kl_panel(rng, n, m, k, dtype):
    from dnmf._solvers import EPSILON

    V = rng.random((n, m)) * (rng.random((n, m)) < 0.7)  # exact zeros
    V[1, :7] = EPSILON / 4  # positive entries at or below eps: left out of the loss
    V[2, :3] = 1e-300  # a quotient that is not a normal number: np.log's value
    W = rng.random((n, k))
    W[3] = 0.0  # a zero row: WH floored at eps
    H = rng.random((k, m))
    return V.astype(dtype), W.astype(dtype), H.astype(dtype)


@pytest.mark.parametrize("solver", ["mu", "amu"])
@pytest.mark.parametrize("n,m", [(300, 100), (1000, 37), (7, 5000)])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.2)])
def test_kl_dense_panel_compiled_matches_numpy(monkeypatch, rng, solver, n, m, dtype, rtol,
                                               l1, l2):
    from dnmf._solvers import PanelContext, Regularization, get_solver

    V, W, H = _kl_panel(rng, n, m, 6, dtype)
    ctx = PanelContext(H=H, gram=H.astype(float) @ H.T, H_sum=H.sum(axis=1, dtype=float),
                       shape=V.shape, nnz=V.size)
    reg = Regularization(l1_W=l1, l2_W=l2)
    kl = get_solver(solver, "kullback-leibler")
    monkeypatch.setenv("DNMF_KERNELS", "numpy")
    W_ref, ref = kl.update_panel(V, W, ctx, reg)
    monkeypatch.setenv("DNMF_KERNELS", "numba")
    W_fast, fast = kl.update_panel(V, W, ctx, reg)
    assert W_fast.dtype == W_ref.dtype == dtype and sorted(fast) == sorted(ref)
    close(W_fast, W_ref, rtol)
    for key in ref:
        assert fast[key].dtype == ref[key].dtype and fast[key].shape == ref[key].shape
        close(fast[key], ref[key], rtol)
    # amu's step moved entries beyond MU's point (its over-relaxation was exercised)
    if solver == "amu":
        mu_W, _ = get_solver("mu", "kullback-leibler").update_panel(V, W, ctx, reg)
        assert not np.allclose(W_fast, mu_W)


@pytest.mark.parametrize("solver", ["mu", "amu"])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.2)])
def test_kl_csr_panel_compiled_matches_numpy(monkeypatch, rng, solver, dtype, rtol, l1, l2):
    from dnmf._solvers import PanelContext, Regularization, get_solver
    from dnmf._solvers._compiled import KL_BLOCK

    # Rows of every length: empty ones, and one longer than a block of stored entries.
    V = sp.random(3000, 40, density=0.08, format="lil", random_state=5, dtype=dtype)
    V[7, :] = 0.0
    long_rows = sp.csr_matrix(rng.random((2, KL_BLOCK + 10)).astype(dtype))
    V = sp.block_diag([V.tocsr(), long_rows], format="csr").astype(dtype)
    assert V.format == "csr" and V.indptr[8] == V.indptr[7]
    n, m = V.shape
    W, H = rng.random((n, 6)).astype(dtype), rng.random((6, m)).astype(dtype)
    ctx = PanelContext(H=H, gram=H.astype(float) @ H.T, H_sum=H.sum(axis=1, dtype=float),
                       shape=V.shape, nnz=V.nnz)
    reg = Regularization(l1_W=l1, l2_W=l2)
    kl = get_solver(solver, "kullback-leibler")
    monkeypatch.setenv("DNMF_KERNELS", "numpy")
    W_ref, ref = kl.update_panel(V, W, ctx, reg)
    monkeypatch.setenv("DNMF_KERNELS", "numba")
    W_fast, fast = kl.update_panel(V, W, ctx, reg)
    assert W_fast.dtype == W_ref.dtype == dtype and sorted(fast) == sorted(ref)
    close(W_fast, W_ref, rtol)
    for key in ref:
        assert fast[key].dtype == ref[key].dtype and fast[key].shape == ref[key].shape
        close(fast[key], ref[key], rtol)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2), (0.3, 0.2)])
def test_relaxed_step_compiled_matches_numpy(rng, l1, l2):
    from dnmf._solvers import EPSILON
    from dnmf._solvers._kl import OMEGAS, relaxed_step

    for shape, per_row in [((300, 10), False), ((10, 100), True)]:
        X0 = rng.random(shape)
        X0[rng.random(shape) < 0.1] = 0.0
        numerator = rng.random(shape) * 3.0
        numerator[rng.random(shape) < 0.05] = 0.0
        numerator[0, 0] = 1e300  # ρ^ω overflows: MU's step there
        numerator[1, 1] = 1e-310  # a subnormal ρ: np.log's value
        linear = rng.random(shape[0] if per_row else shape[1]) + 0.2
        linear[1] = 0.0  # a zero denominator when unpenalised
        broadcast = linear[:, np.newaxis] if per_row else linear[np.newaxis, :]
        with np.errstate(all="ignore"):
            expected = relaxed_step(X0, numerator, broadcast, l1, l2)
        got = _kernels.relaxed_step(X0, numerator, linear, per_row, l1, l2, OMEGAS, EPSILON)
        close(got, expected)


def test_vectorised_log_and_exp_are_the_libraries_to_rounding(rng):
    from dnmf._solvers import _compiled

    v = rng.random(20000) + 1e-3
    wh = v / 10.0 ** rng.uniform(-290, 290, v.size)  # quotients v / wh of every size
    wh[:3] = v[:3] / np.array([1.0, np.nextafter(1.0, 2.0), np.sqrt(2.0)])
    for tiny in (False, True):  # with a subnormal quotient: np.log's values for all
        if tiny:
            wh[3] = v[3] / 1e-309
        xlog, xsum = _compiled._ratio_xlog(v, wh.copy(), 0.0, False)
        assert xsum == pytest.approx(v.sum(), rel=1e-14)
        assert xlog == pytest.approx(np.dot(v, np.log(v / wh)), rel=1e-13)
        R = wh.copy()
        assert _compiled._ratio_xlog(v, R, 0.0, True) == (xlog, xsum)
        np.testing.assert_array_equal(R, v / wh)
    y = np.concatenate([rng.uniform(-700, 700, 20000), [0.0, -1e-300, 709.7, -745.0, 800.0,
                                                          -np.inf, np.nan]])
    out = np.empty_like(y)
    _compiled._exps(y, out)
    np.testing.assert_allclose(out, np.exp(y), rtol=4e-16, atol=0)
    assert np.isnan(out[-1]) and out[-3] == np.inf and out[-2] == 0.0


def _fit(V, monkeypatch, mode, **params):
    monkeypatch.setenv("DNMF_KERNELS", mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dnmf.NMF(5, max_iter=40, tol=0, random_state=0, scheduler="threads",
                         **params)
        W = model.fit_transform(V)
    return model, W


@pytest.mark.parametrize("params", [{"solver": "hals"}, {"solver": "als"},
                                    {"solver": "hals", "alpha_W": 0.01, "l1_ratio": 0.5}])
def test_fit_same_with_either_kernels(monkeypatch, params):
    V, _, _ = planted(200, 60, 5, seed=3, noise=0.05)
    a, Wa = _fit(V, monkeypatch, "numpy", **params)
    b, Wb = _fit(V, monkeypatch, "numba", **params)
    np.testing.assert_allclose(b.loss_history_, a.loss_history_, rtol=1e-8)
    np.testing.assert_allclose(Wb, Wa, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver", ["mu", "amu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_kl_fit_same_with_either_kernels(monkeypatch, solver, dtype):
    V, _, _ = planted(200, 60, 5, seed=3, noise=0.05)
    V = V.astype(dtype)
    kw = dict(solver=solver, beta_loss="kullback-leibler")
    a, Wa = _fit(V, monkeypatch, "numpy", **kw)
    b, Wb = _fit(V, monkeypatch, "numba", **kw)
    rtol = 1e-8 if dtype == np.float64 else 1e-4  # float32: rounding grows over a fit
    np.testing.assert_allclose(b.loss_history_, a.loss_history_, rtol=rtol)
    if dtype == np.float64:
        np.testing.assert_allclose(Wb, Wa, rtol=1e-6, atol=1e-9)
    else:
        np.testing.assert_allclose(Wb, Wa, rtol=1e-3, atol=1e-4 * float(Wa.max()))


@pytest.mark.parametrize("solver", ["mu", "amu"])
def test_sparse_kl_fit_same_with_either_kernels(monkeypatch, solver):
    V = sp.random(300, 80, density=0.1, format="csr", random_state=1) * 5
    a, _ = _fit(V, monkeypatch, "numpy", solver=solver, beta_loss="kullback-leibler")
    b, _ = _fit(V, monkeypatch, "numba", solver=solver, beta_loss="kullback-leibler")
    np.testing.assert_allclose(b.loss_history_, a.loss_history_, rtol=1e-8)


def test_choice_from_the_environment(monkeypatch):
    monkeypatch.delenv("DNMF_KERNELS", raising=False)
    assert _kernels.choice() == "auto"
    # auto: NumPy for tiny problems, compiled otherwise (numba is installed here)
    assert not _kernels.enabled((40, 12), 3)
    assert _kernels.enabled((300, 100), 10)
    monkeypatch.setenv("DNMF_KERNELS", "numpy")
    assert not _kernels.enabled((3000, 1000), 10)
    monkeypatch.setenv("DNMF_KERNELS", "NUMBA")
    assert _kernels.enabled((40, 12), 3)
    monkeypatch.setenv("DNMF_KERNELS", "fortran")
    with pytest.raises(InvalidParameterError, match="DNMF_KERNELS='fortran'"):
        _kernels.enabled((300, 100), 10)


def _without_numba(code: str, **env: str) -> subprocess.CompletedProcess:
    # numba made unimportable the way a missing package is: None in sys.modules.
    prelude = "import sys\nsys.modules['numba'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_fallback_without_numba():
    code = (
        "import numpy as np, warnings, dnmf\n"
        "from dnmf._solvers import _kernels\n"
        "warnings.simplefilter('ignore')\n"
        "X = np.random.default_rng(0).random((300, 100))\n"
        "m = dnmf.NMF(10, max_iter=5, random_state=0).fit(X)\n"
        "assert not _kernels.enabled((300, 100), 10)\n"
        "print(m.loss_history_[-1])\n"
    )
    auto = _without_numba(code, DNMF_KERNELS="auto")
    assert auto.returncode == 0, auto.stderr
    assert float(auto.stdout.strip()) > 0
    forced = _without_numba(code, DNMF_KERNELS="numba")
    assert forced.returncode != 0
    assert "DNMF_KERNELS=numba, but numba cannot be imported" in forced.stderr


def test_relaxed_step_floor_zeroes_what_the_h_step_would():
    """The H-step's floor (entries below float64's eps become 0, scikit-learn's rule
    for β ≤ 1) applied inside the compiled step: the same array as applying it after."""
    from dnmf._solvers import EPSILON
    from dnmf._solvers._kl import EPS64, OMEGAS

    rng = np.random.default_rng(3)
    X0 = rng.random((10, 100))
    X0[:, :7] = 1e-17  # below the floor after any step that keeps them small
    numerator = rng.random((10, 100)) * 3.0
    numerator[:, :7] = 1e-3
    linear = rng.random(10) + 0.2
    plain = _kernels.relaxed_step(X0, numerator, linear, True, 0.0, 0.0, OMEGAS, EPSILON)
    assert (plain[:, :7] < EPS64).all() and (plain[:, :7] > 0).all()
    expected = plain.copy()
    expected[expected < EPS64] = 0.0
    floored = _kernels.relaxed_step(X0, numerator, linear, True, 0.0, 0.0, OMEGAS, EPSILON,
                                    EPS64)
    np.testing.assert_array_equal(floored, expected)
    assert (floored[:, :7] == 0).all() and (floored[:, 7:] > 0).all()
