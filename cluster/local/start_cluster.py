#!/usr/bin/env python
"""Start, inspect and stop a real multi-process Dask cluster on this machine.

The cluster is one ``dask scheduler`` process and N ``dask worker`` processes
(each with a nanny), all bound to 127.0.0.1.  Everything about the cluster
lives in one directory:

    DIR/scheduler.json   scheduler file for ``dnmf fit --scheduler-file``
    DIR/pids.json        the processes this script started
    DIR/scheduler.log    scheduler log
    DIR/worker-<i>.log   worker logs
    DIR/scratch/         worker spill space (removed on stop)

Usage::

    python cluster/local/start_cluster.py start --dir DIR --workers 2 --threads-per-worker 1
    python cluster/local/start_cluster.py status --dir DIR
    python cluster/local/start_cluster.py stop --dir DIR

It is also importable (``start(dir, ...)``, ``status(dir)``, ``stop(dir)``), so
tests can run against a real cluster.  POSIX only (Linux, macOS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCHEDULER_FILE = "scheduler.json"
PIDS_FILE = "pids.json"
HOST = "127.0.0.1"

# Every BLAS/OpenMP runtime numpy or scipy might load gets one thread per Dask
# worker thread; otherwise each worker thread spawns ncores BLAS threads.
BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Popen objects of processes started by this interpreter, so that stop() in the
# same process (tests) can reap them instead of leaving zombies behind.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ClusterError(RuntimeError):
    """A user-facing problem; the CLI prints the message without a traceback."""


# --------------------------------------------------------------------------- #
# process helpers
# --------------------------------------------------------------------------- #
def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat starting at field 3 (state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """Kernel start time of a process (to detect PID reuse); None if unknown."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _alive(pid: int, start_time: int | None = None) -> bool:
    """Is the process running (not a zombie, not a different process reusing the PID)?"""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    except OSError:
        pass
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return start_time is None or _start_time(pid) == start_time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live Dask processes in process group ``pgid`` (the nanny and its worker)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except OSError:
            return []
        return [pgid]
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _proc_stat(pid)
        if not fields or fields[0] in ("Z", "X") or int(fields[2]) != pgid:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # the nanny, its spawned worker and multiprocessing's resource tracker
        if pid == pgid or any(k in cmdline for k in (b"distributed", b"dask", b"multiprocessing")):
            members.append(pid)
    return members


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            _CHILDREN[pid] = child


def _terminate(procs: list[dict[str, Any]], timeout: float = 15.0) -> list[int]:
    """SIGTERM each process (workers first), then SIGKILL its group after ``timeout``.

    Returns the PIDs that had to be killed with SIGKILL.
    """
    targets = []
    for p in procs:
        pid = p["pid"]
        if _alive(pid, p.get("start_time")):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            targets.append(pid)
        else:
            _reap(pid)
            if _group_members(pid):
                # leader gone but a child (e.g. a worker under a dead nanny) is left
                targets.append(pid)
    deadline = time.monotonic() + timeout
    pending = list(targets)
    while pending and time.monotonic() < deadline:
        for pid in pending:
            if not _alive(pid):
                _reap(pid)
        pending = [pid for pid in pending if _alive(pid) or _group_members(pid)]
        if pending:
            time.sleep(0.1)
    for pid in pending:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in pending:
        end = time.monotonic() + 5
        while (_alive(pid) or _group_members(pid)) and time.monotonic() < end:
            _reap(pid)
            time.sleep(0.05)
        _reap(pid)
    return pending


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: Ctrl-C here does not hit it,
            close_fds=True,  # and stop() can kill the nanny together with its worker
        )
    _CHILDREN[proc.pid] = proc
    return {"pid": proc.pid, "start_time": _start_time(proc.pid), "log": str(log)}


def _opts(**options: Any) -> list[str]:
    """``_opts(memory_limit=5)`` -> ``["--memory-limit", "5"]``."""
    return [x for k, v in options.items() for x in ("--" + k.replace("_", "-"), str(v))]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _read_pids(d: Path) -> dict[str, Any] | None:
    try:
        return json.loads((d / PIDS_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {d / PIDS_FILE}: {exc}") from None


def _all_procs(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [*info.get("workers", []), info["scheduler"]]


def _live(info: dict[str, Any]) -> list[int]:
    return [p["pid"] for p in _all_procs(info) if _alive(p["pid"], p.get("start_time"))]


def _parse_memory(memory_limit: str | int | None, workers: int) -> int:
    from dask.utils import parse_bytes

    if memory_limit is None or str(memory_limit).strip().lower() == "auto":
        # Separate processes each believe they own the whole machine with
        # "auto", so split the machine (or cgroup) memory between them here.
        from distributed.system import MEMORY_LIMIT

        return int(MEMORY_LIMIT // workers)
    try:
        value = parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit
    except (ValueError, TypeError):
        raise ClusterError(
            f"invalid memory limit {memory_limit!r}: use e.g. 4GiB, 500MB, 0 (no limit) or auto"
        ) from None
    if int(value) < 0:
        raise ClusterError(f"invalid memory limit {memory_limit!r}: must not be negative")
    return int(value)


# Dask's housekeeping, made less frequent: on one machine the scheduler, nannies
# and workers share the cores with the panel tasks, and with the defaults they
# took ~0.17 s of CPU per iteration on 2 cores (benchmarks/bench_cluster_scaling.py;
# ~0.06 s with these): the workers' statistical profiler (10 ms samples; the
# dashboard's Profile page stays empty), the system monitor (psutil every
# 500 ms) and the event-loop health tick (20 ms). A variable already set in the
# environment wins. The nanny's memory monitor keeps its default: it enforces
# the memory limit.
QUIET_DASK_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "200ms",
}


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in BLAS_ENV_VARS:
        env[var] = "1"
    for var, value in QUIET_DASK_ENV.items():
        env.setdefault(var, value)
    # Worker processes must not try to talk to some other scheduler set in the
    # caller's environment.
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def start(
    dir: str | os.PathLike,
    workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = None,
    port: int = 8786,
    dashboard_port: int = 8787,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Start a scheduler and ``workers`` nanny-managed workers on 127.0.0.1.

    Blocks until the scheduler reports all workers (at most ``timeout`` s) and
    returns ``dict(address=..., scheduler_file=..., pids=[...], dashboard_link=...,
    ...)``.  The processes keep running after this function returns; call
    ``stop(dir)`` to end them.  ``port=0`` / ``dashboard_port=0`` pick free ports.
    """
    if os.name != "posix":
        raise ClusterError("start_cluster.py supports Linux and macOS only")
    if workers < 1:
        raise ClusterError(f"--workers must be at least 1, got {workers}")
    if threads_per_worker < 1:
        raise ClusterError(f"--threads-per-worker must be at least 1, got {threads_per_worker}")
    if timeout <= 0:
        raise ClusterError(f"--timeout must be positive, got {timeout}")
    mem = _parse_memory(memory_limit, workers)

    d = Path(dir).expanduser().resolve()
    if d.exists() and not d.is_dir():
        raise ClusterError(f"{d} exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)

    old = _read_pids(d)
    if old is not None:
        live = _live(old)
        if live:
            raise ClusterError(
                f"{d} already holds a running cluster ({old.get('address', '?')}, "
                f"PIDs {live}); stop it first with: {_self_cmd()} stop --dir {d}"
            )
        _cleanup(d)  # stale files of a cluster that died
    if port and not _port_free(port):
        raise ClusterError(
            f"port {port} on {HOST} is already in use (another Dask scheduler?); "
            "pass --port 0 to pick a free port"
        )

    sched_file = d / SCHEDULER_FILE
    sched_file.unlink(missing_ok=True)
    env = _worker_env()
    py = sys.executable
    info: dict[str, Any] = {
        "dir": str(d),
        "scheduler_file": str(sched_file),
        "n_workers": workers,
        "threads_per_worker": threads_per_worker,
        "memory_limit": mem,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workers": [],
    }
    try:
        opts = _opts(
            host=HOST,
            port=port,
            dashboard_address=f"{HOST}:{dashboard_port}",
            scheduler_file=sched_file,
        )
        cmd = [py, "-m", "distributed.cli.dask_scheduler", *opts]
        info["scheduler"] = _spawn(cmd, d / "scheduler.log", env)
        _write_pids(d, info)
        deadline = time.monotonic() + timeout
        _wait_for_file(sched_file, info["scheduler"], deadline, timeout)

        for i in range(workers):
            opts = _opts(
                scheduler_file=sched_file,
                name=f"local-{i}",
                nthreads=threads_per_worker,
                nworkers=1,
                memory_limit=mem,
                host=HOST,
                dashboard_address=f"{HOST}:0",
                local_directory=d / "scratch",
                death_timeout=60,  # workers exit by themselves if the scheduler dies
            )
            cmd = [py, "-m", "distributed.cli.dask_worker", "--nanny", *opts]
            info["workers"].append(_spawn(cmd, d / f"worker-{i}.log", env))
            _write_pids(d, info)

        client_info = _wait_for_workers(info, deadline, timeout)
        info.update(client_info)
        _write_pids(d, info)
    except BaseException:
        _terminate(_all_procs(info) if "scheduler" in info else [])
        _cleanup(d)
        raise
    return _summary(info)


def stop(dir: str | os.PathLike, timeout: float = 15.0) -> list[int]:
    """Stop the cluster recorded in ``dir`` and clean up; returns the PIDs it ended.

    Sends SIGTERM (workers first, then the scheduler) and SIGKILLs each process
    group still alive after ``timeout`` seconds.  Logs are kept.
    """
    d = Path(dir).expanduser().resolve()
    info = _read_pids(d)
    if info is None:
        raise ClusterError(f"no cluster recorded in {d} (no {PIDS_FILE})")
    procs = _all_procs(info)
    ended = [p["pid"] for p in procs if _alive(p["pid"], p.get("start_time"))]
    _terminate(info.get("workers", []), timeout)
    _terminate([info["scheduler"]], timeout)
    _cleanup(d)
    return ended


def status(dir: str | os.PathLike) -> dict[str, Any]:
    """Processes recorded in ``dir`` and, if the scheduler is up, its workers."""
    d = Path(dir).expanduser().resolve()
    info = _read_pids(d)
    if info is None:
        raise ClusterError(f"no cluster recorded in {d} (no {PIDS_FILE})")
    out = _summary(info)
    out["processes"] = [
        {**p, "role": role, "alive": _alive(p["pid"], p.get("start_time"))}
        for role, p in [("scheduler", info["scheduler"])]
        + [(f"worker-{i}", w) for i, w in enumerate(info.get("workers", []))]
    ]
    out["running"] = out["processes"][0]["alive"]
    out["workers"] = []
    if out["running"]:
        from distributed import Client

        try:
            with Client(scheduler_file=info["scheduler_file"], timeout="10s") as client:
                workers = client.scheduler_info(n_workers=-1)["workers"]
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"scheduler PID {info['scheduler']['pid']} is alive but not answering "
                f"({exc}); see {info['scheduler']['log']}"
            ) from None
        out["workers"] = [
            {
                "address": addr,
                "name": w.get("name"),
                "nthreads": w.get("nthreads"),
                "memory_limit": w.get("memory_limit"),
            }
            for addr, w in sorted(workers.items(), key=lambda kv: str(kv[1].get("name")))
        ]
    return out


# --------------------------------------------------------------------------- #
# internals of start/stop
# --------------------------------------------------------------------------- #
def _self_cmd() -> str:
    return f"python {Path(__file__).resolve()}"


def _write_pids(d: Path, info: dict[str, Any]) -> None:
    tmp = d / (PIDS_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(d / PIDS_FILE)


def _cleanup(d: Path) -> None:
    for name in (PIDS_FILE, PIDS_FILE + ".tmp", SCHEDULER_FILE):
        (d / name).unlink(missing_ok=True)
    shutil.rmtree(d / "scratch", ignore_errors=True)


def _wait_for_file(path: Path, sched: dict[str, Any], deadline: float, timeout: float) -> None:
    while not path.exists():
        if not _alive(sched["pid"]):
            raise ClusterError(f"the scheduler exited during start-up; read {sched['log']}")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"start timed out after {timeout:g} s: the scheduler wrote no {path.name}; "
                f"read {sched['log']}"
            )
        time.sleep(0.1)


def _wait_for_workers(info: dict[str, Any], deadline: float, timeout: float) -> dict[str, Any]:
    from distributed import Client

    want = info["n_workers"]
    seen = 0
    client = None
    try:
        while True:
            if not _alive(info["scheduler"]["pid"]):
                raise ClusterError(
                    f"the scheduler exited during start-up; read {info['scheduler']['log']}"
                )
            for i, w in enumerate(info["workers"]):
                if not _alive(w["pid"]):
                    raise ClusterError(f"worker {i} exited during start-up; read {w['log']}")
            if client is None:
                try:
                    client = Client(
                        scheduler_file=info["scheduler_file"],
                        timeout=f"{max(1.0, deadline - time.monotonic()):.0f}s",
                    )
                except (OSError, TimeoutError, ValueError):  # ValueError: half-written file
                    client = None
            if client is not None:
                seen = len(client.nthreads())
                if seen >= want:
                    return {
                        "address": client.scheduler.address,
                        "dashboard_link": _dashboard_link(client),
                    }
            if time.monotonic() > deadline:
                missing = (
                    [w["log"] for w in info["workers"]]
                    if client is not None
                    else [info["scheduler"]["log"]]
                )
                raise ClusterError(
                    f"start timed out after {timeout:g} s with {seen} of {want} workers "
                    f"connected; read {', '.join(missing)}"
                )
            time.sleep(0.2)
    finally:
        if client is not None:
            client.close()


def _dashboard_link(client: Any) -> str | None:
    services = client.scheduler_info(n_workers=0).get("services", {})
    if "dashboard" not in services:
        return None
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return None  # the HTTP server runs, but /status needs bokeh
    return client.dashboard_link


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    sched = info.get("scheduler", {})
    workers = info.get("workers", [])
    return {
        "address": info.get("address"),
        "scheduler_file": info.get("scheduler_file"),
        "dashboard_link": info.get("dashboard_link"),
        "dir": info.get("dir"),
        "pids": [p["pid"] for p in [sched, *workers] if p],
        "scheduler_pid": sched.get("pid"),
        "worker_pids": [w["pid"] for w in workers],
        "n_workers": info.get("n_workers"),
        "threads_per_worker": info.get("threads_per_worker"),
        "memory_limit": info.get("memory_limit"),
        "logs": [p["log"] for p in [sched, *workers] if p],
    }


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "no limit"
    from dask.utils import format_bytes

    return format_bytes(n)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _cmd_start(args: argparse.Namespace) -> int:
    info = start(
        args.dir,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        port=args.port,
        dashboard_port=args.dashboard_port,
        timeout=args.timeout,
    )
    d = info["dir"]
    dash = info["dashboard_link"] or "not available (pip install bokeh to get the dashboard)"
    print(
        f"Dask cluster up: {_plural(info['n_workers'], 'worker')} x "
        f"{_plural(info['threads_per_worker'], 'thread')}, "
        f"{_fmt_bytes(info['memory_limit'])} memory limit per worker\n"
        f"  scheduler:      {info['address']}\n"
        f"  dashboard:      {dash}\n"
        f"  scheduler file: {info['scheduler_file']}\n"
        f"  PIDs:           {' '.join(map(str, info['pids']))} (in {d}/{PIDS_FILE})\n"
        f"  logs:           {d}/*.log\n"
        f"use it:  dnmf fit V.zarr --rank 20 --out run.zarr "
        f"--scheduler-file {info['scheduler_file']}\n"
        f"stop it: {_self_cmd()} stop --dir {d}"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    ended = stop(args.dir, timeout=args.timeout)
    if ended:
        print(f"stopped PIDs {' '.join(map(str, ended))}; logs kept in {Path(args.dir)}")
    else:
        print(f"no process was still running; cleaned up {Path(args.dir)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = status(args.dir)
    if not st["running"]:
        dead = [p for p in st["processes"] if not p["alive"]]
        print(
            f"not running: the scheduler (PID {st['scheduler_pid']}) is gone; "
            f"read {dead[0]['log']}; clean up with: {_self_cmd()} stop --dir {args.dir}"
        )
        return 1
    print(f"scheduler {st['address']} (PID {st['scheduler_pid']})")
    if st["dashboard_link"]:
        print(f"dashboard {st['dashboard_link']}")
    print(f"{len(st['workers'])} of {st['n_workers']} workers connected:")
    for w in st["workers"]:
        print(
            f"  {w['name']!s:<10} {w['address']:<24} {_plural(w['nthreads'], 'thread')}  "
            f"{_fmt_bytes(w['memory_limit'])}"
        )
    for p in st["processes"]:
        if not p["alive"]:
            print(f"  {p['role']} (PID {p['pid']}) has exited; read {p['log']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="start_cluster.py",
        description="Run a local multi-process Dask cluster (127.0.0.1) for dnmf.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("start", help="start a scheduler and workers in the background")
    p.add_argument("--dir", required=True, help="directory for the scheduler file, PIDs, logs")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="threads each (default 1)")
    p.add_argument(
        "--memory-limit",
        default=None,
        help="per worker, e.g. 4GiB; default: machine memory / workers; 0 = no limit",
    )
    p.add_argument("--port", type=int, default=8786, help="scheduler port (0 = any free port)")
    p.add_argument(
        "--dashboard-port", type=int, default=8787, help="dashboard port (0 = any free port)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for workers")
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser("stop", help="stop the cluster recorded in --dir")
    p.add_argument("--dir", required=True)
    p.add_argument(
        "--timeout", type=float, default=15.0, help="seconds before SIGTERM becomes SIGKILL"
    )
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("status", help="show the cluster recorded in --dir")
    p.add_argument("--dir", required=True)
    p.set_defaults(func=_cmd_status)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
