"""``dnmf fit --online``: the command line over dnmf.MiniBatchNMF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import dnmf
from dnmf._online_run import read_stored_H


def run_here(*args: str, cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    from dnmf.cli import run

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    status = run(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)


def one_error_line(proc, code: int, text: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and text in lines[-1], proc.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1


@pytest.fixture
def data(tmp_path) -> Path:
    V = np.abs(np.random.default_rng(0).standard_normal((300, 15))).astype(np.float32)
    np.save(tmp_path / "V.npy", V)
    return tmp_path


def test_fit_online_end_to_end_equals_the_library(data):
    # A real process, as a user runs it.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dnmf", "fit", "V.npy", "-k", "3", "-o", "run.zarr",
         "--online", "--batch-size", "64", "--max-iter", "4", "--seed", "0",
         "--init", "random"],
        cwd=data, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "after 20 batches (4 passes)" in proc.stdout, proc.stdout
    with open(data / "run.zarr" / "manifest.json") as f:
        manifest = json.load(f)["manifest"]
    assert manifest["kind"] == "online" and manifest["complete"]
    assert manifest["iteration"] == 20
    assert manifest["source"]["location"] == str(data / "V.npy")  # read in place
    assert not (data / "run.input.zarr").exists()
    est = dnmf.MiniBatchNMF(3, init="random", batch_size=64, max_iter=4, random_state=0,
                            scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est.fit(str(data / "V.npy"))
    np.testing.assert_array_equal(read_stored_H(str(data / "run.zarr")), est.components_)


def test_fit_online_refuses_what_does_not_apply(data, capsys, monkeypatch):
    proc = run_here("fit", "V.npy", "-k", "3", "-o", "run.zarr", "--online", "--solver",
                    "mu", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    one_error_line(proc, 2, "--solver mu does not apply with --online")
    proc = run_here("fit", "V.npy", "-k", "3", "-o", "run.zarr", "--batch-size", "10",
                    cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    one_error_line(proc, 2, "apply only with --online")
    assert not (data / "run.zarr").exists()


def test_fit_online_again_continues_or_refuses(data, capsys, monkeypatch):
    args = ("fit", "V.npy", "-k", "2", "-o", "run.zarr", "--online", "--batch-size", "100",
            "--max-iter", "2", "--seed", "1")
    first = run_here(*args, cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert first.returncode == 0, first.stderr
    H = read_stored_H(str(data / "run.zarr"))
    # info reads the online run (tests/test_online_runs.py has the other commands)
    info = run_here("info", "run.zarr", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert info.returncode == 0 and "6 of 6 batches: epoch 2 of max_iter 2" in info.stdout
    # the same command again reads the complete run back
    again = run_here(*args, cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert again.returncode == 0 and "after 6 batches (2 passes)" in again.stdout
    np.testing.assert_array_equal(read_stored_H(str(data / "run.zarr")), H)
    # other parameters: one line naming the difference, the run untouched
    other = run_here(*args[:-1], "2", "--forget-factor", "0.5", cwd=data, capsys=capsys,
                     monkeypatch=monkeypatch)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert "forget_factor: 0.7 (run) vs 0.5 (now)" in other.stderr
    np.testing.assert_array_equal(read_stored_H(str(data / "run.zarr")), H)


def test_fit_online_forget_per_batch(data, capsys, monkeypatch):
    # --forget-per batch: the library's forget_per="batch", recorded with the run (and
    # shown by info); the run's H is the library's bit for bit
    args = ("fit", "V.npy", "-k", "3", "-o", "run.zarr", "--online", "--batch-size", "50",
            "--max-iter", "2", "--seed", "0", "--init", "random", "--forget-per", "batch",
            "--forget-factor", "0.5")
    proc = run_here(*args, cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    run = dnmf.open_run(str(data / "run.zarr"))
    assert run.params["forget_per"] == "batch"
    est = dnmf.MiniBatchNMF(3, init="random", batch_size=50, max_iter=2, random_state=0,
                            forget_factor=0.5, forget_per="batch", scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est.fit(str(data / "V.npy"))
    np.testing.assert_array_equal(run.H, est.components_)
    per_pass = dnmf.MiniBatchNMF(3, init="random", batch_size=50, max_iter=2, random_state=0,
                                 forget_factor=0.5, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        per_pass.fit(str(data / "V.npy"))
    assert not np.allclose(run.H, per_pass.components_, rtol=1e-3)
    info = run_here("info", "run.zarr", cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    assert "forget_factor 0.5 per batch" in info.stdout
    proc = run_here("fit", "V.npy", "-k", "3", "-o", "other.zarr", "--forget-per", "batch",
                    cwd=data, capsys=capsys, monkeypatch=monkeypatch)
    one_error_line(proc, 2, "apply only with --online")
