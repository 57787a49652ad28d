"""Fits with ``out``: results in a run store, resume, refusals, damage, locks, readers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings

import numpy as np
import pytest
import zarr

import dnmf
from dnmf import (
    ConvergenceWarning,
    CorruptCheckpointError,
    IncompatibleRunError,
    InvalidInputError,
    RunLockedError,
    StoreError,
)

WORKER = os.path.join(os.path.dirname(__file__), "checkpoint_worker.py")
N, M, K, ROWS = 600, 60, 4, 100


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def make_V(seed: int = 0, n: int = N, m: int = M, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    V = rng.random((n, 5)) @ rng.random((5, m)) + 0.1 * rng.random((n, m))
    return V.astype(dtype)


def write_zarr(path, V: np.ndarray, chunk_rows: int = 50) -> str:
    store = path if hasattr(path, "list_prefix") else str(path)
    arr = zarr.create_array(store=store, shape=V.shape, chunks=(chunk_rows, V.shape[1]),
                            dtype=V.dtype)
    arr[...] = V
    return str(path)


def model(**kw) -> dnmf.NMF:
    params = dict(random_state=3, tol=0.0, max_iter=12, panel_rows=ROWS, scheduler="threads")
    params.update(kw)
    return dnmf.NMF(K, **params)


def assert_same_fit(run_or_est, ref: dnmf.NMF, W_ref: np.ndarray) -> None:
    if isinstance(run_or_est, dnmf.Run):
        W, H, history = run_or_est.W.compute(), run_or_est.H, run_or_est.loss_history
    else:
        W, H, history = run_or_est[0], run_or_est[1].components_, run_or_est[1].loss_history_
    np.testing.assert_array_equal(np.asarray(W), W_ref)
    np.testing.assert_array_equal(H, ref.components_)
    assert history == ref.loss_history_


@pytest.fixture(scope="module")
def V() -> np.ndarray:
    return make_V()


@pytest.fixture(scope="module")
def reference(V):
    """Uninterrupted in-memory fits, by max_iter."""
    cache = {}

    def fit(max_iter=12, **kw):
        key = (max_iter, tuple(sorted(kw.items())))
        if key not in cache:
            est = model(max_iter=max_iter, **kw)
            cache[key] = (est, est.fit_transform(V))
        return cache[key]

    return fit


# ----------------------------------------------------------------- round trips
def test_fit_with_out_returns_dask_W_equal_to_in_memory_fit(tmp_path, V, reference):
    ref, W_ref = reference()
    est = model(out=tmp_path / "run", checkpoint_every=5)
    W = est.fit_transform(V)
    assert type(W).__module__.startswith("dask")
    assert W.chunks[0] == (ROWS,) * (N // ROWS)
    assert_same_fit((W.compute(), est), ref, W_ref)
    run = dnmf.open_run(tmp_path / "run")
    assert run.complete and run.stop_reason == "max_iter" and run.iteration == 12
    assert run.params["n_components"] == K and run.params["random_state"] == 3
    assert_same_fit(run, ref, W_ref)
    assert "iteration 12" in repr(run)
    again = run.to_estimator()
    np.testing.assert_array_equal(again.components_, ref.components_)
    assert again.n_iter_ == 12 and again.out == str(tmp_path / "run")


def test_layout_is_readable_with_plain_zarr(tmp_path, V, reference):
    ref, W_ref = reference()
    model(out=tmp_path / "run").fit(V)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["manifest"]
    group = zarr.open_group(str(tmp_path / "run"), mode="r")
    # The arrays hold the iterate; a finished HALS fit's result is it balanced by the
    # manifest's scale (docs/store-format.md), so that an extension continues bit for bit.
    scale = np.asarray(manifest["balance"])
    assert scale.shape == (K,) and np.all(scale > 0) and not np.all(scale == 1)
    W_raw, H_raw = group[manifest["W"]["array"]][...], group[manifest["H"]["array"]][...]
    np.testing.assert_array_equal(W_raw * scale.astype(W_raw.dtype), W_ref)
    np.testing.assert_array_equal(
        (H_raw.astype(np.float64) / scale[:, None]).astype(H_raw.dtype), ref.components_)
    assert manifest["iteration"] == 12 and manifest["complete"]
    assert manifest["dnmf_version"] == dnmf.__version__
    assert manifest["fingerprint"]["shape"] == [N, M]


def test_zip_store_round_trip_and_extension(tmp_path, V, reference):
    ref, W_ref = reference(max_iter=8)
    target = tmp_path / "run.zip"
    W = model(max_iter=8, out=str(target)).fit_transform(V)
    assert target.is_file()
    assert not (tmp_path / "run.zip.partial").exists()
    np.testing.assert_array_equal(W.compute(), W_ref)
    assert_same_fit(dnmf.open_run(target), ref, W_ref)
    assert dnmf.open_run(target).to_estimator().out == str(target)
    # Plain zarr reads the zip too.
    store = zarr.storage.ZipStore(str(target), mode="r")
    manifest = json.loads(
        __import__("zipfile").ZipFile(target).read("manifest.json")
    )["manifest"]
    W_raw = zarr.open_array(store=store, path=manifest["W"]["array"], mode="r")[...]
    np.testing.assert_array_equal(
        W_raw * np.asarray(manifest["balance"]).astype(W_raw.dtype), W_ref)
    # A refused call leaves the zip as it was.
    packed = target.read_bytes()
    with pytest.raises(IncompatibleRunError, match="solver"):
        model(max_iter=8, out=str(target), solver="mu").fit(V)
    assert target.read_bytes() == packed
    assert not (tmp_path / "run.zip.partial").exists()
    # Continue the packed run to 12 iterations: same as an uninterrupted 12.
    ref12, W12 = reference(max_iter=12)
    est = model(max_iter=12, out=str(target))
    np.testing.assert_array_equal(est.fit_transform(V).compute(), W12)
    assert_same_fit(dnmf.open_run(target), ref12, W12)


def test_memory_url_round_trip_and_resume(V, reference):
    url = f"memory://dnmf-run-{uuid.uuid4().hex}"
    ref8, W8 = reference(max_iter=8)
    model(max_iter=8, out=url, checkpoint_every=3).fit(V)
    assert_same_fit(dnmf.open_run(url), ref8, W8)
    ref12, W12 = reference(max_iter=12)
    run = dnmf.resume(url, X=V, max_iter=12)
    assert_same_fit(run, ref12, W12)


def test_zarr_store_object_as_out(V, reference):
    ref, W_ref = reference()
    store = zarr.storage.MemoryStore()
    W = model(out=store).fit_transform(V)
    np.testing.assert_array_equal(W.compute(), W_ref)
    assert_same_fit(dnmf.open_run(store), ref, W_ref)
    assert dnmf.open_run(store).to_estimator().out is store


# ----------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    ("solver", "beta_loss", "init"),
    [("hals", "frobenius", "nndsvda"), ("mu", "kullback-leibler", "random"),
     ("als", "frobenius", "nndsvd")],
)
def test_resume_after_interrupt_is_bit_for_bit(tmp_path, V, reference, solver, beta_loss, init):
    kw = dict(solver=solver, beta_loss=beta_loss, init=init)
    ref, W_ref = reference(**kw)

    def interrupt(iteration, loss):
        if iteration == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        model(out=out, checkpoint_every=100, callback=interrupt, **kw).fit(V)
    run = dnmf.open_run(out)
    # The last completed iteration was committed on the way out.
    assert run.iteration == (6 if beta_loss == "frobenius" else 7) and not run.complete
    est = model(out=out, checkpoint_every=100, **kw)
    W = est.fit_transform(V)
    assert_same_fit((W.compute(), est), ref, W_ref)


def test_resume_from_path_alone(tmp_path, V, reference):
    path = write_zarr(tmp_path / "V.zarr", V)
    ref, W_ref = reference(max_iter=12)
    model(max_iter=5, out=tmp_path / "run").fit(path)
    run = dnmf.open_run(tmp_path / "run")
    assert run.source == {"kind": "zarr", "location": path}
    run = dnmf.resume(tmp_path / "run", max_iter=12)
    assert_same_fit(run, ref, W_ref)
    # A finished run: fitting again reads it back without iterating.
    calls = []
    est = model(out=tmp_path / "run", callback=lambda i, loss: calls.append(i))
    np.testing.assert_array_equal(est.fit_transform(path).compute(), W_ref)
    assert calls == [] and est.n_iter_ == 12


def test_run_killed_before_its_first_commit_is_started_afresh(tmp_path, V, reference):
    from dnmf._store import RunStore

    # What a kill during initialisation leaves: buffers, no manifest (other sizes here).
    RunStore.open(tmp_path / "run").create(n=50, m=7, k=2, panel_rows=10,
                                           dtype=np.dtype("float64"))
    _, W_ref = reference()
    W = model(out=tmp_path / "run").fit_transform(V)
    np.testing.assert_array_equal(W.compute(), W_ref)


@pytest.mark.parametrize("where", ["zip", "memory"])
def test_V_in_a_zip_or_at_a_url_is_reopened_by_resume(tmp_path, V, reference, where):
    if where == "zip":
        location = str(tmp_path / "V.zip")
        store = zarr.storage.ZipStore(location, mode="w")
        write_zarr(store, V)
        store.close()
    else:
        location = f"memory://dnmf-V-{uuid.uuid4().hex}"
        write_zarr(location, V)
    ref, W_ref = reference()
    model(max_iter=4, out=tmp_path / "run").fit(location)
    assert dnmf.open_run(tmp_path / "run").source["location"] == location
    assert_same_fit(dnmf.resume(tmp_path / "run", max_iter=12), ref, W_ref)


def test_resume_of_in_memory_data_needs_X(tmp_path, V):
    model(max_iter=3, out=tmp_path / "run").fit(V)
    with pytest.raises(InvalidInputError, match=r"dnmf.resume\(path, X=...\)"):
        dnmf.resume(tmp_path / "run", max_iter=5)


def test_converged_run_is_not_continued(tmp_path, V):
    out = tmp_path / "run"
    est = model(out=out, tol=1e-2, max_iter=200)
    est.fit(V)
    run = dnmf.open_run(out)
    assert run.complete and run.stop_reason == "converged" and run.iteration < 200
    run2 = dnmf.resume(out, X=V, max_iter=400)
    assert run2.iteration == run.iteration and run2.loss_history == run.loss_history


def test_lower_max_iter_than_done_is_refused(tmp_path, V):
    model(max_iter=6, out=tmp_path / "run").fit(V)
    with pytest.raises(IncompatibleRunError, match="already at iteration 6"):
        model(max_iter=4, out=tmp_path / "run").fit(V)


# ------------------------------------------------------------------- refusals
def _snapshot(path) -> dict[str, bytes]:
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


def test_resume_refuses_other_data_and_names_what_differs(tmp_path, V):
    out = tmp_path / "run"
    model(max_iter=3, out=out).fit(V)
    before = _snapshot(out)
    other = V.copy()
    other[0, 0] += 1.0  # first panel: always in the fingerprint's sample
    with pytest.raises(IncompatibleRunError, match="content of V") as info:
        model(max_iter=5, out=out).fit(other)
    assert "overwrite=True" in str(info.value)
    with pytest.raises(IncompatibleRunError, match=r"shape: \[600, 60\] \(run\) vs \[600, 59\]"):
        model(max_iter=5, out=out).fit(V[:, :59])
    with pytest.raises(IncompatibleRunError, match=r"dtype: '<f4' \(run\) vs '<f8' \(now\)"):
        model(max_iter=5, out=out).fit(V.astype(np.float64))
    assert _snapshot(out) == before  # nothing touched, no lock left behind


def test_resume_refuses_other_parameters_and_names_each(tmp_path, V):
    out = tmp_path / "run"
    model(max_iter=3, out=out).fit(V)
    before = _snapshot(out)
    with pytest.raises(IncompatibleRunError) as info:
        model(max_iter=5, out=out, solver="mu", alpha_W=0.1, random_state=4).fit(V)
    text = str(info.value)
    assert "solver: 'hals' (run) vs 'mu' (now)" in text
    assert "alpha_W: 0.0 (run) vs 0.1 (now)" in text
    assert "random_state: 3 (run) vs 4 (now)" in text
    with pytest.raises(IncompatibleRunError, match=r"panel_rows: 100 \(run\) vs 50"):
        model(max_iter=5, out=out, panel_rows=50).fit(V)
    with pytest.raises(IncompatibleRunError, match=r"n_components: 4 \(run\) vs 5"):
        dnmf.NMF(5, random_state=3, tol=0.0, max_iter=5, panel_rows=ROWS, out=out).fit(V)
    assert _snapshot(out) == before
    # What may differ: max_iter, verbose, callback, scheduler, checkpoint_every, cache.
    model(max_iter=4, out=out, verbose=0, callback=lambda i, loss: None,
          checkpoint_every=1, cache=True, random_state=None, panel_rows=None).fit(V)
    assert dnmf.open_run(out).iteration == 4
    # overwrite=True starts afresh with the new parameters.
    model(max_iter=2, out=out, solver="mu", overwrite=True).fit(V)
    run = dnmf.open_run(out)
    assert run.params["solver"] == "mu" and run.iteration == 2


def test_out_holding_other_files_is_refused(tmp_path, V):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(IncompatibleRunError, match="not a dnmf run"):
        model(out=out).fit(V)
    assert (out / "notes.txt").read_text() == "precious"
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_out_inside_the_input_is_refused(tmp_path, V):
    path = write_zarr(tmp_path / "V.zarr", V)
    with pytest.raises(StoreError, match="overlaps the input"):
        model(out=os.path.join(path, "run"), overwrite=True).fit(path)


# --------------------------------------------------------------------- damage
def _committed_chunk(out, panel=2) -> str:
    manifest = json.loads((out / "manifest.json").read_text())["manifest"]
    return str(out / manifest["W"]["array"] / "c" / str(panel) / "0")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_W_chunk_is_detected_and_named(tmp_path, V, damage):
    out = tmp_path / "run"
    model(max_iter=3, out=out).fit(V)
    chunk = _committed_chunk(out)
    raw = bytearray(open(chunk, "rb").read())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    else:
        raw = raw[: len(raw) - 3]
    with open(chunk, "wb") as f:
        f.write(raw)
    for attempt in (lambda: dnmf.open_run(out), lambda: model(max_iter=5, out=out).fit(V)):
        with pytest.raises(CorruptCheckpointError, match="checkpoint is corrupted") as info:
            attempt()
        assert chunk in str(info.value)
    # Lazy reading detects it too.
    run = dnmf.open_run(out, verify=False)
    with pytest.raises(CorruptCheckpointError, match=chunk):
        run.W.compute()


def test_damaged_manifest_is_detected_and_named(tmp_path, V):
    out = tmp_path / "run"
    model(max_iter=3, out=out).fit(V)
    path = out / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace('"iteration": 3', '"iteration": 4'))
    with pytest.raises(CorruptCheckpointError, match="checkpoint is corrupted") as info:
        dnmf.open_run(out)
    assert str(path) in str(info.value)
    path.write_text(text[:100])
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        model(max_iter=5, out=out).fit(V)


# ------------------------------------------------------------ locks and readers
def _start_writer(V_path, out, *, sleep, max_iter=40, every=1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, V_path, str(out), "--max-iter", str(max_iter),
         "--every", str(every), "--sleep", str(sleep), "--panel-rows", str(ROWS),
         "--k", str(K)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _wait_for(predicate, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the writer")
        time.sleep(0.05)


def _committed_iteration(out) -> int:
    try:
        return json.loads((out / "manifest.json").read_text())["manifest"]["iteration"]
    except (OSError, ValueError, KeyError):
        return -1


def test_concurrent_writer_refused_then_dead_holder_taken_over(tmp_path, V, caplog):
    path = write_zarr(tmp_path / "V.zarr", V)
    out = tmp_path / "run"
    writer = _start_writer(path, out, sleep=0.3)
    try:
        _wait_for(lambda: _committed_iteration(out) >= 1, writer)
        with pytest.raises(RunLockedError, match=f"pid {writer.pid}") as info:
            model(max_iter=40, out=out, random_state=7).fit(path)
        assert "host" in str(info.value)
    finally:
        writer.kill()  # SIGKILL: the lock stays behind
        writer.wait()
    assert (out / "lock.json").exists()
    with caplog.at_level(logging.WARNING, logger="dnmf"):
        run = dnmf.resume(out, max_iter=6)
    assert "taking over the lock" in caplog.text
    assert run.iteration == 6 and not (out / "lock.json").exists()


def test_reading_a_run_while_it_is_written_gives_consistent_snapshots(tmp_path, V):
    path = write_zarr(tmp_path / "V.zarr", V)
    out = tmp_path / "run"
    V64 = V.astype(np.float64)
    writer = _start_writer(path, out, sleep=0.05, max_iter=400)
    seen = []
    try:
        _wait_for(lambda: _committed_iteration(out) >= 1, writer)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and writer.poll() is None:
            run = dnmf.open_run(out)
            try:
                W = run.W.compute().astype(np.float64)
            except CorruptCheckpointError:
                continue  # the writer moved on twice: detected, never mixed
            if not run.loss_history:
                continue
            loss = 0.5 * np.sum((V64 - W @ run.H.astype(np.float64)) ** 2)
            np.testing.assert_allclose(loss, run.loss_history[-1], rtol=1e-4)
            assert len(run.loss_history) == run.iteration
            seen.append(run.iteration)
    finally:
        writer.kill()
        writer.wait()
    assert len(set(seen)) >= 3, seen
    assert seen == sorted(seen)


# ---------------------------------------------------------- distributed, cache
def test_cache_gives_the_same_fit(tmp_path, V, reference):
    path = write_zarr(tmp_path / "V.zarr", V)
    _, W_ref = reference()
    est = model(out=tmp_path / "run", cache=True)
    np.testing.assert_array_equal(est.fit_transform(path).compute(), W_ref)
    est2 = model(cache=True)
    np.testing.assert_array_equal(est2.fit_transform(path).compute(), W_ref)


def test_cache_reads_each_panel_of_V_once(tmp_path, V, monkeypatch):
    from dnmf._source import ZarrPanel

    path = write_zarr(tmp_path / "V.zarr", V)
    reads = []
    original = ZarrPanel.load
    monkeypatch.setattr(ZarrPanel, "load", lambda self: reads.append(self.start) or original(self))
    n_panels = N // ROWS
    model(max_iter=5, out=tmp_path / "run", cache=True).fit(path)
    # Once per panel, plus the fingerprint's sample (at most five panels).
    assert sorted(set(reads)) == list(range(0, N, ROWS))
    assert len(reads) <= n_panels + 5
    reads.clear()
    model(max_iter=5, out=tmp_path / "run2", cache=False).fit(path)
    assert len(reads) >= 5 * n_panels


@pytest.mark.parametrize("out", [False, True], ids=["in-memory", "run-store"])
def test_cache_auto_keeps_a_small_store_and_reads_a_larger_one_every_pass(
        tmp_path, V, monkeypatch, out):
    """cache="auto" (the default): a V of at most AUTO_CACHE_BYTES is read once, a
    larger one every pass; the fit is the same bit for bit either way."""
    from dnmf import _prepared
    from dnmf._source import ZarrPanel

    path = write_zarr(tmp_path / "V.zarr", V)
    reads = []
    original = ZarrPanel.load
    monkeypatch.setattr(ZarrPanel, "load", lambda self: reads.append(self.start) or original(self))
    n_panels = N // ROWS
    kw = {"out": tmp_path / "run"} if out else {}
    assert model().cache == "auto"
    W_kept = np.asarray(model(max_iter=5, **kw).fit_transform(path))
    assert sorted(set(reads)) == list(range(0, N, ROWS))
    assert len(reads) <= n_panels + (5 if out else 0)
    reads.clear()
    size = V.size * V.dtype.itemsize
    monkeypatch.setattr(_prepared, "AUTO_CACHE_BYTES", size - 1)
    kw = {"out": tmp_path / "run2"} if out else {}
    W_read = np.asarray(model(max_iter=5, **kw).fit_transform(path))
    assert len(reads) >= 5 * n_panels
    np.testing.assert_array_equal(W_read, W_kept)


def test_distributed_fit_with_out(tmp_path, V, reference, distributed_client):
    path = write_zarr(tmp_path / "V.zarr", V)
    ref, W_ref = reference(max_iter=6)
    out = tmp_path / "run"

    def interrupt(iteration, loss):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model(max_iter=6, out=out, scheduler=distributed_client, checkpoint_every=100,
              callback=interrupt).fit(path)
    assert dnmf.open_run(out).iteration == 2
    run = dnmf.resume(out, scheduler=distributed_client)
    # Worker processes run their own BLAS: equal to the local fit to rounding.
    np.testing.assert_allclose(run.W.compute(), W_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run.H, ref.components_, rtol=1e-4, atol=1e-6)
    # And bit for bit equal to an uninterrupted distributed run.
    est = model(max_iter=6, out=tmp_path / "run2", scheduler=distributed_client)
    W2 = est.fit_transform(path).compute()
    np.testing.assert_array_equal(run.W.compute(), W2)
    assert run.loss_history == est.loss_history_


# ---------------------------------------------------------------- memory bound
MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, warnings, numpy as np, zarr, dnmf
    from dnmf.testing import peak_rss
    warnings.simplefilter("ignore")
    V = zarr.open_array(sys.argv[1], mode="r")
    # A tiny fit with a run store first: the libraries a fit imports are not panels.
    dnmf.NMF(2, max_iter=1, out=sys.argv[2] + "-warm", scheduler="threads").fit(
        np.asarray(V[:50]))
    before = peak_rss()
    # cache=False: V read every pass (cache="auto" would keep a V this small).
    dnmf.NMF(5, init=sys.argv[3], max_iter=2, panel_rows=int(sys.argv[4]), random_state=0,
             out=sys.argv[2], scheduler="threads", cache=False).fit(sys.argv[1])
    after = peak_rss()
    print(before, after)
    """
)


def _memory_growth(path, out, init: str, rows: int, env: dict[str, str]) -> int:
    """How far a fit raised the peak RSS of a fresh process (its own high-water mark)."""
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path), str(out), init, str(rows)],
        capture_output=True, text=True, timeout=300, check=True, env={**os.environ, **env},
    )
    before, after = (int(x) for x in proc.stdout.split())
    return after - before


def _write_uniform(path, n: int, m: int, rows: int) -> int:
    arr = zarr.create_array(store=str(path), shape=(n, m), chunks=(rows, m), dtype="f4",
                            compressors=None)
    rng = np.random.default_rng(0)
    for a in range(0, n, 8 * rows):
        arr[a : a + 8 * rows] = rng.random((min(8 * rows, n - a), m), dtype=np.float32)
    return n * m * 4


@pytest.mark.parametrize("init", ["random", pytest.param("nndsvda", marks=pytest.mark.heavy)])
def test_peak_memory_is_bounded_by_panels_not_V(tmp_path, init):
    m, rows = 1000, 1000  # panels of 4 MB
    _write_uniform(tmp_path / "small.zarr", 10_000, m, rows)  # 40 MB
    big = _write_uniform(tmp_path / "big.zarr", 40_000, m, rows)  # 160 MB
    # glibc as it comes: freed panels may stay in the allocator's arenas, but loading V
    # whole would add 160 MB.
    growth = _memory_growth(tmp_path / "big.zarr", tmp_path / "run", init, rows, {})
    assert 0 < growth < 0.6 * big, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert dnmf.open_run(tmp_path / "run").iteration == 2
    # With freed memory returned promptly (MALLOC_TRIM_THRESHOLD_, as Dask runs its
    # workers): a few panels in flight, the same for 4× the rows.
    trim = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    g_small = _memory_growth(tmp_path / "small.zarr", tmp_path / "r1", init, rows, trim)
    g_big = _memory_growth(tmp_path / "big.zarr", tmp_path / "r2", init, rows, trim)
    assert 0 < g_big < 0.25 * big, f"peak RSS grew by {g_big / 2**20:.0f} MiB"
    assert g_big - g_small < 3 * rows * m * 4, (g_small, g_big)  # under three panels


def test_a_run_stopped_by_its_callback_is_extended_by_a_larger_max_iter(tmp_path):
    import warnings

    from dnmf.testing import planted

    V, _, _ = planted(200, 40, 3, seed=0, noise=0.1)
    out = str(tmp_path / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dnmf.NMF(3, out=out, tol=0, max_iter=50, random_state=0,
                 callback=lambda it, loss: it >= 5).fit(V)
        assert dnmf.resume(out, X=V).iteration == 5  # same limit: stays stopped
        run = dnmf.resume(out, X=V, max_iter=60)
        ref = dnmf.NMF(3, tol=0, max_iter=60, random_state=0)
        W = ref.fit_transform(V)
    assert run.complete and run.iteration == 60 and run.stop_reason == "max_iter"
    np.testing.assert_array_equal(np.asarray(run.W), W)
    np.testing.assert_array_equal(run.loss_history, ref.loss_history_)


def test_peak_rss_is_the_childs_own_not_inherited_from_its_parent():
    from dnmf.testing import peak_rss

    ballast = np.ones(256 * 2**20 // 8)  # this process: at least 256 MiB resident
    assert peak_rss() >= ballast.nbytes
    code = "from dnmf.testing import peak_rss; print(peak_rss())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    # The child imports NumPy and dnmf only: far below the parent's ballast.
    assert 0 < child < ballast.nbytes / 2, child
    del ballast


@pytest.mark.parametrize("solver", ["mu", "hals", "als"])
def test_all_zero_rows_and_all_zero_data_are_committed(tmp_path, solver):
    # Zero rows of V make their W rows zero (exactly, for MU and ALS): a W chunk that
    # equals Zarr's fill value must still be written, synced and checked.
    V = make_V(dtype=np.float64)
    V[:ROWS] = 0.0
    out = tmp_path / "run.zarr"
    est = dnmf.NMF(K, solver=solver, max_iter=4, random_state=0, out=str(out),
                   panel_rows=ROWS, checkpoint_every=1)
    W = np.asarray(est.fit_transform(V))
    assert np.all(W[:ROWS] <= 1e-16)
    run = dnmf.open_run(str(out))  # verifies every checksum
    assert run.complete and run.iteration == 4
    buffer = json.loads((out / "manifest.json").read_text())["manifest"]["W"]["array"]
    chunks = [p for p in (out / buffer / "c").rglob("*") if p.is_file()]
    assert len(chunks) == N // ROWS  # every panel's chunk is on disk
    np.testing.assert_array_equal(np.asarray(run.W), W)
    # All-zero data: a fit to zero, committed like any other.
    zero = dnmf.NMF(K, solver=solver, max_iter=3, random_state=0, out=str(tmp_path / "z.zarr"))
    assert np.all(np.asarray(zero.fit_transform(np.zeros((N, M)))) <= 1e-16)
    assert dnmf.open_run(str(tmp_path / "z.zarr")).complete


# ------------------------------------------- damage the checksums do not cover
def _small_run(path, **kw) -> str:
    V = make_V(n=120, m=12)
    model(out=path, max_iter=6, checkpoint_every=2, panel_rows=40, **kw).fit(V)
    return str(path)


def _W_meta(path) -> tuple[str, str]:
    manifest = json.loads((path / "manifest.json").read_text())["manifest"]
    return manifest["W"]["array"], str(path / manifest["W"]["array"] / "zarr.json")


def test_a_changed_dtype_in_W_metadata_is_detected(tmp_path):
    """float64 -> int64 keeps the chunks' bytes (and checksums): only the pin sees it."""
    run = tmp_path / "run"
    _small_run(run, )
    _, meta_path = _W_meta(run)
    meta = json.loads(open(meta_path).read())
    assert meta["data_type"] == "float32"
    meta["data_type"] = "int32"  # same item size: every chunk reads as many bytes
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CorruptCheckpointError,
                       match=r"W\d/zarr\.json' was changed after the commit: data_type "
                             r"'int32' \(now\) vs 'float32' \(committed\)"):
        dnmf.open_run(run)
    with pytest.raises(CorruptCheckpointError, match="data_type 'int32'"):
        dnmf.resume(run, X=make_V(n=120, m=12), max_iter=8)


@pytest.mark.parametrize("damage", ["garbage", "metadata deleted", "buffer deleted"])
def test_damaged_W_metadata_is_one_clear_error(tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    _small_run(run)
    name, meta_path = _W_meta(run)
    if damage == "garbage":
        with open(meta_path, "wb") as f:
            f.write(b"\x00{not json")
        pattern = rf"metadata '.*{name}/zarr\.json' of the array {name} is not readable"
    elif damage == "metadata deleted":
        os.unlink(meta_path)
        pattern = rf"metadata '.*{name}/zarr\.json' of the array {name} is missing"
    else:
        shutil.rmtree(run / name)
        pattern = rf"metadata '.*{name}/zarr\.json' of the array {name} is missing"
    for attempt in (lambda: dnmf.open_run(run),
                    lambda: dnmf.resume(run, X=make_V(n=120, m=12), max_iter=8)):
        with pytest.raises(CorruptCheckpointError, match=pattern) as exc:
            attempt()
        assert "\n" not in str(exc.value)


def test_an_unreferenced_W_buffer_with_other_metadata_is_refused_before_writing(tmp_path):
    run = tmp_path / "run"
    _small_run(run)
    name, _ = _W_meta(run)
    other = next(b for b in ("W0", "W1", "W2") if b != name and (run / b).exists())
    meta = json.loads((run / other / "zarr.json").read_text())
    meta["shape"] = [meta["shape"][0] + 1, meta["shape"][1]]
    (run / other / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match=rf"array '.*{other}' has shape"):
        dnmf.resume(run, X=make_V(n=120, m=12), max_iter=8)


def test_a_missing_manifest_with_committed_buffers_is_damage_not_a_fresh_run(tmp_path):
    run = tmp_path / "run"
    _small_run(run)
    before = _snapshot(run)
    os.unlink(run / "manifest.json")
    message = r"was committed .* but its manifest '.*manifest\.json' is missing"
    with pytest.raises(CorruptCheckpointError, match=message):
        dnmf.open_run(run)
    # The same fit again (before: wiped 6 committed iterations and started over).
    with pytest.raises(CorruptCheckpointError, match=message):
        model(out=run, max_iter=6, checkpoint_every=2, panel_rows=40).fit(make_V(n=120, m=12))
    after = _snapshot(run)
    assert {k: v for k, v in before.items() if k != "manifest.json"} == \
        {k: v for k, v in after.items() if k != "lock.json.takeover"}
    # overwrite=True still discards it on purpose.
    model(out=run, max_iter=2, panel_rows=40, overwrite=True).fit(make_V(n=120, m=12))
    assert dnmf.open_run(run).iteration == 2


def test_a_deleted_root_zarr_json_is_damage_for_every_command(tmp_path):
    run = tmp_path / "run"
    _small_run(run)
    os.unlink(run / "zarr.json")
    message = r"group metadata '.*zarr\.json' of the run is missing or damaged"
    with pytest.raises(CorruptCheckpointError, match=message):
        dnmf.open_run(run)
    with pytest.raises(CorruptCheckpointError, match=message):
        dnmf.resume(run, X=make_V(n=120, m=12), max_iter=8)
    with pytest.raises(CorruptCheckpointError, match=message):
        model(out=run, max_iter=6, checkpoint_every=2, panel_rows=40).fit(make_V(n=120, m=12))


# ------------------------------------------- V damaged outside the fingerprint
def _run_on_zarr(tmp_path):
    from dnmf._store import sample_panels

    V = make_V(n=1000, m=12)
    data = write_zarr(tmp_path / "V.zarr", V, chunk_rows=50)
    run = tmp_path / "run"
    model(out=run, max_iter=4, checkpoint_every=2, panel_rows=50).fit(data)
    panel = next(i for i in range(20) if i not in sample_panels(20, V.shape))
    return data, run, panel


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (-1.0, "a negative value"),
                                       (np.inf, "infinity")])
def test_bad_values_written_into_an_unsampled_panel_stop_the_pass(tmp_path, bad, what):
    data, run, panel = _run_on_zarr(tmp_path)
    row = panel * 50 + 7
    zarr.open_array(data, mode="r+")[row, 3] = bad
    before = dnmf.open_run(run)
    with pytest.raises(InvalidInputError) as exc:
        dnmf.resume(run, max_iter=8)
    message = str(exc.value)
    assert f"row {row}, column 3 (in the panel of rows {panel * 50}-{panel * 50 + 49}) " \
           f"holds {what}" in message, message
    assert "nothing of it was kept" in message and "\n" not in message
    after = dnmf.open_run(run)
    assert (after.iteration, after.loss_history) == (before.iteration, before.loss_history)
    assert np.isfinite(after.loss_history).all()


def test_a_valid_value_changed_anywhere_in_V_is_refused_on_resume(tmp_path):
    """Every byte of V is digested when a run starts and again on resume: a value
    rewritten with another valid number, in a panel the sampled fingerprint does not
    read, is refused with the rows that changed, and the run is left as it was."""
    data, run, panel = _run_on_zarr(tmp_path)
    row = panel * 50 + 7
    arr = zarr.open_array(data, mode="r+")
    original = float(arr[row, 3])
    arr[row, 3] = original + 0.25
    before = dnmf.open_run(run)
    with pytest.raises(IncompatibleRunError) as exc:
        dnmf.resume(run, max_iter=8)
    message = str(exc.value)
    assert f"rows {panel * 50}-{panel * 50 + 49} (panel {panel + 1} of 20; 1 panel(s) in all)" \
        in message and "SHA-256" in message and "\n" not in message, message
    after = dnmf.open_run(run)
    assert (after.iteration, after.loss_history) == (before.iteration, before.loss_history)
    arr[row, 3] = original  # restored: the run goes on
    assert dnmf.resume(run, max_iter=8).iteration == 8


def test_an_in_memory_V_changed_between_fits_is_refused(tmp_path):
    """fit(V, out=run) again with an array that differs in one entry: refused."""
    V = make_V(n=600, m=12)
    run = tmp_path / "run"
    model(out=run, max_iter=4, panel_rows=50).fit(V)
    V2 = V.copy()
    V2[333, 5] += 1.0
    with pytest.raises(IncompatibleRunError, match=r"rows 300-349 \(panel 7 of 12"):
        model(out=run, max_iter=6, panel_rows=50).fit(V2)
    assert dnmf.open_run(run).iteration == 4
    assert model(out=run, max_iter=6, panel_rows=50).fit(V).n_iter_ == 6


def test_a_npy_file_changed_on_disk_is_still_checked_by_every_pass(tmp_path):
    """V read in place from .npy (a memory map of the file) is checked by every pass,
    as Zarr is; only arrays resident in memory are checked once, at the start."""
    from dnmf._store import sample_panels

    V = make_V(n=1000, m=12)
    path = tmp_path / "V.npy"
    np.save(path, V)
    run = tmp_path / "run"
    model(out=run, max_iter=4, checkpoint_every=2, panel_rows=50).fit(str(path))
    panel = next(i for i in range(20) if i not in sample_panels(20, V.shape))
    row = panel * 50 + 7
    on_disk = np.load(path, mmap_mode="r+")
    on_disk[row, 3] = -1.0
    on_disk.flush()
    del on_disk
    with pytest.raises(InvalidInputError) as exc:
        dnmf.resume(run, max_iter=8)
    assert f"row {row}, column 3 " in str(exc.value) and "a negative value" in str(exc.value)
    assert dnmf.open_run(run).iteration == 4


def test_a_truncated_chunk_of_V_is_a_store_error_naming_it(tmp_path):
    from dnmf import StoreError

    data, run, panel = _run_on_zarr(tmp_path)
    chunk = os.path.join(data, "c", str(panel), "0")
    with open(chunk, "r+b") as f:
        f.truncate(os.path.getsize(chunk) // 2)
    with pytest.raises(StoreError) as exc:
        dnmf.resume(run, max_iter=8)
    message = str(exc.value)
    assert f"cannot read rows {panel * 50}-{panel * 50 + 49} of V: chunk " in message
    assert f"V.zarr/c/{panel}/0 is damaged or truncated" in message and "\n" not in message
    assert dnmf.open_run(run).iteration == 4


# ------------------------------------------------------------ zip on a full disk
def test_zip_output_on_a_full_disk_keeps_the_run_and_resume_packs_it(tmp_path, small_disk):
    disk = small_disk("2m")
    target = disk / "run.zip"
    filler = disk / "filler"
    V = make_V(n=2000, m=100)

    def fill(iteration, loss):  # just before the last commit: leave ~24 KiB
        if iteration == 5:
            st = os.statvfs(disk)
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 24 * 1024))

    with pytest.raises(StoreError) as exc:
        model(out=target, max_iter=5, checkpoint_every=5, panel_rows=500,
              callback=fill).fit(V)
    message = str(exc.value)
    assert message.startswith(f"cannot write {target}: the disk is full while packing the "
                              f"run. Nothing was lost: the run (complete, iteration 5) is "
                              f"kept in {target}.partial."), message
    assert "dnmf resume" in message and "\n" not in message
    assert not [p for p in os.listdir(disk) if ".tmp-" in p]
    assert not target.exists()
    assert dnmf.open_run(target).iteration == 5  # read from the work directory
    info = _cli("info", str(target), "--json", cwd=tmp_path)  # was: run.zip does not exist
    assert info.returncode == 0 and json.loads(info.stdout)["iteration"] == 5, info.stderr
    H = dnmf.open_run(target).H
    filler.unlink()
    done = _cli("resume", str(target), cwd=tmp_path)  # packs; no data needed
    assert done.returncode == 0, done.stderr
    assert f"packed {target} from {target}.partial" in done.stdout
    assert target.exists() and not (disk / "run.zip.partial").exists()
    run = dnmf.open_run(target)
    assert run.iteration == 5 and run.complete
    np.testing.assert_array_equal(run.H, H)


# ------------------------------------------- fit --overwrite killed mid-way
def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "dnmf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _kill_cli_at(args, point, cwd, marker):
    env = dict(os.environ, DNMF_TEST_PAUSE_AT=point, DNMF_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "dnmf", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    return proc.pid


@pytest.mark.slow
def test_fit_overwrite_killed_before_its_first_commit_puts_the_old_run_back(tmp_path):
    from dnmf._run import recover_replaced

    # CSV: converted to run.input.zarr (a .npy is read in place, nothing to put back)
    np.savetxt(tmp_path / "a.csv", make_V(0, n=200, m=20), delimiter=",")
    np.savetxt(tmp_path / "b.csv", make_V(1, n=200, m=20), delimiter=",")
    done = _cli("fit", "a.csv", "--rank", "3", "--out", "run.zarr", "--max-iter", "4",
                "--seed", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    before = _snapshot(tmp_path / "run.zarr")
    before_input = _snapshot(tmp_path / "run.input.zarr")
    pid = _kill_cli_at(["fit", "b.csv", "--rank", "3", "--out", "run.zarr", "--overwrite",
                        "--seed", "2"], "sink@0", tmp_path, tmp_path / "paused")
    assert (tmp_path / f".run.zarr.replaced-{pid}").exists()  # what the kill left
    lines = recover_replaced(tmp_path / "run.zarr", tmp_path / "run.input.zarr")
    assert lines == [
        f"put back the run at {tmp_path / 'run.zarr'}: 'dnmf fit --overwrite' (process "
        f"{pid}, which is gone) was stopped before its new run committed",
        f"put back the converted input {tmp_path / 'run.input.zarr'} of that run"]
    assert _snapshot(tmp_path / "run.zarr") == before
    assert _snapshot(tmp_path / "run.input.zarr") == before_input
    assert not [p for p in os.listdir(tmp_path) if ".replaced-" in p]
    assert recover_replaced(tmp_path / "run.zarr", tmp_path / "run.input.zarr") == []


def test_a_full_disk_during_a_fit_names_the_run_and_dnmf_resume(tmp_path, small_disk):
    disk = small_disk("1m")
    V = make_V(n=20000, m=10, dtype=np.float64)  # each W buffer: 625 KiB
    out = disk / "run"
    with pytest.raises(StoreError) as exc:
        model(out=out, max_iter=4, checkpoint_every=1, panel_rows=5000).fit(V)
    message = str(exc.value)
    assert message.startswith(f"cannot write the run at {out}: the disk is full "
                              f"(No space left on device: "), message
    assert "iteration 0 is committed and intact" in message
    assert f"dnmf resume {out}" in message and "\n" not in message
    assert dnmf.open_run(out).iteration == 0
