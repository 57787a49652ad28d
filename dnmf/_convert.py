"""Streaming conversion of data files into the Zarr v3 array that dnmf reads.

A *reader* presents a source (``.npy``, ``.npz``, ``.mtx``, ``.csv``/``.tsv``,
``.h5``/``.hdf5`` or a Zarr array) as a sequence of dense row blocks; :func:`convert`
checks every block (no negative, NaN or infinite value: the first one is reported
with its position) and appends it to a Zarr v3 array chunked by rows. Sources are
streamed: ``.npy`` through a memory map, text in blocks of lines, HDF5 and Zarr by
slicing. The exceptions are Matrix Market files and NumPy ``.npz`` archives of dense
arrays, which are read whole. A sparse source (SciPy sparse ``.npz``, coordinate
``.mtx``, CSR Zarr group) is held compressed and written as a CSR Zarr group, by
blocks of rows; with ``dense=True`` it is densified one block at a time instead.

The destination is written under a temporary name next to it and renamed into place
only when complete, so a failed or interrupted conversion leaves no half-written
array and never touches an existing one. This module owns file formats; it knows
nothing about NMF.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidParameterError, StoreError
from .io._blocks import Reader, check_block

logger = logging.getLogger("dnmf")

__all__ = [
    "CHUNK_BYTES",
    "ConvertResult",
    "Reader",
    "check_destination",
    "check_writable",
    "convert",
    "default_chunk_rows",
    "detect_format",
    "is_sparse_source",
    "is_zarr",
    "open_reader",
]

#: Target size of one chunk of the converted array.
CHUNK_BYTES = 64 * 2**20


OUTPUT_DTYPES = ("float32", "float64")


# ----------------------------------------------------------------- detection
def is_zarr(path: str) -> bool:
    """True for a URL, a ``*.zarr`` path or a directory holding Zarr metadata."""
    if "://" in path:
        return True
    stripped = path.rstrip("/")
    if stripped.endswith(".zarr") or ".zarr/" in stripped or stripped.endswith(".zarr.zip"):
        return True
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def detect_format(path: str) -> str:
    """The reader :func:`dnmf.io.open_source` uses for ``path`` (``"npy"``, ``"csv"``,
    ``"hdf5"``, ``"zarr"``, ...), from its content or name, or a clear error."""
    from .io import _readers  # noqa: F401  (registers the readers)
    from .io._base import guess_engine, split_inner

    return guess_engine(split_inner(path)[0]).name


def is_sparse_source(path: str, *, dataset: str | None = None, **options: Any) -> bool:
    """True when ``path`` holds a sparse matrix, told without reading its values;
    False when unsure."""
    from .io import open_source

    try:
        return bool(open_source(os.fspath(path), dataset=dataset, **options).sparse)
    except Exception:
        return False


def open_reader(path: str, *, dataset: str | None = None, **options: Any) -> Reader:
    """A :class:`Reader` over the rows of ``path`` (any format :func:`dnmf.io.open_source`
    reads), or a clear error."""
    from .io import open_source

    path = os.fspath(path)
    return open_source(path, dataset=dataset, **options).reader()


# ------------------------------------------------------------------ checking
def _cast(block: np.ndarray, start: int, reader: Reader, dtype: np.dtype,
          allow_nan: bool = False) -> np.ndarray:
    """``block`` checked, in ``dtype``; values that overflow the cast are refused."""
    check_block(block, start, reader, allow_nan=allow_nan)
    with np.errstate(over="ignore"):
        cast = block.astype(dtype, copy=False)
    if cast is not block and block.dtype.kind == "f" and np.isinf(cast).any():
        r, c = (int(i) for i in np.argwhere(np.isinf(cast))[0])
        raise InvalidInputError(
            f"{reader.name} has a value ({float(block[r, c]):g}) at row {start + r}, column {c}"
            f"{reader.where(start + r)} too large for {dtype}; use --dtype float64."
        )
    return cast


# ----------------------------------------------------------------- conversion
@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` wrote."""

    path: str
    shape: tuple[int, int]
    dtype: str
    chunk_rows: int
    streamed: bool
    #: Stored entries when written as a CSR group (sparse), else None.
    nnz: int | None = None


def default_chunk_rows(n_rows: int, n_cols: int, dtype: Any) -> int:
    """Rows per chunk for about :data:`CHUNK_BYTES` per chunk."""
    row_bytes = max(1, n_cols * np.dtype(dtype).itemsize)
    return int(max(1, min(n_rows, CHUNK_BYTES // row_bytes)))


def _output_dtype(dtype: str | None, source: np.dtype) -> np.dtype:
    if dtype is None:
        if source in (np.float32, np.float64):
            return np.dtype(source)
        if source.kind == "f" and source.itemsize < 4:
            return np.dtype(np.float32)
        return np.dtype(np.float64)
    if dtype not in OUTPUT_DTYPES:
        raise InvalidParameterError(f"--dtype must be float32 or float64, got {dtype!r}.")
    return np.dtype(dtype)


def _temporary_name(dst: Path, tag: str) -> Path:
    return dst.with_name(f".{dst.name}.{tag}-{os.getpid()}")


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|transpose|old|replaced)-(?P<pid>\d+)$")


def remove_dead_temporaries(dst: Path) -> list[str]:
    """Clean what writers of ``dst`` killed mid-way left beside it; say what was done.

    A conversion writes ``.DST.tmp-PID`` (and ``.DST.transpose-PID``) and moves an old
    ``DST`` to ``.DST.old-PID`` just before the new one takes its place. For a PID
    that no longer runs, the first two are removed; an old copy is put back if
    ``DST`` is missing (the kill fell between the two renames), else removed.
    """
    from ._store import _pid_alive

    done: list[str] = []
    parent = dst.parent if str(dst.parent) else Path(".")
    try:
        names = os.listdir(parent)
    except OSError:
        return done
    for name in sorted(names):
        found = _TEMPORARY.match(name)
        if not found or found["name"] != dst.name or found["tag"] == "replaced":
            continue
        if _pid_alive(int(found["pid"]), None):
            continue
        path = parent / name
        if found["tag"] == "old" and not dst.exists():
            os.replace(path, dst)
            done.append(f"put back {dst} (a conversion killed while replacing it)")
        else:
            _remove(path)
            done.append(f"removed {path} (left by process {found['pid']}, which is gone)")
    return done


def _disk_full(exc: OSError, dst: Path, tmp: Path) -> StoreError:
    """The message for an OSError while writing ``tmp`` (ENOSPC / EDQUOT named)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk is full" if full else (exc.strerror or str(exc))
    return StoreError(
        f"cannot write {dst}: {what} ({exc.strerror or exc}) while writing "
        f"{exc.filename or tmp}; nothing was written at {dst}"
        + ("; free some space or choose another place." if full else ".")
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _create(path: Path, shape: tuple[int, int], chunks: tuple[int, int], dtype: np.dtype,
            attributes: dict[str, Any]) -> Any:
    import zarr

    try:
        # Zarr's default compression, then a CRC-32C of every stored chunk: a chunk
        # damaged on disk (a flipped bit) fails to decode, naming it, instead of
        # decoding to other numbers (docs/checkpoints.md).
        return zarr.create_array(
            store=str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            zarr_format=3, attributes=attributes, overwrite=True,
            compressors=[zarr.codecs.ZstdCodec(level=0, checksum=False),
                         zarr.codecs.Crc32cCodec()],
        )
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}.") from None


def check_destination(dst: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """The destination as a local path, refusing to replace it without ``overwrite``."""
    text = os.fspath(dst)
    if "://" in text:
        raise InvalidParameterError(
            f"convert writes to a local path, got {text!r}; convert locally, then copy "
            f"the .zarr directory to object storage."
        )
    path = Path(text)
    if path.exists() and not overwrite:
        raise StoreError(f"{text} already exists; pass --overwrite to replace it.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"cannot write {text}: the directory {parent} does not exist.")
    check_writable(parent, text)
    return path


def check_writable(directory: Path, target: str) -> None:
    """Refuse early, with a clear message, when nothing can be created in ``directory``."""
    try:  # os.access says yes to root on a read-only file system: try for real
        os.rmdir(tempfile.mkdtemp(prefix=".dnmf-probe-", dir=directory))
    except OSError as exc:
        raise StoreError(
            f"cannot write {target}: the directory {directory} is not writable "
            f"({exc.strerror or exc})."
        ) from None


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunk_rows: int | None = None,
    dtype: str | None = None,
    transpose: bool = False,
    dataset: str | None = None,
    overwrite: bool = False,
    attributes: dict[str, Any] | None = None,
    on_rows: Callable[[int, int], None] | None = None,
    dense: bool = False,
    layer: str | None = None,
    raw: bool = False,
    index_col: int | bool | None = None,
    storage_options: dict[str, Any] | None = None,
    missing: str | None = None,
) -> ConvertResult:
    """Write ``src`` as a Zarr v3 array at ``dst``, chunked by rows.

    A sparse source (a SciPy sparse ``.npz``, a coordinate ``.mtx``, a CSR Zarr group)
    is written as a CSR Zarr group (:func:`dnmf.io.write_csr_zarr`, the AnnData
    encoding) unless ``dense=True``.

    Parameters
    ----------
    src : path
        A ``.npy``, ``.npz``, ``.mtx``, ``.csv``, ``.tsv``, ``.h5``/``.hdf5`` file or a
        Zarr array (rechunked).
    dst : path
        Local path of the new array. Replaced only with ``overwrite=True``, and only
        once the new array is complete.
    chunk_rows : int, optional
        Rows per chunk; default about 64 MiB per chunk.
    dtype : {"float32", "float64"}, optional
        Default: the source's float dtype, float64 for integers.
    transpose : bool, default=False
        Store the transpose (rows become columns).
    dataset : str, optional
        The array inside an HDF5 file, a Zarr group or a NumPy ``.npz`` archive.
    attributes : dict, optional
        Extra Zarr attributes to store.
    on_rows : callable(done, total), optional
        Told how many rows of the source have been read.
    dense : bool, default=False
        Write a sparse source as a dense array too.
    layer, raw, index_col, storage_options
        As for :func:`dnmf.io.open_source`.
    missing : {None, "nan"}, default=None
        ``"nan"``: keep NaN entries (missing values, for ``NMF(missing="nan")``)
        instead of refusing them; ±inf and negative values are still refused. Dense
        output only (a sparse source needs ``dense=True``).

    The source's row and column names (AnnData obs/var, a CSV header and index
    column, 10x barcodes and genes) are recorded in the attributes of the array
    written (``dnmf.obs_names``, ``dnmf.var_names``; up to :data:`MAX_NAMES` each),
    where :func:`dnmf.io.open_source` finds them again.

    Raises
    ------
    InvalidInputError
        Unreadable source, or a negative, NaN (without ``missing="nan"``) or infinite
        value (with its position).
    StoreError
        ``dst`` exists (without ``overwrite``) or cannot be written.
    """
    src_text = os.fspath(src)
    if missing not in (None, "nan"):
        raise InvalidParameterError(
            f"missing must be None or 'nan' (NaN entries kept as missing values), got "
            f"{missing!r}; a sparse source's unstored entries need no conversion option "
            f"(fit it with missing='unstored')."
        )
    allow_nan = missing == "nan"
    dst_path = check_destination(dst, overwrite=overwrite)
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise InvalidParameterError(
            f"--chunk-rows must be a positive number of rows, got {chunk_rows!r}."
        )
    from .io import open_source

    source = open_source(src_text, dataset=dataset, layer=layer, raw=raw,
                         index_col=index_col, storage_options=storage_options)
    with source.reader() as reader:
        out_dtype = _output_dtype(dtype, reader.dtype)
        n, m = reader.shape
        sparse = reader.sparse and not dense
        if sparse and chunk_rows is not None:
            raise InvalidParameterError(
                f"--chunk-rows applies to dense output, but {src_text} is sparse and is "
                f"written as a CSR group (chunked by stored entries): leave --chunk-rows "
                f"out, or add --dense."
            )
        if sparse and allow_nan:
            raise InvalidParameterError(
                f"--missing nan keeps NaN entries in a dense array, but {src_text} is "
                f"sparse: add --dense to write it dense, or convert without --missing and "
                f"fit with --missing unstored if its unstored entries are the missing ones."
            )
        out_shape = (m, n) if transpose else (n, m)
        rows = chunk_rows or default_chunk_rows(out_shape[0], out_shape[1], out_dtype)
        rows = min(rows, out_shape[0])
        attrs = {
            "dnmf": {
                "converted_from": os.path.abspath(src_text) if "://" not in src_text
                else src_text,
                "dataset": dataset,
                "transposed": bool(transpose),
                **_names(source, transpose),
                **({"missing": "nan"} if allow_nan else {}),
                **(attributes or {}),
            }
        }
        tmp = _temporary_name(dst_path, "tmp")
        scratch = _temporary_name(dst_path, "transpose")
        for line in remove_dead_temporaries(dst_path):
            logger.warning("%s", line)
        try:
            _remove(tmp)
            if sparse:
                written, nnz = _write_sparse(reader, tmp, out_dtype, transpose, attrs,
                                             on_rows)
                _replace(tmp, dst_path)
                return ConvertResult(str(dst_path), written, str(out_dtype), 0,
                                     reader.streaming, nnz)
            if transpose:
                written = _write_transposed(reader, tmp, scratch, rows, out_dtype, attrs,
                                            on_rows, allow_nan)
            else:
                written = _write_rows(reader, tmp, rows, out_dtype, attrs, on_rows,
                                      allow_nan)
            _replace(tmp, dst_path)
        except OSError as exc:
            _remove(tmp)
            if isinstance(exc, StoreError):
                raise
            raise _disk_full(exc, dst_path, tmp) from None
        except BaseException:
            _remove(tmp)
            raise
        finally:
            _remove(scratch)
        return ConvertResult(str(dst_path), written, str(out_dtype), rows, reader.streaming)


#: Names kept in a converted array's attributes, at most, per axis.
MAX_NAMES = 200_000


def _names(source: Any, transpose: bool) -> dict[str, Any]:
    """Row and column names to record, when the source has them (and not too many)."""
    found = {}
    for key, names in (("obs_names", source.obs_names), ("var_names", source.var_names)):
        if names is not None and len(names) <= MAX_NAMES:
            found[key] = list(names)
    if transpose:
        swap = {"obs_names": "var_names", "var_names": "obs_names"}
        found = {swap[k]: v for k, v in found.items()}
    return found


def _read_rows(reader: Reader, chunk_rows: int, row_bytes: int) -> int:
    """Rows per read: whole output chunks, about one chunk's bytes, source-aligned."""
    rows = chunk_rows * max(1, CHUNK_BYTES // max(1, chunk_rows * row_bytes))
    if reader.row_chunk and reader.row_chunk > rows:
        rows = (reader.row_chunk // chunk_rows or 1) * chunk_rows
    return rows


def _write_rows(reader: Reader, tmp: Path, chunk_rows: int, dtype: np.dtype,
                attrs: dict[str, Any], on_rows: Callable[[int, int], None] | None,
                allow_nan: bool = False) -> tuple[int, int]:
    n, m = reader.shape
    out = _create(tmp, (n, m), (chunk_rows, m), dtype, attrs)
    done = 0
    for start, block in reader.blocks(_read_rows(reader, chunk_rows, m * dtype.itemsize)):
        cast = _cast(block, start, reader, dtype, allow_nan)
        out[start : start + len(block)] = cast
        done = start + len(block)
        if on_rows is not None:
            on_rows(done, n)
    if done != n:  # text files: fewer rows than lines
        out.resize((done, m))
    return (done, m)


def _write_sparse(reader: Reader, tmp: Path, dtype: np.dtype, transpose: bool,
                  attrs: dict[str, Any], on_rows: Callable[[int, int], None] | None
                  ) -> tuple[tuple[int, int], int]:
    """A sparse source as a CSR Zarr group: values checked, then written by row blocks."""
    import scipy.sparse as sp
    import zarr

    from .io import write_csr_zarr

    csr = sp.csr_matrix(reader.to_csr())
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    values = csr.data
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype, copy=False)
        for bad, what, fix in (
            (~np.isfinite(values) if values.dtype.kind == "f" else None, "NaN or infinite",
             "impute or drop them first"),
            (values < 0, "negative", "shift or clip the data first"),
            (~np.isfinite(cast) if cast is not values else None, f"{dtype}-overflowing",
             "use --dtype float64"),
        ):
            if bad is None or not bad.any():
                continue
            at = int(np.argmax(bad))
            row = int(np.searchsorted(csr.indptr, at, side="right")) - 1
            raise InvalidInputError(
                f"{reader.name} has a {what} value ({float(values[at]):g}) at row {row}, "
                f"column {int(csr.indices[at])}: NMF needs finite, non-negative data; "
                f"{fix}."
            )
    if transpose:
        csr = csr.T.tocsr()
    try:
        write_csr_zarr(csr, tmp, dtype=dtype, overwrite=True)
        zarr.open_group(store=str(tmp), mode="r+").attrs.update(attrs)
    except OSError as exc:
        raise StoreError(f"cannot write {tmp}: {exc.strerror or exc}.") from None
    if on_rows is not None:
        on_rows(reader.shape[0], reader.shape[0])
    return (int(csr.shape[0]), int(csr.shape[1])), int(csr.nnz)


def _write_transposed(reader: Reader, tmp: Path, scratch: Path, chunk_rows: int,
                      dtype: np.dtype, attrs: dict[str, Any],
                      on_rows: Callable[[int, int], None] | None,
                      allow_nan: bool = False) -> tuple[int, int]:
    """Two streaming passes: rows into column tiles, then column strips out as rows.

    Reading a column strip of a row-chunked array would read the whole array once per
    strip; tiles chunked (block rows × ``chunk_rows`` columns) make each strip read
    only its own tiles.
    """
    n, m = reader.shape
    block_rows = max(1, CHUNK_BYTES // max(1, chunk_rows * dtype.itemsize))
    block_rows = min(block_rows, n)
    tiles = _create(scratch, (n, m), (block_rows, chunk_rows), dtype, {})
    done = 0
    for start, block in reader.blocks(block_rows):
        cast = _cast(block, start, reader, dtype, allow_nan)
        tiles[start : start + len(block)] = cast
        done = start + len(block)
        if on_rows is not None:
            on_rows(done, n)
    if done != n:
        tiles.resize((done, m))
    out = _create(tmp, (m, done), (chunk_rows, done), dtype, attrs)
    for col in range(0, m, chunk_rows):
        stop = min(col + chunk_rows, m)
        out[col:stop] = np.ascontiguousarray(np.asarray(tiles[:, col:stop]).T)
    return (m, done)


def _replace(tmp: Path, dst: Path) -> None:
    """Move the finished ``tmp`` to ``dst``; an old ``dst`` is removed only after."""
    old = _temporary_name(dst, "old") if dst.exists() else None
    try:
        if old is not None:
            os.replace(dst, old)
        os.replace(tmp, dst)
    except OSError as exc:
        if old is not None and not dst.exists():
            os.replace(old, dst)
        raise StoreError(f"cannot move the new array into place at {dst}: {exc}.") from None
    if old is not None:
        _remove(old)

