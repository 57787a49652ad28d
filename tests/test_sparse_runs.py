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


def interrupted_at(iteration: int, X, out, **kw) -> dnmf.Run:
    """Fit into ``out`` until a Ctrl-C at ``iteration``; the run as committed then."""

    def interrupt(it, loss):
        if it == iteration:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model(out=out, checkpoint_every=100, callback=interrupt, **kw).fit(X)
    return dnmf.open_run(out)


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

    out = tmp_path / "run"
    run = interrupted_at(7, store, out, **kw)
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
    from dnmf._prepared import PreparedInput as _Prepared
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
        from dnmf._prepared import PreparedInput as _Prepared

        prep = _Prepared(path, client, 100, scan=False)
        assert prep._sparse_panel_bytes() < 100_000


@pytest.mark.heavy  # suite time; test_estimator's cluster tests stay
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


def skewed(seed: int = 1) -> sp.csr_matrix:
    """100 dense rows, then 900 sparse ones: equal-row panels would be lopsided."""
    rng = np.random.default_rng(seed)
    top = sp.random(100, 200, density=0.9, random_state=rng, format="csr")
    rest = sp.random(900, 200, density=0.02, random_state=rng, format="csr")
    return sp.vstack([top, rest], format="csr")


@pytest.mark.heavy  # suite time; csr resume and panel-cut tests stay
def test_run_store_keeps_panels_cut_by_stored_entries_and_resumes(tmp_path):
    V = skewed()
    path = write_csr_zarr(V, tmp_path / "skewed.zarr", chunk_nnz=512)
    budget = 32 * 2**10  # bytes of values + column indices per panel
    kw = dict(solver="hals", max_iter=6, panel_rows=None, panel_bytes=budget)
    whole = model(out=tmp_path / "whole", **kw)
    W_whole = np.asarray(whole.fit_transform(path))

    out = tmp_path / "run"
    run = interrupted_at(3, path, out, **kw)
    starts = run.params["panel_starts"]
    unit = run.params["panel_rows"]
    bounds = list(zip(starts, [*starts[1:], V.shape[0]]))
    sizes = [b - a for a, b in bounds]
    per_entry = V.data.itemsize + V.indices.itemsize
    stored = [(V.indptr[b] - V.indptr[a]) * per_entry for a, b in bounds]
    # Short panels over the dense rows, long ones over the sparse rows; every panel
    # within the budget but for the rows the W chunk grid moved its edges by.
    assert len(bounds) >= 4 and min(sizes) < max(sizes) / 4, sizes
    assert all(a % unit == 0 for a in starts)
    row_max = int(np.diff(V.indptr).max()) * per_entry
    assert max(stored) <= budget + unit * row_max, (stored, unit)
    assert run.W.chunks[0] == tuple(sizes)
    resumed = dnmf.resume(out)
    assert resumed.complete and resumed.iteration == 6
    np.testing.assert_array_equal(resumed.W.compute(), W_whole)
    np.testing.assert_array_equal(resumed.H, whole.components_)
    assert resumed.loss_history == whole.loss_history_
    # W reads back with zarr alone, chunked by the unit.
    import zarr

    array_name = resumed.manifest["W"]["array"]
    W_plain = zarr.open_array(str(out / array_name), mode="r")
    assert W_plain.chunks[0] == unit
    # The arrays hold the iterate; the result is it balanced by the manifest's scale.
    scale = np.asarray(resumed.manifest["balance"])
    np.testing.assert_array_equal(W_plain[...] * scale.astype(W_plain.dtype), W_whole)
    # The same fit in memory (panels not snapped to a grid): the same answer up to
    # the order of the panel sums.
    W_mem = model(**kw).fit_transform(path)
    np.testing.assert_allclose(np.asarray(W_mem), W_whole, rtol=1e-9, atol=1e-12)


def test_panel_rows_and_panel_bytes_are_exclusive():
    with pytest.raises(InvalidParameterError, match="Give one of them"):
        dnmf.NMF(2, panel_rows=10, panel_bytes=2**20).fit(np.ones((20, 5)))
    with pytest.raises(InvalidParameterError, match="panel_bytes"):
        dnmf.NMF(2, panel_bytes=0).fit(np.ones((20, 5)))


def test_resume_with_other_panels_names_the_difference(tmp_path):
    path = write_csr_zarr(skewed(), tmp_path / "skewed.zarr", chunk_nnz=512)
    out = tmp_path / "run"
    model(out=out, max_iter=2, panel_rows=None, panel_bytes=32 * 2**10).fit(path)
    with pytest.raises(IncompatibleRunError, match=r"panels: .* cut by stored entries"):
        model(out=out, max_iter=3, panel_rows=100).fit(path)
    # Without a panel choice the run's own panels are used, whatever the default.
    assert model(out=out, max_iter=3, panel_rows=None).fit(path).n_iter_ == 3
