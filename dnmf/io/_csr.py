"""Writing sparse matrices as CSR Zarr groups (the AnnData encoding) that dnmf reads.

A CSR group holds three 1-D arrays, ``data`` (the stored values), ``indices`` (their
column numbers) and ``indptr`` (row ``i`` is ``data[indptr[i]:indptr[i + 1]]``), and
the attributes ``encoding-type: "csr_matrix"``, ``encoding-version: "0.1.0"`` and
``shape: [n_rows, n_cols]``. This is how AnnData stores a sparse ``X``, so
``dnmf.NMF().fit("cells.zarr/X")`` reads an AnnData store directly.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._source import CSR_ENCODING
from ..errors import InvalidInputError, InvalidParameterError

__all__ = ["write_csr_zarr"]

#: Default number of stored entries per Zarr chunk of ``data`` and ``indices``.
DEFAULT_CHUNK_NNZ = 1 << 20


def write_csr_zarr(
    matrix: Any,
    path: str | os.PathLike[str],
    *,
    chunk_nnz: int = DEFAULT_CHUNK_NNZ,
    dtype: Any = None,
    overwrite: bool = False,
) -> str:
    """Write a SciPy sparse matrix as a CSR Zarr group that :class:`dnmf.NMF` reads.

    The matrix is written by blocks of rows holding about ``chunk_nnz`` stored entries,
    each block a whole number of Zarr chunks where possible, so the writer needs
    memory for one block beyond the matrix itself.

    Parameters
    ----------
    matrix : scipy.sparse matrix or array (any format; CSR is used as is)
    path : str or path-like
        Where the group is created, e.g. ``"data.zarr"`` or ``"cells.zarr/X"``.
    chunk_nnz : int
        Stored entries per chunk of ``data`` and ``indices``.
    dtype : dtype, optional
        Dtype of ``data``; default the matrix's (float32 and float64 are natural).
    overwrite : bool
        Replace an existing group at ``path``; otherwise an existing path is refused.

    Returns
    -------
    str
        ``path``, to pass to :class:`dnmf.NMF`.
    """
    import zarr

    if not sp.issparse(matrix):
        raise InvalidInputError(
            f"write_csr_zarr needs a SciPy sparse matrix, got {type(matrix).__name__}. "
            f"Convert it first, e.g. scipy.sparse.csr_matrix(X)."
        )
    if matrix.ndim != 2:
        raise InvalidInputError(f"write_csr_zarr needs a 2-D matrix, got {matrix.ndim}-D.")
    if not isinstance(chunk_nnz, int | np.integer) or chunk_nnz < 1:
        raise InvalidParameterError(
            f"chunk_nnz must be a positive number of entries, got {chunk_nnz!r}."
        )
    path = os.fspath(path)
    if not overwrite and "://" not in path and os.path.exists(path):
        raise InvalidInputError(
            f"{path!r} already exists: pass overwrite=True to replace it, or choose "
            f"another path."
        )
    csr = sp.csr_matrix(matrix)
    n, m = (int(s) for s in csr.shape)
    data_dtype = np.dtype(dtype) if dtype is not None else np.dtype(csr.dtype)
    index_dtype = np.int32 if max(m, csr.nnz) < 2**31 else np.int64
    nnz = int(csr.nnz)
    chunk = int(chunk_nnz)

    group = zarr.open_group(store=path, mode="w" if overwrite else "w-")
    # Zarr's default compression, then a CRC-32C per chunk: damage on disk fails the
    # chunk's decoding (docs/checkpoints.md).
    crc = [zarr.codecs.ZstdCodec(level=0, checksum=False), zarr.codecs.Crc32cCodec()]
    data = group.create_array("data", shape=(nnz,), chunks=(max(1, min(chunk, nnz)),),
                              dtype=data_dtype, compressors=crc)
    indices = group.create_array("indices", shape=(nnz,),
                                 chunks=(max(1, min(chunk, nnz)),), dtype=index_dtype,
                                 compressors=crc)
    indptr = group.create_array("indptr", shape=(n + 1,),
                                chunks=(max(1, min(max(chunk // 8, 1), n + 1)),),
                                dtype=np.int64, compressors=crc)
    ptr = np.asarray(csr.indptr, dtype=np.int64)
    indptr[:] = ptr
    # Stream by blocks of whole rows of about `chunk` entries, so a block's writes
    # cover whole chunks except at its two ends.
    lo_row = 0
    while lo_row < n:
        target = ptr[lo_row] + chunk
        hi_row = int(np.searchsorted(ptr, target, side="right")) - 1
        hi_row = min(max(hi_row, lo_row + 1), n)
        lo, hi = int(ptr[lo_row]), int(ptr[hi_row])
        if hi > lo:
            data[lo:hi] = np.asarray(csr.data[lo:hi], dtype=data_dtype)
            indices[lo:hi] = np.asarray(csr.indices[lo:hi], dtype=index_dtype)
        lo_row = hi_row
    group.attrs.update({**CSR_ENCODING, "shape": [n, m]})
    return path
