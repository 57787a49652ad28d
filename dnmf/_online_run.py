"""Online state in a run store: commits and bit-for-bit resume of a MiniBatchNMF.

The online state is H, the running sums A (numerator) and B (denominator) of H's
update, W (for ``fit``: every row keeps its last W), the step count and the state of
the stopping rule (the smoothed cost, its minimum, the steps without improvement).
The only randomness of a fit is its start, drawn from the recorded seed; no random
numbers are drawn after it, so the seed is the whole RNG state.

Layout and commit protocol are :mod:`dnmf._store`'s: the arrays go to the buffers
no manifest points at (``W0``/``W1``, ``H0``/``H1`` and ``A0``/``A1``, ``B0``/``B1``),
are flushed, and then one manifest naming them, with their checksums, becomes
visible atomically. Manifest keys of an online run: ``kind`` ("online" for ``fit``,
"online-stream" for ``partial_fit``), ``iteration`` (= steps done), ``online`` (the
stopping rule's state), ``arrays`` (buffer and checksum per array), ``params``,
``fingerprint`` (of V, for ``fit``), ``rng``, ``complete``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

from ._store import RunStore, as_location, locked, now, pause_point, zarr_store
from .errors import IncompatibleRunError, InvalidParameterError

__all__ = ["commit_stream", "fit_online_to_store", "open_stream"]

logger = logging.getLogger("dnmf")

#: Parameters that may change between a run and its resume.
MAY_DIFFER = ("max_iter", "checkpoint_every", "verbose", "scheduler", "out", "overwrite",
              "random_state")
EXTRA_BUFFERS = ("A0", "A1", "B0", "B1")


def _recorded_params(est: Any) -> dict[str, Any]:
    params = est.get_params(deep=False)
    recorded: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        if key in ("scheduler", "out", "overwrite"):
            continue
        if isinstance(value, np.random.RandomState | np.random.Generator):
            value = "<random state>"
        elif isinstance(value, np.generic):
            value = value.item()
        recorded[key] = value
    return recorded


#: Parameters added since runs were first written, with the value older runs had.
ADDED = {"in_flight": 4, "forget_per": "pass"}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    old = {**ADDED, **old}
    return [f"{key}: {old.get(key)!r} (run) vs {new.get(key)!r} (now)" for key in keys
            if key not in MAY_DIFFER and old.get(key) != new.get(key)]


def _store_for(est: Any) -> RunStore:
    loc = as_location(est.out)
    if loc.kind == "zip":
        raise InvalidParameterError(
            f"out={loc.path!r}: an online run is committed many times, and a .zip is not "
            f"rewritable. Give a directory (or an fsspec URL) for out."
        )
    store = RunStore(loc)
    if (store.exists() and not store.is_run() and not store.is_empty_dir()
            and not store.is_unfinished_start() and not est.overwrite):
        raise IncompatibleRunError(
            f"out={loc.path!r} holds data that is not a dnmf run; refusing to touch it. "
            f"Choose another out, or pass overwrite=True to replace its contents."
        )
    return store


def _create(store: RunStore, *, n: int | None, m: int, k: int, rows: int,
            dtype: np.dtype) -> str:
    import zarr

    run_id = store.create(n=max(n or 1, 1), m=m, k=k, panel_rows=rows, dtype=dtype)
    group = zarr.open_group(store=zarr_store(store.location), mode="r+")
    h_cols = max(1, min(m, (64 * 2**20) // max(1, k * np.dtype(dtype).itemsize)))
    for name in EXTRA_BUFFERS:
        group.create_array(name, shape=(k, m), chunks=(k, h_cols), dtype=dtype,
                           compressors=None, fill_value=0,
                           attributes={"dnmf_run_id": run_id})
    return run_id


def _write(store: RunStore, run_id: str, manifest: dict[str, Any] | None,
           arrays: dict[str, np.ndarray]) -> dict[str, dict[str, str]]:
    """Write each array to the buffer the committed manifest does not point at."""
    committed = (manifest or {}).get("arrays", {})
    out = {}
    for name, value in arrays.items():
        current = committed.get(name, {}).get("array")
        target = f"{name}1" if current == f"{name}0" else f"{name}0"
        out[name] = {"array": target, "checksum": store.write_H(run_id, target, value)}
    return out


def _read(store: RunStore, run_id: str, manifest: dict[str, Any], name: str) -> np.ndarray:
    entry = manifest["arrays"][name]
    return store.read_H(run_id, entry["array"], entry["checksum"])


class _Committer:
    """Commits of one online run; ``manifest`` is the last one made visible."""

    def __init__(self, store: RunStore, run_id: str, header: dict[str, Any],
                 manifest: dict[str, Any] | None) -> None:
        self.store = store
        self.run_id = run_id
        self.header = header
        self.manifest = manifest
        self.sequence = int(manifest["sequence"]) if manifest else 0
        #: (step, smoothed batch cost) at every commit: what ``dnmf plot --loss`` draws
        self.history: list[list[Any]] = [list(x) for x in (manifest or {}).get("history", [])]

    def commit(self, state: dict[str, Any], *, complete: bool = False,
               result: dict[str, Any] | None = None) -> dict[str, Any]:
        arrays = {"H": state["H"], "A": state["A"], "B": state["B"]}
        if state.get("W") is not None:
            arrays["W"] = state["W"]
        written = _write(self.store, self.run_id, self.manifest, arrays)
        pause_point("online:written", int(state["step"]))
        self.sequence += 1
        step = int(state["step"])
        cost = state.get("ewa_cost")
        if cost is not None and (not self.history or self.history[-1][0] != step):
            self.history.append([step, float(cost)])
        body = {
            **self.header,
            "sequence": self.sequence,
            "iteration": step,
            "committed": now(),
            "complete": bool(complete),
            "arrays": written,
            "array_metadata": {entry["array"]: self.store.array_metadata(entry["array"])
                               for entry in written.values()},
            "history": list(self.history),
            **({"result": result} if result is not None else {}),
            "online": {
                "step": int(state["step"]),
                "ewa_cost": state.get("ewa_cost"),
                "ewa_cost_min": state.get("ewa_cost_min"),
                "no_improvement": int(state.get("no_improvement", 0)),
                "stopped": bool(state.get("stopped", False)),
                # rows 0 : rows validated as read, and their sum (None: X in memory)
                "scan": state.get("scan"),
            },
        }
        self.store.commit(body)
        self.manifest = body
        return body


def _check(store: RunStore, manifest: dict[str, Any], kind: str, params: dict[str, Any],
           fingerprint: dict[str, Any] | None) -> None:
    loc = store.location.path
    if manifest.get("kind") != kind:
        what = manifest.get("kind") or "an NMF fit"
        raise IncompatibleRunError(
            f"out={loc!r} holds a run of {what!r}, not of {kind!r}; nothing was changed. "
            f"Use another out, or overwrite=True to discard that run."
        )
    diffs = _differences(manifest.get("params", {}), params)
    if fingerprint is not None:
        from ._run import _differences as data_differences

        # V's shape, dtype and sampled content, worded as for NMF runs (the chunk
        # listing is compared on its own, in one line: _check_listing below).
        diffs += data_differences({"fingerprint": manifest.get("fingerprint", {})},
                                  {"fingerprint": fingerprint, "params": {}})
    if diffs:
        raise IncompatibleRunError(
            f"out={loc!r} holds a run for other data or other parameters; nothing was "
            f"changed. Differences:\n  " + "\n  ".join(diffs)
            + "\nUse another out, or overwrite=True to discard that run."
        )


def _restore_state(store: RunStore, manifest: dict[str, Any], with_W: bool) -> dict[str, Any]:
    run_id = manifest["run_id"]
    online = manifest["online"]
    state = {
        "H": _read(store, run_id, manifest, "H"),
        "A": _read(store, run_id, manifest, "A"),
        "B": _read(store, run_id, manifest, "B"),
        "W": _read(store, run_id, manifest, "W") if with_W else None,
        "step": int(online["step"]),
        "ewa_cost": online["ewa_cost"],
        "ewa_cost_min": online["ewa_cost_min"],
        "no_improvement": int(online["no_improvement"]),
        "stopped": bool(online["stopped"]),
        # runs before the batches were validated as read: check the rows again
        "scan": online.get("scan", {"rows": 0, "total": 0.0}),
    }
    return state


def fit_online_to_store(est: Any, X: Any, source: Any, X_mem: Any, prep: Any, batches: Any,
                        W: Any, H: Any, finish: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``est``'s fit with its state committed to ``est.out``: (final state, result).

    A compatible unfinished run there is resumed from its last commit; a complete one
    is read back without computing. ``finish(state)`` makes the result of a fit (the
    final W, ``n_iter``, ``reconstruction_err``), committed with the last state.
    """
    from . import __version__
    from ._chunks import check_listing, chunk_listing
    from ._run import _check_not_input, _fingerprint, _source_location, _source_record

    store = _store_for(est)
    location = _source_location(X)
    _check_not_input(store.location, location)
    n, m = source.shape
    every = est.checkpoint_every
    made_here = store.local and not os.path.exists(store.location.path)
    try:
        with locked(store):
            store.remove_leftovers()
            if est.overwrite and store.exists():
                store.wipe()
            manifest = store.read_manifest() if store.is_run() else None
            params = _recorded_params(est)
            fingerprint = _fingerprint(prep, prep.bounds)
            # V's stored chunks (a listing, no data read), compared on resume and before
            # every commit: a chunk deleted, truncated or added reads as other numbers.
            listing = chunk_listing(prep.source, prep.bounds)
            if listing is not None:
                fingerprint["chunk_listing"] = listing

            def check_v(recorded: dict[str, Any] | None, what: str, remedy: str) -> None:
                if recorded is not None:
                    check_listing(prep.source, prep.bounds, recorded, what=what,
                                  remedy=remedy)
            bounds, _ = est._plan(n)
            if every is None:
                every = len(bounds)
            if manifest is not None:
                store.verify_arrays(manifest)
                check_v(manifest.get("fingerprint", {}).get("chunk_listing"),
                        f"V changed since the online run at {store.location.path!r} started",
                        f"Nothing was changed. Restore V as it was when the run started, "
                        f"then dnmf resume {store.location.path} (dnmf.resume); or start "
                        f"again with overwrite=True.")
                _check(store, manifest, "online", params, fingerprint)
                state = _restore_state(store, manifest, with_W=True)
                if X_mem is not None:
                    state["scan"] = None  # validated whole on entry
                est._n_components = int(state["H"].shape[0])
                seed = manifest["rng"]["seed"]  # None: init="custom" drew no seed
                est._seed = None if seed is None else int(seed)
                # the parameters that may differ (max_iter, ...) are this fit's from now on
                committer = _Committer(store, manifest["run_id"],
                                       {**_header(manifest), "params": params}, manifest)
                logger.info("resuming the online run at %s from step %d", store.location,
                            state["step"])
                if manifest["complete"] and (state["stopped"] or
                                             state["step"] >= est._plan(n)[1]):
                    result = manifest.get("result")
                    if result is None:  # committed before results were recorded
                        result = finish(state)
                    else:
                        result = {**result, "W": state["W"]}
                    return state, result  # finished: read back, nothing to compute
                # else a larger max_iter continues a run its max_iter stopped
            else:
                if store.is_run() or store.is_unfinished_start():
                    store.wipe()  # killed before its first commit: nothing to keep
                W0, H0 = est._start(source, X_mem, W, H, prep)
                state = est._new_state(H0, W0)
                k = int(H0.shape[0])
                rows = max(1, min(n, (8 * 2**20) // max(1, k * source.dtype.itemsize)))
                run_id = _create(store, n=n, m=m, k=k, rows=rows, dtype=source.dtype)
                header = {
                    "run_id": run_id, "created": now(), "kind": "online",
                    "params": params, "fingerprint": fingerprint,
                    "source": {"kind": source.kind, "location": location,
                               **_source_record(X, location)},
                    "rng": {"seed": getattr(est, "_seed", None),
                            "draws_after_start": 0},
                    "dnmf_version": __version__,
                }
                committer = _Committer(store, run_id, header, None)
                committer.commit(state)

            def guarded(current: dict[str, Any], **kwargs: Any) -> None:
                """A commit, once V's stored chunks are still those the run listed."""
                last = committer.manifest["iteration"] if committer.manifest else 0
                check_v(fingerprint.get("chunk_listing"),
                        f"V changed while the online fit into {store.location.path!r} ran",
                        f"Nothing of step {current['step']} was committed; step {last} is "
                        f"committed and intact. Restore V as it was, then dnmf resume "
                        f"{store.location.path} (dnmf.resume); or start again with "
                        f"overwrite=True.")
                committer.commit(current, **kwargs)

            def on_step(current: dict[str, Any]) -> None:
                last = committer.manifest["iteration"] if committer.manifest else 0
                if current["step"] - last >= every and not current["stopped"]:
                    guarded(current)

            try:
                est._run(batches, n, m, state, on_step=on_step, backend=prep.backend)
            except KeyboardInterrupt:
                guarded(state)
                raise
            result = finish(state)
            final = {**state, "W": result["W"]}
            guarded(final, complete=True, result={
                key: value for key, value in result.items() if key != "W"})
            return final, result
    finally:
        if made_here:
            with contextlib.suppress(OSError):
                os.rmdir(store.location.path)


_HEADER = ("run_id", "created", "kind", "params", "fingerprint", "source", "rng",
           "dnmf_version")


def _header(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest[k] for k in _HEADER if k in manifest}


# -------------------------------------------------------------- partial_fit
def _stream_params(est: Any, m: int, dtype: np.dtype) -> dict[str, Any]:
    params = _recorded_params(est)
    params.update(n_features=int(m), dtype=np.dtype(dtype).str)
    return params


def open_stream(est: Any, m: int, dtype: np.dtype) -> np.ndarray | None:
    """Restore a committed stream into ``est`` (H, A, B, n_steps_); its H, or None."""
    store = _store_for(est)
    if est.overwrite or not store.is_run():
        return None
    manifest = store.read_manifest()
    if manifest is None:
        return None
    _check(store, manifest, "online-stream", _stream_params(est, m, dtype), None)
    state = _restore_state(store, manifest, with_W=False)
    est._components_numerator = state["A"]
    est._components_denominator = state["B"]
    est.n_steps_ = state["step"]
    est._stream = _Committer(store, manifest["run_id"], _header(manifest), manifest)
    logger.info("continuing the stream at %s after %d batches", store.location, state["step"])
    return state["H"]


def commit_stream(est: Any) -> None:
    """Commit the state of a ``partial_fit`` stream after a call."""
    from . import __version__

    store = _store_for(est)
    state = {"H": est.components_, "A": est._components_numerator,
             "B": est._components_denominator, "W": None, "step": est.n_steps_}
    with locked(store):
        committer = getattr(est, "_stream", None)
        if committer is None:
            if store.exists() and est.overwrite:
                store.wipe()
            elif store.is_run() or store.is_unfinished_start():
                store.wipe()  # created, but killed before its first commit
            k, m = est.components_.shape
            run_id = _create(store, n=None, m=m, k=k, rows=1, dtype=est.components_.dtype)
            header = {
                "run_id": run_id, "created": now(), "kind": "online-stream",
                "params": _stream_params(est, m, est.components_.dtype),
                "fingerprint": {}, "rng": {"seed": getattr(est, "_seed", None),
                                           "draws_after_start": 0},
                "dnmf_version": __version__,
            }
            committer = est._stream = _Committer(store, run_id, header, None)
        committer.commit(state)


def read_state(store: RunStore, manifest: dict[str, Any]) -> dict[str, Any]:
    """The committed state (H, A, B, W or None, step, stopping rule), every array
    checked against its checksum."""
    return _restore_state(store, manifest, with_W="W" in manifest["arrays"])


def read_stored_H(out: Any) -> np.ndarray:
    """H of the last commit at ``out`` (for tools and tests)."""
    store = RunStore(as_location(out))
    manifest = store.read_manifest()
    if manifest is None:
        raise IncompatibleRunError(f"no committed online run at {out!r}.")
    return _read(store, manifest["run_id"], manifest, "H")

