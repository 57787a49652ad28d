"""In-memory and lazy objects as sources: NumPy, SciPy sparse, Dask, Zarr, xarray
DataArrays, pandas and polars DataFrames, AnnData objects; names come along (a
DataFrame's index and columns, a DataArray's coordinates, obs_names/var_names)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidDtypeError, InvalidInputError
from ._base import Source

__all__ = ["open_object"]


def _shape_dtype(array: Any, name: str) -> tuple[tuple[int, int], np.dtype]:
    from ._blocks import check_2d

    shape = tuple(int(s) for s in array.shape)
    if len(shape) != 2:
        raise InvalidInputError(
            f"{name} must be 2-D (n_samples, n_features), got shape {shape}."
        )
    return check_2d(shape, name), np.dtype(array.dtype)


def _source(fmt: str, name: str, array: Any, obs: Any = None, var: Any = None,
            notes: list[str] | None = None) -> Source:
    import scipy.sparse as sp

    shape, dtype = _shape_dtype(array, name)
    streamed = not isinstance(array, np.ndarray) and not sp.issparse(array)
    return Source(fmt, name, shape, dtype, bool(sp.issparse(array)), None, lambda: array,
                  streamed=streamed, notes=notes or [],
                  obs=(lambda: obs) if obs is not None else None,
                  var=(lambda: var) if var is not None else None)


def open_object(X: Any, **options: Any) -> Source:
    module = type(X).__module__
    if options:
        raise InvalidInputError(
            f"options {sorted(options)} apply to files; {type(X).__name__} was given."
        )
    if module.startswith("pandas") and hasattr(X, "columns"):
        columns = [str(c) for c in X.columns]
        dtypes = list(X.dtypes)
        bad = [(c, d) for c, d in zip(columns, dtypes)
               if not (getattr(d, "kind", "O") in "biuf" or str(d).startswith("Sparse"))]
        if bad:
            c, d = bad[0]
            raise InvalidDtypeError(
                f"DataFrame column {c!r} has dtype {d}, not numbers: drop it or make it "
                f"the index (df.set_index({c!r})) first."
            )
        values = X.sparse.to_coo().tocsr() if hasattr(X, "sparse") and all(
            str(d).startswith("Sparse") for d in dtypes) else X.to_numpy()
        return _source("dataframe", "DataFrame", values, [str(i) for i in X.index], columns)
    if module.startswith("polars") and hasattr(X, "columns"):
        import polars as pl

        numeric = [c for c, d in X.schema.items() if d.is_numeric()]
        other = [c for c in X.columns if c not in numeric]
        if other:
            c = other[0]
            raise InvalidDtypeError(
                f"DataFrame column {c!r} has dtype {X.schema[c]}, not numbers: drop it "
                f"first (df.drop({c!r}))."
            )
        del pl
        return _source("polars", "DataFrame", X.to_numpy(), None, list(X.columns))
    if module.startswith("xarray") and hasattr(X, "dims"):
        if len(X.dims) != 2:
            raise InvalidInputError(
                f"the DataArray has dims {X.dims}; dnmf needs 2 (samples, features)."
            )
        names = []
        for dim in X.dims:
            coord = X.coords.get(dim)
            names.append([str(v) for v in np.asarray(coord.values)] if coord is not None
                         else None)
        return _source("xarray", f"DataArray {X.name or ''}".strip(), X.data, names[0],
                       names[1], notes=[f"dims {X.dims[0]!r} × {X.dims[1]!r}"])
    if module.startswith("anndata") and hasattr(X, "obs_names"):
        if X.X is None:
            raise InvalidInputError(
                "the AnnData has no X: give the matrix to fit, e.g. adata.layers['counts']."
            )
        return _source("anndata", "AnnData", X.X, list(map(str, X.obs_names)),
                       list(map(str, X.var_names)))
    return _source(type(X).__name__, "X", X)
