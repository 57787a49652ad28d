"""Running panel tasks: Dask's local threads scheduler or a distributed cluster.

The driver asks for a *pass*: one task per panel, each returning ``(output, stats)``,
and the stats summed in a fixed binary tree over the panels in row order, so the sum
does not depend on which task finished first. Outputs (new W panels) either come back
(local) or stay on the workers as futures (distributed) for the next pass. Each pass
builds a fresh graph from concrete inputs, so graphs never grow across iterations.
This module knows nothing of NMF; it schedules functions.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import dask
import dask.threaded
import numpy as np
from dask.delayed import Delayed, delayed

__all__ = ["Backend", "check_worker_memory", "get_backend", "tree_reduce"]


def _pairwise_tree(items: Sequence[Any], join: Callable[[Any, Any], Any]) -> Any:
    """Join ``items`` pairwise, in order, level by level: a fixed balanced tree."""
    level = list(items)
    while len(level) > 1:
        level = [
            join(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    return level[0]


def tree_reduce(items: Sequence[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Combine ``items`` pairwise in a fixed balanced tree (as Delayed objects)."""
    return _pairwise_tree(items, lambda a, b: delayed(combine, pure=False)(a, b))


_CONTROLLER: Any = None


def _blas_limit(threads: int) -> AbstractContextManager[Any]:
    """Limit BLAS so that threads × BLAS threads does not exceed the cores."""
    global _CONTROLLER
    cores = os.cpu_count() or 1
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return nullcontext()
    if _CONTROLLER is None:
        # Scanning the loaded libraries is slow; do it once per process.
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=max(1, cores // max(threads, 1)), user_api="blas")


class _Graph:
    """A raw task graph for the local scheduler: cheaper to build than Delayed."""

    def __init__(self) -> None:
        self.dsk: dict[Any, Any] = {}
        self.prefix = uuid.uuid4().hex[:12]
        self.counter = itertools.count()

    def arg(self, value: Any) -> Any:
        if isinstance(value, Delayed):
            self.dsk.update(value.__dask_graph__())
            return value.key
        key = f"dnmf-literal-{self.prefix}-{next(self.counter)}"
        self.dsk[key] = value
        return key

    def task(self, func: Callable[..., Any], *args: Any) -> str:
        key = f"dnmf-task-{self.prefix}-{next(self.counter)}"
        self.dsk[key] = (func, *args)
        return key


def _combine_pair_stats(combine: Callable[[Any, Any], Any], a: tuple[Any, Any],
                        b: tuple[Any, Any]) -> Any:
    return combine(a[1], b[1])


def _getitem(value: Any, index: int) -> Any:
    return value[index]


class Backend:
    """Dask's threads scheduler in this process (``client=None``) or a Client."""

    def __init__(self, client: Any = None, n_threads: int | None = None) -> None:
        self.client = client
        if client is not None:
            info = client.scheduler_info()
            workers = info.get("workers", {})
            self.n_threads = max(1, sum(w.get("nthreads", 1) for w in workers.values()))
        else:
            configured = dask.config.get("num_workers", None)
            self.n_threads = int(n_threads or configured or os.cpu_count() or 1)

    @property
    def distributed(self) -> bool:
        return self.client is not None

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client else None

    def describe(self) -> str:
        if self.client is None:
            return f"local threads scheduler ({self.n_threads} threads)"
        return f"distributed scheduler {self.client.scheduler.address} ({self.n_threads} threads)"

    def check_memory(self, panel_bytes: int, what: str = "panel") -> None:
        """Refuse, before any work, workers too small for the panels.

        A panel task holds about three panel-sized arrays (V_i as read, its
        converted copy, the product with H), and each worker runs ``nthreads``
        of them at once; a worker whose memory limit is below that would spill,
        pause or be killed by its nanny mid-fit. No-op locally and for workers
        without a limit.
        """
        if self.client is None:
            return
        check_worker_memory(self.client.scheduler_info().get("workers", {}), panel_bytes, what)

    def share(self, value: Any) -> Any:
        """One graph key for a value every task of a pass reads (H, the context).

        The value travels inside the graph, not by ``scatter``: the scheduler then
        holds it as a task it can rerun, so when a worker dies the outputs it held
        (W panels as futures) are recomputed by lineage. Scattered data has no
        lineage, and losing it cancels every later pass ("lost dependencies").
        """
        return delayed(value, pure=False)

    def reroot(self, handles: list[Any]) -> list[Any]:
        """Cut the lineage of panel outputs: concrete values, as graph literals.

        Locally the handles already are values. On a cluster the values are fetched
        once and re-enter the next pass as literals, which the scheduler can rerun
        without remembering the passes that made them.
        """
        if self.client is None:
            return handles
        return [delayed(value, pure=False) for value in self.client.gather(handles)]

    def placement(self, n_panels: int) -> list[str | None]:
        """The worker each panel's tasks prefer: contiguous blocks of panels per worker.

        The fixed reduction tree adds neighbouring panels first; with panel i on
        worker ``i · workers / panels`` (by thread count) all but the last
        ``log2(workers)`` levels of the tree add statistics that are already on
        the same worker, and a pass's W panel is where the next pass wants it. The
        preference is loose (``allow_other_workers``): a lost or busy worker's
        panels run elsewhere, with the same result. ``None`` locally.
        """
        if self.client is None:
            return [None] * n_panels
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            return [None] * n_panels
        names = sorted(workers)
        threads = np.cumsum([max(1, int(workers[w].get("nthreads", 1))) for w in names])
        slots = (np.arange(n_panels) * threads[-1]) // max(n_panels, 1)
        return [names[int(np.searchsorted(threads, slot, side="right"))] for slot in slots]

    def _placed(self, worker: str | None) -> AbstractContextManager[Any]:
        if worker is None:
            return nullcontext()
        return dask.annotate(workers=[worker], allow_other_workers=True)

    def scatter_panels(self, panels: list[Any]) -> list[Any]:
        """Place in-memory panels on the workers once (distributed), or keep them."""
        if self.client is None:
            return panels
        out = []
        for panel, worker in zip(panels, self.placement(len(panels))):
            out.append(self.client.scatter(panel, hash=False, workers=[worker]))
        return out

    def gather(self, handles: list[Any]) -> list[Any]:
        """Bring panel outputs (futures or arrays) to this process, in order."""
        if self.client is None:
            return handles
        # Re-rooted panels are Delayed literals; the rest are futures.
        futures = [self.client.compute(h) if isinstance(h, Delayed) else h for h in handles]
        return list(self.client.gather(futures))

    def run_pass(
        self,
        task: Callable[..., tuple[Any, Any]],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...],
        combine: Callable[[Any, Any], Any],
        *,
        keep_outputs: bool,
    ) -> tuple[list[Any], Any]:
        """Run ``task(*per_panel[i], *shared)`` for every panel and reduce the stats.

        Returns the outputs (arrays locally, futures on a cluster, or ``[]`` when
        ``keep_outputs`` is false) and the reduced stats, as concrete values.
        """
        if self.client is None and len(per_panel) == 1 and not any(
            isinstance(a, Delayed) for a in per_panel[0]
        ):
            # One panel: nothing to schedule, so skip the scheduler's fixed cost.
            with _blas_limit(1):
                out, stats = task(*per_panel[0], *shared)
            return ([out] if keep_outputs else []), stats
        if self.client is None:
            graph = _Graph()
            shared_args = tuple(graph.arg(value) for value in shared)
            parts = [
                graph.task(task, *(graph.arg(a) for a in args), *shared_args)
                for args in per_panel
            ]
            out_keys = [graph.task(_getitem, p, 0) for p in parts] if keep_outputs else []
            total_key = _pairwise_tree(
                [graph.task(_getitem, p, 1) for p in parts],
                lambda a, b: graph.task(combine, a, b),
            )
            with _blas_limit(self.n_threads):
                *out, result = dask.threaded.get(
                    graph.dsk, [*out_keys, total_key], num_workers=self.n_threads
                )
            return list(out), result
        shared_keys = tuple(self.share(value) for value in shared)
        parts = []
        for args, worker in zip(per_panel, self.placement(len(per_panel))):
            with self._placed(worker):
                parts.append(delayed(task, pure=False, nout=2)(*args, *shared_keys))
        outputs: list[Any] = [p[0] for p in parts] if keep_outputs else []
        # The tree's first level adds the stats of two panels straight from their
        # tasks' (output, stats) pairs: the same tree as the local path, without a
        # getitem task per panel.
        firsts = [
            delayed(_combine_pair_stats, pure=False)(combine, parts[i], parts[i + 1])
            for i in range(0, len(parts) - 1, 2)
        ]
        if len(parts) % 2:
            firsts.append(parts[-1][1])
        total = tree_reduce(firsts, combine)
        futures = self.client.compute([*outputs, total])
        result = futures[-1].result()
        return list(futures[:-1]), result

    def map(
        self,
        task: Callable[..., Any],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...] = (),
    ) -> list[Any]:
        """Run ``task(*per_panel[i], *shared)`` for every panel; gather the results."""
        shared_keys = tuple(self.share(value) for value in shared)
        parts = [delayed(task, pure=False)(*args, *shared_keys) for args in per_panel]
        if self.client is None:
            with _blas_limit(self.n_threads):
                return list(dask.compute(*parts, scheduler="threads", num_workers=self.n_threads))
        return list(self.client.gather(self.client.compute(parts)))

    def map_keep(
        self,
        task: Callable[..., Any],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...] = (),
    ) -> list[Any]:
        """Like :meth:`map`, but leave the results on the workers (futures)."""
        if self.client is None:
            return self.map(task, per_panel, shared)
        shared_keys = tuple(self.share(value) for value in shared)
        parts = []
        for args, worker in zip(per_panel, self.placement(len(per_panel))):
            with self._placed(worker):
                parts.append(delayed(task, pure=False)(*args, *shared_keys))
        return list(self.client.compute(parts))


PANEL_COPIES = 3


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_worker_memory(workers: dict[str, Any], panel_bytes: int, what: str = "panel") -> None:
    """Raise if some worker's memory limit is below 3 × panel bytes × its threads.

    ``workers`` is ``client.scheduler_info()["workers"]``.
    """
    from .errors import InvalidParameterError

    for address, w in sorted(workers.items()):
        limit = w.get("memory_limit") or 0
        nthreads = max(1, int(w.get("nthreads", 1) or 1))
        need = PANEL_COPIES * panel_bytes * nthreads
        if limit and need > limit:
            raise InvalidParameterError(
                f"worker {w.get('name', address)} ({address}) has a memory limit of "
                f"{_fmt_bytes(limit)} ({limit} bytes), too little for a {what} of "
                f"{_fmt_bytes(panel_bytes)} ({panel_bytes} bytes): {nthreads} thread(s) "
                f"× {PANEL_COPIES} panel-sized arrays need {_fmt_bytes(need)}. Use smaller "
                f"panels (panel_rows=), fewer threads per worker, or workers with "
                f"more memory."
            )


def get_backend(scheduler: Any = None) -> Backend:
    """Resolve the ``scheduler`` parameter.

    ``None``: the active ``distributed.Client`` if there is one, else the local
    threads scheduler. ``"threads"``: always local. A ``Client``: that client. A
    string ``"tcp://host:port"``: connect a client to that scheduler.
    """
    if scheduler == "threads":
        return Backend()
    if scheduler is None:
        try:
            from distributed import default_client

            return Backend(default_client())
        except (ImportError, ValueError):
            return Backend()
    if isinstance(scheduler, str):
        from distributed import Client

        return Backend(Client(scheduler))
    return Backend(scheduler)
