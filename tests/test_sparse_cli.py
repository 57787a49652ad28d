"""``dnmf convert`` / ``dnmf fit`` on sparse sources: CSR Zarr groups by default, --dense
to force a dense array; the fit reads the CSR group without densifying it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr
from test_cli import ok, run_here  # the CLI tests' helpers (tests/ is on sys.path)

import dnmf
from dnmf._convert import convert, is_sparse_source
from dnmf._source import as_source


@pytest.fixture
def S() -> sp.csr_matrix:
    return sp.random(120, 30, density=0.2, random_state=4, format="csr")


def _sources(d, S):
    sp.save_npz(d / "v.npz", S)
    scipy.io.mmwrite(d / "v.mtx", S.tocoo(), precision=17)
    return ["v.npz", "v.mtx"]


def _csr_of(path) -> sp.csr_matrix:
    source = as_source(str(path))
    assert source.kind == "zarr-csr"
    g = source.data
    return sp.csr_matrix((g.data[:], g.indices[:], g.indptr_array[:]), shape=g.shape)


def test_convert_writes_csr_groups_for_sparse_sources(tmp_path, S, capsys, monkeypatch):
    for name in _sources(tmp_path, S):
        assert is_sparse_source(str(tmp_path / name))
        dst = f"{name.replace('.', '-')}.zarr"
        proc = ok(run_here("convert", name, dst, cwd=tmp_path, capsys=capsys,
                           monkeypatch=monkeypatch))
        assert f"sparse: a CSR group with {S.nnz} stored entries" in proc.stdout
        group = zarr.open_group(str(tmp_path / dst), mode="r")
        assert group.attrs["encoding-type"] == "csr_matrix"
        assert group.attrs["shape"] == [120, 30]
        assert group.attrs["dnmf"]["converted_from"].endswith(name)
        np.testing.assert_allclose(_csr_of(tmp_path / dst).toarray(), S.toarray(), rtol=1e-15)
    assert not is_sparse_source(str(tmp_path / "v-npz.zarr" / "data"))


def test_convert_dense_flag_and_options(tmp_path, S, capsys, monkeypatch):
    _sources(tmp_path, S)
    ok(run_here("convert", "v.npz", "d.zarr", "--dense", "--chunk-rows", "16",
                cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch))
    dense = zarr.open_array(str(tmp_path / "d.zarr"), mode="r")
    assert dense.chunks == (16, 30)
    np.testing.assert_array_equal(dense[:], S.toarray())
    proc = run_here("convert", "v.npz", "e.zarr", "--chunk-rows", "16", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert proc.returncode != 0 and "--dense" in proc.stderr
    # --transpose and --dtype apply to the CSR group too.
    result = convert(tmp_path / "v.mtx", tmp_path / "t.zarr", transpose=True, dtype="float32")
    assert result.nnz == S.nnz and result.shape == (30, 120)
    T = _csr_of(tmp_path / "t.zarr")
    assert T.dtype == np.float32
    np.testing.assert_allclose(T.toarray(), S.T.toarray(), rtol=1e-6)
    # A CSR Zarr group is rewritten as a CSR group (e.g. re-chunked), or densified.
    assert convert(tmp_path / "t.zarr", tmp_path / "t2.zarr").nnz == S.nnz
    assert convert(tmp_path / "t.zarr", tmp_path / "t3.zarr", dense=True).nnz is None


def test_convert_refuses_bad_sparse_values_with_their_position(tmp_path, S):
    bad = S.copy()
    bad.data[bad.indptr[7] + 1] = -2.0
    sp.save_npz(tmp_path / "bad.npz", bad)
    col = int(bad.indices[bad.indptr[7] + 1])
    with pytest.raises(dnmf.InvalidInputError, match=rf"negative value \(-2\) at row 7, "
                                                     rf"column {col}"):
        convert(tmp_path / "bad.npz", tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


def test_fit_on_sparse_file_uses_the_csr_group(tmp_path, S, capsys, monkeypatch):
    _sources(tmp_path, S)
    args = ("--rank", "3", "--seed", "0", "--max-iter", "15", "--solver", "mu",
            "--loss", "kl")
    proc = ok(run_here("fit", "v.npz", *args, "--out", "r.zarr", cwd=tmp_path,
                       capsys=capsys, monkeypatch=monkeypatch))
    assert "sparse" in proc.stderr
    assert as_source(str(tmp_path / "r.input.zarr")).kind == "zarr-csr"
    run = dnmf.open_run(tmp_path / "r.zarr")
    assert run.fingerprint["nnz"] == S.nnz
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dnmf.NMF(3, solver="mu", beta_loss="kullback-leibler", max_iter=15,
                       random_state=0, tol=1e-4).fit(S)
    np.testing.assert_allclose(run.H, ref.components_, rtol=1e-10)
    # Fitting again reuses the conversion; --dense asks for another one.
    again = ok(run_here("fit", "v.npz", *args, "--out", "r.zarr", cwd=tmp_path,
                        capsys=capsys, monkeypatch=monkeypatch))
    assert "converted earlier" in again.stderr
    ok(run_here("fit", "v.mtx", *args, "--out", "d.zarr", "--dense", cwd=tmp_path,
                capsys=capsys, monkeypatch=monkeypatch))
    assert as_source(str(tmp_path / "d.input.zarr")).kind == "zarr"


def test_fit_panel_size_cuts_a_skewed_csr_input_by_stored_entries(tmp_path, capsys,
                                                                  monkeypatch):
    rng = np.random.default_rng(2)
    S = sp.vstack([sp.random(60, 40, density=0.9, random_state=rng),
                   sp.random(540, 40, density=0.05, random_state=rng)], format="csr")
    sp.save_npz(tmp_path / "v.npz", S)
    args = ("--rank", "3", "--seed", "0", "--max-iter", "4", "--out", "r.zarr")
    ok(run_here("fit", "v.npz", *args, "--panel-size", "4KiB", cwd=tmp_path, capsys=capsys,
                monkeypatch=monkeypatch))
    run = dnmf.open_run(tmp_path / "r.zarr")
    sizes = [b - a for a, b in run.bounds]
    assert len(sizes) >= 4 and min(sizes) < max(sizes) / 3, sizes
    info = ok(run_here("info", "r.zarr", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch))
    assert f"panels      {len(sizes)}, cut by stored entries" in info.stdout
    # dnmf resume keeps the run's panels.
    ok(run_here("resume", "r.zarr", "--max-iter", "6", cwd=tmp_path, capsys=capsys,
                monkeypatch=monkeypatch))
    assert dnmf.open_run(tmp_path / "r.zarr").bounds == run.bounds
    bad = run_here("fit", "v.npz", *args, "--panel-size", "lots", cwd=tmp_path, capsys=capsys,
                   monkeypatch=monkeypatch)
    assert bad.returncode == 2 and "--panel-size must be a size such as" in bad.stderr
    assert "Traceback" not in bad.stderr
