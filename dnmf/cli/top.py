"""``dnmf top``: the top features of each component (words per topic, genes per program),
by name where the data had names."""

import json
from typing import TYPE_CHECKING, Annotated

import typer

from ._app import app
from ._output import _result, _say
from ._runs import _open_run

if TYPE_CHECKING:
    import numpy as np


def top_features(H: "np.ndarray", n: int) -> list[list[tuple[int, float]]]:
    """Per row of H: the ``n`` largest entries as (column, value), largest first; ties
    in column order (a stable sort, so the answer does not depend on the platform)."""
    import numpy as np

    order = np.argsort(-H, axis=1, kind="stable")[:, :n]
    return [[(int(j), float(H[i, j])) for j in row] for i, row in enumerate(order)]


@app.command()
def top(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    n: Annotated[int, typer.Option("--n", "-n", min=1,
                                   help="Features per component.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The top features of each component: the largest entries of each row of H.

    Features are named by the data's column names (AnnData var_names, 10x gene names,
    a CSV header, DataFrame columns) where the run's input had them, else by column
    number. The weight is the entry of H; share is its fraction of the row's sum.
    """
    import numpy as np

    from ..io._anndata import names_of_run

    r = _open_run(run)
    H = np.asarray(r.H, dtype=np.float64)
    _, var = names_of_run(r)
    if var is None:
        _say("the data has no feature names: features are shown by column number")
    sums = H.sum(axis=1)
    tops = top_features(H, min(n, H.shape[1]))
    components = []
    for i, row in enumerate(tops):
        components.append({
            "component": i,
            "features": [{"index": j, "name": var[j] if var is not None else str(j),
                          "weight": w, "share": w / sums[i] if sums[i] > 0 else 0.0}
                         for j, w in row],
        })
    if as_json:
        typer.echo(json.dumps({"run": r.path, "named": var is not None,
                               "components": components}))
        return
    width = max(len(f["name"]) for c in components for f in c["features"])
    for c in components:
        _result(f"component {c['component']}:")
        for rank, f in enumerate(c["features"], start=1):
            _result(f"  {rank:>3}. {f['name']:<{width}}  {f['weight']:.4g}  "
                    f"({f['share']:.1%})")
