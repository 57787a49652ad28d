"""``dnmf resume``: continue an interrupted run, or extend a finished one."""

import os
import time
import warnings
from typing import Annotated, Any

import typer

from .. import errors  # errors.ConvergenceWarning: made (with scikit-learn) when used
from ..errors import (
    ClusterLostError,
    InvalidInputError,
)
from ._app import app
from ._output import _absolute, _result, _say
from ._runs import _interrupted, _lost, _open_run, _report_fit
from ._scheduler import (
    SchedulerFileOpt,
    SchedulerOpt,
    _check_scheduler,
    _scheduler,
    _scheduler_args,
)


@app.command()
def resume(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    max_iter: Annotated[int | None, typer.Option(
        "--max-iter", min=1, help="A new iteration limit, to extend a finished run "
        "[default: the run's own].", show_default=False)] = None,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
) -> None:
    """Continue an interrupted run, or extend a finished one with a larger --max-iter."""
    from .._runs import resume as resume_run

    started = time.perf_counter()
    _check_scheduler(scheduler, scheduler_file)
    sched = _scheduler_args(scheduler, scheduler_file)
    before = _open_run(run)
    if hasattr(before, "n_steps"):
        _resume_online(run, before, max_iter, scheduler, scheduler_file, started)
        return
    unpacked = run.endswith(".zip") and os.path.isdir(run + ".partial")
    if unpacked and before.complete and (max_iter is None or max_iter <= before.iteration):
        from .._run import repack

        repack(_absolute(run))  # a pack that failed (a full disk): only the zip is missing
        _result(f"packed {run} from {run}.partial (the run was complete; nothing refitted).")
        return
    if before.complete and (max_iter is None or max_iter <= before.iteration
                            or before.stop_reason != "max_iter"):
        why = ("it converged" if before.stop_reason == "converged"
               else f"it is at iteration {before.iteration}")
        hint = "" if before.stop_reason == "converged" else \
            f"; pass --max-iter N with N > {before.iteration} to extend it"
        _result(f"{run} is already complete ({why}){hint}.")
        return
    source = (before.source or {}).get("location")
    if not source:
        raise InvalidInputError(
            f"{run} was fitted on an in-memory array, so its data cannot be reopened: "
            f"continue it from Python with dnmf.resume(path, X=...)."
        )
    _say(f"resuming {run} at iteration {before.iteration} (data: {source})")
    with _scheduler(scheduler, scheduler_file) as client:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", errors.ConvergenceWarning)
                resume_run(_absolute(run), max_iter=max_iter, scheduler=client, verbose=1)
        except KeyboardInterrupt as exc:
            raise _interrupted(run, sched, exc) from None
        except ClusterLostError as exc:
            raise _lost(run, sched, exc) from None
    _report_fit(run, started, sched)



def _resume_online(run: str, before: Any, max_iter: int | None, scheduler: str | None,
                   scheduler_file: str | None, started: float) -> None:
    """``dnmf resume`` of an online run: the same steps from the last commit."""
    from .._runs import resume as resume_run
    from ._app import _exit_code
    from ._output import _quote

    r = before
    if r.kind == "online-stream":
        raise InvalidInputError(
            f"{run} is a stream of partial_fit calls: it continues with the next call "
            f"from Python, dnmf.MiniBatchNMF(..., out={run!r}).partial_fit(X).")
    params = r.params
    if r.complete and (max_iter is None or max_iter <= int(params["max_iter"])
                       or r.stop_reason != "max_iter"):
        why = ("its stopping rule ended it" if r.stop_reason == "converged"
               else f"it did max_iter={params['max_iter']} epochs")
        hint = "" if r.stop_reason == "converged" else (
            f"; pass --max-iter N with N > {params['max_iter']} to extend it")
        _result(f"{run} is already complete ({why}){hint}.")
        return
    source = (r.source or {}).get("location")
    if not source:
        raise InvalidInputError(
            f"{run} was fitted on an in-memory array, so its data cannot be reopened: "
            f"continue it from Python with dnmf.resume(path, X=...).")
    _say(f"resuming the online run {run} at step {r.n_steps} (data: {source})")
    with _scheduler(scheduler, scheduler_file) as client:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", errors.ConvergenceWarning)
                after = resume_run(_absolute(run), max_iter=max_iter, scheduler=client)
        except KeyboardInterrupt as exc:
            _say(f"interrupted: the online state is committed in {run}; continue with: "
                 f"dnmf resume {_quote(run)}")
            raise typer.Exit(_exit_code(exc)) from None
    took = time.perf_counter() - started
    stopped = ("stopped by its stopping rule" if after.stop_reason == "converged"
               else f"stopped at max_iter {after.params['max_iter']}")
    _result(f"{stopped} after {after.n_steps} batches ({after.n_iter} passes): "
            f"reconstruction error {after.reconstruction_err:.6g}, in {took:.1f} s. Online "
            f"run saved to {run}")
