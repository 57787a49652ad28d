"""Tests of the deployment recipes in cluster/.

The local recipe is exercised for real (a scheduler and two worker processes on
127.0.0.1); the Docker, Kubernetes and Helm files are parsed and checked for
the settings that make a dnmf cluster work; the SLURM/PBS job scripts are
rendered with dask-jobqueue without submitting anything.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local():
    return _load("dnmf_cluster_local", CLUSTER / "local" / "start_cluster.py")


@pytest.fixture(scope="module")
def slurm():
    return _load("dnmf_cluster_slurm", CLUSTER / "slurm" / "launch.py")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- #
# local: a real cluster
# --------------------------------------------------------------------------- #
@pytest.mark.skipif(os.name != "posix", reason="start_cluster.py is POSIX only")
def test_local_cluster_start_compute_stop(local, tmp_path):
    import dask.array as da
    from distributed import Client

    d = tmp_path / "cluster"
    info = local.start(
        d, workers=2, threads_per_worker=1, memory_limit="1GiB", port=0, dashboard_port=0
    )
    worker_pids: list[int] = []
    try:
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert Path(info["scheduler_file"]) == d / "scheduler.json"
        assert len(info["pids"]) == 3
        assert (d / "pids.json").exists()
        assert {p.name for p in d.glob("*.log")} == {
            "scheduler.log",
            "worker-0.log",
            "worker-1.log",
        }

        with Client(scheduler_file=info["scheduler_file"], timeout="20s") as client:
            assert client.scheduler.address == info["address"]
            nthreads = client.nthreads()
            assert len(nthreads) == 2
            assert set(nthreads.values()) == {1}
            assert all(a.startswith("tcp://127.0.0.1:") for a in nthreads)
            limits = {w["memory_limit"] for w in client.scheduler_info()["workers"].values()}
            assert limits == {2**30}

            def housekeeping():
                import dask

                return (dask.config.get("distributed.worker.profile.enabled"),
                        dask.config.get("distributed.admin.tick.interval"),
                        os.environ.get("OPENBLAS_NUM_THREADS"))

            # Less frequent housekeeping, one BLAS thread, in every process.
            quiet = (False, "200ms", "1")
            assert set(client.run(housekeeping).values()) == {quiet}
            assert client.run_on_scheduler(housekeeping)[:2] == quiet[:2]

            a = np.random.default_rng(0).random((600, 400))
            x = da.from_array(a, chunks=(100, 100))
            total, gram = client.compute([x.sum(), (x.T @ x)[:5, :5]], sync=True)
            np.testing.assert_allclose(total, a.sum())
            np.testing.assert_allclose(gram, (a.T @ a)[:5, :5])

            envs = client.run(lambda: {v: os.environ.get(v) for v in BLAS_VARS})
            assert len(envs) == 2
            for env in envs.values():
                assert env == dict.fromkeys(BLAS_VARS, "1")
            worker_pids = list(client.run(os.getpid).values())

        st = local.status(d)
        assert st["running"] and len(st["workers"]) == 2
        assert all(p["alive"] for p in st["processes"])

        with pytest.raises(local.ClusterError, match="already holds a running cluster"):
            local.start(d, workers=1, port=0, dashboard_port=0)
    finally:
        ended = local.stop(d)

    assert sorted(ended) == sorted(info["pids"])
    for pid in [*info["pids"], *worker_pids]:
        assert _gone(pid), f"process {pid} survived stop()"
    assert not (d / "pids.json").exists()
    assert not (d / "scheduler.json").exists()
    assert (d / "scheduler.log").exists()  # logs are kept


@pytest.mark.skipif(os.name != "posix", reason="start_cluster.py is POSIX only")
def test_local_start_timeout_names_the_log_and_cleans_up(local, tmp_path):
    d = tmp_path / "cluster"
    with pytest.raises(local.ClusterError, match=r"timed out after 0\.5 s.*read .*\.log"):
        local.start(d, workers=2, port=0, dashboard_port=0, timeout=0.5)
    assert not (d / "pids.json").exists()
    assert not (d / "scheduler.json").exists()
    assert not local._CHILDREN, "start() left processes behind after a failed start"


def test_local_cli_errors_are_one_line(tmp_path):
    script = CLUSTER / "local" / "start_cluster.py"
    cases = [
        ["status", "--dir", str(tmp_path / "nothing")],
        ["stop", "--dir", str(tmp_path / "nothing")],
        ["start", "--dir", str(tmp_path / "c"), "--workers", "0"],
        ["start", "--dir", str(tmp_path / "c"), "--memory-limit", "lots"],
    ]
    for args in cases:
        r = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "c" / "pids.json").exists()


def test_local_shell_wrapper_calls_the_python_script():
    sh = (CLUSTER / "local" / "start_cluster.sh").read_text()
    assert sh.startswith("#!/bin/sh")
    assert "start_cluster.py" in sh and '"$@"' in sh
    assert os.access(CLUSTER / "local" / "start_cluster.sh", os.X_OK)


# --------------------------------------------------------------------------- #
# docker
# --------------------------------------------------------------------------- #
def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        buf += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_dockerfile():
    ins = _dockerfile_instructions(CLUSTER / "docker" / "Dockerfile")
    assert ins[0] == ("FROM", "python:3.11-slim")
    copies = [args for word, args in ins if word == "COPY"]
    assert any(args.split()[0] == "." for args in copies), "repo must be copied in"
    runs = " && ".join(args for word, args in ins if word == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), runs
    env = " ".join(args for word, args in ins if word == "ENV")
    for var in BLAS_VARS:
        assert f"{var}=1" in env
    cmd = [args for word, args in ins if word == "CMD"][-1]
    assert yaml.safe_load(cmd)[:2] == ["dask", "worker"]
    # shims for tools (the Helm chart) that still call dask-scheduler/dask-worker
    assert "/usr/local/bin/dask-worker" in runs and "/usr/local/bin/dask-scheduler" in runs
    ignore = (CLUSTER / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert not {"pyproject.toml", "dnmf", "dnmf/"} & set(ignore)


def _interpolate(value):
    """Apply compose's ${VAR:-default} defaults (the environment is not consulted)."""
    if isinstance(value, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def test_compose():
    path = CLUSTER / "docker" / "compose.yaml"
    compose = _interpolate(yaml.safe_load(path.read_text()))
    services = compose["services"]
    assert {"scheduler", "worker", "dnmf"} <= set(services)

    sched = services["scheduler"]
    assert _command(sched)[:2] == ["dask", "scheduler"]
    published = {str(p).rsplit(":", 1)[-1] for p in sched["ports"]}
    assert {"8786", "8787"} <= published

    worker = services["worker"]
    wcmd = _command(worker)
    assert wcmd[:2] == ["dask", "worker"]
    assert "tcp://scheduler:8786" in wcmd
    assert wcmd[wcmd.index("--nthreads") + 1].isdigit()
    from dask.utils import parse_bytes

    mem_limit = parse_bytes(wcmd[wcmd.index("--memory-limit") + 1])
    assert worker["deploy"]["replicas"] == 2
    container_limit = parse_bytes(worker["deploy"]["resources"]["limits"]["memory"] + "B")
    assert mem_limit < container_limit
    assert "scheduler" in worker["depends_on"]

    client = services["dnmf"]
    ccmd = _command(client)
    assert ccmd[:3] == ["dnmf", "fit", "/data/V.zarr"]
    assert ccmd[ccmd.index("--scheduler") + 1] == "tcp://scheduler:8786"
    assert ccmd[ccmd.index("--out") + 1].startswith("/data/")

    assert "data" in compose["volumes"]
    for name, svc in services.items():
        assert "data:/data" in svc["volumes"], f"{name} does not mount the shared volume"
        for var in BLAS_VARS:
            assert str(svc["environment"][var]) == "1", (name, var)
        build = svc["build"]
        context = (path.parent / build["context"]).resolve()
        assert (context / "pyproject.toml").exists()
        assert (context / build["dockerfile"]).resolve() == CLUSTER / "docker" / "Dockerfile"
    assert len({svc["image"] for svc in services.values()}) == 1


# --------------------------------------------------------------------------- #
# kubernetes
# --------------------------------------------------------------------------- #
def _docs(name: str) -> list[dict]:
    text = (CLUSTER / "kubernetes" / name).read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_kubernetes_daskcluster():
    from dask.utils import parse_bytes

    docs = _docs("daskcluster.yaml")
    (dc,) = [d for d in docs if d["kind"] == "DaskCluster"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert dc["apiVersion"] == "kubernetes.dask.org/v1"
    name = dc["metadata"]["name"]

    assert pvc["apiVersion"] == "v1"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc == _docs("pvc.yaml")[0]

    worker = dc["spec"]["worker"]
    assert isinstance(worker["replicas"], int) and worker["replicas"] >= 1
    (wc,) = worker["spec"]["containers"]
    args = [str(a) for a in wc["args"]]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--name") + 1] == "$(DASK_WORKER_NAME)"
    assert args[args.index("--dashboard-address") + 1] == "8788"
    for var in BLAS_VARS:
        assert _env(wc)[var] == "1"
    limits = wc["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits)
    assert parse_bytes(args[args.index("--memory-limit") + 1]) < parse_bytes(limits["memory"])
    assert args[args.index("--nthreads") + 1] == str(limits["cpu"])
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in worker["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert pvc["metadata"]["name"] in claims.values()
    data_vol = next(k for k, v in claims.items() if v == pvc["metadata"]["name"])
    assert {"name": data_vol, "mountPath": "/data"} in wc["volumeMounts"]

    sched = dc["spec"]["scheduler"]
    (sc,) = sched["spec"]["containers"]
    assert [str(a) for a in sc["args"]][:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["containerPort"] for p in sc["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    probe = sc["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and probe["port"] == "http-dashboard"
    svc = sched["service"]
    assert svc["selector"]["dask.org/cluster-name"] == name
    assert svc["selector"]["dask.org/component"] == "scheduler"
    assert {(p["port"], p["targetPort"]) for p in svc["ports"]} == {
        (8786, "tcp-comm"),
        (8787, "http-dashboard"),
    }
    assert wc["image"] == sc["image"]

    (job,) = _docs("fit-job.yaml")
    (jc,) = job["spec"]["template"]["spec"]["containers"]
    jargs = [str(a) for a in jc["args"]]
    assert jargs[:2] == ["dnmf", "fit"]
    assert jargs[jargs.index("--scheduler") + 1] == f"tcp://{name}-scheduler:8786"
    assert jc["image"] == wc["image"]
    jclaims = [
        v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
    ]
    assert jclaims == [pvc["metadata"]["name"]]
    assert any(m["mountPath"] == "/data" for m in jc["volumeMounts"])


def test_helm_values():
    (values,) = _docs("values-helm.yaml")
    (dc,) = [d for d in _docs("daskcluster.yaml") if d["kind"] == "DaskCluster"]
    image = dc["spec"]["worker"]["spec"]["containers"][0]["image"]
    for role in ("scheduler", "worker"):
        img = values[role]["image"]
        assert f"{img['repository']}:{img['tag']}" == image
    # Service names match the operator recipe, so fit-job.yaml works for both
    assert values["fullnameOverride"] == dc["metadata"]["name"]
    worker = values["worker"]
    assert worker["replicas"] >= 1
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert {v: env.get(v) for v in BLAS_VARS} == dict.fromkeys(BLAS_VARS, "1")
    assert {"cpu", "memory"} <= set(worker["resources"]["limits"])
    assert {"name": "data", "mountPath": "/data"} in worker["mounts"]["volumeMounts"]
    (data,) = [v for v in worker["mounts"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == _docs("pvc.yaml")[0]["metadata"]["name"]
    assert values["jupyter"]["enabled"] is False


# --------------------------------------------------------------------------- #
# SLURM / PBS via dask-jobqueue
# --------------------------------------------------------------------------- #
LOOPBACK = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}


def _script(slurm, queue_system: str, **overrides) -> str:
    cluster = slurm.build_cluster(queue_system, scheduler_options=LOOPBACK, **overrides)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        return cluster.job_script()
    finally:
        cluster.close()


@pytest.mark.parametrize("queue_system", ["slurm", "pbs"])
def test_jobqueue_job_scripts(slurm, queue_system):
    pytest.importorskip("dask_jobqueue")
    cfg = yaml.safe_load((CLUSTER / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]
    section = cfg[queue_system]
    script = _script(slurm, queue_system)
    lines = script.splitlines()
    prefix = "#SBATCH" if queue_system == "slurm" else "#PBS"
    directives = [ln for ln in lines if ln.startswith(prefix)]
    assert len(directives) >= 3, script
    if queue_system == "slurm":
        assert f"#SBATCH -t {section['walltime']}" in lines
        assert "#SBATCH --mem=32G" in lines
        assert f"#SBATCH --cpus-per-task={section['cores']}" in lines
    else:
        assert f"#PBS -l walltime={section['walltime']}" in lines
        assert f"#PBS -l select=1:ncpus={section['cores']}:mem=32GB" in lines
    for directive in section["job-extra-directives"]:
        assert f"{prefix} {directive}" in lines
    for var in BLAS_VARS:
        assert f"export {var}=1" in lines
    (cmd,) = [ln for ln in lines if "distributed.cli.dask_worker" in ln]
    assert "tcp://127.0.0.1:" in cmd
    threads = section["cores"] // section["processes"]
    assert f"--nthreads {threads}" in cmd and f"--nworkers {section['processes']}" in cmd


def test_jobqueue_overrides(slurm):
    pytest.importorskip("dask_jobqueue")
    script = _script(slurm, "slurm", memory="16GiB", walltime="04:00:00", queue="debug", cores=4)
    lines = script.splitlines()
    assert {"#SBATCH --mem=16G", "#SBATCH -t 04:00:00", "#SBATCH -p debug"} <= set(lines)
    assert "#SBATCH --cpus-per-task=4" in lines


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses the 'lo' interface")
def test_launch_print_job_script_cli(slurm, capsys):
    pytest.importorskip("dask_jobqueue")
    rc = slurm.main(["--print-job-script", "--interface", "lo", "--dashboard-address", ":0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("#!/usr/bin/env bash") and "#SBATCH" in out
    assert "--interface lo" in out and "tcp://127.0.0.1:" in out

    rc = slurm.main(["--queue-system", "pbs", "--print-job-script", "--interface", "lo"])
    assert rc == 0 and "#PBS" in capsys.readouterr().out


def test_launch_errors(slurm, capsys, monkeypatch, tmp_path):
    rc = slurm.main(["--config", str(tmp_path / "missing.yaml"), "--print-job-script"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text("jobqueue:\n  slurm: {cores: 4, memory: 8GiB}\n")
    rc = slurm.main(["--config", str(bad), "--queue-system", "pbs", "--print-job-script"])
    assert rc == 2 and "no 'jobqueue: pbs:' section" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    rc = slurm.main(["--print-job-script"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "pip install dask-jobqueue" in err
    with pytest.raises(ImportError, match="pip install dask-jobqueue"):
        slurm.build_cluster("slurm")


@pytest.mark.skipif(
    any(Path(p, "sbatch").exists() for p in os.environ.get("PATH", "").split(os.pathsep)),
    reason="a real SLURM is installed here; do not submit jobs from tests",
)
def test_launch_without_sbatch_says_so(slurm, capsys, tmp_path):
    pytest.importorskip("dask_jobqueue")
    rc = slurm.main(["--jobs", "1", "--scheduler-file", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "'sbatch' not found" in err and "--print-job-script" in err
    assert not (tmp_path / "s.json").exists()
