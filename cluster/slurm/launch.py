#!/usr/bin/env python
"""Run Dask workers for dnmf as SLURM (or PBS) batch jobs with dask-jobqueue.

Run this on a login node.  It starts a Dask scheduler in this process,
submits ``--jobs`` batch jobs that each run Dask workers connecting back to it,
writes a scheduler file for ``dnmf fit --scheduler-file FILE``, and keeps the
cluster alive until Ctrl-C (which cancels the jobs)::

    python cluster/slurm/launch.py --jobs 4 --scheduler-file ~/dnmf-scheduler.json
    dnmf fit /shared/V.zarr --rank 20 --out /shared/run.zarr \\
        --scheduler-file ~/dnmf-scheduler.json

    # render the batch script without submitting anything
    python cluster/slurm/launch.py --print-job-script
    python cluster/slurm/launch.py --queue-system pbs --print-job-script

Settings come from ``cluster/slurm/jobqueue.yaml`` (``--config`` for another
file); command-line options override single values.  Requires the optional
dependency dask-jobqueue (``pip install dask-jobqueue``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().with_name("jobqueue.yaml")
QUEUE_SYSTEMS = ("slurm", "pbs")
INSTALL_HINT = "dask-jobqueue is not installed: pip install dask-jobqueue"


class LaunchError(RuntimeError):
    """A user-facing problem; the CLI prints the message without a traceback."""


class MissingDependencyError(LaunchError, ImportError):
    """dask-jobqueue is not installed."""


def _cluster_class(queue_system: str) -> type:
    if queue_system not in QUEUE_SYSTEMS:
        raise LaunchError(
            f"unknown queue system {queue_system!r}; choose one of {', '.join(QUEUE_SYSTEMS)}"
        )
    try:
        import dask_jobqueue
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[queue_system]


def load_config(queue_system: str = "slurm", config_path: str | os.PathLike = DEFAULT_CONFIG):
    """The ``jobqueue.<queue_system>`` section of a dask-jobqueue YAML file."""
    import yaml

    path = Path(config_path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"config file {path} not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"cannot read config file {path}: {exc}") from None
    section = (data or {}).get("jobqueue", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get(queue_system), dict):
        raise LaunchError(
            f"{path} has no 'jobqueue: {queue_system}:' section "
            "(expected a dask-jobqueue config file)"
        )
    return section[queue_system]


def build_cluster(
    queue_system: str = "slurm",
    config_path: str | os.PathLike = DEFAULT_CONFIG,
    **overrides: Any,
):
    """Create a ``SLURMCluster``/``PBSCluster`` configured from ``config_path``.

    ``overrides`` are dask-jobqueue constructor keywords (``cores``, ``memory``,
    ``processes``, ``walltime``, ``queue``, ``account``, ``scheduler_options``, ...);
    ``None`` values are ignored.  The file's section is merged into the global
    Dask config under ``jobqueue.<queue_system>`` because dask-jobqueue reads it
    again whenever it creates a job.  Creating the cluster starts a scheduler in
    this process but submits nothing: ``cluster.job_script()`` renders the batch
    script and ``cluster.scale(jobs=N)`` submits jobs.
    """
    import dask

    cls = _cluster_class(queue_system)
    section = load_config(queue_system, config_path)
    dask.config.update(dask.config.config, {"jobqueue": {queue_system: section}}, priority="new")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(config_name=queue_system, **kwargs)
    except ValueError as exc:
        raise LaunchError(f"invalid {queue_system} settings in {config_path}: {exc}") from None


def job_script(queue_system: str = "slurm", config_path=DEFAULT_CONFIG, **overrides) -> str:
    """Render the batch script one worker job would run, then close the cluster."""
    cluster = build_cluster(queue_system, config_path, **overrides)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(
    queue_system: str,
    config_path,
    jobs: int,
    scheduler_file: str | os.PathLike,
    **overrides,
) -> int:
    """Submit ``jobs`` worker jobs, write ``scheduler_file`` and serve until interrupted."""
    if jobs < 1:
        raise LaunchError(f"--jobs must be at least 1, got {jobs}")
    cls = _cluster_class(queue_system)
    submit = cls.job_cls.submit_command
    if shutil.which(submit) is None:
        raise LaunchError(
            f"'{submit}' not found: run this on a login node of your {queue_system.upper()} "
            "cluster, or use --print-job-script to only render the job script"
        )
    from distributed import Client

    sched_path = Path(scheduler_file).expanduser().resolve()
    sched_path.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cluster = build_cluster(queue_system, config_path, **overrides)
    client = None
    try:
        client = Client(cluster)
        client.write_scheduler_file(str(sched_path))
        cluster.scale(jobs=jobs)
        # workers per job (dask-jobqueue keeps the job template as `_dummy_job`)
        per_job = getattr(getattr(cluster, "_dummy_job", None), "worker_processes", 1)
        print(
            f"scheduler:      {cluster.scheduler_address}\n"
            f"dashboard:      {cluster.dashboard_link}\n"
            f"scheduler file: {sched_path}\n"
            f"submitted {jobs} {queue_system} jobs ({per_job} workers each); "
            "workers join as the jobs start\n"
            f"use it:  dnmf fit /shared/V.zarr --rank 20 --out /shared/run.zarr "
            f"--scheduler-file {sched_path}\n"
            "Ctrl-C stops the scheduler and cancels the jobs",
            flush=True,
        )
        seen = -1
        while True:
            n = len(client.nthreads())
            if n != seen:
                print(
                    f"{time.strftime('%H:%M:%S')} {n} of {jobs * per_job} workers connected",
                    flush=True,
                )
                seen = n
            time.sleep(5)
    except KeyboardInterrupt:
        print("shutting down: cancelling jobs", flush=True)
    finally:
        if client is not None:
            client.close()
        cluster.close()
        sched_path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Dask workers for dnmf as SLURM/PBS jobs (dask-jobqueue).",
    )
    p.add_argument("--queue-system", choices=QUEUE_SYSTEMS, default="slurm")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="dask-jobqueue YAML file")
    p.add_argument("--jobs", type=int, default=1, help="batch jobs to submit (default 1)")
    p.add_argument(
        "--scheduler-file",
        default="dnmf-scheduler.json",
        help="where to write the scheduler file (on a filesystem the client can read)",
    )
    p.add_argument("--print-job-script", action="store_true", help="print the job script and exit")
    g = p.add_argument_group("overrides of the config file")
    g.add_argument("--queue", help="partition (SLURM) / queue (PBS)")
    g.add_argument("--account")
    g.add_argument("--cores", type=int, help="cores per job")
    g.add_argument("--memory", help="memory per job, e.g. 64GiB")
    g.add_argument("--processes", type=int, help="Dask worker processes per job")
    g.add_argument("--walltime", help="e.g. 04:00:00")
    g.add_argument("--interface", help="network interface for workers and scheduler, e.g. ib0")
    g.add_argument("--dashboard-address", help="scheduler dashboard, e.g. :8787")
    args = p.parse_args(argv)

    overrides: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("queue", "account", "cores", "memory", "processes", "walltime", "interface")
    }
    try:
        if args.dashboard_address is not None:
            section = load_config(args.queue_system, args.config)
            overrides["scheduler_options"] = {
                **(section.get("scheduler-options") or {}),
                "dashboard_address": args.dashboard_address,
            }
        if args.print_job_script:
            print(job_script(args.queue_system, args.config, **overrides))
            return 0
        return run(args.queue_system, args.config, args.jobs, args.scheduler_file, **overrides)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
