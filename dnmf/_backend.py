"""Running panel tasks: Dask's local threads scheduler or a distributed cluster.

The driver asks for a *pass*: a function applied to every panel, each call returning
``(output, stats)``, and the stats summed in the fixed tree of :mod:`dnmf._tree`, so
the sum does not depend on which task finished first; optionally a ``then`` step
runs on the sum. Locally the pass runs at once in this process, one task per panel.
On a cluster a pass is one task per worker thread, for a block of neighbouring
panels (the panels in turn, their subtree's sum, and their outputs kept together,
which stay on that worker as the next pass's inputs), and one task for the rest of
the tree and ``then``; a pass can be queued before the previous one has finished,
taking its shared values from that pass's ``then`` (:class:`Pending`). Each pass
builds a fresh graph from concrete inputs or futures, so graphs never grow across
iterations. This module knows nothing of NMF; it schedules functions.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import dask
import dask.threaded
import numpy as np
from dask.delayed import Delayed, delayed

from ._tree import local_blocks, pairwise_tree, upper_tree

__all__ = [
    "Backend",
    "Pending",
    "check_worker_memory",
    "describe_dashboard",
    "get_backend",
    "unreachable",
]


_CONTROLLER: Any = None

#: Seconds a cluster's worker list is reused for placement before it is asked again.
WORKERS_TTL = 5.0
#: Seconds a cluster may have no worker at all before work waiting on it is given up.
NO_WORKERS_SECONDS = float(os.environ.get("DNMF_NO_WORKERS_SECONDS", "60"))
#: How often waiting work looks at the cluster (one small round trip to the scheduler).
WATCH_SECONDS = 2.0


_CORES = os.cpu_count() or 1

#: The BLAS thread count in force in this thread under :func:`_blas_limit`, if any.
_LIMIT = threading.local()


def _blas_limit(threads: int) -> AbstractContextManager[Any]:
    """Limit BLAS so that threads × BLAS threads does not exceed the cores.

    Nested limits to the count already in force cost nothing (a fit holds one for
    all its passes when its data are small: see :attr:`Backend.small`).
    """
    global _CONTROLLER
    blas = max(1, _CORES // max(threads, 1))
    if getattr(_LIMIT, "blas", None) == blas:
        return nullcontext()
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return nullcontext()
    if _CONTROLLER is None:
        # Scanning the loaded libraries is slow; do it once per process.
        _CONTROLLER = ThreadpoolController()
    return _limited(_CONTROLLER, blas)


@contextmanager
def _limited(controller: Any, blas: int) -> Iterator[None]:
    previous = getattr(_LIMIT, "blas", None)
    with controller.limit(limits=blas, user_api="blas"):
        _LIMIT.blas = blas
        try:
            yield
        finally:
            _LIMIT.blas = previous


def _any_delayed(args: tuple[Any, ...]) -> bool:
    """Whether any of a task's arguments is a Delayed (a loop: on small data this runs
    once per iteration, and a generator expression costs more than the test)."""
    for a in args:
        if isinstance(a, Delayed):
            return True
    return False


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


def _getitem(value: Any, index: int) -> Any:
    return value[index]


#: Shared values up to this many bytes pickled are copied into each task's spec.
INLINE_BYTES = 16 * 1024


def _small(values: tuple[Any, ...]) -> bool:
    import pickle

    if any(isinstance(v, np.ndarray) and v.nbytes > INLINE_BYTES for v in values):
        return False
    try:
        return len(pickle.dumps(values, protocol=5)) <= INLINE_BYTES
    except Exception:  # not picklable here: let Dask's own serialization handle it
        return False


def _is_future(value: Any) -> bool:
    from distributed import Future

    return isinstance(value, Future)


def _key_for(task: Callable[..., Any]) -> str:
    """A fresh task key named after ``task`` (what the dashboard shows)."""
    return f"{getattr(task, '__name__', 'task')}-{uuid.uuid4().hex}"


def _identity(value: Any) -> Any:
    return value


class _Slot:
    """Part of a task's result on a cluster: ``result[path[0]][path[1]]...``.

    A pass keeps the new W panels of each block of panels in one task's result
    (on the worker that computed them), so no task is needed to split outputs from
    statistics; a task that takes a slot gets the part itself.
    """

    __slots__ = ("future", "path")

    def __init__(self, future: Any, path: tuple[int, ...]) -> None:
        self.future = future
        self.path = path

    def pick(self, value: Any) -> Any:
        return _pick(value, self.path)


def _pick(value: Any, path: tuple[int, ...]) -> Any:
    """``value[path[0]][path[1]]...``."""
    for index in path:
        value = value[index]
    return value


Where = tuple[tuple[int, tuple[int, ...]], ...]


def _unslot(args: Sequence[Any]) -> tuple[list[Any], Where]:
    """Task arguments with slots replaced by their futures, and where the slots were."""
    plain: list[Any] = []
    where: list[tuple[int, tuple[int, ...]]] = []
    for i, a in enumerate(args):
        if isinstance(a, _Slot):
            where.append((i, a.path))
            plain.append(a.future)
        else:
            plain.append(a)
    return plain, tuple(where)


def _resolve(where: Where, args: Sequence[Any]) -> tuple[Any, ...]:
    if not where:
        return tuple(args)
    resolved = list(args)
    for i, path in where:
        resolved[i] = _pick(args[i], path)
    return tuple(resolved)


Layout = tuple[tuple[int, tuple[int, ...] | None], ...]


def _shared_values(layout: Layout, args: Sequence[Any]) -> tuple[Any, ...]:
    """The shared values from their graph arguments (see :meth:`Backend.share`)."""
    literals = args[0]
    return tuple(
        literals[i] if path is None else _pick(args[i], path) for i, path in layout
    )


def _call(task: Callable[..., Any], where: Where, layout: Layout, shared: list[Any],
          *args: Any) -> Any:
    """Run ``task(*args, *shared values)`` with the slot arguments resolved."""
    return task(*_resolve(where, args), *_shared_values(layout, shared))


def _finish(blocks: Sequence[tuple[int, int]], sums: list[Any], whole: tuple[bool, ...],
            combine: Callable[[Any, Any], Any], then: Callable[..., Any] | None,
            layout: Layout, shared: list[Any]) -> Any:
    """The tree above the blocks, and ``then`` on its value, in one task.

    ``sums[i]`` is block i's sum, or (``whole[i]``) its whole ``(outputs, sum)``.
    """
    sums = [s[1] if w else s for s, w in zip(sums, whole)]
    total = sums[0] if len(sums) == 1 else upper_tree(blocks, sums, combine)
    return total if then is None else then(total, *_shared_values(layout, shared))


def _connection_lost(exc: BaseException) -> str | None:
    """Why ``exc`` means the scheduler is gone (or None: it does not)."""
    import asyncio
    import concurrent.futures

    from distributed.comm.core import CommClosedError

    text = str(exc)
    if isinstance(exc, CommClosedError):
        return text or "the connection was closed"
    if isinstance(exc, asyncio.CancelledError | concurrent.futures.CancelledError) and (
        "connection-lost" in text or "lost the connection" in text
    ):
        return "the client lost the connection to the scheduler"
    return None


@contextmanager
def _cluster_guard(address: str | None) -> Iterator[None]:
    """Turn the loss of the scheduler into a :class:`ClusterLostError` that says so."""
    from .errors import ClusterLostError

    try:
        yield
    except Exception as exc:
        if address is None:
            raise
        reason = _connection_lost(exc)
        if reason is None:
            raise
        raise ClusterLostError(
            f"lost the Dask scheduler at {address} ({reason}): the work stopped. A fit "
            f"with out= resumes from its last checkpoint once a scheduler is reachable "
            f"again (dnmf.resume(out), or 'dnmf resume OUT').",
            address=address, reason=reason,
        ) from None


def _watched(client: Any, address: str | None, wait: Callable[[float], Any]) -> Any:
    """``wait(timeout)`` until it returns, giving up if the cluster stays without workers.

    Dask waits for workers forever; a fit whose workers are all gone (killed, their
    nannies too, or a batch allocation ended) would hang without a word. Every
    :data:`WATCH_SECONDS` this asks the scheduler how many workers it has, and after
    :data:`NO_WORKERS_SECONDS` without any raises :class:`ClusterLostError` (a fit with
    ``out=`` then resumes from its last commit).
    """
    from .errors import ClusterLostError

    alone_since: float | None = None
    with _cluster_guard(address):
        while True:
            try:
                return wait(WATCH_SECONDS)
            except TimeoutError:
                pass
            if client.nthreads():
                alone_since = None
                continue
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since >= NO_WORKERS_SECONDS:
                raise ClusterLostError(
                    f"the Dask cluster at {address} has had no workers for "
                    f"{NO_WORKERS_SECONDS:.0f} s (all stopped or killed), so the work cannot "
                    f"go on. A fit with out= resumes from its last checkpoint once workers "
                    f"are back (dnmf.resume(out), or 'dnmf resume OUT').",
                    address=address or "?", reason="no workers",
                )


def _result(client: Any, future: Any, timeout: float) -> Any:
    """``future.result()`` once done, or TimeoutError after ``timeout`` seconds.

    The wait runs as a coroutine with its own timeout (``Future.result(timeout=)``
    goes through ``sync``'s callback timeout, which in distributed 2026.8 can fail
    with an UnboundLocalError when it fires).
    """
    from distributed.client import _wait

    client.sync(_wait, [future], timeout=timeout)
    return future.result()


class Pending:
    """A submitted pass: its outputs (handles) now, its result when it is done.

    With a ``then`` step (:meth:`Backend.submit_pass`), ``result()`` is the part of
    ``then``'s result meant for this process and ``part(*path)`` a handle to the
    part meant for the next pass, which that pass can take as a shared value
    before this one has finished: on a cluster the scheduler holds the next pass's
    tasks until it has, so passes run back to back.
    """

    def __init__(self, outputs: list[Any], *, future: Any = None, value: Any = None,
                 shared: Any = None, futures: Sequence[Any] = (),
                 address: str | None = None, client: Any = None) -> None:
        self.outputs = outputs
        self._client = client
        self._address = address
        self._future = future
        self._value = value
        self._shared = shared
        self._futures = list(futures)

    def result(self) -> Any:
        if self._future is not None:
            future = self._future
            self._value = _watched(self._client, self._address,
                                   lambda timeout: _result(self._client, future, timeout))
            self._future = None
        return self._value

    def part(self, *path: int) -> Any:
        """Part ``path`` of the shared half of ``then``'s result (a handle on a cluster)."""
        if isinstance(self._shared, _Slot):
            return _Slot(self._shared.future, self._shared.path + path)
        return _pick(self._shared, path)

    def cancel(self) -> None:
        """Drop the pass's work (its tasks are pure: nothing is left behind).

        The futures are released, not cancelled: the scheduler then forgets the
        tasks no one wants, unstarted ones included. (``Client.cancel`` on a pass
        queued behind another can trip an assertion in the scheduler of
        distributed 2026.8, which drops the client's connection.)
        """
        for future in self._futures:
            future.release()
        self._futures = []
        self._future = None


def _block(task: Callable[..., tuple[Any, Any]], combine: Callable[[Any, Any], Any],
           keep: bool, wheres: tuple[Where, ...], layout: Layout, shared: list[Any],
           *args: Any) -> Any:
    """One block of neighbouring panels, in one task: ``task`` on each panel in turn,
    then the outputs (if kept) and the block's subtree of the fixed tree's sum.

    ``args`` holds the panels' arguments one panel after the other (``len(args) //
    len(wheres)`` each); ``wheres[i]`` says which of panel i's are slots.
    """
    values = _shared_values(layout, shared)
    width = len(args) // len(wheres)
    outputs, stats = [], []
    for i, where in enumerate(wheres):
        out, stat = task(*_resolve(where, args[i * width:(i + 1) * width]), *values)
        outputs.append(out if keep else None)
        stats.append(stat)
        del out, stat
    total = pairwise_tree(stats, combine)
    return (tuple(outputs), total) if keep else total


_PLUGGED: set[str] = set()


def _install_plugin(client: Any) -> None:
    """Keep placement loose on the scheduler even when all workers die at once
    (:mod:`dnmf._scheduler_plugin`); once per scheduler and process."""
    import logging

    address = str(getattr(client.scheduler, "address", ""))
    if address in _PLUGGED:
        return
    try:
        from ._scheduler_plugin import install

        install(client)
        _PLUGGED.add(address)
    except Exception as exc:  # a scheduler that refuses plugins still runs fits
        logging.getLogger("dnmf").warning(
            "could not register dnmf's placement plugin on the scheduler at %s (%s): a "
            "fit may stall if every worker dies at once", address, exc)


class Backend:
    """Dask's threads scheduler in this process (``client=None``) or a Client."""

    def __init__(self, client: Any = None, n_threads: int | None = None) -> None:
        self.client = client
        self._workers_seen: tuple[float, dict[str, Any]] | None = None
        #: The scheduler's address (for messages), None locally.
        self.address: str | None = None
        if client is not None:
            self.address = str(getattr(client.scheduler, "address", None) or "?")
            _install_plugin(client)
            info = client.scheduler_info()
            workers = info.get("workers", {})
            self.n_threads = max(1, sum(w.get("nthreads", 1) for w in workers.values()))
        else:
            configured = dask.config.get("num_workers", None)
            self.n_threads = int(n_threads or configured or os.cpu_count() or 1)

    #: The data are small (set by the caller, locally): every product is too small
    #: for BLAS threads to pay for their synchronisation, so the whole fit runs with
    #: one BLAS thread (:meth:`driver_limits`), held once rather than set per pass.
    small: bool = False

    @property
    def distributed(self) -> bool:
        return self.client is not None

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client else None

    @property
    def _one_panel_threads(self) -> int:
        """Worker threads to count for a lone panel: it has all BLAS threads, unless small."""
        return _CORES if self.small else 1

    def driver_limits(self) -> AbstractContextManager[Any]:
        """BLAS threads for the driver's own (H-sized) arithmetic between passes.

        On a cluster the driver's cores are shared with workers that are busy when
        it computes (losses, the next context): several BLAS threads would only spin
        against them, so it uses one. Locally the driver has the machine, unless the
        data are :attr:`small` (one BLAS thread throughout).
        """
        if self.client is None and not self.small:
            return nullcontext()
        return _blas_limit(_CORES)  # as many "threads" as cores: 1 BLAS thread

    def small_limits(self) -> AbstractContextManager[Any]:
        """One BLAS thread for a stretch of passes (scan, initialisation) on small data.

        Otherwise nothing: each pass then sets the BLAS threads its tasks need.
        """
        return _blas_limit(_CORES) if self.small else nullcontext()

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

    def share(self, values: tuple[Any, ...]) -> tuple[Layout, list[Any]]:
        """Graph arguments for the values every task of a pass reads (H, the context).

        Concrete values travel inside the graph as one key, not by ``scatter``: the
        scheduler then holds them as a task it can rerun, so when a worker dies the
        outputs it held (W panels as futures) are recomputed by lineage. Scattered
        data has no lineage, and losing it cancels every later pass ("lost
        dependencies"). Values that are parts of an unfinished pass's result
        (:meth:`Pending.part`) are taken from that pass's task directly.
        """
        literals = tuple(v for v in values if not isinstance(v, _Slot))
        # Small values (the solver, penalties) go inline in each task: a key of
        # their own would be one more task to run and ship before the pass starts.
        args: list[Any] = [literals if _small(literals) else delayed(literals, pure=False)]
        layout: list[tuple[int, tuple[int, ...] | None]] = []
        for value in values:
            if isinstance(value, _Slot):
                layout.append((len(args), value.path))
                args.append(value.future)
            else:
                layout.append((len(layout) - (len(args) - 1), None))
        return tuple(layout), args

    def reroot(self, handles: list[Any]) -> list[Any]:
        """Cut the lineage of panel outputs: concrete values, as graph literals.

        Locally the handles already are values. On a cluster the values are fetched
        once and re-enter the next pass as literals, which the scheduler can rerun
        without remembering the passes that made them.
        """
        if self.client is None:
            return handles
        return [delayed(value, pure=False) for value in self.gather(handles)]

    def placement(self, n_panels: int) -> list[str | None]:
        """The worker each panel's tasks prefer: contiguous blocks of panels per worker.

        The fixed reduction tree adds neighbouring panels first; with panel i on
        worker ``i · workers / panels`` (by thread count) all but the last
        ``log2(workers)`` levels of the tree add statistics that are already on
        the same worker, and a pass's W panel is where the next pass wants it. The
        preference is loose (``allow_other_workers``): a lost or busy worker's
        panels run elsewhere, with the same result. ``None`` locally.
        """
        return [worker for worker, _ in self._slots(n_panels)]

    def _slots(self, n_panels: int) -> list[tuple[str | None, int]]:
        """Per panel, its worker and its thread slot (contiguous panels per slot).

        Slot ``i · threads / panels`` of all the cluster's worker threads, counted
        worker by worker in name order: each worker thread gets a contiguous run of
        panels, and a worker's threads get neighbouring runs.
        """
        if self.client is None:
            return [(None, i) for i in range(n_panels)]
        workers = self._workers()
        if not workers:
            return [(None, i) for i in range(n_panels)]
        names = sorted(workers)
        threads = np.cumsum([max(1, int(workers[w].get("nthreads", 1))) for w in names])
        slots = (np.arange(n_panels) * threads[-1]) // max(n_panels, 1)
        return [(names[int(np.searchsorted(threads, slot, side="right"))], int(slot))
                for slot in slots]

    def _workers(self) -> dict[str, Any]:
        """The scheduler's workers, asked at most every ``WORKERS_TTL`` seconds.

        Asking is a round trip to the scheduler, once per pass otherwise. A stale
        list only costs locality: placement is a loose preference.
        """
        now = time.monotonic()
        if self._workers_seen is None or now - self._workers_seen[0] > WORKERS_TTL:
            with _cluster_guard(self.address):
                self._workers_seen = (now, self.client.scheduler_info().get("workers", {}))
        return self._workers_seen[1]

    def _placed(self, worker: str | None) -> AbstractContextManager[Any]:
        if worker is None:
            return nullcontext()
        return dask.annotate(workers=[worker], allow_other_workers=True)

    def scatter_panels(self, panels: list[Any]) -> list[Any]:
        """Place in-memory panels on the workers once (distributed), or keep them.

        Each panel goes to its worker as a task that holds the panel (not by
        ``scatter``), so the scheduler can recreate it if that worker dies; the
        cost is that the scheduler keeps the panels' bytes for as long as the fit
        uses them. Scattered data would be lost with its worker, and every pass
        after it with it.
        """
        if self.client is None:
            return panels
        literals = []
        for panel, worker in zip(panels, self.placement(len(panels))):
            with self._placed(worker):
                literals.append(delayed(_identity, pure=False)(panel))
        with warnings.catch_warnings():
            # Distributed warns about large graphs; here the size is the point.
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
            return list(self.client.compute(literals))

    def gather(self, handles: list[Any]) -> list[Any]:
        """Bring panel outputs (futures or arrays) to this process, in order."""
        if self.client is None:
            return handles
        # Slots of one block come back as one result; re-rooted panels are Delayed
        # literals; futures are fetched; anything else already is a value.
        futures: dict[str, Any] = {}
        for h in handles:
            base = h.future if isinstance(h, _Slot) else h
            if isinstance(base, Delayed):
                futures.setdefault(base.key, self.client.compute(base))
            elif _is_future(base):
                futures.setdefault(base.key, base)
        keys = list(futures)
        values = dict(zip(keys, self._gather([futures[key] for key in keys])))
        out = []
        for h in handles:
            if isinstance(h, _Slot):
                out.append(h.pick(values[h.future.key]))
            elif isinstance(h, Delayed) or _is_future(h):
                out.append(values[h.key])
            else:
                out.append(h)
        return out

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

        Returns the outputs (arrays locally, handles on a cluster, or ``[]`` when
        ``keep_outputs`` is false) and the reduced stats, as concrete values.
        """
        done = self.submit_pass(task, per_panel, shared, combine, keep_outputs=keep_outputs)
        total = done.result()
        return done.outputs, total

    def submit_pass(
        self,
        task: Callable[..., tuple[Any, Any]],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...],
        combine: Callable[[Any, Any], Any],
        *,
        keep_outputs: bool,
        then: Callable[..., Any] | None = None,
    ) -> Pending:
        """Start a pass: ``task(*per_panel[i], *shared)`` per panel, stats reduced.

        Without ``then`` the pass's result is the reduced stats. With it,
        ``then(stats, *shared)`` must return ``(for_next_pass, for_driver)``: the
        result is ``for_driver`` and :meth:`Pending.part` refers into
        ``for_next_pass``. Locally the pass runs now. On a cluster the call returns
        once the graph is submitted, ``then`` runs on the worker that has the sum,
        and shared values may be parts of an unfinished pass's result, so passes
        can be queued back to back without a round trip through this process.
        """
        if self.client is None:
            outputs, total = self._local_pass(task, per_panel, shared, combine,
                                              keep_outputs=keep_outputs)
            if then is None:
                return Pending(outputs, value=total)
            shared_part, own_part = then(total, *shared)
            return Pending(outputs, value=own_part, shared=shared_part)
        # On a cluster: one task per block of neighbouring panels for one worker
        # thread (the panels one after the other, their W panels kept together, and
        # the block's subtree of the fixed tree), then one task for the tree above
        # the blocks. Panels of one thread run in turn anyway; as one task they
        # cost the scheduler no round trip between them.
        bundle = self.share(shared)
        slots = self._slots(len(per_panel))
        owners = [worker for worker, _ in slots]
        blocks = local_blocks([slot for _, slot in slots])
        groups = []
        for a, b in blocks:
            unslotted = [_unslot(args) for args in per_panel[a:b]]
            with self._placed(owners[a]):
                groups.append(delayed(_block, pure=False)(
                    task, combine, keep_outputs, tuple(w for _, w in unslotted), *bundle,
                    *(x for plain, _ in unslotted for x in plain),
                    dask_key_name=_key_for(task),
                ))
        # The last task runs where the last block is and takes the blocks there
        # whole (their W panels do not move); other blocks' sums come by a getitem.
        last = owners[blocks[-1][0]]
        whole = tuple(keep_outputs and owners[a] == last for a, _ in blocks)
        sums = []
        for (a, _), group, direct in zip(blocks, groups, whole):
            if keep_outputs and not direct:
                with self._placed(owners[a]):
                    group = delayed(_getitem, pure=False)(group, 1)
            sums.append(group)
        if len(sums) == 1 and then is None:
            total = delayed(_getitem, pure=False)(sums[0], 1) if whole[0] else sums[0]
        else:
            with self._placed(last):
                total = delayed(_finish, pure=False)(blocks, sums, whole, combine, then,
                                                     *bundle)
        kept = groups if keep_outputs else []
        wanted = [*kept, total]
        if then is not None:
            # ``then`` runs where the sum is; only its second half comes back here.
            wanted.append(delayed(_getitem, pure=False)(total, 1))
        # ``fifo_timeout=0``: each pass is a graph generation of its own, and older
        # generations go first. Otherwise passes submitted within a minute share one,
        # ordered by each graph's own task order, and a queued pass's first panel
        # tasks outrank this pass's last ones (the tiny task that takes the result to
        # this process then waits for a whole pass on a busy worker).
        with _cluster_guard(self.address):
            futures = self.client.compute(wanted, fifo_timeout=0)
        shared_future = None if then is None else _Slot(futures[-2], (0,))
        outputs = [
            _Slot(group, (0, i))
            for group, (a, b) in zip(futures[:len(kept)], blocks)
            for i in range(b - a)
        ]
        return Pending(outputs, future=futures[-1], shared=shared_future, futures=futures,
                       address=self.address, client=self.client)

    def _local_pass(
        self,
        task: Callable[..., tuple[Any, Any]],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...],
        combine: Callable[[Any, Any], Any],
        *,
        keep_outputs: bool,
    ) -> tuple[list[Any], Any]:
        if len(per_panel) == 1 and not _any_delayed(per_panel[0]):
            # One panel: nothing to schedule, so skip the scheduler's fixed cost.
            with _blas_limit(self._one_panel_threads):
                out, stats = task(*per_panel[0], *shared)
            return ([out] if keep_outputs else []), stats
        graph = _Graph()
        shared_args = tuple(graph.arg(value) for value in shared)
        parts = [
            graph.task(task, *(graph.arg(a) for a in args), *shared_args)
            for args in per_panel
        ]
        out_keys = [graph.task(_getitem, p, 0) for p in parts] if keep_outputs else []
        total_key = pairwise_tree(
            [graph.task(_getitem, p, 1) for p in parts],
            lambda a, b: graph.task(combine, a, b),
        )
        with _blas_limit(self.n_threads):
            *out, result = dask.threaded.get(
                graph.dsk, [*out_keys, total_key], num_workers=self.n_threads
            )
        return list(out), result

    def _local_map(
        self,
        task: Callable[..., Any],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...],
    ) -> list[Any]:
        # A raw graph for the threads scheduler, not ``dask.compute``: that looks
        # for a distributed client, importing distributed (about a second) to do so.
        if len(per_panel) == 1 and not _any_delayed(per_panel[0]):
            with _blas_limit(self.n_threads if not self.small else self._one_panel_threads):
                return [task(*per_panel[0], *shared)]
        with _blas_limit(self.n_threads):
            graph = _Graph()
            shared_args = tuple(graph.arg(value) for value in shared)
            keys = [graph.task(task, *(graph.arg(a) for a in args), *shared_args)
                    for args in per_panel]
            return list(dask.threaded.get(graph.dsk, keys, num_workers=self.n_threads))

    def map(
        self,
        task: Callable[..., Any],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...] = (),
    ) -> list[Any]:
        """Run ``task(*per_panel[i], *shared)`` for every panel; gather the results."""
        if self.client is None:
            return self._local_map(task, per_panel, shared)
        bundle = self.share(shared)
        parts = [self._delayed_call(task, args, bundle) for args in per_panel]
        with _cluster_guard(self.address):
            futures = self.client.compute(parts)
        return list(self._gather(futures))

    def _gather(self, futures: list[Any]) -> list[Any]:
        """The results of ``futures``, watching that the cluster still has workers."""
        from distributed.client import _wait

        def done(timeout: float) -> list[Any]:
            # distributed.wait would look for a default client; this one may not be.
            self.client.sync(_wait, futures, timeout=timeout)
            return self.client.gather(futures)

        return _watched(self.client, self.address, done)

    def map_keep(
        self,
        task: Callable[..., Any],
        per_panel: list[tuple[Any, ...]],
        shared: tuple[Any, ...] = (),
    ) -> list[Any]:
        """Like :meth:`map`, but leave the results on the workers (futures)."""
        if self.client is None:
            return self.map(task, per_panel, shared)
        bundle = self.share(shared)
        parts = []
        for args, worker in zip(per_panel, self.placement(len(per_panel))):
            with self._placed(worker):
                parts.append(self._delayed_call(task, args, bundle))
        return list(self.client.compute(parts))

    @staticmethod
    def _delayed_call(task: Callable[..., Any], args: Sequence[Any],
                      bundle: tuple[Layout, list[Any]]) -> Delayed:
        """``task(*args, *shared)`` as one Delayed, named after the task (dashboard)."""
        plain, where = _unslot(args)
        return delayed(_call, pure=False)(task, where, *bundle, *plain,
                                          dask_key_name=_key_for(task))

    def to_delayed(self, handle: Any) -> Delayed:
        """A panel output as a Delayed value (for building Dask arrays from W)."""
        if isinstance(handle, _Slot):
            return delayed(_pick, pure=False)(handle.future, handle.path)
        return delayed(handle)


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


def describe_dashboard(link: str) -> str:
    """The dashboard link, with how to get it served when bokeh is missing."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return (f"{link} (not served here: Dask's dashboard needs bokeh; "
                "pip install 'dnmf[dashboard]')")
    return link


#: Seconds a TCP connection to the scheduler may take before it is reported missing.
PROBE_TIMEOUT = 5.0


def unreachable(address: str) -> str | None:
    """Why nothing answers at a tcp:// or tls:// scheduler address (None: it answers).

    One plain TCP connection: Dask's client retries a refused connection until its
    timeout (10 s here), this tells at once. Other transports are left to Dask.
    """
    import socket

    from .errors import InvalidParameterError

    scheme, _, rest = address.partition("://")
    if scheme not in ("tcp", "tls"):
        return None
    host, _, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise InvalidParameterError(f"the scheduler address {address!r} is not tcp://HOST:PORT.")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT):
            return None
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)"
    except TimeoutError:
        return f"no answer in {PROBE_TIMEOUT:.0f} s"
    except OSError as exc:
        return " ".join(str(exc.strerror or exc).split())


def get_backend(scheduler: Any = None) -> Backend:
    """Resolve the ``scheduler`` parameter.

    ``None``: the active ``distributed.Client`` if there is one, else the local
    threads scheduler. ``"threads"``: always local. A ``Client``: that client. A
    string ``"tcp://host:port"``: connect a client to that scheduler.
    """
    if scheduler == "threads":
        return Backend()
    if scheduler is None:
        if "distributed" not in sys.modules:
            # No client can be active if distributed was never imported; importing
            # it only to find out costs about a second.
            return Backend()
        try:
            from distributed import default_client

            return Backend(default_client())
        except (ImportError, ValueError):
            return Backend()
    if isinstance(scheduler, str):
        from distributed import Client

        from .errors import InvalidParameterError

        if "://" not in scheduler:
            raise InvalidParameterError(
                f"scheduler={scheduler!r} is not a scheduler address: give None (the active "
                f"distributed.Client, else threads), 'threads', a distributed.Client, or an "
                f"address such as 'tcp://HOST:8786'."
            )
        reason = unreachable(scheduler)
        if reason is not None:
            raise InvalidParameterError(
                f"cannot connect to the Dask scheduler at {scheduler}: {reason}. Check the "
                f"address and that the scheduler is running."
            )
        try:
            return Backend(Client(scheduler, timeout="10s"))
        except (OSError, TimeoutError, ValueError) as exc:
            raise InvalidParameterError(
                f"cannot connect to the Dask scheduler at {scheduler}: {exc}. Check the "
                f"address and that the scheduler is running."
            ) from None
    return Backend(scheduler)
