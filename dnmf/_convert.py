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

import gzip
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import DnmfError, InvalidInputError, InvalidParameterError, StoreError

__all__ = [
    "CHUNK_BYTES",
    "FORMATS",
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

#: File name endings → format.
FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".mtx": "mtx",
    ".mtx.gz": "mtx",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".zarr": "zarr",
}

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
    """The format of ``path`` from its name (or Zarr metadata), or a clear error."""
    if is_zarr(path):
        return "zarr"
    name = path.lower()
    for ending in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ending):
            return FORMATS[ending]
    known = ", ".join(sorted({e for e in FORMATS if not e.endswith(".gz")}))
    raise InvalidInputError(
        f"cannot tell the format of {path!r} from its name: dnmf reads {known} "
        f"(and .csv.gz, .tsv.gz, .mtx.gz). Rename the file or convert it first."
    )


def _numeric_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return dtype
    what = "complex numbers" if dtype.kind == "c" else f"dtype {dtype}"
    raise InvalidInputError(
        f"{where} holds {what}; NMF needs real, non-negative numbers."
    )


def _check_2d(shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise InvalidInputError(
            f"{where} has shape {tuple(shape)}; dnmf needs a 2-D matrix (rows × columns)."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidInputError(f"{where} is empty (shape {tuple(shape)}).")
    return int(shape[0]), int(shape[1])


# ------------------------------------------------------------------- readers
class Reader:
    """A 2-D source read as dense row blocks.

    Attributes
    ----------
    name : str
        How to call the source in messages.
    shape : tuple of int
        Rows and columns. For text files the row count is an upper bound until the
        file has been read (blank and comment lines are not rows).
    dtype : numpy.dtype
        The dtype the blocks come in.
    row_chunk : int or None
        The source's own chunk height, when reading whole chunks is cheaper.
    streaming : bool
        False when the reader holds the whole source in memory.
    """

    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    row_chunk: int | None = None
    streaming: bool = True
    #: True when the source is a sparse matrix (see :meth:`to_csr`).
    sparse: bool = False

    def to_csr(self) -> Any:
        """The whole source as a ``scipy.sparse.csr_matrix`` (sparse readers only)."""
        raise NotImplementedError

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, block)`` for consecutive blocks of at most ``rows`` rows."""
        n = self.shape[0]
        for start in range(0, n, rows):
            yield start, self.read(start, min(start + rows, n))

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def where(self, row: int) -> str:
        """Extra location text for a row (a line number for text files)."""
        return ""

    def close(self) -> None:
        return None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ArrayReader(Reader):
    """Anything sliceable by rows: a NumPy memory map, an HDF5 dataset, a Zarr array."""

    def __init__(self, array: Any, name: str, *, row_chunk: int | None = None,
                 streaming: bool = True, closer: Callable[[], None] | None = None) -> None:
        self.array = array
        self.name = name
        self.shape = _check_2d(tuple(array.shape), name)
        self.dtype = _numeric_dtype(array.dtype, name)
        self.row_chunk = row_chunk
        self.streaming = streaming
        self._closer = closer

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


class SparseReader(Reader):
    """A SciPy sparse matrix held compressed (CSR), densified one block at a time."""

    streaming = False
    sparse = True

    def __init__(self, matrix: Any, name: str) -> None:
        self.matrix = matrix.tocsr()
        self.name = name
        self.shape = _check_2d(tuple(self.matrix.shape), name)
        self.dtype = _numeric_dtype(self.matrix.dtype, name)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.matrix[start:stop].toarray())

    def to_csr(self) -> Any:
        return self.matrix


class CSRGroupReader(Reader):
    """A CSR matrix stored as a Zarr group (AnnData's encoding), read by row slices."""

    sparse = True

    def __init__(self, group: Any, name: str) -> None:
        from ._source import _csr_group

        self.csr = _csr_group(group, name)
        self.name = name
        self.shape = _check_2d(self.csr.shape, name)
        self.dtype = _numeric_dtype(self.csr.dtype, name)

    def read(self, start: int, stop: int) -> np.ndarray:
        from ._source import CSRPanel

        panel = CSRPanel(self.csr.data, self.csr.indices, self.csr.indptr_array, start, stop,
                         self.shape[1], self.dtype.str)
        return np.asarray(panel.load().toarray())

    def to_csr(self) -> Any:
        from ._source import CSRPanel

        self.streaming = False  # rewritten as CSR: held whole (compressed) in memory
        return CSRPanel(self.csr.data, self.csr.indices, self.csr.indptr_array, 0,
                        self.shape[0], self.shape[1], self.dtype.str).load()


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


class TextReader(Reader):
    """Delimited text (CSV/TSV, optionally gzipped) parsed in blocks of lines.

    Blank lines and lines starting with ``#`` are skipped; a first line with no
    number in it is taken for a header and skipped. A first line that mixes numbers
    and text is refused: it is a data row with a bad value, or a header whose column
    names include numbers, and guessing would drop a row or read a name as data.
    """

    def __init__(self, path: str, delimiter: str) -> None:
        self.name = path
        self.path = path
        self.delimiter = delimiter
        self.dtype = np.dtype(np.float64)
        self.header = False
        n_lines = 0
        first: str | None = None
        first_line = 0
        with self._open() as f:
            for line in f:
                n_lines += 1
                if first is None and line.strip() and not line.lstrip().startswith("#"):
                    first, first_line = line, n_lines
        if first is None:
            raise InvalidInputError(f"{path} holds no data rows.")
        fields = first.strip().split(delimiter)
        text = [i for i, x in enumerate(fields) if not _is_number(x)]
        if text and len(text) < len(fields):
            raise InvalidInputError(
                f"{path}, line {first_line}: {fields[text[0]].strip()!r} (field {text[0] + 1}) "
                f"is not a number, but other fields of that line are. If it is a header, "
                f"name every column with text (not a number); if it is data, fix the value."
            )
        if text:
            self.header = True
            n_lines -= 1
        if n_lines < 1:
            raise InvalidInputError(f"{path} holds a header line but no data rows.")
        self.shape = (n_lines, len(fields))
        self._line_of: list[int] = []

    def _open(self) -> IO[str]:
        if self.path.lower().endswith(".gz"):
            return gzip.open(self.path, "rt", encoding="utf-8", newline="")
        return open(self.path, encoding="utf-8", newline="")

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        with self._open() as f:
            numbered = (
                (number, line)
                for number, line in enumerate(f, start=1)
                if line.strip() and not line.lstrip().startswith("#")
            )
            if self.header:
                next(numbered, None)
            while True:
                chunk = list(itertools.islice(numbered, rows))
                if not chunk:
                    return
                self._line_of = [number for number, _ in chunk]
                self._row0 = start
                yield start, self._parse([line for _, line in chunk])
                start += len(chunk)

    def _parse(self, lines: list[str]) -> np.ndarray:
        try:
            block = np.loadtxt(lines, delimiter=self.delimiter, dtype=np.float64,
                               ndmin=2, comments=None)
        except ValueError as exc:
            raise InvalidInputError(self._explain(str(exc))) from None
        if block.shape[1] != self.shape[1]:
            raise InvalidInputError(
                f"{self.name}, line {self._line_of[0]}: {block.shape[1]} fields where the "
                f"first row has {self.shape[1]}."
            )
        return block

    def _explain(self, message: str) -> str:
        import re

        bad = re.search(r"could not convert string '(.*)' to \w+ at row (\d+), column (\d+)",
                        message)
        if bad:
            text, row, column = bad.group(1), int(bad.group(2)), int(bad.group(3))
            what = "an empty field" if text == "" else f"{text!r}, which is not a number,"
            return (f"{self.name}, line {self._line_of[row]}: {what} in field {column}; "
                    f"every field must be a number.")
        ragged = re.search(r"number of columns changed from (\d+) to (\d+) at row (\d+)",
                           message)
        if ragged:
            before, after, row = (int(g) for g in ragged.groups())
            return (f"{self.name}, line {self._line_of[row - 1]}: {after} fields where the "
                    f"previous rows have {before}; every row needs the same number of "
                    f"fields.")
        return f"{self.name}: cannot parse the file as numbers ({message})."

    def where(self, row: int) -> str:
        offset = row - getattr(self, "_row0", 0)
        if 0 <= offset < len(self._line_of):
            return f" (line {self._line_of[offset]})"
        return ""


def _open_npy(path: str) -> Reader:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InvalidInputError(f"cannot read {path} as a NumPy .npy file ({exc}).") from None
    return ArrayReader(array, path)


def _open_npz(path: str, dataset: str | None) -> Reader:
    import scipy.sparse as sp

    try:
        return SparseReader(sp.load_npz(path), path)
    except (ValueError, KeyError, OSError):
        pass  # not a SciPy sparse archive: try a NumPy archive of arrays
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InvalidInputError(
            f"cannot read {path} as a SciPy sparse matrix or a NumPy .npz archive ({exc})."
        ) from None
    with archive:
        names = list(archive.files)
        if dataset is None:
            if len(names) != 1:
                raise InvalidInputError(
                    f"{path} holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                    f"name one with --dataset."
                )
            dataset = names[0]
        if dataset not in names:
            raise InvalidInputError(
                f"{path} has no array {dataset!r}; it holds: {', '.join(names)}."
            )
        array = archive[dataset]
    return ArrayReader(array, f"{path}:{dataset}", streaming=False)


def _open_mtx(path: str) -> Reader:
    import scipy.io

    try:
        matrix = scipy.io.mmread(path)
    except Exception as exc:
        raise InvalidInputError(f"cannot read {path} as Matrix Market ({exc}).") from None
    import scipy.sparse as sp

    if sp.issparse(matrix):
        return SparseReader(matrix, path)
    return ArrayReader(np.asarray(matrix), path, streaming=False)


def _open_hdf5(path: str, dataset: str | None) -> Reader:
    try:
        import h5py
    except ImportError:
        raise DnmfError("reading HDF5 files needs h5py: pip install 'dnmf[hdf5]'.") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path} as HDF5 ({exc}).") from None
    try:
        if dataset is None:
            found: list[str] = []
            f.visititems(
                lambda name, obj: found.append(name)
                if isinstance(obj, h5py.Dataset) and obj.ndim == 2 else None
            )
            if len(found) != 1:
                listing = ", ".join(found) if found else "none"
                raise InvalidInputError(
                    f"{path} holds {len(found)} 2-D datasets ({listing}); name one with "
                    f"--dataset."
                )
            dataset = found[0]
        obj = f.get(dataset)
        if not isinstance(obj, h5py.Dataset):
            raise InvalidInputError(f"{path} has no dataset {dataset!r}.")
        chunks = obj.chunks[0] if obj.chunks else None
        return ArrayReader(obj, f"{path}:{dataset}", row_chunk=chunks, closer=f.close)
    except BaseException:
        f.close()
        raise


def _open_zarr(path: str, dataset: str | None) -> Reader:
    import zarr

    if "://" not in path and not os.path.exists(path):
        raise InvalidInputError(f"{path} does not exist.")
    try:
        node = zarr.open(store=path, mode="r")
    except Exception as exc:
        raise InvalidInputError(f"cannot open {path} as Zarr ({exc}).") from None
    from ._source import is_csr_group

    if is_csr_group(node) and dataset is None:
        return CSRGroupReader(node, path)
    if isinstance(node, zarr.Group):
        if dataset is None:
            arrays = [name for name, _ in node.arrays()]
            if len(arrays) != 1:
                raise InvalidInputError(
                    f"{path} is a Zarr group with {len(arrays)} arrays "
                    f"({', '.join(arrays) or 'none'}); name one with --dataset."
                )
            dataset = arrays[0]
        try:
            node = node[dataset]
        except KeyError:
            raise InvalidInputError(f"{path} has no array {dataset!r}.") from None
        if is_csr_group(node):
            return CSRGroupReader(node, f"{path}/{dataset}")
        if not isinstance(node, zarr.Array):
            raise InvalidInputError(f"{path}/{dataset} is a group, not an array.")
        path = f"{path}/{dataset}"
    return ArrayReader(node, path, row_chunk=int(node.chunks[0]))


def is_sparse_source(path: str, *, dataset: str | None = None) -> bool:
    """True when ``path`` holds a sparse matrix (SciPy ``.npz``, coordinate ``.mtx``,
    CSR Zarr group), told from its header alone; False when unsure."""
    path = os.fspath(path)
    try:
        fmt = detect_format(path)
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as archive:
                return {"format", "shape", "data"} <= set(archive.files)
        if fmt == "mtx":
            import scipy.io

            return scipy.io.mminfo(path)[3] == "coordinate"
        if fmt == "zarr":
            import zarr

            from ._source import is_csr_group

            node: Any = zarr.open(store=path, mode="r")
            if dataset is not None:
                node = node[dataset]
            return is_csr_group(node)
    except Exception:
        return False
    return False


def open_reader(path: str, *, dataset: str | None = None) -> Reader:
    """A :class:`Reader` for ``path`` (format from its name), or a clear error."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt != "zarr" and not os.path.exists(path):
        raise InvalidInputError(f"{path} does not exist.")
    if fmt != "zarr" and os.path.isdir(path):
        raise InvalidInputError(f"{path} is a directory, not a {fmt} file.")
    if dataset is not None and fmt not in ("npz", "hdf5", "zarr"):
        raise InvalidParameterError(
            f"dataset {dataset!r} (--dataset) names an array inside a container (NPZ, "
            f"HDF5, Zarr group), but {path} ({fmt.upper()}) holds one matrix: leave the "
            f"dataset out."
        )
    if fmt == "npy":
        return _open_npy(path)
    if fmt == "npz":
        return _open_npz(path, dataset)
    if fmt == "mtx":
        return _open_mtx(path)
    if fmt in ("csv", "tsv"):
        return TextReader(path, "," if fmt == "csv" else "\t")
    if fmt == "hdf5":
        return _open_hdf5(path, dataset)
    return _open_zarr(path, dataset)


# ------------------------------------------------------------------ checking
def _check_block(block: np.ndarray, start: int, reader: Reader) -> None:
    """Refuse NaN, ±inf and negative values, naming the first one's position."""
    if block.dtype.kind in "bu":
        return
    nonfinite = ~np.isfinite(block) if block.dtype.kind == "f" else None
    for mask, what, fix in (
        (nonfinite, "NaN or infinite", "impute or drop them first"),
        (block < 0, "negative", "shift or clip the data first"),
    ):
        if mask is None or not mask.any():
            continue
        r, c = (int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))
        raise InvalidInputError(
            f"{reader.name} has a {what} value ({float(block[r, c]):g}) at row {start + r}, "
            f"column {c}{reader.where(start + r)}: NMF needs finite, non-negative data; "
            f"{fix}."
        )


def _cast(block: np.ndarray, start: int, reader: Reader, dtype: np.dtype) -> np.ndarray:
    """``block`` checked, in ``dtype``; values that overflow the cast are refused."""
    _check_block(block, start, reader)
    with np.errstate(over="ignore"):
        cast = block.astype(dtype, copy=False)
    if cast is not block and block.dtype.kind == "f" and not np.isfinite(cast).all():
        r, c = (int(i) for i in np.argwhere(~np.isfinite(cast))[0])
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _create(path: Path, shape: tuple[int, int], chunks: tuple[int, int], dtype: np.dtype,
            attributes: dict[str, Any]) -> Any:
    import zarr

    try:
        return zarr.create_array(
            store=str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            zarr_format=3, attributes=attributes, overwrite=True,
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

    Raises
    ------
    InvalidInputError
        Unreadable source, or a negative, NaN or infinite value (with its position).
    StoreError
        ``dst`` exists (without ``overwrite``) or cannot be written.
    """
    src_text = os.fspath(src)
    dst_path = check_destination(dst, overwrite=overwrite)
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise InvalidParameterError(
            f"--chunk-rows must be a positive number of rows, got {chunk_rows!r}."
        )
    with open_reader(src_text, dataset=dataset) as reader:
        out_dtype = _output_dtype(dtype, reader.dtype)
        n, m = reader.shape
        sparse = reader.sparse and not dense
        if sparse and chunk_rows is not None:
            raise InvalidParameterError(
                f"--chunk-rows applies to dense output, but {src_text} is sparse and is "
                f"written as a CSR group (chunked by stored entries): leave --chunk-rows "
                f"out, or add --dense."
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
                **(attributes or {}),
            }
        }
        tmp = _temporary_name(dst_path, "tmp")
        scratch = _temporary_name(dst_path, "transpose")
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
                                            on_rows)
            else:
                written = _write_rows(reader, tmp, rows, out_dtype, attrs, on_rows)
            _replace(tmp, dst_path)
        except BaseException:
            _remove(tmp)
            raise
        finally:
            _remove(scratch)
        return ConvertResult(str(dst_path), written, str(out_dtype), rows, reader.streaming)


def _read_rows(reader: Reader, chunk_rows: int, row_bytes: int) -> int:
    """Rows per read: whole output chunks, about one chunk's bytes, source-aligned."""
    rows = chunk_rows * max(1, CHUNK_BYTES // max(1, chunk_rows * row_bytes))
    if reader.row_chunk and reader.row_chunk > rows:
        rows = (reader.row_chunk // chunk_rows or 1) * chunk_rows
    return rows


def _write_rows(reader: Reader, tmp: Path, chunk_rows: int, dtype: np.dtype,
                attrs: dict[str, Any], on_rows: Callable[[int, int], None] | None
                ) -> tuple[int, int]:
    n, m = reader.shape
    out = _create(tmp, (n, m), (chunk_rows, m), dtype, attrs)
    done = 0
    for start, block in reader.blocks(_read_rows(reader, chunk_rows, m * dtype.itemsize)):
        cast = _cast(block, start, reader, dtype)
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
                      on_rows: Callable[[int, int], None] | None) -> tuple[int, int]:
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
        cast = _cast(block, start, reader, dtype)
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

