"""The run's lock held by the command line through the conversion and the fit, for
every kind of ``--out`` (issue 16): a directory (tests/test_cli.py), a ``.zip`` (the
lock lives in the work directory beside it) and a URL (tests/test_s3.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import dnmf

TIMEOUT = 300


def start(args: list[str], cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DNMF_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "dnmf", *args], cwd=cwd, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def race(args: list[str], cwd, gap: float = 0.3) -> list[tuple[int, str, str]]:
    procs = []
    for _ in range(2):
        procs.append(start(args, cwd))
        time.sleep(gap)
    return [(p.wait(timeout=TIMEOUT), *p.communicate()) for p in procs]


@pytest.mark.heavy  # suite time; the directory-store race in test_cli stays
def test_two_fits_into_one_zip_started_together_one_is_refused_and_the_other_is_right(
        tmp_path):
    # A CSV is converted (to run.zip.input.zarr) under the lock: the loser is refused
    # before it converts anything, with one line.
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "V.csv", rng.random((2000, 5)) @ rng.random((5, 120)),
               delimiter=",")
    args = ["fit", "V.csv", "--rank", "5", "--seed", "3", "--max-iter", "20", "--tol", "0"]
    results = race([*args, "--out", "run.zip"], tmp_path)
    assert sorted(r[0] for r in results) == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1 and "is being written by another process" in lines[0], loser
    assert "Traceback" not in loser[2]
    assert not (tmp_path / "run.zip.partial").exists()  # packed; no debris
    solo = start([*args, "--out", "solo.zip"], tmp_path)
    assert solo.wait(timeout=TIMEOUT) == 0, solo.communicate()
    got = dnmf.open_run(str(tmp_path / "run.zip"))
    want = dnmf.open_run(str(tmp_path / "solo.zip"))
    assert got.loss_history == want.loss_history and len(got.loss_history) == 20
    np.testing.assert_array_equal(got.H, want.H)
    # the complete zip continued by a larger --max-iter: unpacked beside the lock
    more = start(["resume", "run.zip", "--max-iter", "25"], tmp_path)
    out, err = more.communicate(timeout=TIMEOUT)
    assert more.returncode == 0, err
    assert dnmf.open_run(str(tmp_path / "run.zip")).iteration == 25, (out, err)
    again = start([*args[:-4], "--max-iter", "30", "--tol", "0", "--out", "run.zip"],
                  tmp_path)
    assert again.wait(timeout=TIMEOUT) == 0, again.communicate()
    assert dnmf.open_run(str(tmp_path / "run.zip")).iteration == 30
    assert not (tmp_path / "run.zip.partial").exists()
