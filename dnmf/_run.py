"""Runs: a fit whose W, H and state live in a run store, committed and resumable.

This module maps the driver's :class:`~dnmf._engine.FitState` to and from the
manifests of :mod:`dnmf._store`: it keeps W panels in the store's rotating buffers
(:class:`StoreKeeper`), commits every ``checkpoint_every`` iterations, at the end and
on KeyboardInterrupt (:class:`Checkpointer`), decides whether an existing run may be
resumed (fingerprint of V, parameters), and restores a committed state to continue from
(:mod:`dnmf._runs` reads runs back for users: ``Run``, ``open_run``, ``resume``).
The state is committed exactly as the driver holds it, so a resumed run repeats the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import _engine, errors
from ._prepared import PreparedInput
from ._source import check_panel, equal_bounds, load_panel, panel_digest
from ._store import (
    COMMITTED,
    H_BUFFERS,
    LOCK,
    MANIFEST,
    W_BUFFERS,
    ZIP_WORKDIR_SUFFIX,
    Location,
    RunStore,
    StoredPanel,
    as_location,
    fingerprint_panels,
    locked,
    now,
    pause_point,
)
from .errors import IncompatibleRunError, StoreError

if TYPE_CHECKING:
    from ._backend import Backend
    from ._extrapolation import Extrapolation
    from ._solvers import Regularization, Solver


__all__ = [
    "Estimator", "StoreKeeper", "committed_H", "committed_panels", "fit_to_store", "lazy_W",
    "recorded_bounds", "recover_replaced",
]


class Estimator(Protocol):
    """What a fit into a run store needs of the estimator (:class:`dnmf.NMF`)."""

    def _resolve_k(self, params: dict[str, Any], W: Any, H: Any, m: int) -> int: ...

    def _solver(self, params: dict[str, Any], masked: bool = False,
                observed: float = 1.0) -> Solver: ...

    def _reg(self, params: dict[str, Any], n: int, m: int) -> Regularization: ...

    def _set_fitted(self, state: _engine.FitState, k: int, m: int,
                    prep: PreparedInput | None = None) -> None: ...


logger = logging.getLogger("dnmf")

#: Recorded parameters that may change when a run is continued.
MAY_DIFFER = ("max_iter", "checkpoint_every", "cache")


# ----------------------------------------------------------------- the keeper
class StoreKeeper:
    """W panels in the run store: each pass writes a buffer no one else points at.

    ``current`` is the buffer the W handles point to, ``committed`` the one of the
    last manifest; a pass writes the next of W0, W1, W2 (round robin) that is
    neither, so the committed W stays intact until the next commit and a retried
    task rewrites the same bytes. Round robin also keeps an older snapshot readable
    for as long as possible (at least one pass after the next commit).
    """

    #: A pass writes a buffer: one queued before the last is committed could write
    #: over the committed W, so passes run one at a time.
    queue_ahead = False

    def __init__(self, store: RunStore, run_id: str, bounds: list[tuple[int, int]],
                 backend: Backend, every: int = 1, pairs: bool = False) -> None:
        self.store = store
        self.run_id = run_id
        self.bounds = bounds
        self.backend = backend
        self.every = every
        #: extrapolation: a pass writes (W_n, W_y), W_y into the buffer and W_n into
        #: "WP" + its digit (the start W of the initialisation is one array)
        self.pairs = pairs
        self.current: str | None = None
        self.committed: str | None = None

    def target(self) -> str:
        start = W_BUFFERS.index(self.current) + 1 if self.current in W_BUFFERS else 0
        order = W_BUFFERS[start:] + W_BUFFERS[:start]
        return next(b for b in order if b not in (self.current, self.committed))

    def sinks(self, iteration: int) -> list[Any]:
        buffer = self.target()
        # Panels of an iteration that will be committed are flushed by their tasks,
        # in parallel; a commit of any other iteration flushes them itself.
        durable = iteration % self.every == 0
        sinks = [
            self.store.sink(self.run_id, buffer, i, a, b, iteration, durable)
            for i, (a, b) in enumerate(self.bounds)
        ]
        if not (self.pairs and iteration > 0):
            return sinks
        return [(self.store.sink(self.run_id, "WP" + s.buffer[1:], s.index, s.start, s.stop,
                                 iteration, durable), s) for s in sinks]

    def handles(self, outputs: list[Any], sinks: list[Any]) -> list[Any]:
        checksums = self.backend.gather(outputs)
        if isinstance(sinks[0], tuple):
            self.current = sinks[0][1].buffer
            return [tuple(self.store.panel(self.run_id, s.buffer, s.index, s.start, s.stop, c)
                          for s, c in zip(pair, sums))
                    for pair, sums in zip(sinks, checksums)]
        self.current = sinks[0].buffer
        return [
            self.store.panel(self.run_id, s.buffer, s.index, s.start, s.stop, c)
            for s, c in zip(sinks, checksums)
        ]

    def write_local(self, W: np.ndarray) -> list[StoredPanel]:
        """Write a W held by this process (custom init) into the next buffer."""
        sinks = self.sinks(0)
        return self.handles([sink.store(W[sink.start : sink.stop]) for sink in sinks], sinks)


# ----------------------------------------------------------- the checkpointer
@dataclass(frozen=True)
class Snapshot:
    """A completed iteration, as the driver held it."""

    iteration: int
    W: list[StoredPanel]
    H: np.ndarray
    loss_history: list[float]
    init_loss: float | None
    converged: bool
    stopped_by_callback: bool
    heldout_loss: float | None = None
    data_loss: float | None = None
    #: with extrapolation: (H_y, its scalars); W then holds (W_n, W_y) pairs
    extrapolation: tuple[np.ndarray, dict[str, Any]] | None = None

    @classmethod
    def of(cls, state: _engine.FitState, ex: Extrapolation | None = None) -> Snapshot:
        return cls(state.iteration, list(state.W), state.H, list(state.loss_history),
                   state.init_loss, state.converged, state.stopped_by_callback,
                   state.heldout_loss, state.data_loss,
                   None if ex is None else (ex.H_y.copy(), ex.scalars()))

    @property
    def W_iterate(self) -> list[StoredPanel]:
        """The W of the iterate (W_y of the pairs)."""
        return [p[1] if isinstance(p, tuple) else p for p in self.W]

    @property
    def W_prev(self) -> list[StoredPanel]:
        """The last accepted W-step (W_n of the pairs; the start W before any)."""
        return [p[0] if isinstance(p, tuple) else p for p in self.W]


class Checkpointer:
    """Commits snapshots: H into the free H buffer, then the manifest."""

    def __init__(self, store: RunStore, keeper: StoreKeeper, every: int,
                 header: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self.store = store
        self.keeper = keeper
        self.every = every
        self.header = header
        self.sequence = int(previous["sequence"]) if previous else 0
        self.committed_H: str | None = previous["H"]["array"] if previous else None
        self.committed_iteration = int(previous["iteration"]) if previous else -1
        self.last: Snapshot | None = None
        self._pinned: dict[str, dict[str, Any]] = {}
        #: the fit's live extrapolation state, snapshotted with every iteration
        self.extrapolation: Extrapolation | None = None
        #: called before anything of a commit is written; raises to refuse it
        self.guard: Callable[[Checkpointer, Snapshot], None] | None = None

    def _metadata(self, name: str) -> dict[str, Any]:
        """The pinned metadata of a buffer (read once: a buffer's metadata never changes)."""
        if name not in self._pinned:
            self._pinned[name] = self.store.array_metadata(name)
        return self._pinned[name]

    def on_iteration(self, state: _engine.FitState) -> None:
        self.last = Snapshot.of(state, self.extrapolation)
        if state.iteration % self.every == 0:
            self.commit(self.last)

    def commit_last(self) -> None:
        """Commit the newest completed iteration if it is not committed yet."""
        if self.last is not None and self.last.iteration > self.committed_iteration:
            self.commit(self.last)

    def commit(self, snap: Snapshot, *, complete: bool = False,
               stop_reason: str | None = None,
               balance: np.ndarray | None = None) -> dict[str, Any]:
        if self.guard is not None:
            self.guard(self, snap)
        H_buffer = next(b for b in H_BUFFERS if b != self.committed_H)
        W_iterate, W_prev = snap.W_iterate, snap.W_prev
        W_buffer = W_iterate[0].buffer
        if snap.iteration % self.every != 0:
            self.store.flush_W(self.keeper.run_id, W_buffer)
            if W_prev[0].buffer != W_buffer:
                self.store.flush_W(self.keeper.run_id, W_prev[0].buffer)
        H_checksum = self.store.write_H(self.keeper.run_id, H_buffer, snap.H)
        extra: dict[str, Any] = {}
        names = [W_buffer, H_buffer]
        if snap.extrapolation is not None:
            H_y, scalars = snap.extrapolation
            Hy_buffer = "HY" + H_buffer[1:]
            extra = {"extrapolation": {
                "W_prev": {"array": W_prev[0].buffer,
                           "checksums": [p.checksum for p in W_prev]},
                "H_y": {"array": Hy_buffer,
                        "checksum": self.store.write_H(self.keeper.run_id, Hy_buffer, H_y)},
                **scalars,
            }}
            names += [name for name in (W_prev[0].buffer, Hy_buffer) if name not in names]
        pause_point("commit:H", snap.iteration)
        body = {
            **self.header,
            "sequence": self.sequence + 1,
            "iteration": snap.iteration,
            "complete": complete,
            "stop_reason": stop_reason,
            "converged": snap.converged,
            "stopped_by_callback": snap.stopped_by_callback,
            "W": {
                "array": W_buffer,
                "checksums": [p.checksum for p in W_iterate],
            },
            "H": {"array": H_buffer, "checksum": H_checksum},
            **extra,
            "array_metadata": {name: self._metadata(name) for name in names},
            "loss_history": snap.loss_history,
            "init_loss": snap.init_loss,
            **({"heldout_loss": snap.heldout_loss} if snap.heldout_loss is not None else {}),
            "data_loss": snap.data_loss,
            **({"balance": [float(x) for x in balance]} if balance is not None else {}),
            "updated": now(),
        }
        body["_key"] = self.store.commit(body)
        self.sequence += 1
        self.committed_H = H_buffer
        self.keeper.committed = W_buffer
        self.committed_iteration = snap.iteration
        logger.debug("committed iteration %d to %s", snap.iteration, self.store.location)
        return body


# ------------------------------------------------------- fitting into a store
def _source_location(X: Any) -> str | None:
    """A path or URL from which V can be opened again, if it has one."""
    if type(X).__name__ == "Source" and hasattr(X, "location"):  # dnmf.io.Source
        return X.location
    if isinstance(X, str | os.PathLike):
        text = os.fspath(X)
        return text if "://" in text else os.path.abspath(text)
    if type(X).__module__.startswith("zarr"):
        import zarr.storage as zs

        store = getattr(X, "store", None)
        inner = getattr(X, "path", "") or ""
        if isinstance(store, zs.LocalStore):
            return os.path.join(os.path.abspath(str(store.root)), *inner.split("/"))
        if isinstance(store, zs.ZipStore) and not inner:
            return os.path.abspath(str(store.path))
        if isinstance(store, zs.FsspecStore):
            protocol = store.fs.protocol
            protocol = protocol[0] if isinstance(protocol, tuple | list) else protocol
            base = store.path.rstrip("/")
            if protocol in ("file", "local"):
                return os.path.join(base, *inner.split("/")) if inner else base
            return f"{protocol}://{base.lstrip('/')}" + (f"/{inner}" if inner else "")
    return None


def _source_record(X: Any, location: str | None) -> dict[str, Any]:
    """``storage_options`` for the run's ``source`` record: the non-secret fsspec
    options V at a URL was opened with (resume reopens it with them; secrets come
    from the environment or ``--storage-option`` then). Empty for local data."""
    from .io._remote import recorded_options

    if not location or "://" not in location:
        return {}
    given = getattr(X, "storage_options", None)
    if given is None and type(X).__module__.startswith("zarr"):
        fs = getattr(getattr(X, "store", None), "fs", None)
        given = getattr(fs, "storage_options", None)
    options = recorded_options(location, given)
    return {"storage_options": options} if options else {}


def _check_not_input(loc: Location, source_location: str | None) -> None:
    if source_location is None or loc.kind != "local" or "://" in source_location:
        return
    run, data = os.path.realpath(loc.path), os.path.realpath(source_location)
    if os.path.commonpath([run, data]) in (run, data):
        raise StoreError(
            f"out={loc.path!r} overlaps the input X at {source_location!r}: a run store "
            f"must not contain (or be inside) its data. Choose another out."
        )


def _recorded_params(params: dict[str, Any], k: int, init: str, seed: int,
                     panel_rows: int, bounds: list[tuple[int, int]],
                     extrapolate: bool = False) -> dict[str, Any]:
    """The parameters a run records; ``panel_starts`` only for panels of unequal height,
    ``extrapolate`` (resolved) only when on."""
    alpha_H = params["alpha_H"]
    starts = [a for a, _ in bounds]
    irregular = bounds != equal_bounds(bounds[-1][1], panel_rows)
    return {
        "n_components": int(k),
        "solver": params["solver"],
        "beta_loss": params["beta_loss"],
        "init": init,
        "tol": float(params["tol"]),
        "random_state": int(seed),
        "alpha_W": float(params["alpha_W"]),
        "alpha_H": alpha_H if alpha_H == "same" else float(alpha_H),
        "l1_ratio": float(params["l1_ratio"]),
        "panel_rows": int(panel_rows),
        "max_iter": int(params["max_iter"]),
        "checkpoint_every": int(params["checkpoint_every"]),
        "cache": params["cache"] if params["cache"] == "auto" else bool(params["cache"]),
        **({"panel_starts": starts} if irregular else {}),
        **({"missing": params["missing"]} if params.get("missing") is not None else {}),
        # Recorded only when on, so runs written before the parameters stay compatible.
        **({"shuffle": True} if params.get("shuffle") else {}),
        **({"extrapolate": True} if extrapolate else {}),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for group in ("fingerprint", "params"):
        before, after = old.get(group, {}), new[group]
        for key in sorted(set(before) | set(after)):
            if group == "params" and key in MAY_DIFFER:
                continue
            if key == "panel_rows" and "panel_starts" in {*before, *after}:
                continue  # with panels cut by stored entries it is only W's chunk grid
            if group == "fingerprint" and key in ("storage_chunks", "chunk_listing",
                                                   "content"):
                continue  # (compared by _check_listing and _check_content, in one line)
            if before.get(key) != after.get(key):
                label = "content of V (sampled panels)" if key == "sample" else key
                if key == "sample":
                    lines.append(f"{label}: checksum {before.get(key, {}).get('checksum')} "
                                 f"(run) vs {after[key].get('checksum')} (now)")
                elif key == "panel_starts":
                    def cut(starts: Any) -> str:
                        return ("equal panels" if starts is None else
                                f"{len(starts)} panels cut by stored entries")
                    lines.append(f"panels: {cut(before.get(key))} (run) vs "
                                 f"{cut(after.get(key))} (now)")
                else:
                    lines.append(f"{label}: {before.get(key)!r} (run) vs {after.get(key)!r} (now)")
    return lines


def _fingerprint(prep: PreparedInput, bounds: list[tuple[int, int]]) -> dict[str, Any]:
    source = prep.source
    refs = source.panel_refs(bounds)
    if source.kind in ("numpy", "sparse"):
        def run_map(task: Callable[..., str], per_panel: list[tuple[Any, ...]]) -> list[str]:
            return [task(*args) for args in per_panel]
    else:
        run_map = prep.backend.map
    return {
        "shape": [int(s) for s in source.shape],
        "dtype": source.dtype.str,
        "storage_chunks": source.row_chunk,
        "sample": fingerprint_panels(run_map, refs, source.shape),
        **_sparse_fingerprint(source, bounds),
    }


def _sparse_fingerprint(source: Any, bounds: list[tuple[int, int]]) -> dict[str, Any]:
    """For sparse V: its stored entries and where the panels cut them.

    ``panel_bounds`` hashes each panel's rows and its first and last stored entry
    (read from ``indptr`` at the panel edges), so any change in how many entries a row
    holds, anywhere in V, changes it; the sampled checksum covers the values.
    """
    if source.kind not in ("sparse", "zarr-csr"):
        return {}
    import hashlib

    rows = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
    table = np.concatenate([rows, source.offsets(rows)], axis=1)
    digest = hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest()
    return {"nnz": int(source.nnz), "panel_bounds": "sha256:" + digest}


def recorded_bounds(recorded: dict[str, Any], n: int) -> list[tuple[int, int]]:
    """A run's panels: equal ``panel_rows`` panels, or cut at its ``panel_starts``."""
    starts = recorded.get("panel_starts")
    if starts is None:
        return equal_bounds(n, int(recorded["panel_rows"]))
    edges = [int(a) for a in starts] + [n]
    return list(itertools.pairwise(edges))


def _verify_task(panel: StoredPanel) -> None:
    panel.load()


def fit_to_store(est: Estimator, X: Any, W: Any, H: Any, params: dict[str, Any], *,
                 mask: Any = None) -> Any:
    """``est.fit_transform(X, W=W, H=H)`` with ``out`` set; returns W as a Dask array."""
    params = {**params, "_mask": mask}
    loc = as_location(params["out"])
    source_location = _source_location(X)
    _check_not_input(loc, source_location)
    if loc.kind != "zip":
        store = RunStore(loc)
        manifest = _fit(store, est, X, W, H, params, source_location)
        return lazy_W(store, manifest, committed_panels(store, manifest))
    # A zip cannot be rewritten in place: run in a directory beside it, pack at exit.
    work = Location("local", loc.path + ZIP_WORKDIR_SUFFIX)
    if not params["overwrite"] and os.path.exists(loc.path) and RunStore(work).is_empty_dir():
        # (the command line may hold the run's lock in the work directory already)
        RunStore.unpack(loc.path, work.path)
    store = RunStore(work)
    failures: list[Exception] = []
    packer = _packer(loc.path)

    def pack(store: RunStore, manifest: dict[str, Any] | None) -> None:
        try:
            packer(store, manifest)
        except Exception as exc:
            failures.append(exc)
            raise

    try:
        manifest = _fit(store, est, X, W, H, params, source_location, on_exit=pack)
    finally:
        _remove_if_empty(work.path)  # only if packing emptied it
    if failures:
        raise _pack_failed(loc.path, work.path, manifest, failures[0])
    store = RunStore(loc)
    return lazy_W(store, manifest, committed_panels(store, manifest))


def repack(target: str) -> bool:
    """Pack the run kept in ``TARGET.partial`` (a pack that failed) into ``TARGET``.

    Needs no data: the run is complete or not, it is packed as committed. Returns
    False when there is nothing to pack.
    """
    work = Location("local", os.path.abspath(target) + ZIP_WORKDIR_SUFFIX)
    store = RunStore(work)
    if not store.exists():
        return False
    with locked(store):
        manifest = store.read_manifest()
        if manifest is None:
            return False
        try:
            _packer(os.path.abspath(target))(store, manifest)
        except OSError as exc:
            raise _pack_failed(target, work.path, manifest, exc) from None
    _remove_if_empty(work.path)
    return True


def _pack_failed(target: str, work: str, manifest: dict[str, Any],
                 exc: Exception) -> StoreError:
    """Packing the zip failed (a full disk): nothing is lost, the run is in ``work``."""
    import errno

    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the disk is full" if full else f"{type(exc).__name__}: {exc}"
    state = "complete" if manifest.get("complete") else "in progress"
    return StoreError(
        f"cannot write {target}: {why} while packing the run. Nothing was lost: the run "
        f"({state}, iteration {manifest['iteration']}) is kept in {work}. Free some space, "
        f"then 'dnmf resume {target}' (dnmf.resume) packs it without fitting again."
    )


def _packer(target: str) -> Callable[[RunStore, dict[str, Any] | None], None]:
    def pack(store: RunStore, manifest: dict[str, Any] | None) -> None:
        if manifest is None:
            return
        packed = None
        if os.path.exists(target):
            with contextlib.suppress(Exception):
                packed = RunStore(Location("zip", target)).read_manifest()
        if packed is None or packed["run_id"] != manifest["run_id"] or (
            packed["sequence"] != manifest["sequence"]
        ):
            ex = manifest.get("extrapolation") or {}
            extra = [ex[key]["array"] for key in ("W_prev", "H_y") if key in ex]
            store.pack(target, list(dict.fromkeys([manifest["W"]["array"],
                                                   manifest["H"]["array"], *extra])))
        # Empty the work directory but keep the lock until it is released.
        for name in os.listdir(store.location.path):
            if name != LOCK:
                path = os.path.join(store.location.path, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)

    return pack


@dataclass
class _Plan:
    """What a fit with ``out`` will do, settled before anything is written."""

    prep: PreparedInput
    k: int
    init: str
    seed: int
    params: dict[str, Any]
    fingerprint: dict[str, Any]
    W0: np.ndarray | None = None
    H0: np.ndarray | None = None
    #: the mask= the fit was given (array, SpeckledHoldout or both), for the run's header
    params_mask: Any = None
    #: extrapolate, resolved (dnmf/_extrapolation.py)
    extrapolate: bool = False
    #: the panels the fingerprint (and V's chunk listing) is taken over
    listing_bounds: list[tuple[int, int]] | None = None
    #: how long listing V's chunks took when the fit started (s)
    listing_seconds: float = 0.0

    @property
    def panel_rows(self) -> int:
        """The W chunk height: every panel is a whole number of these rows."""
        return self.prep.unit


def _plan(est: Estimator, X: Any, W: Any, H: Any, params: dict[str, Any],
          manifest: dict[str, Any] | None) -> _Plan:
    """Resolve V, its panels, k, init and the seed; "as recorded" where left open."""
    from ._store import checksum
    from ._validation import check_custom_factor, check_rank_memory, resolve_init, resolve_seed

    recorded = manifest["params"] if manifest else None
    panel_rows, layout = params["panel_rows"], None
    if manifest and recorded and panel_rows is None and params["panel_bytes"] is None:
        # Not asked for other panels: the run's own (which may not be what this
        # machine's thread count would pick).
        panel_rows = int(recorded["panel_rows"])
        layout = (recorded_bounds(recorded, int(manifest["fingerprint"]["shape"][0])),
                  panel_rows)
    prep = PreparedInput(X, params["scheduler"], panel_rows, panel_bytes=params["panel_bytes"],
                         layout=layout, regular=True, cache=params["cache"], scan=False,
                         missing=params.get("missing"), mask=params.get("_mask"))
    n, m = prep.source.shape
    if recorded and params["n_components"] == "auto":
        k = int(recorded["n_components"])
    else:
        k = est._resolve_k(params, W, H, m)
    check_rank_memory(k, n, m, w_in_memory=False)
    init = resolve_init(params["init"], k, n, m)
    if recorded and params["random_state"] is None:
        seed = int(recorded["random_state"])
    else:
        seed = resolve_seed(params["random_state"])
    plan = _Plan(prep, k, init, seed, {}, {})
    plan.params_mask = params.get("_mask")
    from ._extrapolation import resolve

    masked = params.get("missing") is not None or params.get("_mask") is not None
    if recorded and params.get("extrapolate", False) == "auto":
        # Left open: as recorded (a run made before the option, or with it off, stays plain).
        plan.extrapolate = bool(recorded.get("extrapolate", False))
    else:
        plan.extrapolate = resolve(params, k, (n, m), masked=masked)
    plan.params = _recorded_params(params, k, init, seed, prep.unit, prep.bounds,
                                   plan.extrapolate)
    custom: dict[str, Any] = {}
    if init == "custom" and (W is not None or H is not None or not manifest):
        plan.W0 = check_custom_factor(W, "W", (n, k), prep.source.dtype)
        plan.H0 = check_custom_factor(H, "H", (k, m), prep.source.dtype)
        custom = {"custom_W": checksum(plan.W0), "custom_H": checksum(plan.H0)}
    # Hash the panels the run hashed, even if other panel_rows are asked for now.
    fp_bounds = prep.bounds
    if recorded and manifest and manifest["fingerprint"]["shape"] == [n, m]:
        fp_bounds = recorded_bounds(recorded, n)
    plan.fingerprint = {**_fingerprint(prep, fp_bounds), **custom,
                        **_mask_fingerprint(prep, fp_bounds)}
    from ._chunks import chunk_listing

    # V's stored chunks as listed now (no data read): a resume and every commit
    # compare V with it (dnmf/_chunks.py).
    started = time.perf_counter()
    listing = chunk_listing(prep.source, fp_bounds)
    plan.listing_seconds = time.perf_counter() - started
    if listing is not None:
        plan.fingerprint["chunk_listing"] = listing
    plan.listing_bounds = fp_bounds
    return plan


def _mask_fingerprint(prep: PreparedInput, bounds: list[tuple[int, int]]) -> dict[str, Any]:
    """What identifies a masked fit's observed entries: missing=, the mask, the hold-out.

    An explicit mask is hashed like V (the same sampled panels), so a resume with
    another mask is refused.
    """
    from ._mask import mask_refs

    spec = prep.spec
    if spec is None:
        return {}
    sample = None
    if spec.explicit:
        refs = mask_refs(prep.mask_array, bounds)
        if isinstance(prep.mask_array, np.ndarray):
            def run_map(task: Callable[..., str], per_panel: list[tuple[Any, ...]]) -> list[str]:
                return [task(*args) for args in per_panel]
        else:
            run_map = prep.backend.map
        sample = fingerprint_panels(run_map, refs, prep.source.shape)
    return {"observed": spec.identity(sample)}


def _check_compatible(loc: Location, manifest: dict[str, Any], plan: _Plan) -> None:
    old_fp = dict(manifest["fingerprint"])
    if not any(key.startswith("custom_") for key in plan.fingerprint):
        old_fp = {key: v for key, v in old_fp.items() if not key.startswith("custom_")}
    if "nnz" not in old_fp:  # a sparse run recorded before these keys existed
        plan.fingerprint = {key: v for key, v in plan.fingerprint.items()
                            if key not in ("nnz", "panel_bounds")}
    diffs = _differences({**manifest, "fingerprint": old_fp},
                         {"fingerprint": plan.fingerprint, "params": plan.params})
    if diffs:
        raise IncompatibleRunError(
            f"out={loc.path!r} holds a run for other data or other parameters; nothing "
            f"was changed. Differences:\n  " + "\n  ".join(diffs)
            + "\nUse another out, or overwrite=True to discard that run."
        )
    # The same V as far as its shape and sampled panels tell, but a chunk elsewhere
    # deleted, truncated or added since the run started: damage, in one line.
    _check_listing(plan, old_fp.get("chunk_listing"),
                   now=plan.fingerprint.get("chunk_listing"),
                   what=f"V changed since the run at {loc.path!r} started",
                   remedy=f"Nothing was changed. Restore V as it was when the run "
                          f"started, then dnmf resume {loc.path} (dnmf.resume); or "
                          f"start again with overwrite=True.")


#: Hex digits of each panel's SHA-256 kept in the manifest (the whole digest of V is
#: the SHA-256 of the panels' full digests): enough to name the panel that changed.
PANEL_DIGEST_CHARS = 16


def _content_record(digests: list[str]) -> dict[str, Any]:
    """The fingerprint's record of every byte of V: per panel, and as one checksum."""
    combined = hashlib.sha256("".join(digests).encode()).hexdigest()
    return {"checksum": "sha256:" + combined,
            "panels": [d[:PANEL_DIGEST_CHARS] for d in digests]}


def _content_task(ref: Any, start: int, check: bool) -> str:
    """One panel of V on resume: its values checked (``check``), its SHA-256."""
    V = load_panel(ref)
    if check:
        check_panel(V, start)
    return panel_digest(V)


def _check_content(loc: Location, manifest: dict[str, Any], plan: _Plan) -> None:
    """On resume: every byte of V as the run read it when it started (one read of V).

    The sampled panels and the chunk listing (:func:`_check_compatible`) see a
    different V, a deleted or resized chunk; this sees a value changed anywhere, to
    other valid numbers too. Values no fit may use (NaN, ±inf, negative) are named
    first, as a pass would. Runs recorded before this check are not digested.
    """
    recorded = manifest["fingerprint"].get("content")
    if recorded is None:
        return
    prep = plan.prep
    bounds = plan.listing_bounds or prep.bounds
    refs = prep.source.panel_refs(bounds)
    check = prep.spec is None
    tasks = [(ref, a, check) for ref, (a, _) in zip(refs, bounds)]
    if prep.source.kind in ("numpy", "sparse"):
        digests = [_content_task(*args) for args in tasks]  # V is here: no shipping it
    else:
        with prep.backend.small_limits():
            digests = prep.backend.map(_content_task, tasks)
    if _content_record(digests) == recorded:
        return
    old = recorded.get("panels", [])
    changed = [i for i, d in enumerate(digests)
               if i >= len(old) or d[:PANEL_DIGEST_CHARS] != old[i]]
    first = changed[0] if changed else 0
    a, b = bounds[first]
    raise IncompatibleRunError(
        f"V changed since the run at {loc.path!r} started: rows {a}-{b - 1} (panel "
        f"{first + 1} of {len(bounds)}; {max(len(changed), 1)} panel(s) in all) hold other "
        f"values than the run read (their SHA-256 differs). Nothing was changed. Restore V "
        f"as it was when the run started, then dnmf resume {loc.path} (dnmf.resume); or "
        f"start again with overwrite=True."
    )


def _check_listing(plan: _Plan, recorded: dict[str, Any] | None, *, what: str,
                   remedy: str, now: dict[str, Any] | None = None) -> None:
    """V's stored chunks (``now``, or listed now) against ``recorded`` (one error if
    they differ)."""
    from ._chunks import check_listing

    if recorded is not None and plan.listing_bounds is not None:
        check_listing(plan.prep.source, plan.listing_bounds, recorded, what=what,
                      remedy=remedy, allow_nan=plan.params.get("missing") == "nan",
                      now=now)


#: Before a commit, V's chunks are listed again only if the listing costs at most this
#: share of the time since the last one (a listing of ~10⁶ chunks on an object store
#: takes ~1,000 requests); resume always lists.
LISTING_SHARE = 0.05
#: ... and listings shorter than this are always made again (local V, most runs).
LISTING_FLOOR = 0.1


def _listing_guard(plan: _Plan, loc: Location) -> Callable[[Checkpointer, Snapshot], None]:
    """Before each commit: V's stored chunks still those listed when the fit started.

    Skipped (with a debug log) where listing again would take longer than
    :data:`LISTING_FLOOR` and more than :data:`LISTING_SHARE` of the time since the
    last listing, so a run on a large object store spends at most ~5 % of its time on
    it; every resume still checks.
    """
    recorded = plan.fingerprint.get("chunk_listing")
    last = [time.perf_counter()]

    def guard(ckpt: Checkpointer, snap: Snapshot) -> None:
        if recorded is None:
            return
        allowed = max(LISTING_FLOOR, LISTING_SHARE * (time.perf_counter() - last[0]))
        if plan.listing_seconds > allowed:
            logger.debug("V's chunk listing (%.2f s) skipped before commit %d",
                         plan.listing_seconds, snap.iteration)
            return
        kept = (f"iteration {ckpt.committed_iteration} is committed and intact"
                if ckpt.committed_iteration >= 0 else "nothing was committed yet")
        started = time.perf_counter()
        _check_listing(plan, recorded, what=f"V changed while the fit into {loc.path!r} ran",
                       remedy=f"Nothing of iteration {snap.iteration} was committed; {kept}. "
                              f"Restore V as it was, then dnmf resume {loc.path} "
                              f"(dnmf.resume); or start again with overwrite=True.")
        plan.listing_seconds = time.perf_counter() - started
        last[0] = time.perf_counter()

    return guard


def _reopen(store: RunStore, manifest: dict[str, Any], plan: _Plan,
            every: int) -> tuple[_engine.FitState, StoreKeeper, dict[str, Any]]:
    """The committed state of a compatible run, verified, and its keeper."""
    prep = plan.prep
    n, m = prep.source.shape
    run_id = manifest["run_id"]
    store.ensure_buffers(run_id, n=n, m=m, k=plan.k, panel_rows=plan.panel_rows,
                         dtype=prep.source.dtype, extrapolated=plan.extrapolate)
    prep.summary = _engine.DataSummary(**manifest["summary"])
    keeper = StoreKeeper(store, run_id, prep.bounds, prep.backend, every,
                         pairs=plan.extrapolate)
    state = _restore(store, manifest, keeper)
    panels = [p for pair in state.W for p in (pair if isinstance(pair, tuple) else (pair,))]
    prep.backend.map(_verify_task, [(panel,) for panel in panels])
    header = {key: manifest[key]
              for key in ("run_id", "created", "summary", "source", "rng", "dnmf_version")}
    return state, keeper, header


def _start(store: RunStore, plan: _Plan, every: int, source_location: str | None
           ) -> tuple[_engine.FitState, StoreKeeper, dict[str, Any]]:
    """Validate V, lay the store out and write the initial W (by the tasks) and H."""
    from . import __version__
    from ._validation import check_beta_data

    prep = plan.prep
    source = prep.source
    n, m = source.shape
    digests: list[str] = []
    prep.summary = prep.scan(digests)
    plan.fingerprint["content"] = _content_record(digests)
    check_beta_data(plan.params["beta_loss"], prep.summary.size, prep.summary.nnz)
    if store.is_run() or store.is_unfinished_start():
        store.wipe()  # a run killed before its first commit: nothing to keep
    run_id = store.create(n=n, m=m, k=plan.k, panel_rows=plan.panel_rows, dtype=source.dtype,
                          extrapolated=plan.extrapolate)
    keeper = StoreKeeper(store, run_id, prep.bounds, prep.backend, every,
                         pairs=plan.extrapolate)
    if plan.W0 is not None and plan.H0 is not None:
        W_handles, H0 = keeper.write_local(plan.W0), plan.H0
    else:
        W_handles, H0 = _engine.initialize(
            prep.backend, source, prep.init_refs, prep.bounds, init=plan.init, k=plan.k,
            seed=plan.seed, summary=prep.summary, keeper=keeper,
        )
    summary = prep.summary
    from ._mask import split_mask

    mask_array = split_mask(plan.params_mask)[0]
    header = {
        "run_id": run_id,
        "created": now(),
        "summary": {"norm_sq": summary.norm_sq, "total": summary.total,
                    "size": summary.size, "nnz": summary.nnz,
                    **({"n_heldout": summary.n_heldout} if summary.n_heldout else {})},
        "source": {"kind": source.kind, "location": source_location,
                   **({"mask_location": _source_location(mask_array)}
                      if mask_array is not None and _source_location(mask_array) else {})},
        "rng": {"seed": plan.seed, "streams": "default_rng([seed, stream, row block])"},
        "dnmf_version": __version__,
    }
    return _engine.FitState(W=W_handles, H=H0), keeper, header


def _fit(
    store: RunStore,
    est: Estimator,
    X: Any,
    W: Any,
    H: Any,
    params: dict[str, Any],
    source_location: str | None,
    on_exit: Callable[[RunStore, dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Start, resume or read back the run in ``store``; return its final manifest."""
    loc = store.location
    if (store.exists() and not store.is_run() and not store.is_empty_dir()
            and not store.is_unfinished_start()):
        if not params["overwrite"] and any(
                store.read_bytes(key) is not None for key in (MANIFEST, COMMITTED)):
            store.read_manifest()  # a run whose group metadata was lost: say so
        if not params["overwrite"]:
            raise IncompatibleRunError(
                f"out={loc.path!r} holds data that is not a dnmf run; refusing to touch "
                f"it. Choose another out, or pass overwrite=True to replace its contents."
            )
    made_here = loc.kind == "local" and not os.path.exists(loc.path)
    try:
        return _fit_locked(store, est, X, W, H, params, source_location, on_exit)
    finally:
        if made_here:
            # A fit that fails before its first commit leaves no empty directory.
            _remove_if_empty(loc.path)


def _remove_if_empty(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)  # fails unless empty: a run that committed stays


def _fit_locked(
    store: RunStore, est: Estimator, X: Any, W: Any, H: Any, params: dict[str, Any],
    source_location: str | None,
    on_exit: Callable[[RunStore, dict[str, Any] | None], None] | None,
) -> dict[str, Any]:
    """:func:`_fit` once the store is known to be a run, empty, or to be overwritten."""
    loc = store.location
    every = params["checkpoint_every"]
    with locked(store):
        try:
            store.remove_leftovers()
            if params["overwrite"] and store.exists():
                store.wipe()
            manifest = store.read_manifest() if store.is_run() else None
            plan = _plan(est, X, W, H, params, manifest)
            if manifest:
                _check_compatible(loc, manifest, plan)
                _check_content(loc, manifest, plan)
                state, keeper, header = _reopen(store, manifest, plan, every)
                logger.info("resuming the run at %s from iteration %d%s", loc,
                            state.iteration, " (complete)" if manifest["complete"] else "")
            else:
                state, keeper, header = _start(store, plan, every, source_location)
                header["source"] = {**header["source"], **_source_record(X, source_location)}
            header = {**header, "params": plan.params, "fingerprint": plan.fingerprint}
            ckpt = Checkpointer(store, keeper, every, header, manifest)
            ckpt.guard = _listing_guard(plan, loc)
            if plan.extrapolate:
                ckpt.extrapolation = _restored_extrapolation(store, manifest, params, state)
            final = manifest or ckpt.commit(Snapshot.of(state, ckpt.extrapolation))
            final = _iterate(plan.prep, est._solver(params, masked=plan.prep.spec is not None,
                                                    seed=plan.seed,
                                                    observed=plan.prep.observed_share),
                             est._reg(params, *plan.prep.source.shape), state, ckpt, params,
                             final)
            if final.get("heldout_loss") is not None and state.heldout_loss is None:
                state.heldout_loss = float(final["heldout_loss"])
            est._set_fitted(_balanced_view(state, final), plan.k,
                            plan.prep.source.shape[1], plan.prep)
            return final
        except OSError as exc:
            if isinstance(exc, StoreError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _run_disk_full(store, exc) from None
        finally:
            if on_exit is not None:
                with contextlib.suppress(Exception):
                    on_exit(store, store.read_manifest() if store.is_run() else None)


def _run_disk_full(store: RunStore, exc: OSError) -> StoreError:
    """A full disk while writing the run: where, what is kept, and how to go on."""
    try:
        manifest = store.read_manifest()
    except StoreError:
        manifest = None
    kept = (f"iteration {manifest['iteration']} is committed and intact" if manifest
            else "nothing was committed yet")
    return StoreError(
        f"cannot write the run at {store.location}: the disk is full ({exc.strerror}: "
        f"{exc.filename or store.location}); {kept}. Free some space, then continue with "
        f"dnmf resume {store.location} (dnmf.resume)."
    )


def _iterate(prep: PreparedInput, solver: Any, reg: Any, state: _engine.FitState,
             ckpt: Checkpointer, params: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """Iterate from ``state`` to the end, committing on the way; the final manifest."""
    max_iter = params["max_iter"]
    lagged = not solver.exact_loss_after_update
    recorded = (final.get("params") or {}).get("max_iter")
    if (final.get("complete") and state.stopped_by_callback and not state.converged
            and recorded is not None and max_iter > max(recorded, state.iteration)):
        # More iterations than the run had were asked for: a run its callback stopped
        # continues from where it was. (A converged run stays converged: its tol held.)
        state.stopped_by_callback = False
    finished = state.converged or state.stopped_by_callback or state.iteration >= max_iter
    if state.iteration > max_iter and not (state.converged or state.stopped_by_callback):
        raise IncompatibleRunError(
            f"max_iter={max_iter} but the run at {str(ckpt.store.location)!r} is already "
            f"at iteration {state.iteration}; pass max_iter >= {state.iteration} to "
            f"continue it."
        )
    if final.get("complete") and finished:
        state.done = True
        return final
    if finished and (state.converged or state.stopped_by_callback or not lagged):
        # Stopped by the last commit's own iteration; only the final commit is missing.
        state.done = True
        if not (state.converged or state.stopped_by_callback):
            warnings.warn(
                f"Maximum number of iterations {max_iter} reached. Increase it to "
                f"improve convergence (the relative decrease of the objective was still "
                f"above tol={params['tol']}; or raise tol).", errors.ConvergenceWarning,
                stacklevel=4,
            )
    else:
        from ._progress import Progress

        try:
            with Progress(params["verbose"], max_iter, prep.backend) as progress:
                _engine.iterate(
                    prep.backend, prep.source, prep.refs, solver, reg, state,
                    max_iter=max_iter, tol=params["tol"], norm_sq=prep.summary.norm_sq,
                    total=prep.summary.total, keeper=ckpt.keeper, callback=params["callback"],
                    on_iteration=ckpt.on_iteration, progress=progress.update,
                    extrapolation=ckpt.extrapolation,
                )
        except KeyboardInterrupt:
            ckpt.commit_last()
            raise
    reason = ("converged" if state.converged else
              "callback" if state.stopped_by_callback else "max_iter")
    # The iterate is committed as it is, and the balancing scale beside it: results
    # read from the run are balanced, a later extension continues from the iterate.
    snap = Snapshot.of(state, ckpt.extrapolation)
    scale = None
    if _engine.balances(solver, reg):
        iterate = dataclasses.replace(state, W=snap.W_iterate)
        scale = _engine.balance_scale(prep.backend, iterate)
    return ckpt.commit(snap, complete=True, stop_reason=reason, balance=scale)


def _restore(store: RunStore, manifest: dict[str, Any],
             keeper: StoreKeeper) -> _engine.FitState:
    """The FitState a manifest recorded, with W handles that verify on load."""
    run_id = manifest["run_id"]
    buffer = manifest["W"]["array"]
    checksums = manifest["W"]["checksums"]
    if len(checksums) != len(keeper.bounds):
        raise IncompatibleRunError(
            f"the run at {str(store.location)!r} has {len(checksums)} W panels, but the "
            f"data is split into {len(keeper.bounds)}."
        )
    store.verify_arrays(manifest)
    W: list[Any] = [store.panel(run_id, buffer, i, a, b, c)
                    for i, ((a, b), c) in enumerate(zip(keeper.bounds, checksums))]
    ex = manifest.get("extrapolation")
    if ex is not None and ex["W_prev"]["array"] != buffer:
        W = [(store.panel(run_id, ex["W_prev"]["array"], i, a, b, c), w)
             for i, ((a, b), c, w) in enumerate(zip(keeper.bounds, ex["W_prev"]["checksums"],
                                                    W))]
    H = store.read_H(run_id, manifest["H"]["array"], manifest["H"]["checksum"])
    keeper.current = keeper.committed = buffer
    return _engine.FitState(
        W=W, H=H, iteration=int(manifest["iteration"]),
        loss_history=[float(x) for x in manifest["loss_history"]],
        init_loss=None if manifest["init_loss"] is None else float(manifest["init_loss"]),
        converged=bool(manifest.get("converged")),
        stopped_by_callback=bool(manifest.get("stopped_by_callback")),
        heldout_loss=manifest.get("heldout_loss"),
        data_loss=_optional_float(manifest.get("data_loss")),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _restored_extrapolation(store: RunStore, manifest: dict[str, Any] | None,
                            params: dict[str, Any], state: _engine.FitState) -> Extrapolation:
    """The extrapolation state of a new run (from its start H) or of the manifest's."""
    from ._extrapolation import Extrapolation

    recorded = None if manifest is None else manifest.get("extrapolation")
    if recorded is None:
        return Extrapolation.start(params["solver"], state.H)
    H_y = store.read_H(manifest["run_id"], recorded["H_y"]["array"], recorded["H_y"]["checksum"])
    return Extrapolation.restore(params["solver"], state.H, H_y, recorded)


# ------------------------------------------------ a replacement killed mid-way
def recover_replaced(out: Any, input_path: Any = None) -> list[str]:
    """Finish or undo what a ``dnmf fit --overwrite`` killed mid-way left beside ``out``.

    The command moves the run it replaces to ``.RUN.replaced-PID`` (and a converted
    input it replaces to ``.INPUT.replaced-PID``) until the new run commits, and puts
    them back if it fails. Killed (SIGKILL, a crash), it can do neither. For each
    such copy whose process is gone: if the run at ``out`` has committed (the new one
    won) the copy is removed; otherwise the new run's debris is removed and the old
    run (and its input) put back. Nothing is done while a live process holds the
    run's lock. Returns one line per action, to tell the user.
    """
    from ._store import _pid_alive

    loc = as_location(out)
    if loc.kind != "local":
        return []
    path = loc.path
    if RunStore(loc).exists() and _live_writer(RunStore(loc)):
        return []
    done: list[str] = []
    restored: bool | None = None
    for aside, pid in _asides(path):
        if _pid_alive(pid, None):
            continue
        if _committed(path):
            shutil.rmtree(aside, ignore_errors=True)
            restored = False
            done.append(f"finished replacing the run at {path}: the new run of "
                        f"'dnmf fit --overwrite' (process {pid}, which is gone) had "
                        f"committed; removed the old run kept at {aside}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            os.replace(aside, path)
            _drop_lock_of(path, pid)  # it moved aside with the run it held
            restored = True
            done.append(f"put back the run at {path}: 'dnmf fit --overwrite' (process "
                        f"{pid}, which is gone) was stopped before its new run committed")
    if input_path is not None and "://" not in os.fspath(input_path):
        target = os.path.abspath(os.fspath(input_path))
        for aside, pid in _asides(target):
            if _pid_alive(pid, None):
                continue
            if restored is False or (restored is None and _committed(path)
                                     and _reads(path, target)):
                shutil.rmtree(aside, ignore_errors=True)
                done.append(f"removed the replaced conversion {aside}")
            else:
                shutil.rmtree(target, ignore_errors=True)
                os.replace(aside, target)
                done.append(f"put back the converted input {target} of that run")
    return done


def _drop_lock_of(path: str, pid: int) -> None:
    """Remove the lock at ``path`` if the (gone) process ``pid`` held it."""
    import json

    lock = os.path.join(path, LOCK)
    try:
        with open(lock) as f:
            holder = json.load(f)
        if isinstance(holder, dict) and holder.get("pid") == pid:
            os.unlink(lock)
    except (OSError, ValueError):
        pass


def _asides(path: str) -> list[tuple[str, int]]:
    import re

    parent, name = os.path.split(path.rstrip("/"))
    pattern = re.compile(rf"\.{re.escape(name)}\.replaced-(\d+)")
    try:
        entries = sorted(os.listdir(parent or "."))
    except OSError:
        return []
    return [(os.path.join(parent, e), int(found[1])) for e in entries
            if (found := pattern.fullmatch(e))]


def _committed(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, key)) for key in (MANIFEST, COMMITTED))


def _reads(path: str, target: str) -> bool:
    """The committed run at ``path`` reads its V from ``target``."""
    try:
        manifest = RunStore(as_location(path)).read_manifest() or {}
    except StoreError:
        return False
    return (manifest.get("source") or {}).get("location") == target


def _live_writer(store: RunStore) -> bool:
    from ._store import RunLock

    lock = RunLock(store)
    try:
        info = lock.holder()
        return bool(info) and lock._alive(info)
    except Exception:
        return True  # a damaged lock: leave everything as it is


# ------------------------------------------------------------------ reading
def _load(panel: StoredPanel) -> np.ndarray:
    return panel.load()


def committed_panels(store: RunStore, manifest: dict[str, Any]) -> list[StoredPanel]:
    """The panels of the committed W buffer, each verified against its checksum on load."""
    bounds = recorded_bounds(manifest["params"], int(manifest["fingerprint"]["shape"][0]))
    return [
        store.panel(manifest["run_id"], manifest["W"]["array"], i, a, b, c)
        for i, ((a, b), c) in enumerate(zip(bounds, manifest["W"]["checksums"]))
    ]


def _balanced_view(state: _engine.FitState, manifest: dict[str, Any]) -> _engine.FitState:
    """``state`` with H balanced by the manifest's scale (the result; W stays a handle)."""
    scale = manifest.get("balance")
    if scale is None:
        return state
    return dataclasses.replace(state, H=_engine.balanced_H(state.H, scale))


def committed_H(store: RunStore, manifest: dict[str, Any]) -> np.ndarray:
    """The committed H as a result: balanced by the manifest's scale, if it has one."""
    H = store.read_H(manifest["run_id"], manifest["H"]["array"], manifest["H"]["checksum"])
    scale = manifest.get("balance")
    return H if scale is None else _engine.balanced_H(H, scale)


def lazy_W(store: RunStore, manifest: dict[str, Any], panels: list[StoredPanel]) -> Any:
    """The committed W as a Dask array that reads (and verifies) one panel per chunk.

    Balanced by the manifest's scale when the run has one (the result of a finished
    HALS or ALS fit), as :func:`committed_H` is.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    k = int(manifest["params"]["n_components"])
    name = f"dnmf-run-W-{manifest['run_id']}-{manifest['sequence']}"
    graph: dict[Any, Any] = {(name, i, 0): (_load, panel) for i, panel in enumerate(panels)}
    chunks = (tuple(p.stop - p.start for p in panels), (k,))
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=())
    W = da.Array(hlg, name, chunks=chunks, dtype=np.dtype(manifest["fingerprint"]["dtype"]))
    scale = manifest.get("balance")
    return W if scale is None else _engine.balanced_W(W, scale)
