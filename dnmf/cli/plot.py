"""``dnmf plot``: the loss curve and basis images of a run."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import (
    DnmfError,
    InvalidParameterError,
)
from ._app import app
from ._output import _result
from ._runs import _open_run


class FactorName(str, Enum):
    H = "H"
    W = "W"


@app.command()
def plot(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    loss: Annotated[Path | None, typer.Option(
        "--loss", help="Draw the loss curve (log scale) to this file (.png, .pdf, .svg).",
        show_default=False, dir_okay=False)] = None,
    basis: Annotated[Path | None, typer.Option(
        "--basis", help="Draw the basis images to this file.", show_default=False,
        dir_okay=False)] = None,
    image_shape: Annotated[str | None, typer.Option(
        "--image-shape", help="HEIGHTxWIDTH of one basis image, e.g. 32x32 "
        "[default: square].", show_default=False)] = None,
    of: Annotated[FactorName, typer.Option(
        "--of", help="Basis images are the rows of H (images are rows of V) or the "
        "columns of W (images are columns of V).")] = FactorName.H,
    columns: Annotated[int | None, typer.Option(
        min=1, help="Images per row of the grid.", show_default=False)] = None,
    top: Annotated[Path | None, typer.Option(
        "--top", help="Draw each component's top features (largest entries of H) as bars, "
        "labelled with the data's feature names, to this file.", show_default=False,
        dir_okay=False)] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Features per component for "
                                   "--top.")] = 10,
) -> None:
    """Draw the loss curve, the basis images and/or the top features of a run (needs
    matplotlib). Feature names label --top where the run's data had them."""
    import numpy as np

    from .. import _plot

    if loss is None and basis is None and top is None:
        raise InvalidParameterError("give --loss FILE, --basis FILE, --top FILE or several.")
    _plot.require_matplotlib()
    shape = _plot.parse_image_shape(image_shape) if image_shape else None
    r = _open_run(run, verify=False)
    wrote = []
    if basis is not None:
        if of is FactorName.W and getattr(r, "W", True) is None:
            raise DnmfError(f"{run} is a stream of partial_fit calls, which keeps no W: "
                            f"draw --of H.")
        factor = r.H if of is FactorName.H else np.asarray(r.W)
        images = _plot.basis_images(factor, of.value, shape)
        fig = _plot.basis_figure(images, columns=columns,
                                 title=f"{len(images)} basis images ({of.value})")
        _plot.save_figure(fig, basis)
        wrote.append(str(basis))
    if top is not None:
        from ..io._anndata import names_of_run

        _, var = names_of_run(r)
        fig = _plot.top_figure(np.asarray(r.H), var, n, columns=columns,
                               title=f"top {n} features per component"
                               + ("" if var is not None else " (by column number)"))
        _plot.save_figure(fig, top)
        wrote.append(str(top))
    if loss is not None:
        if not r.loss_history:
            raise DnmfError(f"{run} has no iterations yet: no loss to draw.")
        if hasattr(r, "n_steps"):  # an online run: the smoothed batch cost per commit
            fig = _plot.loss_figure(
                r.loss_history, steps=r.history_steps, xlabel="batches (steps)",
                ylabel="smoothed batch cost",
                title=f"{Path(r.path).name}: online, rank {r.H.shape[0]}")
        else:
            fig = _plot.loss_figure(r.loss_history, title=f"{Path(r.path).name}: "
                                    f"{r.params['solver']}, rank {r.params['n_components']}")
        _plot.save_figure(fig, loss)
        wrote.append(str(loss))
    _result("wrote " + " and ".join(wrote))

