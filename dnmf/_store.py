"""The run store: where a fit's W, H and state live, and how a state is committed.

A run store is a Zarr v3 group (a local directory, a ``.zip`` file, any fsspec URL
Zarr accepts, or a Zarr ``Store`` object) laid out as::

    zarr.json                group; attributes {"dnmf_run": {"format": 1, "run_id": ...}}
    W0/ W1/ W2/              n × k arrays, row chunks = panel rows, uncompressed
    H0/ H1/                  k × m arrays, uncompressed
    manifest.json            local directories: the last commit, replaced atomically
    manifests/<seq>-<id>.json  other stores: one new object per commit
    lock.json                the writer's lock (host, pid, start time)

A *commit* writes every byte of a state first (W panels are written by the panel
tasks into a buffer that no commit points at; H goes to the H buffer the current
manifest does not point at), then makes a small JSON manifest visible in one atomic
step: ``os.replace`` of an fsynced temporary file on a local file system, a new
uniquely named object elsewhere (readers take the newest that verifies). The manifest
carries SHA-256 checksums of every W chunk and of H, and one of its own body, so
damage is detected on open and named.

This module knows Zarr, files and locks. It does no NMF mathematics: the state it
commits is an opaque JSON body plus arrays, supplied by :mod:`dnmf._run`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ._source import load_panel, panel_digest
from .errors import CorruptCheckpointError, RunLockedError, StoreError

__all__ = [
    "COMMITTED",
    "EXTRAPOLATION_BUFFERS",
    "H_BUFFERS",
    "STARTING",
    "W_BUFFERS",
    "Location",
    "PanelSink",
    "RunLock",
    "RunStore",
    "StoredPanel",
    "as_location",
    "checksum",
    "fingerprint_panels",
    "pause_point",
]

logger = logging.getLogger("dnmf")

#: Layout version written into the group attributes and every manifest.
FORMAT = 1
W_BUFFERS = ("W0", "W1", "W2")
H_BUFFERS = ("H0", "H1")
#: A run with extrapolation (dnmf/_extrapolation.py) also keeps, in lockstep with the
#: buffers above, the last accepted W-step ("WP" + the digit of the iterate's W) and
#: the H the next pass starts from ("HY" + the H buffer's digit).
EXTRAPOLATION_BUFFERS = ("WP0", "WP1", "WP2", "HY0", "HY1")
MANIFEST = "manifest.json"
#: Written with the first commit: a run that has it but no manifest was damaged, not
#: stopped before its first commit.
COMMITTED = "committed.json"
#: Written (atomically) before anything else of a new run, and removed by its first
#: commit: a store holding it and no commit is a run killed while it was being laid
#: out or initialised — debris to clear and start afresh, not damage.
STARTING = "starting.json"
#: The fields of an array's ``zarr.json`` that say how its bytes are read; every
#: manifest pins them for the arrays it points at.
PINNED_METADATA = ("zarr_format", "node_type", "shape", "data_type", "chunk_grid",
                   "chunk_key_encoding", "codecs", "fill_value")
MANIFESTS = "manifests/"
LOCK = "lock.json"
#: Whoever takes over a dead holder's lock holds an flock on this file meanwhile.
TAKEOVER = "lock.json.takeover"
#: Suffix of the working directory behind a ``.zip`` run (zip files are not rewritable).
ZIP_WORKDIR_SUFFIX = ".partial"
#: How often a writer refreshes its lock, and when a lock from another host is stale.
HEARTBEAT_SECONDS = float(os.environ.get("DNMF_LOCK_HEARTBEAT_SECONDS", "30"))
STALE_SECONDS = float(os.environ.get("DNMF_LOCK_STALE_SECONDS", "600"))


def checksum(data: Any) -> str:
    """``"sha256:<hex>"`` of an array's bytes (C order) or of bytes."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    return "sha256:" + hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def pause_point(point: str, iteration: int | None = None) -> None:
    """Test hook: stop here (until killed) when ``DNMF_TEST_PAUSE_AT`` names this point.

    ``DNMF_TEST_PAUSE_AT`` holds ``point`` or ``point@iteration`` items separated by
    commas; when one matches, the file named by ``DNMF_TEST_PAUSE_FILE`` (if any) is
    written and the thread sleeps, so a test can SIGKILL the process exactly there.
    With ``DNMF_TEST_PAUSE_SECONDS`` set it sleeps that long and goes on instead
    (a forced interleaving: another process runs meanwhile). Unset (always, outside
    the crash tests) this costs one environment look-up.
    """
    spec = os.environ.get("DNMF_TEST_PAUSE_AT")
    if not spec:
        return
    for item in spec.split(","):
        name, _, at = item.strip().partition("@")
        if name != point or (at and (iteration is None or int(at) != iteration)):
            continue
        marker = os.environ.get("DNMF_TEST_PAUSE_FILE")
        if marker:
            with open(marker + ".tmp", "w") as f:
                f.write(f"{point}@{iteration}\n")
            os.replace(marker + ".tmp", marker)
        time.sleep(float(os.environ.get("DNMF_TEST_PAUSE_SECONDS", "3600")))


# ------------------------------------------------------------------ locations
@dataclass(frozen=True)
class Location:
    """Where a run store is, in a form that pickles to workers and reopens there.

    ``kind`` is "local" (a directory: ``path``), "zip" (a zip file: ``path``, read
    only), "url" (an fsspec URL: ``path``) or "store" (a Zarr ``Store`` object).
    """

    kind: str
    path: str
    store: Any = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.path)

    def __str__(self) -> str:
        return self.path

    def join(self, key: str) -> str:
        """A human-readable name of ``key`` inside the store (for error messages)."""
        if self.kind == "local":
            return os.path.join(self.path, *key.split("/"))
        return f"{self.path.rstrip('/')}/{key}"


def as_location(out: Any) -> Location:
    """Classify ``out``: a path, a ``.zip`` path, a URL or a Zarr Store object."""
    import zarr.storage as zs

    if isinstance(out, Location):
        return out
    if isinstance(out, zs.LocalStore):
        return Location("local", os.path.abspath(str(out.root)))
    if isinstance(out, zs.ZipStore):
        return Location("zip", os.path.abspath(str(out.path)))
    if isinstance(out, os.PathLike):
        out = os.fspath(out)
    if isinstance(out, str):
        if out.startswith("file://"):
            out = out[len("file://"):]
        if "://" in out:
            return Location("url", out.rstrip("/"))
        path = os.path.abspath(os.path.expanduser(out))
        if path.endswith(".zip"):
            return Location("zip", path)
        return Location("local", path)
    if isinstance(out, zs.FsspecStore):
        protocol = out.fs.protocol
        protocol = protocol[0] if isinstance(protocol, tuple | list) else protocol
        if protocol in ("file", "local"):
            return Location("local", os.path.abspath(out.path))
        return Location("store", f"{protocol}://{out.path.strip('/')}", out)
    if hasattr(out, "list_prefix") and hasattr(out, "get"):
        return Location("store", repr(out), out)
    raise StoreError(
        f"cannot use {out!r} as a run store: give a directory path, a '.zip' path, an "
        f"fsspec URL such as 's3://bucket/run' or 'memory://run', or a Zarr Store."
    )


_OPEN_LOCK = threading.Lock()
_STORES: dict[tuple[str, str], Any] = {}
_ARRAYS: dict[tuple[tuple[str, str], str, str], Any] = {}


def zarr_store(loc: Location) -> Any:
    """The Zarr store of ``loc``, opened once per process."""
    import zarr.storage as zs

    if loc.kind == "store":
        return loc.store
    with _OPEN_LOCK:
        store = _STORES.get(loc.key)
        if store is not None and loc.kind == "zip" and _ZIP_STATS.get(loc.key) != _stat(loc):
            # Repacked by another process since it was opened here: read the new file.
            _STORES.pop(loc.key, None)
            for key in [k for k in _ARRAYS if k[0] == loc.key]:
                del _ARRAYS[key]
            with contextlib.suppress(Exception):
                store.close()
            store = None
        if store is None:
            if loc.kind == "local":
                store = zs.LocalStore(loc.path)
            elif loc.kind == "zip":
                store = zs.ZipStore(loc.path, mode="r")
            else:
                from .io._remote import check_reachable, remote_options

                check_reachable(loc.path)  # one clear error, fast, when nothing answers
                store = zs.FsspecStore.from_url(
                    loc.path, storage_options=remote_options(loc.path) or None)
            _sync(store._ensure_open())
            _STORES[loc.key] = store
            if loc.kind == "zip":
                _ZIP_STATS[loc.key] = _stat(loc)
        return store


#: (inode, size, mtime) of each zip when it was opened, to notice a repack
_ZIP_STATS: dict[Any, tuple[int, int, int] | None] = {}


def _stat(loc: Location) -> tuple[int, int, int] | None:
    try:
        st = os.stat(loc.path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def forget(loc: Location) -> None:
    """Drop cached handles of ``loc`` (after it was wiped or repacked)."""
    with _OPEN_LOCK:
        store = _STORES.pop(loc.key, None)
        for key in [k for k in _ARRAYS if k[0] == loc.key]:
            del _ARRAYS[key]
    if store is not None and loc.kind == "zip":
        store.close()


def open_array(loc: Location, run_id: str, name: str) -> Any:
    """Array ``name`` of the run ``run_id`` at ``loc``, opened once per process."""
    import zarr

    key = (loc.key, run_id, name)
    array = _ARRAYS.get(key)
    if array is None:
        mode = "r" if loc.kind == "zip" else "r+"
        array = zarr.open_array(store=zarr_store(loc), path=name, mode=mode)
        if mode == "r+":
            # Every chunk is written, even one that equals the fill value (an all-zero
            # W panel): a commit syncs and checks the chunks of its panels, and a
            # missing chunk file must mean damage, not "all zero".
            array = array.with_config({"write_empty_chunks": True})
        _ARRAYS[key] = array
    return array


def _sync(coroutine: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coroutine)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNCED_DIRS: set[str] = set()


def _fsync_durably(path: str, root: str) -> None:
    """fsync a file Zarr replaced, its directory (the new entry), and once per process
    each directory between it and ``root`` (entries made when the buffer was new)."""
    _fsync_path(path)
    directory = os.path.dirname(path)
    _fsync_path(directory, directory=True)
    parent = os.path.dirname(directory)
    while len(parent) >= len(root) and parent not in _SYNCED_DIRS:
        _fsync_path(parent, directory=True)
        _SYNCED_DIRS.add(parent)
        parent = os.path.dirname(parent)


# ---------------------------------------------------------------- panel handles
@dataclass(frozen=True)
class StoredPanel:
    """Rows ``start:stop`` of a W buffer; ``load()`` reads and verifies them."""

    location: Location
    run_id: str
    buffer: str
    index: int
    start: int
    stop: int
    checksum: str | None = None

    def load(self) -> np.ndarray:
        array = open_array(self.location, self.run_id, self.buffer)
        first, last = _chunk_range(array, self.start, self.stop)
        key = f"{self.buffer}/{array.metadata.encode_chunk_key((first, 0))}"
        if last - first > 1:
            key += f" (or one of the {last - first - 1} after it)"
        try:
            block = np.asarray(array[self.start : self.stop])
        except Exception as exc:
            raise CorruptCheckpointError(
                f"checkpoint is corrupted: cannot read W chunk "
                f"{self.location.join(key)!r} ({type(exc).__name__}: {exc})."
            ) from exc
        if self.checksum is not None and checksum(block) != self.checksum:
            raise CorruptCheckpointError(
                f"checkpoint is corrupted: W chunk {self.location.join(key)!r} does not "
                f"match its checksum in the manifest (damaged, truncated, or overwritten "
                f"by a later commit of a writer: reopen the run to read its newest state)."
            )
        return block


@dataclass(frozen=True)
class PanelSink:
    """Where a panel task writes its new W panel: whole chunks of a W buffer.

    Panels start on a chunk boundary and end on one (or at the last row), so no
    two tasks ever write the same chunk.
    """

    location: Location
    run_id: str
    buffer: str
    index: int
    start: int
    stop: int
    iteration: int
    #: flush to disk now: this iteration will be committed (local directories)
    durable: bool = True

    def store(self, W: np.ndarray) -> str:
        """Write the panel; return the checksum of the bytes written."""
        array = open_array(self.location, self.run_id, self.buffer)
        block = np.ascontiguousarray(W, dtype=array.dtype)
        array[self.start : self.stop] = block
        if self.durable and self.location.kind == "local":
            for index in range(*_chunk_range(array, self.start, self.stop)):
                path = _chunk_path(self.location, array, self.buffer, index)
                _fsync_durably(path, self.location.path)
        pause_point("sink", self.iteration)
        return checksum(block)


def _chunk_range(array: Any, start: int, stop: int) -> tuple[int, int]:
    """The W chunks (first, one past the last) that rows ``start:stop`` fill."""
    rows = int(array.chunks[0])
    return start // rows, -(-stop // rows)


def _chunk_path(loc: Location, array: Any, buffer: str, index: int) -> str:
    chunk = array.metadata.encode_chunk_key((index, 0))
    return os.path.join(loc.path, buffer, *chunk.split("/"))


# --------------------------------------------------------------------- the lock
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    if start is not None:
        current = _process_start(pid)
        if current is not None and current != start:
            return False
    return True


class RunLock:
    """The single-writer lock of a run store.

    The lock names host, pid, the process start time and when it was taken; a
    heartbeat thread refreshes it. Another live holder makes :meth:`acquire` raise
    :class:`RunLockedError`; a holder on this host whose process is gone, or on
    another host whose heartbeat is older than ``DNMF_LOCK_STALE_SECONDS``, is taken
    over with a warning.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.token = uuid.uuid4().hex
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "started": now(),
            "heartbeat": time.time(),
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _payload(self) -> bytes:
        return json.dumps(self.info, indent=1).encode()

    def holder(self) -> dict[str, Any] | None:
        raw = self.store.read_bytes(LOCK)
        if raw is None:
            return None
        try:
            info = json.loads(raw)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    def _alive(self, info: dict[str, Any]) -> bool:
        if not info:
            # Unreadable: a writer killed while creating it; only a local one can be.
            return False
        try:
            pid = int(info.get("pid", -1))
            heartbeat = float(info.get("heartbeat", 0.0))
        except (TypeError, ValueError):
            raise RunLockedError(
                f"the lock {self.store.location.join(LOCK)!r} of the run is damaged (pid "
                f"{info.get('pid')!r}, heartbeat {info.get('heartbeat')!r}), so whether its "
                f"writer still runs cannot be told; if no process is writing the run, "
                f"delete that file."
            ) from None
        if info.get("host") == socket.gethostname():
            if pid == os.getpid():
                return info.get("token") != self.token
            return _pid_alive(pid, info.get("pid_start"))
        age = time.time() - heartbeat
        return age < STALE_SECONDS

    def acquire(self) -> RunLock:
        for _ in range(10):
            if self.store.create_exclusive(LOCK, self._payload()):
                break
            info = self.holder()
            if info is None:
                continue
            if self._alive(info):
                raise self._locked(info)
            # Take over under the takeover guard, after reading the lock again: a
            # contender that read the same dead holder may have taken over meanwhile,
            # and its live lock must not be removed.
            with self.store.takeover_guard():
                pause_point("lock:takeover")
                if self.holder() != info:
                    continue  # it changed (taken over, released): look again
                logger.warning(
                    "taking over the lock of the run at %s: its holder (host %s, pid %s, "
                    "since %s) is no longer running",
                    self.store.location, info.get("host"), info.get("pid"),
                    info.get("started"),
                )
                self.store.break_lock(info)
                if self.store.create_exclusive(LOCK, self._payload()):
                    break
        else:  # pragma: no cover - ten lost races in a row
            raise RunLockedError(f"could not take the lock of {str(self.store.location)!r}")
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="dnmf-lock", daemon=True)
        self._thread.start()
        return self

    def reclaim(self) -> None:
        """Write this lock again where it was: its directory was moved away (the old
        run of ``fit --overwrite``, kept aside until the new one commits)."""
        if not self.store.create_exclusive(LOCK, self._payload()):
            info = self.holder() or {}
            raise self._locked(info)

    def _locked(self, info: dict[str, Any]) -> RunLockedError:
        return RunLockedError(
            f"the run at {str(self.store.location)!r} is being written by another "
            f"process: host {info.get('host')!r}, pid {info.get('pid')}, since "
            f"{info.get('started')}. Wait for it to finish, or stop it first; "
            f"if that process is gone, delete {self.store.location.join(LOCK)!r}."
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.info["heartbeat"] = time.time()
            try:
                if (self.holder() or {}).get("token") == self.token:
                    self.store.write_bytes(LOCK, self._payload(), atomic=True)
            except Exception as exc:  # a failed heartbeat must not kill the fit
                logger.warning("could not refresh the lock of %s: %s", self.store.location, exc)

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.held = False
        with contextlib.suppress(Exception):
            if (self.holder() or {}).get("token") == self.token:
                self.store.delete(LOCK)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -------------------------------------------------------------------- the store
class RunStore:
    """Files and arrays of one run store (see the module docstring for the layout)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.writable = location.kind != "zip"
        #: manifests that failed verification and were passed over by the last read
        self.skipped: list[str] = []

    @classmethod
    def open(cls, out: Any) -> RunStore:
        return cls(as_location(out))

    @property
    def local(self) -> bool:
        return self.location.kind == "local"

    def _local_path(self, key: str) -> str:
        return os.path.join(self.location.path, *key.split("/"))

    # --------------------------------------------------------------- raw bytes
    def read_bytes(self, key: str) -> bytes | None:
        if self.local:
            try:
                with open(self._local_path(key), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
            except NotADirectoryError as exc:
                raise StoreError(f"{self.location.path!r} is not a directory") from exc
        from zarr.core.buffer import default_buffer_prototype

        buf = _sync(zarr_store(self.location).get(key, prototype=default_buffer_prototype()))
        return None if buf is None else bytes(buf.to_bytes())

    def write_bytes(self, key: str, data: bytes, *, atomic: bool = False) -> None:
        """Write ``key``; ``atomic`` (local): readers see the old or the new bytes only."""
        self._check_writable()
        if self.local:
            path = self._local_path(key)
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            if not atomic:
                with open(path, "wb") as f:
                    f.write(data)
                return
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
            os.fchmod(fd, 0o644)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                if key == MANIFEST:
                    pause_point("commit:manifest", self._pending_iteration)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_path(directory, directory=True)
            return
        from zarr.core.buffer import cpu

        _sync(zarr_store(self.location).set(key, cpu.Buffer.from_bytes(data)))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` if it does not exist; False if it does."""
        self._check_writable()
        if self.local:
            # Written whole under a temporary name, then linked: no one ever sees the
            # file half written, and link() fails if the name exists.
            path = self._local_path(key)
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise
                except OSError:  # no hard links here: exclusive create, then write
                    with open(path, "xb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return True
        # Object stores: best effort (no compare-and-swap in the Store API): write,
        # then read back to see whose token won.
        if self.read_bytes(key) is not None:
            return False
        self.write_bytes(key, data)
        return self.read_bytes(key) == data

    @contextlib.contextmanager
    def takeover_guard(self, timeout: float = 60.0) -> Iterator[None]:
        """Only one process at a time may take over a dead holder's lock.

        Local directories: an ``flock`` on ``lock.json.takeover``, which the kernel
        releases when its holder dies (so it is never stale). The file is never
        removed while the run exists: a process holding the flock of a removed file
        would not exclude one that made a new file. Object stores have no such
        primitive: best effort (the lock's read-back there is the guard).
        """
        if not self.local:
            yield
            return
        import fcntl

        path = self._local_path(TAKEOVER)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RunLockedError(
                            f"another process has been taking over the lock of the run at "
                            f"{str(self.location)!r} for over {timeout:.0f} s; try again."
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)

    def break_lock(self, info: dict[str, Any]) -> None:
        """Remove a dead holder's lock (only one of several contenders succeeds)."""
        if self.local:
            path = self._local_path(LOCK)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, f"{path}.stale-{uuid.uuid4().hex[:8]}")
                for stale in os.listdir(self.location.path):
                    if stale.startswith(f"{LOCK}.stale-"):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(self.location.path, stale))
            return
        self.delete(LOCK)

    def delete(self, key: str) -> None:
        self._check_writable()
        if self.local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._local_path(key))
            return
        _sync(zarr_store(self.location).delete(key))

    def keys(self, prefix: str) -> list[str]:
        if self.local:
            directory = self._local_path(prefix.rstrip("/")) if prefix else self.location.path
            try:
                names = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(prefix + name for name in names)

        store = zarr_store(self.location)

        async def collect() -> list[str]:
            return [key async for key in store.list_prefix(prefix)]

        try:
            return sorted(_sync(collect()))
        except FileNotFoundError:  # no such bucket (or container): nothing stored there
            return []

    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(
                f"{self.location.path!r} is a zip file, which dnmf reads but does not "
                f"rewrite in place; fit with out={self.location.path!r} works in a "
                f"directory beside it and packs the zip at the end."
            )

    # ------------------------------------------------------------------ layout
    def exists(self) -> bool:
        if self.local:
            return os.path.isdir(self.location.path) and bool(os.listdir(self.location.path))
        if self.location.kind == "zip":
            return os.path.exists(self.location.path)
        return bool(self.keys(""))

    def attributes(self) -> dict[str, Any] | None:
        """The dnmf run attributes of the group, or None if this is not a run store."""
        raw = self.read_bytes("zarr.json")
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        attrs = meta.get("attributes", {}).get("dnmf_run") if isinstance(meta, dict) else None
        return attrs if isinstance(attrs, dict) else None

    def is_run(self) -> bool:
        return self.attributes() is not None

    def is_empty_dir(self) -> bool:
        """Nothing but a lock (or nothing at all) is there: also a lock's temporary
        (``.lock.json.XXXX``, left when a writer was killed while writing it) and the
        start marker's (``.starting.json.XXXX``: killed while marking its start, before
        anything else was written)."""
        return all(key == LOCK or key.startswith((f"{LOCK}.", f".{LOCK}.", f".{STARTING}."))
                   for key in self.keys(""))

    def is_unfinished_start(self) -> bool:
        """A run killed before its first commit (see :data:`STARTING`): the marker, no
        manifest, no commit mark. Whatever else is there (group metadata, perhaps
        half-written; buffers; initial W panels) is what the start made."""
        return (self.read_bytes(STARTING) is not None
                and self.read_bytes(MANIFEST) is None
                and self.read_bytes(COMMITTED) is None
                and not [k for k in self.keys(MANIFESTS) if k.endswith(".json")])

    def remove_leftovers(self) -> None:
        """Delete temporary manifests of writers killed mid-commit (holding the lock)."""
        if not self.local or not os.path.isdir(self.location.path):
            return
        for name in os.listdir(self.location.path):
            if name.startswith((f".{MANIFEST}.", f".{LOCK}.", f".{STARTING}.")):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.location.path, name))

    def wipe(self) -> None:
        """Remove everything except the lock (``overwrite=True``)."""
        self._check_writable()
        forget(self.location)
        if self.local:
            for name in os.listdir(self.location.path):
                if name in (LOCK, TAKEOVER):
                    continue
                path = os.path.join(self.location.path, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            return
        for key in self.keys(""):
            if key not in (LOCK, TAKEOVER):
                self.delete(key)

    def create(self, *, n: int, m: int, k: int, panel_rows: int, dtype: np.dtype,
               extrapolated: bool = False) -> str:
        """Create the group and the W and H buffers; return the new run id.

        W buffers are chunked by ``panel_rows`` rows: every panel is a whole
        number of chunks.
        """
        import zarr

        self._check_writable()
        forget(self.location)
        run_id = uuid.uuid4().hex
        attrs: dict[str, Any] = {
            "dnmf_run": {"format": FORMAT, "run_id": run_id, "created": now()}
        }
        self.write_bytes(STARTING, json.dumps({"run_id": run_id, "pid": os.getpid(),
                                               "created": now()}).encode(), atomic=True)
        pause_point("create:started")
        zarr.open_group(store=zarr_store(self.location), mode="a", attributes=attrs)
        self.ensure_buffers(run_id, n=n, m=m, k=k, panel_rows=panel_rows, dtype=dtype,
                            extrapolated=extrapolated)
        return run_id

    def ensure_buffers(
        self, run_id: str, *, n: int, m: int, k: int, panel_rows: int, dtype: np.dtype,
        extrapolated: bool = False,
    ) -> None:
        """Create the W and H buffers that are missing (a run unpacked from a zip)."""
        import zarr

        group = zarr.open_group(store=zarr_store(self.location), mode="r+")
        names = W_BUFFERS + H_BUFFERS + (EXTRAPOLATION_BUFFERS if extrapolated else ())
        present = {name for name in names
                   if self.read_bytes(f"{name}/zarr.json") is not None}
        h_cols = max(1, min(m, (64 * 2**20) // max(1, k * np.dtype(dtype).itemsize)))
        for name in names:
            shape, chunks = ((n, k), (panel_rows, k)) if name[0] == "W" else ((k, m), (k, h_cols))
            if name in present:
                # A buffer the next passes write must be what the run made.
                meta = self.array_metadata(name)
                grid = (meta.get("chunk_grid") or {}).get("configuration", {})
                if (meta["shape"] != list(shape) or meta["data_type"] != np.dtype(dtype).name
                        or (name[0] == "W" and grid.get("chunk_shape") != list(chunks))):
                    raise CorruptCheckpointError(
                        f"checkpoint is corrupted: the array {self.location.join(name)!r} "
                        f"has shape {meta['shape']}, dtype {meta['data_type']!r} and chunks "
                        f"{grid.get('chunk_shape')}, but this run's {name} is {list(shape)} "
                        f"{np.dtype(dtype).name!r} in chunks {list(chunks)}: its metadata was "
                        f"changed. Restore it, or start over with overwrite=True."
                    )
                continue
            group.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, compressors=None,
                fill_value=0, attributes={"dnmf_run_id": run_id},
            )

    # ---------------------------------------------------------------- H and W
    def write_H(self, run_id: str, name: str, H: np.ndarray) -> str:
        array = open_array(self.location, run_id, name)
        block = np.ascontiguousarray(H, dtype=array.dtype)
        array[...] = block
        if self.local:
            root = os.path.join(self.location.path, name)
            for directory, _, files in os.walk(os.path.join(root, "c")):
                for file in files:
                    if not file.startswith("."):
                        _fsync_durably(os.path.join(directory, file), self.location.path)
        return checksum(block)

    def read_H(self, run_id: str, name: str, expected: str) -> np.ndarray:
        try:
            H = np.asarray(open_array(self.location, run_id, name)[...])
        except Exception as exc:
            raise CorruptCheckpointError(
                f"checkpoint is corrupted: cannot read H from {self.location.join(name)!r} "
                f"({type(exc).__name__}: {exc})."
            ) from exc
        if checksum(H) != expected:
            raise CorruptCheckpointError(
                f"checkpoint is corrupted: H in {self.location.join(name)!r} does not match "
                f"its checksum in the manifest (a chunk under "
                f"{self.location.join(name + '/c')!r} is damaged or truncated)."
            )
        return H

    def flush_W(self, run_id: str, buffer: str) -> None:
        """fsync every chunk of a W buffer whose panels were written without it."""
        if not self.local:
            return
        array = open_array(self.location, run_id, buffer)
        for index in range(_chunk_range(array, 0, int(array.shape[0]))[1]):
            with contextlib.suppress(FileNotFoundError):
                path = _chunk_path(self.location, array, buffer, index)
                _fsync_durably(path, self.location.path)

    def panel(self, run_id: str, buffer: str, index: int, start: int, stop: int,
              expected: str | None = None) -> StoredPanel:
        return StoredPanel(self.location, run_id, buffer, index, start, stop, expected)

    def sink(self, run_id: str, buffer: str, index: int, start: int, stop: int,
             iteration: int, durable: bool = True) -> PanelSink:
        return PanelSink(self.location, run_id, buffer, index, start, stop, iteration, durable)

    # ------------------------------------------------------------- manifests
    _pending_iteration: int | None = None

    def read_manifest(self) -> dict[str, Any] | None:
        """The newest manifest that verifies, or None if nothing was ever committed.

        Raises :class:`CorruptCheckpointError` naming the file when manifests exist
        but none verifies. Newer manifests passed over are listed in ``skipped``.
        """
        self.skipped = []
        candidates: list[tuple[int, str, dict[str, Any]]] = []
        errors: list[CorruptCheckpointError] = []
        keys = [MANIFEST] + [key for key in self.keys(MANIFESTS) if key.endswith(".json")]
        for key in keys:
            try:
                body = self._parse_manifest(key)
            except CorruptCheckpointError as exc:
                errors.append(exc)
                continue
            if body is not None:  # None: pruned by a writer since it was listed
                candidates.append((int(body["sequence"]), key, body))
        if not candidates:
            if errors:
                raise errors[0]
            if self.read_bytes(COMMITTED) is not None:
                raise CorruptCheckpointError(
                    f"checkpoint is damaged: the run at {str(self.location)!r} was committed "
                    f"(it holds {COMMITTED}) but its manifest {self.location.join(MANIFEST)!r} "
                    f"is missing (deleted or lost), so its state cannot be verified. Nothing "
                    f"was changed: restore the manifest, or start over with overwrite=True."
                )
            return None
        _, key, body = max(candidates, key=lambda c: c[0])
        attrs = self.attributes()
        if attrs is None or attrs.get("run_id") != body.get("run_id"):
            what = "is missing or damaged" if attrs is None else (
                f"names run {attrs.get('run_id')!r}, its manifest run {body.get('run_id')!r}")
            raise CorruptCheckpointError(
                f"checkpoint is damaged: the group metadata "
                f"{self.location.join('zarr.json')!r} of the run {what}. Nothing was "
                f"changed: restore that file, or start over with overwrite=True."
            )
        for error in errors:
            self.skipped.append(str(error))
            logger.warning("passing over a damaged manifest: %s", error)
        body["_key"] = key
        return body

    def _parse_manifest(self, key: str) -> dict[str, Any] | None:
        name = self.location.join(key)
        raw = self.read_bytes(key)
        if raw is None:
            return None
        try:
            document = json.loads(raw)
            body = document["manifest"]
            stored = document["checksum"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(
                f"checkpoint is corrupted: manifest {name!r} is not readable JSON of the "
                f"expected form ({type(exc).__name__}: {exc}); it was truncated or damaged."
            ) from exc
        if not isinstance(body, dict) or _body_checksum(body) != stored:
            raise CorruptCheckpointError(
                f"checkpoint is corrupted: manifest {name!r} does not match its own "
                f"checksum; it was damaged after it was written."
            )
        if body.get("format") != FORMAT:
            raise StoreError(
                f"manifest {name!r} has layout format {body.get('format')!r}; this dnmf "
                f"reads format {FORMAT}. Open it with the dnmf version that wrote it "
                f"({body.get('dnmf_version')!r})."
            )
        return body

    def commit(self, body: dict[str, Any]) -> str:
        """Make ``body`` the visible state, atomically; return the manifest's key.

        Everything ``body`` points to must be written before this is called.
        """
        body = {k: v for k, v in body.items() if not k.startswith("_")}
        body["format"] = FORMAT
        document = json.dumps(
            {"manifest": body, "checksum": _body_checksum(body)}, indent=1, sort_keys=True
        ).encode()
        self._pending_iteration = body.get("iteration")
        try:
            if self.local:
                self.write_bytes(MANIFEST, document, atomic=True)
                key = MANIFEST
            else:
                key = f"{MANIFESTS}{int(body['sequence']):012d}-{uuid.uuid4().hex[:12]}.json"
                pause_point("commit:manifest", self._pending_iteration)
                self.write_bytes(key, document)
                # Keep the previous manifest too; older ones point at reused buffers.
                older = [k for k in self.keys(MANIFESTS) if k.endswith(".json") and k < key]
                for stale in older[:-1]:
                    with contextlib.suppress(Exception):
                        self.delete(stale)
        finally:
            self._pending_iteration = None
        if not self._marked:
            if self.read_bytes(COMMITTED) is None:
                self.write_bytes(COMMITTED, json.dumps({"run_id": body.get("run_id")}).encode(),
                                 atomic=True)
            if self.read_bytes(STARTING) is not None:
                self.delete(STARTING)  # committed: no longer a start to clear
            self._marked = True
        pause_point("commit:done", body.get("iteration"))
        return key

    _marked = False

    # -------------------------------------------------------- array metadata
    def array_metadata(self, name: str) -> dict[str, Any]:
        """The pinned fields (:data:`PINNED_METADATA`) of array ``name``'s metadata.

        A missing or unreadable ``zarr.json`` is a :class:`CorruptCheckpointError`
        naming it.
        """
        key = f"{name}/zarr.json"
        raw = self.read_bytes(key)
        if raw is None:
            raise CorruptCheckpointError(
                f"checkpoint is damaged: the metadata {self.location.join(key)!r} of the "
                f"array {name} is missing (the file or its directory was deleted). Restore "
                f"it, or start over with overwrite=True."
            )
        try:
            meta = json.loads(raw)
            return {field: meta[field] for field in PINNED_METADATA}
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(
                f"checkpoint is damaged: the metadata {self.location.join(key)!r} of the "
                f"array {name} is not readable Zarr metadata ({type(exc).__name__}: "
                f"{exc}). Restore it, or start over with overwrite=True."
            ) from None

    def verify_arrays(self, manifest: dict[str, Any]) -> None:
        """Check the metadata of the arrays ``manifest`` points at against its pins.

        Checksums cover the bytes of the chunks; this covers how they are read (a
        dtype changed to another of the same size would read the same bytes as
        other numbers). Manifests written before the pins existed are not checked.
        """
        pinned = manifest.get("array_metadata")
        if not isinstance(pinned, dict):
            return
        for name, want in sorted(pinned.items()):
            have = self.array_metadata(name)
            diffs = [f"{field} {have.get(field)!r} (now) vs {want.get(field)!r} (committed)"
                     for field in PINNED_METADATA if have.get(field) != want.get(field)]
            if diffs:
                raise CorruptCheckpointError(
                    f"checkpoint is corrupted: the metadata "
                    f"{self.location.join(name + '/zarr.json')!r} was changed after the "
                    f"commit: {'; '.join(diffs)}. Restore it, or start over with "
                    f"overwrite=True."
                )

    # --------------------------------------------------------------- zip files
    def pack(self, target: str, buffers: list[str]) -> None:
        """Write a zip with the group, ``buffers`` and the manifest; replace ``target``."""
        import zarr.storage as zs
        from zarr.core.buffer import cpu

        keep = {"zarr.json", MANIFEST}
        tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        remove_dead_temporaries(target)
        archive = zs.ZipStore(tmp, mode="w")
        try:
            for directory, _, files in os.walk(self.location.path):
                rel = os.path.relpath(directory, self.location.path)
                parts = [] if rel == "." else rel.split(os.sep)
                if parts and parts[0] not in buffers:
                    continue
                for file in sorted(files):
                    key = "/".join([*parts, file])
                    if file.startswith(".") or (not parts and key not in keep):
                        continue
                    with open(os.path.join(directory, file), "rb") as f:
                        _sync(archive.set(key, cpu.Buffer.from_bytes(f.read())))
            archive.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(Exception):  # closing may fail too (a full disk)
                archive.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        forget(Location("zip", target))

    @staticmethod
    def unpack(source: str, directory: str) -> None:
        """Extract a packed run into ``directory`` (to continue it)."""
        import zipfile

        tmp = f"{directory}.unpack-{uuid.uuid4().hex[:8]}"
        with zipfile.ZipFile(source) as archive:
            archive.extractall(tmp)
        if not os.path.isdir(directory):
            os.replace(tmp, directory)
            return
        # The directory holds the lock of this writer: move the run in beside it, the
        # group's zarr.json last (until then the directory is no run).
        names = sorted(os.listdir(tmp), key=lambda name: name == "zarr.json")
        for name in names:
            if name in (LOCK, TAKEOVER):
                continue
            target = os.path.join(directory, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)  # left by an unpack that was killed
            os.replace(os.path.join(tmp, name), target)
        shutil.rmtree(tmp, ignore_errors=True)


def remove_dead_temporaries(target: str) -> list[str]:
    """Remove ``TARGET.tmp-PID-*`` zip files that writers which are gone left."""
    directory, name = os.path.split(target)
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory or "."):
            head, _, rest = entry.partition(f"{name}.tmp-")
            pid = rest.split("-", 1)[0]
            if head or not pid.isdigit() or _pid_alive(int(pid), None):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
    return removed


def _body_checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return checksum(canonical.encode())


# -------------------------------------------------------------- V fingerprint
def fingerprint_task(ref: Any) -> str:
    """SHA-256 of one panel's raw bytes as the computation sees them."""
    return panel_digest(load_panel(ref))


def sample_panels(n_panels: int, shape: tuple[int, int], extra: int = 3) -> list[int]:
    """First, last and ``extra`` seeded panels: the same choice for the same shape."""
    chosen = {0, n_panels - 1}
    rng = np.random.default_rng([int(shape[0]), int(shape[1]), 0x444E4D46])
    if n_panels > 2:
        inner = rng.choice(np.arange(1, n_panels - 1), size=min(extra, n_panels - 2),
                           replace=False)
        chosen.update(int(i) for i in inner)
    return sorted(chosen)


def fingerprint_panels(
    run_map: Any, refs: list[Any], shape: tuple[int, int]
) -> dict[str, Any]:
    """The content part of V's fingerprint: which panels were hashed and the hash.

    ``run_map(task, per_panel)`` runs ``task`` on the panels (where they live) and
    returns the results in order; only a few panels are read, so this stays cheap
    for TB-scale V.
    """
    chosen = sample_panels(len(refs), shape)
    digests = run_map(fingerprint_task, [(refs[i],) for i in chosen])
    combined = hashlib.sha256("".join(digests).encode()).hexdigest()
    return {"panels": chosen, "checksum": "sha256:" + combined}


_HELD = threading.local()


def held_lock(store_or_location: Any) -> RunLock | None:
    """The lock this thread holds on a run store through :func:`locked`, if any."""
    loc = getattr(store_or_location, "location", store_or_location)
    lock = getattr(_HELD, "locks", {}).get(as_location(loc).key)
    return lock if lock is not None and lock.held else None


@contextlib.contextmanager
def locked(store: RunStore) -> Iterator[RunLock]:
    """Hold the store's write lock; re-entrant within a thread.

    The command line takes a run's lock before it converts the run's input and keeps
    it through the fit, whose own ``locked`` then finds it held: two commands on one
    run cannot both convert (and one delete what the other reads).
    """
    held = held_lock(store)
    if held is not None:
        yield held
        return
    locks = _HELD.__dict__.setdefault("locks", {})
    lock = RunLock(store)
    lock.acquire()
    locks[store.location.key] = lock
    try:
        yield lock
    finally:
        locks.pop(store.location.key, None)
        lock.release()
