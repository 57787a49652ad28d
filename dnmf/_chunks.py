"""What chunks of a Zarr V are stored, per panel: a record taken when a run starts.

Zarr reads a chunk that is not stored as its fill value, silently, and a chunk whose
bytes were cut short or rewritten may decode without error to other numbers. A run
therefore records, when it starts, a *listing* of V's stored chunks: per panel, how
many chunk objects it has, their total stored size and a digest of their names and
sizes. The listing is a directory (or object-store) listing only: no V byte is read.
Resume compares it with V as it is now, and every commit compares it again before
writing anything, so a chunk deleted, truncated or extended (or added) since the
run started is one :class:`~dnmf.errors.StoreError` naming the panel, its rows and
(when it can be told) the chunk; nothing of the pass that saw it is committed.

Not seen by a listing: a chunk rewritten in place with the same size (a flipped bit).
V written by dnmf (``dnmf convert``, ``dnmf fit FILE.csv``) carries a CRC-32C per
chunk, so such damage fails the chunk's decoding instead (a StoreError naming it,
raised by the read).

This module knows Zarr stores and file systems; no NMF mathematics.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from .errors import StoreError

__all__ = ["check_listing", "chunk_listing"]

#: Keys in an array's prefix that are metadata, not chunks.
_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def _arrays(source: Any) -> list[tuple[str, Any, str]]:
    """(name, Zarr array, coordinate space) of V's stored arrays; [] if V is not Zarr."""
    if source.kind == "zarr":
        found = [("", source.data, "rows")]
    elif source.kind == "zarr-csr":
        g = source.data
        found = [("data", g.data, "entries"), ("indices", g.indices, "entries"),
                 ("indptr", g.indptr_array, "rows")]
    else:
        return []
    # (.npy and HDF5 read in place take the Zarr panel path too: no chunks to list)
    if not all(type(a).__module__.startswith("zarr") for _, a, _ in found):
        return []
    return found


def _stored(array: Any) -> dict[str, int] | None:
    """``{chunk key: stored size in bytes}`` of one Zarr array, from a listing.

    None when the store cannot be listed (then nothing is recorded or checked).
    """
    store = array.store
    prefix = (getattr(array, "path", "") or "").strip("/")
    kind = type(store).__name__
    found: dict[str, int] = {}
    if kind == "LocalStore":
        base = os.path.join(str(store.root), prefix) if prefix else str(store.root)
        stack = [(base, "")]
        while stack:  # scandir: one system call per directory, sizes from its entries
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                key = rel + entry.name
                try:
                    if entry.is_dir():
                        stack.append((entry.path, key + "/"))
                    else:
                        found[key] = entry.stat().st_size
                except FileNotFoundError:
                    continue
    elif kind == "FsspecStore":
        base = "/".join(p for p in (store.path.rstrip("/"), prefix) if p)
        fs = store.fs
        find = getattr(fs, "_find", None)
        if fs.asynchronous or find is None:
            from zarr.core.sync import sync

            infos = sync(fs._find(base, detail=True)) if find else {}
        else:
            infos = fs.find(base, detail=True)
        for name, info in infos.items():
            if info.get("type", "file") == "file":
                found[name[len(base):].lstrip("/")] = int(info.get("size") or 0)
    elif kind == "ZipStore":
        import zipfile

        head = f"{prefix}/" if prefix else ""
        with zipfile.ZipFile(str(store.path)) as zf:
            for info in zf.infolist():
                if info.filename.startswith(head) and not info.is_dir():
                    found[info.filename[len(head):]] = int(info.file_size)
    else:
        return None
    return {key: size for key, size in found.items()
            if key.rsplit("/", 1)[-1] not in _METADATA}


def _key_parser(array: Any) -> Any:
    """A function: chunk key -> its first chunk-grid index (axis 0), None for others."""
    meta = array.metadata
    encoding = getattr(meta, "chunk_key_encoding", None)
    head = ""
    if encoding is not None:  # zarr v3
        sep = encoding.separator
        if type(encoding).__name__ == "DefaultChunkKeyEncoding":
            head = "c" + sep
    else:  # zarr v2
        sep = getattr(meta, "dimension_separator", ".") or "."
    ndim = array.ndim

    def row(key: str) -> int | None:
        if head:
            if not key.startswith(head):
                return None
            key = key[len(head):]
        parts = key.split(sep)
        if len(parts) != ndim or not all(p.isdigit() for p in parts):
            return None
        return int(parts[0])

    return row


def chunk_listing(source: Any, bounds: list[tuple[int, int]]) -> dict[str, Any] | None:
    """Per panel of ``bounds``: ``[stored chunks, stored bytes, digest]``; None if V is
    not a listable Zarr array or group."""
    arrays = _arrays(source)
    if not arrays:
        return None
    starts = np.array([a for a, _ in bounds], dtype=np.int64)
    per_panel: list[list[str]] = [[] for _ in bounds]
    totals = np.zeros((len(bounds), 2), dtype=np.int64)
    for name, array, space in arrays:
        stored = _stored(array)
        if stored is None:
            return None
        height = int((getattr(array, "shards", None) or array.chunks)[0])
        edges = starts if space == "rows" else source.offsets(starts)
        parse = _key_parser(array)
        keys, firsts, sizes = [], [], []
        for key, size in stored.items():
            row = parse(key)
            if row is not None:
                keys.append(f"{name}/{key}:{size}" if name else f"{key}:{size}")
                firsts.append(row * height)
                sizes.append(size)
        if not keys:
            continue
        panel_of = np.maximum(np.searchsorted(edges, np.asarray(firsts, dtype=np.int64),
                                              side="right") - 1, 0)
        np.add.at(totals[:, 0], panel_of, 1)
        np.add.at(totals[:, 1], panel_of, np.asarray(sizes, dtype=np.int64))
        for entry, panel in zip(keys, panel_of.tolist()):
            per_panel[panel].append(entry)
    panels = []
    for i, entries in enumerate(per_panel):
        digest = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]
        panels.append([int(totals[i, 0]), int(totals[i, 1]), digest])
    return {"panels": panels}


def _grid_keys(source: Any, bounds: list[tuple[int, int]], panel: int) -> list[str]:
    """The chunk keys a dense V's panel ``panel`` would have if every chunk were stored."""
    array = source.data
    height = int((getattr(array, "shards", None) or array.chunks)[0])
    width = int((getattr(array, "shards", None) or array.chunks)[1])
    a, b = bounds[panel]
    first = -(-a // height)
    last = -(-b // height)
    cols = -(-int(array.shape[1]) // width)
    meta = array.metadata
    keys = []
    for i in range(first, last):
        for j in range(cols):
            try:
                keys.append(meta.encode_chunk_key((i, j)))
            except AttributeError:  # zarr v2
                keys.append(f"{i}{getattr(meta, 'dimension_separator', '.') or '.'}{j}")
    return keys


def _base(array: Any) -> str:
    """Where an array's chunk keys live, ending in "/" (for messages)."""
    store = array.store
    root = str(getattr(store, "root", None) or getattr(store, "path", "") or "")
    base = "/".join(p for p in (root.rstrip("/"), getattr(array, "path", "") or "") if p)
    return base + "/" if base else ""


def _describe(source: Any, bounds: list[tuple[int, int]], panel: int,
              then: list[Any], now: list[Any]) -> str:
    """What changed in one panel's stored chunks, naming the chunk where it can."""
    a, b = bounds[panel]
    where = f"panel {panel} (rows {a}-{b - 1})"
    count_then, bytes_then = int(then[0]), int(then[1])
    count_now, bytes_now = int(now[0]), int(now[1])
    if count_now < count_then:
        what = f"{count_then - count_now} stored chunk(s) of {where} were deleted"
        if source.kind == "zarr" and _arrays(source):
            grid = _grid_keys(source, bounds, panel)
            stored = _stored(source.data) or {}
            gone = [key for key in grid if key not in stored]
            if len(grid) == count_then and gone:  # every chunk was there: name the gone
                more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
                what = f"chunk {_base(source.data)}{gone[0]}{more} of {where} was deleted"
        return (f"{what} ({count_now} stored now, {count_then} when the run started; Zarr "
                f"would silently read the fill value in its place)")
    if count_now > count_then:
        return (f"{where}: {count_now} stored chunk(s) now, {count_then} when the run "
                f"started (chunks were added)")
    if bytes_now != bytes_then and source.kind == "zarr":
        return (f"a stored chunk of {where} was rewritten with other numbers (its chunks "
                f"hold {bytes_now} bytes now, {bytes_then} when the run started)")
    return (f"a stored chunk of {where} was truncated or rewritten (its chunks hold "
            f"{bytes_now} bytes now, {bytes_then} when the run started)"
            if bytes_now != bytes_then else
            f"the stored chunks of {where} were renamed or rewritten")


def check_listing(source: Any, bounds: list[tuple[int, int]], recorded: dict[str, Any],
                  *, what: str, remedy: str, allow_nan: bool = False,
                  now: dict[str, Any] | None = None) -> None:
    """Raise one StoreError if V's stored chunks differ from the ``recorded`` listing.

    ``what`` starts the message ("V changed since the run at RUN started"), ``remedy``
    ends it (what to do). A panel whose chunks changed size but still decode is read
    (only then) and its values checked as a pass would: NaN (unless ``allow_nan``),
    infinity or a negative value is the pass's InvalidInputError naming row and column.
    """
    now = now if now is not None else chunk_listing(source, bounds)  # (or listed now)
    if now is None or recorded is None:
        return
    then_panels, now_panels = recorded["panels"], now["panels"]
    if len(then_panels) != len(now_panels):
        return  # other panels: the fingerprint's other keys decide
    changed = [i for i, (x, y) in enumerate(zip(then_panels, now_panels))
               if list(x) != list(y)]
    if not changed:
        return
    for i in changed:
        if source.kind == "zarr" and then_panels[i][0] == now_panels[i][0]:  # (Zarr)
            from ._source import ZarrPanel, check_panel

            # Read this panel (only now): a chunk that no longer decodes is the read's
            # StoreError naming it; rewritten values are checked as a pass would.
            a, b = bounds[i]
            block = ZarrPanel(source.data, a, b, source.dtype.str).load()
            check_panel(block, a, allow_nan=allow_nan)
    first = _describe(source, bounds, changed[0], then_panels[changed[0]],
                      now_panels[changed[0]])
    more = f" (and {len(changed) - 1} other panel(s))" if len(changed) > 1 else ""
    raise StoreError(f"{what}: {first}{more}. {remedy}")
