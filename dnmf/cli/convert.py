"""``dnmf convert``: a data file to a Zarr array chunked by rows, streaming."""

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._app import _exit_code, app
from ._options import DtypeName, IndexColOpt, LayerOpt, RawOpt, reading_options
from ._output import _bytes, _fmt_duration, _result, _row_progress, _say


class KeepName(str, Enum):
    nan = "nan"


@app.command()
def convert(
    src: Annotated[str, typer.Argument(
        metavar="SRC", help="A .npy, .npz, .mtx, .csv, .tsv, .h5/.hdf5 file or a Zarr array.",
        show_default=False)],
    dst: Annotated[str, typer.Argument(
        metavar="DST", help="The Zarr array to write (DST.zarr).", show_default=False)],
    chunk_rows: Annotated[int | None, typer.Option(
        "--chunk-rows", min=1, help="Rows per chunk [default: about 64 MiB per chunk].",
        show_default=False)] = None,
    dtype: Annotated[DtypeName | None, typer.Option(
        "--dtype", help="Stored dtype [default: the source's float type; float64 for "
        "integers].", show_default=False)] = None,
    transpose: Annotated[bool, typer.Option(
        "--transpose", help="Store the transpose: rows of SRC become columns.")] = False,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="The array inside an HDF5 file, a Zarr group or an .npz archive.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace DST if it exists (only once the new array is "
        "complete).")] = False,
    dense: Annotated[bool, typer.Option(
        "--dense", help="Write a sparse SRC as a dense array [default: a sparse SRC is "
        "written as a CSR Zarr group].")] = False,
    layer: LayerOpt = None,
    raw: RawOpt = False,
    index_col: IndexColOpt = "auto",
    missing: Annotated[KeepName | None, typer.Option(
        "--missing", help="nan: keep NaN entries (missing values, for 'dnmf fit --missing "
        "nan') instead of refusing them; dense output only.", show_default=False)] = None,
) -> None:
    """Convert a data file to a Zarr v3 array chunked by rows, streaming.

    SRC is anything dnmf reads (see docs/formats.md): .npy, .npz, .mtx, .csv/.tsv,
    .h5/.hdf5, AnnData .h5ad or Zarr (X, --layer NAME or --raw), a 10x Genomics .h5
    (cells × genes), a Zarr array or group. Row and column names come along.

    .npy is memory-mapped, .csv/.tsv (optionally .gz) are parsed in blocks of rows,
    HDF5, Zarr arrays and CSR Zarr groups are read by slices: none of them is
    loaded whole. Matrix Market
    (.mtx) files and NumPy .npz archives of dense arrays are read into memory whole
    (keep them to moderate sizes). A sparse SRC (SciPy sparse .npz, coordinate .mtx,
    CSR Zarr group) is held compressed and written as a CSR Zarr group (AnnData's
    encoding) that fit reads without densifying; --dense writes a dense array
    instead, densified a block at a time. Negative, NaN and infinite values are refused with
    the position of the first one (--missing nan keeps NaN as missing values). DST
    appears only once it is complete.
    """
    import numpy as np

    from .._convert import convert as run_convert

    started = time.perf_counter()
    try:
        with _row_progress(f"converting {Path(src).name}") as on_rows:
            result = run_convert(
                src, dst, chunk_rows=chunk_rows, dtype=dtype.value if dtype else None,
                transpose=transpose, dataset=dataset, overwrite=overwrite, on_rows=on_rows,
                dense=dense, missing=missing.value if missing else None,
                **reading_options(layer, raw, index_col),
            )
    except KeyboardInterrupt as exc:
        _say(f"interrupted: {dst} was not written.")
        raise typer.Exit(_exit_code(exc)) from None
    if result.nnz is not None:
        n, m = result.shape
        density = result.nnz / max(1, n * m)
        _result(
            f"wrote {result.path}: {n} × {m} {result.dtype}, sparse: a CSR group with "
            f"{result.nnz} stored entries ({density:.3%} of the matrix), in "
            f"{_fmt_duration(time.perf_counter() - started)}"
        )
        return
    size = result.shape[0] * result.shape[1] * np.dtype(result.dtype).itemsize
    note = "" if result.streamed else " (source read into memory whole)"
    _result(
        f"wrote {result.path}: {result.shape[0]} × {result.shape[1]} {result.dtype} "
        f"({_bytes(size)} uncompressed), chunks of {result.chunk_rows} rows, in "
        f"{_fmt_duration(time.perf_counter() - started)}{note}"
    )

