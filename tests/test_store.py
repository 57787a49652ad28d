"""The run store on its own: locations, commits, checksums, the lock, zip packing."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import zarr

from dnmf import CorruptCheckpointError, RunLockedError, StoreError
from dnmf._store import (
    LOCK,
    MANIFEST,
    Location,
    RunLock,
    RunStore,
    as_location,
    checksum,
    fingerprint_panels,
    fingerprint_task,
    pause_point,
    sample_panels,
)


def _new_store(tmp_path, name="run") -> tuple[RunStore, str]:
    store = RunStore.open(tmp_path / name)
    run_id = store.create(n=10, m=6, k=3, panel_rows=4, dtype=np.dtype("float32"))
    return store, run_id


def _body(run_id: str, sequence: int, **extra) -> dict:
    return {"run_id": run_id, "sequence": sequence, "iteration": sequence, **extra}


# ------------------------------------------------------------------ locations
@pytest.mark.parametrize(
    ("out", "kind"),
    [
        ("run_dir", "local"),
        ("run.zip", "zip"),
        ("memory://some/run", "url"),
        ("s3://bucket/run", "url"),
    ],
)
def test_as_location_classifies_paths_and_urls(tmp_path, out, kind):
    if kind != "url":
        out = str(tmp_path / out)
    loc = as_location(out)
    assert loc.kind == kind
    if kind == "local":
        assert loc.path == os.path.abspath(out)


def test_as_location_of_store_objects_and_file_urls(tmp_path):
    assert as_location(zarr.storage.LocalStore(str(tmp_path))).kind == "local"
    assert as_location(f"file://{tmp_path}/r") == Location("local", f"{tmp_path}/r")
    assert as_location(zarr.storage.MemoryStore()).kind == "store"
    with pytest.raises(StoreError, match="cannot use"):
        as_location(42)


# -------------------------------------------------------------- commit / read
def test_commit_then_read_manifest_round_trip(tmp_path):
    store, run_id = _new_store(tmp_path)
    assert store.is_run()
    assert store.read_manifest() is None
    store.commit(_body(run_id, 1, loss_history=[3.5, 1 / 3]))
    store.commit(_body(run_id, 2, loss_history=[3.5, 1 / 3, 0.1]))
    body = store.read_manifest()
    assert body["sequence"] == 2
    assert body["loss_history"] == [3.5, 1 / 3, 0.1]  # floats round-trip exactly
    # The file is plain JSON with the body's own checksum beside it.
    document = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert set(document) == {"manifest", "checksum"}
    # No temporary files are left behind.
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_damaged_manifest_is_named(tmp_path, damage):
    store, run_id = _new_store(tmp_path)
    store.commit(_body(run_id, 1, loss_history=[1.0, 0.5]))
    path = tmp_path / "run" / MANIFEST
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        pos = raw.index(b"0.5")
        raw[pos] = ord("1")  # still valid JSON, other contents
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = b"\x00" * len(raw)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="checkpoint is corrupted") as info:
        store.read_manifest()
    assert str(path) in str(info.value)


def test_object_store_keeps_newest_two_manifests_and_skips_a_damaged_newest():
    url = f"memory://dnmf-test-{uuid.uuid4().hex}"
    store = RunStore.open(url)
    run_id = store.create(n=10, m=6, k=3, panel_rows=4, dtype=np.dtype("float64"))
    for seq in range(1, 5):
        store.commit(_body(run_id, seq))
    keys = store.keys("manifests/")
    assert len(keys) == 2
    assert store.read_manifest()["sequence"] == 4
    newest = max(keys)
    store.write_bytes(newest, b'{"manifest": {"sequence": 99}, "checksum": "x"}')
    body = store.read_manifest()
    assert body["sequence"] == 3
    assert any("checkpoint is corrupted" in s for s in store.skipped)
    store.write_bytes(min(keys), b"{")
    with pytest.raises(CorruptCheckpointError, match="checkpoint is corrupted"):
        store.read_manifest()


def test_H_and_W_chunks_are_checked(tmp_path):
    store, run_id = _new_store(tmp_path)
    H = np.arange(18, dtype=np.float32).reshape(3, 6)
    expected = store.write_H(run_id, "H0", H)
    np.testing.assert_array_equal(store.read_H(run_id, "H0", expected), H)
    sink = store.sink(run_id, "W1", 1, 4, 8, iteration=1)
    W = np.full((4, 3), 2.5, dtype=np.float32)
    digest = sink.store(W)
    assert digest == checksum(W)
    assert sink.store(W) == digest  # a retried task writes the same bytes
    panel = store.panel(run_id, "W1", 1, 4, 8, digest)
    np.testing.assert_array_equal(panel.load(), W)
    chunk = tmp_path / "run" / "W1" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0x40
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="checkpoint is corrupted") as info:
        store.panel(run_id, "W1", 1, 4, 8, digest).load()
    assert str(chunk) in str(info.value)
    chunk.write_bytes(bytes(raw[:7]))
    with pytest.raises(CorruptCheckpointError, match=str(chunk)):
        store.panel(run_id, "W1", 1, 4, 8, digest).load()
    h_chunk = next(p for p in (tmp_path / "run" / "H0" / "c").rglob("*") if p.is_file())
    h_chunk.write_bytes(h_chunk.read_bytes()[:-4])
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint is corrupted.*H0"):
        store.read_H(run_id, "H0", expected)


def test_panel_objects_pickle_and_reopen(tmp_path):
    import pickle

    store, run_id = _new_store(tmp_path)
    sink = pickle.loads(pickle.dumps(store.sink(run_id, "W0", 0, 0, 4, iteration=0)))
    digest = sink.store(np.ones((4, 3), dtype=np.float32))
    panel = pickle.loads(pickle.dumps(store.panel(run_id, "W0", 0, 0, 4, digest)))
    np.testing.assert_array_equal(panel.load(), 1.0)


def test_zip_pack_holds_only_the_committed_state_and_is_read_only(tmp_path):
    store, run_id = _new_store(tmp_path)
    h = store.write_H(run_id, "H1", np.ones((3, 6), dtype=np.float32))
    store.commit(_body(run_id, 1, H={"array": "H1", "checksum": h}))
    target = str(tmp_path / "run.zip")
    store.pack(target, ["W2", "H1"])
    import zipfile

    names = zipfile.ZipFile(target).namelist()
    assert MANIFEST in names and "zarr.json" in names
    assert any(n.startswith("H1/") for n in names)
    assert not any(n.startswith(("W0/", "W1/", "H0/")) for n in names)
    packed = RunStore.open(target)
    assert packed.read_manifest()["sequence"] == 1
    np.testing.assert_array_equal(packed.read_H(run_id, "H1", h), 1.0)
    with pytest.raises(StoreError, match="zip"):
        packed.write_bytes("x", b"1")


# ------------------------------------------------------------------ fingerprint
def test_fingerprint_sample_is_fixed_and_content_sensitive():
    assert sample_panels(1, (5, 5)) == [0]
    chosen = sample_panels(100, (1000, 7))
    assert chosen[0] == 0 and chosen[-1] == 99 and len(chosen) == 5
    assert chosen == sample_panels(100, (1000, 7))
    V = np.random.default_rng(0).random((40, 5))
    refs = [V[i : i + 4] for i in range(0, 40, 4)]
    run_map = lambda task, per_panel: [task(*a) for a in per_panel]  # noqa: E731
    first = fingerprint_panels(run_map, refs, V.shape)
    V2 = V.copy()
    V2[0, 0] += 1e-12
    refs2 = [V2[i : i + 4] for i in range(0, 40, 4)]
    assert fingerprint_panels(run_map, refs2, V.shape)["checksum"] != first["checksum"]
    import scipy.sparse as sp

    assert fingerprint_task(sp.csr_matrix(V)) != fingerprint_task(sp.csr_matrix(V2))


# ------------------------------------------------------------------------ lock
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_refuses_a_live_holder_and_names_it(tmp_path):
    store, _ = _new_store(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"host": socket.gethostname(), "pid": holder.pid, "started": "then",
                "heartbeat": time.time(), "token": "other"}
        store.write_bytes(LOCK, json.dumps(info).encode())
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}") as exc:
            RunLock(store).acquire()
        assert socket.gethostname() in str(exc.value)
    finally:
        holder.kill()
        holder.wait()
    # Now the holder is dead: taken over.
    lock = RunLock(store).acquire()
    assert json.loads(store.read_bytes(LOCK))["pid"] == os.getpid()
    lock.release()
    assert store.read_bytes(LOCK) is None


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    store, _ = _new_store(tmp_path)
    info = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "then",
            "heartbeat": time.time(), "token": "dead"}
    store.write_bytes(LOCK, json.dumps(info).encode())
    with caplog.at_level(logging.WARNING, logger="dnmf"):
        with RunLock(store):
            assert json.loads(store.read_bytes(LOCK))["token"] != "dead"
    assert "taking over the lock" in caplog.text
    assert store.read_bytes(LOCK) is None
    assert not [p for p in (tmp_path / "run").iterdir() if ".stale-" in p.name]


def test_lock_from_another_host_blocks_until_its_heartbeat_is_stale(tmp_path):
    store, _ = _new_store(tmp_path)
    info = {"host": "elsewhere.invalid", "pid": 1, "started": "then",
            "heartbeat": time.time(), "token": "remote"}
    store.write_bytes(LOCK, json.dumps(info).encode())
    with pytest.raises(RunLockedError, match=r"elsewhere\.invalid"):
        RunLock(store).acquire()
    info["heartbeat"] = time.time() - 10 * 3600
    store.write_bytes(LOCK, json.dumps(info).encode())
    RunLock(store).acquire().release()


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    store, _ = _new_store(tmp_path)
    with RunLock(store), pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(store).acquire()
    RunLock(store).acquire().release()


def test_lock_on_an_object_store():
    store = RunStore.open(f"memory://dnmf-lock-{uuid.uuid4().hex}")
    with RunLock(store):
        with pytest.raises(RunLockedError):
            RunLock(store).acquire()
    assert store.read_bytes(LOCK) is None


def test_lock_heartbeat_refreshes(tmp_path, monkeypatch):
    import dnmf._store as st

    monkeypatch.setattr(st, "HEARTBEAT_SECONDS", 0.05)
    store, _ = _new_store(tmp_path)
    with RunLock(store):
        first = json.loads(store.read_bytes(LOCK))["heartbeat"]
        time.sleep(0.3)
        assert json.loads(store.read_bytes(LOCK))["heartbeat"] > first


_CONTENDER = """
import os, sys, time
from dnmf._store import RunLock, RunStore
from dnmf.errors import RunLockedError
lock = RunLock(RunStore.open(sys.argv[1]))
while not os.path.exists(sys.argv[3]):  # imports done; wait for the go
    time.sleep(0.005)
try:
    lock.acquire()
except RunLockedError as exc:
    print("refused:", exc, flush=True)
    sys.exit(3)
print("acquired", flush=True)
time.sleep(float(sys.argv[2]))
print("kept" if (lock.holder() or {}).get("token") == lock.token else "evicted", flush=True)
lock.release()
"""


def test_lock_takeover_never_evicts_a_live_lock_forced_interleaving(tmp_path):
    """Two processes find the same dead holder; one is descheduled inside the takeover.

    A reads the dead lock and stops for 2 s just before removing it; meanwhile B
    takes the lock over and holds it. Before the fix, A then removed B's live lock
    and took its own: two writers. Now the takeover is guarded and A (or B) reads
    the lock again under the guard: exactly one writer, the other is refused.
    """
    store, _ = _new_store(tmp_path)
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "then",
            "heartbeat": time.time(), "token": "dead"}
    store.write_bytes(LOCK, json.dumps(dead).encode())
    marker = tmp_path / "paused"
    env_a = dict(os.environ, DNMF_TEST_PAUSE_AT="lock:takeover",
                 DNMF_TEST_PAUSE_SECONDS="2", DNMF_TEST_PAUSE_FILE=str(marker))
    env_b = {k: v for k, v in os.environ.items() if not k.startswith("DNMF_TEST_PAUSE")}
    run = str(tmp_path / "run")
    go_a, go_b = tmp_path / "go-a", tmp_path / "go-b"
    a, b = (subprocess.Popen([sys.executable, "-c", _CONTENDER, run, "3", str(go)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for go, env in ((go_a, env_a), (go_b, env_b)))
    go_a.touch()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert a.poll() is None and time.monotonic() < deadline, a.stdout.read()
        time.sleep(0.005)
    go_b.touch()  # B runs while A is stopped inside its takeover
    out_a, _ = a.communicate(timeout=60)
    out_b, _ = b.communicate(timeout=60)
    outs = [out_a, out_b]
    assert sum("acquired" in o for o in outs) == 1, outs
    assert sum(o.startswith("refused:") for o in outs) == 1, outs
    assert not any("evicted" in o for o in outs), outs
    assert "being written by another process" in next(o for o in outs if "refused" in o)
    assert store.read_bytes(LOCK) is None


def test_lock_with_a_damaged_pid_is_one_clear_error(tmp_path):
    store, _ = _new_store(tmp_path)
    info = {"host": socket.gethostname(), "pid": "abc", "started": "then",
            "heartbeat": time.time(), "token": "x"}
    store.write_bytes(LOCK, json.dumps(info).encode())
    with pytest.raises(RunLockedError, match=r"lock\.json' of the run is damaged \(pid 'abc'") \
            as exc:
        RunLock(store).acquire()
    assert "\n" not in str(exc.value) and "delete that file" in str(exc.value)


# -------------------------------------------------------------------- test hook
def test_pause_point_is_inert_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("DNMF_TEST_PAUSE_AT", raising=False)
    t0 = time.perf_counter()
    pause_point("commit:manifest", 3)
    monkeypatch.setenv("DNMF_TEST_PAUSE_AT", "commit:manifest@4,sink@1")
    pause_point("commit:manifest", 3)
    pause_point("commit:H", 4)
    assert time.perf_counter() - t0 < 0.5


def test_a_fit_killed_while_marking_its_start_leaves_a_store_the_next_fit_takes(tmp_path):
    """A SIGKILL inside the atomic write of ``starting.json`` leaves the lock and the
    marker's temporary only: no content, so the next fit starts there (and clears the
    temporary) instead of refusing "data that is not a dnmf run"."""
    import dnmf
    from dnmf._store import LOCK, STARTING

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text("{}")  # a lock of a process that is gone
    (out / f".{STARTING}.p3v7q1").write_text('{"run_id": "ab')
    V = np.abs(np.random.default_rng(3).standard_normal((30, 8)))
    est = dnmf.NMF(2, max_iter=3, tol=0, random_state=0, out=str(out)).fit(V)
    ref = dnmf.NMF(2, max_iter=3, tol=0, random_state=0).fit(V)
    np.testing.assert_allclose(est.components_, ref.components_, rtol=1e-12)
    assert not [p for p in os.listdir(out) if p.startswith(f".{STARTING}.")]
    # Anything else there is still refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(dnmf.errors.IncompatibleRunError, match="not a dnmf run"):
        dnmf.NMF(2, max_iter=3, out=str(other)).fit(V)
