"""scikit-learn's MiniBatchNMF tests, run on dnmf.MiniBatchNMF.

Origin: scikit-learn 1.9.1, sklearn/decomposition/tests/test_nmf.py (BSD-3-Clause,
the scikit-learn developers). Every test there that involves ``MiniBatchNMF`` is
ported below under its own name, with ``MiniBatchNMF`` meaning dnmf's class; in tests
shared with ``NMF`` only the MiniBatchNMF case is kept here (NMF's cases are ported
with dnmf.NMF in tests/test_sklearn_nmf.py by the NMF work).

Changed, message wording only:
- test_parameter_checking: scikit-learn writes "init = 'nndsvd' can only be used
  when ..."; dnmf writes "init='nndsvd' can only be used when ..." and adds the data's
  shape and the fix. The test matches the shared part of the sentence.

Changed, references only:
- test_nmf_minibatchnmf_equivalence compares with dnmf.NMF(solver="mu") for the β it
  supports and, for every β, with scikit-learn's NMF(solver="mu") from the same
  custom start (dnmf's NNDSVD start is not scikit-learn's, so the comparison needs
  one start for both).
- test_minibatch_nmf_partial_fit: scikit-learn's version passes only because its
  fit and partial_fit update the caller's H in place, so both models end up holding
  the very same array (it compares an array with itself; dnmf copies its inputs).
  The port states the equivalence that does hold: fresh restarts (partial_fit
  always solves W afresh), forget_factor=1 (rho is forget_factor ** (batch / n),
  and n is the batch for partial_fit), tol=0, and the batches X[10j:10j+10] that fit
  visits (the original passes the overlapping X[j:j+10]). scikit-learn's own class
  passes this version too, bit for bit.

Left out: nothing else involves MiniBatchNMF. Added at the end (not from
scikit-learn): check_estimator, the same answer as scikit-learn's own MiniBatchNMF
from the same start for every β, dense = sparse = Dask = Zarr, feature names out.
"""

from __future__ import annotations

import re
import sys
import warnings
from io import StringIO

import numpy as np
import pytest
from scipy import linalg
from sklearn.base import clone
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import MiniBatchNMF as SkMiniBatchNMF
from sklearn.decomposition import _nmf as sknmf
from sklearn.utils._testing import assert_allclose, assert_array_equal
from sklearn.utils.fixes import CSC_CONTAINERS, CSR_CONTAINERS

import dnmf
import dnmf.io
from dnmf import ConvergenceWarning, MiniBatchNMF


def test_convergence_warning():
    convergence_warning = (
        "Maximum number of iterations 1 reached. Increase it to improve convergence."
    )
    A = np.ones((2, 2))
    with pytest.warns(ConvergenceWarning, match=convergence_warning):
        MiniBatchNMF(max_iter=1, n_components="auto").fit(A)


def test_parameter_checking():
    A = np.ones((2, 2))
    for init in ["nndsvd", "nndsvda", "nndsvdar"]:
        # wording: see the module docstring
        msg = re.escape(
            f"init={init!r} can only be used when "
            "n_components <= min(n_samples, n_features)"
        )
        with pytest.raises(ValueError, match=msg):
            MiniBatchNMF(3, init=init).fit(A)


@pytest.mark.parametrize("init", (None, "nndsvd", "nndsvda", "nndsvdar", "random"))
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", (0.0, 1.0, "same"))
def test_nmf_fit_nn_output(init, alpha_W, alpha_H):
    A = np.c_[5.0 - np.arange(1, 6), 5.0 + np.arange(1, 6)]
    model = MiniBatchNMF(
        n_components=2, init=init, alpha_W=alpha_W, alpha_H=alpha_H, random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        transf = model.fit_transform(A)
    assert not ((model.components_ < 0).any() or (transf < 0).any())


def test_nmf_fit_close():
    rng = np.random.mtrand.RandomState(42)
    pnmf = MiniBatchNMF(5, init="nndsvdar", random_state=0, max_iter=600)
    X = np.abs(rng.randn(6, 5))
    assert pnmf.fit(X).reconstruction_err_ < 0.1


def test_nmf_true_reconstruction():
    n_samples, n_features, n_components = 15, 10, 5
    beta_loss, batch_size, max_iter = 1, 3, 1000
    rng = np.random.mtrand.RandomState(42)
    W_true = np.zeros([n_samples, n_components])
    W_array = np.abs(rng.randn(n_samples))
    for j in range(n_components):
        W_true[j % n_samples, j] = W_array[j % n_samples]
    H_true = np.zeros([n_components, n_features])
    H_array = np.abs(rng.randn(n_components))
    for j in range(n_features):
        H_true[j % n_components, j] = H_array[j % n_components]
    X = np.dot(W_true, H_true)

    mbmodel = MiniBatchNMF(
        n_components=n_components, beta_loss=beta_loss, batch_size=batch_size,
        random_state=0, max_iter=max_iter,
    )
    transf = mbmodel.fit_transform(X)
    X_calc = np.dot(transf, mbmodel.components_)
    assert mbmodel.reconstruction_err_ < 0.1
    assert_allclose(X, X_calc, atol=1)


def test_minibatch_nmf_transform():
    rng = np.random.mtrand.RandomState(42)
    A = np.abs(rng.randn(6, 5))
    m = MiniBatchNMF(n_components=3, random_state=0, tol=1e-3, fresh_restarts=True)
    ft = m.fit_transform(A)
    t = m.transform(A)
    assert_allclose(ft, t)


def test_nmf_transform_custom_init():
    random_state = np.random.RandomState(0)
    A = np.abs(random_state.randn(6, 5))
    n_components = 4
    avg = np.sqrt(A.mean() / n_components)
    H_init = np.abs(avg * random_state.randn(n_components, 5))
    W_init = np.abs(avg * random_state.randn(6, n_components))
    m = MiniBatchNMF(n_components=n_components, init="custom", random_state=0, tol=1e-3)
    m.fit_transform(A, W=W_init, H=H_init)
    m.transform(A)


def test_mbnmf_inverse_transform():
    rng = np.random.RandomState(0)
    A = np.abs(rng.randn(6, 4))
    nmf = MiniBatchNMF(random_state=rng, max_iter=500, init="nndsvdar", fresh_restarts=True)
    ft = nmf.fit_transform(A)
    A_new = nmf.inverse_transform(ft)
    assert_allclose(A, A_new, rtol=1e-3, atol=1e-2)


def test_n_components_greater_n_features():
    rng = np.random.mtrand.RandomState(42)
    A = np.abs(rng.randn(30, 10))
    MiniBatchNMF(n_components=15, random_state=0, tol=1e-2).fit(A)


@pytest.mark.parametrize("sparse_container", CSC_CONTAINERS + CSR_CONTAINERS)
@pytest.mark.parametrize("alpha_W", (0.0, 1.0))
@pytest.mark.parametrize("alpha_H", (0.0, 1.0, "same"))
def test_nmf_sparse_input(sparse_container, alpha_W, alpha_H):
    rng = np.random.mtrand.RandomState(42)
    A = np.abs(rng.randn(10, 10))
    A[:, 2 * np.arange(5)] = 0
    A_sparse = sparse_container(A)
    est1 = MiniBatchNMF(
        n_components=5, init="random", alpha_W=alpha_W, alpha_H=alpha_H, random_state=0,
        tol=0, max_iter=100,
    )
    est2 = clone(est1)
    W1 = est1.fit_transform(A)
    W2 = est2.fit_transform(A_sparse)
    assert_allclose(W1, W2)
    assert_allclose(est1.components_, est2.components_)


@pytest.mark.parametrize("csc_container", CSC_CONTAINERS)
def test_nmf_sparse_transform(csc_container):
    rng = np.random.mtrand.RandomState(42)
    A = np.abs(rng.randn(3, 2))
    A[1, 1] = 0
    A = csc_container(A)
    model = MiniBatchNMF(random_state=0, n_components=2, max_iter=400)
    A_fit_tr = model.fit_transform(A)
    A_tr = model.transform(A)
    assert_allclose(A_fit_tr, A_tr, atol=1e-1)


@pytest.mark.parametrize("beta_loss", [-0.5, 0.0])
def test_minibatch_nmf_negative_beta_loss(beta_loss):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(6, 5))
    X[X < 0] = 0
    nmf = MiniBatchNMF(beta_loss=beta_loss, random_state=0)
    msg = "When beta_loss <= 0 and X contains zeros, the solver may diverge."
    with pytest.raises(ValueError, match=msg):
        nmf.fit(X)


def test_nmf_regularization():
    n_samples, n_features, n_components = 6, 5, 3
    rng = np.random.mtrand.RandomState(42)
    X = np.abs(rng.randn(n_samples, n_features))

    l1_ratio = 1.0
    regul = MiniBatchNMF(n_components=n_components, alpha_W=0.5, l1_ratio=l1_ratio,
                         random_state=42)
    model = MiniBatchNMF(n_components=n_components, alpha_W=0.0, l1_ratio=l1_ratio,
                         random_state=42)
    W_regul = regul.fit_transform(X)
    W_model = model.fit_transform(X)
    H_regul, H_model = regul.components_, model.components_
    eps = np.finfo(np.float64).eps
    assert W_regul[W_regul <= eps].size > W_model[W_model <= eps].size
    assert H_regul[H_regul <= eps].size > H_model[H_model <= eps].size

    l1_ratio = 0.0
    regul = MiniBatchNMF(n_components=n_components, alpha_W=0.5, l1_ratio=l1_ratio,
                         random_state=42)
    model = MiniBatchNMF(n_components=n_components, alpha_W=0.0, l1_ratio=l1_ratio,
                         random_state=42)
    W_regul = regul.fit_transform(X)
    W_model = model.fit_transform(X)
    H_regul, H_model = regul.components_, model.components_
    assert (linalg.norm(W_model)) ** 2.0 + (linalg.norm(H_model)) ** 2.0 > (
        linalg.norm(W_regul)
    ) ** 2.0 + (linalg.norm(H_regul)) ** 2.0


@pytest.mark.parametrize(
    "dtype_in, dtype_out",
    [(np.float32, np.float32), (np.float64, np.float64), (np.int32, np.float64),
     (np.int64, np.float64)],
)
def test_nmf_dtype_match(dtype_in, dtype_out):
    X = np.random.RandomState(0).randn(20, 15).astype(dtype_in, copy=False)
    np.abs(X, out=X)
    nmf = MiniBatchNMF(alpha_W=1.0, alpha_H=1.0, tol=1e-2, random_state=0)
    assert nmf.fit(X).transform(X).dtype == dtype_out
    assert nmf.fit_transform(X).dtype == dtype_out
    assert nmf.components_.dtype == dtype_out


def test_nmf_float32_float64_consistency():
    X = np.random.RandomState(0).randn(50, 7)
    np.abs(X, out=X)
    nmf32 = MiniBatchNMF(random_state=0, tol=1e-3)
    W32 = nmf32.fit_transform(X.astype(np.float32))
    nmf64 = MiniBatchNMF(random_state=0, tol=1e-3)
    W64 = nmf64.fit_transform(X)
    assert_allclose(W32, W64, atol=1e-5)


def test_nmf_custom_init_dtype_error():
    rng = np.random.RandomState(0)
    X = rng.random_sample((20, 15))
    H = rng.random_sample((15, 15)).astype(np.float32)
    W = rng.random_sample((20, 15))
    with pytest.raises(TypeError, match="should have the same dtype as X"):
        MiniBatchNMF(init="custom").fit(X, H=H, W=W)


def _dnmf_nmf_supports(beta_loss) -> bool:
    try:
        dnmf.NMF(solver="mu", beta_loss=beta_loss)._checked()
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("beta_loss", [-0.5, 0, 0.5, 1, 1.5, 2, 2.5])
def test_nmf_minibatchnmf_equivalence(beta_loss):
    # MiniBatchNMF with batch_size = n_samples and forget_factor 0 is NMF's MU.
    rng = np.random.mtrand.RandomState(42)
    X = np.abs(rng.randn(48, 5))
    mb_params = dict(n_components=5, beta_loss=beta_loss, random_state=0, tol=0,
                     max_no_improvement=None, batch_size=X.shape[0], forget_factor=0.0)
    if _dnmf_nmf_supports(beta_loss):
        nmf = dnmf.NMF(n_components=5, beta_loss=beta_loss, solver="mu", random_state=0,
                       tol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            W = nmf.fit_transform(X)
        mbW = MiniBatchNMF(**mb_params).fit_transform(X)
        assert_allclose(W, mbW)
    # the same start for scikit-learn's NMF and dnmf's MiniBatchNMF
    W0, H0 = sknmf._initialize_nmf(X, 5, init="nndsvda", random_state=0)
    sk = SkNMF(n_components=5, beta_loss=beta_loss, solver="mu", init="custom", tol=0,
               max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
    mbW = MiniBatchNMF(**{**mb_params, "init": "custom"}).fit_transform(
        X, W=W0.copy(), H=H0.copy())
    assert_allclose(W_sk, mbW)


def test_minibatch_nmf_partial_fit():
    # Check fit / partial_fit equivalence (see the module docstring for the changes).
    rng = np.random.mtrand.RandomState(42)
    X = np.abs(rng.randn(100, 5))
    n_components, batch_size, max_iter = 5, 10, 2
    same = dict(n_components=n_components, init="custom", random_state=0, tol=0,
                forget_factor=1.0, fresh_restarts=True)
    mbnmf1 = MiniBatchNMF(**same, max_iter=max_iter, batch_size=batch_size,
                          max_no_improvement=None)
    mbnmf2 = MiniBatchNMF(**same)
    W, H = sknmf._initialize_nmf(X, n_components=n_components, init="random",
                                 random_state=0)
    mbnmf1.fit(X, W=W.copy(), H=H.copy())
    for _i in range(max_iter):
        for j in range(batch_size):
            batch = slice(j * batch_size, (j + 1) * batch_size)
            mbnmf2.partial_fit(X[batch], W=W[:batch_size].copy(), H=H.copy())
    assert mbnmf1.n_steps_ == mbnmf2.n_steps_
    assert_allclose(mbnmf1.components_, mbnmf2.components_)
    assert not np.allclose(mbnmf1.components_, H)  # (added) H moved from its start


def test_minibatch_nmf_verbose():
    A = np.random.RandomState(0).random_sample((100, 10))
    nmf = MiniBatchNMF(tol=1e-2, random_state=0, verbose=1)
    old_stdout = sys.stdout
    sys.stdout = StringIO()
    try:
        nmf.fit(A)
        printed = sys.stdout.getvalue()
    finally:
        sys.stdout = old_stdout
    assert "Minibatch step 1/" in printed  # (added: the output is checked too)


def test_nmf_n_components_auto():
    rng = np.random.RandomState(0)
    X = rng.random_sample((6, 5))
    W = rng.random_sample((6, 2))
    H = rng.random_sample((2, 5))
    est = MiniBatchNMF(n_components="auto", init="custom", random_state=0, tol=1e-6)
    est.fit_transform(X, W=W, H=H)
    assert est._n_components == H.shape[0]


# ---------------------------------------------------------------- added by dnmf
def test_check_estimator():
    # With the parameters scikit-learn's own common tests give its MiniBatchNMF
    # (sklearn/utils/_test_common/instance_generator.py): fit_transform equals
    # transform only with fresh restarts.
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(MiniBatchNMF(batch_size=10, max_iter=20, fresh_restarts=True))


@pytest.mark.parametrize("beta_loss", [-0.5, 0, 0.5, 1, 1.5, 2, 2.5])
@pytest.mark.parametrize("fresh_restarts", [False, True])
def test_same_as_scikit_learn_from_the_same_start(beta_loss, fresh_restarts):
    # dnmf's steps follow scikit-learn's MiniBatchNMF: the same start, the same
    # batches, the same stopping rules give the same factors (up to rounding).
    rng = np.random.RandomState(3)
    X = np.abs(rng.randn(90, 12)) + 0.1
    W0, H0 = sknmf._initialize_nmf(X, 4, init="random", random_state=0)
    params = dict(n_components=4, init="custom", batch_size=16, beta_loss=beta_loss,
                  max_iter=15, forget_factor=0.8, fresh_restarts=fresh_restarts,
                  alpha_W=0.01, l1_ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkMiniBatchNMF(**params)
        W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
        ours = MiniBatchNMF(**params)
        W_ours = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert ours.n_steps_ == sk.n_steps_ and ours.n_iter_ == sk.n_iter_
    assert_allclose(ours.components_, sk.components_, rtol=1e-6, atol=1e-9)
    assert_allclose(W_ours, W_sk, rtol=1e-6, atol=1e-9)
    assert_allclose(ours.reconstruction_err_, sk.reconstruction_err_, rtol=1e-8)


@pytest.mark.parametrize("beta_loss", [2, 1, 0.5])
def test_dense_sparse_dask_zarr_agree(tmp_path, beta_loss):
    import dask.array as da
    import scipy.sparse as sp
    import zarr

    rng = np.random.RandomState(0)
    X = np.abs(rng.randn(200, 16))
    X[X < 0.5] = 0
    X = X.astype(np.float32)
    z = zarr.create_array(store=str(tmp_path / "X.zarr"), shape=X.shape, chunks=(50, 16),
                          dtype=X.dtype)
    z[...] = X
    path = str(tmp_path / "csr.zarr")
    dnmf.io.write_csr_zarr(sp.csr_matrix(X), path)
    params = dict(n_components=3, init="random", batch_size=64, beta_loss=beta_loss,
                  max_iter=8, random_state=0)
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, data in [("numpy", X), ("sparse", sp.csr_matrix(X)),
                           ("dask", da.from_array(X, chunks=(30, 16))), ("zarr", z),
                           ("path", str(tmp_path / "X.zarr")), ("zarr-csr", path)]:
            est = MiniBatchNMF(**params)
            results[name] = (est.fit_transform(data), est.components_,
                             est.reconstruction_err_, est.n_steps_)
    W, H, err, n_steps = results["numpy"]
    for name, (W_x, H_x, err_x, steps_x) in results.items():
        assert steps_x == n_steps, name
        # dense sources read the same float32 rows: the same bytes in, the same out
        if name in ("dask", "zarr", "path"):
            assert_array_equal(W_x, W, err_msg=name)
            assert_array_equal(H_x, H, err_msg=name)
        else:
            assert_allclose(W_x, W, rtol=2e-4, atol=1e-5, err_msg=name)
            assert_allclose(H_x, H, rtol=2e-4, atol=1e-5, err_msg=name)
        assert_allclose(err_x, err, rtol=1e-4, err_msg=name)


def test_feature_names_out():
    X = np.abs(np.random.RandomState(0).randn(10, 4))
    est = MiniBatchNMF(n_components=3, random_state=0).fit(X)
    assert_array_equal([f"minibatchnmf{i}" for i in range(3)], est.get_feature_names_out())
