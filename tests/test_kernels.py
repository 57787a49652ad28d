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


def test_sparse_kl_fit_same_with_either_kernels(monkeypatch):
    V = sp.random(300, 80, density=0.1, format="csr", random_state=1) * 5
    a, _ = _fit(V, monkeypatch, "numpy", solver="mu", beta_loss="kullback-leibler")
    b, _ = _fit(V, monkeypatch, "numba", solver="mu", beta_loss="kullback-leibler")
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
