"""``dnmf rank``: choose k by a sweep of fits (cross-validation or consensus)."""

import json
import shutil
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ClusterLostError, InvalidParameterError
from ._app import _exit_code, app
from ._inputs import _make_parent, _prepare_input
from ._masks import MaskOpt, MissingOpt, check_missing_options, prepare_mask
from ._options import ExtrapolateName, SolverName, _parse_loss, _parse_size
from ._output import _absolute, _fmt_duration, _quote, _result, _say
from ._scheduler import (
    PanelSizeOpt,
    SchedulerFileOpt,
    SchedulerOpt,
    _check_scheduler,
    _scheduler,
    _scheduler_args,
)


class MethodName(str, Enum):
    cv = "cv"
    consensus = "consensus"


class RuleName(str, Enum):
    one_se = "1se"
    min = "min"
    stability = "stability"
    cophenetic = "cophenetic"


def parse_ks(text: str) -> list[int]:
    """``2:20`` (both ends included), ``2:20:2`` (a step) or ``2,4,8``."""
    spec = text.strip()
    try:
        if ":" in spec:
            parts = [int(p) for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if step < 1 or stop < start:
                raise ValueError
            return list(range(start, stop + 1, step))
        return [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise InvalidParameterError(
            f"--ks must look like 2:20 (from 2 to 20), 2:20:2 (in steps of 2) or 2,4,8; "
            f"got {text!r}."
        ) from None


def _fit_line(row: dict[str, Any], done: int, total: int) -> None:
    score = (f"test error {row['test_error']:.6g}" if "test_error" in row
             else f"loss {row['loss']:.6g}")
    _say(f"[{done}/{total}] k={row['k']} replicate {row['replicate']}: {score}, "
         f"{row['iterations']} iterations, {row['time']:.1f} s")


def _summary_lines(result: Any) -> list[str]:
    if result.method == "cv":
        head = f"{'k':>4} {'test error':>14} {'s.e.':>11} {'loss':>14} {'fits':>5}"
        lines = [head] + [
            f"{s['k']:>4} {s['test_error']:>14.6g} {s['test_error_se']:>11.3g} "
            f"{s['loss']:>14.6g} {s['replicates']:>5}" + ("  <- k" if s["k"] == result.k
                                                          else "")
            for s in result.summary_rows
        ]
    else:
        head = f"{'k':>4} {'cophenetic':>11} {'stability':>10} {'mean silh.':>11} {'loss':>14}"
        lines = [head] + [
            f"{s['k']:>4} {s['cophenetic']:>11.4f} {s['stability']:>10.4f} "
            f"{s['mean_silhouette']:>11.4f} {s['loss']:>14.6g}"
            + ("  <- k" if s["k"] == result.k else "")
            for s in result.summary_rows
        ]
    return lines


def _check_rank_extrapolate_on(solver: str, loss: Any, method: MethodName,
                               missing: Any, mask: Any) -> None:
    """``--extrapolate on`` where no fit of the sweep can extrapolate: one line, before
    anything is read."""
    from .._extrapolation import supported

    if not supported(solver, loss):
        why = f"--solver {solver} with --loss {loss}"
    elif method is MethodName.cv:
        why = "--method cv (every cv fit is masked by its held-out entries)"
    elif missing is not None or mask is not None:
        why = "--missing or --mask (masked fits)"
    else:
        return
    raise InvalidParameterError(
        f"--extrapolate on is for unmasked --solver hals or als fits with --loss frobenius "
        f"(--method consensus), not {why}. Use --extrapolate auto (extrapolate where "
        f"available) or --extrapolate off.")


@app.command()
def rank(
    input: Annotated[str, typer.Argument(
        metavar="INPUT", help="A Zarr array (path or URL) or any file that 'dnmf convert' reads.",
        show_default=False)],
    out: Annotated[str, typer.Option(
        "--out", "-o", metavar="SWEEP", help="The sweep store (a directory): a run store per "
        "fit and the table of finished fits; the same command continues it.",
        show_default=False)],
    ks: Annotated[str, typer.Option(
        "--ks", metavar="A:B", help="The ranks to try: 2:20, 2:20:2 or 2,4,8.")] = "2:20",
    method: Annotated[MethodName, typer.Option(
        help="cv (speckled holdout cross-validation) or consensus (random restarts).")
    ] = MethodName.cv,
    replicates: Annotated[int | None, typer.Option(
        "--replicates", "-r", min=1, help="Fits per k: holdout sets (cv) or restarts "
        "(consensus, at least 2) [default: 3 for cv, 4 for consensus].",
        show_default=False)] = None,
    rule: Annotated[RuleName | None, typer.Option(
        help="How k is chosen: cv 1se (default) or min; consensus stability (default) or "
        "cophenetic.", show_default=False)] = None,
    holdout: Annotated[float, typer.Option(
        "--holdout", help="cv: the fraction of entries held out.")] = 0.05,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="consensus: the stability (or cophenetic correlation) a k "
        "must reach.")] = 0.8,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="PNG", help="Draw the rank plot to this file (.png, .svg, .pdf).",
        show_default=False)] = None,
    solver: Annotated[SolverName, typer.Option(
        help="auto (hals for frobenius; for kl, mu in cv fits and with --missing/--mask, "
             "else amu; mu for other losses), hals, mu, als or amu.")] = SolverName.auto,
    loss: Annotated[str, typer.Option(
        help="frobenius, kullback-leibler (kl), itakura-saito (is) or a number beta, as "
        "for dnmf fit.")] = "frobenius",
    extrapolate: Annotated[ExtrapolateName, typer.Option(
        help="Extrapolation with restarts, as for dnmf fit (HALS and ALS, Frobenius, "
             "unmasked fits: consensus without --missing/--mask; cv fits are masked and "
             "never extrapolate): auto (where available), on (refused elsewhere) or off "
             "(plain iterations).")] = ExtrapolateName.auto,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1,
                                          help="Maximum iterations of each fit.")] = 200,
    tol: Annotated[float, typer.Option(min=0.0, help="Stopping tolerance of each fit.")] = 1e-4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sweep (every fit's seed and "
                                      "the holdout sets derive from it).")] = 0,
    concurrent: Annotated[int | None, typer.Option(
        "--concurrent", min=1, help="Fits at the same time [default: one per core, or per "
        "worker thread on a cluster].", show_default=False)] = None,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", min=1, help="Each fit commits every N iterations.")] = 10,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
    panel_size: PanelSizeOpt = None,
    dataset: Annotated[str | None, typer.Option(
        help="The array inside an HDF5 file, a Zarr group or an .npz archive.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Discard the sweep at --out and start afresh.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result as one JSON object (k, summary, table).")] = False,
    missing: MissingOpt = None,
    mask: MaskOpt = None,
    panel_cache: Annotated[str, typer.Option(
        "--panel-cache", help="Memory for decoded panels of INPUT shared by the local "
        "fits (a size such as 2GiB; auto: a quarter of the available memory; 0: none). "
        "The results are the same without it.")] = "auto",
) -> None:
    """Choose the rank k of INPUT: fit every k of --ks --replicates times and compare.

    cv holds out a speckled set of entries per replicate and measures the error of
    each k there; consensus compares random restarts (cophenetic correlation and the
    stability of the components). With --missing or --mask every fit uses the observed
    entries only, and cv holds out entries among them. Prints one line per finished
    fit, then the summary per k and the choice. Ctrl-C (or a crash) keeps every
    finished fit and the last checkpoint of the others: run the same command again to
    continue.
    """
    import dnmf

    started = time.perf_counter()
    _check_scheduler(scheduler, scheduler_file)
    grid = parse_ks(ks)
    check_missing_options(missing, mask)
    if not 0 < holdout < 1:
        raise InvalidParameterError(
            f"--holdout must be a fraction between 0 and 1 (of the entries held out), got "
            f"{holdout!r}."
        )
    if method is MethodName.consensus and replicates is not None and replicates < 2:
        raise InvalidParameterError(
            f"--method consensus compares restarts: --replicates must be at least 2, got "
            f"{replicates}."
        )
    from .._rank import check_arguments

    # Every other argument is checked before the input is converted.
    check_arguments(method=method.value, rule=rule.value if rule else None, ks=grid,
                    n_replicates=replicates, fraction=holdout, stability_threshold=threshold,
                    seed=seed, n_concurrent=concurrent, consensus_rows=1000)
    panel_bytes = None if panel_size is None else _parse_size(panel_size, "--panel-size")
    cache_bytes: int | str = ("auto" if panel_cache.strip().lower() == "auto"
                              else _parse_size(panel_cache, "--panel-cache"))
    sched = _scheduler_args(scheduler, scheduler_file)
    loss_name = _parse_loss(loss)
    from .._validation import resolve_solver  # numpy: not at import (dnmf --help)

    solver = SolverName(resolve_solver(
        solver.value, loss_name,
        masked=method is MethodName.cv or missing is not None or mask is not None))
    if extrapolate is ExtrapolateName.on:
        _check_rank_extrapolate_on(solver.value, loss_name, method, missing, mask)
    if "://" not in out and Path(out).resolve() == Path(input).resolve():
        raise InvalidParameterError("--out must not be INPUT itself.")
    if plot is not None and not plot.parent.is_dir():
        raise InvalidParameterError(
            f"--plot {plot}: the directory {plot.parent} does not exist; create it first."
        )
    if "://" not in out:
        _make_parent(out)
    try:
        path, created, aside = _prepare_input(
            input, out, dtype=None, chunk_rows=None, transpose=False, dataset=dataset,
            overwrite=overwrite, missing=missing.value if missing else None,
        )
    except KeyboardInterrupt as exc:
        _say(f"interrupted while converting {input}: nothing was written.")
        raise typer.Exit(_exit_code(exc)) from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    mask_array = mask_created = None
    if mask is not None:
        try:
            mask_array, mask_created, mask_aside = prepare_mask(mask, path, out,
                                                                overwrite=overwrite)
        except BaseException:
            if created is not None and not Path(out).exists():
                shutil.rmtree(created, ignore_errors=True)
            raise
        if mask_aside is not None:
            shutil.rmtree(mask_aside, ignore_errors=True)
    observed = {"missing": missing.value} if missing else {}
    again = f"dnmf rank {_quote(input)} --out {_quote(out)} --ks {ks} --method {method.value}"
    again += (f" --missing {missing.value}" if missing else "") + (
        f" --mask {_quote(mask)}" if mask else "")
    try:
        with _scheduler(scheduler, scheduler_file) as client:
            where = "local threads" if client == "threads" else "the Dask cluster"
            _say(f"rank sweep of {path}: k in {grid[0]}..{grid[-1]} ({len(grid)} ranks) by "
                 f"{method.value}, {solver.value}, on {where}")
            result = dnmf.select_rank(
                _absolute(path), grid, method=method.value, n_replicates=replicates,
                rule=rule.value if rule else None, fraction=holdout,
                stability_threshold=threshold, seed=seed, out=_absolute(out),
                overwrite=overwrite, n_concurrent=concurrent, scheduler=client,
                on_fit=_fit_line, solver=solver.value, beta_loss=loss_name,
                max_iter=max_iter, tol=tol, checkpoint_every=checkpoint_every,
                panel_bytes=panel_bytes, mask=mask_array, panel_cache=cache_bytes,
                **observed,
                # "auto" is NMF's default: left out, so sweeps started before this
                # option continue (sweep.json records the parameters passed).
                **({} if extrapolate is ExtrapolateName.auto
                   else {"extrapolate": extrapolate.param}),
            )
    except KeyboardInterrupt as exc:
        _say(f"interrupted: the finished fits are kept in {out}, the others at their last "
             f"checkpoint. Continue with: {again}{sched}")
        raise typer.Exit(_exit_code(exc)) from None
    except ClusterLostError as exc:
        raise ClusterLostError(
            f"lost the Dask scheduler at {exc.address} ({exc.reason}): the sweep stopped; "
            f"its finished fits are kept in {out}. Continue it with: {again}{sched}",
            address=exc.address, reason=exc.reason,
        ) from None
    except BaseException:
        if not Path(out).exists():
            for made in (created, mask_created):
                if made is not None:
                    shutil.rmtree(made, ignore_errors=True)
        raise
    if plot is not None:
        result.plot(plot)
    if as_json:
        typer.echo(json.dumps({"k": result.k, "method": result.method, "rule": result.rule,
                               "summary": result.summary_rows, "table": result.rows,
                               "sweep": result.path}))
        return
    for line in _summary_lines(result):
        _result(line)
    took = _fmt_duration(time.perf_counter() - started)
    _result(f"k = {result.k} (method {result.method}, rule {result.rule}); {len(result.rows)} "
            f"fits in {out}, {took}" + (f"; rank plot: {plot}" if plot is not None else ""))
