"""``dnmf demo``: the swimmer data set factorized, its parts drawn."""

import os
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from ..errors import (
    DnmfError,
    InvalidParameterError,
    StoreError,
)
from ._app import app
from ._inputs import _swap_into_place, _write_array
from ._options import SolverName
from ._output import _fmt_duration, _quote, _result, _say
from ._runs import _interrupted


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the demo's files.",
                                      file_okay=False)] = Path("dnmf-demo"),
    max_iter: Annotated[int, typer.Option("--max-iter", min=1,
                                          help="Maximum number of iterations.")] = 300,
    solver: Annotated[SolverName, typer.Option(help="hals or mu.")] = SolverName.hals,
    seed: Annotated[int, typer.Option(min=0, help="Random seed of the initialisation.")] = 1,
) -> None:
    """Factorize the swimmer images and draw the parts NMF finds (basis.png).

    Swimmer (Donoho & Stodden 2003): 256 images of 32×32 pixels, a torso and four
    limbs in four positions each. A rank-17 fit should find the 16 limb positions and
    the torso. Writes OUT/swimmer.zarr (the data), OUT/run.zarr (the run),
    OUT/basis.png and OUT/loss.png, replacing those of an earlier demo.
    """
    import numpy as np

    import dnmf

    from .. import _plot
    from .._demo import SWIMMER_SHAPE, swimmer

    started = time.perf_counter()
    if solver in (SolverName.als, SolverName.amu):
        raise InvalidParameterError(
            f"the demo runs --solver hals or mu (a Frobenius fit of the swimmer), not "
            f"--solver {solver.value}: drop --solver, or pass --solver mu.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out}: {exc.strerror or exc}.") from None
    data, run = out / "swimmer.zarr", out / "run.zarr"
    _refuse_unless_demo(data, run)
    X = swimmer(np.float64)
    _write_array(X, out / f".swimmer.zarr.tmp-{os.getpid()}",
                 {"dnmf": {"dataset": "swimmer (Donoho & Stodden 2003)"}})
    _swap_into_place(out / f".swimmer.zarr.tmp-{os.getpid()}", data)
    _say(f"wrote {data}: the swimmer data set, {X.shape[0]} images of "
         f"{SWIMMER_SHAPE[0]}×{SWIMMER_SHAPE[1]} pixels, one per row")
    est = dnmf.NMF(17, solver=solver.value, init="random", random_state=seed,
                   max_iter=max_iter, tol=1e-4, verbose=1, scheduler="threads",
                   panel_rows=64, out=str(run), overwrite=True, checkpoint_every=50)
    _say(f"fitting rank 17 with {solver.value} on local threads into {run}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(str(data))
    except KeyboardInterrupt as exc:
        raise _interrupted(str(run), "", exc) from None
    images = _plot.basis_images(est.components_, "H", SWIMMER_SHAPE)
    basis = out / "basis.png"
    try:
        _plot.require_matplotlib()
    except DnmfError:
        _plot.write_png_grid(images, basis, columns=6)
        loss_note = " (install dnmf[plot] for loss.png)"
    else:
        _plot.save_figure(_plot.basis_figure(images, columns=6, title="17 parts found by "
                                             "NMF on swimmer (rows of H)"), basis)
        _plot.save_figure(_plot.loss_figure(est.loss_history_, title="swimmer: loss"),
                          out / "loss.png")
        loss_note = f" and the loss curve in {out / 'loss.png'}"
    _result(f"fitted in {_fmt_duration(time.perf_counter() - started)}: "
            f"{est.n_iter_} iterations, loss {est.loss_history_[-1]:.3g}")
    _result(f"wrote {basis}: the 17 basis images{loss_note}")
    _result(f"next: dnmf info {_quote(run)}")


def _refuse_unless_demo(data: Path, run: Path) -> None:
    """The demo replaces its own earlier files, never anything else of the same name."""
    import zarr

    from .._store import RunStore, as_location

    if data.exists():
        try:
            attrs = zarr.open_array(store=str(data), mode="r").attrs.asdict()
        except Exception:
            attrs = {}
        if "swimmer" not in str(attrs.get("dnmf", {})):
            raise StoreError(f"{data} exists and is not the demo's data; choose another --out.")
    if run.exists() and not RunStore(as_location(str(run))).is_run():
        raise StoreError(f"{run} exists and is not a dnmf run; choose another --out.")

