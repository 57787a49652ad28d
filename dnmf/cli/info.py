"""``dnmf info``: parameters, progress, loss and checkpoint health of a run."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ._app import app
from ._output import _fmt_duration, _json_default, _quote
from ._runs import _elapsed, _lock_holder, _open_run, _relative_change, _status


@app.command()
def info(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verify: Annotated[bool, typer.Option(
        help="Check every W chunk against its checksum (reads W once).")] = True,
) -> None:
    """Parameters, data fingerprint, progress, loss and checkpoint health of a run."""
    r = _open_run(run, verify=verify)
    change = _relative_change(r.loss_history, r.init_loss)
    elapsed = _elapsed(r)
    holder = _lock_holder(run)
    health = ("verified: manifest, H and every W chunk match their checksums" if verify
              else "manifest and H verified (W not checked: --no-verify)")
    record = {
        "path": r.path,
        "iteration": r.iteration,
        "max_iter": int(r.params["max_iter"]),
        "complete": r.complete,
        "stop_reason": r.stop_reason,
        "loss": r.loss_history[-1] if r.loss_history else None,
        "relative_change": change,
        "init_loss": r.init_loss,
        "params": r.params,
        "shape": list(r.shape),
        "dtype": str(r.dtype),
        "source": r.source,
        "fingerprint": r.fingerprint,
        "checkpoint": {"verified": bool(verify), "status": "ok", "detail": health},
        "created": r.created,
        "updated": r.updated,
        "elapsed_seconds": elapsed,
        "writer": holder,
        "dnmf_version": r.dnmf_version,
    }
    if as_json:
        typer.echo(json.dumps(record, default=_json_default))
        return
    p = r.params
    sample = (r.fingerprint.get("sample") or {}).get("checksum", "-") \
        if isinstance(r.fingerprint.get("sample"), dict) else "-"
    lines = [
        f"run         {r.path}",
        f"status      {_status(r)}" + (f"; being written by pid {holder.get('pid')} on "
                                       f"{holder.get('host')}" if holder else ""),
        f"iteration   {r.iteration} of max_iter {p['max_iter']}",
        "loss        " + (f"{record['loss']:.6g}" if record["loss"] is not None else "-")
        + (f"  (relative change {change:.2e}, tol {p['tol']:g})" if change is not None else ""),
        f"model       rank {p['n_components']}, solver {p['solver']}, loss {p['beta_loss']}, "
        f"init {p['init']}, seed {p['random_state']}",
        f"penalties   alpha_W {p['alpha_W']}, alpha_H {p['alpha_H']}, l1_ratio {p['l1_ratio']}",
        f"data        {r.shape[0]} × {r.shape[1]} {r.dtype} from "
        f"{(r.source or {}).get('location') or 'an in-memory array'}",
        f"fingerprint {sample}",
        f"panels      {_panels_line(r)}",
        f"checkpoint  every {p.get('checkpoint_every', '-')} iterations; {health}",
        f"time        created {r.created}, last commit {r.updated}"
        + (f" ({_fmt_duration(elapsed)} apart)" if elapsed is not None else ""),
    ]
    for line in lines:
        typer.echo(line)
    if not r.complete and not holder:
        typer.echo(f"continue    dnmf resume {_quote(run)}")


def _panels_line(r: Any) -> str:
    sizes = [b - a for a, b in r.bounds]
    if "panel_starts" in r.params:
        return (f"{len(sizes)}, cut by stored entries: {min(sizes)} to {max(sizes)} rows "
                f"(W chunks of {r.params['panel_rows']} rows)")
    return f"{len(sizes)} of {sizes[0]} rows" + (f" (the last {sizes[-1]})"
                                                   if sizes[-1] != sizes[0] else "")

