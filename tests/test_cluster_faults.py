"""Fault tolerance and data locality on a real multi-process cluster.

A scheduler and two nanny-managed worker processes are started with
cluster/local/start_cluster.py (one per module); fits go through
``distributed.Client(scheduler_file=...)`` and are compared with the local
threads scheduler, whose fixed reduction tree makes the two agree to rounding.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="start_cluster.py is POSIX only")

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import dnmf  # noqa: E402
from dnmf._backend import check_worker_memory  # noqa: E402
from dnmf.errors import InvalidParameterError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, M, K, PANEL = 2000, 150, 6, 250
KW = dict(n_components=K, max_iter=10, tol=0.0, random_state=0, panel_rows=PANEL)


def _load_local():
    spec = importlib.util.spec_from_file_location(
        "dnmf_cluster_local", ROOT / "cluster" / "local" / "start_cluster.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["dnmf_cluster_local"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    local = _load_local()
    d = tmp_path_factory.mktemp("cluster")
    info = local.start(
        d, workers=2, threads_per_worker=1, memory_limit="1GiB", port=0, dashboard_port=0
    )
    try:
        yield info
    finally:
        local.stop(d)


@pytest.fixture
def client(cluster):
    with distributed.Client(scheduler_file=cluster["scheduler_file"], timeout="20s") as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def V_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    V = rng.random((N, K)) @ rng.random((K, M)) + 0.01 * rng.random((N, M))
    path = tmp_path_factory.mktemp("data") / "V.zarr"
    z = zarr.create_array(str(path), shape=V.shape, chunks=(PANEL, M), dtype="f8")
    z[:] = V
    return str(path)


@pytest.fixture(scope="module")
def reference(V_path, tmp_path_factory):
    """The uninterrupted fit on the local threads scheduler."""
    out = tmp_path_factory.mktemp("ref") / "run.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est = dnmf.NMF(scheduler="threads", out=str(out), checkpoint_every=2, **KW)
        W = np.asarray(est.fit_transform(V_path))
    return W, est.components_, list(est.loss_history_)


def _fit(V_path, scheduler, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est = dnmf.NMF(scheduler=scheduler, **KW, **kw)
        W = np.asarray(est.fit_transform(V_path))
    return W, est.components_, list(est.loss_history_)


def _assert_same(got, want, rtol=1e-10):
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=0)
    np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=0)
    np.testing.assert_allclose(got[2], want[2], rtol=rtol, atol=0)
    assert len(got[2]) == len(want[2]) == KW["max_iter"]


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


# --------------------------------------------------------------------------- #
# 1. the cluster computes what the threads scheduler computes
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_cluster_fit_with_out_matches_threads(client, V_path, reference, tmp_path):
    assert len(client.scheduler_info()["workers"]) == 2
    got = _fit(V_path, client, out=str(tmp_path / "run.zarr"), checkpoint_every=2)
    _assert_same(got, reference)
    run = dnmf.open_run(str(tmp_path / "run.zarr"))
    np.testing.assert_allclose(np.asarray(run.W), reference[0], rtol=1e-10, atol=0)


# --------------------------------------------------------------------------- #
# 2. data locality: V stays on the workers
# --------------------------------------------------------------------------- #
class _Traffic:
    """Pickled bytes of everything the client gathers and of every graph it submits."""

    def __init__(self, monkeypatch):
        self.gathered: list[int] = []
        self.submitted: list[int] = []
        Client = distributed.Client
        gather, to_futures = Client._gather, Client._graph_to_futures
        traffic = self

        async def _gather(self, futures, *args, **kwargs):
            result = await gather(self, futures, *args, **kwargs)
            traffic.gathered.append(len(pickle.dumps(result, protocol=5)))
            return result

        def _graph_to_futures(self, expr, *args, **kwargs):
            import cloudpickle

            traffic.submitted.append(len(cloudpickle.dumps(expr, protocol=5)))
            return to_futures(self, expr, *args, **kwargs)

        monkeypatch.setattr(Client, "_gather", _gather)
        monkeypatch.setattr(Client, "_graph_to_futures", _graph_to_futures)

    def reset(self):
        self.gathered.clear()
        self.submitted.clear()


@pytest.mark.slow
def test_only_k_by_m_results_reach_the_client(client, V_path, reference, monkeypatch, tmp_path):
    traffic = _Traffic(monkeypatch)
    panel_bytes = PANEL * M * 8
    km_bytes = (K * M + K * K) * 8

    # The measurement can fail: a V panel brought to the client is counted.
    from dnmf._source import as_source, load_panel

    ref = as_source(V_path).panel_refs([(0, PANEL)])[0]
    assert len(pickle.dumps(ref)) < 4096  # a reference, not the data
    client.submit(load_panel, ref, pure=False).result()
    assert traffic.gathered[-1] >= panel_bytes
    traffic.reset()

    per_iter: list[tuple[int, int]] = []

    def watch(iteration, loss):
        per_iter.append((sum(traffic.gathered), sum(traffic.submitted)))
        traffic.reset()

    for out in (None, str(tmp_path / "run.zarr")):
        per_iter.clear()
        got = _fit(V_path, client, out=out, checkpoint_every=3, callback=watch)
        _assert_same(got, reference)
        assert len(per_iter) == KW["max_iter"]
        for gathered, submitted in per_iter[1:]:
            # Stats (A: k×m, B: k×k, losses) and checksums come back; H and the
            # context go out. Never a V panel (300 KB here) in either direction.
            assert gathered < 2 * km_bytes + 16_384, (out, per_iter)
            assert submitted < 4 * km_bytes + 65_536, (out, per_iter)
            assert max(gathered, submitted) < panel_bytes / 4, (out, per_iter)


# --------------------------------------------------------------------------- #
# 3. a worker dies mid-run
# --------------------------------------------------------------------------- #
@pytest.mark.slow
@pytest.mark.parametrize("store,numpy_input", [(False, False),
                                                pytest.param(True, False, marks=pytest.mark.heavy),
                                                (False, True)],
                         ids=["W-in-worker-memory", "W-in-store", "V-and-W-from-numpy"])
def test_sigkill_of_a_worker_mid_run(client, V_path, reference, tmp_path, store, numpy_input):
    # NumPy input: the panels reach the workers as tasks that hold them, so a lost
    # worker's panels are recreated (scattered data would be gone with it).
    before = _worker_pids(client)
    victim = sorted(before.values())[0]
    killed = threading.Event()

    def kill_soon(iteration, loss):
        if iteration == 3:
            # From another thread, so that the kill lands while pass 4 runs.
            def kill():
                os.kill(victim, signal.SIGKILL)
                killed.set()

            threading.Timer(0.005, kill).start()
        if iteration == 5:
            assert killed.wait(5)
        time.sleep(0.02)

    out = str(tmp_path / "run.zarr") if store else None
    V = zarr.open_array(V_path, mode="r")[:] if numpy_input else V_path
    got = _fit(V, client, out=out, checkpoint_every=2, callback=kill_soon)
    assert killed.is_set()
    _assert_same(got, reference)
    # The nanny brought a new worker process up in place of the killed one.
    client.wait_for_workers(2, timeout=60)
    after = set(_worker_pids(client).values())
    assert victim not in after


# --------------------------------------------------------------------------- #
# 4. the client process dies mid-run; resume finishes the run
# --------------------------------------------------------------------------- #
_CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, warnings
    import distributed, dnmf

    V, out, sched_file, progress, kw = sys.argv[1:6]
    warnings.simplefilter("ignore", dnmf.ConvergenceWarning)

    def slow(iteration, loss):
        with open(progress, "w") as f:
            f.write(str(iteration))
        time.sleep(0.3)

    with distributed.Client(scheduler_file=sched_file) as client:
        dnmf.NMF(scheduler=client, out=out, checkpoint_every=2, callback=slow,
                 **json.loads(kw)).fit(V)
    """
)


@pytest.mark.slow
def test_sigkill_of_the_client_then_resume(client, cluster, V_path, reference, tmp_path):
    script = tmp_path / "fit_client.py"
    script.write_text(_CLIENT_SCRIPT)
    out, progress = tmp_path / "run.zarr", tmp_path / "progress"
    proc = subprocess.Popen(
        [sys.executable, str(script), V_path, str(out), cluster["scheduler_file"],
         str(progress), json.dumps(KW)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists() and progress.read_text() and int(progress.read_text()) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0].decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = dnmf.open_run(str(out), verify=False)
    assert not partial.complete
    assert 4 <= partial.iteration < KW["max_iter"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dead client's lock is taken over
        run = dnmf.resume(str(out), scheduler=client)
    assert run.complete and run.iteration == KW["max_iter"]
    np.testing.assert_allclose(np.asarray(run.W), reference[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(run.H, reference[1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(run.loss_history, reference[2], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- #
# 5. workers too small for a panel
# --------------------------------------------------------------------------- #
def test_check_worker_memory_names_panel_and_limit():
    workers = {
        "tcp://127.0.0.1:1": {"name": "a", "nthreads": 2, "memory_limit": 2**30},
        "tcp://127.0.0.1:2": {"name": "b", "nthreads": 1, "memory_limit": 0},
    }
    check_worker_memory(workers, 2**30 // 6)  # 3 × 2 threads × panel = the limit
    with pytest.raises(InvalidParameterError, match=r"1\.0 GiB.*panel of 170\.7 MiB"):
        check_worker_memory(workers, 2**30 // 6 + 1)
    check_worker_memory({"x": {"nthreads": 8, "memory_limit": None}}, 2**40)  # no limit


@pytest.mark.slow
def test_panels_too_big_for_the_workers_fail_before_any_work(client, tmp_path):
    # A virtual 3.2 GB array (no chunk written): 400 MB panels against 1 GiB workers.
    path = str(tmp_path / "big.zarr")
    zarr.create_array(path, shape=(400_000, 1000), chunks=(50_000, 1000), dtype="f8")
    t0 = time.monotonic()
    with pytest.raises(InvalidParameterError) as err:
        dnmf.NMF(4, scheduler=client, panel_rows=50_000, max_iter=1).fit(path)
    message = str(err.value)
    assert "memory limit of 1.0 GiB" in message
    assert "panel of 381.5 MiB (400000000 bytes)" in message
    assert "panel_rows" in message
    assert time.monotonic() - t0 < 10


# --------------------------------------------------------------------------- #
# 6. the scheduler dies mid-run
# --------------------------------------------------------------------------- #
@pytest.mark.slow
@pytest.mark.heavy  # suite time; client and worker kills stay
def test_sigkill_of_the_scheduler_stops_the_fit_cleanly_then_resume(V_path, tmp_path):
    local = _load_local()
    d = tmp_path / "cluster"
    info = local.start(d, workers=2, threads_per_worker=1, port=0, dashboard_port=0)
    scheduler_pid = json.loads((d / "pids.json").read_text())["scheduler"]["pid"]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dnmf", "fit", V_path, "-k", str(K), "--seed", "0",
             "--tol", "0", "--max-iter", "100000", "--checkpoint-every", "5",
             "--out", "run.zarr", "--scheduler-file", info["scheduler_file"]],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # a progress line after the first: iterating
            seen.append(line)
            if line.startswith("fit: iteration") and not line.startswith("fit: iteration 1/"):
                break
        assert proc.poll() is None, "".join(seen)
        time.sleep(1.0)
        os.kill(scheduler_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        local.stop(d)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    found = re.fullmatch(
        r"error: lost the Dask scheduler at tcp://127\.0\.0\.1:\d+ \(.*\): the fit stopped; "
        r"iteration (\d+) is committed to run\.zarr\. Continue it, .* with: "
        r"dnmf resume run\.zarr --scheduler-file \S+", lines[-1])
    assert found, err
    committed = int(found.group(1))
    assert committed == dnmf.open_run(str(tmp_path / "run.zarr")).iteration

    # The run continues on this machine to the answer an uninterrupted fit gives.
    done = subprocess.run(
        [sys.executable, "-m", "dnmf", "resume", "run.zarr", "--max-iter", str(committed + 3)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run = dnmf.open_run(str(tmp_path / "run.zarr"))
    assert run.complete and run.iteration == committed + 3
    want = dnmf.NMF(K, random_state=0, tol=0.0, max_iter=committed + 3, scheduler="threads",
                    panel_rows=int(run.params["panel_rows"]))
    W = want.fit_transform(V_path)
    np.testing.assert_allclose(np.asarray(run.W), np.asarray(W), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(run.H, want.components_, rtol=1e-10, atol=1e-14)
    # Hundreds of iterations (the cluster's H-step runs with one BLAS thread, the
    # threads scheduler's with two): rounding differs in the last bits, and the
    # losses of the middle iterations agree to a few 1e-10.
    np.testing.assert_allclose(run.loss_history, want.loss_history_, rtol=1e-9)


# --------------------------------------------------------------------------- #
# 7. every worker dies at once (issue 16, defect 3)
# --------------------------------------------------------------------------- #
@pytest.mark.slow
@pytest.mark.parametrize("store", [pytest.param(True, marks=pytest.mark.heavy), False],
                         ids=["W-in-store", "W-in-worker-memory"])
def test_sigkill_of_every_worker_at_once_finishes_with_the_same_answer(
        client, V_path, reference, tmp_path, store):
    """Both workers SIGKILLed together; their nannies restart them within a second.

    Before, a task placed on a dead worker stayed 'no-worker' for ever (the scheduler
    offers a joining worker only tasks whose restrictions it meets, loose or not):
    the fit hung with no output. The scheduler plugin frees such tasks.
    """
    victims = sorted(_worker_pids(client).values())
    killed = threading.Event()

    def kill_all(iteration, loss):
        if iteration == 3:
            def kill():
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                killed.set()

            threading.Timer(0.005, kill).start()
        if iteration == 5:
            assert killed.wait(5)
        time.sleep(0.02)

    out = str(tmp_path / "run.zarr") if store else None
    result: dict = {}

    def fit():
        try:
            result["got"] = _fit(V_path, client, out=out, checkpoint_every=2, callback=kill_all)
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "the fit hangs after every worker was killed"
    assert "error" not in result, result.get("error")
    assert killed.is_set()
    _assert_same(result["got"], reference)
    client.wait_for_workers(2, timeout=60)
    assert not set(victims) & set(_worker_pids(client).values())


@pytest.mark.heavy
def test_a_cluster_left_without_workers_ends_the_fit_with_a_clear_error(
        V_path, reference, tmp_path, monkeypatch):
    """Workers gone for good (no nanny): a bounded wait, then ClusterLostError; the
    committed iteration is intact and resumes to the uninterrupted answer."""
    import dnmf._backend as backend

    monkeypatch.setattr(backend, "NO_WORKERS_SECONDS", 4.0)
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline and scheduler.poll() is None
            time.sleep(0.1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
             str(sched_file), "--no-nanny", "--nthreads", "1", "--host", "127.0.0.1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with distributed.Client(scheduler_file=str(sched_file), timeout="20s") as c:
            c.wait_for_workers(1, timeout=60)

            def kill_worker(iteration, loss):
                if iteration == 4:
                    os.kill(worker.pid, signal.SIGKILL)

            out = str(tmp_path / "run.zarr")
            t0 = time.monotonic()
            with pytest.raises(dnmf.ClusterLostError,
                               match=r"has had no workers for 4 s .* resumes from its last "
                                     r"checkpoint") as exc:
                _fit(V_path, c, out=out, checkpoint_every=2, callback=kill_worker)
            assert time.monotonic() - t0 < 120
            assert exc.value.reason == "no workers"
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert dnmf.open_run(out).iteration == 4
    run = dnmf.resume(out, scheduler="threads")
    np.testing.assert_allclose(np.asarray(run.W), reference[0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(run.loss_history, reference[2], rtol=1e-10, atol=0)
