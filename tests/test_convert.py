"""Streaming conversion to Zarr: every format, transposition, checks, atomic output."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr

from dnmf import InvalidInputError, InvalidParameterError, StoreError, _convert
from dnmf._convert import convert, default_chunk_rows, detect_format, open_reader


@pytest.fixture
def X(rng):
    return rng.random((37, 6))


def _write(path, fmt, X):
    """Write ``X`` to ``path`` in ``fmt``; return the array a reader should give back."""
    if fmt == "npy":
        np.save(path, X)
    elif fmt == "csv":
        np.savetxt(path, X, delimiter=",", fmt="%.17g")
    elif fmt == "csv-header":
        np.savetxt(path, X, delimiter=",", fmt="%.17g", comments="",
                   header=",".join(f"c{j}" for j in range(X.shape[1])))
    elif fmt == "tsv":
        np.savetxt(path, X, delimiter="\t", fmt="%.17g")
    elif fmt == "csv.gz":
        with gzip.open(path, "wt") as f:
            np.savetxt(f, X, delimiter=",", fmt="%.17g")
    elif fmt == "npz":
        S = sp.csr_matrix(np.where(X > 0.6, X, 0.0))
        sp.save_npz(path, S)
        return S.toarray()
    elif fmt == "npz-dense":
        np.savez(path, data=X)
    elif fmt == "mtx":
        S = sp.coo_matrix(np.where(X > 0.5, X, 0.0))
        scipy.io.mmwrite(path, S, precision=17)
        return S.toarray()
    elif fmt == "h5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("group/V", data=X, chunks=(8, X.shape[1]))
    elif fmt == "zarr":
        zarr.create_array(store=str(path), data=X, chunks=(5, 3))
    else:
        raise AssertionError(fmt)
    return X


SUFFIX = {"npy": ".npy", "csv": ".csv", "csv-header": ".csv", "tsv": ".tsv",
          "csv.gz": ".csv.gz", "npz": ".npz", "npz-dense": ".npz", "mtx": ".mtx",
          "h5": ".h5", "zarr": ".zarr"}
FORMATS = list(SUFFIX)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("transpose", [False, True])
def test_every_format_round_trips(tmp_path, X, fmt, transpose):
    src = tmp_path / f"src{SUFFIX[fmt]}"
    expected = _write(src, fmt, X)
    if transpose:
        expected = expected.T
    result = convert(src, tmp_path / "out.zarr", chunk_rows=4, transpose=transpose, dense=True)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert out.metadata.zarr_format == 3
    assert out.chunks == (4, expected.shape[1])
    assert result.shape == expected.shape == out.shape
    np.testing.assert_allclose(out[:], expected, rtol=1e-15)
    assert out.attrs["dnmf"]["transposed"] is transpose
    assert result.streamed is (fmt not in ("npz", "npz-dense", "mtx"))
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, "out.zarr"])


@pytest.mark.parametrize("transpose", [False, True])
def test_blocks_stream_with_small_chunks(tmp_path, X, monkeypatch, transpose):
    monkeypatch.setattr(_convert, "CHUNK_BYTES", 5 * 6 * 8)  # 5 rows of 6 float64
    src = tmp_path / "x.csv"
    _write(src, "csv", X)
    seen = []
    result = convert(src, tmp_path / "x.zarr", transpose=transpose,
                     on_rows=lambda done, total: seen.append(done))
    out = zarr.open_array(str(tmp_path / "x.zarr"), mode="r")
    np.testing.assert_array_equal(out[:], X.T if transpose else X)
    if transpose:
        # Output rows of 37 values: 1 row per chunk, tiles of 30 source rows × 1 column.
        assert result.chunk_rows == 1 and seen == [30, 37]
    else:
        assert result.chunk_rows == 5 and seen == [*range(5, 37, 5), 37]


def test_default_chunk_rows_aims_at_64_MiB():
    assert default_chunk_rows(10**6, 1000, np.float64) == 8388
    assert default_chunk_rows(10**6, 1000, np.float32) == 16777
    assert default_chunk_rows(100, 10, np.float64) == 100  # never more than the rows
    assert default_chunk_rows(10, 10**9, np.float64) == 1


@pytest.mark.parametrize(("source", "requested", "stored"), [
    (np.float32, None, "float32"), (np.float64, None, "float64"), (np.int64, None, "float64"),
    (np.uint8, None, "float64"), (np.float64, "float32", "float32"),
    (np.int32, "float32", "float32"),
])
def test_dtype(tmp_path, source, requested, stored):
    np.save(tmp_path / "x.npy", np.arange(12, dtype=source).reshape(4, 3))
    convert(tmp_path / "x.npy", tmp_path / "x.zarr", dtype=requested)
    out = zarr.open_array(str(tmp_path / "x.zarr"), mode="r")
    assert out.dtype == np.dtype(stored)
    np.testing.assert_array_equal(out[:], np.arange(12).reshape(4, 3))


@pytest.mark.parametrize(("value", "what"), [(-0.5, "negative"), (np.nan, "NaN or infinite"),
                                             (np.inf, "NaN or infinite")])
@pytest.mark.parametrize("fmt", ["npy", "csv", "h5", "npz"])
def test_refuses_bad_values_with_their_position(tmp_path, X, fmt, value, what, monkeypatch):
    monkeypatch.setattr(_convert, "CHUNK_BYTES", 4 * 6 * 8)  # the bad row is in block 6
    X = X.copy()
    X[22, 3] = value
    src = tmp_path / f"x{SUFFIX[fmt]}"
    if fmt == "npz":
        sp.save_npz(src, sp.csr_matrix(X))
    else:
        _write(src, fmt, X)
    with pytest.raises(InvalidInputError, match=rf"{what} value .* at row 22, column 3"):
        convert(src, tmp_path / "x.zarr")
    assert sorted(os.listdir(tmp_path)) == [src.name]  # no half-written output


def test_text_errors_name_the_line(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("a,b\n1,2\n\n# a comment\n3,-4\n")
    with pytest.raises(InvalidInputError, match=r"row 1, column 1 \(line 5\)"):
        convert(src, tmp_path / "x.zarr")
    src.write_text("1,2\n3,x\n")
    with pytest.raises(InvalidInputError, match=r"line 2: 'x', which is not a number"):
        convert(src, tmp_path / "x.zarr")
    src.write_text("1,2\n3,,\n")
    with pytest.raises(InvalidInputError, match=r"line 2: 3 fields where .* have 2"):
        convert(src, tmp_path / "x.zarr")
    src.write_text("1,2\n3,\n")
    with pytest.raises(InvalidInputError, match=r"line 2: an empty field in field 2"):
        convert(src, tmp_path / "x.zarr")
    src.write_text("# only a comment\n\n")
    with pytest.raises(InvalidInputError, match="no data rows"):
        convert(src, tmp_path / "x.zarr")
    # A first line that mixes numbers and text is neither a header to skip nor data.
    src.write_text("# made by hand\n1,2,x\n4,5,6\n")
    with pytest.raises(InvalidInputError,
                       match=r"line 2: 'x' \(field 3\) is not a number, but other fields"):
        convert(src, tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_text_skips_blank_and_comment_lines(tmp_path):
    src = tmp_path / "x.tsv"
    src.write_text("x\ty\n\n1\t2\n# note\n3\t4\n\n")
    result = convert(src, tmp_path / "x.zarr")
    assert result.shape == (2, 2)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "x.zarr"))[:], [[1, 2], [3, 4]])


def test_overflowing_cast_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [3.0, 1e300]]))
    with pytest.raises(InvalidInputError, match=r"row 1, column 1 too large for float32"):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr", dtype="float32")


def test_existing_destination_is_kept(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    convert(tmp_path / "x.npy", tmp_path / "x.zarr")
    with pytest.raises(StoreError, match="already exists; pass --overwrite"):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr")
    bad = X.copy()
    bad[3, 1] = -1
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InvalidInputError):
        convert(tmp_path / "bad.npy", tmp_path / "x.zarr", overwrite=True)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "x.zarr"))[:], X)
    convert(tmp_path / "x.npy", tmp_path / "x.zarr", overwrite=True, dtype="float32")
    assert zarr.open_array(str(tmp_path / "x.zarr")).dtype == np.float32
    assert sorted(os.listdir(tmp_path)) == ["bad.npy", "x.npy", "x.zarr"]


def test_interrupted_conversion_leaves_nothing(tmp_path, X, monkeypatch):
    monkeypatch.setattr(_convert, "CHUNK_BYTES", 4 * 6 * 8)
    np.save(tmp_path / "x.npy", X)

    def interrupt(done, total):
        if done > 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr", on_rows=interrupt)
    assert os.listdir(tmp_path) == ["x.npy"]


def test_zarr_rechunk_in_place(tmp_path, X):
    zarr.create_array(store=str(tmp_path / "x.zarr"), data=X, chunks=(3, 2))
    convert(tmp_path / "x.zarr", tmp_path / "x.zarr", chunk_rows=10, overwrite=True)
    out = zarr.open_array(str(tmp_path / "x.zarr"), mode="r")
    assert out.chunks == (10, 6)
    np.testing.assert_array_equal(out[:], X)


@pytest.mark.parametrize("fmt", ["npy", "csv", "mtx"])
def test_a_dataset_for_a_single_matrix_file_is_refused(tmp_path, X, fmt):
    src = tmp_path / f"x{SUFFIX[fmt]}"
    _write(src, fmt, X)
    with pytest.raises(InvalidParameterError,
                       match=r"dataset 'a' \(--dataset\) .* holds one matrix"):
        convert(src, tmp_path / "x.zarr", dataset="a")
    assert not (tmp_path / "x.zarr").exists()


def test_datasets_inside_containers(tmp_path, X):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = X
        f["b/c"] = X[:5]
    with pytest.raises(InvalidInputError, match=r"holds 2 2-D datasets \(a, b/c\); name one"):
        convert(tmp_path / "x.h5", tmp_path / "x.zarr")
    assert convert(tmp_path / "x.h5", tmp_path / "x.zarr", dataset="b/c").shape == (5, 6)
    with pytest.raises(InvalidInputError, match="no dataset 'nope'"):
        convert(tmp_path / "x.h5", tmp_path / "y.zarr", dataset="nope")
    np.savez(tmp_path / "x.npz", a=X, b=X)
    with pytest.raises(InvalidInputError, match=r"holds 2 arrays \(a, b\)"):
        convert(tmp_path / "x.npz", tmp_path / "y.zarr")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("V", data=X, chunks=(10, 6))
    assert convert(tmp_path / "g.zarr", tmp_path / "z.zarr").shape == X.shape
    assert convert(tmp_path / "g.zarr", tmp_path / "w.zarr", dataset="V").shape == X.shape


@pytest.mark.parametrize(("name", "message"), [
    ("x.parquet", "cannot tell the format"),
    ("missing.npy", "does not exist"),
    ("missing.zarr", "does not exist"),
])
def test_unreadable_sources(tmp_path, name, message):
    with pytest.raises(InvalidInputError, match=message):
        convert(tmp_path / name, tmp_path / "out.zarr")


def test_wrong_shapes_and_types(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(5))
    with pytest.raises(InvalidInputError, match=r"shape \(5,\); dnmf needs a 2-D matrix"):
        convert(tmp_path / "v.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "c.npy", np.ones((2, 2), dtype=complex))
    with pytest.raises(InvalidInputError, match="complex numbers"):
        convert(tmp_path / "c.npy", tmp_path / "o.zarr")
    (tmp_path / "t.npy").write_text("not numpy")
    with pytest.raises(InvalidInputError, match=r"cannot read .* as a NumPy \.npy file"):
        convert(tmp_path / "t.npy", tmp_path / "o.zarr")


def test_destination_checks(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="does not exist"):
        convert(tmp_path / "x.npy", tmp_path / "file" / "x.zarr")
    with pytest.raises(InvalidParameterError, match="local path"):
        convert(tmp_path / "x.npy", "s3://bucket/x.zarr")
    with pytest.raises(InvalidParameterError, match="--dtype must be float32 or float64"):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr", dtype="int8")
    with pytest.raises(InvalidParameterError, match="--chunk-rows must be a positive"):
        convert(tmp_path / "x.npy", tmp_path / "x.zarr", chunk_rows=0)


def test_detect_format(tmp_path):
    assert detect_format("a.NPY") == "npy"
    assert detect_format("a.mtx.gz") == "mtx"
    assert detect_format("s3://bucket/data") == "zarr"
    assert detect_format("a.zarr/X") == "zarr"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text("{}")
    assert detect_format(str(tmp_path / "plain")) == "zarr"


def test_npy_is_memory_mapped(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    with open_reader(str(tmp_path / "x.npy")) as reader:
        assert isinstance(reader.array, np.memmap)


def test_csr_zarr_groups_are_read_by_row_slices(tmp_path):
    from dnmf.io import write_csr_zarr

    S = sp.random(40, 9, density=0.3, random_state=1, format="csr")
    write_csr_zarr(S, tmp_path / "csr.zarr", chunk_nnz=16)
    zarr.open_group(str(tmp_path / "ad.zarr"), mode="w")
    write_csr_zarr(S, tmp_path / "ad.zarr" / "X")
    for src, dataset in (("csr.zarr", None), ("ad.zarr", "X"), ("ad.zarr/X", None)):
        dst = tmp_path / f"dense-{src.replace('/', '-')}"
        assert convert(tmp_path / src, dst, chunk_rows=16, dataset=dataset,
                       dense=True).shape == (40, 9)
        np.testing.assert_array_equal(zarr.open_array(str(dst))[:], S.toarray())
    with open_reader(str(tmp_path / "csr.zarr")) as reader:
        assert reader.streaming and reader.read(10, 20).shape == (10, 9)


# ------------------------------------------------------ full disk, dead writers
def test_convert_on_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing(
        tmp_path, small_disk):
    import subprocess
    import sys

    src = tmp_path / "V.npy"
    np.save(src, np.random.default_rng(0).random((4000, 100)))  # 3.2 MB
    disk = small_disk("1m")
    for _ in range(2):  # the adversarial suite repeats it more
        done = subprocess.run([sys.executable, "-m", "dnmf", "convert", str(src),
                               str(disk / "V.zarr")], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: cannot write {disk / 'V.zarr'}: the disk is full")
        assert "Task was destroyed" not in done.stderr and "Traceback" not in done.stderr
        assert sorted(os.listdir(disk)) == []


def test_temporaries_of_a_dead_convert_are_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from dnmf._convert import remove_dead_temporaries

    src = tmp_path / "V.npy"
    np.save(src, np.random.default_rng(0).random((50, 4)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = os.getpid()
    for tag, pid in (("tmp", dead.pid), ("transpose", dead.pid), ("tmp", alive)):
        (tmp_path / f".V.zarr.{tag}-{pid}").mkdir()
        (tmp_path / f".V.zarr.{tag}-{pid}" / "chunk").write_bytes(b"x" * 1000)
    done = subprocess.run([sys.executable, "-m", "dnmf", "convert", str(src),
                           str(tmp_path / "V.zarr")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f".V.zarr.tmp-{dead.pid} (left by process {dead.pid}, which is gone)" in done.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".V.zarr"))
    assert left == [f".V.zarr.tmp-{alive}"]  # a live writer's is never touched
    # A kill between the two renames of a replacement: the old array comes back.
    os.replace(tmp_path / "V.zarr", tmp_path / f".V.zarr.old-{dead.pid}")
    assert remove_dead_temporaries(tmp_path / "V.zarr") == [
        f"put back {tmp_path / 'V.zarr'} (a conversion killed while replacing it)"]
    assert (tmp_path / "V.zarr" / "zarr.json").exists()
