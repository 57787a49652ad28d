"""Run stores seen from the command line: opening one with a clear error, the
replacement of a run under --overwrite (kept until the new one commits), and the
messages after a fit, an interruption or a lost scheduler.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from ..errors import (
    ClusterLostError,
    DnmfError,
    StoreError,
)
from ._app import Terminated, _exit_code
from ._output import _absolute, _fmt_duration, _quote, _result, _say


def _recover(path: str) -> None:
    """Put back (or finish) what a killed ``fit --overwrite`` left beside the run, and
    say so; remove the temporaries of zip packs that died."""
    if "://" in path:
        return
    from .._run import recover_replaced
    from ._inputs import _input_store_for

    for line in recover_replaced(_absolute(path), _absolute(str(_input_store_for(path)))):
        _say(line)


@contextlib.contextmanager
def _holding(out: str) -> Iterator[None]:
    """The run's lock for a whole command (its input's conversion, then the fit).

    A second command on the same run is refused here with one line, before it
    converts anything. A run directory or URL is locked where the fit locks it; a
    ``.zip`` in the work directory beside it (``RUN.zip.partial``, where the fit runs
    before packing), which is removed again if nothing else is left in it.
    """
    from .._store import ZIP_WORKDIR_SUFFIX, Location, RunStore, as_location, locked

    if "://" in out:
        with locked(RunStore(as_location(out))):
            yield
        return
    if not out.endswith(".zip"):
        with locked(RunStore(as_location(_absolute(out)))):
            yield
        return
    work = _absolute(out) + ZIP_WORKDIR_SUFFIX
    made = not os.path.exists(work)
    os.makedirs(work, exist_ok=True)
    try:
        with locked(RunStore(Location("local", work))):
            yield
    finally:
        if made or not os.listdir(work):
            with contextlib.suppress(OSError):
                os.rmdir(work)  # only if empty: a packed run, or nothing committed


def _open_run(path: str, *, verify: bool = False) -> Any:
    from .._runs import open_run

    if "://" not in path:
        _recover(path)
        partial = path.endswith(".zip") and os.path.isdir(path + ".partial")
        if not os.path.exists(path) and not partial:
            raise StoreError(f"{path} does not exist.")
        if os.path.isfile(path) and not path.endswith(".zip"):
            raise StoreError(f"{path} is a file, not a dnmf run.")
    return open_run(path, verify=verify)


def _relative_change(history: list[float], init_loss: float | None) -> float | None:
    if not history:
        return None
    previous = history[-2] if len(history) >= 2 else init_loss
    if previous is None or previous == 0:
        return None
    return (previous - history[-1]) / previous


def _elapsed(run: Any) -> float | None:
    try:
        span = datetime.fromisoformat(run.updated) - datetime.fromisoformat(run.created)
        return span.total_seconds()
    except (TypeError, ValueError):
        return None


def _status(run: Any) -> str:
    if run.complete:
        return {"converged": "complete: converged", "max_iter": "complete: reached max_iter",
                "callback": "complete: stopped by callback"}.get(run.stop_reason or "",
                                                                  "complete")
    return "in progress (resumable)"


def _lock_holder(path: str) -> dict[str, Any] | None:
    """The live process writing the run at ``path``, if any."""
    try:
        from .._store import RunLock, RunStore, as_location

        lock = RunLock(RunStore(as_location(path)))
        info = lock.holder()
        return info if info and lock._alive(info) else None
    except Exception:
        return None


@contextlib.contextmanager
def _replacing(out: str, overwrite: bool,
               outcome: dict[str, bool] | None = None) -> Iterator[bool]:
    """With ``--overwrite`` on a local path: move the old run aside, restore it on failure.

    Yields whether the library should still be asked to overwrite (URLs, which
    cannot be renamed). When it moved a run aside, ``outcome["committed"]`` says at
    the end whether the new run was kept (true) or the old one came back.
    """
    path = Path(out)
    if not overwrite or "://" in out or not path.exists() or out.endswith(".zip"):
        yield overwrite
        return
    holder = _lock_holder(out)
    if holder and holder.get("pid") != os.getpid():
        from ..errors import RunLockedError

        raise RunLockedError(
            f"{out} is being written by another process (host {holder.get('host')}, pid "
            f"{holder.get('pid')}); stop it before replacing the run."
        )
    from .._store import held_lock

    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    os.replace(path, aside)
    committed = False
    try:
        lock = held_lock(_absolute(out))
        if lock is not None:
            lock.reclaim()  # the lock moved aside with the old run: take it here again
        yield False
        committed = True
    except (KeyboardInterrupt, typer.Exit):
        # Interrupted: a new run with a checkpoint is kept (the user was told how to
        # resume it); before its first commit the old run comes back.
        committed = _has_commit(out)
        raise
    finally:
        if outcome is not None:
            outcome["committed"] = committed
        if committed:
            shutil.rmtree(aside, ignore_errors=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
            os.replace(aside, path)


def _has_commit(path: str) -> bool:
    try:
        _open_run(path)
    except DnmfError:
        return False
    return True


def _interrupted(out: str, sched: str, exc: BaseException) -> typer.Exit:
    """After Ctrl-C (or SIGTERM) during a fit: say how to continue; exit 130 (143)."""
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    try:
        run = _open_run(out)
    except DnmfError:
        _say(f"{what} before the first checkpoint: nothing to resume; run the same "
             f"command again to start over.")
        return typer.Exit(_exit_code(exc))
    _say(f"{what}: iteration {run.iteration} is committed to {out}. Continue with:")
    _say(f"  dnmf resume {_quote(out)}{sched}")
    return typer.Exit(_exit_code(exc))


def _lost(out: str, sched: str, exc: ClusterLostError) -> ClusterLostError:
    """The scheduler went away mid-fit: the error, with how to continue the run."""
    if exc.reason == "no workers":
        from .._backend import NO_WORKERS_SECONDS

        what = (f"the Dask cluster at {exc.address} has had no workers for "
                f"{NO_WORKERS_SECONDS:.0f} s")
    else:
        what = f"lost the Dask scheduler at {exc.address} ({exc.reason})"
    try:
        run = _open_run(out)
    except DnmfError:
        return ClusterLostError(f"{what}: the fit stopped before its first checkpoint; "
                                f"run the same command again once a scheduler is up.",
                                address=exc.address, reason=exc.reason)
    return ClusterLostError(
        f"{what}: the fit stopped; iteration {run.iteration} is committed to {out}. "
        f"Continue it, once a scheduler is up (or on this machine without --scheduler), "
        f"with: dnmf resume {_quote(out)}{sched}",
        address=exc.address, reason=exc.reason,
    )


def _report_fit(out: str, started: float, sched: str) -> None:
    run = _open_run(out)
    change = _relative_change(run.loss_history, run.init_loss)
    loss = f"loss {run.loss_history[-1]:.6g}" if run.loss_history else "no iterations"
    change_text = f", rel. change {change:.2e}" if change is not None else ""
    took = _fmt_duration(time.perf_counter() - started)
    if run.stop_reason == "converged":
        head = f"converged after {run.iteration} iterations"
    elif run.stop_reason == "max_iter":
        head = (f"stopped at max_iter={run.params['max_iter']} before converging "
                f"(tol={run.params['tol']:g})")
    else:
        head = f"stopped after {run.iteration} iterations"
    _result(f"{head}: {loss}{change_text}, in {took}. Run saved to {out} "
            f"(seed {run.params['random_state']})")
    if run.stop_reason == "max_iter":
        more = 2 * int(run.params["max_iter"])
        _result(f"to continue: dnmf resume {_quote(out)} --max-iter {more}{sched}")
    _result(f"next: dnmf info {_quote(out)}  |  dnmf export {_quote(out)} --format npy "
            f"--out DIR  |  dnmf plot {_quote(out)} --loss loss.png")

