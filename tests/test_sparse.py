"""Sparse V: SciPy CSR in memory and CSR Zarr groups (the AnnData on-disk encoding)."""

from __future__ import annotations

import itertools
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf
import dnmf._source as source_mod
from dnmf import InvalidInputError
from dnmf._source import CSRPanel, as_source
from dnmf.io import write_csr_zarr

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import NMF as SkNMF  # noqa: E402

SOLVERS = [("mu", "frobenius"), ("hals", "frobenius"), ("als", "frobenius"),
           ("mu", "kullback-leibler")]


def _sparse(n=90, m=40, density=0.3, seed=0):
    """A non-negative CSR matrix with a low-rank pattern on its stored entries."""
    rng = np.random.default_rng(seed)
    low_rank = rng.random((n, 4)) @ rng.random((4, m))
    mask = rng.random((n, m)) < density
    return sp.csr_matrix(np.where(mask, low_rank, 0.0))


def _start(V, k, seed=0):
    rng = np.random.default_rng(seed)
    avg = np.sqrt(V.sum() / (V.shape[0] * V.shape[1]) / k)
    return avg * rng.random((V.shape[0], k)), avg * rng.random((k, V.shape[1]))


def _fit(X, W0, H0, solver, beta_loss, max_iter=15, **kw):
    est = dnmf.NMF(W0.shape[1], solver=solver, beta_loss=beta_loss, init="custom",
                   max_iter=max_iter, tol=0.0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = est.fit_transform(X, W=W0.copy(), H=H0.copy())
    return np.asarray(W), est


def _group(path, data, indices, indptr, shape, **attrs):
    """A CSR group written with zarr alone."""
    g = zarr.open_group(store=str(path), mode="w")
    g.create_array("data", data=np.asarray(data, dtype=np.float64))
    g.create_array("indices", data=np.asarray(indices, dtype=np.int32))
    g.create_array("indptr", data=np.asarray(indptr, dtype=np.int64))
    g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                    "shape": list(shape), **attrs})
    return str(path)


# ------------------------------------------------------------------ same answer
@pytest.mark.parametrize("solver,beta_loss", SOLVERS)
def test_sparse_and_dense_forms_give_the_same_answer(tmp_path, monkeypatch, solver,
                                                    beta_loss):
    V = _sparse()
    # HALS chooses its number of inner sweeps from nnz (a cost model): give the dense
    # form the same count so that both run the same schedule of arithmetic.
    monkeypatch.setattr(source_mod.PanelSource, "nnz", property(lambda self: V.nnz))
    W0, H0 = _start(V, 4)
    path = write_csr_zarr(V, tmp_path / "v.zarr", chunk_nnz=97)
    W_dense, dense = _fit(V.toarray(), W0, H0, solver, beta_loss, panel_rows=32)
    for X in (V, path):
        W, est = _fit(X, W0, H0, solver, beta_loss, panel_rows=32)
        np.testing.assert_allclose(W, W_dense, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(est.components_, dense.components_, rtol=1e-10,
                                   atol=1e-13)
        assert est.reconstruction_err_ == pytest.approx(dense.reconstruction_err_,
                                                        rel=1e-10)


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
def test_mu_matches_scikit_learn_on_sparse_input(tmp_path, beta_loss):
    V = _sparse(120, 50, density=0.2, seed=1)
    W0, H0 = _start(V, 5, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkNMF(5, solver="mu", beta_loss=beta_loss, init="custom", max_iter=25,
                    tol=0.0)
        W_ref = ref.fit_transform(V, W=W0.copy(), H=H0.copy())
    path = write_csr_zarr(V, tmp_path / "v.zarr")
    for X in (V, path):
        W, est = _fit(X, W0, H0, "mu", beta_loss, max_iter=25)
        np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(est.components_, ref.components_, rtol=1e-8,
                                   atol=1e-12)


def test_anndata_layout_store_opens_and_fits(tmp_path):
    V = _sparse(60, 30, seed=2)
    root = zarr.open_group(store=str(tmp_path / "cells.zarr"), mode="w")
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    X = root.create_group("X")
    X.create_array("data", data=V.data.astype(np.float32))
    X.create_array("indices", data=V.indices.astype(np.int32))
    X.create_array("indptr", data=V.indptr.astype(np.int64))
    X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                    "shape": [60, 30]})
    for name in ("obs", "var"):
        df = root.create_group(name)
        df.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                         "_index": "_index", "column-order": []})
    source = as_source(str(tmp_path / "cells.zarr" / "X"))
    assert (source.kind, source.shape, source.dtype, source.nnz) == (
        "zarr-csr", (60, 30), np.float32, V.nnz)
    # The group object itself works too.
    assert as_source(root["X"]).kind == "zarr-csr"
    est = dnmf.NMF(3, init="nndsvda", max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = np.asarray(est.fit_transform(str(tmp_path / "cells.zarr" / "X")))
    assert W.shape == (60, 3) and W.dtype == np.float32 and (W >= 0).all()
    assert est.reconstruction_err_ < 0.9 * sp.linalg.norm(V)
    # The root of the store is not a matrix: the message points at X.
    with pytest.raises(InvalidInputError, match=r"CSR matrix member: give .*cells.zarr/X"):
        as_source(str(tmp_path / "cells.zarr"))


# ------------------------------------------------------------------ malformed
MALFORMED = [
    # (data, indices, indptr, shape, message)
    ([1.0, 2.0], [0, 1], [0, 1, 2], (3, 4), r"indptr has length 3, but .* 3 rows needs"),
    ([1.0, 2.0], [0, 1], [0, 2, 1, 2], (3, 4), r"indptr decreases at row 1"),
    ([1.0, 2.0], [0, 1], [1, 1, 2, 2], (3, 4), r"indptr\[0\] is 1, not 0"),
    ([1.0, 2.0, 3.0], [0, 1, 2], [0, 1, 2, 2], (3, 4),
     r"indptr\[-1\] is 2, but data has 3 stored entries"),
    ([1.0, 2.0], [0, 1, 2], [0, 1, 2, 2], (3, 4), r"indices has length 3 but data"),
    ([1.0, 2.0], [0, 4], [0, 1, 2, 2], (3, 4), r"indices holds column 4 \(row 1"),
    ([1.0, 2.0], [-1, 0], [0, 1, 2, 2], (3, 4), r"indices holds column -1 \(row 0"),
    ([1.0], [0], [0, 1], [1], r"attribute 'shape' must be \[n_rows, n_cols\]"),
]


@pytest.mark.parametrize("data,indices,indptr,shape,message", MALFORMED)
def test_malformed_csr_group_is_refused(tmp_path, data, indices, indptr, shape, message):
    g = zarr.open_group(store=str(tmp_path / "bad.zarr"), mode="w")
    g.create_array("data", data=np.asarray(data, dtype=np.float64))
    g.create_array("indices", data=np.asarray(indices, dtype=np.int32))
    g.create_array("indptr", data=np.asarray(indptr, dtype=np.int64))
    g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                    "shape": list(shape)})
    with pytest.raises(InvalidInputError, match=message):
        dnmf.NMF(1, max_iter=1).fit(str(tmp_path / "bad.zarr"))


def test_missing_member_and_other_encodings_are_refused(tmp_path):
    g = zarr.open_group(store=str(tmp_path / "a.zarr"), mode="w")
    g.create_array("data", data=np.ones(1))
    g.attrs.update({"encoding-type": "csr_matrix", "shape": [1, 1]})
    with pytest.raises(InvalidInputError, match=r"'indices' is missing"):
        as_source(str(tmp_path / "a.zarr"))
    g.attrs["encoding-type"] = "csc_matrix"
    with pytest.raises(InvalidInputError, match=r"convert to CSR first"):
        as_source(g)
    g.attrs["encoding-type"] = "dataframe"
    with pytest.raises(InvalidInputError, match=r"group without a CSR encoding"):
        as_source(str(tmp_path / "a.zarr"))


def test_unsorted_and_duplicate_columns_are_summed(tmp_path):
    # Row 0: columns 2, 0, 2 (unsorted, duplicate); row 1 empty; row 2: column 1.
    path = _group(tmp_path / "v.zarr", [1.0, 2.0, 3.0, 4.0], [2, 0, 2, 1], [0, 3, 3, 4],
                  (3, 3))
    source = as_source(path)
    panel = source.panel_refs([(0, 3)])[0].load()
    assert panel.has_canonical_format
    np.testing.assert_array_equal(panel.toarray(), [[2, 0, 4], [0, 0, 0], [0, 4, 0]])


@pytest.mark.parametrize("bad,message", [(-1.0, "Negative values"),
                                         (np.nan, "NaN or infinity"),
                                         (np.inf, "NaN or infinity")])
def test_bad_values_report_their_global_position(tmp_path, bad, message):
    V = _sparse(80, 20, seed=3).tolil()
    V[61, 7] = bad
    path = write_csr_zarr(V.tocsr(), tmp_path / "v.zarr")
    with pytest.raises(InvalidInputError, match=message + r".*row 61, column 7"):
        dnmf.NMF(2, panel_rows=25, max_iter=1).fit(path)


# ------------------------------------------------------------------ panels
def test_panels_are_cut_by_stored_entries(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    n, m = 400, 200
    dense_rows = np.arange(300, 310)
    mask = rng.random((n, m)) < 0.02
    mask[dense_rows] = True
    V = sp.csr_matrix(np.where(mask, rng.random((n, m)) + 0.1, 0.0))
    source = as_source(write_csr_zarr(V, tmp_path / "v.zarr", chunk_nnz=256))
    budget = 8 * 1024
    monkeypatch.setattr(source_mod, "DEFAULT_PANEL_BYTES", budget)
    bounds = source.panel_bounds(None, 2)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a == prev_b for (_, prev_b), (a, _) in itertools.pairwise(bounds))
    per_entry = 8 + 4
    sizes = [(b - a, (V.indptr[b] - V.indptr[a]) * per_entry) for a, b in bounds]
    assert all(nbytes <= budget or rows == 1 for rows, nbytes in sizes)
    heights = {a: b - a for a, b in bounds}
    in_dense = [h for a, h in heights.items() if 300 <= a < 310]
    sparse_part = [h for a, h in heights.items() if a + h <= 300]
    assert in_dense and max(in_dense) < min(sparse_part)
    assert len(bounds) > 2
    # The panels reassemble V.
    panels = [r.load() for r in source.panel_refs(bounds)]
    assert (sp.vstack(panels) != V).nnz == 0


class _Counting:
    """A Zarr array wrapper that counts the bytes its slices return."""

    def __init__(self, array, log):
        self.array, self.log = array, log

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.log.append(out.nbytes)
        return out


def test_a_panel_reads_only_its_slice(tmp_path):
    V = _sparse(400, 60, density=0.25, seed=5)
    source = as_source(write_csr_zarr(V, tmp_path / "v.zarr", chunk_nnz=64))
    bounds = source.panel_bounds(40, 1)
    ref = source.panel_refs(bounds)[3]
    ref = pickle.loads(pickle.dumps(ref))  # a task receives it pickled
    log: list[int] = []
    counted = CSRPanel(_Counting(ref.data, log), _Counting(ref.indices, log),
                       _Counting(ref.indptr, log), ref.start, ref.stop, ref.n_cols,
                       ref.dtype)
    panel = counted.load()
    assert (panel != V[120:160]).nnz == 0
    a, b = 120, 160
    expected = (b - a + 1) * 8 + (V.indptr[b] - V.indptr[a]) * (8 + 4)
    assert sum(log) == expected
    total = V.data.nbytes + V.indices.astype(np.int32).nbytes + (V.shape[0] + 1) * 8
    assert sum(log) < total / 8


def _reference_csr_bounds(indptr, bytes_per_entry, n_threads, budget):
    """The bounds rule on an indptr held whole in memory (the previous implementation)."""
    import math

    n = len(indptr) - 1
    cum = indptr.astype(np.float64) * bytes_per_entry + 8.0 * np.arange(n + 1)
    total = float(cum[-1])
    n_panels = max(math.ceil(total / budget), 1)
    if n_panels < n_threads and n >= 2 * n_threads and total >= source_mod.MIN_SPLIT_BYTES:
        n_panels = n_threads
    elif n_panels > n_threads > 1:
        n_panels = math.ceil(n_panels / n_threads) * n_threads
    n_panels = min(n_panels, n)
    cuts = np.searchsorted(cum, total * np.arange(1, n_panels) / n_panels, side="left")
    edges = np.unique(np.concatenate(([0], np.clip(cuts, 1, n), [n])))
    out = []
    for a, b in itertools.pairwise(edges.tolist()):
        while b - a > 1 and cum[b] - cum[a] > budget:
            c = min(max(int(np.searchsorted(cum, cum[a] + budget, side="right")) - 1, a + 1), b)
            out.append((a, c))
            a = c
        out.append((a, b))
    return [(int(a), int(b)) for a, b in out if b > a]


@pytest.mark.parametrize("block", [3, 64, 1 << 22])
@pytest.mark.parametrize("seed", range(4))
def test_panel_cuts_streamed_from_zarr_equal_the_in_memory_rule(tmp_path, monkeypatch,
                                                                block, seed):
    """indptr is read by blocks (never whole); the cuts are those of the in-memory rule."""
    monkeypatch.setattr(source_mod, "INDPTR_BLOCK", block)
    rng = np.random.default_rng(seed)
    per_row = rng.poisson(rng.choice([0.5, 5.0, 300.0], size=500, p=[0.3, 0.6, 0.1]))
    per_row[rng.integers(0, 500)] = 5000  # one row over the budget
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    stored = zarr.create_array(str(tmp_path / "indptr.zarr"), shape=indptr.shape,
                               chunks=(50,), dtype="i8")
    stored[:] = indptr
    for budget, threads in ((4096, 2), (20000, 1), (10**9, 2), (50000, 3)):
        expected = _reference_csr_bounds(indptr, 12, threads, budget)
        got = source_mod._csr_bounds(stored, 12, threads, budget)
        assert got == expected, (budget, threads)
        assert source_mod._csr_bounds(indptr, 12, threads, budget) == expected


def test_csr_group_keeps_nothing_of_size_n_and_checks_indptr_across_blocks(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(source_mod, "INDPTR_BLOCK", 4)
    S = sp.random(30, 8, density=0.3, random_state=0, format="csr")
    path = write_csr_zarr(S, tmp_path / "s.zarr")
    source = as_source(path)
    fields = vars(source.data)
    assert not any(isinstance(v, np.ndarray) and v.size > 2 for v in fields.values())
    assert source.nnz == S.nnz
    np.testing.assert_array_equal(source.offsets([[0, 10], [12, 30]]),
                                  S.indptr[[[0, 10], [12, 30]]])
    # A decrease exactly at a block boundary (row 8 → 9, blocks of 4 rows) is found.
    bad = S.indptr.copy()
    bad[8] = max(bad[8], 1)
    bad[9] = bad[8] - 1
    zarr.open_group(path, mode="r+")["indptr"][:] = bad
    with pytest.raises(InvalidInputError, match="indptr decreases at row 8"):
        as_source(path)
