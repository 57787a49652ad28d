"""The ``dnmf`` command: convert, fit, resume, info, transform, export, plot, demo.

Each command is a thin layer over the library (:class:`dnmf.NMF`, the run store,
:mod:`dnmf._convert`, :mod:`dnmf._plot`): it parses options, prepares inputs and
schedulers, and turns outcomes into messages for people. Errors follow one rule:
a user's mistake prints one line ``error: ...`` on standard error and exits non-zero
(2 for a bad command line, 1 otherwise, 130 when interrupted), never a traceback
unless ``--debug`` is given. No command destroys what is already written when it
fails: outputs are written under temporary names and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from .errors import (
    ClusterLostError,
    ConvergenceWarning,
    DnmfError,
    InvalidInputError,
    InvalidParameterError,
    StoreError,
)

__all__ = ["app", "main", "run"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: Default bound on the size of W that ``export`` writes without ``--force``.
DEFAULT_EXPORT_LIMIT = "1GiB"

app = typer.Typer(
    name="dnmf",
    help="Non-negative matrix factorization V ≈ W·H of matrices larger than memory, "
    "on Dask and Zarr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ------------------------------------------------------------------ output
def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


#: Dask settings for the local cluster of ``--scheduler local[:N]``: its workers'
#: profiler off, the system monitor and event-loop tick less frequent.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "200ms",
}


def _say(message: str) -> None:
    """A progress or status message for people (standard error)."""
    _stderr().print(message, markup=False)


def _result(message: str) -> None:
    """A result line (standard output)."""
    typer.echo(message)


def _one_line(message: str) -> str:
    """Lines joined into one; a line that ends without punctuation gets a semicolon."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    joined = [p if i == len(parts) - 1 or p[-1] in ".:;,!?" else p + ";"
              for i, p in enumerate(parts)]
    return " ".join(joined)


def _cli_terms(message: str) -> str:
    """The library speaks Python (``overwrite=True``); the command line has options."""
    import re

    for python, option in (
        (r"\boverwrite=True\b", "--overwrite"),
        (r"\bmax_iter=", "--max-iter "),
        (r"\bmax_iter >=", "--max-iter >="),
        (r"\bout=(?=['\"])", "--out "),
    ):
        message = re.sub(python, option, message)
    return message


def _absolute(path: str) -> str:
    """Local paths made absolute: Dask workers do not share this process's directory."""
    return path if "://" in path else os.path.abspath(path)


def _quote(path: str | os.PathLike[str]) -> str:
    return shlex.quote(os.fspath(path))


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _parse_size(text: str, option: str = "--max-size") -> int:
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
             "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
             "tib": 2**40}
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0 or (option == "--panel-size" and value * units[unit] < 1):
        raise InvalidParameterError(
            f"{option} must be a size such as 500MB, 2GiB or 1000000, got {text!r}."
        )
    return int(value * units[unit])


# --------------------------------------------------------------- choices
class SolverName(str, Enum):
    hals = "hals"
    mu = "mu"
    als = "als"


class LossName(str, Enum):
    frobenius = "frobenius"
    kullback_leibler = "kullback-leibler"
    kl = "kl"


class InitName(str, Enum):
    random = "random"
    nndsvd = "nndsvd"
    nndsvda = "nndsvda"
    nndsvdar = "nndsvdar"


class DtypeName(str, Enum):
    float32 = "float32"
    float64 = "float64"


class ExportFormat(str, Enum):
    npy = "npy"
    csv = "csv"


class FactorName(str, Enum):
    H = "H"
    W = "W"


def _alpha_h(value: str) -> float | str:
    if value == "same":
        return "same"
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise typer.BadParameter(f"must be 'same' or a non-negative number, got {value!r}.")
    return alpha


# --------------------------------------------------------------- schedulers
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Where to compute: tcp://HOST:PORT (a running Dask scheduler), local or "
        "local:N (start a local cluster of N worker processes), or threads "
        "(default: local threads in this process).",
        show_default=False,
    ),
]
PanelSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--panel-size",
        help="About this much of INPUT per panel, as stored, e.g. 16MiB [default: 64MiB]. "
        "Each thread holds 3-4 times this at its peak: lower it to use less memory.",
        show_default=False,
    ),
]
SchedulerFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--scheduler-file",
        help="Connect to the Dask scheduler described in this JSON file "
        "(dask scheduler --scheduler-file).",
        show_default=False,
        dir_okay=False,
    ),
]


def _check_scheduler(spec: str | None, scheduler_file: Path | None) -> None:
    """Refuse a malformed --scheduler before any work is done."""
    if spec is not None and scheduler_file is not None:
        raise InvalidParameterError("give --scheduler or --scheduler-file, not both.")
    if scheduler_file is not None and not scheduler_file.exists():
        raise InvalidInputError(f"the scheduler file {str(scheduler_file)!r} does not exist.")
    if scheduler_file is not None:
        _probe_scheduler(_address_in(scheduler_file), f" (from {scheduler_file})")
        return
    if spec is None or spec in ("threads", "local"):
        return
    if "://" in spec:
        _probe_scheduler(spec)
        return
    count = spec.partition(":")[2] if spec.startswith("local:") else None
    if count is None:
        raise InvalidParameterError(
            f"--scheduler must be tcp://HOST:PORT, local, local:N or threads, got {spec!r}."
        )
    if not (count.isdigit() and int(count) >= 1):
        raise InvalidParameterError(
            f"--scheduler local:N needs a positive number of workers, got {spec!r}."
        )


def _address_in(scheduler_file: Path) -> str:
    """The scheduler address a scheduler file (``dask scheduler --scheduler-file``) holds."""
    try:
        address = json.loads(scheduler_file.read_text()).get("address")
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidInputError(
            f"{scheduler_file} is not a Dask scheduler file ({_one_line(str(exc))}): it "
            f"should be the JSON file that 'dask scheduler --scheduler-file' writes."
        ) from None
    if not isinstance(address, str):
        raise InvalidInputError(
            f"{scheduler_file} is not a Dask scheduler file: it has no \"address\"."
        )
    return address


def _probe_scheduler(address: str, source: str = "") -> None:
    """Fail at once, before any work, when nothing listens at the scheduler's address."""
    from ._backend import unreachable

    reason = unreachable(address)
    if reason is not None:
        raise DnmfError(
            f"cannot connect to the Dask scheduler at {address}{source}: {reason}. Is the "
            f"scheduler running (dask scheduler, or cluster/local/start_cluster.py)? "
            f"--scheduler local:2 starts a cluster on this machine instead."
        )


@contextlib.contextmanager
def _scheduler(spec: str | None, scheduler_file: Path | None) -> Iterator[Any]:
    """The ``scheduler`` to give :class:`dnmf.NMF`; clusters it started are closed after.

    The commands check ``spec`` with :func:`_check_scheduler` first, before any work.
    """
    if scheduler_file is not None:
        client = _connect(scheduler_file=str(scheduler_file))
        try:
            yield client
        finally:
            client.close()
        return
    if spec is None or spec == "threads":
        yield "threads"
        return
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        cores = os.cpu_count() or 1
        n_workers = int(count) if count else cores
        import dask
        from distributed import Client, LocalCluster

        # Less frequent housekeeping: the cluster shares this machine's cores with
        # the panel tasks (as in cluster/local/start_cluster.py, which measures it).
        # Settings the user made in Dask's config (differing from its defaults) win.
        defaults = dask.config.merge(*dask.config.defaults)
        quiet = {key: value for key, value in LOCAL_CLUSTER_CONFIG.items()
                 if dask.config.get(key) == dask.config.get(key, config=defaults)}
        with dask.config.set(quiet):
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=max(1, cores // n_workers),
                processes=True, dashboard_address=":0",
            )
        client = Client(cluster)
        from ._backend import describe_dashboard

        _say(f"started a local Dask cluster of {n_workers} worker processes; dashboard: "
             f"{describe_dashboard(client.dashboard_link)}")
        try:
            yield client
        finally:
            _close_local_cluster(client, cluster)
        return
    client = _connect(address=spec)
    try:
        yield client
    finally:
        client.close()


def _close_local_cluster(client: Any, cluster: Any) -> None:
    """Stop the workers first, then the scheduler.

    Closing the scheduler while workers still run races with their heartbeats,
    and a worker that loses that race logs a traceback although nothing went
    wrong.  Workers that are told to close stop their heartbeat first.
    """
    try:
        cluster.scale(0)
        deadline = time.monotonic() + 10.0
        while client.scheduler_info().get("workers") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
        cluster.close()


def _connect(**kwargs: Any) -> Any:
    from distributed import Client

    where = kwargs.get("address") or kwargs.get("scheduler_file")
    try:
        return Client(timeout="10s", **kwargs)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DnmfError(
            f"cannot connect to the Dask scheduler at {where}: {_one_line(str(exc))}"
        ) from None


def _scheduler_args(spec: str | None, scheduler_file: Path | None) -> str:
    if scheduler_file is not None:
        return f" --scheduler-file {_quote(scheduler_file)}"
    if spec is not None and spec != "threads":
        return f" --scheduler {_quote(spec)}"
    return ""


# ------------------------------------------------------------ input data
def _input_store_for(out: str) -> Path:
    """Where ``fit`` puts a converted input: next to the run, named after it."""
    path = Path(out.rstrip("/"))
    stem = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    return path.with_name(f"{stem}.input.zarr")


def _source_identity(src: str, **options: Any) -> dict[str, Any]:
    stat = os.stat(src)
    return {"source": os.path.abspath(src), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, **options}


def _zarr_array_info(path: str) -> tuple[tuple[int, ...], np.dtype, int, bool]:
    """Shape, stored dtype, row chunk and whether it is a sparse (CSR) group."""
    from ._source import as_source

    source = as_source(path)
    sparse = source.kind == "zarr-csr"
    return (source.shape, np.dtype(source.data.dtype),
            int(source.row_chunk or source.shape[0]), sparse)


def _prepare_input(
    src: str, out: str, *, dtype: str | None, chunk_rows: int | None, transpose: bool,
    dataset: str | None, overwrite: bool, dense: bool = False,
) -> tuple[str, Path | None, Path | None]:
    """A Zarr array path for ``src``: itself, or a conversion next to ``out``.

    Returns the path; when this call created a conversion, its location (to remove
    if the fit fails before anything was committed); and when that conversion
    replaced another one (``--overwrite``), where the old one was moved (to put
    back on failure, since the run kept then still reads it; to delete once the new
    fit has committed).
    """
    from ._convert import convert, detect_format, is_sparse_source, is_zarr

    fmt = detect_format(src)
    if fmt != "zarr" and not os.path.exists(src):
        raise InvalidInputError(f"{src} does not exist.")
    if fmt == "zarr":
        path = src if dataset is None else f"{src.rstrip('/')}/{dataset}"
        if "://" not in path and not os.path.exists(path):
            raise InvalidInputError(f"{src} does not exist.")
        _, stored, rows, sparse = _zarr_array_info(path)
        if sparse and not dense and (transpose or dtype is not None
                                     or chunk_rows is not None):
            raise InvalidParameterError(
                f"{src} is a sparse (CSR) Zarr group, fitted as it is: --dtype, --chunk-rows "
                f"and --transpose apply to dense inputs (add --dense to convert it to a "
                f"dense array first)."
            )
        same = (
            not (sparse and dense)
            and not transpose
            and (dtype is None or np.dtype(dtype) == stored)
            and (chunk_rows is None or chunk_rows == rows)
        )
        if same:
            return path, None, None
    if is_zarr(out) and "://" in out:
        raise InvalidParameterError(
            f"--out {out} is a URL, so a converted copy of {src} cannot go next to it: "
            f"convert it first (dnmf convert {_quote(src)} DATA.zarr) and fit DATA.zarr."
        )
    target = _input_store_for(out)
    options = {"dtype": dtype, "chunk_rows": chunk_rows, "transpose": transpose,
               "dataset": dataset}
    if not dense and is_sparse_source(src, dataset=dataset):
        options["sparse"] = True  # written as a CSR group; dense copies keep the old key set
    if "://" in src:
        identity = {"source": src, **options}
    elif os.path.isfile(src):
        identity = _source_identity(src, **options)
    else:  # a Zarr directory: its metadata file says when it was last rewritten
        meta = next((p for p in (Path(src) / "zarr.json", Path(src) / ".zarray")
                     if p.exists()), Path(src))
        identity = {**_source_identity(str(meta), **options), "source": os.path.abspath(src)}
    if target.exists():
        recorded = _recorded_identity(target)
        if recorded == identity:
            _say(f"using {target}, converted earlier from {src}")
            return str(target), None, None
        if not overwrite:
            raise StoreError(
                f"{target} exists but holds another conversion (another file, other "
                f"options, or {src} changed since); pass --overwrite to replace it, or "
                f"remove it."
            )
    # The run being replaced may still read the old conversion: it is kept aside
    # until the new fit has committed, and put back if it does not.
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}") \
        if target.exists() else None
    if aside is not None:
        os.replace(target, aside)
    _say(f"converting {src} to {target} (a Zarr copy that the run reads, kept for resume)")
    try:
        with _row_progress(f"converting {Path(src).name}") as on_rows:
            result = convert(src, target, chunk_rows=chunk_rows, dtype=dtype,
                             transpose=transpose, dataset=dataset, overwrite=True,
                             attributes={"input_of": identity}, on_rows=on_rows, dense=dense)
    except BaseException:
        _put_back(target, aside)
        raise
    kind = f", sparse ({result.nnz} stored entries)" if result.nnz is not None else ""
    _say(f"converted: {result.shape[0]} × {result.shape[1]} {result.dtype}{kind}")
    return str(target), target, aside


def _put_back(path: Path, aside: Path | None) -> None:
    """Remove ``path`` (made by this command) and move ``aside`` back in its place."""
    shutil.rmtree(path, ignore_errors=True)
    if aside is not None:
        os.replace(aside, path)


def _recorded_identity(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        attrs = zarr.open(store=str(path), mode="r").attrs.asdict()
    except Exception:
        return None
    dnmf_attrs = attrs.get("dnmf")
    recorded = dnmf_attrs.get("input_of") if isinstance(dnmf_attrs, dict) else None
    return recorded if isinstance(recorded, dict) else None


@contextlib.contextmanager
def _row_progress(description: str) -> Iterator[Any]:
    """A transient Rich bar over rows read, on a terminal; nothing otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    console = _stderr()
    bar = RichProgress(
        "[bold]{task.description}", BarColumn(), MofNCompleteColumn(), "rows",
        TimeRemainingColumn(), console=console, transient=True,
        disable=not (console.is_interactive or console.is_jupyter),
    )
    task = bar.add_task(description, total=None)

    def on_rows(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield on_rows


# ---------------------------------------------------------------- run helpers
def _open_run(path: str, *, verify: bool = False) -> Any:
    from ._run import open_run

    if "://" not in path:
        if not os.path.exists(path):
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
        from ._store import RunLock, RunStore, as_location

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
    if holder:
        from .errors import RunLockedError

        raise RunLockedError(
            f"{out} is being written by another process (host {holder.get('host')}, pid "
            f"{holder.get('pid')}); stop it before replacing the run."
        )
    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    os.replace(path, aside)
    committed = False
    try:
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


def _fmt_duration(seconds: float) -> str:
    from ._progress import format_duration

    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


# ------------------------------------------------------------------ commands
def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"dnmf {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True,
        callback=_print_version)] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks and debug logs on errors (anywhere on the "
        "command line; or set DNMF_DEBUG=1).")] = False,
) -> None:
    """Non-negative matrix factorization V ≈ W·H of matrices larger than memory.

    Start with "dnmf demo"; a fit is "dnmf fit DATA --rank K --out
    RUN.zarr". Ctrl-C keeps a resumable checkpoint.
    """


@app.command()
def convert(
    src: Annotated[str, typer.Argument(
        metavar="SRC", help="A .npy, .npz, .mtx, .csv, .tsv, .h5/.hdf5 file or a Zarr array.",
        show_default=False)],
    dst: Annotated[str, typer.Argument(
        metavar="DST", help="The Zarr array to write (DST.zarr).", show_default=False)],
    chunk_rows: Annotated[int | None, typer.Option(
        "--chunk-rows", min=1, help="Rows per chunk [default: about 64 MiB per chunk].",
        show_default=False)] = None,
    dtype: Annotated[DtypeName | None, typer.Option(
        "--dtype", help="Stored dtype [default: the source's float type; float64 for "
        "integers].", show_default=False)] = None,
    transpose: Annotated[bool, typer.Option(
        "--transpose", help="Store the transpose: rows of SRC become columns.")] = False,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="The array inside an HDF5 file, a Zarr group or an .npz archive.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace DST if it exists (only once the new array is "
        "complete).")] = False,
    dense: Annotated[bool, typer.Option(
        "--dense", help="Write a sparse SRC as a dense array [default: a sparse SRC is "
        "written as a CSR Zarr group].")] = False,
) -> None:
    """Convert a data file to a Zarr v3 array chunked by rows, streaming.

    .npy is memory-mapped, .csv/.tsv (optionally .gz) are parsed in blocks of rows,
    HDF5, Zarr arrays and CSR Zarr groups are read by slices: none of them is
    loaded whole. Matrix Market
    (.mtx) files and NumPy .npz archives of dense arrays are read into memory whole
    (keep them to moderate sizes). A sparse SRC (SciPy sparse .npz, coordinate .mtx,
    CSR Zarr group) is held compressed and written as a CSR Zarr group (AnnData's
    encoding) that fit reads without densifying; --dense writes a dense array
    instead, densified a block at a time. Negative, NaN and infinite values are refused with
    the position of the first one. DST appears only once it is complete.
    """
    from ._convert import convert as run_convert

    started = time.perf_counter()
    try:
        with _row_progress(f"converting {Path(src).name}") as on_rows:
            result = run_convert(
                src, dst, chunk_rows=chunk_rows, dtype=dtype.value if dtype else None,
                transpose=transpose, dataset=dataset, overwrite=overwrite, on_rows=on_rows,
                dense=dense,
            )
    except KeyboardInterrupt as exc:
        _say(f"interrupted: {dst} was not written.")
        raise typer.Exit(_exit_code(exc)) from None
    if result.nnz is not None:
        n, m = result.shape
        density = result.nnz / max(1, n * m)
        _result(
            f"wrote {result.path}: {n} × {m} {result.dtype}, sparse: a CSR group with "
            f"{result.nnz} stored entries ({density:.3%} of the matrix), in "
            f"{_fmt_duration(time.perf_counter() - started)}"
        )
        return
    size = result.shape[0] * result.shape[1] * np.dtype(result.dtype).itemsize
    note = "" if result.streamed else " (source read into memory whole)"
    _result(
        f"wrote {result.path}: {result.shape[0]} × {result.shape[1]} {result.dtype} "
        f"({_bytes(size)} uncompressed), chunks of {result.chunk_rows} rows, in "
        f"{_fmt_duration(time.perf_counter() - started)}{note}"
    )


@app.command()
def fit(
    input: Annotated[str, typer.Argument(
        metavar="INPUT", help="A Zarr array (path or URL) or any file that 'dnmf convert' reads.",
        show_default=False)],
    rank: Annotated[int, typer.Option(
        "--rank", "-k", min=1, metavar="K", help="The rank K of W·H.", show_default=False)],
    out: Annotated[str, typer.Option(
        "--out", "-o", metavar="RUN", help="The run store to write (RUN.zarr).",
        show_default=False)],
    solver: Annotated[SolverName, typer.Option(help="hals, mu (multiplicative updates) or "
                                               "als (alternating NNLS).")] = SolverName.hals,
    loss: Annotated[LossName, typer.Option(help="frobenius, or kullback-leibler (kl; with "
                                           "--solver mu).")] = LossName.frobenius,
    init: Annotated[InitName | None, typer.Option(
        help="Initialisation [default: nndsvda if K <= min(n, m), else random].",
        show_default=False)] = None,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1,
                                          help="Maximum number of iterations.")] = 200,
    tol: Annotated[float, typer.Option(min=0.0, help="Stop when the loss decreases by less "
                                       "than this (relative) in an iteration.")] = 1e-4,
    seed: Annotated[int | None, typer.Option(
        min=0, help="Random seed [default: a fresh one, recorded in the run].",
        show_default=False)] = None,
    alpha_w: Annotated[float, typer.Option("--alpha-w", min=0.0,
                                           help="Regularisation of W.")] = 0.0,
    alpha_h: Annotated[str, typer.Option("--alpha-h", parser=_alpha_h, metavar="FLOAT|same",
                                         help="Regularisation of H ('same': as W).")] = "same",
    l1_ratio: Annotated[float, typer.Option("--l1-ratio", min=0.0, max=1.0,
                                            help="L1 share of the regularisation.")] = 0.0,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", min=1, help="Commit a checkpoint every N iterations.")] = 10,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
    dtype: Annotated[DtypeName | None, typer.Option(
        help="Convert INPUT to this dtype first [default: keep].", show_default=False)] = None,
    chunk_rows: Annotated[int | None, typer.Option(
        "--chunk-rows", min=1, help="Rows per chunk when INPUT is converted.",
        show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="The array inside an HDF5 file, a Zarr group or an .npz archive.",
        show_default=False)] = None,
    transpose: Annotated[bool, typer.Option(
        "--transpose", help="Factorize the transpose of INPUT.")] = False,
    cache: Annotated[bool, typer.Option(
        "--cache", help="Keep V in memory after its first read (only if it fits).")] = False,
    panel_size: PanelSizeOpt = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a different run at --out (kept if this fit fails).")] = False,
    dense: Annotated[bool, typer.Option(
        "--dense", help="Convert a sparse INPUT to a dense array first [default: sparse "
        "INPUT is fitted sparse, as a CSR Zarr group].")] = False,
) -> None:
    """Factorize INPUT ≈ W·H and store the run (W, H, state) in --out.

    Shows a live progress bar. Ctrl-C commits a checkpoint and prints the command
    that continues the run; running the same fit command again also continues it.
    A non-Zarr INPUT is first converted to OUT's name with .input.zarr, kept next to
    the run so that 'dnmf resume' can read it.
    """
    import dnmf

    started = time.perf_counter()
    _check_scheduler(scheduler, scheduler_file)
    panel_bytes = None if panel_size is None else _parse_size(panel_size, "--panel-size")
    sched = _scheduler_args(scheduler, scheduler_file)
    if "://" not in out and Path(out).resolve() == Path(input).resolve():
        raise InvalidParameterError("--out must not be INPUT itself.")
    loss_name = "kullback-leibler" if loss is LossName.kl else loss.value
    if not overwrite:
        _refuse_foreign(out)
    out_existed = "://" in out or Path(out).exists()
    if "://" not in out:
        _make_parent(out)
    try:
        path, created, aside = _prepare_input(
            input, out, dtype=dtype.value if dtype else None, chunk_rows=chunk_rows,
            transpose=transpose, dataset=dataset, overwrite=overwrite, dense=dense,
        )
    except KeyboardInterrupt as exc:
        _say(f"interrupted while converting {input}: nothing was written.")
        raise typer.Exit(_exit_code(exc)) from None
    replaced: dict[str, bool] = {}
    try:
        with _scheduler(scheduler, scheduler_file) as client, \
                _replacing(out, overwrite, replaced) as ow:
            est = dnmf.NMF(
                rank, solver=solver.value, beta_loss=loss_name,
                init=init.value if init else None, max_iter=max_iter, tol=tol,
                random_state=seed, alpha_W=alpha_w, alpha_H=alpha_h, l1_ratio=l1_ratio,
                verbose=1, scheduler=client, out=_absolute(out), checkpoint_every=checkpoint_every,
                overwrite=ow, cache=cache,
                panel_bytes=panel_bytes,
            )
            shape, stored, _, sparse = _zarr_array_info(path)
            where = "local threads" if client == "threads" else "the Dask cluster"
            kind = f"{stored}, sparse" if sparse else f"{stored}"
            _say(f"fitting {path} ({shape[0]} × {shape[1]} {kind}) with rank {rank}, "
                 f"{solver.value}, on {where}: reading the data and initialising first")
            try:
                with warnings.catch_warnings():
                    # The summary below says whether the fit converged.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    est.fit(_absolute(path))
            except KeyboardInterrupt as exc:
                raise _interrupted(out, sched, exc) from None
            except ClusterLostError as exc:
                raise _lost(out, sched, exc) from None
    except BaseException as exc:
        failed = not isinstance(exc, typer.Exit | KeyboardInterrupt)
        if failed and not _has_commit(out):
            # Leave no debris of a fit that never committed: what this command made.
            if not out_existed:
                shutil.rmtree(out, ignore_errors=True)
            if created is not None and aside is None:
                shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        if aside is not None:
            # The conversion replaced another one. If the new fit committed, the run
            # that read the old one is gone; if not, that run is back (or there was
            # none) and so is its input.
            committed = replaced["committed"] if "committed" in replaced else _has_commit(out)
            if committed:
                shutil.rmtree(aside, ignore_errors=True)
            else:
                _put_back(Path(path), aside)
    _report_fit(out, started, sched)


def _make_parent(out: str) -> None:
    """Create ``out``'s directory if needed and check that it can be written."""
    from ._convert import check_writable

    parent = Path(out).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory {parent}: {exc.strerror or exc}.") \
            from None
    check_writable(parent, out)


def _refuse_foreign(out: str) -> None:
    """``--out`` exists but is neither a run nor empty: never write into it."""
    path = Path(out)
    if "://" in out or not path.exists():
        return
    if path.is_file() and not out.endswith(".zip"):
        raise StoreError(f"--out {out} is a file, not a run store; choose another --out.")


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
    from ._run import resume as resume_run

    started = time.perf_counter()
    _check_scheduler(scheduler, scheduler_file)
    sched = _scheduler_args(scheduler, scheduler_file)
    before = _open_run(run)
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
                warnings.simplefilter("ignore", ConvergenceWarning)
                resume_run(_absolute(run), max_iter=max_iter, scheduler=client, verbose=1)
        except KeyboardInterrupt as exc:
            raise _interrupted(run, sched, exc) from None
        except ClusterLostError as exc:
            raise _lost(run, sched, exc) from None
    _report_fit(run, started, sched)


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


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


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
) -> None:
    """W for new rows with the run's H fixed, written to a Zarr array."""
    from ._convert import check_destination, convert, detect_format

    _check_scheduler(scheduler, scheduler_file)
    panel_bytes = None if panel_size is None else _parse_size(panel_size, "--panel-size")
    r = _open_run(run)
    target = check_destination(out, overwrite=overwrite)
    est = r.to_estimator()
    scratch: Path | None = None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        source = new
        if detect_format(new) != "zarr" or dataset is not None:
            if detect_format(new) == "zarr":
                source = f"{new.rstrip('/')}/{dataset}"
            else:
                scratch = target.with_name(f".{target.name}.input-{os.getpid()}")
                with _row_progress(f"reading {Path(new).name}") as on_rows:
                    convert(new, scratch, dataset=dataset, overwrite=True, on_rows=on_rows)
                source = str(scratch)
        with _scheduler(scheduler, scheduler_file) as client:
            est.set_params(out=None, verbose=0, scheduler=client)
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


def _write_array(W: Any, path: Path, attributes: dict[str, Any]) -> None:
    import zarr

    from ._convert import default_chunk_rows

    n, k = (int(s) for s in W.shape)
    rows = default_chunk_rows(n, k, W.dtype)
    z = zarr.create_array(store=str(path), shape=(n, k), chunks=(rows, k), dtype=W.dtype,
                          fill_value=0, zarr_format=3, attributes=attributes, overwrite=True)
    if hasattr(W, "dask"):
        import dask.array as da

        da.store(W.rechunk((rows, k)), z, lock=False)  # type: ignore[arg-type]
    else:
        z[:] = np.asarray(W)


def _swap_into_place(tmp: Path, target: Path) -> None:
    from ._convert import _replace

    _replace(tmp, target)


@app.command()
def export(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run store (RUN.zarr).",
                                       show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write W and H into.",
                                      show_default=False, file_okay=False)],
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", help="npy (NumPy) or csv.")] = ExportFormat.npy,
    max_size: Annotated[str, typer.Option(
        "--max-size", help="Refuse to export a W larger than this without --force.")]
    = DEFAULT_EXPORT_LIMIT,
    force: Annotated[bool, typer.Option("--force", help="Export W whatever its size.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace W and H files already in --out.")] = False,
) -> None:
    """Write W and H of a run to plain files (W.npy and H.npy, or W.csv and H.csv)."""
    r = _open_run(run)
    limit = _parse_size(max_size)
    n, k = r.shape[0], int(r.params["n_components"])
    size = n * k * r.dtype.itemsize
    if size > limit and not force:
        raise DnmfError(
            f"W is {_bytes(size)} ({n} × {k} {r.dtype}), more than --max-size {max_size}: "
            f"pass --force to export it anyway, or read it lazily with "
            f"dnmf.open_run({r.path!r}).W."
        )
    ext = fmt.value
    targets = {name: out / f"{name}.{ext}" for name in ("W", "H")}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise StoreError(f"{', '.join(existing)} already exist; pass --overwrite to replace.")
    from ._convert import check_writable

    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out}: {exc.strerror or exc}.") from None
    written: list[str] = []
    try:
        check_writable(out, str(out))
        for name, data in (("W", r.W), ("H", r.H)):
            _export_one(data, targets[name], ext)
            written.append(str(targets[name]))
    except KeyboardInterrupt as exc:
        _say("interrupted: " + (f"only {', '.join(written)} written." if written
                                else "nothing written."))
        raise typer.Exit(_exit_code(exc)) from None
    finally:
        if made and not written:
            shutil.rmtree(out, ignore_errors=True)
    _result(f"wrote {targets['W']} ({n} × {k}) and {targets['H']} ({k} × {r.shape[1]})")


def _export_one(data: Any, target: Path, ext: str) -> None:
    """One factor to ``target``, streamed a block of rows at a time, renamed when done."""
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
                for _, block in blocks:
                    values = np.asarray(block.compute() if hasattr(block, "compute") else block)
                    np.savetxt(f, values, delimiter=",", fmt=precision)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
) -> None:
    """Draw the loss curve and/or the basis images of a run (needs matplotlib)."""
    from . import _plot

    if loss is None and basis is None:
        raise InvalidParameterError("give --loss FILE, --basis FILE or both.")
    _plot.require_matplotlib()
    shape = _plot.parse_image_shape(image_shape) if image_shape else None
    r = _open_run(run, verify=False)
    wrote = []
    if basis is not None:
        factor = r.H if of is FactorName.H else np.asarray(r.W)
        images = _plot.basis_images(factor, of.value, shape)
        fig = _plot.basis_figure(images, columns=columns,
                                 title=f"{len(images)} basis images ({of.value})")
        _plot.save_figure(fig, basis)
        wrote.append(str(basis))
    if loss is not None:
        if not r.loss_history:
            raise DnmfError(f"{run} has no iterations yet: no loss to draw.")
        fig = _plot.loss_figure(r.loss_history, title=f"{Path(r.path).name}: "
                                f"{r.params['solver']}, rank {r.params['n_components']}")
        _plot.save_figure(fig, loss)
        wrote.append(str(loss))
    _result("wrote " + " and ".join(wrote))


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
    import dnmf

    from . import _plot
    from ._demo import SWIMMER_SHAPE, swimmer

    started = time.perf_counter()
    if solver is SolverName.als:
        raise InvalidParameterError("the demo runs --solver hals or mu.")
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

    from ._store import RunStore, as_location

    if data.exists():
        try:
            attrs = zarr.open_array(store=str(data), mode="r").attrs.asdict()
        except Exception:
            attrs = {}
        if "swimmer" not in str(attrs.get("dnmf", {})):
            raise StoreError(f"{data} exists and is not the demo's data; choose another --out.")
    if run.exists() and not RunStore(as_location(str(run))).is_run():
        raise StoreError(f"{run} exists and is not a dnmf run; choose another --out.")


# -------------------------------------------------------------------- main
def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    sys.stderr.write(f"warning: {_one_line(str(message))}\n")


def _quiet_logs(debug: bool) -> None:
    import logging

    if debug:
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
        logging.getLogger("dnmf").setLevel(logging.DEBUG)
        return
    # A lost scheduler is reported as dnmf's own error, with how to continue; the
    # client's log of its failed reconnection would only repeat it.
    levels = {"distributed": "error", "distributed.client": "critical",
              "tornado": "critical", "bokeh": "error", "asyncio": "error"}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level.upper())
    # Importing distributed sets its loggers from Dask's config (INFO by default):
    # quiet there too, unless the user's own config says otherwise.
    import dask

    dask.config.set({"distributed.logging": {
        **levels, **(dask.config.get("distributed.logging", None) or {})}})


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """Click's UsageError and ClickException, as the installed Typer uses them.

    Typer 0.12–0.2x uses Click itself; newer versions carry their own copy.
    """
    mro = typer.BadParameter.__mro__
    usage = next(c for c in mro if c.__name__ == "UsageError")
    base = next(c for c in mro if c.__name__ == "ClickException")
    return usage, base


def _usage_message(exc: Any) -> str:
    message = _one_line(exc.format_message())
    ctx = exc.ctx
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {message}{hint}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``): handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _exit_code(exc: BaseException) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def run(argv: list[str]) -> int:
    """Run one command line; return its exit status (what :func:`main` exits with).

    Installs, for the duration of the command, a SIGTERM handler (to commit like
    Ctrl-C) and one-line warnings; both are restored afterwards.
    """
    args = list(argv)
    cut = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:cut] or os.environ.get("DNMF_DEBUG", "") not in ("", "0")
    args = [a for i, a in enumerate(args) if not (a == "--debug" and i < cut)]
    _quiet_logs(debug)
    saved_showwarning = warnings.showwarning
    if not debug:
        warnings.showwarning = _show_warning
    saved_sigterm: Any = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        saved_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(args, debug)
    finally:
        warnings.showwarning = saved_showwarning
        if saved_sigterm is not None:
            signal.signal(signal.SIGTERM, saved_sigterm)
        sys.stdout.flush()


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


def _dispatch(args: list[str], debug: bool) -> int:
    usage_error, click_error = _click_errors()
    try:
        rc = app(args=args, prog_name="dnmf", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain "dnmf": show the help
            typer.echo(exc.format_message())  # type: ignore[attr-defined]
            return 0
        if debug:
            raise
        sys.stderr.write(_usage_message(exc) + "\n")
        return EXIT_USAGE
    except click_error as exc:
        if debug:
            raise
        _fail(_one_line(exc.format_message()))  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", EXIT_ERROR))
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except DnmfError as exc:
        if debug:
            raise
        _fail(_one_line(_cli_terms(str(exc))))
        # A bad option value is a usage error, whoever noticed it.
        return EXIT_USAGE if isinstance(exc, InvalidParameterError) else EXIT_ERROR
    except OSError as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or exc}{where}")
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {_one_line(str(exc))} (this is a bug in "
              f"dnmf: run again with --debug for the traceback and report it)")
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    """The ``dnmf`` entry point: run the command line and exit with its status."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))
