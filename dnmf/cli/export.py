"""``dnmf export``: W and H of a run to plain files (NumPy or CSV, with names), or
into the AnnData file or store the run was fitted on (``--into``)."""

import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DnmfError, InvalidParameterError, StoreError
from ._app import _exit_code, app
from ._options import _parse_size
from ._output import _bytes, _result, _say
from ._runs import _open_run

#: Default bound on the size of W that ``export`` writes without ``--force``.
DEFAULT_EXPORT_LIMIT = "1GiB"


class ExportFormat(str, Enum):
    npy = "npy"
    csv = "csv"


@app.command()
def export(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Directory to write W and H into.", show_default=False,
        file_okay=False)] = None,
    into: Annotated[str | None, typer.Option(
        "--into", metavar="ANNDATA", help="Add W (obsm['X_nmf']), H transposed "
        "(varm['NMF_components']) and the fit's record (uns['nmf']) to this .h5ad file or "
        "AnnData Zarr store, leaving X as it is.", show_default=False)] = None,
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", help="npy (NumPy) or csv.")] = ExportFormat.npy,
    max_size: Annotated[str, typer.Option(
        "--max-size", help="Refuse to export a W larger than this without --force.")]
    = DEFAULT_EXPORT_LIMIT,
    force: Annotated[bool, typer.Option("--force", help="Export W whatever its size.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace W and H files already in --out (or the entries "
        "already in --into).")] = False,
) -> None:
    """Write W and H of a run to plain files (W.npy and H.npy, or W.csv and H.csv), or
    into an AnnData file (--into cells.h5ad).

    CSV files carry the row and feature names of the data where it had them (a
    header line and an index column, as pandas writes them). --into writes atomically:
    a failed export leaves the file as it was.
    """
    if (out is None) == (into is None):
        raise InvalidParameterError("give --out DIR (plain files) or --into ANNDATA, one "
                                    "of them.")
    r = _open_run(run)
    if into is not None:
        from ..io import write_into

        legacy = write_into(r, into, overwrite=overwrite).rewritten
        n, k = r.shape[0], int(r.H.shape[0])
        _result(f"wrote into {into}: obsm['X_nmf'] ({n} × {k}), varm['NMF_components'] "
                f"({r.shape[1]} × {k}), uns['nmf']"
                + (" (the file was in anndata's pre-0.7 layout: rewritten whole in the "
                   "current one)" if legacy else ""))
        return
    assert out is not None
    limit = _parse_size(max_size)
    n, k = r.shape[0], int(r.H.shape[0])
    has_W = getattr(r, "W", True) is not None  # a partial_fit stream keeps no W
    size = n * k * r.dtype.itemsize if has_W else 0
    if size > limit and not force:
        raise DnmfError(
            f"W is {_bytes(size)} ({n} × {k} {r.dtype}), more than --max-size {max_size}: "
            f"pass --force to export it anyway, or read it lazily with "
            f"dnmf.open_run({r.path!r}).W."
        )
    ext = fmt.value
    targets = {name: out / f"{name}.{ext}" for name in (("W", "H") if has_W else ("H",))}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise StoreError(f"{', '.join(existing)} already exist; pass --overwrite to replace.")
    from .._convert import check_writable

    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out}: {exc.strerror or exc}.") from None
    written: list[str] = []
    try:
        check_writable(out, str(out))
        labels = _labels(r) if ext == "csv" else {"W": None, "H": None}
        for name in targets:
            _export_one(r.W if name == "W" else r.H, targets[name], ext, labels[name])
            written.append(str(targets[name]))
    except KeyboardInterrupt as exc:
        _say("interrupted: " + (f"only {', '.join(written)} written." if written
                                else "nothing written."))
        raise typer.Exit(_exit_code(exc)) from None
    finally:
        if made and not written:
            shutil.rmtree(out, ignore_errors=True)
    if not has_W:
        _result(f"wrote {targets['H']} ({k} × {r.shape[1]}); {run} is a stream of "
                f"partial_fit calls, which keeps no W")
        return
    _result(f"wrote {targets['W']} ({n} × {k}) and {targets['H']} ({k} × {r.shape[1]})")


def _labels(r: Any) -> dict[str, tuple[list[str], list[str]] | None]:
    """(row names, column names) of W and H for CSV, when the data had names."""
    from ..io._anndata import names_of_run

    obs, var = names_of_run(r)
    k = int(r.H.shape[0])
    components = [f"nmf_{i}" for i in range(k)]
    return {"W": (obs, components) if obs is not None else None,
            "H": (components, var) if var is not None else None}


def _csv_field(name: str) -> str:
    if any(c in name for c in ',"\n\r'):
        return '"' + name.replace('"', '""') + '"'
    return name


def _export_one(data: Any, target: Path, ext: str,
                labels: tuple[list[str], list[str]] | None = None) -> None:
    """One factor to ``target``, streamed a block of rows at a time, renamed when done.

    With ``labels`` (row names, column names), a CSV gets a header line and an index
    column, as ``pandas.DataFrame.to_csv`` writes them."""
    import numpy as np

    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    blocks: list[tuple[int, Any]]
    if hasattr(data, "dask"):
        starts = np.cumsum((0, *data.chunks[0]))
        blocks = [(int(a), data.blocks[i]) for i, a in enumerate(starts[:-1])]
    else:
        blocks = [(0, data)]
    try:
        if ext == "npy":
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=data.dtype,
                                           shape=tuple(int(s) for s in data.shape))
            for start, block in blocks:
                values = np.asarray(block.compute() if hasattr(block, "compute") else block)
                mm[start : start + len(values)] = values
            mm.flush()
            del mm
        else:
            precision = "%.9g" if np.dtype(data.dtype) == np.float32 else "%.17g"
            with open(tmp, "w") as f:
                if labels is not None:
                    f.write("," + ",".join(_csv_field(c) for c in labels[1]) + "\n")
                for start, block in blocks:
                    values = np.asarray(block.compute() if hasattr(block, "compute") else block)
                    if labels is None:
                        np.savetxt(f, values, delimiter=",", fmt=precision)
                        continue
                    for i, row in enumerate(values):
                        f.write(_csv_field(labels[0][start + i]) + "," +
                                ",".join(precision % v for v in row) + "\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

