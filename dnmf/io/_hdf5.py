"""HDF5 readers: plain ``.h5``/``.hdf5`` files, AnnData ``.h5ad`` and 10x Genomics
CellRanger ``.h5``, read with h5py by row panels.

Dense datasets are sliced by rows; sparse matrices in AnnData's encoding (a group
with ``data``, ``indices``, ``indptr`` and ``encoding-type: csr_matrix``) are read a
panel at a time, only that panel's slice of ``data`` and ``indices``. A CellRanger
matrix is stored genes × cells in CSC, which is the same bytes as cells × genes in
CSR: it is presented cells × genes, streamed, with barcodes and gene names. A CSC
matrix in AnnData cannot be cut into row panels: it is read whole (compressed), and
said so. The datasets handed to the engine are :class:`H5Array` objects, which name
the file and the dataset and reopen the file in the process that reads them, so they
travel to Dask workers.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..errors import DnmfError, InvalidInputError
from ._base import Engine, Source, register
from ._blocks import ArrayReader, CSRGroupReader, SparseReader, check_2d, numeric_dtype

__all__ = ["H5Array", "H5Group"]

_FILES: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()
_MAGIC = b"\x89HDF\r\n\x1a\n"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DnmfError("reading HDF5 files needs h5py: pip install 'dnmf[hdf5]'.") from None
    return h5py


def _file(path: str) -> Any:
    """The file open for reading in this process (one handle per file version)."""
    h5py = _h5py()
    stat = os.stat(path)
    key = (path, os.getpid(), stat.st_ino, stat.st_mtime_ns)
    with _LOCK:
        f = _FILES.get(key)
        if f is None or not f.id.valid:
            f = h5py.File(path, "r")
            _FILES[key] = f
    return f


def _py(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class H5Array:
    """One HDF5 dataset by file and name: sliceable, picklable, reopened where read."""

    def __init__(self, path: str, name: str, shape: tuple[int, ...], dtype: Any,
                 chunks: tuple[int, ...] | None = None) -> None:
        self.path = path
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = chunks

    @classmethod
    def of(cls, path: str, dataset: Any) -> H5Array:
        return cls(path, dataset.name, dataset.shape, dataset.dtype, dataset.chunks)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(_file(self.path)[self.name][key])

    def get_coordinate_selection(self, index: Any) -> np.ndarray:
        """Entries at ``index`` (increasing, no repeats, as h5py needs)."""
        index = np.asarray(index, dtype=np.int64).ravel()
        if index.size == 0:
            return np.empty(0, dtype=self.dtype)
        return np.asarray(_file(self.path)[self.name][index])

    def __reduce__(self) -> Any:
        return (H5Array, (self.path, self.name, self.shape, self.dtype.str, self.chunks))

    def __dask_tokenize__(self) -> Any:
        stat = os.stat(self.path)
        return ("dnmf-h5", self.path, self.name, stat.st_mtime_ns, stat.st_size)

    def __repr__(self) -> str:
        return f"H5Array({self.path}:{self.name}, shape={self.shape}, dtype={self.dtype})"


class H5Group:
    """An HDF5 group seen as :func:`dnmf._source._csr_group` sees a Zarr group."""

    def __init__(self, path: str, group: Any, attrs: dict[str, Any] | None = None) -> None:
        h5py = _h5py()
        self.path = path
        self.name = group.name
        self.attrs = {k: _py(v) for k, v in group.attrs.items()}
        self.attrs.update(attrs or {})
        self._members = {k: H5Array.of(path, v) for k, v in group.items()
                         if isinstance(v, h5py.Dataset)}

    def __getitem__(self, key: str) -> H5Array:
        return self._members[key]


def _strings(dataset: Any) -> list[str]:
    h5py = _h5py()
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return [str(x) for x in dataset.asstr()[()]]
    values = dataset[()]
    return [x.decode() if isinstance(x, bytes) else str(x) for x in values]


def _frame_index(path: str, group: str) -> list[str] | None:
    """The index of an AnnData data frame (``obs``, ``var``, ``raw/var``)."""
    h5py = _h5py()
    f = _file(path)
    g = f.get(group)
    if isinstance(g, h5py.Group):
        key = _py(g.attrs.get("_index", "_index"))
        ds = g.get(key)
        if isinstance(ds, h5py.Dataset):
            return _strings(ds)
    if isinstance(g, h5py.Dataset) and g.dtype.names and "index" in g.dtype.names:
        # anndata < 0.7 wrote a data frame as one compound dataset ("index" its field).
        return [x.decode() if isinstance(x, bytes) else str(x) for x in g.fields("index")[()]]
    return None


def _sparse_encoding(node: Any) -> str | None:
    enc = _py(node.attrs.get("encoding-type"))
    if enc in ("csr_matrix", "csc_matrix"):
        return str(enc)
    legacy = _py(node.attrs.get("h5sparse_format"))  # anndata < 0.7
    return f"{legacy}_matrix" if legacy in ("csr", "csc") else None


def _dense(path: str, ds: Any, name: str, fmt: str, location: str, **extra: Any) -> Source:
    from .._source import PanelSource, _float_dtype

    shape = check_2d(tuple(ds.shape), name)
    dtype = numeric_dtype(ds.dtype, name)
    array = H5Array.of(path, ds)
    row_chunk = int(ds.chunks[0]) if ds.chunks else None

    def load() -> PanelSource:
        return PanelSource("zarr", array, shape, _float_dtype(dtype, name), row_chunk)

    return Source(fmt, name, shape, dtype, False, location, load,
                  blocks=lambda: ArrayReader(array, name, row_chunk=row_chunk), **extra)


def _sparse(path: str, node: Any, name: str, fmt: str, location: str,
            attrs: dict[str, Any] | None = None, **extra: Any) -> Source:
    from .._source import PanelSource, _csr_group, _float_dtype

    h5py = _h5py()
    if isinstance(node, h5py.Dataset):
        raise InvalidInputError(
            f"{name} is a dense dataset although its attributes say it is a sparse matrix "
            f"(encoding-type {_py(node.attrs.get('encoding-type'))!r}): the file is "
            f"inconsistent; rewrite it (e.g. anndata's write_h5ad)."
        )
    attrs = dict(attrs or {})
    if "h5sparse_shape" in node.attrs and "shape" not in node.attrs:
        attrs.setdefault("shape", _py(node.attrs["h5sparse_shape"]))
    encoding = attrs.get("encoding-type") or _sparse_encoding(node)
    attrs["encoding-type"] = encoding
    group = H5Group(path, node, attrs)
    if encoding == "csc_matrix":
        shape = group.attrs.get("shape")
        csc_group = H5Group(path, node, {**attrs, "encoding-type": "csr_matrix",
                                         "shape": list(shape or [0, 0])[::-1]})
        csr_t = _csr_group(csc_group, name)  # CSC of V is CSR of Vᵀ: checked the same way

        def load_csc() -> Any:
            from .._source import CSRPanel

            panel = CSRPanel(csr_t.data, csr_t.indices, csr_t.indptr_array, 0,
                             csr_t.shape[0], csr_t.shape[1], csr_t.dtype.str)
            return panel.load().T.tocsr()

        n, m = csr_t.shape[1], csr_t.shape[0]
        check_2d((n, m), name)
        notes = [*extra.pop("notes", []),
                 "stored CSC (by columns): read whole into memory (compressed); store "
                 "it as CSR to stream it by rows"]
        return Source(fmt, name, (n, m), numeric_dtype(csr_t.dtype, name), True, location,
                      load_csc, streamed=False, notes=notes,
                      blocks=lambda: SparseReader(load_csc(), name), **extra)
    csr = _csr_group(group, name)
    shape = check_2d(csr.shape, name)
    dtype = numeric_dtype(csr.dtype, name)

    def load() -> PanelSource:
        return PanelSource("zarr-csr", csr, shape, _float_dtype(dtype, name), None)

    return Source(fmt, name, shape, dtype, True, location, load,
                  blocks=lambda: CSRGroupReader(group, name), **extra)


def _matrix(path: str, node: Any, name: str, fmt: str, location: str, **extra: Any) -> Source:
    h5py = _h5py()
    if isinstance(node, h5py.Group) or _sparse_encoding(node):
        if _sparse_encoding(node) is None:
            raise InvalidInputError(
                f"{name} is an HDF5 group, not a matrix: a sparse matrix needs "
                f"encoding-type 'csr_matrix' (AnnData's encoding) and data, indices, "
                f"indptr."
            )
        return _sparse(path, node, name, fmt, location, **extra)
    return _dense(path, node, name, fmt, location, **extra)


def _anndata(path: str, f: Any, dataset: str | None, layer: str | None,
             raw: bool) -> Source:
    choices = [x for x in (dataset and "dataset", layer and "layer", raw and "raw") if x]
    if len(choices) > 1:
        raise InvalidInputError(
            f"give one of --dataset, --layer and --raw for {path}, not {' and '.join(choices)}."
        )
    key = dataset or (f"layers/{layer}" if layer else "raw/X" if raw else "X")
    key = key.strip("/")
    if key == "raw/X" and key not in f and "raw.X" in f:
        key = "raw.X"  # anndata < 0.7 (scanpy's bundled datasets): raw.X, raw.var
    if key not in f:
        if key.startswith("layers/"):
            layers = sorted(f["layers"].keys()) if "layers" in f else []
            have = (f"its layers are {', '.join(layers)}" if layers else "it has no layers")
            raise InvalidInputError(
                f"{path} has no layer {key[len('layers/'):]!r}: {have}. Give one of them "
                f"(--layer NAME), or leave --layer out for X."
            )
        if key.startswith("raw"):
            raise InvalidInputError(f"{path} has no raw/X: leave --raw out to read X.")
        raise InvalidInputError(f"{path} has no {key!r} (an AnnData file without X?).")
    location = os.path.abspath(path) + ("" if key == "X" else f"/{key}")
    var_group = ("raw/var" if key.startswith("raw/") else "raw.var" if key == "raw.X"
                 else "var")
    what = "X" if key == "X" else key
    notes = [f"AnnData {what}"]
    return _matrix(path, f[key], f"{path}:{key}", "h5ad", location, notes=notes,
                   obs=lambda: _frame_index(path, "obs"),
                   var=lambda: _frame_index(path, var_group))


def _tenx_group(f: Any) -> str | None:
    h5py = _h5py()
    if isinstance(f.get("matrix"), h5py.Group) and "barcodes" in f["matrix"]:
        return "matrix"
    groups = [k for k, v in f.items() if isinstance(v, h5py.Group)]
    if len(groups) == 1 and {"barcodes", "genes", "indptr"} <= set(f[groups[0]].keys()):
        return groups[0]  # CellRanger 2: one group per genome
    return None


def _tenx(path: str, f: Any, group: str) -> Source:
    g = f[group]
    for member in ("data", "indices", "indptr", "shape", "barcodes"):
        if member not in g:
            raise InvalidInputError(
                f"{path} looks like a 10x Genomics file but its {group!r} group has no "
                f"{member!r}: it is incomplete."
            )
    n_genes, n_cells = (int(x) for x in g["shape"][()])
    attrs = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
             "shape": [n_cells, n_genes]}

    def genes() -> list[str] | None:
        if "features" in g and "name" in g["features"]:
            return _strings(g["features"]["name"])
        if "gene_names" in g:
            return _strings(g["gene_names"])
        return None

    notes = [f"10x Genomics matrix ({group!r}: {n_genes} genes × {n_cells} cells in CSC), "
             f"read as {n_cells} cells × {n_genes} genes"]
    return _sparse(path, g, f"{path}:{group}", "10x-h5", os.path.abspath(path), attrs,
                   notes=notes, obs=lambda: _strings(g["barcodes"]), var=genes)


def _generic(path: str, f: Any, dataset: str | None) -> Source:
    h5py = _h5py()
    if dataset is None:
        found: list[str] = []
        groups: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if any(name.startswith(g + "/") for g in groups):
                return
            if isinstance(obj, h5py.Group) and _sparse_encoding(obj):
                groups.append(name)
                found.append(name)
            elif isinstance(obj, h5py.Dataset) and obj.ndim == 2:
                found.append(name)

        f.visititems(visit)
        if len(found) != 1:
            listing = ", ".join(found) if found else "none"
            what = "2-D datasets" if not groups else "matrices (2-D datasets, sparse groups)"
            raise InvalidInputError(
                f"{path} holds {len(found)} {what} ({listing}); name one with --dataset."
            )
        dataset = found[0]
        location = os.path.abspath(path)
    else:
        location = f"{os.path.abspath(path)}/{dataset.strip('/')}"
    obj = f.get(dataset)
    if obj is None or not (isinstance(obj, h5py.Dataset) or _sparse_encoding(obj)):
        raise InvalidInputError(f"{path} has no dataset {dataset!r}.")
    return _matrix(path, obj, f"{path}:{dataset}", "hdf5", location)


def open_hdf5(path: str, *, dataset: str | None = None, layer: str | None = None,
              raw: bool = False, **options: Any) -> Source:
    h5py = _h5py()
    try:
        f = _file(path)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path} as HDF5 ({exc}).") from None
    is_anndata = _py(f.attrs.get("encoding-type")) == "anndata" or (
        path.lower().endswith(".h5ad") and ("X" in f or "obs" in f))
    if is_anndata:
        return _anndata(path, f, dataset, layer, bool(raw))
    if layer or raw:
        raise InvalidInputError(
            f"{path} is not an AnnData file, so it has no layers or raw: leave out "
            f"--layer/--raw (and name the matrix with --dataset)."
        )
    group = None if dataset is not None else _tenx_group(f)
    if group is not None:
        return _tenx(path, f, group)
    del h5py
    return _generic(path, f, dataset)


def _is_hdf5(path: str) -> bool:
    if "://" in path or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == _MAGIC
    except OSError:
        return False


register(Engine("hdf5", (".h5", ".hdf5", ".h5ad", ".he5"), open_hdf5, _is_hdf5,
                options=("dataset", "layer", "raw")))
