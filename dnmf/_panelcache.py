"""A sweep's shared panel cache: decoded panels of V (and of the mask), read once.

A local rank sweep runs many fits of the same V at the same time, and each fit
reads every panel of V once per iteration. Out of core (Zarr, a CSR Zarr group) a
read is a decompression; with a :class:`PanelCache` the fits of one sweep share it:
the first fit to ask for a panel reads it, fits asking while it is being read wait
for that read, and the decoded panel is kept while the cache's byte budget allows.

Policy, chosen for passes that sweep the panels in order, over and over:

* a panel is **kept while the budget has room, and never evicted** during the
  sweep. When V is larger than the budget, the first panels read stay and the
  others are read again by every fit that needs them: the share of reads saved
  is the share of V that fits (an LRU would keep the panels least likely to be
  asked for next, and save nothing on a cyclic scan larger than itself);
* a panel not kept is still **shared while it is being read**: a fit asking for a
  panel that another fit is reading waits for that read instead of starting its
  own (fits in lockstep then share every read, without keeping anything).

Kept panels are made read-only (a fit that wrote into its copy of V would change
every other fit's), so a fit sees exactly the values it would have read itself:
the results are bit-identical with and without the cache. It lives in one process
(the threads scheduler): on a cluster each fit's tasks read their panels on the
workers and no cache is used. This module does no arithmetic and knows no NMF.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CachedPanel", "PanelCache", "active", "auto_budget", "resolve_budget", "using"]

#: ``panel_cache="auto"``: this share of the memory available when the sweep starts.
AUTO_SHARE = 0.25


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``, else psutil), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - no psutil, no /proc
        return None


def auto_budget() -> int:
    """The ``"auto"`` budget: a quarter of the available memory (256 MiB if unknown)."""
    avail = available_memory()
    return int(AUTO_SHARE * avail) if avail else 256 * 2**20


def resolve_budget(panel_cache: Any) -> int:
    """``panel_cache`` (``"auto"``, a number of bytes, or 0 / None / False: off) in bytes."""
    from .errors import InvalidParameterError

    if panel_cache is None or panel_cache is False:
        return 0
    if panel_cache == "auto":
        return auto_budget()
    if (isinstance(panel_cache, bool) or not isinstance(panel_cache, int | np.integer)
            or panel_cache < 0):
        raise InvalidParameterError(
            f"panel_cache must be 'auto', a number of bytes >= 0 (0 or None: no cache), "
            f"got {panel_cache!r}."
        )
    return int(panel_cache)


def nbytes(value: Any) -> int:
    """Bytes held by a decoded panel (dense array, or a SciPy sparse matrix's arrays)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    parts = [getattr(value, name, None) for name in ("data", "indices", "indptr")]
    if all(isinstance(p, np.ndarray) for p in parts):
        return int(sum(p.nbytes for p in parts))
    return int(getattr(value, "nbytes", 0) or 0)


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    else:
        for name in ("data", "indices", "indptr"):
            part = getattr(value, name, None)
            if isinstance(part, np.ndarray):
                part.flags.writeable = False
    return value


class PanelCache:
    """Decoded panels shared by the fits of one sweep, at most ``budget`` bytes kept.

    Thread-safe. ``get(key, read)`` returns the panel of ``key``: kept, being read
    by another thread (waits for it), or read now with ``read()``.
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self._lock = threading.Lock()
        self._kept: dict[Any, Any] = {}
        self._reading: dict[Any, _Flight] = {}
        self.used = 0
        #: counters: panels read (``reads``), served without a read (``hits``),
        #: and the most bytes ever kept (``peak``, never above ``budget``)
        self.reads = 0
        self.hits = 0
        self.peak = 0

    def get(self, key: Any, read: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._kept:
                self.hits += 1
                return self._kept[key]
            flight = self._reading.get(key)
            if flight is None:
                flight = self._reading[key] = _Flight()
                mine = True
            else:
                self.hits += 1
                mine = False
        if not mine:
            return flight.wait()
        try:
            value = _read_only(read())
        except BaseException as exc:
            with self._lock:
                del self._reading[key]
            flight.fail(exc)
            raise
        size = nbytes(value)
        with self._lock:
            self.reads += 1
            del self._reading[key]
            if self.used + size <= self.budget:
                self._kept[key] = value
                self.used += size
                self.peak = max(self.peak, self.used)
        flight.done(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self.used = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"budget": self.budget, "kept": len(self._kept), "used": self.used,
                    "peak": self.peak, "reads": self.reads, "hits": self.hits}


class _Flight:
    """One read in progress; other threads wait for its value (or its error)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def wait(self) -> Any:
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(frozen=True)
class CachedPanel:
    """A panel reference read through a :class:`PanelCache` (``role``: "V" or "mask")."""

    ref: Any
    cache: PanelCache
    role: str

    @property
    def start(self) -> Any:
        # panel_start() and error messages look for the panel's first row
        return getattr(self.ref, "start", None)

    def load(self) -> Any:
        from ._source import load_panel

        key = (self.role, getattr(self.ref, "start", None), getattr(self.ref, "stop", None),
               getattr(self.ref, "dtype", None))
        return self.cache.get(key, lambda: load_panel(self.ref))


#: The cache of the sweep whose fit this thread is driving, if any.
_ACTIVE = threading.local()


def active() -> PanelCache | None:
    """The panel cache in force in this thread (set by a sweep around each fit)."""
    return getattr(_ACTIVE, "cache", None)


@contextmanager
def using(cache: PanelCache | None) -> Iterator[None]:
    """Make ``cache`` the one that fits prepared in this thread read through."""
    previous = active()
    _ACTIVE.cache = cache
    try:
        yield
    finally:
        _ACTIVE.cache = previous


#: Kinds of V whose panels are read from storage (a cache saves a decompression).
CACHED_KINDS = ("zarr", "zarr-csr")


def wrap(refs: list[Any], cache: PanelCache, role: str) -> list[Any]:
    """``refs`` read through ``cache`` (None entries, i.e. no mask, stay None)."""
    return [None if ref is None else CachedPanel(ref, cache, role) for ref in refs]


def describe(stats: dict[str, int]) -> str:
    used = stats["peak"] / 2**20
    return (f"panel cache: {stats['reads']} reads, {stats['hits']} shared, "
            f"{stats['kept']} panels kept ({used:.1f} of {stats['budget'] / 2**20:.1f} MiB)")
