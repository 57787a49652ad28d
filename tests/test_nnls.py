"""Tests for the block principal pivoting NNLS kernel ``dnmf._solvers._nnls.nnls_bpp``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf._solvers import _nnls
from dnmf._solvers._nnls import nnls_bpp


def _scipy_nnls(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Reference solution: scipy.optimize.nnls column by column."""
    return np.column_stack(
        [scipy.optimize.nnls(A, B[:, j], maxiter=50 * A.shape[1])[0] for j in range(B.shape[1])]
    )


def _objective(A: np.ndarray, X: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per-column squared residual ||A x_j - b_j||^2."""
    return np.sum((A @ X - B) ** 2, axis=0)


def _problem(
    seed: int, m: int, k: int, r: int, kind: str = "normal"
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        A = rng.standard_normal((m, k))
        B = rng.standard_normal((m, r))
    elif kind == "uniform":  # non-negative data, as in NMF: mostly passive solutions
        A = rng.random((m, k))
        B = rng.random((m, r))
    elif kind == "correlated":  # ill-conditioned, columns of A share a common component
        A = rng.standard_normal((m, 1)) + 0.05 * rng.standard_normal((m, k))
        B = rng.standard_normal((m, r))
    else:  # pragma: no cover
        raise ValueError(kind)
    return A, B


def _assert_kkt(gram: np.ndarray, rhs: np.ndarray, X: np.ndarray, rtol: float = 1e-9) -> None:
    grad = gram @ X - rhs
    scale = rtol * (np.abs(rhs).max() + np.abs(gram).max() * np.abs(X).max() + 1.0)
    assert np.all(X >= 0)
    assert np.all(grad >= -scale), grad.min()
    assert np.all(np.abs(X * grad) <= scale * (1.0 + np.abs(X).max())), np.abs(X * grad).max()


# Routing of the passive-set solves: the cost model decides, or force every group through
# one LAPACK Cholesky per group, or force everything through the column-batched Cholesky.
_ROUTES = {"auto": None, "grouped": 0.0, "batched": np.inf}


@pytest.fixture(params=sorted(_ROUTES))
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    cost = _ROUTES[request.param]
    if cost is not None:
        monkeypatch.setattr(_nnls, "_GROUP_COST", cost)
    return str(request.param)


@pytest.mark.parametrize("kind", ["normal", "uniform"])
@pytest.mark.parametrize("r", [1, 7, 200])
@pytest.mark.parametrize("k", [1, 3, 10, 25])
def test_matches_scipy(k: int, r: int, kind: str, route: str) -> None:
    m = 3 * k + 20
    A, B = _problem(1000 * k + r, m, k, r, kind)
    X = nnls_bpp(A.T @ A, A.T @ B)
    X_ref = _scipy_nnls(A, B)
    assert X.shape == (k, r)
    assert X.dtype == np.float64
    np.testing.assert_allclose(X, X_ref, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_objective(A, X, B), _objective(A, X_ref, B), rtol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_matches_scipy_ill_conditioned(seed: int, route: str) -> None:
    A, B = _problem(seed, 40, 12, 60, "correlated")
    X = nnls_bpp(A.T @ A, A.T @ B)
    X_ref = _scipy_nnls(A, B)
    obj, obj_ref = _objective(A, X, B), _objective(A, X_ref, B)
    assert np.all(obj <= obj_ref * (1 + 1e-9) + 1e-12)
    np.testing.assert_allclose(X, X_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["normal", "uniform", "correlated"])
@pytest.mark.parametrize("k", [2, 8, 30])
def test_kkt_conditions(k: int, kind: str, route: str) -> None:
    A, B = _problem(7 + k, 2 * k + 10, k, 150, kind)
    gram, rhs = A.T @ A, A.T @ B
    X = nnls_bpp(gram, rhs)
    _assert_kkt(gram, rhs, X)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    k=st.integers(1, 12),
    r=st.integers(1, 20),
    extra_rows=st.integers(0, 10),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["normal", "uniform", "correlated"]),
)
def test_kkt_property(k: int, r: int, extra_rows: int, seed: int, kind: str) -> None:
    A, B = _problem(seed, k + extra_rows + 1, k, r, kind)
    gram, rhs = A.T @ A, A.T @ B
    _assert_kkt(gram, rhs, nnls_bpp(gram, rhs))


@pytest.mark.parametrize("start", ["exact", "random", "all_positive", "perturbed", "zeros"])
@pytest.mark.parametrize("k", [3, 10, 25])
def test_warm_start(k: int, start: str, route: str) -> None:
    A, B = _problem(11 * k, 3 * k + 20, k, 200)
    gram, rhs = A.T @ A, A.T @ B
    cold = nnls_bpp(gram, rhs)
    rng = np.random.default_rng(k)
    if start == "exact":
        x0 = cold.copy()
    elif start == "random":
        x0 = rng.random((k, 200)) * (rng.random((k, 200)) < 0.5)
    elif start == "all_positive":
        x0 = np.ones((k, 200))
    elif start == "perturbed":  # the alternating-NNLS use: solution of a nearby problem
        B2 = B + 0.1 * rng.standard_normal(B.shape)
        x0 = nnls_bpp(gram, A.T @ B2)
    else:
        x0 = np.zeros((k, 200))
    warm = nnls_bpp(gram, rhs, x0)
    np.testing.assert_allclose(warm, cold, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(warm, _scipy_nnls(A, B), rtol=1e-8, atol=1e-8)


def test_warm_start_does_not_modify_inputs() -> None:
    A, B = _problem(3, 40, 6, 30)
    gram, rhs = A.T @ A, A.T @ B
    x0 = np.ones((6, 30))
    copies = gram.copy(), rhs.copy(), x0.copy()
    nnls_bpp(gram, rhs, x0)
    for before, after in zip(copies, (gram, rhs, x0), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("gram_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 10, 25])
def test_float32(k: int, gram_dtype: type) -> None:
    A, B = _problem(5 * k, 3 * k + 20, k, 100, "uniform")
    gram, rhs = A.T @ A, A.T @ B
    X64 = nnls_bpp(gram, rhs)
    X32 = nnls_bpp(gram.astype(gram_dtype), rhs.astype(np.float32))
    assert X32.dtype == np.float32
    assert np.all(X32 >= 0)
    np.testing.assert_allclose(X32, X64, rtol=1e-4, atol=1e-4 * np.abs(X64).max())
    x0 = X64.astype(np.float32)
    assert nnls_bpp(gram, rhs.astype(np.float32), x0).dtype == np.float32


def test_integer_rhs_gives_float64() -> None:
    gram = np.array([[2.0, 1.0], [1.0, 2.0]])
    X = nnls_bpp(gram, np.array([[3, -1], [3, 4]]))
    assert X.dtype == np.float64
    np.testing.assert_allclose(X, [[1.0, 0.0], [1.0, 2.0]], atol=1e-14)


def test_vector_rhs() -> None:
    A, B = _problem(0, 30, 5, 1)
    X = nnls_bpp(A.T @ A, (A.T @ B)[:, 0])
    assert X.shape == (5,)
    np.testing.assert_allclose(X, _scipy_nnls(A, B)[:, 0], rtol=1e-8, atol=1e-8)


def _rank_deficient(seed: int, how: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, k, r = 60, 10, 120
    A = rng.random((m, k))
    if how == "duplicate":
        A[:, 3] = A[:, 1]
        A[:, 7] = A[:, 1]
    elif how == "combination":
        A[:, 4] = 0.5 * A[:, 0] + 2.0 * A[:, 2]
    elif how == "zero_column":
        A[:, 2] = 0.0
    elif how == "wide":  # more columns than rows
        A = rng.random((6, k))
    B = rng.random((A.shape[0], r)) + 0.3 * rng.standard_normal((A.shape[0], r))
    return A, B


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("how", ["duplicate", "combination", "zero_column", "wide"])
def test_rank_deficient(how: str, warm: bool, route: str) -> None:
    A, B = _rank_deficient(len(how), how)
    gram, rhs = A.T @ A, A.T @ B
    # An all-positive warm start puts the dependent columns in the passive set together.
    x0 = np.ones(rhs.shape) if warm else None
    X = nnls_bpp(gram, rhs, x0)
    assert np.all(np.isfinite(X))
    assert np.all(X >= 0)
    obj, obj_ref = _objective(A, X, B), _objective(A, _scipy_nnls(A, B), B)
    np.testing.assert_allclose(obj, obj_ref, rtol=1e-8, atol=1e-10 * np.abs(B).max() ** 2)
    if how == "zero_column":
        np.testing.assert_array_equal(X[2], 0.0)


def test_zero_gram_diagonal_with_inconsistent_rhs() -> None:
    """A zero diagonal entry pins the variable to zero even if rhs says otherwise."""
    gram = np.diag([1.0, 0.0, 4.0])
    rhs = np.array([[1.0, -1.0], [5.0, 5.0], [8.0, 4.0]])
    for x0 in (None, np.ones((3, 2))):
        X = nnls_bpp(gram, rhs, x0)
        np.testing.assert_allclose(X, [[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]], atol=1e-15)


def test_all_zero_gram() -> None:
    X = nnls_bpp(np.zeros((4, 4)), np.zeros((4, 3)), np.ones((4, 3)))
    np.testing.assert_array_equal(X, 0.0)


@pytest.mark.parametrize("warm", [False, True])
def test_zero_rhs_columns(warm: bool, route: str) -> None:
    A, B = _problem(2, 50, 8, 40)
    B[:, ::3] = 0.0
    gram, rhs = A.T @ A, A.T @ B
    X = nnls_bpp(gram, rhs, np.ones(rhs.shape) if warm else None)
    np.testing.assert_array_equal(X[:, ::3], 0.0)
    np.testing.assert_allclose(X, _scipy_nnls(A, B), rtol=1e-8, atol=1e-8)


def test_all_negative_rhs_gives_zero() -> None:
    A, B = _problem(4, 30, 5, 10, "uniform")
    X = nnls_bpp(A.T @ A, -(A.T @ B))
    np.testing.assert_array_equal(X, 0.0)


def test_scale_invariance() -> None:
    """Columns of A with wildly different norms (Jacobi scaling makes this harmless)."""
    A, B = _problem(9, 50, 6, 30)
    A = A * np.array([1e-6, 1.0, 1e4, 1.0, 1e-3, 1e2])
    X = nnls_bpp(A.T @ A, A.T @ B)
    X_ref = _scipy_nnls(A, B)
    np.testing.assert_allclose(A @ X, A @ X_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(_objective(A, X, B), _objective(A, X_ref, B), rtol=1e-9)


@pytest.mark.parametrize("max_iter", [0, 1, 2])
def test_max_iter_fallback_is_still_optimal(max_iter: int) -> None:
    A, B = _problem(12, 60, 15, 50, "correlated")
    X = nnls_bpp(A.T @ A, A.T @ B, max_iter=max_iter)
    np.testing.assert_allclose(X, _scipy_nnls(A, B), rtol=1e-6, atol=1e-6)


def test_max_iter_fallback_rank_deficient() -> None:
    A, B = _rank_deficient(1, "duplicate")
    X = nnls_bpp(A.T @ A, A.T @ B, max_iter=0)
    obj, obj_ref = _objective(A, X, B), _objective(A, _scipy_nnls(A, B), B)
    np.testing.assert_allclose(obj, obj_ref, rtol=1e-8)


def test_exchange_rule_unit() -> None:
    infeasible = np.array(
        [
            [True, True, True, False],
            [False, True, True, False],
            [True, False, True, True],
        ]
    )
    # Column 0: improves (2 < 3): full exchange, counter reset to p.
    # Column 1: no improvement, budget left: full exchange, budget decremented.
    # Column 2: no improvement, budget exhausted: only the largest infeasible index (2).
    # Column 3: no improvement, budget exhausted: single index 2 as well.
    alpha = np.array([0, 2, 0, 0])
    beta = np.array([3, 1, 3, 1])
    exchange, alpha2, beta2 = _nnls._exchange_rule(infeasible, alpha, beta)
    expected = infeasible.copy()
    expected[:, 2] = [False, False, True]
    np.testing.assert_array_equal(exchange, expected)
    np.testing.assert_array_equal(alpha2, [_nnls._FULL_EXCHANGE_BUDGET, 1, 0, 0])
    np.testing.assert_array_equal(beta2, [2, 1, 3, 1])
    np.testing.assert_array_equal(infeasible[:, 2], [True, True, True])  # input untouched


@pytest.mark.parametrize("seed", range(6))
def test_backup_rule_path(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no full-exchange budget every non-improving step uses the backup rule."""
    monkeypatch.setattr(_nnls, "_FULL_EXCHANGE_BUDGET", 0)
    calls = {"single": 0}
    original = _nnls._exchange_rule

    def spy(
        infeasible: np.ndarray, alpha: np.ndarray, beta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        exchange, alpha_out, beta_out = original(infeasible, alpha, beta)
        calls["single"] += int(np.sum(exchange.sum(axis=0) < infeasible.sum(axis=0)))
        return exchange, alpha_out, beta_out

    monkeypatch.setattr(_nnls, "_exchange_rule", spy)
    A, B = _problem(seed, 32, 30, 40, "correlated")
    X = nnls_bpp(A.T @ A, A.T @ B, max_iter=10_000)
    assert calls["single"] > 0
    np.testing.assert_allclose(X, _scipy_nnls(A, B), rtol=1e-6, atol=1e-6)


def test_many_distinct_passive_sets_large_r() -> None:
    """Thousands of columns with (mostly) distinct passive sets, as in an NMF H update."""
    A, B = _problem(21, 300, 20, 3000)
    gram, rhs = A.T @ A, A.T @ B
    X = nnls_bpp(gram, rhs)
    assert len({col.tobytes() for col in (X > 0).T}) > 1000
    cols = np.random.default_rng(0).choice(3000, 100, replace=False)
    np.testing.assert_allclose(X[:, cols], _scipy_nnls(A, B[:, cols]), rtol=1e-8, atol=1e-8)
    _assert_kkt(gram, rhs, X)


def test_large_k() -> None:
    A, B = _problem(5, 400, 120, 30)
    X = nnls_bpp(A.T @ A, A.T @ B)
    np.testing.assert_allclose(X, _scipy_nnls(A, B), rtol=1e-8, atol=1e-8)


def test_empty_shapes() -> None:
    assert nnls_bpp(np.eye(3), np.zeros((3, 0))).shape == (3, 0)
    assert nnls_bpp(np.zeros((0, 0)), np.zeros((0, 4), dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize(
    ("gram", "rhs", "x0"),
    [
        (np.eye(3), np.ones((2, 4)), None),
        (np.ones((3, 2)), np.ones((3, 4)), None),
        (np.eye(3), np.ones((3, 4)), np.ones((3, 5))),
        (np.eye(3), np.full((3, 4), np.nan), None),
        (np.full((3, 3), np.inf), np.ones((3, 4)), None),
        (np.eye(3), np.ones((3, 4, 1)), None),
    ],
)
def test_invalid_input(gram: np.ndarray, rhs: np.ndarray, x0: np.ndarray | None) -> None:
    with pytest.raises(ValueError):
        nnls_bpp(gram, rhs, x0)


def test_warm_start_at_optimum_needs_no_pivoting(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the optimal passive set the first solve is already optimal (x0 is used)."""
    A, B = _problem(8, 60, 12, 100)
    gram, rhs = A.T @ A, A.T @ B
    X = nnls_bpp(gram, rhs)

    def fail(*args: object) -> None:
        raise AssertionError("block pivoting did not converge within max_iter")

    monkeypatch.setattr(_nnls, "_lawson_hanson_fallback", fail)
    np.testing.assert_allclose(nnls_bpp(gram, rhs, X, max_iter=0), X, rtol=1e-10, atol=1e-12)
    with pytest.raises(AssertionError, match="did not converge"):
        nnls_bpp(gram, rhs, max_iter=0)


@pytest.mark.parametrize("seed", range(4))
def test_degenerate_exact_fit(seed: int, route: str) -> None:
    """b = A x_true with zeros in x_true: zero variables may sit in the passive set at
    (rounding-level) negative values; the output must still be exactly non-negative."""
    rng = np.random.default_rng(seed)
    A = rng.random((40, 15))
    X_true = rng.random((15, 50)) * (rng.random((15, 50)) < 0.5)
    B = A @ X_true
    gram, rhs = A.T @ A, A.T @ B
    for x0 in (None, np.ones(X_true.shape)):
        X = nnls_bpp(gram, rhs, x0)
        assert np.all(X >= 0)
        np.testing.assert_allclose(X, X_true, atol=1e-9)


def _unit_diagonal(G: np.ndarray) -> np.ndarray:
    s = 1.0 / np.sqrt(np.diag(G))
    return G * s[:, None] * s[None, :]


def test_spd_solve_singular_gives_min_norm_solution() -> None:
    rng = np.random.default_rng(0)
    C = rng.standard_normal((30, 6))
    C[:, 5] = C[:, 0] - 0.5 * C[:, 3]  # exact linear dependence, rounding-level pivot
    G = _unit_diagonal(C.T @ C)
    rhs = G @ rng.random((6, 4))
    x = _nnls._spd_solve(G, rhs)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x, np.linalg.pinv(G, rcond=1e-10) @ rhs, atol=1e-6)


def test_batched_cholesky_flags_singular_systems() -> None:
    rng = np.random.default_rng(1)
    C = rng.standard_normal((30, 5))
    good = _unit_diagonal(C.T @ C)
    C[:, 4] = C[:, 1] + C[:, 2] + 1e-8 * rng.standard_normal(30)  # pivot ~1e-16, not < 0
    singular = _unit_diagonal(C.T @ C)
    M = np.stack([good, singular, good], axis=-1)
    b = rng.standard_normal((5, 3))
    x, bad = _nnls._batched_cholesky_solve(M.copy(), b)
    np.testing.assert_array_equal(bad, [False, True, False])
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x[:, [0, 2]], np.linalg.solve(good, b[:, [0, 2]]), rtol=1e-10)
