"""Reading V where users keep it, and writing results back.

:func:`open_source` opens a path, URL or object as a :class:`Source` — V's shape,
dtype, sparsity, where to reopen it, and its row and column names — without reading
its values. Readers are registered by format in :data:`ENGINES` (xarray's backends
are the model): NumPy ``.npy``/``.npz``, Matrix Market, CSV/TSV, HDF5 (dense
datasets, CSR groups), AnnData ``.h5ad`` and Zarr stores, 10x Genomics ``.h5``, Zarr
v2/v3 arrays and groups (local, zipped, ``s3://`` and other fsspec URLs), and in
memory NumPy, SciPy, Dask, xarray, pandas, polars and AnnData objects. Both
:class:`dnmf.NMF` and every ``dnmf`` command open their inputs through it.

Writers: :func:`write_csr_zarr` (a SciPy matrix as a CSR Zarr group), :func:`to_anndata`
and :func:`write_into` (a run's W, H and record into AnnData, in memory or in a file).
"""

from __future__ import annotations

from typing import Any

from ._anndata import to_anndata, write_into
from ._base import ENGINES, Engine, Source, guess_engine, open_source, register
from ._csr import DEFAULT_CHUNK_NNZ, write_csr_zarr
from ._remote import set_storage_options

__all__ = [
    "DEFAULT_CHUNK_NNZ",
    "ENGINES",
    "Engine",
    "Source",
    "guess_engine",
    "open_source",
    "register",
    "set_storage_options",
    "to_anndata",
    "write_csr_zarr",
    "write_into",
]


def engine_input(X: Any) -> Any:
    """What :func:`dnmf._source.as_source` reads for ``X``: engine-ready objects as
    they are; paths, URLs, DataFrames, DataArrays and AnnData through :func:`open_source`."""
    if isinstance(X, Source):
        return X.array
    import numpy as np
    import scipy.sparse as sp

    module = type(X).__module__
    if isinstance(X, np.ndarray) or sp.issparse(X) or module.startswith(("dask", "zarr")):
        return X
    if type(X).__name__ == "PanelSource":
        return X
    import os

    if isinstance(X, str | os.PathLike) or module.startswith(
            ("pandas", "polars", "xarray", "anndata")):
        return open_source(X).array
    return X
