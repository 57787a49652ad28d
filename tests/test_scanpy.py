"""scanpy's bundled pbmc68k_reduced (the single-cell trial of issue 15), end to end.

The file ships inside the scanpy package (no download). It is in anndata's pre-0.7
layout — ``raw.X`` (a CSR group in the h5sparse encoding), obs/var/obsm/varm as
compound datasets — and its X is scaled data (negative). Tested on a copy.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from test_cli import assert_user_error, ok, run_here  # tests/ is on sys.path

import dnmf

scanpy = pytest.importorskip("scanpy")
anndata = pytest.importorskip("anndata")

BUNDLED = os.path.join(os.path.dirname(scanpy.__file__), "datasets",
                       "10x_pbmc68k_reduced.h5ad")


def _read(path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notes on the legacy layout
        return anndata.read_h5ad(path)


@pytest.fixture
def cells(tmp_path):
    shutil.copyfile(BUNDLED, tmp_path / "cells.h5ad")
    return tmp_path


def test_the_bundled_file_is_the_legacy_layout():
    import h5py

    with h5py.File(BUNDLED, "r") as f:
        assert "raw.X" in f and "raw" not in f
        assert isinstance(f["obsm"], h5py.Dataset)
    assert dnmf.io._anndata.legacy_h5ad(BUNDLED)


def test_python_reader_opens_raw_with_names():
    adata = _read(BUNDLED)
    source = dnmf.open_source(BUNDLED, raw=True)
    assert source.shape == adata.raw.X.shape == (700, 765) and source.sparse
    assert list(source.obs_names) == list(adata.obs_names)
    assert list(source.var_names) == list(adata.raw.var_names)
    est = dnmf.NMF(4, max_iter=20, random_state=0).fit(source)
    ref = dnmf.NMF(4, max_iter=20, random_state=0).fit(adata.raw.X)
    # float32 data read in other panels (sums in another order): measured 2.9e-6 apart.
    np.testing.assert_allclose(est.components_, ref.components_, rtol=0, atol=3e-5)


def test_cli_scaled_X_raw_fit_top_and_export_into(cells, capsys, monkeypatch):
    def here(*args):
        return run_here(*args, cwd=cells, capsys=capsys, monkeypatch=monkeypatch)

    # X is scaled (negative): one line that points at raw/layers; nothing left behind.
    assert_user_error(here("fit", "cells.h5ad", "--rank", "4", "--out", "bad"), 1,
                      r"Negative values.*--raw \(raw/X\) or --layer NAME")
    assert not (cells / "bad").exists()
    ok(here("fit", "cells.h5ad", "--raw", "--rank", "4", "--out", "run", "--seed", "0",
            "--max-iter", "30"))
    run = dnmf.open_run(str(cells / "run"))
    adata = _read(cells / "cells.h5ad")
    genes = list(adata.raw.var_names)
    top = json.loads(ok(here("top", "run", "--n", "3", "--json")).stdout)
    H = np.asarray(run.H)
    for c in top["components"]:
        expected = np.argsort(-H[c["component"]], kind="stable")[:3]
        assert [f["name"] for f in c["features"]] == [genes[j] for j in expected]
    raw_before = adata.raw.X.toarray()
    done = ok(here("export", "run", "--into", "cells.h5ad"))
    assert "pre-0.7 layout: rewritten whole" in done.stdout + done.stderr
    after = _read(cells / "cells.h5ad")
    np.testing.assert_array_equal(after.obsm["X_nmf"], np.asarray(run.W))
    np.testing.assert_array_equal(after.varm["NMF_components"], H.T)
    assert after.uns["nmf"]["n_iter"] == run.iteration
    np.testing.assert_array_equal(after.uns["nmf"]["loss_history"], run.loss_history)
    # Everything the user had is still there.
    np.testing.assert_array_equal(after.raw.X.toarray(), raw_before)
    np.testing.assert_array_equal(after.X, adata.X)
    assert list(after.obs_names) == list(adata.obs_names)
    assert set(adata.obsm) <= set(after.obsm)
    # A second export without --overwrite is refused, and the file is unchanged.
    digest = (cells / "cells.h5ad").read_bytes()
    assert_user_error(here("export", "run", "--into", "cells.h5ad"), 1,
                      r"already holds obsm/X_nmf.*--overwrite")
    assert (cells / "cells.h5ad").read_bytes() == digest
