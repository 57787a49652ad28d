"""The adversarial matrix of issue 16, kept as a heavy suite (``python -m pytest -m heavy
tests/test_adversarial.py -s``).

Real processes and signals (SIGKILL, SIGTERM, SIGINT at random instants and at the
store's pause points), damage to every kind of file of a run store and of V,
concurrent commands, a real tmpfs for a full disk, a real cluster (one worker, every
worker at once, the scheduler) and moto's S3 server on 127.0.0.1. Each section counts
what it tried and what held; the last test prints the counts (and writes them to
``$DNMF_ADVERSARIAL_REPORT`` if set). Every case also asserts, so a regression fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import dnmf
from dnmf import DnmfError

pytestmark = [pytest.mark.heavy,
              pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")]

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "checkpoint_worker.py")
N, M, K, ROWS, MAX_ITER, EVERY = 600, 40, 4, 100, 14, 2
COUNTS: dict[str, list[int]] = {}


def count(name: str, ok: bool) -> None:
    tried, held = COUNTS.setdefault(name, [0, 0])
    COUNTS[name] = [tried + 1, held + int(bool(ok))]


def one_line_error(text: str) -> bool:
    """One ``error:`` line, last; other lines only dnmf's own status lines (such as
    "converting X to Y"), no traceback, no log noise, no "bug in dnmf"."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    noise = [line for line in lines if line[:1].isspace() or "Traceback" in line
             or "Task was destroyed" in line or line.startswith(("WARNING", "ERROR"))]
    return (len(errors) == 1 and lines[-1] == errors[0] and not noise
            and "bug in dnmf" not in text)


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("DNMF_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dnmf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def V_path(tmp_path_factory) -> str:
    rng = np.random.default_rng(11)
    V = rng.random((N, 5)) @ rng.random((5, M)) + 0.1 * rng.random((N, M))
    path = str(tmp_path_factory.mktemp("adv") / "V.zarr")
    arr = zarr.create_array(store=path, shape=V.shape, chunks=(50, M), dtype="f8")
    arr[...] = V
    return path


@pytest.fixture(scope="module")
def reference(V_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est = dnmf.NMF(K, max_iter=MAX_ITER, tol=0.0, random_state=7, panel_rows=ROWS,
                       scheduler="threads")
        W = np.asarray(est.fit_transform(V_path))
    return W, est.components_, est.loss_history_


def _worker(V_path, out, mode="fit", **env):
    return subprocess.Popen(
        [sys.executable, WORKER, V_path, str(out), "--max-iter", str(MAX_ITER), "--every",
         str(EVERY), "--k", str(K), "--panel-rows", str(ROWS), "--mode", mode,
         "--sleep", "0.05"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# ------------------------------------------------------------------- 1. kills
def test_kills_at_random_points_resume_bit_for_bit(V_path, reference, tmp_path):
    rng = random.Random(16)
    points = ["sink", "commit:H", "commit:manifest", "commit:done"]
    signals = [signal.SIGKILL] * 3 + [signal.SIGTERM, signal.SIGINT]
    for sequence in range(6):
        out = tmp_path / f"run{sequence}.zarr"
        mode = "fit"
        for _ in range(rng.randint(2, 4)):
            env = {}
            if rng.random() < 0.5:  # at an exact point of the commit protocol
                env = {"DNMF_TEST_PAUSE_AT": f"{rng.choice(points)}@{rng.randint(1, 12)}",
                       "DNMF_TEST_PAUSE_FILE": str(tmp_path / "paused")}
                (tmp_path / "paused").unlink(missing_ok=True)
            proc = _worker(V_path, out, mode, **env)
            deadline = time.monotonic() + (120 if env else rng.uniform(1.5, 6.0))
            while time.monotonic() < deadline and proc.poll() is None:
                if env and (tmp_path / "paused").exists():
                    break
                time.sleep(0.02)
            sig = signal.SIGKILL if env else rng.choice(signals)
            if proc.poll() is None:
                proc.send_signal(sig)
            proc.wait(timeout=120)
            try:
                run = dnmf.open_run(str(out))
                mode = "resume" if not run.complete else mode
            except DnmfError:
                mode = "fit"  # killed before the first commit: start again
            if mode == "resume" and dnmf.open_run(str(out)).complete:
                break
        finisher = _worker(V_path, out, mode)
        assert finisher.wait(timeout=600) == 0, finisher.stdout.read()
        run = dnmf.open_run(str(out))
        same = (np.array_equal(np.asarray(run.W), reference[0])
                and np.array_equal(run.H, reference[1])
                and run.loss_history == reference[2])
        count("kills", same)
        assert same


# -------------------------------------------------------------- 2. corruption
def _pristine(V_path, tmp_path) -> Path:
    out = tmp_path / "pristine.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        dnmf.NMF(K, max_iter=6, tol=0.0, random_state=7, panel_rows=ROWS, out=str(out),
                 checkpoint_every=2, scheduler="threads").fit(V_path)
    return out


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x5A
    path.write_bytes(bytes(data))


def _json_edit(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _run_damage(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())["manifest"]
    w, h = manifest["W"]["array"], manifest["H"]["array"]
    w_chunk = next(p for p in sorted((run / w / "c").rglob("*")) if p.is_file())
    h_chunk = next(p for p in sorted((run / h / "c").rglob("*")) if p.is_file())
    return {
        "manifest bit flip": lambda: _flip(run / "manifest.json"),
        "manifest truncated": lambda: (run / "manifest.json").write_bytes(
            (run / "manifest.json").read_bytes()[:100]),
        "manifest deleted": lambda: (run / "manifest.json").unlink(),
        "manifest iteration edited": lambda: _json_edit(
            run / "manifest.json", lambda d: d["manifest"].update(iteration=5)),
        "W chunk bit flip": lambda: _flip(w_chunk),
        "W chunk truncated": lambda: w_chunk.write_bytes(w_chunk.read_bytes()[:10]),
        "W chunk deleted": lambda: w_chunk.unlink(),
        "H chunk bit flip": lambda: _flip(h_chunk),
        "H chunk deleted": lambda: h_chunk.unlink(),
        "W zarr.json garbage": lambda: (run / w / "zarr.json").write_bytes(b"\x00garbage"),
        "W zarr.json deleted": lambda: (run / w / "zarr.json").unlink(),
        "W zarr.json dtype changed": lambda: _json_edit(
            run / w / "zarr.json", lambda d: d.update(data_type="int64")),
        "W zarr.json shape changed": lambda: _json_edit(
            run / w / "zarr.json", lambda d: d.update(shape=[d["shape"][0] + 1, K])),
        "W buffer deleted": lambda: shutil.rmtree(run / w),
        "H zarr.json dtype changed": lambda: _json_edit(
            run / h / "zarr.json", lambda d: d.update(data_type="int64")),
        "H zarr.json garbage": lambda: (run / h / "zarr.json").write_bytes(b"{"),
        "root zarr.json deleted": lambda: (run / "zarr.json").unlink(),
        "root zarr.json garbage": lambda: (run / "zarr.json").write_bytes(b"[1, 2"),
        "lock.json pid abc": lambda: (run / "lock.json").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": "abc", "heartbeat": time.time()})),
        "other W buffer metadata changed": lambda: _json_edit(
            run / next(b for b in ("W0", "W1", "W2") if b != w and (run / b).exists())
            / "zarr.json", lambda d: d.update(data_type="float32")),
    }


def test_corruption_of_every_file_kind_is_detected(V_path, tmp_path):
    pristine = _pristine(V_path, tmp_path)
    for name in _run_damage(pristine):
        run = tmp_path / "damaged.zarr"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(pristine, run)
        # The same damage on the copy: rebuild the action against the copy.
        _run_damage(run)[name]()
        # Detected: continuing the run is refused with one clear error; opening it
        # is refused the same way or (damage that only writers care about, such as
        # the lock) still reads the verified snapshot.
        detected = True
        for attempt in ("open", "resume"):
            try:
                if attempt == "open":
                    dnmf.open_run(str(run))
                else:
                    dnmf.resume(str(run), max_iter=8, scheduler="threads")
                    detected = False
            except DnmfError as exc:
                detected = detected and "\n" not in str(exc)
            except Exception as exc:  # not a clear error
                detected = False
                print(f"corruption {name!r}: {attempt} raised {type(exc).__name__}: {exc}")
        count("corruptions (run store)", detected)
        assert detected, name


def test_damage_to_V_is_detected(V_path, reference, tmp_path):
    from dnmf._store import sample_panels

    n_panels = N // ROWS
    unsampled = [i for i in range(n_panels) if i not in sample_panels(n_panels, (N, M))]
    sampled = sample_panels(n_panels, (N, M))[0]
    cases = {
        "NaN in an unsampled panel": ("nan", unsampled),
        "negative in an unsampled panel": ("neg", unsampled),
        "inf in an unsampled panel": ("inf", unsampled),
        "chunk truncated (unsampled)": ("truncate", unsampled),
        "chunk bit flip (unsampled)": ("flip", unsampled),
        "chunk bit flip (unsampled, V written by dnmf convert)": ("flip-crc", unsampled),
        "chunk deleted while the fit runs (unsampled)": ("delete-running", unsampled),
        "value changed in a sampled panel": ("change", [sampled]),
        "value changed in an unsampled panel": ("change", unsampled),
        "chunk deleted (sampled)": ("delete", [sampled]),
        "chunk deleted (unsampled)": ("delete", unsampled),
    }
    for name, (how, panels) in cases.items():
        if not panels:
            continue
        data = tmp_path / "V.zarr"
        shutil.rmtree(data, ignore_errors=True)
        if how == "flip-crc":  # converted by dnmf: a CRC-32C per chunk
            from dnmf._convert import convert

            np.save(tmp_path / "V.npy", zarr.open_array(V_path, mode="r")[...])
            convert(str(tmp_path / "V.npy"), str(data), chunk_rows=50)
        else:
            shutil.copytree(V_path, data)
        out = tmp_path / "run.zarr"
        shutil.rmtree(out, ignore_errors=True)
        row = panels[0] * ROWS + 3
        chunk = data / "c" / str(row // 50) / "0"
        if how == "delete-running":
            def delete(iteration, loss, chunk=chunk):
                if iteration == 3:
                    chunk.unlink()

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
                    dnmf.NMF(K, max_iter=8, tol=0.0, random_state=7, panel_rows=ROWS,
                             out=str(out), checkpoint_every=2, scheduler="threads",
                             callback=delete).fit(str(data))
                detected = False
            except DnmfError as exc:
                detected = "\n" not in str(exc)
            after = dnmf.open_run(str(out))
            intact = after.iteration == 2 and np.isfinite(after.loss_history).all()
            count("corruptions (V)", detected and intact)
            assert detected and intact, name
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
            dnmf.NMF(K, max_iter=4, tol=0.0, random_state=7, panel_rows=ROWS, out=str(out),
                     checkpoint_every=2, scheduler="threads").fit(str(data))
        arr = zarr.open_array(str(data), mode="r+")
        if how in ("nan", "neg", "inf", "change"):
            arr[row, 2] = {"nan": np.nan, "neg": -1.0, "inf": np.inf, "change": 7.0}[how]
        elif how == "truncate":
            chunk.write_bytes(chunk.read_bytes()[:20])
        elif how in ("flip", "flip-crc"):
            _flip(chunk, 0.3)
        else:
            chunk.unlink()
        before = dnmf.open_run(str(out))
        try:
            dnmf.resume(str(out), max_iter=8, scheduler="threads")
            detected = False
        except DnmfError:  # (a fingerprint mismatch lists its differences, one a line)
            detected = True
        except Exception as exc:
            detected = False
            print(f"V damage {name!r}: {type(exc).__name__}: {exc}")
        after = dnmf.open_run(str(out))
        intact = after.iteration == before.iteration and np.isfinite(after.loss_history).all()
        count("corruptions (V)", detected and intact)
        # A flipped bit inside a compressed chunk of a V without checksums (not written
        # by dnmf) that decodes to other finite, non-negative numbers, and a value
        # rewritten anywhere, are seen by the digest of all of V on resume; a deleted
        # chunk by the run's listing of V's stored chunks (dnmf/_chunks.py).
        assert detected and intact, name


# ------------------------------------------------------------- 3. bad inputs
def test_bad_inputs_get_one_clear_line(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.random((40, 6))
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "nan.npy", np.where(good > 0.9, np.nan, good))
    np.save(tmp_path / "neg.npy", good - 0.5)
    np.save(tmp_path / "inf.npy", np.where(good > 0.9, np.inf, good))
    np.save(tmp_path / "one_d.npy", good.ravel())
    np.save(tmp_path / "three_d.npy", good.reshape(2, 20, 6))
    np.save(tmp_path / "complex.npy", good.astype(complex))
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "empty.npy", np.zeros((0, 6)))
    (tmp_path / "garbage.npy").write_bytes(b"not an npy file")
    (tmp_path / "text.csv").write_text("1,2,3\n4,x,6\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "afile").write_text("x")
    fit = ["fit", "good.npy", "--rank", "2", "--out"]
    cases = [
        ["fit", "missing.npy", "--rank", "2", "--out", "r.zarr"],
        *[["fit", f"{name}.npy", "--rank", "2", "--out", f"r-{name}.zarr"]
          for name in ("nan", "neg", "inf", "one_d", "three_d", "complex", "strings",
                       "empty", "garbage")],
        ["fit", "text.csv", "--rank", "2", "--out", "r-text.zarr"],
        ["fit", "empty.csv", "--rank", "2", "--out", "r-ecsv.zarr"],
        ["fit", "good.npy", "--rank", "0", "--out", "r0.zarr"],
        ["fit", "good.npy", "--rank", "1000000000", "--out", "rbig.zarr"],
        ["fit", "good.npy", "--rank", "2", "--max-iter", "0", "--out", "r1.zarr"],
        ["fit", "good.npy", "--rank", "2", "--tol", "-1", "--out", "r2.zarr"],
        ["fit", "good.npy", "--rank", "2", "--solver", "nope", "--out", "r3.zarr"],
        ["fit", "good.npy", "--rank", "2", "--loss", "kl", "--solver", "hals", "--out",
         "r4.zarr"],
        [*fit, "afile"],
        [*fit, "good.npy"],
        [*fit, "r5.zarr", "--scheduler", "nonsense"],
        [*fit, "r6.zarr", "--scheduler", "tcp://127.0.0.1:1"],
        [*fit, "r7.zarr", "--scheduler-file", "missing.json"],
        [*fit, "r8.zarr", "--seed", "-3"],
        [*fit, "r9.zarr", "--panel-size", "lots"],
        ["info", "missing.zarr"],
        ["info", "afile"],
        ["resume", "missing.zarr"],
        ["export", "missing.zarr", "--format", "npy", "--out", "x"],
        ["convert", "good.npy", "afile"],
        ["convert", "missing.npy", "x.zarr"],
        ["convert", "good.npy", "y.zarr", "--chunk-rows", "0"],
        ["fit", "good.npy", "--rank", "2", "--out", "s3://dnmf-no-such-bucket/run"],
    ]
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}
    bad = []
    for args in cases:
        done = cli(*args, cwd=tmp_path, env=env)
        ok = done.returncode != 0 and one_line_error(done.stderr)
        count("bad inputs", ok)
        if not ok:
            bad.append((args, done.returncode, done.stderr[-600:]))
    for args, rc, err in bad:
        print(f"bad input {args}: exit {rc}: {err}")
    assert not bad, [args for args, _, _ in bad]


# ----------------------------------------------------------- 4. concurrency
def test_concurrent_commands_on_one_run(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "V.npy", rng.random((2000, 5)) @ rng.random((5, 120)))
    args = ["fit", "V.npy", "--rank", "5", "--seed", "2", "--max-iter", "20", "--tol", "0"]
    solo = cli(*args, "--out", "solo.zarr", cwd=tmp_path)
    assert solo.returncode == 0, solo.stderr
    want = dnmf.open_run(str(tmp_path / "solo.zarr"))
    for trial, gap in enumerate((0.0, 0.3, 0.3, 1.0)):
        out = f"run{trial}.zarr"
        procs = []
        for _ in range(3):
            procs.append(subprocess.Popen([sys.executable, "-m", "dnmf", *args, "--out", out],
                                          cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
            time.sleep(gap)
        results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
        got = dnmf.open_run(str(tmp_path / out))
        right = got.loss_history == want.loss_history
        others = [err for rc, err in results if rc != 0]
        clear = all(one_line_error(err) for err in others)
        ok = right and clear and any(rc == 0 for rc, _ in results)
        count("concurrency", ok)
        assert ok, results


# --------------------------------------------------------------- 5. full disk
def test_full_disk(tmp_path, small_disk):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "V.npy", rng.random((4000, 100)))
    disk = small_disk("1m")
    for _trial in range(10):
        done = cli("convert", str(tmp_path / "V.npy"), str(disk / "V.zarr"), cwd=tmp_path)
        ok = done.returncode == 1 and one_line_error(done.stderr) and \
            "disk is full" in done.stderr and not os.listdir(disk)
        count("disk full", ok)
        assert ok, done.stderr
    # A fit whose run does not fit: the committed state survives and the message says
    # where and how to go on.
    done = cli("fit", str(tmp_path / "V.npy"), "--rank", "8", "--out", str(disk / "run.zarr"),
               cwd=tmp_path)
    ok = done.returncode == 1 and one_line_error(done.stderr) and "disk" in done.stderr
    count("disk full", ok)
    assert ok, done.stderr


# ------------------------------------------------------------ 6. cluster faults
def _cluster(d):
    spec = importlib.util.spec_from_file_location("adv_cluster",
                                                  ROOT / "cluster" / "local" / "start_cluster.py")
    local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local)
    info = local.start(d, workers=2, threads_per_worker=1, memory_limit="1GiB", port=0,
                       dashboard_port=0)
    return local, info


@pytest.mark.parametrize("fault", ["one worker", "every worker", "scheduler"])
def test_cluster_faults(V_path, reference, tmp_path, fault):
    import threading

    import distributed

    local, info = _cluster(tmp_path / "cluster")
    out = str(tmp_path / "run.zarr")
    try:
        with distributed.Client(scheduler_file=info["scheduler_file"], timeout="20s") as c:
            c.wait_for_workers(2, timeout=60)
            victims = sorted(c.run(os.getpid).values())
            pids = json.loads((tmp_path / "cluster" / "pids.json").read_text())
            if fault == "one worker":
                victims = victims[:1]
            elif fault == "scheduler":
                victims = [pids["scheduler"]["pid"]]

            def kill(iteration, loss):
                if iteration == 3:
                    threading.Timer(0.01, lambda: [os.kill(p, signal.SIGKILL)
                                                   for p in victims]).start()
                time.sleep(0.05)

            result: dict = {}

            def fit():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
                        est = dnmf.NMF(K, max_iter=MAX_ITER, tol=0.0, random_state=7,
                                       panel_rows=ROWS, out=out, checkpoint_every=2,
                                       scheduler=c, callback=kill)
                        result["W"] = np.asarray(est.fit_transform(V_path))
                except BaseException as exc:
                    result["error"] = exc

            thread = threading.Thread(target=fit, daemon=True)
            thread.start()
            thread.join(300)
            finished = not thread.is_alive()
    finally:
        local.stop(tmp_path / "cluster")
    if finished and "error" in result:
        clear = isinstance(result["error"], DnmfError) and "\n" not in str(result["error"])
        run = dnmf.resume(out, scheduler="threads")
        ok = clear and run.loss_history == pytest.approx(reference[2], rel=1e-10)
    else:
        run = dnmf.open_run(out)
        ok = finished and run.loss_history == pytest.approx(reference[2], rel=1e-10)
    count("cluster faults", ok)
    assert ok, result


# ------------------------------------------------------------ 7. object store
@pytest.fixture(scope="module")
def moto_server():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    yield proc, endpoint
    proc.kill()
    proc.wait()


def test_object_store_faults(V_path, reference, tmp_path, moto_server, monkeypatch):
    import boto3

    _proc, endpoint = moto_server
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="adv")
    out = "s3://adv/run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        dnmf.NMF(K, max_iter=6, tol=0.0, random_state=7, panel_rows=ROWS, out=out,
                 checkpoint_every=2, scheduler="threads").fit(V_path)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="adv", Prefix="run/manifests/")
                  ["Contents"])
    # The newest manifest damaged: the previous one is used (and verifies).
    s3.put_object(Bucket="adv", Key=keys[-1], Body=b"{damaged")
    try:
        run = dnmf.open_run(out)
        ok = run.iteration <= 6 and bool(run.loss_history)  # the previous commit
    except DnmfError as exc:
        ok = "\n" not in str(exc)
    count("object store faults", ok)
    # Resume from there reaches the uninterrupted answer.
    run = dnmf.resume(out, X=None, max_iter=MAX_ITER, scheduler="threads")
    ok = run.loss_history == reference[2]
    count("object store faults", ok)
    assert ok
    # The endpoint unreachable: one clear line from the command line.
    done = cli("info", out, cwd=tmp_path, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                                                "AWS_MAX_ATTEMPTS": "1"})
    ok = done.returncode != 0 and one_line_error(done.stderr)
    count("object store faults", ok)
    if not ok:
        print("unreachable endpoint:", done.stderr[-800:])
    # More faults, each one clear line (and fast: no minute of retries):
    # an input at a dead endpoint, an out at a dead endpoint, no endpoint at all (DNS),
    # a bucket that does not exist, a run in the bucket that is not there.
    dead = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    none = {"AWS_ENDPOINT_URL": ""}
    cases = [
        (("fit", "s3://adv/V.zarr", "-k", "2", "-o", str(tmp_path / "r.zarr")), dead),
        (("fit", V_path, "-k", "2", "-o", "s3://adv/other"), dead),
        (("info", "s3://dnmf-no-such-host-bucket/run"), none),
        (("info", "s3://no-such-bucket/run"), {}),
        (("resume", "s3://adv/not-a-run"), {}),
    ]
    for args, env in cases:
        started = time.monotonic()
        done = cli(*args, cwd=tmp_path, env=env)
        took = time.monotonic() - started
        ok = done.returncode != 0 and one_line_error(done.stderr) and took < 60
        count("object store faults", ok)
        print(f"object store fault {args[0]} {args[1]} ({took:.1f} s):",
              done.stderr.strip().splitlines()[-1:] if ok else done.stderr[-800:])


# ----------------------------------------------------------------- the report
def test_zz_report():
    lines = ["adversarial matrix (tried / held):"]
    labels = {
        "kills": "kills / bit-identical resumes",
        "corruptions (run store)": "run-store corruptions / detected (one clear error)",
        "corruptions (V)": "V corruptions / detected, last commit intact",
        "bad inputs": "bad inputs / one-line errors",
        "concurrency": "concurrent starts / right answer, others refused in one line",
        "disk full": "disk-full cases / one line, nothing left behind",
        "cluster faults": "cluster faults / same answer or clear error",
        "object store faults": "object-store faults / handled",
    }
    for key, label in labels.items():
        tried, held = COUNTS.get(key, [0, 0])
        lines.append(f"  {label}: {tried} / {held}")
    report = "\n".join(lines)
    print("\n" + report)
    if os.environ.get("DNMF_ADVERSARIAL_REPORT"):
        Path(os.environ["DNMF_ADVERSARIAL_REPORT"]).write_text(report + "\n")
