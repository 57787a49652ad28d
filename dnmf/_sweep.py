"""Sweeps: many independent fits (k, replicate), run concurrently, resumable.

A sweep store is a directory (or fsspec URL) holding

    sweep.json           what the sweep is: method, parameters of the fits, V's shape
    table.json           the finished fits, one row each, committed atomically
    fits/k004-r00/       one run store per (k, replicate) (see docs/checkpoints.md)
    lock.json            the single-writer lock (host, pid, heartbeat), as for runs

A fit's row enters the table only after its run store is complete, by rewriting
``table.json`` under a temporary name and renaming it, so after a SIGKILL the table
holds exactly the fits that finished and every other fit resumes from its own run
store's last commit: a continued sweep ends with the same table (but for the ``time``
column, which is the wall time each fit took). On Ctrl-C the fits in flight commit
their last iteration and the sweep stops.

Fits run in threads of this process: on a cluster each thread drives its fit's
passes on the shared Client, so the fits run concurrently on the workers; locally
the threads share the machine's cores (each fit then uses ``cores // concurrent``
scheduler threads). This module schedules fits and keeps the table; it knows
nothing of how a k is chosen (:mod:`dnmf._rank`) or how a fit is computed.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._store import RunStore, as_location, locked, now
from .errors import IncompatibleRunError, StoreError

__all__ = ["FitSpec", "SweepStore", "fit_key", "replicate_seed", "run_fits"]

logger = logging.getLogger("dnmf")

SWEEP = "sweep.json"
TABLE = "table.json"
FITS = "fits"
FORMAT = 1


def replicate_seed(seed: int, k: int, replicate: int) -> int:
    """The random_state of fit (k, replicate): independent of the grid and of order."""
    return int(np.random.SeedSequence([int(seed), int(k), int(replicate)]).generate_state(1)[0])


def fit_key(k: int, replicate: int) -> str:
    return f"k{k:03d}-r{replicate:02d}"


@dataclass(frozen=True)
class FitSpec:
    """One fit of a sweep."""

    k: int
    replicate: int

    @property
    def key(self) -> str:
        return fit_key(self.k, self.replicate)


class SweepStore:
    """The files of a sweep store; see the module docstring for the layout."""

    def __init__(self, out: Any) -> None:
        loc = as_location(out)
        if loc.kind not in ("local", "url"):
            raise StoreError(
                f"a sweep store must be a directory or an fsspec URL, got {out!r} "
                f"({loc.kind}); choose a directory such as 'sweep/'."
            )
        self.location = loc
        self.files = RunStore(loc)

    @property
    def path(self) -> str:
        return str(self.location)

    def run_out(self, key: str) -> str:
        if self.location.kind == "local":
            return os.path.join(self.location.path, FITS, key)
        return f"{self.location.path.rstrip('/')}/{FITS}/{key}"

    def _read_json(self, key: str) -> Any:
        raw = self.files.read_bytes(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise StoreError(
                f"{self.location.join(key)!r} is not valid JSON: the sweep store is "
                f"damaged. Choose another out, or pass overwrite=True to start afresh."
            ) from None

    def header(self) -> dict[str, Any] | None:
        return self._read_json(SWEEP)

    def rows(self) -> list[dict[str, Any]]:
        table = self._read_json(TABLE)
        return [] if table is None else list(table["rows"])

    def exists(self) -> bool:
        return self.files.exists()

    def is_sweep(self) -> bool:
        return self.files.read_bytes(SWEEP) is not None

    @contextmanager
    def writing(self, header: dict[str, Any], *, overwrite: bool) -> Iterator[None]:
        """Hold the sweep's lock; create or check ``sweep.json`` (see :func:`check_header`)."""
        if self.exists() and not self.is_sweep() and not self.files.is_empty_dir():
            if not overwrite:
                raise IncompatibleRunError(
                    f"out={self.path!r} holds data that is not a dnmf sweep; refusing to "
                    f"touch it. Choose another out, or pass overwrite=True to replace it."
                )
        with locked(self.files):
            if overwrite and self.exists():
                self._wipe()
            old = self.header()
            if old is None:
                body = {**header, "format": FORMAT, "created": now()}
                self.files.write_bytes(SWEEP, _dumps(body), atomic=True)
            else:
                check_header(self.path, old, header)
            yield

    def _wipe(self) -> None:
        if self.location.kind != "local":
            fs, root = _fs(self.location.path)
            for name in fs.ls(root, detail=False):
                if not name.rstrip("/").endswith("lock.json"):
                    fs.rm(name, recursive=True)
            return
        import shutil

        for name in os.listdir(self.location.path):
            if name == "lock.json":
                continue
            path = os.path.join(self.location.path, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)

    def commit_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replace the table by ``rows`` (sorted by k, replicate) in one atomic step."""
        ordered = sorted(rows, key=lambda r: (r["k"], r["replicate"]))
        self.files.write_bytes(TABLE, _dumps({"rows": ordered, "updated": now()}),
                               atomic=True)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root


def _dumps(body: Any) -> bytes:
    return json.dumps(body, indent=1, sort_keys=True).encode()


#: Keys of sweep.json that may change when a sweep is continued: a continued sweep
#: may add ks or replicates (each fit's seed depends only on its own k and replicate).
MAY_DIFFER = ("ks", "n_replicates", "created", "format", "dnmf_version")


def check_header(path: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to continue a sweep with other data or other fit parameters."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in MAY_DIFFER:
            continue
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key)!r} (sweep) vs {new.get(key)!r} (now)")
    if lines:
        raise IncompatibleRunError(
            f"the sweep at {path!r} was run with other data or parameters ("
            + "; ".join(lines) + "). Continue it with the same ones, choose another out, "
            "or pass overwrite=True to start afresh."
        )


class _Stop(KeyboardInterrupt):
    """Raised in a fit's callback to stop it (its run commits the last iteration)."""


def run_fits(
    specs: list[FitSpec],
    fit_one: Callable[[FitSpec, Callable[[int, float], Any]], dict[str, Any]],
    *,
    n_concurrent: int,
    on_done: Callable[[FitSpec, dict[str, Any]], None],
) -> None:
    """Run ``fit_one(spec, callback)`` for every spec, ``n_concurrent`` at a time.

    ``fit_one`` must pass ``callback`` to its fit; it raises inside the fit when the
    sweep is stopped. ``on_done(spec, row)`` is called (in a worker thread, one at
    a time) as each fit finishes. On KeyboardInterrupt in this thread the fits in
    flight are stopped at their next iteration, their runs commit, and the
    interrupt propagates. The first failing fit stops the others likewise and its
    error propagates.
    """
    stop = threading.Event()
    done_lock = threading.Lock()

    def callback(iteration: int, loss: float) -> bool:
        if stop.is_set():
            raise _Stop
        return False

    def work(spec: FitSpec) -> None:
        if stop.is_set():
            return
        start = time.perf_counter()
        row = fit_one(spec, callback)
        row.setdefault("time", time.perf_counter() - start)
        with done_lock:
            on_done(spec, row)

    if n_concurrent <= 1:
        for spec in specs:
            work(spec)
        return
    pool = concurrent.futures.ThreadPoolExecutor(n_concurrent, thread_name_prefix="dnmf-sweep")
    futures = [pool.submit(work, spec) for spec in specs]
    try:
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            if error is not None and not isinstance(error, _Stop):
                raise error
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
