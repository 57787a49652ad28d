"""Input preparation for the commands: a Zarr array path for any input (itself, or
a conversion kept next to the run, identified by the source's path, size and mtime
and the conversion's options), and the writing of small outputs into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    InvalidInputError,
    InvalidParameterError,
    StoreError,
)
from ._output import _quote, _row_progress, _say

if TYPE_CHECKING:
    import numpy as np


#: Formats that fit and transform read where they are (the reader layer streams them
#: by row panels from a reopenable location); every other format is converted first.
IN_PLACE = ("npy", "hdf5")


def _input_store_for(out: str) -> Path:
    """Where ``fit`` puts a converted input: next to the run, named after it."""
    path = Path(out.rstrip("/"))
    stem = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    return path.with_name(f"{stem}.input.zarr")


def _source_identity(src: str, **options: Any) -> dict[str, Any]:
    stat = os.stat(src)
    return {"source": os.path.abspath(src), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, **options}


def _zarr_array_info(path: str) -> tuple[tuple[int, ...], np.dtype, int, bool]:
    """Shape, stored dtype, row chunk and whether it is a sparse (CSR) group."""
    import numpy as np

    from .._source import as_source
    from ..io import engine_input

    source = as_source(engine_input(path))
    sparse = source.kind == "zarr-csr"
    return (source.shape, np.dtype(source.data.dtype),
            int(source.row_chunk or source.shape[0]), sparse)


def _prepare_input(
    src: str, out: str, *, dtype: str | None, chunk_rows: int | None, transpose: bool,
    dataset: str | None, overwrite: bool, dense: bool = False,
    reading: dict[str, Any] | None = None, missing: str | None = None,
) -> tuple[str, Path | None, Path | None]:
    """A Zarr array path for ``src``: itself, or a conversion next to ``out``.

    Returns the path; when this call created a conversion, its location (to remove
    if the fit fails before anything was committed); and when that conversion
    replaced another one (``--overwrite``), where the old one was moved (to put
    back on failure, since the run kept then still reads it; to delete once the new
    fit has committed). With ``missing="nan"`` a conversion keeps NaN entries.
    """
    import numpy as np

    from .._convert import convert, detect_format, is_sparse_source, is_zarr
    from ..io import open_source
    from ..io._base import split_inner

    reading = {k: v for k, v in (reading or {}).items()
               if v is not None and not (k == "raw" and v is False)}
    fmt = detect_format(src)
    if fmt != "zarr" and not os.path.exists(split_inner(src)[0]):
        raise InvalidInputError(f"{src} does not exist.")
    plain = not (transpose or dense or dtype is not None or chunk_rows is not None)
    if fmt in IN_PLACE and plain:
        # .npy (memory-mapped) and HDF5 (AnnData, 10x, plain) are read by row panels
        # where they lie: no copy; the run records the file as its source.
        source = open_source(src, dataset=dataset, **reading)
        if source.streamed and source.location is not None:
            notes = f" ({'; '.join(source.notes)})" if source.notes else ""
            _say(f"reading {src} where it is, by row panels{notes}")
            return source.location, None, None
    if fmt == "zarr":
        path = src if dataset is None else f"{src.rstrip('/')}/{dataset}"
        if "://" not in path and not os.path.exists(path):
            raise InvalidInputError(f"{src} does not exist.")
        if reading:
            path = open_source(src, dataset=dataset, **reading).location or path
        _, stored, rows, sparse = _zarr_array_info(path)
        if sparse and not dense and (transpose or dtype is not None
                                     or chunk_rows is not None):
            raise InvalidParameterError(
                f"{src} is a sparse (CSR) Zarr group, fitted as it is: --dtype, --chunk-rows "
                f"and --transpose apply to dense inputs (add --dense to convert it to a "
                f"dense array first)."
            )
        same = (
            not (sparse and dense)
            and not transpose
            and (dtype is None or np.dtype(dtype) == stored)
            and (chunk_rows is None or chunk_rows == rows)
        )
        if same:
            return path, None, None
    if is_zarr(out) and "://" in out:
        raise InvalidParameterError(
            f"--out {out} is a URL, so a converted copy of {src} cannot go next to it: "
            f"convert it first (dnmf convert {_quote(src)} DATA.zarr) and fit DATA.zarr."
        )
    target = _input_store_for(out)
    options = {"dtype": dtype, "chunk_rows": chunk_rows, "transpose": transpose,
               "dataset": dataset, **reading}
    if missing == "nan":
        options["missing"] = "nan"  # NaN kept; copies without NaN keep the old key set
    if not dense and is_sparse_source(src, dataset=dataset, **reading):
        options["sparse"] = True  # written as a CSR group; dense copies keep the old key set
    if "://" in src:
        identity = {"source": src, **options}
    elif os.path.isfile(split_inner(src)[0]):
        identity = {**_source_identity(split_inner(src)[0], **options),
                    "source": os.path.abspath(src)}
    else:  # a Zarr directory: its metadata file says when it was last rewritten
        meta = next((p for p in (Path(src) / "zarr.json", Path(src) / ".zarray")
                     if p.exists()), Path(src))
        identity = {**_source_identity(str(meta), **options), "source": os.path.abspath(src)}
    if target.exists():
        recorded = _recorded_identity(target)
        if recorded == identity:
            _say(f"using {target}, converted earlier from {src}")
            return str(target), None, None
        if not overwrite:
            raise StoreError(
                f"{target} exists but holds another conversion (another file, other "
                f"options, or {src} changed since); pass --overwrite to replace it, or "
                f"remove it."
            )
    # The run being replaced may still read the old conversion: it is kept aside
    # until the new fit has committed, and put back if it does not.
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}") \
        if target.exists() else None
    if aside is not None:
        os.replace(target, aside)
    _say(f"converting {src} to {target} (a Zarr copy that the run reads, kept for resume)")
    try:
        with _row_progress(f"converting {Path(src).name}") as on_rows:
            result = convert(src, target, chunk_rows=chunk_rows, dtype=dtype,
                             transpose=transpose, dataset=dataset, overwrite=True,
                             attributes={"input_of": identity}, on_rows=on_rows, dense=dense,
                             missing="nan" if missing == "nan" else None, **reading)
    except BaseException:
        _put_back(target, aside)
        raise
    kind = f", sparse ({result.nnz} stored entries)" if result.nnz is not None else ""
    _say(f"converted: {result.shape[0]} × {result.shape[1]} {result.dtype}{kind}")
    return str(target), target, aside


def _put_back(path: Path, aside: Path | None) -> None:
    """Remove ``path`` (made by this command) and move ``aside`` back in its place."""
    shutil.rmtree(path, ignore_errors=True)
    if aside is not None:
        os.replace(aside, path)


def _recorded_identity(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        attrs = zarr.open(store=str(path), mode="r").attrs.asdict()
    except Exception:
        return None
    dnmf_attrs = attrs.get("dnmf")
    recorded = dnmf_attrs.get("input_of") if isinstance(dnmf_attrs, dict) else None
    return recorded if isinstance(recorded, dict) else None


def _make_parent(out: str) -> None:
    """Create ``out``'s directory if needed and check that it can be written."""
    from .._convert import check_writable

    parent = Path(out).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory {parent}: {exc.strerror or exc}.") \
            from None
    check_writable(parent, out)


def _refuse_foreign(out: str) -> None:
    """``--out`` exists but is neither a run nor empty: never write into it."""
    path = Path(out)
    if "://" in out or not path.exists():
        return
    if path.is_file() and not out.endswith(".zip"):
        raise StoreError(f"--out {out} is a file, not a run store; choose another --out.")


def _write_array(W: Any, path: Path, attributes: dict[str, Any]) -> None:
    import numpy as np
    import zarr

    from .._convert import default_chunk_rows

    n, k = (int(s) for s in W.shape)
    rows = default_chunk_rows(n, k, W.dtype)
    z = zarr.create_array(store=str(path), shape=(n, k), chunks=(rows, k), dtype=W.dtype,
                          fill_value=0, zarr_format=3, attributes=attributes, overwrite=True)
    if hasattr(W, "dask"):
        import dask.array as da

        da.store(W.rechunk((rows, k)), z, lock=False)  # type: ignore[arg-type]
    else:
        z[:] = np.asarray(W)


def _swap_into_place(tmp: Path, target: Path) -> None:
    from .._convert import _replace

    _replace(tmp, target)

