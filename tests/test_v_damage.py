"""Damage to V outside the panels its fingerprint samples (issue 16, item 5).

Real Zarr stores on disk and the real command line in a subprocess: a chunk deleted
(Zarr would read the fill value), a chunk truncated, a bit flipped inside a compressed
chunk of a V that dnmf wrote (CRC-32C), and a chunk deleted while a fit runs. Each
ends in one error line naming the chunk and what to do, with nothing committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import dnmf
from dnmf._convert import convert
from dnmf._store import sample_panels

N, M, ROWS, CHUNK = 600, 40, 100, 50
#: 6 panels of 2 chunks each; the fingerprint samples 5 of them.
UNSAMPLED = [i for i in range(N // ROWS) if i not in sample_panels(N // ROWS, (N, M))]


def _V() -> np.ndarray:
    rng = np.random.default_rng(16)
    return rng.random((N, 5)) @ rng.random((5, M)) + 0.1 * rng.random((N, M))


def _fit(data: Path, out: Path, max_iter: int = 4, **kw) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        dnmf.NMF(4, max_iter=max_iter, tol=0.0, random_state=7, panel_rows=ROWS,
                 out=str(out), checkpoint_every=2, scheduler="threads", **kw).fit(str(data))


def _resume(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DNMF_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dnmf", "resume", str(out), "--max-iter",
                           "8"], cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line the command ended with (asserting there is only it)."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert "Traceback" not in proc.stderr and "bug in dnmf" not in proc.stderr
    return errors[0]


@pytest.fixture
def user_run(tmp_path) -> tuple[Path, Path]:
    """A user's V.zarr (Zarr's default codecs, no checksums) and a run of 4 iterations."""
    data = tmp_path / "V.zarr"
    arr = zarr.create_array(store=str(data), shape=(N, M), chunks=(CHUNK, M), dtype="f8")
    arr[...] = _V()
    out = tmp_path / "run.zarr"
    _fit(data, out)
    return data, out


def _chunk(data: Path, panel: int, second: bool = False) -> Path:
    return data / "c" / str(panel * ROWS // CHUNK + int(second)) / "0"


def test_a_deleted_chunk_outside_the_sample_is_one_line_on_resume(user_run):
    data, out = user_run
    manifest = (out / "manifest.json").read_bytes()
    chunk = _chunk(data, UNSAMPLED[0], second=True)
    chunk.unlink()
    line = _one_error_line(_resume(out))
    key = f"c/{UNSAMPLED[0] * 2 + 1}/0"
    assert f"{data}/{key}" in line and f"panel {UNSAMPLED[0]}" in line, line
    assert "deleted" in line and "Restore V" in line and "overwrite" in line, line
    assert (out / "manifest.json").read_bytes() == manifest  # nothing committed


def test_a_truncated_chunk_is_named_exactly_before_any_pass(user_run):
    data, out = user_run
    manifest = (out / "manifest.json").read_bytes()
    chunk = _chunk(data, UNSAMPLED[0], second=True)  # the panel's second chunk
    chunk.write_bytes(chunk.read_bytes()[:40])
    line = _one_error_line(_resume(out))
    key, first = f"c/{UNSAMPLED[0] * 2 + 1}/0", f"c/{UNSAMPLED[0] * 2}/0"
    assert f"chunk {data}/{key} " in line and first not in line, line
    assert "damaged or truncated" in line and "Restore it" in line, line
    assert (out / "manifest.json").read_bytes() == manifest


def test_a_flipped_bit_in_a_chunk_of_V_written_by_dnmf_is_detected(tmp_path):
    src = tmp_path / "V.npy"
    np.save(src, _V())
    data = tmp_path / "V.zarr"
    convert(str(src), str(data), chunk_rows=CHUNK)
    out = tmp_path / "run.zarr"
    _fit(data, out)
    manifest = (out / "manifest.json").read_bytes()
    chunk = _chunk(data, UNSAMPLED[0])
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the compressed payload: same size
    chunk.write_bytes(bytes(raw))
    line = _one_error_line(_resume(out))
    assert f"chunk {data}/c/{UNSAMPLED[0] * 2}/0 " in line and "CRC-32C" in line, line
    assert (out / "manifest.json").read_bytes() == manifest


def test_a_chunk_deleted_while_the_fit_runs_commits_nothing_of_that_pass(tmp_path):
    data = tmp_path / "V.zarr"
    arr = zarr.create_array(store=str(data), shape=(N, M), chunks=(CHUNK, M), dtype="f8")
    arr[...] = _V()
    out = tmp_path / "run.zarr"
    chunk = _chunk(data, UNSAMPLED[0])

    def delete_after_3(iteration, loss):
        if iteration == 3:
            chunk.unlink()

    with pytest.raises(dnmf.errors.StoreError) as info:
        _fit(data, out, max_iter=8, callback=delete_after_3)
    message = str(info.value)
    assert "\n" not in message and f"c/{UNSAMPLED[0] * 2}/0" in message, message
    assert "Nothing of iteration 4 was committed; iteration 2 is committed" in message
    run = dnmf.open_run(str(out))
    # The committed losses are those of iteration 2 as an undamaged fit makes them.
    clean = tmp_path / "clean.zarr"
    arr[...] = _V()  # (chunk back)
    _fit(data, clean, max_iter=2)
    assert run.iteration == 2
    assert run.loss_history == dnmf.open_run(str(clean)).loss_history


# ------------------------------------------------------------------ online runs
def _online(data: Path, out: Path, max_iter: int, **kw) -> dnmf.MiniBatchNMF:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        return dnmf.MiniBatchNMF(4, batch_size=20, max_iter=max_iter, tol=0.0,
                                 max_no_improvement=None, random_state=7, out=str(out),
                                 **kw).fit(str(data))


def test_an_online_run_resumed_on_v_with_a_deleted_chunk_is_refused_naming_it(tmp_path):
    data = tmp_path / "V.zarr"
    arr = zarr.create_array(store=str(data), shape=(N, M), chunks=(CHUNK, M), dtype="f8")
    arr[...] = _V()
    out = tmp_path / "online.zarr"
    _online(data, out, max_iter=1)
    manifest = (out / "manifest.json").read_bytes()
    (data / "c" / "7" / "0").unlink()  # Zarr would read it as zeros
    with pytest.raises(dnmf.errors.StoreError) as info:
        _online(data, out, max_iter=2)  # a larger max_iter continues the run
    message = str(info.value)
    assert "\n" not in message and f"{data}/c/7/0" in message and "deleted" in message
    assert "V changed since the online run" in message and "Restore V" in message
    assert (out / "manifest.json").read_bytes() == manifest  # nothing committed
    # With the chunk back, the run continues to what an uninterrupted fit gives.
    arr[...] = _V()
    resumed = _online(data, out, max_iter=2)
    whole = _online(data, tmp_path / "whole.zarr", max_iter=2)
    np.testing.assert_array_equal(resumed.components_, whole.components_)


def test_a_chunk_deleted_while_an_online_fit_runs_stops_it_before_the_next_commit(
        tmp_path):
    import threading
    import time

    data = tmp_path / "V.zarr"
    arr = zarr.create_array(store=str(data), shape=(N, M), chunks=(CHUNK, M), dtype="f8")
    arr[...] = _V()
    out = tmp_path / "online.zarr"
    chunk = data / "c" / "11" / "0"  # the last rows: read late in every epoch

    def delete_after_first_commit() -> None:
        deadline = time.monotonic() + 60
        while not (out / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        chunk.unlink()

    thread = threading.Thread(target=delete_after_first_commit)
    thread.start()
    try:
        with pytest.raises(dnmf.errors.StoreError) as info:
            _online(data, out, max_iter=40, checkpoint_every=30)
    finally:
        thread.join()
    message = str(info.value)
    assert "\n" not in message and f"{data}/c/11/0" in message, message
    assert "while the online fit" in message and "was committed" in message, message
    run = dnmf.open_run(str(out))
    assert not run.complete


def test_the_listing_before_a_commit_is_rate_limited_when_it_is_slow(tmp_path, monkeypatch,
                                                                       caplog):
    """A listing that costs more than LISTING_SHARE of the time between commits (and
    more than LISTING_FLOOR) is skipped before commits, with a debug line; resume still
    lists. (Both limits set to 0 here: every listing counts as slow.)"""
    import logging

    import dnmf._run as run_module

    data = tmp_path / "V.zarr"
    arr = zarr.create_array(store=str(data), shape=(N, M), chunks=(CHUNK, M), dtype="f8")
    arr[...] = _V()
    out = tmp_path / "run.zarr"
    chunk = _chunk(data, UNSAMPLED[0])
    monkeypatch.setattr(run_module, "LISTING_FLOOR", 0.0)
    monkeypatch.setattr(run_module, "LISTING_SHARE", 0.0)

    def delete_after_3(iteration, loss):
        if iteration == 3:
            chunk.unlink()

    with caplog.at_level(logging.DEBUG, logger="dnmf"):
        _fit(data, out, max_iter=6, callback=delete_after_3)  # not seen before commits
    messages = [r.getMessage() for r in caplog.records]
    commits = sum(m.startswith("committed iteration") for m in messages)
    assert commits >= 4  # iterations 0, 2, 4, 6 (and the final one)
    assert sum("chunk listing" in m and "skipped" in m for m in messages) == commits
    line = _one_error_line(_resume(out))  # ... but resume lists, always
    assert f"c/{UNSAMPLED[0] * 2}/0" in line and "deleted" in line, line
