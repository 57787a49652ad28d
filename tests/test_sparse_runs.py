"""Sparse V (CSR Zarr groups) with the same guarantees as dense V: run store, resume,
fingerprint, cluster memory check and distributed equality."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf import ConvergenceWarning, IncompatibleRunError, InvalidParameterError
from dnmf.io import write_csr_zarr

N, M, K, ROWS = 400, 50, 4, 64


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def make_sparse(seed: int = 0, n: int = N, m: int = M, density: float = 0.15) -> sp.csr_matrix:
    """Stored entries of a planted rank-4 product (plus noise) at random places."""
    rng = np.random.default_rng(seed)
    S = sp.random(n, m, density=density, random_state=rng, format="csr")
    W, H = rng.random((n, 4)), rng.random((4, m))
    rows = np.repeat(np.arange(n), np.diff(S.indptr))
    S.data = np.einsum("ij,ji->i", W[rows], H[:, S.indices]) + 0.05 * rng.random(S.nnz)
    return S


def model(**kw) -> dnmf.NMF:
    params = dict(random_state=3, tol=0.0, max_iter=12, panel_rows=ROWS, scheduler="threads")
    params.update(kw)
    return dnmf.NMF(K, **params)


@pytest.fixture(scope="module")
def V() -> sp.csr_matrix:
    return make_sparse()


@pytest.fixture(scope="module")
def store(V, tmp_path_factory) -> str:
    return write_csr_zarr(V, tmp_path_factory.mktemp("v") / "v.zarr", chunk_nnz=256)


@pytest.mark.parametrize(("solver", "beta_loss"),
                         [("hals", "frobenius"), ("mu", "kullback-leibler")])
def test_resume_on_csr_zarr_is_bit_for_bit(tmp_path, V, store, solver, beta_loss):
    kw = dict(solver=solver, beta_loss=beta_loss)
    ref = model(**kw)
    W_ref = ref.fit_transform(V)  # in memory, uninterrupted

    def interrupt(iteration, loss):
        if iteration == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        model(out=out, checkpoint_every=100, callback=interrupt, **kw).fit(store)
    run = dnmf.open_run(out)
    assert not run.complete and 6 <= run.iteration <= 7
    fp = run.fingerprint
    assert fp["shape"] == [N, M] and fp["nnz"] == V.nnz and fp["dtype"] == "<f8"
    assert fp["panel_bounds"].startswith("sha256:") and fp["sample"]["checksum"]
    resumed = dnmf.resume(out)
    assert resumed.complete and resumed.iteration == 12
    np.testing.assert_array_equal(resumed.W.compute(), W_ref)
    np.testing.assert_array_equal(resumed.H, ref.components_)
    assert resumed.loss_history == ref.loss_history_


def test_resume_refuses_a_different_sparse_V(tmp_path, V, store):
    out = tmp_path / "run"
    model(max_iter=3, out=out).fit(store)
    # Same structure, one value changed in the first panel (always sampled).
    changed = V.copy()
    changed.data[0] += 1.0
    with pytest.raises(IncompatibleRunError, match="content of V"):
        model(max_iter=5, out=out).fit(write_csr_zarr(changed, tmp_path / "a.zarr"))
    # One more stored entry in a middle row: nnz and the panel cuts differ.
    dense = V.toarray()
    row = N // 2
    dense[row, np.flatnonzero(dense[row] == 0)[0]] = 0.5
    with pytest.raises(IncompatibleRunError, match=r"nnz: \d+ \(run\) vs \d+ \(now\)") as info:
        model(max_iter=5, out=out).fit(write_csr_zarr(sp.csr_matrix(dense), tmp_path / "b.zarr"))
    assert "panel_bounds" in str(info.value)
    # The same V again continues the run.
    assert model(max_iter=5, out=out).fit(store).n_iter_ == 5


def test_sparse_fingerprint_is_the_same_in_memory_and_on_disk(V, store):
    from dnmf._estimator import _Prepared
    from dnmf._run import _fingerprint

    prints = []
    for X in (V, store):
        prep = _Prepared(X, "threads", ROWS, regular=True, scan=False)
        prints.append(_fingerprint(prep, prep.bounds))
    assert prints[0]["nnz"] == prints[1]["nnz"] == V.nnz
    assert prints[0]["panel_bounds"] == prints[1]["panel_bounds"]
    assert prints[0]["sample"] == prints[1]["sample"]


def test_cluster_memory_check_counts_sparse_panels_by_stored_entries(tmp_path):
    distributed = pytest.importorskip("distributed")
    # 2000 rows × 20 entries: one panel of 40 000 entries × 12 bytes ≈ 480 kB.
    S = sp.random(2000, 400, density=0.05, random_state=0, format="csr", dtype=np.float64)
    path = write_csr_zarr(S, tmp_path / "s.zarr")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  memory_limit="1 MB", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(InvalidParameterError, match="too little for a sparse panel"):
            dnmf.NMF(3, max_iter=2, scheduler=client).fit(path)
        with pytest.raises(InvalidParameterError, match="sparse panel"):
            dnmf.NMF(3, max_iter=2, scheduler=client).fit(S)
        # Panels small enough pass the check (no fit: a 1 MB worker would pause).
        from dnmf._estimator import _Prepared

        prep = _Prepared(path, client, 100, scan=False)
        assert prep._sparse_panel_bytes() < 100_000


def test_distributed_fit_of_csr_zarr_equals_threads(tmp_path, V, store, distributed_client):
    kw = dict(solver="mu", beta_loss="kullback-leibler", max_iter=10)
    threads = model(**kw)
    W_threads = np.asarray(threads.fit_transform(store))
    on_cluster = model(scheduler=distributed_client, out=tmp_path / "run", **kw)
    W_cluster = distributed_client.compute(on_cluster.fit_transform(store)).result()
    np.testing.assert_allclose(W_cluster, W_threads, rtol=1e-10)
    np.testing.assert_allclose(on_cluster.components_, threads.components_, rtol=1e-10)
    np.testing.assert_allclose(on_cluster.loss_history_, threads.loss_history_, rtol=1e-10)
    hals = model(solver="hals", max_iter=10)
    W_hals = np.asarray(hals.fit_transform(store))
    W_hals_cluster = distributed_client.compute(
        model(solver="hals", max_iter=10, scheduler=distributed_client).fit_transform(store)
    ).result()
    np.testing.assert_allclose(W_hals_cluster, W_hals, rtol=1e-10)
