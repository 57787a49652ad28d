"""The command line over the reader layer: fitting an .h5ad where it lies, names in
``dnmf top`` and CSV export, ``dnmf export --into`` an AnnData file (atomic), and bad
inputs as one line each with nothing written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp
from test_cli import assert_user_error, ok, run_here  # tests/ is on sys.path

import dnmf
from dnmf.testing import planted

anndata = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")


@pytest.fixture()
def cells(tmp_path):
    V = planted(60, 15, 3, seed=3, noise=0.0)[0]
    V[V < np.quantile(V, 0.3)] = 0.0
    obs = [f"cell{i}" for i in range(60)]
    var = [f"gene{j}" for j in range(15)]
    a = anndata.AnnData(X=sp.csr_matrix(V), obs=pd.DataFrame(index=obs),
                        var=pd.DataFrame(index=var))
    a.write_h5ad(tmp_path / "cells.h5ad")
    return tmp_path, V, obs, var


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_h5ad_top_and_export_into(cells, capsys, monkeypatch):
    d, V, obs, var = cells

    def here(*args):
        return run_here(*args, cwd=d, capsys=capsys, monkeypatch=monkeypatch)

    fitted = ok(here("fit", "cells.h5ad", "--rank", "3", "--out", "run.zarr", "--seed", "0",
                     "--max-iter", "40"))
    assert "reading cells.h5ad where it is, by row panels (AnnData X)" in fitted.stderr
    assert not (d / "run.input.zarr").exists()  # no copy of the data
    run = dnmf.open_run(str(d / "run.zarr"))
    assert run.source["location"] == str(d / "cells.h5ad")
    # top: names from var_names, H's largest entries in order.
    top = json.loads(ok(here("top", "run.zarr", "--n", "4", "--json")).stdout)
    assert top["named"] is True and len(top["components"]) == 3
    H = np.asarray(run.H)
    for c in top["components"]:
        expected = np.argsort(-H[c["component"]], kind="stable")[:4]
        assert [f["name"] for f in c["features"]] == [var[j] for j in expected]
        assert [f["weight"] for f in c["features"]] == pytest.approx(
            H[c["component"], expected].tolist(), rel=1e-12)
    table = ok(here("top", "run.zarr", "-n", "2")).stdout
    assert table.splitlines()[0] == "component 0:" and "gene" in table
    pytest.importorskip("matplotlib")
    ok(here("plot", "run.zarr", "--top", "top.png", "--n", "4"))
    assert (d / "top.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from dnmf import _plot

    bars = _plot.top_figure(H, var, 3).axes[0]  # largest at the top of the chart
    assert [t.get_text() for t in bars.get_yticklabels()] == [
        var[j] for j in np.argsort(-H[0], kind="stable")[:3][::-1]]
    # CSV export carries the names, as pandas reads them back.
    ok(here("export", "run.zarr", "--format", "csv", "--out", "csv"))
    W_csv = pd.read_csv(d / "csv" / "W.csv", index_col=0, float_precision="round_trip")
    H_csv = pd.read_csv(d / "csv" / "H.csv", index_col=0, float_precision="round_trip")
    assert list(W_csv.index) == obs and list(H_csv.columns) == var
    np.testing.assert_allclose(W_csv.to_numpy(), np.asarray(run.W), rtol=1e-15)
    np.testing.assert_allclose(H_csv.to_numpy(), H, rtol=1e-15)
    # export --into: W, Hᵀ and the record, X untouched.
    ok(here("export", "run.zarr", "--into", "cells.h5ad"))
    back = anndata.read_h5ad(d / "cells.h5ad")
    np.testing.assert_array_equal(back.obsm["X_nmf"], np.asarray(run.W))
    np.testing.assert_array_equal(back.varm["NMF_components"], H.T)
    np.testing.assert_array_equal(back.X.toarray(), V)
    assert list(back.uns["nmf"]["loss_history"]) == pytest.approx(run.loss_history, rel=0)
    assert back.uns["nmf"]["params"]["n_components"] == 3
    # Again without --overwrite: refused, the file byte for byte as it was.
    before = _digest(d / "cells.h5ad")
    assert_user_error(here("export", "run.zarr", "--into", "cells.h5ad"), 1,
                      r"already holds obsm/X_nmf, varm/NMF_components, uns/nmf; pass "
                      r"--overwrite")
    assert _digest(d / "cells.h5ad") == before
    # Into an AnnData of another shape: refused, unchanged, no temporary left.
    anndata.AnnData(X=np.ones((5, 15))).write_h5ad(d / "other.h5ad")
    other = _digest(d / "other.h5ad")
    assert_user_error(here("export", "run.zarr", "--into", "other.h5ad"), 1,
                      r"fitted on a 60 × 15 matrix, but other.h5ad has 5 observations")
    assert _digest(d / "other.h5ad") == other
    assert [p.name for p in d.iterdir() if ".tmp-" in p.name] == []
    # dnmf.to_anndata from Python: the same entries.
    made = dnmf.to_anndata(str(d / "run.zarr"))
    assert list(made.obs_names) == obs and list(made.var_names) == var
    np.testing.assert_array_equal(made.obsm["X_nmf"], back.obsm["X_nmf"])


def test_export_into_anndata_zarr(cells, capsys, monkeypatch):
    d, V, _, _ = cells
    a = anndata.read_h5ad(d / "cells.h5ad")
    a.write_zarr(d / "cells.zarr")

    def here(*args):
        return run_here(*args, cwd=d, capsys=capsys, monkeypatch=monkeypatch)

    # convert on the store's root means X (it took a 0-d array at the root for V).
    ok(here("convert", "cells.zarr", "conv.zarr"))
    conv = dnmf.open_source(str(d / "conv.zarr"))
    assert conv.sparse and conv.var_names == [f"gene{j}" for j in range(15)]
    block = dnmf._source.as_source(conv.array).panel_refs([(0, 60)])[0].load()
    np.testing.assert_array_equal(block.toarray(), V)
    ok(here("fit", "cells.zarr", "--rank", "2", "--out", "run.zarr", "--seed", "1",
            "--max-iter", "10"))
    ok(here("export", "run.zarr", "--into", "cells.zarr"))
    back = anndata.read_zarr(d / "cells.zarr")
    run = dnmf.open_run(str(d / "run.zarr"))
    np.testing.assert_array_equal(back.obsm["X_nmf"], np.asarray(run.W))
    np.testing.assert_array_equal(back.varm["NMF_components"], np.asarray(run.H).T)
    np.testing.assert_array_equal(back.X.toarray(), V)
    assert not [p for p in (d / "cells.zarr" / "obsm").iterdir() if ".tmp-" in p.name]
    # From Python: the path written, and that it was extended, not rewritten whole.
    written = dnmf.io.write_into(run, d / "cells.zarr", overwrite=True)
    assert written == str(d / "cells.zarr") and written.rewritten is False


def test_convert_reports_index_column_and_keeps_names(tmp_path, capsys, monkeypatch):
    V = planted(30, 6, 2, seed=5)[0]
    frame = pd.DataFrame(V, index=[f"doc{i}" for i in range(30)],
                         columns=[f"w{j}" for j in range(6)])
    frame.to_csv(tmp_path / "docs.csv")

    def here(*args):
        return run_here(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)

    ok(here("fit", "docs.csv", "--rank", "2", "--out", "run.zarr", "--seed", "0",
            "--max-iter", "5"))
    run = dnmf.open_run(str(tmp_path / "run.zarr"))
    assert run.shape == (30, 6)  # the index column is not a feature
    top = json.loads(ok(here("top", "run.zarr", "--json")).stdout)
    assert {f["name"] for f in top["components"][0]["features"]} == set(frame.columns)
    # --index-col none: the first column is data, and it is text: one clear line.
    assert_user_error(here("convert", "docs.csv", "x.zarr", "--index-col", "none"), 1,
                      r"'doc0', which is not a number, in field 1")
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("case", ["missing-layer", "broken-indptr", "index-only", "text"])
def test_bad_inputs_one_line_nothing_written(tmp_path, case, capsys, monkeypatch):
    import h5py

    if case == "missing-layer":
        anndata.AnnData(X=np.ones((4, 3))).write_h5ad(tmp_path / "in.h5ad")
        args, pattern = ["--layer", "counts"], r"has no layer 'counts': it has no layers"
        src = "in.h5ad"
    elif case == "broken-indptr":
        with h5py.File(tmp_path / "in.h5ad", "w") as f:
            f.attrs["encoding-type"] = "anndata"
            g = f.create_group("X")
            g.attrs.update({"encoding-type": "csr_matrix", "shape": np.array([3, 2])})
            g["data"], g["indices"] = np.ones(2), np.array([0, 1])
            g["indptr"] = np.array([0, 2, 1, 2])
        args, pattern, src = [], r"indptr decreases at row 1", "in.h5ad"
    elif case == "index-only":
        pd.DataFrame(index=["a", "b"]).to_csv(tmp_path / "in.csv")  # '""', 'a', 'b'
        args, pattern, src = [], r"only an index column \(row names\) and no values", "in.csv"
    else:
        pd.DataFrame({"x": [1.0, 2.0], "label": ["a", "b"]}).to_csv(tmp_path / "in.csv",
                                                                    index=False)
        args, pattern, src = [], r"'a', which is not a number, in field 2", "in.csv"
    for command in (["convert", src, "out.zarr"], ["fit", src, "--rank", "1", "--out",
                                                   "run.zarr"]):
        proc = run_here(*command, *args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
        assert_user_error(proc, 1, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src]


def test_fit_npy_reads_it_in_place_and_resume_checks_it(tmp_path, capsys, monkeypatch):
    # Issue 15: a .npy is read by row panels where it lies (memory-mapped), with its
    # fingerprint; no RUN.input.zarr copy. A changed file is refused on resume.
    V = planted(120, 16, 3, seed=4, noise=0.01)[0]
    np.save(tmp_path / "V.npy", V)

    def here(*args):
        return run_here(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)

    fitted = ok(here("fit", "V.npy", "-k", "3", "-o", "run.zarr", "--seed", "0",
                     "--max-iter", "5", "--tol", "0"))
    assert "reading V.npy where it is, by row panels" in fitted.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["V.npy", "run.zarr"]
    run = dnmf.open_run(str(tmp_path / "run.zarr"))
    assert run.source["location"] == str(tmp_path / "V.npy")
    est = dnmf.NMF(3, random_state=0, max_iter=8, tol=0, scheduler="threads")
    with pytest.warns(dnmf.ConvergenceWarning):
        W = est.fit_transform(V)
    ok(here("resume", "run.zarr", "--max-iter", "8"))
    run = dnmf.open_run(str(tmp_path / "run.zarr"))
    np.testing.assert_allclose(np.asarray(run.W), W, rtol=1e-12, atol=0)
    np.testing.assert_allclose(run.H, est.components_, rtol=1e-12, atol=0)
    changed = V.copy()
    changed[0] *= 2
    np.save(tmp_path / "V.npy", changed)
    refused = here("resume", "run.zarr", "--max-iter", "12")
    assert_user_error(refused, 1, r"other data or other parameters")
    assert dnmf.open_run(str(tmp_path / "run.zarr")).iteration == 8
