"""Missing values on the command line: ``--missing nan|unstored`` and ``--mask PATH`` for
``dnmf fit`` and ``dnmf rank``, ``dnmf convert --missing nan``, ``dnmf resume`` of a
masked run, and one clear line for every bad mask (real files, real commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_cli import assert_user_error, ok, run_dnmf, run_here, run_many
from test_rank import planted_rank


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """V (planted rank 3), the same V with 15 % NaN, its mask in several formats, bad masks."""
    d = tmp_path_factory.mktemp("cli-missing")
    V, _, _ = planted_rank(90, 30, 3, seed=5)
    rng = np.random.default_rng(3)
    M = rng.random(V.shape) > 0.15
    M[np.arange(90), np.arange(90) % 30] = True  # every row and column observed
    Vn = np.where(M, V, np.nan)
    np.save(d / "V.npy", V)
    np.save(d / "Vn.npy", Vn)
    np.save(d / "M.npy", M)
    np.savetxt(d / "M.csv", M.astype(int), delimiter=",", fmt="%d")
    z = zarr.create_array(store=str(d / "Mz.zarr"), shape=M.shape, chunks=(90, 30),
                          dtype=bool, zarr_format=3)
    z[:] = M
    np.save(d / "M_half.npy", M * 0.5 + 0.25)  # numbers, not 0/1
    np.save(d / "M_text.npy", np.where(M, "y", "n"))
    np.save(d / "M_narrow.npy", M[:, :20])
    row = M.copy()
    row[7] = False
    np.save(d / "M_row.npy", row)
    col = M.copy()
    col[:, 4] = False
    np.save(d / "M_col.npy", col)
    sp.save_npz(d / "S.npz", sp.random(60, 20, density=0.3, random_state=1, format="csr"))
    return {"dir": d, "V": V, "Vn": Vn, "M": M}


FIT = ["-k", "3", "--seed", "4", "--max-iter", "15", "--tol", "0"]


def _factors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    run = dnmf.open_run(str(path))
    return np.asarray(run.W), np.asarray(run.H)


def test_fit_with_nan_or_a_mask_file_fits_the_same_observed_entries(files, capsys,
                                                                     monkeypatch):
    d = files["dir"]
    runs = {
        "nan": ["fit", "Vn.npy", "--missing", "nan", "-o", "nan.zarr"],
        "npy": ["fit", "V.npy", "--mask", "M.npy", "-o", "npy.zarr"],
        "csv": ["fit", "V.npy", "--mask", "M.csv", "-o", "csv.zarr"],
        "zarr": ["fit", "V.npy", "--mask", "Mz.zarr", "-o", "zarr.zarr"],
        "both": ["fit", "Vn.npy", "--missing", "nan", "--mask", "M.npy", "-o", "both.zarr"],
    }
    for name, args in runs.items():
        proc = ok(run_here(*args, *FIT, cwd=d, capsys=capsys, monkeypatch=monkeypatch))
        assert "observed entries only" in proc.stderr, name
    W, H = _factors(d / "nan.zarr")
    for name in ("npy", "csv", "zarr", "both"):
        W2, H2 = _factors(d / f"{name}.zarr")
        np.testing.assert_array_equal(H2, H, err_msg=name)
        np.testing.assert_array_equal(W2, W, err_msg=name)
    # A boolean Zarr mask chunked like V is read where it is; other formats are copied.
    assert not (d / "zarr.mask.zarr").exists()
    copy = zarr.open_array(str(d / "npy.mask.zarr"), mode="r")
    np.testing.assert_array_equal(copy[:], files["M"])
    # The fit used the observed entries only: the same as the Python API's masked fit.
    est = dnmf.NMF(3, random_state=4, max_iter=15, tol=0).fit(files["V"], mask=files["M"])
    np.testing.assert_allclose(H, est.components_, rtol=1e-10, atol=1e-12)
    # and it predicts the missing entries far better than a fit that took NaN for 0
    zero = dnmf.NMF(3, random_state=4, max_iter=15, tol=0).fit(np.nan_to_num(files["Vn"]))
    miss = ~files["M"]
    err = np.abs(W @ H - files["V"])[miss].mean()
    err0 = np.abs(zero.transform(np.nan_to_num(files["Vn"])) @ zero.components_
                  - files["V"])[miss].mean()
    assert err < 0.5 * err0, (err, err0)


def test_convert_keeps_nan_when_asked_and_fit_reads_it(files, capsys, monkeypatch):
    d = files["dir"]
    refused = run_here("convert", "Vn.npy", "plain.zarr", cwd=d, capsys=capsys,
                       monkeypatch=monkeypatch)
    assert_user_error(refused, 1, r"NaN or infinite value .* --missing nan")
    assert not (d / "plain.zarr").exists()
    ok(run_here("convert", "Vn.npy", "vn.zarr", "--missing", "nan", "--chunk-rows", "30",
                cwd=d, capsys=capsys, monkeypatch=monkeypatch))
    stored = zarr.open_array(str(d / "vn.zarr"), mode="r")
    np.testing.assert_array_equal(stored[:], files["Vn"])  # NaN where they were
    assert stored.attrs["dnmf"]["missing"] == "nan"
    no_flag = run_here("fit", "vn.zarr", "-o", "noflag.zarr", *FIT, cwd=d, capsys=capsys,
                       monkeypatch=monkeypatch)
    assert_user_error(no_flag, 1, r"NaN .* pass --missing nan to fit on the observed entries")
    ok(run_here("fit", "vn.zarr", "--missing", "nan", "-o", "vn-run.zarr", *FIT, cwd=d,
                capsys=capsys, monkeypatch=monkeypatch))
    assert dnmf.open_run(str(d / "vn-run.zarr")).complete
    # still refused with --missing nan: a sparse source (it has no NaN entries to keep)
    sparse = run_here("convert", "S.npz", "s.zarr", "--missing", "nan", cwd=d, capsys=capsys,
                      monkeypatch=monkeypatch)
    assert_user_error(sparse, 2, r"sparse: add --dense")


def test_resume_of_a_masked_run_is_bit_identical(files, capsys, monkeypatch):
    d = files["dir"]
    base = ["fit", "V.npy", "--mask", "M.npy", "-k", "3", "--seed", "9", "--tol", "0"]
    ok(run_here(*base, "--max-iter", "6", "-o", "part.zarr", cwd=d, capsys=capsys,
                monkeypatch=monkeypatch))
    resumed = ok(run_dnmf("resume", "part.zarr", "--max-iter", "14", cwd=d))
    assert "Traceback" not in resumed.stderr
    ok(run_here(*base, "--max-iter", "14", "-o", "whole.zarr", cwd=d, capsys=capsys,
                monkeypatch=monkeypatch))
    a, b = dnmf.open_run(str(d / "part.zarr")), dnmf.open_run(str(d / "whole.zarr"))
    assert a.iteration == b.iteration == 14
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(np.asarray(a.W), np.asarray(b.W))
    assert a.loss_history == b.loss_history
    shown = ok(run_here("info", "part.zarr", cwd=d, capsys=capsys, monkeypatch=monkeypatch))
    assert "observed    the mask " in shown.stdout and "part.mask.zarr" in shown.stdout
    # The same fit command again continues (the mask copy is recognised, not redone).
    again = ok(run_here(*base, "--max-iter", "16", "-o", "part.zarr", cwd=d, capsys=capsys,
                        monkeypatch=monkeypatch))
    assert "the mask copied earlier" in again.stderr
    assert dnmf.open_run(str(d / "part.zarr")).iteration == 16
    # Another mask for that run is refused, not mixed in.
    other = run_here("fit", "V.npy", "--mask", "M_col.npy", "-k", "3", "--seed", "9",
                     "--tol", "0", "--max-iter", "20", "-o", "part.zarr", cwd=d,
                     capsys=capsys, monkeypatch=monkeypatch)
    assert_user_error(other, 1, r"holds another mask")
    # Without its mask a run cannot be resumed: one line, not a traceback.
    import shutil

    shutil.move(d / "part.mask.zarr", d / "moved.mask.zarr")
    gone = run_here("resume", "part.zarr", "--max-iter", "18", cwd=d, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_user_error(gone, 1, r"fitted with the mask .*part\.mask\.zarr.*which is gone")


BAD = {
    "shape": (["V.npy", "--mask", "M_narrow.npy"], 1,
              r"--mask M_narrow.npy has shape \(90, 20\), but INPUT is 90 × 30"),
    "numbers": (["V.npy", "--mask", "M_half.npy"], 1,
                r"--mask M_half.npy is not boolean: it has the value 0.75 at row 0"),
    "text": (["V.npy", "--mask", "M_text.npy"], 1, r"M_text.npy holds"),
    "empty-row": (["V.npy", "--mask", "M_row.npy"], 1,
                  r"Row 7 of X has no observed entries .* Drop such rows from INPUT"),
    "empty-col": (["V.npy", "--mask", "M_col.npy"], 1,
                  r"Column 4 of X has no observed entries .* Drop such columns from INPUT"),
    "no-nan": (["V.npy", "--missing", "nan"], 1,
               r"--missing nan was given, but X has no NaN entries.* Leave out --missing"),
    "unstored-dense": (["V.npy", "--missing", "unstored"], 2,
                       r"--missing unstored observes the stored entries of a sparse X"),
    "unstored-dense-flag": (["S.npz", "--missing", "unstored", "--dense"], 2,
                            r"--missing unstored .* drop --dense"),
    "sparse-mask": (["S.npz", "--mask", "M.npy"], 2, r"--mask with a sparse INPUT"),
    "online": (["V.npy", "--mask", "M.npy", "--online"], 2,
               r"--missing and --mask do not apply with --online"),
    "no-file": (["V.npy", "--mask", "nothing.npy"], 1, r"--mask nothing.npy does not exist"),
    "amu": (["V.npy", "--mask", "M.npy", "--loss", "kl", "--solver", "amu"], 2,
            r"missing values .* not beta_loss='kullback-leibler' with solver='amu'"),
}


@pytest.fixture(scope="module")
def bad_fits(files):
    d = files["dir"]
    return run_many({name: ["fit", *args, "-o", f"bad-{name}.zarr", *FIT]
                     for name, (args, _, _) in BAD.items()}, cwd=d)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_masks_are_one_clear_line_and_leave_nothing(files, bad_fits, name):
    _, code, pattern = BAD[name]
    assert_user_error(bad_fits[name], code, pattern)
    d = files["dir"]
    for left in (f"bad-{name}.zarr", f"bad-{name}.mask.zarr", f"bad-{name}.input.zarr"):
        assert not (d / left).exists(), left


def test_rank_with_missing_values_nan_or_mask(files):
    """A cv sweep on data with missing values: the same table from NaN and from a mask
    file, the planted rank found, and the sweep continued without refitting."""
    d = files["dir"]
    common = ["--ks", "2:4", "-r", "2", "--max-iter", "200", "--tol", "1e-6", "--json"]
    nan, mask = (run_dnmf("rank", *args, *common, cwd=d) for args in (
        ["Vn.npy", "--missing", "nan", "--out", "nan.sweep"],
        ["V.npy", "--mask", "M.npy", "--out", "mask.sweep"]))
    ok(nan), ok(mask)
    a, b = json.loads(nan.stdout), json.loads(mask.stdout)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a["table"]]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in b["table"]]
    assert a["k"] == b["k"] == 3, a["summary"]
    # every held-out entry is an observed one: fewer than 5 % of all entries
    n_obs = int(files["M"].sum())
    assert all(0 < r["n_heldout"] < 0.08 * n_obs for r in a["table"])
    header = json.loads((d / "mask.sweep" / "sweep.json").read_text())
    assert header["mask"]["zarr"].rstrip("/").endswith("mask.sweep.mask.zarr")
    assert "nmf.missing" not in header
    shown = ok(run_dnmf("info", "mask.sweep/fits/k003-r01", cwd=d)).stdout
    assert "observed    the mask " in shown and "minus a hold-out of 0.05 (seed " in shown
    again = ok(run_dnmf("rank", "V.npy", "--mask", "M.npy", "--out", "mask.sweep", *common,
                        cwd=d))
    assert [r["time"] for r in json.loads(again.stdout)["table"]] == \
        [r["time"] for r in b["table"]]
    other = run_dnmf("rank", "V.npy", "--mask", "M_col.npy", "--out", "mask.sweep", *common,
                     cwd=d)
    assert_user_error(other, 1, r"holds another mask")


def test_mask_for_an_hdf5_input_read_in_place_is_chunked_like_panels(tmp_path, capsys,
                                                                      monkeypatch):
    """HDF5 V is read where it is, with no row chunks of its own: the mask copy is cut
    in small chunks (rows of ~1 MiB of V), so panels are not one chunk of all of V."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(2)
    V = rng.random((3000, 3)) @ rng.random((3, 100)) + 0.01
    M = rng.random(V.shape) > 0.1
    with h5py.File(tmp_path / "V.h5", "w") as f:
        f.create_dataset("X", data=V)
    np.save(tmp_path / "M.npy", M)
    ok(run_here("fit", "V.h5", "--mask", "M.npy", "-o", "h5.zarr", *FIT, cwd=tmp_path,
                capsys=capsys, monkeypatch=monkeypatch))
    chunks = zarr.open_array(str(tmp_path / "h5.mask.zarr"), mode="r").chunks
    assert chunks == ((1 << 20) // (100 * 8), 100)
    run = dnmf.open_run(str(tmp_path / "h5.zarr"))
    assert len(run.bounds) > 1
    est = dnmf.NMF(3, random_state=4, max_iter=15, tol=0).fit(V, mask=M)
    np.testing.assert_allclose(run.H, est.components_, rtol=1e-9, atol=1e-12)
