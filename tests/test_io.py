"""The reader layer (dnmf.io): files written by the real libraries (anndata, h5py,
pandas, NumPy, SciPy, Zarr), in-memory objects, names, and bad inputs.

Every format is opened with ``dnmf.io.open_source`` and checked against the matrix
that was written (exactly), with its names; a few are fitted through
``dnmf.NMF().fit(path)`` and compared with the fit of the same matrix in memory
(the same code runs on the same numbers: equal to 1e-12 relative).
"""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf
from dnmf.errors import InvalidInputError, InvalidParameterError, StoreError
from dnmf.io import open_source

anndata = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")

N, M = 40, 12


@pytest.fixture(scope="module")
def V():
    rng = np.random.default_rng(7)
    dense = rng.random((N, M)) * (rng.random((N, M)) < 0.4)
    dense[:, 0] += 0.5  # no empty row
    return dense


@pytest.fixture(scope="module")
def names():
    return [f"cell{i}" for i in range(N)], [f"gene{j}" for j in range(M)]


@pytest.fixture(scope="module")
def adata(V, names):
    obs, var = names
    a = anndata.AnnData(X=sp.csr_matrix(V), obs=pd.DataFrame(index=obs),
                        var=pd.DataFrame(index=var))
    a.layers["counts"] = np.round(V * 10)
    a.raw = a.copy()
    return a


def _dense(array):
    if isinstance(array, dnmf._source.PanelSource):
        refs = array.panel_refs([(0, array.shape[0])])
        block = refs[0].load()
        return block.toarray() if sp.issparse(block) else np.asarray(block)
    if type(array).__name__ == "Group":
        return dnmf._source.as_source(array).panel_refs([(0, N)])[0].load().toarray()
    return array.toarray() if sp.issparse(array) else np.asarray(array[:])


def _fit(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = dnmf.NMF(3, init="nndsvda", max_iter=15, tol=0, random_state=0)
        W = np.asarray(est.fit_transform(X))
    return W, est.components_


def test_h5ad_written_by_anndata(tmp_path, adata, V, names):
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    src = open_source(str(path))
    assert (src.format, src.shape, src.sparse, src.streamed) == ("h5ad", (N, M), True, True)
    assert (src.obs_names, src.var_names) == names
    np.testing.assert_array_equal(_dense(src.array), V)
    # A layer (dense here) and raw/X, by option or by path.
    layer = open_source(str(path), layer="counts")
    assert not layer.sparse and layer.location.endswith("cells.h5ad/layers/counts")
    np.testing.assert_array_equal(_dense(layer.array), np.round(V * 10))
    by_path = open_source(layer.location)
    np.testing.assert_array_equal(_dense(by_path.array), np.round(V * 10))
    raw = open_source(str(path), raw=True)
    np.testing.assert_array_equal(_dense(raw.array), V)
    assert raw.var_names == names[1]
    # NMF.fit(path) reads it by row panels: the same fit as in memory.
    W_file, H_file = _fit(str(path))
    W_mem, H_mem = _fit(sp.csr_matrix(V))
    np.testing.assert_allclose(W_file, W_mem, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(H_file, H_mem, rtol=1e-12, atol=1e-14)


def test_anndata_zarr_store_root_means_X(tmp_path, adata, V, names):
    path = tmp_path / "cells.zarr"
    adata.write_zarr(path)
    src = open_source(str(path))
    assert (src.format, src.shape, src.sparse) == ("anndata-zarr", (N, M), True)
    assert (src.obs_names, src.var_names) == names
    np.testing.assert_array_equal(_dense(src.array), V)
    layer = open_source(str(path), layer="counts")
    np.testing.assert_array_equal(_dense(layer.array), np.round(V * 10))
    inner = open_source(str(path / "layers" / "counts"))  # a path into the store
    assert inner.var_names == names[1]
    with pytest.raises(InvalidInputError, match=r"no layer 'nope': its layers are counts"):
        open_source(str(path), layer="nope")
    W_file, _ = _fit(str(path))
    W_mem, _ = _fit(sp.csr_matrix(V))
    np.testing.assert_allclose(W_file, W_mem, rtol=1e-12, atol=1e-14)


def test_npy_path_fits_like_the_array(tmp_path, V):
    # Issue 12 item 6: NMF().fit("X.npy") works, through the same reader as the CLI.
    np.save(tmp_path / "X.npy", V)
    src = open_source(str(tmp_path / "X.npy"))
    assert src.location == str(tmp_path / "X.npy") and src.streamed
    # read in place by row panels: a task carries the file's path, not its values
    import pickle

    from dnmf.io._files import NpyArray

    assert src.array.kind == "zarr" and isinstance(src.array.data, NpyArray)
    assert len(pickle.dumps(src.array.data)) < 400 < V.nbytes
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(src.array.data))[5:9], V[5:9])
    W_file, H_file = _fit(str(tmp_path / "X.npy"))
    W_mem, H_mem = _fit(V)
    np.testing.assert_array_equal(W_file, W_mem)
    np.testing.assert_array_equal(H_file, H_mem)


def _tenx(path, V, barcodes, genes, version=3):
    """A CellRanger feature-barcode matrix as h5py writes it: genes × cells, CSC."""
    csc = sp.csc_matrix(V.T)  # genes × cells; CSC indptr runs over cells
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix" if version == 3 else "GRCh38")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = csc.data.astype(np.int32 if version == 2 else np.float32)
        g["indices"] = csc.indices.astype(np.int64)
        g["indptr"] = csc.indptr.astype(np.int64)
        g["shape"] = np.array(csc.shape, dtype=np.int32)
        if version == 3:
            feats = g.create_group("features")
            feats["name"] = np.array(genes, dtype="S")
            feats["id"] = np.array([f"ENSG{j:05d}" for j in range(len(genes))], dtype="S")
            feats["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        else:
            g["genes"] = np.array([f"ENSG{j:05d}" for j in range(len(genes))], dtype="S")
            g["gene_names"] = np.array(genes, dtype="S")


@pytest.mark.parametrize("version", [3, 2])
def test_cellranger_h5_is_cells_by_genes(tmp_path, V, names, version):
    counts = np.round(V * 10)
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _tenx(path, counts, *names, version=version)
    src = open_source(str(path))
    assert (src.format, src.shape, src.sparse, src.streamed) == ("10x-h5", (N, M), True, True)
    assert (src.obs_names, src.var_names) == names
    np.testing.assert_array_equal(_dense(src.array), counts)
    assert "read as 40 cells × 12 genes" in src.notes[0]


def test_hdf5_dense_and_csr_groups(tmp_path, V):
    csr = sp.csr_matrix(V)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("dense", data=V, chunks=(8, M))
        g = f.create_group("sparse")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([N, M])})
        g["data"], g["indices"], g["indptr"] = csr.data, csr.indices, csr.indptr
    with pytest.raises(InvalidInputError, match=r"holds 2 matrices .*dense, sparse.*--dataset"):
        open_source(str(tmp_path / "m.h5"))
    dense = open_source(str(tmp_path / "m.h5"), dataset="dense")
    np.testing.assert_array_equal(_dense(dense.array), V)
    sparse = open_source(str(tmp_path / "m.h5/sparse"))
    assert sparse.sparse
    np.testing.assert_array_equal(_dense(sparse.array), V)


def test_csv_written_by_pandas_keeps_names_and_drops_the_index(tmp_path, V, names):
    frame = pd.DataFrame(V, index=names[0], columns=names[1])
    frame.to_csv(tmp_path / "named.csv")
    pd.DataFrame(V, columns=names[1]).to_csv(tmp_path / "range.csv")  # index 0..n-1
    frame.to_csv(tmp_path / "bare.tsv", sep="\t", index=False, header=False)
    named = open_source(str(tmp_path / "named.csv"))
    assert named.shape == (N, M)  # the index column is not feature 0
    assert (named.obs_names, named.var_names) == names
    assert any("index column 0" in note for note in named.notes)
    np.testing.assert_allclose(named.array, V, rtol=1e-15)
    ranged = open_source(str(tmp_path / "range.csv"))
    assert ranged.shape == (N, M) and ranged.obs_names[:2] == ["0", "1"]
    np.testing.assert_allclose(ranged.array, V, rtol=1e-15)
    bare = open_source(str(tmp_path / "bare.tsv"))
    assert bare.shape == (N, M) and bare.var_names is None and bare.obs_names is None
    # --index-col none: every column is data (here: the first one is text, so refused).
    with pytest.raises(InvalidInputError, match=r"not a number"):
        _ = open_source(str(tmp_path / "named.csv"), index_col=False).array


def test_csv_with_pandas_default_column_labels_has_a_header(tmp_path, V):
    # DataFrame(V).to_csv(): the header is "" then 0, 1, …, m-1 (a RangeIndex), all
    # numbers. It used to be read as a data row: n + 1 rows, silently.
    pd.DataFrame(V).to_csv(tmp_path / "indexed.csv")
    pd.DataFrame(V).to_csv(tmp_path / "plain.csv", index=False)
    for name, index in (("indexed.csv", True), ("plain.csv", False)):
        source = open_source(str(tmp_path / name))
        assert source.shape == V.shape, name
        np.testing.assert_array_equal(source.array, V)
        assert source.var_names == [str(j) for j in range(M)]
        assert any("pandas' default column labels" in note for note in source.notes)
        assert (source.obs_names is not None) == index
    # A first data row that merely starts 0, 1, … (values, not labels) stays data.
    W = V.copy()
    W[0] = np.arange(M) + 0.5
    pd.DataFrame(W).to_csv(tmp_path / "data.csv", index=False, header=False)
    np.testing.assert_array_equal(open_source(str(tmp_path / "data.csv")).array, W)


def test_a_csv_too_large_to_read_whole_is_fitted_from_a_temporary_zarr(tmp_path, V,
                                                                      monkeypatch):
    """Over DNMF_READ_WHOLE_LIMIT, NMF.fit("X.csv") converts the text by blocks of lines
    into a private Zarr array under DNMF_TMPDIR, fits it by panels, and removes it; the
    run records the CSV (a resume converts it again) and gives the uninterrupted fit."""
    import gc

    pd.DataFrame(V, columns=[f"g{j}" for j in range(M)]).to_csv(tmp_path / "X.csv",
                                                                 index=False)
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv("DNMF_TMPDIR", str(spill))
    monkeypatch.setenv("DNMF_READ_WHOLE_LIMIT", str(V.size * 8 - 1))  # float64 in memory
    seen = []
    est = dnmf.NMF(2, max_iter=5, tol=0, random_state=0,
                   callback=lambda i, loss: seen.append(sorted(os.listdir(spill)))
                   ).fit(str(tmp_path / "X.csv"))
    assert len(seen) == 5 and all(len(names) == 1 for names in seen), seen
    assert seen[0][0].startswith("dnmf-text-")
    gc.collect()
    assert os.listdir(spill) == []  # removed once the fit let go of it
    ref = dnmf.NMF(2, max_iter=5, tol=0, random_state=0).fit(V)
    np.testing.assert_allclose(est.components_, ref.components_, rtol=1e-10, atol=1e-12)

    # With out=: the run's source is the CSV; resume converts it again, same answer.
    dnmf.NMF(2, max_iter=3, tol=0, random_state=0, out=str(tmp_path / "run")).fit(
        str(tmp_path / "X.csv"))
    gc.collect()
    assert os.listdir(spill) == []
    run = dnmf.resume(str(tmp_path / "run"), max_iter=8)
    gc.collect()
    assert os.listdir(spill) == []
    whole = dnmf.NMF(2, max_iter=8, tol=0, random_state=0).fit(V)
    np.testing.assert_allclose(np.asarray(run.H), whole.components_, rtol=1e-10, atol=1e-12)

    # A bad value found while converting: the usual error, no temporary left.
    bad = V.copy()
    bad[N - 1, 1] = -1.0
    pd.DataFrame(bad).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InvalidInputError, match=r"negative"):
        dnmf.NMF(2, max_iter=5).fit(str(tmp_path / "bad.csv"))
    assert os.listdir(spill) == []

    # No room for the conversion: one error naming DNMF_TMPDIR and the way out.
    monkeypatch.setenv("DNMF_TMPDIR", str(tmp_path / "no" / "such"))
    with pytest.raises(StoreError, match=r"DNMF_TMPDIR.*dnmf convert"):
        dnmf.NMF(2, max_iter=5).fit(str(tmp_path / "X.csv"))

    monkeypatch.setenv("DNMF_READ_WHOLE_LIMIT", "lots")
    with pytest.raises(InvalidInputError, match=r"DNMF_READ_WHOLE_LIMIT='lots' is not a size"):
        dnmf.NMF(2, max_iter=5).fit(str(tmp_path / "X.csv"))


def test_objects_bring_their_names(V, names):
    frame = pd.DataFrame(V, index=names[0], columns=names[1])
    src = open_source(frame)
    assert (src.obs_names, src.var_names) == names and src.shape == (N, M)
    xr = pytest.importorskip("xarray")
    da_ = xr.DataArray(V, dims=("cell", "gene"), coords={"cell": names[0], "gene": names[1]})
    assert open_source(da_).var_names == names[1]
    pl = pytest.importorskip("polars")
    assert open_source(pl.DataFrame(frame.reset_index(drop=True))).var_names == names[1]
    # NMF.fit on a DataFrame and on its values: the same fit.
    W_frame, _ = _fit(frame)
    W_mem, _ = _fit(V)
    np.testing.assert_array_equal(W_frame, W_mem)


def test_zarr_v2_and_v3(tmp_path, V):
    for fmt in (2, 3):
        z = zarr.create_array(store=str(tmp_path / f"v{fmt}.zarr"), shape=V.shape,
                              chunks=(10, M), dtype=V.dtype, zarr_format=fmt)
        z[:] = V
        src = open_source(str(tmp_path / f"v{fmt}.zarr"))
        np.testing.assert_array_equal(_dense(src.array), V)


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_are_one_clear_error(tmp_path, adata, V):
    adata.write_h5ad(tmp_path / "cells.h5ad")
    with pytest.raises(InvalidInputError, match=r"no layer 'spliced': its layers are counts"):
        open_source(str(tmp_path / "cells.h5ad"), layer="spliced")
    # X marked as CSR but stored dense.
    with h5py.File(tmp_path / "lying.h5ad", "w") as f:
        f.attrs["encoding-type"] = "anndata"
        ds = f.create_dataset("X", data=V)
        ds.attrs["encoding-type"] = "csr_matrix"
    with pytest.raises(InvalidInputError, match=r"dense dataset although its attributes say"):
        open_source(str(tmp_path / "lying.h5ad"))
    # A CSR group with a broken indptr.
    csr = sp.csr_matrix(V)
    with h5py.File(tmp_path / "broken.h5ad", "w") as f:
        f.attrs["encoding-type"] = "anndata"
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "shape": np.array([N, M])})
        ptr = csr.indptr.copy()
        ptr[5] = ptr[6] + 1
        g["data"], g["indices"], g["indptr"] = csr.data, csr.indices, ptr
    with pytest.raises(InvalidInputError, match=r"indptr decreases at row 5"):
        open_source(str(tmp_path / "broken.h5ad"))
    # An index-only CSV and a text column.
    pd.DataFrame(index=["a", "b", "c"]).to_csv(tmp_path / "index-only.csv")
    with pytest.raises(InvalidInputError, match=r"only an index column .*no values"):
        open_source(str(tmp_path / "index-only.csv"))
    (tmp_path / "numbered.csv").write_text("id\n1\n2\n")
    with pytest.raises(InvalidInputError, match=r"only an index column .*no values"):
        open_source(str(tmp_path / "numbered.csv"), index_col=0)
    frame = pd.DataFrame({"x": [1.0, 2.0], "kind": ["a", "b"], "y": [3.0, 4.0]})
    frame.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(InvalidInputError, match=r"line 2: 'a', which is not a number, in field 2"):
        _ = open_source(str(tmp_path / "text.csv")).array
    with pytest.raises(InvalidInputError, match=r"column 'kind' has dtype object"):
        open_source(frame)
    with pytest.raises(InvalidParameterError, match=r"layer 'x' \(--layer\) does not apply"):
        open_source(str(tmp_path / "text.csv"), layer="x")


def test_csv_fields_quoted_around_the_delimiter(tmp_path):
    # Issue 15: pandas quotes names that hold the delimiter or quotes; they are one
    # field each (header, index column), and the values are read exactly.
    pd = pytest.importorskip("pandas")
    V = np.random.default_rng(3).random((7, 3))
    obs = [f"Smith, J. {i}" for i in range(7)]
    var = ['gene "a"', "gene, b", "c"]
    pd.DataFrame(V, index=obs, columns=var).to_csv(tmp_path / "q.csv")
    pd.DataFrame(V, index=obs, columns=var).to_csv(tmp_path / "q.tsv", sep="\t")
    for name in ("q.csv", "q.tsv"):
        src = open_source(str(tmp_path / name))
        assert src.shape == (7, 3) and src.var_names == var and src.obs_names == obs
        np.testing.assert_array_equal(np.asarray(src.array), V)
    from dnmf._convert import convert

    convert(str(tmp_path / "q.csv"), str(tmp_path / "q.zarr"))
    z = zarr.open_array(str(tmp_path / "q.zarr"))
    np.testing.assert_array_equal(z[...], V)
    assert open_source(str(tmp_path / "q.zarr")).var_names == var
    # a quoted field that is not a number is still one clear error, by line and field
    (tmp_path / "bad.csv").write_text('x,y\n1,"2, 3"\n')
    with pytest.raises(InvalidInputError, match=r"line 2: .*'2, 3'.* field 2"):
        np.asarray(open_source(str(tmp_path / "bad.csv")).array)
