"""Where a command computes: the --scheduler / --scheduler-file options, their
checks before any work (one TCP probe of the address), and the Dask client or local
cluster a command runs on, closed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import (
    DnmfError,
    InvalidInputError,
    InvalidParameterError,
)
from ._output import _one_line, _quote, _say

#: Dask settings for the local cluster of ``--scheduler local[:N]``: its workers'
#: profiler off, the system monitor and event-loop tick less frequent.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "200ms",
}


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
    from .._backend import unreachable

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
        from .._backend import describe_dashboard

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


def _quiet_shutdown() -> None:
    """Silence distributed's and tornado's loggers in this process (run on each worker
    and nanny process of a local cluster before it is stopped)."""
    import logging

    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _close_local_cluster(client: Any, cluster: Any) -> None:
    """Stop the workers first, then the scheduler.

    Closing the scheduler while workers still run races with their heartbeats,
    and a worker that loses that race logs a traceback although nothing went
    wrong.  Workers that are told to close stop their heartbeat first.
    """
    # The fit is over (and committed): what the cluster's processes might still log
    # while they stop is shutdown noise (a heartbeat that lost the race), not news.
    try:
        client.run(_quiet_shutdown)
        client.run(_quiet_shutdown, nanny=True)
    except Exception:  # a worker already gone: nothing of it to silence
        pass
    _quiet_shutdown()
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

