"""Readers of single files: NumPy ``.npy`` (memory-mapped) and ``.npz``, Matrix Market
``.mtx``, delimited text ``.csv``/``.tsv`` (optionally gzipped)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StoreError
from ._base import Engine, Source, register
from ._blocks import (
    ArrayReader,
    SparseReader,
    TextReader,
    check_2d,
    check_block,
    numeric_dtype,
)


def _magic(path: str, prefix: bytes) -> bool:
    if "://" in path or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def _local(path: str) -> str:
    return os.path.abspath(path)


#: Memory maps of .npy files opened in this process: (path, mtime_ns, size) → memmap.
_MAPS: dict[tuple[str, int, int], np.ndarray] = {}


class NpyArray:
    """A ``.npy`` file read in place by row ranges: sliceable, picklable by its path
    (a task on a worker maps the file itself; nothing of V travels), C order on read.

    The engine reads it as it reads a Zarr array (``PanelSource("zarr", ...)``), so
    ``dnmf fit X.npy`` needs no conversion and a run records the file as its source.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = self.shape  # for messages only: one "chunk", the file
        self.ndim = len(self.shape)

    def _map(self) -> np.ndarray:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise InvalidInputError(f"cannot read {self.path}: {exc.strerror or exc}.") \
                from None
        key = (self.path, stat.st_mtime_ns, stat.st_size)
        array = _MAPS.get(key)
        if array is None:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            if tuple(array.shape) != self.shape or array.dtype != self.dtype:
                raise InvalidInputError(
                    f"{self.path} changed: it holds {array.shape} {array.dtype} now, "
                    f"{self.shape} {self.dtype} when it was opened.")
            for old in [k for k in _MAPS if k[0] == self.path]:
                del _MAPS[old]
            _MAPS[key] = array
        return array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.ascontiguousarray(self._map()[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        block = self[...]
        return block if dtype is None else block.astype(dtype, copy=False)

    def __reduce__(self) -> Any:
        return (NpyArray, (self.path, self.shape, self.dtype.str))

    def __dask_tokenize__(self) -> Any:
        stat = os.stat(self.path)
        return ("dnmf-npy", self.path, stat.st_mtime_ns, stat.st_size)

    def __repr__(self) -> str:
        return f"NpyArray({self.path}, shape={self.shape}, dtype={self.dtype})"


def open_npy(path: str, **options: Any) -> Source:
    from .._source import PanelSource, _float_dtype

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InvalidInputError(f"cannot read {path} as a NumPy .npy file ({exc}).") from None
    shape = check_2d(tuple(array.shape), path)
    dtype = numeric_dtype(array.dtype, path)
    lazy = NpyArray(_local(path), shape, array.dtype)

    def load() -> PanelSource:
        return PanelSource("zarr", lazy, shape, _float_dtype(dtype, path), None)

    return Source("npy", path, shape, dtype, False, _local(path), load,
                  blocks=lambda: ArrayReader(array, path))


def open_npz(path: str, *, dataset: str | None = None, **options: Any) -> Source:
    import scipy.sparse as sp

    try:
        matrix = sp.load_npz(path)
    except (ValueError, KeyError, OSError):
        matrix = None  # not a SciPy sparse archive: a NumPy archive of arrays
    if matrix is not None:
        if dataset is not None:
            raise InvalidInputError(
                f"{path} is a SciPy sparse matrix, not an archive of arrays: leave out the "
                f"dataset {dataset!r} (--dataset)."
            )
        csr = matrix.tocsr()
        shape = check_2d(tuple(csr.shape), path)
        return Source("npz", path, shape, numeric_dtype(csr.dtype, path), True,
                      _local(path), lambda: csr, streamed=False,
                      blocks=lambda: SparseReader(csr, path))
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
    name = f"{path}:{dataset}"
    shape = check_2d(tuple(array.shape), name)
    return Source("npz", name, shape, numeric_dtype(array.dtype, name), False,
                  f"{_local(path)}/{dataset}",
                  lambda: array, streamed=False,
                  blocks=lambda: ArrayReader(array, name, streaming=False))


def open_mtx(path: str, **options: Any) -> Source:
    import scipy.io
    import scipy.sparse as sp

    try:
        matrix = scipy.io.mmread(path)
    except Exception as exc:
        raise InvalidInputError(f"cannot read {path} as Matrix Market ({exc}).") from None
    if sp.issparse(matrix):
        csr = matrix.tocsr()
        shape = check_2d(tuple(csr.shape), path)
        return Source("mtx", path, shape, numeric_dtype(csr.dtype, path), True, _local(path),
                      lambda: csr, streamed=False, blocks=lambda: SparseReader(csr, path))
    dense = np.asarray(matrix)
    shape = check_2d(tuple(dense.shape), path)
    return Source("mtx", path, shape, numeric_dtype(dense.dtype, path), False, _local(path),
                  lambda: dense, streamed=False,
                  blocks=lambda: ArrayReader(dense, path, streaming=False))


#: The environment variable that caps what reading a text file whole may take (bytes,
#: or with a K/M/G suffix); default half of the memory available when it is read.
READ_WHOLE_LIMIT = "DNMF_READ_WHOLE_LIMIT"


def _read_whole_limit() -> int | None:
    value = os.environ.get(READ_WHOLE_LIMIT, "").strip()
    if value:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        scale = units.get(value[-1].upper(), 1)
        try:
            return int(float(value[:-1] if scale != 1 else value) * scale)
        except ValueError:
            raise InvalidInputError(
                f"{READ_WHOLE_LIMIT}={value!r} is not a size: give bytes or a number with "
                f"K, M or G (e.g. 8G).") from None
    try:
        import psutil

        return int(psutil.virtual_memory().available) // 2
    except Exception:  # pragma: no cover - psutil is a dependency
        return None


#: The environment variable naming the directory where ``NMF.fit("X.csv")`` converts
#: a text file too large to read whole (default: the system's temporary directory).
SPILL_DIR = "DNMF_TMPDIR"

logger = logging.getLogger("dnmf")


def fits_whole(shape: tuple[int, int], dtype: Any) -> bool:
    """Whether a text file's values may be read whole into memory: at most
    :data:`READ_WHOLE_LIMIT` (default half the memory available)."""
    need = int(shape[0]) * int(shape[1]) * np.dtype(dtype).itemsize
    limit = _read_whole_limit()
    return limit is None or need <= limit


def _spill(path: str, index_col: int | bool | None, shape: tuple[int, int]) -> Any:
    """``path`` converted, a block of lines at a time, into a Zarr array in a private
    temporary directory (under :data:`SPILL_DIR`), opened for the engine's panels.

    The directory is removed when the returned array is garbage collected (the fit
    that read it has ended) or when Python exits. A failed conversion leaves nothing.
    """
    import zarr

    from .._convert import convert

    base = os.environ.get(SPILL_DIR, "").strip() or None
    try:
        where = tempfile.mkdtemp(prefix="dnmf-text-", dir=base)
    except OSError as exc:
        raise StoreError(
            f"{path} is too large to read whole, and no temporary directory for its "
            f"conversion could be made in {base or tempfile.gettempdir()} "
            f"({exc.strerror or exc}): set {SPILL_DIR} to a writable directory, or "
            f"convert it yourself (dnmf convert {path} X.zarr) and fit X.zarr."
        ) from None
    target = os.path.join(where, "V.zarr")
    logger.info("%s (%d × %d) is too large to read whole: converting it by blocks of "
                "lines to %s for the fit", path, shape[0], shape[1], target)
    try:
        convert(path, target, index_col=index_col)
    except StoreError as exc:
        shutil.rmtree(where, ignore_errors=True)
        raise StoreError(
            f"{path} is too large to read whole, and converting it to {where} failed: "
            f"{exc} Set {SPILL_DIR} to a directory with room for it, or convert it "
            f"yourself (dnmf convert {path} X.zarr) and fit X.zarr."
        ) from None
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise
    array = zarr.open_array(target, mode="r")
    weakref.finalize(array, shutil.rmtree, where, True)
    return array


def _text_opener(fmt: str, delimiter: str) -> Any:
    def open_text(path: str, *, index_col: int | bool | None = None,
                  **options: Any) -> Source:
        if os.path.isdir(path):
            raise InvalidInputError(f"{path} is a directory, not a {fmt} file.")
        reader = TextReader(path, delimiter, index_col=index_col)

        def load() -> Any:
            # Text cannot be sliced by rows: read once into memory, or, when that would
            # take too much of it, converted once into a temporary Zarr array.
            if not fits_whole(reader.shape, reader.dtype):
                return _spill(path, index_col, reader.shape)
            parts = []
            for start, block in TextReader(path, delimiter, index_col=index_col).blocks(
                    65536):
                check_block(block, start, reader)
                parts.append(block)
            return np.concatenate(parts, axis=0)

        return Source(fmt, path, reader.shape, reader.dtype, False, _local(path), load,
                      streamed=False, notes=list(reader.notes),
                      obs=reader.row_names, var=lambda: reader.feature_names,
                      blocks=lambda: TextReader(path, delimiter, index_col=index_col))

    return open_text


register(Engine("npy", (".npy",), open_npy, lambda p: _magic(p, b"\x93NUMPY")))
register(Engine("npz", (".npz",), open_npz, options=("dataset",)))
register(Engine("mtx", (".mtx", ".mtx.gz"), open_mtx,
                lambda p: _magic(p, b"%%MatrixMarket")))
register(Engine("csv", (".csv", ".csv.gz"), _text_opener("csv", ","), options=("index_col",)))
register(Engine("tsv", (".tsv", ".tsv.gz", ".tab"), _text_opener("tsv", "\t"),
                options=("index_col",)))
