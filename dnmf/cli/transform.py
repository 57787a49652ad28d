"""``dnmf transform``: W for new rows with a run's H fixed."""

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidParameterError
from ._app import _exit_code, app
from ._inputs import IN_PLACE, _swap_into_place, _write_array
from ._options import IndexColOpt, LayerOpt, RawOpt, _parse_size, reading_options
from ._output import _absolute, _result, _row_progress, _say
from ._runs import _open_run
from ._scheduler import PanelSizeOpt, SchedulerFileOpt, SchedulerOpt, _check_scheduler, _scheduler


@app.command()
def transform(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    new: Annotated[str, typer.Argument(
        metavar="NEW", help="New rows: a Zarr array or any file 'dnmf convert' reads.",
        show_default=False)],
    out: Annotated[str, typer.Option(
        "--out", "-o", metavar="W_NEW", help="The Zarr array to write W_NEW to.",
        show_default=False)],
    dataset: Annotated[str | None, typer.Option(
        help="The array inside an HDF5 file, a Zarr group or an .npz archive.",
        show_default=False)] = None,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
    panel_size: PanelSizeOpt = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace --out if it exists.")] = False,
    layer: LayerOpt = None,
    raw: RawOpt = False,
    index_col: IndexColOpt = "auto",
) -> None:
    """W for new rows with the run's H fixed, written to a Zarr array."""
    from .._convert import check_destination, convert, detect_format
    from ..io import open_source

    reading = {k: v for k, v in reading_options(layer, raw, index_col).items()
               if (v is not None and v is not False) or (k == "index_col" and v is False)}

    _check_scheduler(scheduler, scheduler_file)
    panel_bytes = None if panel_size is None else _parse_size(panel_size, "--panel-size")
    r = _open_run(run)
    target = check_destination(out, overwrite=overwrite)
    est = r.to_estimator()
    scratch: Path | None = None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        source = new
        opened = open_source(new, dataset=dataset, **reading) \
            if detect_format(new) in IN_PLACE or reading else None
        if opened is not None and opened.streamed and opened.location is not None:
            source = opened.location  # read by row panels where it is
        elif detect_format(new) != "zarr" or dataset is not None:
            if detect_format(new) == "zarr":
                source = f"{new.rstrip('/')}/{dataset}"
            else:
                scratch = target.with_name(f".{target.name}.input-{os.getpid()}")
                with _row_progress(f"reading {Path(new).name}") as on_rows:
                    convert(new, scratch, dataset=dataset, overwrite=True, on_rows=on_rows,
                            **reading)
                source = str(scratch)
        with _scheduler(scheduler, scheduler_file) as client:
            est.set_params(out=None, verbose=0, scheduler=client)
            if panel_bytes is not None and hasattr(r, "n_steps"):
                raise InvalidParameterError(
                    f"--panel-size does not apply to the online run {run}: its transform "
                    f"solves W in batches of its batch_size. Drop --panel-size.")
            if panel_bytes is not None:
                est.set_params(panel_rows=None, panel_bytes=panel_bytes)
            _say(f"solving W for the rows of {new} with H of {run} fixed")
            W = est.transform(_absolute(source))
            _write_array(W, tmp, {"dnmf": {"transform_of": r.path, "input": new}})
        _swap_into_place(tmp, target)
    except KeyboardInterrupt as exc:
        _say(f"interrupted: {out} was not written.")
        raise typer.Exit(_exit_code(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    shape = tuple(W.shape)
    _result(f"wrote {out}: W for {shape[0]} new rows × {shape[1]} components")

