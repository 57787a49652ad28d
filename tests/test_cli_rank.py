"""``dnmf rank``: the command line over dnmf.select_rank (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_rank import planted_rank  # noqa: E402


def run_dnmf(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DNMF_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dnmf", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rank-cli")
    V, _, _ = planted_rank(80, 40, 3, seed=11)
    np.save(folder / "V.npy", V)
    return folder


def test_rank_consensus_prints_k_draws_the_plot_and_continues(data):
    args = ["rank", "V.npy", "--ks", "2:4", "--method", "consensus", "-r", "4",
            "--out", "con.sweep", "--max-iter", "60", "--plot", "con.png"]
    first = run_dnmf(*args, cwd=data)
    assert first.returncode == 0, first.stderr
    assert "k = 3 (method consensus, rule stability)" in first.stdout
    assert "[12/12]" in first.stderr and "Traceback" not in first.stderr
    assert (data / "con.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((data / "con.sweep" / "table.json").read_text())["rows"]
    assert len(table) == 12
    # The same command again: nothing refitted, the same answer.
    again = run_dnmf(*args, "--json", cwd=data)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["k"] == 3
    assert [r["time"] for r in result["table"]] == [r["time"] for r in table]
    assert "[" not in again.stderr.split("by consensus")[-1]  # no fit lines: nothing ran


BAD = {
    "ks-dash": (["--ks", "2-20"], "--ks must look like 2:20"),
    "ks-backwards": (["--ks", "5:2"], "--ks must look like 2:20"),
    "one-restart": (["--method", "consensus", "-r", "1"], "--replicates must be at least 2"),
    "holdout": (["--holdout", "2"], "--holdout must be a fraction between 0 and 1"),
    "rule": (["--rule", "stability"], "rule='stability' is not a rule of method='cv'"),
    "plot-dir": (["--plot", "nowhere/rank.png"], "does not exist"),
    "panel-cache": (["--panel-cache", "lots"], "--panel-cache must be a size such as"),
}


@pytest.fixture(scope="module")
def bad_runs(data):
    """The bad command lines, run together (their interpreter start-ups overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_dnmf, "rank", "V.npy", "--out", f"bad-{name}.sweep",
                                     *args, cwd=data)
                   for name, (args, _) in BAD.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(BAD))
def test_rank_bad_arguments_are_one_line(data, bad_runs, name):
    res = bad_runs[name]
    assert res.returncode == 2, res.stderr
    assert BAD[name][1] in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    # Refused before the input was converted: nothing was written.
    assert not (data / f"bad-{name}.sweep").exists()
    assert not (data / f"bad-{name}.sweep.input.zarr").exists()


def test_rank_missing_input_is_one_line(data):
    res = run_dnmf("rank", "missing.npy", "--out", "m.sweep", cwd=data)
    assert res.returncode != 0
    assert res.stderr.startswith("error: ") and "missing.npy" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_rank_ctrl_c_says_how_to_continue(data):
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "dnmf", "rank", "V.npy", "--ks", "2:5", "-r", "2",
           "--method", "consensus", "--out", "int.sweep", "--max-iter", "400", "--tol", "0"]
    child = subprocess.Popen(cmd, cwd=data, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                              signal.default_int_handler))
    table = data / "int.sweep" / "table.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None and not table.exists():
        time.sleep(0.05)
    assert child.poll() is None
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Continue with: dnmf rank V.npy --out int.sweep" in err
    assert "Traceback" not in err
    done = len(json.loads(table.read_text())["rows"])
    assert 1 <= done < 8


@pytest.mark.heavy  # suite time; test_extrapolation stays
def test_rank_extrapolate_passes_through_to_every_fit(data):
    """--extrapolate off gives select_rank(extrapolate=False)'s table (plain iterations,
    which differ from the default's extrapolated ones), recorded in the sweep; on is
    refused where no fit of the sweep could extrapolate."""
    import dnmf

    common = ["--ks", "2:3", "--method", "consensus", "-r", "2", "--max-iter", "40",
              "--tol", "0", "--json"]
    off = run_dnmf("rank", "V.npy", "--out", "xoff.sweep", "--extrapolate", "off", *common,
                   cwd=data)
    auto = run_dnmf("rank", "V.npy", "--out", "xauto.sweep", *common, cwd=data)
    assert off.returncode == 0 and auto.returncode == 0, off.stderr + auto.stderr
    header = json.loads((data / "xoff.sweep" / "sweep.json").read_text())
    assert header["nmf.extrapolate"] is False
    assert "nmf.extrapolate" not in json.loads(
        (data / "xauto.sweep" / "sweep.json").read_text())  # auto: NMF's default
    losses_off = [r["loss"] for r in json.loads(off.stdout)["table"]]
    losses_auto = [r["loss"] for r in json.loads(auto.stdout)["table"]]
    V = np.load(data / "V.npy")
    plain = dnmf.select_rank(V, [2, 3], method="consensus", n_replicates=2, max_iter=40,
                             tol=0.0, extrapolate=False)
    assert losses_off == [r["loss"] for r in plain.rows]
    assert losses_off != losses_auto  # extrapolation changed the iterates
    # continued with the same option: nothing refitted
    again = run_dnmf("rank", "V.npy", "--out", "xoff.sweep", "--extrapolate", "off", *common,
                     cwd=data)
    assert again.returncode == 0, again.stderr
    assert [r["loss"] for r in json.loads(again.stdout)["table"]] == losses_off
    # on: refused (one line, nothing written) for cv sweeps (masked fits) and for mu
    for extra, words in ((["--method", "cv"], "--method cv"),
                         (["--method", "consensus", "--solver", "mu"], "--solver mu")):
        res = run_dnmf("rank", "V.npy", "--out", "xon.sweep", "--extrapolate", "on", *extra,
                       cwd=data)
        assert res.returncode == 2, res.stderr
        assert "--extrapolate on is for unmasked" in res.stderr and words in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not (data / "xon.sweep").exists()
    on = run_dnmf("rank", "V.npy", "--out", "xon.sweep", "--extrapolate", "on", *common,
                  cwd=data)
    assert on.returncode == 0, on.stderr
    assert [r["loss"] for r in json.loads(on.stdout)["table"]] == losses_auto  # k < min(n, m)


def test_select_rank_refuses_extrapolate_true_for_masked_sweeps():
    import dnmf
    from dnmf.errors import InvalidParameterError

    V = np.random.default_rng(0).random((30, 12))
    with pytest.raises(InvalidParameterError, match="every fit of method='cv' is masked"):
        dnmf.select_rank(V, [2, 3], method="cv", extrapolate=True)
    with pytest.raises(InvalidParameterError, match="mask= masks every fit"):
        dnmf.select_rank(V, [2, 3], method="consensus", extrapolate=True,
                         mask=np.ones(V.shape, bool))
    Vn = V.copy()
    Vn[0, 0] = np.nan
    with pytest.raises(InvalidParameterError, match="missing='nan' masks every fit"):
        dnmf.select_rank(Vn, [2, 3], method="consensus", extrapolate=True, missing="nan")
