"""``dnmf info``: parameters, progress, loss and checkpoint health of a run."""

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
    if hasattr(r, "n_steps"):
        _info_online(run, r, as_json)
        return
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
        *_observed_lines(r),
        f"panels      {_panels_line(r)}",
        f"checkpoint  every {p.get('checkpoint_every', '-')} iterations; {health}",
        f"time        created {r.created}, last commit {r.updated}"
        + (f" ({_fmt_duration(elapsed)} apart)" if elapsed is not None else ""),
    ]
    for line in lines:
        typer.echo(line)
    if not r.complete and not holder:
        typer.echo(f"continue    dnmf resume {_quote(run)}")


def _observed_lines(r: Any) -> list[str]:
    """A masked run: which entries it fitted (--missing, --mask, a hold-out)."""
    observed = (r.fingerprint or {}).get("observed")
    if not observed:
        return []
    parts = []
    if observed.get("missing") == "nan":
        parts.append("not NaN (--missing nan)")
    elif observed.get("missing") == "unstored":
        parts.append("stored entries only (--missing unstored)")
    if observed.get("mask") is not None:
        parts.append(f"the mask {(r.source or {}).get('mask_location') or '(in memory)'}")
    held = observed.get("holdout")
    if held:
        n = (r.manifest or {}).get("summary", {}).get("n_heldout") \
            if hasattr(r, "manifest") else None
        parts.append(f"minus a hold-out of {held['fraction']:.3g} (seed {held['seed']})"
                     + (f", {n} entries" if n else ""))
    return [f"observed    {'; '.join(parts)}"]


def _panels_line(r: Any) -> str:
    sizes = [b - a for a, b in r.bounds]
    if "panel_starts" in r.params:
        return (f"{len(sizes)}, cut by stored entries: {min(sizes)} to {max(sizes)} rows "
                f"(W chunks of {r.params['panel_rows']} rows)")
    return f"{len(sizes)} of {sizes[0]} rows" + (f" (the last {sizes[-1]})"
                                                   if sizes[-1] != sizes[0] else "")



def _info_online(run: str, r: Any, as_json: bool) -> None:
    """``dnmf info`` of an online run: steps, passes, the smoothed batch cost, the final
    reconstruction error; every array of the commit was checked against its checksum."""
    holder = _lock_holder(run)
    p = r.params
    stream = r.kind == "online-stream"
    health = ("verified: manifest and every array (W, H, A, B) match their checksums"
              if not stream else "verified: manifest and every array (H, A, B) match "
              "their checksums")
    record = {
        "path": r.path,
        "kind": r.kind,
        "steps": r.n_steps,
        "epochs": r.n_iter,
        "batches_per_epoch": r.n_batches,
        "max_iter": int(p["max_iter"]),
        "complete": r.complete,
        "stop_reason": r.stop_reason,
        "loss": r.loss_history[-1] if r.loss_history else None,
        "loss_kind": "ewa batch cost",
        "reconstruction_err": r.reconstruction_err,
        "params": p,
        "shape": list(r.shape),
        "dtype": str(r.dtype),
        "source": r.source,
        "fingerprint": r.fingerprint,
        "checkpoint": {"verified": True, "status": "ok", "detail": health},
        "created": r.created,
        "updated": r.updated,
        "elapsed_seconds": _elapsed(r),
        "writer": holder,
        "dnmf_version": r.dnmf_version,
    }
    if as_json:
        typer.echo(json.dumps(record, default=_json_default))
        return
    if r.complete:
        status = ("complete: stopped by its stopping rule" if r.stop_reason == "converged"
                  else "complete: reached max_iter")
    else:
        status = "in progress (resumable)"
    if holder:
        status += f"; being written by pid {holder.get('pid')} on {holder.get('host')}"
    k = int(r.H.shape[0])
    if stream:
        progress = f"{r.n_steps} partial_fit calls (a stream: one batch per call)"
    else:
        progress = (f"{r.n_steps} of {r.max_steps} batches: epoch {r.n_iter} of max_iter "
                    f"{p['max_iter']} ({r.n_batches} batches of {min(p['batch_size'], r.shape[0])}"
                    f" rows per epoch)")
    cost = (f"{r.loss_history[-1]:.6g} (smoothed batch cost at step "
            f"{r.history_steps[-1]})" if r.loss_history else "-")
    if r.reconstruction_err is not None:
        cost += f"; reconstruction error {r.reconstruction_err:.6g} over all of V"
    elapsed = record["elapsed_seconds"]
    lines = [
        f"run         {r.path}",
        f"kind        online ({'partial_fit stream' if stream else 'MiniBatchNMF fit'})",
        f"status      {status}",
        f"steps       {progress}",
        f"loss        {cost}",
        f"model       rank {k}, loss {p['beta_loss']}, batch_size {p['batch_size']}, "
        f"forget_factor {p['forget_factor']} per {p.get('forget_per', 'pass')}, "
        f"fresh_restarts {p['fresh_restarts']}, "
        f"init {p['init']}, seed {p['random_state']}",
        f"penalties   alpha_W {p['alpha_W']}, alpha_H {p['alpha_H']}, l1_ratio {p['l1_ratio']}",
    ]
    if not stream:
        lines.append(f"data        {r.shape[0]} × {r.shape[1]} {r.dtype} from "
                     f"{(r.source or {}).get('location') or 'an in-memory array'}")
    every = p.get("checkpoint_every")
    lines += [
        (f"checkpoint  every {every} batches; {health}" if every is not None else
         f"checkpoint  every epoch ({r.n_batches} batches); {health}") if not stream
        else f"checkpoint  after every call; {health}",
        f"time        created {r.created}, last commit {r.updated}"
        + (f" ({_fmt_duration(elapsed)} apart)" if elapsed is not None else ""),
    ]
    for line in lines:
        typer.echo(line)
    if not r.complete and not holder and not stream:
        typer.echo(f"continue    dnmf resume {_quote(run)}")
