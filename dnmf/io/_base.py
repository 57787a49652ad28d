"""The reader layer's core: :class:`Source` (V opened, with its names) and the registry.

Modelled on xarray's backends: each format registers an :class:`Engine` (a name, the
file name endings it claims, an optional look at the content, and an ``open``
function); :func:`guess_engine` picks one for a path by its content where that is
conclusive (Zarr metadata, HDF5 and NPY magic numbers) and by its name otherwise;
:func:`open_source` opens a path, URL or in-memory object through it. Readers open
without reading V's values: V is read later by row panels (by the engine) or by
row blocks (by the Zarr writer).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidParameterError

__all__ = [
    "ENGINES", "Engine", "Source", "guess_engine", "open_source", "register", "split_inner",
]


@dataclass
class Source:
    """A matrix V opened for dnmf, without reading its values.

    Attributes
    ----------
    format : str
        The reader that opened it: ``"npy"``, ``"csv"``, ``"h5ad"``, ``"10x-h5"``,
        ``"anndata-zarr"``, ``"zarr"``, ``"dataframe"``, ...
    name : str
        How messages call it (a path, with the array inside it).
    shape : tuple of int
        (n_samples, n_features) as dnmf sees it (a 10x matrix: cells × genes).
    dtype : numpy.dtype
        The stored dtype.
    sparse : bool
        Stored sparse (a CSR matrix, read by row panels as such).
    location : str or None
        A path or URL that :func:`open_source` reopens to the same matrix (recorded by
        a run, for resume); None for in-memory data.
    streamed : bool
        The engine reads it by row panels without holding it whole in memory.
    notes : list of str
        What the reader detected (a header line, an index column, the layer used).
    storage_options : dict or None
        The fsspec options it was opened with (a URL only); a run records the ones
        that are not secrets, and ``resume`` reopens the source with them.
    """

    format: str
    name: str
    shape: tuple[int, int]
    dtype: np.dtype
    sparse: bool
    location: str | None
    load: Callable[[], Any] = field(repr=False)
    streamed: bool = True
    notes: list[str] = field(default_factory=list)
    obs: Callable[[], Sequence[str] | None] | None = field(default=None, repr=False)
    var: Callable[[], Sequence[str] | None] | None = field(default=None, repr=False)
    blocks: Callable[[], Any] | None = field(default=None, repr=False)
    closer: Callable[[], None] | None = field(default=None, repr=False)
    _array: Any = field(default=None, repr=False)
    _names: dict[str, Any] = field(default_factory=dict, repr=False)
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def array(self) -> Any:
        """V in a form the engine reads by panels (:func:`dnmf._source.as_source`)."""
        if self._array is None:
            self._array = self.load()
        return self._array

    def _cached(self, key: str, get: Callable[[], Any] | None) -> list[str] | None:
        if key not in self._names:
            names = get() if get is not None else None
            self._names[key] = None if names is None else [str(x) for x in names]
        return self._names[key]

    @property
    def obs_names(self) -> list[str] | None:
        """Names of the rows (samples, cells, documents), where the format has them."""
        return self._cached("obs", self.obs)

    @property
    def var_names(self) -> list[str] | None:
        """Names of the columns (features, genes, words), where the format has them."""
        return self._cached("var", self.var)

    def reader(self) -> Any:
        """A :class:`dnmf.io._blocks.Reader` over V's rows, for the Zarr writer."""
        if self.blocks is not None:
            return self.blocks()
        from ._blocks import ArrayReader, SparseReader

        array = self.array
        import scipy.sparse as sp

        if sp.issparse(array):
            return SparseReader(array, self.name)
        return ArrayReader(array, self.name, streaming=self.streamed)

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> str:
        kind = "sparse" if self.sparse else "dense"
        return f"{self.name} ({self.format}, {self.shape[0]} × {self.shape[1]} {self.dtype} " \
               f"{kind})"


@dataclass(frozen=True)
class Engine:
    """One reader: its name, the name endings it claims, and how to open."""

    name: str
    extensions: tuple[str, ...]
    open: Callable[..., Source]
    #: Looks at a path's content: True when it is certainly this format.
    sniff: Callable[[str], bool] | None = None
    #: Options (besides ``storage_options``) this reader accepts.
    options: tuple[str, ...] = ()


#: The registered readers, by name.
ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    ENGINES[engine.name] = engine
    return engine


def _known_endings() -> str:
    endings = sorted({e for eng in ENGINES.values() for e in eng.extensions
                      if not e.endswith(".gz")})
    return ", ".join(endings)


def split_inner(path: str) -> tuple[str, str | None]:
    """``cells.h5ad/layers/counts`` → (``cells.h5ad``, ``layers/counts``): a path into
    a file container (HDF5) names an object inside it; existing paths are kept whole."""
    if "://" in path or os.path.exists(path):
        return path, None
    p = Path(path)
    for parent in p.parents:
        if str(parent) in ("", ".", "/"):
            break
        if parent.is_file():
            inner = p.relative_to(parent).as_posix()
            return str(parent), inner
        if parent.is_dir():
            break
    return path, None


def guess_engine(path: str) -> Engine:
    """The reader for ``path``: by its content where conclusive, else by its name."""
    for engine in ENGINES.values():
        if engine.sniff is not None and engine.sniff(path):
            return engine
    name = path.lower().rstrip("/")
    best: tuple[int, Engine] | None = None
    for engine in ENGINES.values():
        for ending in engine.extensions:
            if name.endswith(ending) and (best is None or len(ending) > best[0]):
                best = (len(ending), engine)
    if best is not None:
        return best[1]
    raise InvalidInputError(
        f"cannot tell the format of {path!r} from its name or content: dnmf reads "
        f"{_known_endings()} (and .csv.gz, .tsv.gz, .mtx.gz), AnnData and 10x Genomics "
        f"HDF5 files, and Zarr arrays and groups. Rename the file or convert it first."
    )


def open_source(X: Any, *, engine: str | None = None, **options: Any) -> Source:
    """Open V from a path, URL or in-memory object, without reading its values.

    Parameters
    ----------
    X : str, os.PathLike, Source or array-like
        A file (``.npy``, ``.npz``, ``.mtx``, ``.csv``/``.tsv`` (optionally gzipped),
        ``.h5``/``.hdf5``, ``.h5ad``, a 10x Genomics ``.h5``), a Zarr array or group
        (v2 or v3; an AnnData store), an ``s3://`` or other fsspec URL of a Zarr store,
        or an object: NumPy, SciPy sparse, Dask, Zarr, xarray DataArray, pandas or
        polars DataFrame, AnnData. A path may name an object inside an HDF5 file:
        ``cells.h5ad/layers/counts``.
    engine : str, optional
        The reader to use (a key of :data:`ENGINES`) instead of guessing.
    dataset : str, optional
        The array inside a container (HDF5 file, Zarr group, ``.npz`` archive).
    layer : str, optional
        For AnnData (``.h5ad`` or Zarr): ``layers[layer]`` instead of ``X``.
    raw : bool, optional
        For AnnData: ``raw.X`` instead of ``X``.
    index_col : int, False or None, optional
        For CSV/TSV: the column of row names (None: detected; False: none).
    storage_options : dict, optional
        fsspec options for URLs (e.g. ``{"endpoint_url": ..., "anon": True}``).

    Returns
    -------
    Source
    """
    if isinstance(X, Source):
        return X
    unknown = set(options) - {"dataset", "layer", "raw", "index_col", "storage_options"}
    if unknown:
        raise InvalidParameterError(f"open_source got unknown options {sorted(unknown)}.")
    options = {k: v for k, v in options.items()
               if v is not None and not (k == "raw" and v is False)}
    from . import _readers  # noqa: F401  (registers the readers)

    if not isinstance(X, str | os.PathLike):
        from ._memory import open_object

        return open_object(X, **options)
    path = os.fspath(X)
    if engine is not None:
        if engine not in ENGINES:
            raise InvalidParameterError(
                f"engine must be one of {sorted(ENGINES)}, got {engine!r}."
            )
        chosen = ENGINES[engine]
    base, inner = split_inner(path)
    if inner is not None:
        if options.get("dataset") is not None:
            raise InvalidParameterError(
                f"{path} names {inner!r} inside {base}, and the dataset "
                f"{options['dataset']!r} (--dataset) names another: give one of them."
            )
        options["dataset"] = inner
        path = base
    if engine is None:
        chosen = guess_engine(path)
    if "://" not in path and not os.path.exists(path) and chosen.name != "zarr":
        raise InvalidInputError(f"{path} does not exist.")
    given = {k for k in options if k != "storage_options"}
    refused = given - set(chosen.options)
    if refused:
        what = ", ".join(f"{k.replace('_', ' ')} {options[k]!r} (--{k.replace('_', '-')})"
                         for k in sorted(refused))
        raise InvalidParameterError(
            f"{what} does not apply to {path} ({chosen.name.upper()}): leave it out."
            + (" A dataset names an array inside a container (NPZ, HDF5, Zarr group), "
               "but this file holds one matrix." if "dataset" in refused else "")
        )
    return chosen.open(path, **options)
