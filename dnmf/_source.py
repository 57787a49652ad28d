"""Where V comes from: NumPy, SciPy sparse, Dask or Zarr, seen as a list of row panels.

A :class:`PanelSource` knows V's shape and dtype and hands out one small reference
per row panel. A reference is what a task receives: a NumPy view, a CSR slice, a Dask
``Delayed``, a :class:`ZarrPanel` or a :class:`CSRPanel` (sparse V stored in Zarr with
the AnnData CSR encoding) that opens the store *on the worker that runs the task*, so
no V bytes pass through the client. This module owns the choice of panel
bounds; it does no arithmetic.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import InvalidDtypeError, InvalidInputError, InvalidParameterError, StoreError

__all__ = [
    "DEFAULT_PANEL_BYTES",
    "CSRGroup",
    "CSRPanel",
    "PanelSource",
    "ZarrPanel",
    "as_source",
    "equal_bounds",
    "load_panel",
    "snap_bounds",
]

#: Default target size of one dense panel of V in memory.
DEFAULT_PANEL_BYTES = 64 * 2**20
#: Below this much data, one panel: splitting costs more in scheduling than it gains.
MIN_SPLIT_BYTES = 4 * 2**20


def _float_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """float32 and float64 are kept; other numbers become float64; the rest is refused."""
    if dtype == np.float32 or dtype == np.float64:
        return np.dtype(dtype)
    if dtype.kind in "biuf":
        return np.dtype(np.float64)
    if dtype.kind == "c":
        raise InvalidInputError(
            f"{where} has dtype {dtype}: Complex data not supported by NMF. Give real, "
            f"non-negative values, e.g. np.abs(X) for magnitudes."
        )
    raise InvalidDtypeError(
        f"{where} has dtype {dtype}, but NMF needs real numbers: convert it first, "
        f"e.g. X.astype(np.float32) or X.astype(np.float64)."
    )


@dataclass(frozen=True)
class ZarrPanel:
    """Rows ``start:stop`` of a Zarr array, read where the task runs."""

    array: Any
    start: int
    stop: int
    dtype: str

    def load(self) -> np.ndarray:
        try:
            block = np.asarray(self.array[self.start : self.stop])
        except Exception as exc:
            start, stop = _bad_rows(self.array, self.start, self.stop)
            why = " ".join(str(exc).split())
            if "checksum do not match" in why:  # zarr's Crc32cCodec
                why = "its CRC-32C does not match its bytes: they changed on disk"
            raise StoreError(
                f"cannot read rows {self.start}-{self.stop - 1} of V: "
                f"{_chunk_names(self.array, start, stop)} is damaged or truncated "
                f"({type(exc).__name__}: {why}). Restore it, or convert the data again."
            ) from None
        return block.astype(self.dtype, copy=False)


def _bad_rows(array: Any, start: int, stop: int) -> tuple[int, int]:
    """The rows of the first storage chunk of ``start:stop`` that fails to read (after
    a read of the panel failed; only then), or ``start, stop`` if none fails alone."""
    return first_bad_chunk(array, start, stop) or (start, stop)


def first_bad_chunk(array: Any, start: int, stop: int) -> tuple[int, int] | None:
    """Rows (within ``start:stop``) of the first storage chunk of a Zarr array that
    fails to decode, reading chunk by chunk; None if every one reads."""
    rows = int(array.chunks[0])
    for a in range(start - start % rows, stop, rows):
        lo, hi = max(a, start), min(a + rows, stop)
        try:
            np.asarray(array[lo:hi])
        except Exception:
            return lo, hi
    return None


def _chunk_names(array: Any, start: int, stop: int) -> str:
    """The storage chunk(s) of rows ``start:stop`` of a Zarr array, for messages."""
    rows = int(array.chunks[0])
    first, last = start // rows, -(-stop // rows)
    store = getattr(array, "store", None)
    root = str(getattr(store, "root", None) or getattr(store, "path", "") or "")
    base = "/".join(p for p in (root.rstrip("/"), getattr(array, "path", "") or "") if p)
    try:
        key = array.metadata.encode_chunk_key((first,) + (0,) * (array.ndim - 1))
    except Exception:  # zarr v2 metadata
        key = ".".join([str(first)] + ["0"] * (array.ndim - 1))
    name = f"chunk {base + '/' if base else ''}{key}"
    return name if last - first <= 1 else f"{name} (or one of the {last - first - 1} after it)"


@dataclass(frozen=True)
class SlicePanel:
    """Rows ``start:stop`` of an in-memory array (NumPy or SciPy CSR), cast on load.

    ``resident``: the array lives in this process's memory (not a memory map of a
    file, which may change on disk): checked once by the validation pass, not by
    every pass (:func:`needs_check`).
    """

    data: Any
    start: int
    stop: int
    dtype: str
    resident: bool = False

    def load(self) -> Any:
        block = self.data[self.start : self.stop]
        if sp.issparse(block):
            return block.astype(self.dtype, copy=False)
        # C order whatever the input's: BLAS sums a Fortran-ordered panel in another
        # order, and a fit must not depend on the memory layout of its data.
        return np.ascontiguousarray(np.asarray(block), dtype=self.dtype)


@dataclass(frozen=True, eq=False)
class KeptPanel:
    """A panel read once and kept in this process's memory (``cache``). Once the
    validation pass has checked it (``checked``), passes do not check it again, as
    for a resident array."""

    value: Any
    start: int
    checked: bool = False

    def load(self) -> Any:
        return self.value


#: The attribute values that mark a Zarr group as a CSR matrix (AnnData's encoding).
CSR_ENCODING = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}


@dataclass(frozen=True)
class CSRPanel:
    """Rows ``start:stop`` of a CSR matrix stored as a Zarr group, read where the task runs.

    ``load()`` reads ``indptr[start:stop + 1]``, then only the matching slice of
    ``data`` and ``indices`` (no other panel's bytes), and returns a
    ``scipy.sparse.csr_matrix``. Column indices are checked against ``[0, n_cols)``;
    unsorted or duplicate column indices within a row are accepted and put in
    canonical form (duplicates summed, columns sorted), as SciPy's
    ``sum_duplicates`` does.
    """

    data: Any
    indices: Any
    indptr: Any
    start: int
    stop: int
    n_cols: int
    dtype: str

    def load(self) -> sp.csr_matrix:
        try:
            ptr = np.asarray(self.indptr[self.start : self.stop + 1], dtype=np.int64)
            lo, hi = int(ptr[0]), int(ptr[-1])
            values = np.asarray(self.data[lo:hi]).astype(self.dtype, copy=False)
            cols = np.asarray(self.indices[lo:hi])
        except Exception as exc:
            where = str(getattr(getattr(self.data, "store", None), "root", "") or "")
            raise StoreError(
                f"cannot read rows {self.start}-{self.stop - 1} of the CSR group {where!r}: "
                f"a chunk of its indptr, indices or data is damaged or truncated "
                f"({type(exc).__name__}: {' '.join(str(exc).split())}). Restore it, or "
                f"convert the data again."
            ) from None
        if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= self.n_cols):
            bad = int(np.argmax((cols < 0) | (cols >= self.n_cols)))
            row = self.start + int(np.searchsorted(ptr, lo + bad, side="right")) - 1
            raise InvalidInputError(
                f"CSR group is malformed: indices holds column {int(cols[bad])} (row "
                f"{row}, stored entry {lo + bad}), outside [0, {self.n_cols}) for a matrix "
                f"with {self.n_cols} columns. Rewrite it, e.g. with "
                f"dnmf.io.write_csr_zarr(matrix, path)."
            )
        csr = sp.csr_matrix(
            (values, cols, ptr - lo), shape=(self.stop - self.start, self.n_cols)
        )
        if not csr.has_canonical_format:
            csr.sum_duplicates()
        return csr


#: Rows of ``indptr`` read at a time when a CSR group is checked and cut (8 MiB).
INDPTR_BLOCK = 1 << 20


def _indptr_blocks(indptr: Any, block: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, indptr[start:start + block + 1])`` as int64, in order.

    Consecutive blocks overlap by one entry, so differences across their boundary are
    seen; only one block is in memory at a time.
    """
    size = int(indptr.shape[0])
    block = block or INDPTR_BLOCK
    for start in range(0, max(size - 1, 1), block):
        yield start, np.asarray(indptr[start : min(start + block + 1, size)], dtype=np.int64)


def _take(indptr: Any, rows: Any) -> np.ndarray:
    """``indptr[rows]`` as int64 (the shape of ``rows``), from a NumPy or a Zarr array;
    from Zarr only those entries are read."""
    rows = np.asarray(rows, dtype=np.int64)
    if not hasattr(indptr, "get_coordinate_selection"):
        return np.asarray(indptr)[rows].astype(np.int64)
    if rows.size == 0:
        return rows.copy()
    unique, inverse = np.unique(rows, return_inverse=True)
    values = np.asarray(indptr.get_coordinate_selection(unique), dtype=np.int64)
    return values[inverse].reshape(rows.shape)


@dataclass(frozen=True)
class CSRGroup:
    """The three arrays of a CSR Zarr group, checked; ``indptr`` stays in the store.

    ``indptr`` (n + 1 integers) is streamed once to check it, and again to choose
    panel bounds by stored entries; afterwards only the offsets at panel edges are
    read. Nothing of size n is kept, so the driver's memory does not grow with the
    number of rows.
    """

    group: Any
    data: Any
    indices: Any
    indptr_array: Any
    nnz: int
    shape: tuple[int, int]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def bytes_per_entry(self) -> int:
        return int(np.dtype(self.data.dtype).itemsize + np.dtype(self.indices.dtype).itemsize)

    def offsets(self, rows: Any) -> np.ndarray:
        """``indptr[rows]`` (int64, the shape of ``rows``), reading only those entries."""
        return _take(self.indptr_array, rows)


def is_csr_group(node: Any) -> bool:
    """True for a Zarr group whose attributes mark it as a CSR matrix."""
    attrs = getattr(node, "attrs", None)
    return (
        type(node).__name__ == "Group"
        and attrs is not None
        and attrs.get("encoding-type") == "csr_matrix"
    )


def _csr_group(group: Any, where: str) -> CSRGroup:
    """Check a CSR Zarr group's structure (reading only ``indptr``) and wrap it."""
    attrs = dict(group.attrs)
    hint = "Rewrite it, e.g. with dnmf.io.write_csr_zarr(matrix, path)."
    if attrs.get("encoding-type") != "csr_matrix":
        kind = attrs.get("encoding-type")
        extra = (" CSC is not read by row panels: convert to CSR first, e.g. "
                 "dnmf.io.write_csr_zarr(matrix.tocsr(), path)." if kind == "csc_matrix"
                 else "")
        raise InvalidInputError(
            f"{where} is a Zarr group with encoding-type {kind!r}, not 'csr_matrix'.{extra}"
        )
    shape = attrs.get("shape")
    if (not isinstance(shape, list | tuple) or len(shape) != 2
            or not all(isinstance(s, int) and s >= 0 for s in shape)):
        raise InvalidInputError(
            f"CSR group {where} is malformed: attribute 'shape' must be [n_rows, n_cols], "
            f"got {shape!r}. {hint}"
        )
    n, m = int(shape[0]), int(shape[1])
    members = {}
    for name in ("data", "indices", "indptr"):
        try:
            arr = group[name]
        except KeyError:
            arr = None
        # A Zarr array, or anything array-like (an HDF5 dataset seen by dnmf.io).
        if arr is None or getattr(arr, "dtype", None) is None or len(arr.shape) != 1:
            raise InvalidInputError(
                f"CSR group {where} is malformed: it needs 1-D arrays 'data', 'indices' "
                f"and 'indptr'; {name!r} is missing or not a 1-D array. {hint}"
            )
        members[name] = arr
    data, indices, indptr_arr = members["data"], members["indices"], members["indptr"]
    for name in ("indices", "indptr"):
        if np.dtype(members[name].dtype).kind not in "iu":
            raise InvalidInputError(
                f"CSR group {where} is malformed: {name!r} has dtype "
                f"{members[name].dtype}, but must hold integers. {hint}"
            )
    if indptr_arr.shape[0] != n + 1:
        raise InvalidInputError(
            f"CSR group {where} is malformed: indptr has length {indptr_arr.shape[0]}, "
            f"but a matrix with {n} rows needs n_rows + 1 = {n + 1}. {hint}"
        )
    if indices.shape[0] != data.shape[0]:
        raise InvalidInputError(
            f"CSR group {where} is malformed: indices has length {indices.shape[0]} but "
            f"data has length {data.shape[0]}; they must match. {hint}"
        )
    last = 0
    for start, block in _indptr_blocks(indptr_arr):
        steps = np.diff(block)
        if (start == 0 and block[0] != 0) or (steps < 0).any():
            row = start + int(np.argmax(steps < 0)) if block[0] == 0 or start else -1
            what = (f"indptr[0] is {int(block[0])}, not 0" if row < 0 else
                    f"indptr decreases at row {row} ({int(block[row - start])} then "
                    f"{int(block[row - start + 1])})")
            raise InvalidInputError(
                f"CSR group {where} is malformed: indptr must be non-decreasing from 0, "
                f"but {what}. {hint}"
            )
        last = int(block[-1])
    if last != data.shape[0]:
        raise InvalidInputError(
            f"CSR group {where} is malformed: indptr[-1] is {last}, but data "
            f"has {data.shape[0]} stored entries; they must be equal. {hint}"
        )
    return CSRGroup(group, data, indices, indptr_arr, last, (n, m))


def _csr_bounds(indptr: Any, bytes_per_entry: int, n_threads: int,
                budget: int) -> list[tuple[int, int]]:
    """Row panels holding about ``budget`` bytes of data + indices each, cut by nnz.

    A run of dense rows gets more, shorter panels; a single row over the budget is a
    panel of its own. Each row also counts 8 bytes (its ``indptr`` entry) so that
    empty rows still split. ``indptr`` (a NumPy or Zarr array) is streamed by blocks:
    one pass finds the cuts; only a panel over the budget is read again, to split it.
    """
    n = int(indptr.shape[0]) - 1

    def cost(rows: np.ndarray, ptr: np.ndarray) -> np.ndarray:
        return ptr.astype(np.float64) * bytes_per_entry + 8.0 * rows

    total = float(int(indptr[n]) * bytes_per_entry + 8.0 * n)
    n_panels = max(math.ceil(total / budget), 1)
    if n_panels < n_threads and n >= 2 * n_threads and total >= MIN_SPLIT_BYTES:
        n_panels = n_threads
    elif n_panels > n_threads > 1:
        n_panels = math.ceil(n_panels / n_threads) * n_threads
    n_panels = min(n_panels, n)
    targets = total * np.arange(1, n_panels) / n_panels
    cuts = np.full(targets.size, n, dtype=np.int64)
    found = 0
    for start, block in _indptr_blocks(indptr):
        if found == targets.size:
            break
        cum = cost(np.arange(start, start + block.size), block)
        upto = int(np.searchsorted(targets, cum[-1], side="right"))
        if upto > found:
            cuts[found:upto] = start + np.searchsorted(cum, targets[found:upto], side="left")
            found = upto
    edges = np.unique(np.concatenate(([0], np.clip(cuts, 1, n), [n])))
    edge_cost = cost(edges, _take(indptr, edges))
    # A panel never holds more than the budget unless it is one row.
    out: list[tuple[int, int]] = []
    for i in range(edges.size - 1):
        a, b = int(edges[i]), int(edges[i + 1])
        if b - a > 1 and edge_cost[i + 1] - edge_cost[i] > budget:
            base = a
            cum = cost(np.arange(a, b + 1), np.asarray(indptr[a : b + 1], dtype=np.int64))
            while b - a > 1 and cum[b - base] - cum[a - base] > budget:
                c = int(np.searchsorted(cum, cum[a - base] + budget, side="right")) - 1 + base
                c = min(max(c, a + 1), b)
                out.append((a, c))
                a = c
        out.append((a, b))
    return [(int(a), int(b)) for a, b in out if b > a]


#: A run store's W buffer has at most about this many chunks per panel (each chunk
#: costs about a millisecond to write and read per pass), or this many in all.
GRID_CHUNKS = 8


def equal_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    """Panels of ``rows`` rows (the last one shorter) over ``n`` rows."""
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def snap_bounds(bounds: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """Panels of unequal height moved onto a grid of ``unit`` rows; ``(bounds, unit)``.

    A run store chunks W by ``unit`` rows so that every panel task writes whole
    chunks of its own. ``unit`` is a power of two: at most an eighth of the
    shortest panel, so each edge moves by less than a sixteenth of a panel, unless
    that would make W more than ``max(128, GRID_CHUNKS × panels)`` chunks; then the
    shortest panels (dense rows) may move by up to half a grid step, or merge.
    Equal panels (but a shorter last one) come back unchanged, with their height
    as ``unit``.
    """
    sizes = [b - a for a, b in bounds]
    if len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]:
        return bounds, sizes[0]
    n = bounds[-1][1]
    unit = 1 << max(0, (max(1, min(sizes) // 8)).bit_length() - 1)
    while n / unit > max(128, GRID_CHUNKS * len(bounds)):
        unit *= 2
    edges = sorted({0, n, *(min(n, round(a / unit) * unit) for a, _ in bounds[1:])})
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a], unit


def check_panel(V: Any, start: int | None, *, allow_nan: bool = False) -> None:
    """Refuse a panel read in a pass that holds ±inf, negative values or (unless
    ``allow_nan``: entries declared missing) NaN. Passes skip it for arrays resident
    in memory (:func:`needs_check`).

    Every pass reads all of V, so this check costs no I/O: two reductions over values
    already in memory (the stored values of a sparse panel). Data changed or damaged
    after the run's validation pass (or since the run was started, for a resume,
    which skips that pass) then stops the pass at this panel, with the position of
    its first bad entry, before anything of the pass is kept. ``start`` is the
    panel's first row in V (None if unknown: the position is then within the panel).
    """
    if hasattr(V, "checked_values"):  # a masked panel: the values the fit uses
        V, allow_nan = V.checked_values()
    values = V.data if sp.issparse(V) else V
    if values.size == 0:
        return
    if allow_nan:
        lo, hi = np.fmin.reduce(values, axis=None), np.fmax.reduce(values, axis=None)
        if (lo >= 0 or lo != lo) and hi != np.inf:  # all NaN: lo and hi are NaN
            return
    else:
        lo, hi = values.min(), values.max()
        if lo >= 0 and hi < np.inf:  # NaN fails both comparisons
            return
    raise _bad_panel(V, start, allow_nan)


def _bad_panel(V: Any, start: int | None, allow_nan: bool) -> InvalidInputError:
    csr = V.tocsr() if sp.issparse(V) else None
    values = csr.data if csr is not None else np.asarray(V).ravel()
    bad = (np.isinf(values) if allow_nan else ~np.isfinite(values)) | (values < 0)
    flat = int(np.argmax(bad))
    value = values[flat]
    if csr is not None:
        row = int(np.searchsorted(csr.indptr, flat, side="right")) - 1
        col = int(csr.indices[flat])
    else:
        row, col = divmod(flat, V.shape[1])
    what = "NaN" if value != value else "infinity" if np.isinf(value) else "a negative value"
    rows = V.shape[0]
    if start is None:
        where = f"row {row} (of a panel of {rows} rows), column {col}"
    else:
        where = (f"row {start + row}, column {col} (in the panel of rows {start}-"
                 f"{start + rows - 1})")
    return InvalidInputError(
        f"X changed or was damaged after it was checked: {where} holds {what} "
        f"({int(np.count_nonzero(bad))} bad entries in that panel). The pass stopped there "
        f"and nothing of it was kept; restore the data (a run with out= then continues "
        f"from its last commit with dnmf resume)."
    )


def panel_digest(panel: Any) -> str:
    """SHA-256 (hex) of a loaded panel's bytes as the computation sees them: a dense
    panel's values in C order, a sparse one's CSR data, indices and indptr."""
    import hashlib

    digest = hashlib.sha256()
    if sp.issparse(panel):
        csr = panel.tocsr()
        for part in (csr.data, csr.indices, csr.indptr):
            digest.update(np.ascontiguousarray(part).data)
    else:
        digest.update(np.ascontiguousarray(panel).data)
    return digest.hexdigest()


def panel_start(ref: Any) -> int | None:
    """The first row in V of a panel reference, if it knows it."""
    start = getattr(ref, "start", None)
    return int(start) if isinstance(start, int | np.integer) else None


def load_panel(ref: Any) -> Any:
    """Materialise a panel reference (anything with ``load()``, or the data itself)."""
    if hasattr(ref, "load"):
        return ref.load()
    return ref


@dataclass
class PanelSource:
    """V as row panels.

    Attributes
    ----------
    kind : {"numpy", "sparse", "dask", "zarr", "zarr-csr"}
    data : object
        The array (for dask: rechunked so that each row chunk spans all columns; for
        zarr-csr: a :class:`CSRGroup`).
    shape : tuple of int
    dtype : numpy.dtype
        The floating dtype the computation runs in.
    row_chunk : int or None
        Storage chunk height that panels should align with (Zarr, Dask).
    """

    kind: str
    data: Any
    shape: tuple[int, int]
    dtype: np.dtype
    row_chunk: int | None = None
    #: V's non-zero count from the validation pass, once known (None before).
    nonzeros: int | None = None

    @property
    def work_nnz(self) -> int:
        """The non-zero count the solvers' cost ratios use: V's own, not its format's.

        A dense V with zeros and its sparse copy then get the same number of inner
        sweeps (HALS) and hence the same W and H; before the validation pass has
        counted them, the stored entries.
        """
        return self.nnz if self.nonzeros is None else self.nonzeros

    @property
    def nnz(self) -> int:
        if self.kind in ("sparse", "zarr-csr"):
            return int(self.data.nnz)
        return int(self.shape[0]) * int(self.shape[1])

    def offsets(self, rows: Any) -> np.ndarray:
        """``indptr[rows]`` of a sparse V (int64), reading only those entries."""
        if self.kind == "zarr-csr":
            return self.data.offsets(rows)
        return _take(self.data.indptr, rows)

    def panel_bounds(self, panel_rows: int | None, n_threads: int,
                     panel_bytes: int | None = None) -> list[tuple[int, int]]:
        """Row ranges of the panels.

        With ``panel_rows=None`` panels hold about ``panel_bytes`` (default
        :data:`DEFAULT_PANEL_BYTES`) of V as stored (dense values; for a CSR Zarr
        group its values and column indices, cut by stored entries), at least one
        panel per thread when V is small enough to split, and are a whole number of
        storage chunks tall.
        """
        n, m = self.shape
        budget = panel_bytes or DEFAULT_PANEL_BYTES
        if self.kind == "zarr-csr" and panel_rows is None:
            # Cut by stored entries (data + indices bytes), so skewed rows do not
            # make one huge panel.
            return _csr_bounds(self.data.indptr_array, self.data.bytes_per_entry, n_threads,
                               budget)
        if self.kind == "dask" and panel_rows is None and panel_bytes is None:
            starts = np.cumsum((0, *self.data.chunks[0]))
            return [(int(a), int(b)) for a, b in itertools.pairwise(starts) if b > a]
        if panel_rows is None:
            row_bytes = max(1, m * self.dtype.itemsize)
            if self.kind == "sparse":
                row_bytes = max(1, int(self.nnz / max(n, 1) * (self.dtype.itemsize + 4)))
            rows = max(1, budget // row_bytes)
            # Enough panels to keep every thread busy, in whole rounds.
            n_panels = max(math.ceil(n / rows), 1)
            small = n * row_bytes < MIN_SPLIT_BYTES
            if n_panels < n_threads and n >= 2 * n_threads and not small:
                n_panels = n_threads
            elif n_panels > n_threads > 1:
                n_panels = math.ceil(n_panels / n_threads) * n_threads
            rows = math.ceil(n / n_panels)
            if self.row_chunk:
                rows = max(self.row_chunk, round(rows / self.row_chunk) * self.row_chunk)
            panel_rows = rows
        if panel_rows < 1:
            raise InvalidParameterError(
                f"panel_rows must be a positive number of rows, got {panel_rows!r}."
            )
        return equal_bounds(n, panel_rows)

    def panel_refs(self, bounds: list[tuple[int, int]]) -> list[Any]:
        """One task-ready reference per panel."""
        dt = self.dtype.str
        if self.kind == "zarr":
            return [ZarrPanel(self.data, a, b, dt) for a, b in bounds]
        if self.kind == "zarr-csr":
            g = self.data
            return [CSRPanel(g.data, g.indices, g.indptr_array, a, b, self.shape[1], dt)
                    for a, b in bounds]
        if self.kind == "dask":
            import dask.array as da

            X = self.data
            starts = np.cumsum((0, *X.chunks[0]))
            if [(int(a), int(b)) for a, b in itertools.pairwise(starts)] != bounds:
                X = X.rechunk({0: tuple(b - a for a, b in bounds)})
            X = X.astype(self.dtype) if X.dtype != self.dtype else X
            blocks = X.to_delayed().ravel()
            assert isinstance(X, da.Array) and len(blocks) == len(bounds)
            return list(blocks)
        resident = _resident(self.data)
        return [SlicePanel(self.data, a, b, dt, resident) for a, b in bounds]


def _resident(data: Any) -> bool:
    """Whether an array's values live in this process's memory: a SciPy sparse matrix,
    or an ndarray none of whose bases is a memory map (``.npy`` read in place)."""
    import mmap

    if sp.issparse(data):
        return True
    base = data
    while base is not None:
        if isinstance(base, np.memmap | mmap.mmap):
            return False
        base = getattr(base, "base", None)
    return isinstance(data, np.ndarray)


def needs_check(ref: Any) -> bool:
    """Whether a pass must check the values of the panel behind ``ref`` (see
    :func:`check_panel`): every panel read from storage or through Dask, and none of
    an array resident in memory, which the validation pass has checked (a user who
    changes their own array during a fit is not protected against)."""
    # (isinstance, not getattr: a Delayed answers any attribute)
    return not ((isinstance(ref, SlicePanel) and ref.resident)
                or (isinstance(ref, KeptPanel) and ref.checked))


def _open_zarr(path: str) -> Any:
    import zarr

    try:
        if path.endswith(".zip"):
            store = zarr.storage.ZipStore(path, mode="r")
            return _array_or_csr_group(zarr.open(store=store, mode="r"), path)
        if "://" not in path and not os.path.exists(path):
            raise InvalidInputError(
                f"no Zarr array at {path!r}: the path does not exist. Check the path, "
                f"or convert your data first with `dnmf convert SRC {path}`."
            )
        if "://" not in path:
            # Absolute, so that workers with another working directory find it too.
            path = os.path.abspath(path)
            return _array_or_csr_group(zarr.open(store=path, mode="r"), path)
        from .io._remote import check_reachable, remote_options

        check_reachable(path)
        return _array_or_csr_group(
            zarr.open(store=path, mode="r", storage_options=remote_options(path) or None),
            path)
    except (InvalidInputError, StoreError):
        raise
    except Exception as exc:  # zarr raises several types for "not an array here"
        if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError",
                                  "ClientConnectorError", "ServerTimeoutError"):
            raise StoreError(
                f"cannot reach {path!r} ({type(exc).__name__}: {exc}). Check the endpoint "
                f"(AWS_ENDPOINT_URL), the credentials and the network."
            ) from None
        raise InvalidInputError(
            f"cannot open {path!r} as a Zarr array ({type(exc).__name__}: {exc}). "
            f"Give the path of a Zarr array (not a group), e.g. 'data.zarr' or "
            f"'data.zarr/X'."
        ) from exc


def _array_or_csr_group(node: Any, path: str) -> Any:
    """A Zarr array, or a group with the CSR encoding; refuse any other group."""
    if type(node).__name__ != "Group" or is_csr_group(node):
        return node
    members = sorted(node.group_keys()) if hasattr(node, "group_keys") else []
    csr = [k for k in members if is_csr_group(node[k])]
    hint = (f" It has a CSR matrix member: give {path.rstrip('/')}/{csr[0]}." if csr
            else "")
    raise InvalidInputError(
        f"cannot open {path!r} as a Zarr array: it is a Zarr group without a CSR "
        f"encoding (encoding-type 'csr_matrix').{hint} Give the path of a Zarr array or "
        f"of a CSR group, e.g. 'data.zarr' or 'data.zarr/X'."
    )


def as_source(X: Any) -> PanelSource:
    """Classify ``X`` and check what can be checked without reading its values."""
    if isinstance(X, PanelSource):
        return X  # already classified and checked
    kind: str
    if isinstance(X, str | os.PathLike):
        X = _open_zarr(os.fspath(X))
    module = type(X).__module__
    if module.startswith("zarr") and type(X).__name__ == "Group":
        group = _csr_group(X, f"Zarr group {getattr(X, 'path', '') or '/'!r}")
        dtype = _float_dtype(group.dtype, "X")
        for axis, what in ((0, "sample"), (1, "feature")):
            if group.shape[axis] == 0:
                raise InvalidInputError(
                    f"X is empty: Found array with 0 {what}(s) (shape={group.shape}) "
                    f"while a minimum of 1 is required. NMF needs at least one sample "
                    f"and one feature."
                )
        return PanelSource("zarr-csr", group, group.shape, dtype, None)
    if module.startswith("zarr"):
        kind = "zarr"
        chunks = getattr(X, "chunks", None)
        row_chunk = int(chunks[0]) if chunks else None
    elif module.startswith("dask"):
        kind = "dask"
        row_chunk = None
        if any(math.isnan(c) for axis in X.chunks for c in axis):
            raise InvalidInputError(
                f"X is a Dask array with unknown chunk sizes (shape {X.shape}), as after "
                f"boolean indexing or from a DataFrame's .values: NMF needs its shape to "
                f"cut panels. Call X.compute_chunk_sizes() first (or build it with "
                f"to_dask_array(lengths=True))."
            )
    elif sp.issparse(X):
        kind = "sparse"
        row_chunk = None
    else:
        kind = "numpy"
        row_chunk = None
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
        if X.dtype == object:
            try:
                X = X.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise InvalidDtypeError(
                    f"X has dtype object with entries that are not numbers ({exc}). "
                    f"NMF needs a numeric array: convert or drop those entries."
                ) from exc
    shape = tuple(int(s) for s in X.shape)
    if len(shape) != 2:
        raise InvalidInputError(
            f"X must be 2-D (n_samples, n_features), got an array of shape {shape}. "
            f"Reshape your data, e.g. X.reshape(-1, 1) for a single feature or "
            f"X.reshape(1, -1) for a single sample."
        )
    for axis, what in ((0, "sample"), (1, "feature")):
        if shape[axis] == 0:
            raise InvalidInputError(
                f"X is empty: Found array with 0 {what}(s) (shape={shape}) while a "
                f"minimum of 1 is required. NMF needs at least one sample and one feature."
            )
    dtype = _float_dtype(np.dtype(X.dtype), "X")
    if kind == "sparse":
        X = sp.csr_matrix(X)
    if kind == "dask" and len(X.chunks[1]) > 1:
        # A panel is whole rows; merge column chunks once, lazily.
        X = X.rechunk({1: -1})
    return PanelSource(kind, X, (shape[0], shape[1]), dtype, row_chunk)
