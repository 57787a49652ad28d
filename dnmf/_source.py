"""Where V comes from: NumPy, SciPy sparse, Dask or Zarr, seen as a list of row panels.

A :class:`PanelSource` knows V's shape and dtype and hands out one small reference
per row panel. A reference is what a task receives: a NumPy view, a CSR slice, a Dask
``Delayed`` or a :class:`ZarrPanel` that opens the store *on the worker that runs the
task*, so no V bytes pass through the client. This module owns the choice of panel
bounds; it does no arithmetic.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import InvalidDtypeError, InvalidInputError, InvalidParameterError

__all__ = [
    "DEFAULT_PANEL_BYTES",
    "PanelSource",
    "ZarrPanel",
    "as_source",
    "load_panel",
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
        block = np.asarray(self.array[self.start : self.stop])
        return block.astype(self.dtype, copy=False)


@dataclass(frozen=True)
class SlicePanel:
    """Rows ``start:stop`` of an in-memory array (NumPy or SciPy CSR), cast on load."""

    data: Any
    start: int
    stop: int
    dtype: str

    def load(self) -> Any:
        block = self.data[self.start : self.stop]
        if sp.issparse(block):
            return block.astype(self.dtype, copy=False)
        return np.asarray(block).astype(self.dtype, copy=False)


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
    kind : {"numpy", "sparse", "dask", "zarr"}
    data : object
        The array (for dask: rechunked so that each row chunk spans all columns).
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

    @property
    def nnz(self) -> int:
        if self.kind == "sparse":
            return int(self.data.nnz)
        return int(self.shape[0]) * int(self.shape[1])

    def panel_bounds(self, panel_rows: int | None, n_threads: int) -> list[tuple[int, int]]:
        """Row ranges of the panels.

        With ``panel_rows=None`` panels hold about :data:`DEFAULT_PANEL_BYTES` of dense
        data, at least one panel per thread when V is small enough to split, and are
        a whole number of storage chunks tall.
        """
        n, m = self.shape
        if self.kind == "dask" and panel_rows is None:
            starts = np.cumsum((0, *self.data.chunks[0]))
            return [(int(a), int(b)) for a, b in itertools.pairwise(starts) if b > a]
        if panel_rows is None:
            row_bytes = max(1, m * self.dtype.itemsize)
            if self.kind == "sparse":
                row_bytes = max(1, int(self.nnz / max(n, 1) * (self.dtype.itemsize + 4)))
            rows = max(1, DEFAULT_PANEL_BYTES // row_bytes)
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
        return [(start, min(start + panel_rows, n)) for start in range(0, n, panel_rows)]

    def panel_refs(self, bounds: list[tuple[int, int]]) -> list[Any]:
        """One task-ready reference per panel."""
        dt = self.dtype.str
        if self.kind == "zarr":
            return [ZarrPanel(self.data, a, b, dt) for a, b in bounds]
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
        return [SlicePanel(self.data, a, b, dt) for a, b in bounds]


def _open_zarr(path: str) -> Any:
    import zarr

    try:
        if path.endswith(".zip"):
            store = zarr.storage.ZipStore(path, mode="r")
            return zarr.open_array(store=store, mode="r")
        if "://" not in path and not os.path.exists(path):
            raise InvalidInputError(
                f"no Zarr array at {path!r}: the path does not exist. Check the path, "
                f"or convert your data first with `dnmf convert SRC {path}`."
            )
        return zarr.open_array(store=path, mode="r")
    except InvalidInputError:
        raise
    except Exception as exc:  # zarr raises several types for "not an array here"
        raise InvalidInputError(
            f"cannot open {path!r} as a Zarr array ({type(exc).__name__}: {exc}). "
            f"Give the path of a Zarr array (not a group), e.g. 'data.zarr' or "
            f"'data.zarr/X'."
        ) from exc


def as_source(X: Any) -> PanelSource:
    """Classify ``X`` and check what can be checked without reading its values."""
    kind: str
    if isinstance(X, str | os.PathLike):
        X = _open_zarr(os.fspath(X))
    module = type(X).__module__
    if module.startswith("zarr"):
        kind = "zarr"
        chunks = getattr(X, "chunks", None)
        row_chunk = int(chunks[0]) if chunks else None
    elif module.startswith("dask"):
        kind = "dask"
        row_chunk = None
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
