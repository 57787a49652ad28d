"""End-to-end tests of the ``dnmf`` command through the real entry point.

Every command runs as ``python -m dnmf ...`` in a subprocess, on small data. Commands
that do not depend on each other (the conversions, the user-error cases) are started
together by module fixtures so that the interpreter start-ups overlap; each case is
still its own test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr

import dnmf
from dnmf._convert import convert
from dnmf.testing import planted

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180


def run_dnmf(*args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DNMF_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "dnmf", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )


def run_many(cases: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run independent commands concurrently (their start-up time dominates)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_dnmf, *args, cwd=cwd) for name, args in cases.items()}
        return {name: f.result() for name, f in futures.items()}


def run_here(*args: str, cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """The same command through ``dnmf.cli.run`` in this process (no start-up cost)."""
    from dnmf.cli import run

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    status = run(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    """Exit ``code``, one ``error:`` line (the last on stderr) matching, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert re.search(pattern, errors[0]), errors[0]


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def V() -> np.ndarray:
    return planted(96, 20, 3, seed=1, noise=0.01)[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, V) -> Path:
    """One file of V per format dnmf reads."""
    d = tmp_path_factory.mktemp("sources")
    np.save(d / "v.npy", V)
    np.savetxt(d / "v.csv", V, delimiter=",", fmt="%.17g",
               header=",".join(f"f{j}" for j in range(V.shape[1])), comments="")
    np.savetxt(d / "v.tsv", V, delimiter="\t", fmt="%.17g")
    sp.save_npz(d / "v.npz", sp.csr_matrix(V))
    scipy.io.mmwrite(d / "v.mtx", sp.coo_matrix(V), precision=17)
    import h5py

    with h5py.File(d / "v.h5", "w") as f:
        f.create_dataset("data/V", data=V, chunks=(16, V.shape[1]))
    zarr.create_array(store=str(d / "v.zarr"), data=V, chunks=(10, 20))
    from dnmf.io import write_csr_zarr

    write_csr_zarr(sp.csr_matrix(V), d / "v-csr.zarr", chunk_nnz=500)
    return d


FORMATS = ["v.npy", "v.csv", "v.tsv", "v.npz", "v.mtx", "v.h5", "v.zarr", "v-csr.zarr"]


@pytest.fixture(scope="module")
def converted(sources) -> dict[str, subprocess.CompletedProcess]:
    cases = {name: ["convert", name, f"out-{name.replace('.', '-')}.zarr", "--chunk-rows", "32",
                    "--dense"]
             for name in FORMATS}
    return run_many(cases, sources)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, V) -> Path:
    """Data, runs (made in-process) and damaged copies for the user-error cases."""
    d = tmp_path_factory.mktemp("errors")
    np.save(d / "v.npy", V)
    bad = V.copy()
    bad[3, 1] = -1.0
    np.save(d / "neg.npy", bad)
    (d / "neg.csv").write_text("1,2\n3,4\n5,-6\n")
    nan = V.copy()
    nan[50, 7] = np.nan
    zarr.create_array(store=str(d / "nan.zarr"), data=nan)
    np.save(d / "other.npy", np.ones((5, 7)))
    convert(d / "v.npy", d / "data.zarr", chunk_rows=48)
    (d / "afile").write_text("not a directory\n")
    (d / "empty").mkdir()
    (d / "foreign" / "run.zarr").mkdir(parents=True)
    (d / "foreign" / "run.zarr" / "notes.txt").write_text("mine\n")
    from dnmf.io import write_csr_zarr

    write_csr_zarr(sp.csr_matrix(V), d / "csr.zarr")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        dnmf.NMF(2, max_iter=5, random_state=0, out=str(d / "run.zarr"),
                 scheduler="threads").fit(str(d / "data.zarr"))
        # A run whose data changes afterwards, and one whose W is damaged.
        convert(d / "v.npy", d / "data2.zarr", chunk_rows=48)
        dnmf.NMF(2, max_iter=5, random_state=0, out=str(d / "moved.zarr"),
                 scheduler="threads").fit(str(d / "data2.zarr"))
    changed = zarr.open_array(str(d / "data2.zarr"), mode="r+")
    changed[0, 0] = changed[0, 0] + 1.0
    shutil.copytree(d / "run.zarr", d / "corrupt.zarr")
    manifest = json.loads((d / "corrupt.zarr" / "manifest.json").read_text())
    w = manifest["manifest"]["W"]["array"]
    damage(next(p for p in (d / "corrupt.zarr" / w / "c").rglob("*") if p.is_file()))
    shutil.copytree(d / "run.zarr", d / "locked.zarr")
    from dnmf._store import RunLock, RunStore, as_location

    lock = RunLock(RunStore(as_location(str(d / "locked.zarr"))))
    (d / "locked.zarr" / "lock.json").write_bytes(lock._payload())  # held by pytest: alive
    return d


USAGE, ERROR = 2, 1

#: The user errors the issue lists, through the real entry point in a subprocess:
#: name → (arguments, exit status, pattern of the one error line).
ERROR_CASES = {
    "rank below 1": (["fit", "v.npy", "-k", "0", "-o", "r.zarr"], USAGE, r"'--rank'"),
    "bad option value": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--solver", "foo"],
                         USAGE, r"--solver.*'foo'"),
    "missing file": (["fit", "missing.npy", "-k", "2", "-o", "r.zarr"], ERROR,
                     r"missing\.npy does not exist"),
    "not a run": (["info", "data.zarr"], ERROR, r"no committed state: not a dnmf run"),
    # a .npy is read in place: the fit's validation pass finds the entry
    "negative data": (["fit", "neg.npy", "-k", "2", "-o", "n.zarr"], ERROR,
                      r"Negative values in data .*the first at row 3, column 1"),
    "incompatible resume": (["resume", "moved.zarr", "--max-iter", "9"], ERROR,
                            r"other data or other parameters.*content of V"),
    "store not writable": (["fit", "v.npy", "-k", "2", "-o", "afile/r.zarr"], ERROR,
                           r"cannot create the directory afile"),
    "corrupted checkpoint": (["resume", "corrupt.zarr", "--max-iter", "9"], ERROR,
                             r"checkpoint is corrupted: W chunk"),
}

#: More mistakes, through the same entry function in this process (no start-up cost).
def _closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NO_SCHEDULER = f"tcp://127.0.0.1:{_closed_port()}"

MORE_ERROR_CASES = {
    # Refused at once, before v.npy is converted (Dask's client would retry for 10 s).
    "no scheduler there": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--scheduler",
                            NO_SCHEDULER], ERROR,
                           r"cannot connect to the Dask scheduler at tcp://127\.0\.0\.1:\d+: "
                           r"nothing listens there \(connection refused\)\. Is the scheduler"),
    "not a scheduler file": (["resume", "run.zarr", "--scheduler-file", "v.npy"], ERROR,
                             r"v\.npy is not a Dask scheduler file"),
    "rank missing": (["fit", "v.npy", "-o", "r.zarr"], USAGE, r"Missing option '--rank'"),
    "l1 ratio out of range": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--l1-ratio", "2"],
                              USAGE, r"--l1-ratio"),
    "plot into a missing directory": (["plot", "run.zarr", "--loss", "nodir/l.png"], ERROR,
                                      r"cannot write 'nodir/l\.png': the directory 'nodir' "
                                      r"does not exist"),
    "negative seed": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--seed", "-5"], USAGE,
                      r"Invalid value for '--seed'"),
    "bad alpha-h": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--alpha-h", "x"], USAGE,
                    r"--alpha-h.*'same' or a non-negative number"),
    "bad scheduler": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--scheduler", "bogus"],
                      USAGE, r"--scheduler must be tcp://HOST:PORT, local, local:N"),
    "bad local scheduler": (["resume", "run.zarr", "--scheduler", "local:0"], USAGE,
                            r"local:N needs a positive number of workers"),
    "kl with hals": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--solver", "hals",
                      "--loss", "kl"], USAGE,
                     r"solver='mu' for the KL divergence"),
    "extrapolate on with mu": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--solver", "mu",
                                "--extrapolate", "on"], USAGE,
                               r"--extrapolate on is for --solver hals or als with --loss "
                               r"frobenius, not --solver mu with --loss frobenius\. Use "
                               r"--extrapolate auto"),
    "extrapolate on with kl": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--solver", "amu",
                                "--loss", "kl", "--extrapolate", "on"], USAGE,
                               r"not --solver amu with --loss kullback-leibler"),
    "extrapolate on masked": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--missing", "nan",
                               "--extrapolate", "on"], USAGE,
                              r"not --missing or --mask \(masked fits\)"),
    "extrapolate online": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--online",
                            "--extrapolate", "off"], USAGE,
                           r"--extrapolate off does not apply with --online"),
    "bad extrapolate": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--extrapolate", "yes"],
                        USAGE, r"--extrapolate.*'yes'"),
    "bad loss": (["fit", "v.npy", "-k", "2", "-o", "r.zarr", "--loss", "ikura"], USAGE,
                 r"--loss must be frobenius, kullback-leibler \(kl\), itakura-saito"),
    "unknown command": (["fti"], USAGE, r"No such command 'fti'"),
    "unknown option": (["info", "run.zarr", "--jsn"], USAGE, r"No such option: --jsn"),
    "bad export format": (["export", "run.zarr", "--out", "e", "--format", "xls"], USAGE,
                          r"--format"),
    "bad size": (["export", "run.zarr", "--out", "e", "--max-size", "lots"], USAGE,
                 r"--max-size must be a size such as 500MB"),
    "plot without a picture": (["plot", "run.zarr"], USAGE, r"give --loss FILE, --basis FILE"),
    "bad image shape": (["plot", "run.zarr", "--basis", "b.png", "--image-shape", "3x"], USAGE,
                        r"--image-shape must look like HEIGHTxWIDTH"),
    "image shape mismatch": (["plot", "run.zarr", "--basis", "b.png", "--image-shape", "3x3"],
                             USAGE, r"3x3 has 9 pixels, but the basis vectors of H have 20"),
    "bad picture format": (["plot", "run.zarr", "--loss", "loss.xyz"], USAGE,
                           r"the file name must end in one of"),
    "conversion options on sparse input": (
        ["fit", "csr.zarr", "-k", "2", "-o", "r.zarr", "--chunk-rows", "10"], USAGE,
        r"sparse \(CSR\) Zarr group, fitted as it is"),
    "demo with amu": (["demo", "--solver", "amu", "--out", "d"], USAGE,
                      r"the demo runs --solver hals or mu .*not --solver amu"),
    "demo over someone else's files": (["demo", "--out", "foreign"], ERROR,
                                       r"foreign/run\.zarr exists and is not a dnmf run"),
    "missing zarr input": (["fit", "missing.zarr", "-k", "2", "-o", "r.zarr"], ERROR,
                           r"missing\.zarr does not exist"),
    "missing convert source": (["convert", "missing.csv", "m.zarr"], ERROR,
                               r"missing\.csv does not exist"),
    "unknown format": (["convert", "afile", "m.zarr"], ERROR, r"cannot tell the format"),
    "not a run (file)": (["info", "v.npy"], ERROR, r"v\.npy is a file, not a dnmf run"),
    "not a run (missing)": (["resume", "nowhere.zarr"], ERROR, r"nowhere\.zarr does not exist"),
    "not a run (empty directory)": (["info", "empty"], ERROR, r"empty"),
    "negative csv": (["convert", "neg.csv", "n.zarr"], ERROR,
                     r"negative value \(-6\) at row 2, column 1 \(line 3\)"),
    "nan in zarr": (["fit", "nan.zarr", "-k", "2", "-o", "n.zarr"], ERROR,
                    r"NaN or inf.*row 50, column 7"),
    "incompatible run at out": (["fit", "data.zarr", "-k", "3", "-o", "run.zarr"], ERROR,
                                r"holds a run for other data or other parameters.*"
                                r"n_components: 2 \(run\) vs 3 \(now\).*--overwrite"),
    "output exists": (["convert", "v.npy", "data.zarr"], ERROR,
                      r"data\.zarr already exists; pass --overwrite"),
    "out is a file": (["fit", "v.npy", "-k", "2", "-o", "afile"], ERROR,
                      r"--out afile is a file, not a run store"),
    "corrupted checkpoint (info)": (["info", "corrupt.zarr"], ERROR,
                                    r"checkpoint is corrupted: W chunk"),
    "run locked": (["resume", "locked.zarr", "--max-iter", "9"], ERROR,
                   r"being written by another process"),
    "export too large": (["export", "run.zarr", "--out", "e", "--max-size", "100"], ERROR,
                         r"W is .* more than --max-size 100: pass --force"),
    "transform wrong width": (["transform", "run.zarr", "other.npy", "--out", "w.zarr"], ERROR,
                              r"X has 7 features, but NMF is expecting 20"),
    "scheduler file missing": (["resume", "run.zarr", "--scheduler-file", "s.json"], ERROR,
                               r"scheduler file 's\.json' does not exist"),
}


@pytest.fixture(scope="module")
def error_results(workspace) -> dict[str, subprocess.CompletedProcess]:
    return run_many({name: args for name, (args, _, _) in ERROR_CASES.items()}, workspace)


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_error(case, error_results):
    _, code, pattern = ERROR_CASES[case]
    assert_user_error(error_results[case], code, pattern)


@pytest.mark.parametrize("case", list(MORE_ERROR_CASES))
def test_more_user_errors(case, workspace, monkeypatch, capsys):
    args, code, pattern = MORE_ERROR_CASES[case]
    assert_user_error(run_here(*args, cwd=workspace, capsys=capsys, monkeypatch=monkeypatch),
                      code, pattern)


def test_fit_extrapolate_option(workspace, monkeypatch, capsys):
    # auto (the default) and on extrapolate this HALS fit, off runs it plain; the run
    # records what was resolved, and each is the estimator's fit with that setting.
    V = np.load(workspace / "v.npy")
    histories = {}
    for value in ("default", "auto", "on", "off"):
        out = f"ex-{value}.zarr"
        args = ["fit", "v.npy", "-k", "2", "-o", out, "--seed", "3", "--max-iter", "15",
                "--tol", "0"]
        ok(run_here(*args, *([] if value == "default" else ["--extrapolate", value]),
                    cwd=workspace, capsys=capsys, monkeypatch=monkeypatch))
        run = dnmf.open_run(workspace / out)
        assert run.params.get("extrapolate", False) is (value != "off")
        histories[value] = list(run.loss_history)
        shutil.rmtree(workspace / out)
    assert histories["default"] == histories["auto"] == histories["on"] != histories["off"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached
        plain = dnmf.NMF(2, random_state=3, max_iter=15, tol=0, extrapolate=False).fit(V)
    assert histories["off"] == pytest.approx(plain.loss_history_, rel=1e-12)


def test_failed_commands_leave_nothing_behind(error_results, workspace):
    # Runs after the cases above (file order), so it sees what all of them left.
    made = {p.name for p in workspace.iterdir()}
    for debris in ("r.zarr", "r.input.zarr", "n.zarr", "n.input.zarr", "m.zarr", "w.zarr", "e"):
        assert debris not in made
    assert not [name for name in made if ".tmp-" in name or "replaced" in name]
    # The runs that commands refused to touch are intact.
    assert dnmf.open_run(str(workspace / "run.zarr")).iteration == 5
    assert (workspace / "afile").read_text() == "not a directory\n"
    assert sorted(p.name for p in (workspace / "foreign").iterdir()) == ["run.zarr"]
    assert (workspace / "foreign" / "run.zarr" / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("args", [["--debug", "info", "v.npy"], ["info", "v.npy", "--debug"]])
def test_debug_lets_the_exception_through(args, workspace, monkeypatch):
    from dnmf.cli import run

    monkeypatch.chdir(workspace)
    with pytest.raises(dnmf.StoreError, match="is a file, not a dnmf run"):
        run(args)


def test_help_and_version(workspace, capsys, monkeypatch):
    def here(*args):
        return ok(run_here(*args, cwd=workspace, capsys=capsys, monkeypatch=monkeypatch))

    root = here().stdout
    assert all(c in root for c in ("convert", "fit", "resume", "info", "transform", "export",
                                   "plot", "demo"))
    assert "--checkpoint-every" in here("fit", "--help").stdout
    assert here("--version").stdout.strip() == f"dnmf {dnmf.__version__}"


@pytest.mark.parametrize("name", FORMATS)
def test_convert_every_format(name, converted, sources, V):
    proc = ok(converted[name])
    target = f"out-{name.replace('.', '-')}.zarr"
    assert f"wrote {target}: 96 × 20 float64" in proc.stdout
    assert ("read into memory whole" in proc.stdout) == (name in ("v.npz", "v.mtx"))
    out = zarr.open_array(str(sources / target), mode="r")
    assert out.chunks == (32, 20) and out.metadata.zarr_format == 3
    np.testing.assert_allclose(out[:], V, rtol=1e-15)


def _fit_info_export(cwd: Path, data: str, run: str, V: np.ndarray, export: bool = True
                     ) -> dict:
    proc = ok(run_dnmf("fit", data, "--rank", "3", "--out", run, "--seed", "0",
                       "--max-iter", "30", "--checkpoint-every", "7", cwd=cwd))
    assert f"Run saved to {run}" in proc.stdout
    assert "fit: iteration 1/30" in proc.stderr  # the progress display, as plain lines
    info = json.loads(ok(run_dnmf("info", run, "--json", cwd=cwd)).stdout)
    assert {"iteration", "max_iter", "complete", "loss", "params"} <= set(info)
    assert info["complete"] is True and info["max_iter"] == 30
    assert info["params"]["n_components"] == 3 and info["params"]["random_state"] == 0
    assert 1 <= info["iteration"] <= 30 and info["loss"] > 0
    if not export:
        return info
    ok(run_dnmf("export", run, "--format", "npy", "--out", f"{run}-export", cwd=cwd))
    W = np.load(cwd / f"{run}-export" / "W.npy")
    H = np.load(cwd / f"{run}-export" / "H.npy")
    assert W.shape == (96, 3) and H.shape == (3, 20)
    assert 0.5 * np.linalg.norm(V - W @ H) ** 2 == pytest.approx(info["loss"], rel=1e-6)
    return info


def test_fit_info_export_transform_plot(converted, sources, V, capsys, monkeypatch):
    ok(converted["v.npy"])
    info = _fit_info_export(sources, "out-v-npy.zarr", "run-npy.zarr", V)
    run = "run-npy.zarr"
    cases = {
        "csv": ["export", run, "--format", "csv", "--out", "csv-export"],
        "transform": ["transform", run, "v.csv", "--out", "w-new.zarr"],
        "plot": ["plot", run, "--loss", "loss.png", "--basis", "basis.png",
                 "--image-shape", "4x5"],
        "text": ["info", run],
    }
    results = {name: run_here(*args, cwd=sources, capsys=capsys, monkeypatch=monkeypatch)
               for name, args in cases.items()}
    ok(results["csv"])
    W = np.loadtxt(sources / "csv-export" / "W.csv", delimiter=",", ndmin=2)
    np.testing.assert_array_equal(W, np.load(sources / "run-npy.zarr-export" / "W.npy"))
    ok(results["transform"])
    W_new = zarr.open_array(str(sources / "w-new.zarr"), mode="r")[:]
    est = dnmf.open_run(str(sources / run)).to_estimator()
    np.testing.assert_allclose(W_new, est.set_params(out=None).transform(V), rtol=1e-10)
    ok(results["plot"])
    for png in ("loss.png", "basis.png"):
        assert (sources / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = ok(results["text"]).stdout
    assert f"iteration   {info['iteration']} of max_iter 30" in text
    assert "every W chunk match their checksums" in text
    assert [p.name for p in sources.iterdir() if ".tmp-" in p.name] == []


def test_fit_converts_other_formats_on_the_fly_and_resume_extends(sources, V, capsys,
                                                                  monkeypatch):
    info = _fit_info_export(sources, "v.csv", "run-csv.zarr", V, export=False)
    assert info["source"]["location"] == str(sources / "run-csv.input.zarr")
    assert zarr.open_array(str(sources / "run-csv.input.zarr"))[:] == pytest.approx(V)
    proc = ok(run_dnmf("resume", "run-csv.zarr", "--max-iter", "45", cwd=sources))
    run = dnmf.open_run(str(sources / "run-csv.zarr"))
    assert run.params["max_iter"] == 45 and run.complete
    if info["iteration"] == 30:  # it had stopped at max_iter: now extended
        assert run.iteration > 30 and "fit: iteration 31/45" in proc.stderr
    # Fitting again reuses the converted copy instead of converting again.
    again = ok(run_here("fit", "v.csv", "--rank", "3", "--out", "run-csv.zarr", "--seed", "0",
                        "--max-iter", "45", cwd=sources, capsys=capsys, monkeypatch=monkeypatch))
    assert "using run-csv.input.zarr, converted earlier from v.csv" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    # text and npz formats: heavy (suite time); h5, Zarr and CSR Zarr stay in the default run
    pytest.param(n, marks=pytest.mark.heavy) if n in ("v.csv", "v.tsv", "v.npz", "v.mtx") else n
    for n in FORMATS if n != "v.npy"])
def test_every_format_through_fit_info_export(name, converted, sources, V):
    ok(converted[name])
    _fit_info_export(sources, f"out-{name.replace('.', '-')}.zarr",
                     f"run-{name.replace('.', '-')}.zarr", V)


def _default_sigint() -> None:
    """In the child: SIGINT's default (KeyboardInterrupt), as under a terminal, even
    when this test run ignores SIGINT (a shell's background job inherits SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _fit_until_running(cwd: Path, args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnmf", *args], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_sigint,
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + TIMEOUT
    for line in proc.stderr:  # the first progress line: the loop is running
        seen.append(line)
        if line.startswith("fit: iteration 1/"):
            break
        assert time.monotonic() < deadline, "".join(seen)
    else:
        raise AssertionError("the fit ended before iterating:\n" + "".join(seen))
    proc.seen = seen  # type: ignore[attr-defined]
    return proc


@pytest.mark.parametrize("delay", [1.0, 2.5])  # after the interpreter's own start-up
def test_sigint_while_dnmf_starts_is_one_line(tmp_path, delay):
    # Ctrl-C during the imports (Typer, the commands, Dask): it used to end in Python's
    # traceback of the interrupted import, or (later on) in a silent exit 130.
    np.save(tmp_path / "v.npy", planted(200, 30, 3, seed=1)[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnmf", "fit", "v.npy", "-k", "3", "--out", "run.zarr",
         "--tol", "0", "--max-iter", "100000"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err and "Traceback" not in out, err
    # 130 (the command's exit), or -2 (the interpreter's own exit by SIGINT when the
    # interrupt lands in its shutdown). Before the fit: one line; in it (a fast
    # machine): the fit's report, ending with the resume command.
    assert proc.returncode in (130, -signal.SIGINT), err
    lines = err.strip().splitlines()
    # (the fit's own "interrupted before the fit started: nothing was written.", or
    # dnmf's "error: interrupted while dnmf was starting ..." / "... before the command
    # started its work ...": whichever phase the signal found)
    assert "interrupted" in lines[-1] or "interrupted: iteration" in err, err


def test_sigint_leaves_a_resumable_run_that_resumes_exactly(tmp_path, capsys, monkeypatch):
    V = planted(400, 60, 4, seed=2, noise=0.05)[0]
    convert_args = dict(chunk_rows=100)
    convert(_save(tmp_path / "v.npy", V), tmp_path / "v.zarr", **convert_args)
    fit = ["fit", "v.zarr", "-k", "4", "--seed", "3", "--tol", "0", "--max-iter", "100000",
           "--checkpoint-every", "1000"]
    proc = _fit_until_running(tmp_path, [*fit, "--out", "run.zarr"])
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    err = "".join(proc.seen) + err  # type: ignore[attr-defined]
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "dnmf resume run.zarr\n" in err  # the exact command, on its own line
    assert err.rstrip().splitlines()[-1].strip() == "dnmf resume run.zarr"
    stopped = dnmf.open_run(str(tmp_path / "run.zarr"))
    assert not stopped.complete and 1 <= stopped.iteration < 100000
    assert f"interrupted: iteration {stopped.iteration} is committed" in err

    # Continue it to a few more iterations; an uninterrupted run must agree bit for bit.
    target = str(stopped.iteration + 5)
    ok(run_dnmf("resume", "run.zarr", "--max-iter", target, cwd=tmp_path))
    ok(run_here(*fit[:-4], "--max-iter", target, "--out", "reference.zarr", cwd=tmp_path,
                capsys=capsys, monkeypatch=monkeypatch))
    resumed = dnmf.open_run(str(tmp_path / "run.zarr"))
    reference = dnmf.open_run(str(tmp_path / "reference.zarr"))
    assert resumed.complete and resumed.iteration == reference.iteration == int(target)
    np.testing.assert_array_equal(resumed.H, reference.H)
    np.testing.assert_array_equal(np.asarray(resumed.W), np.asarray(reference.W))
    assert resumed.loss_history == reference.loss_history


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_sigterm_commits_too_and_keeps_the_new_run_over_the_old(tmp_path):
    convert(_save(tmp_path / "v.npy", planted(300, 50, 3, seed=4)[0]), tmp_path / "v.zarr")
    with pytest.warns(dnmf.ConvergenceWarning):
        dnmf.NMF(2, max_iter=2, out=str(tmp_path / "run.zarr"),
                 scheduler="threads").fit(str(tmp_path / "v.zarr"))
    proc = _fit_until_running(tmp_path, ["fit", "v.zarr", "-k", "3", "--out", "run.zarr",
                                         "--tol", "0", "--max-iter", "100000", "--overwrite"])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143 and "Traceback" not in err
    assert "terminated: iteration" in err and "dnmf resume run.zarr" in err
    run = dnmf.open_run(str(tmp_path / "run.zarr"))
    assert not run.complete and run.params["n_components"] == 3  # the new run, resumable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr", "v.npy", "v.zarr"]


def _readme_commands() -> list[list[str]]:
    """``dnmf ...`` commands in README.md's shell blocks (after ``&&`` too)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "dnmf":
                    commands.append(words[1:])
    return commands


def test_readme_commands_run_as_written(tmp_path):
    commands = _readme_commands()
    assert ["demo"] in commands  # the README's first command
    script = Path(sys.executable).with_name("dnmf")  # the entry point pip installed
    for args in commands:
        if script.exists():
            proc = ok(subprocess.run([str(script), *args], cwd=tmp_path, capture_output=True,
                                     text=True, timeout=TIMEOUT))
        else:
            proc = ok(run_dnmf(*args, cwd=tmp_path))
        if args == ["demo"]:
            assert "wrote dnmf-demo/basis.png" in proc.stdout
            assert "fit: iteration 1/" in proc.stderr
    # The demo found the swimmer's 17 parts.
    from dnmf._demo import swimmer_parts

    run = dnmf.open_run(str(tmp_path / "dnmf-demo" / "run.zarr"))
    assert run.complete and run.params["n_components"] == 17
    parts = swimmer_parts()
    a = parts / np.linalg.norm(parts, axis=1, keepdims=True)
    b = run.H / np.linalg.norm(run.H, axis=1, keepdims=True)
    assert (tmp_path / "dnmf-demo" / "basis.png").read_bytes()[:4] == b"\x89PNG"
    assert zarr.open_array(str(tmp_path / "dnmf-demo" / "swimmer.zarr")).shape == (256, 1024)
    assert (a @ b.T).max(axis=1).min() > 0.9


def test_overwrite_keeps_the_old_run_when_the_new_fit_fails(workspace, tmp_path, capsys,
                                                             monkeypatch):
    shutil.copytree(workspace / "run.zarr", tmp_path / "run.zarr")
    for name in ("v.npy", "neg.npy", "data.zarr"):
        src = workspace / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)

    def here(*args):
        return run_here(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)

    failed = here("fit", "neg.npy", "-k", "3", "-o", "run.zarr", "--overwrite")
    assert_user_error(failed, ERROR, r"Negative values in data")
    assert dnmf.open_run(str(tmp_path / "run.zarr")).params["n_components"] == 2
    ok(here("fit", "data.zarr", "-k", "3", "-o", "run.zarr", "--overwrite", "--max-iter", "5"))
    assert dnmf.open_run(str(tmp_path / "run.zarr")).params["n_components"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data.zarr", "neg.npy", "run.zarr", "v.npy"]


def test_overwrite_keeps_the_old_runs_converted_input_when_the_new_fit_fails(
        tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(5)
    old, new = rng.random((60, 20)), rng.random((50, 30))
    # CSV is converted to run.input.zarr (a .npy would be read in place)
    np.savetxt(tmp_path / "old.csv", old, delimiter=",")
    np.savetxt(tmp_path / "new.csv", new, delimiter=",")

    def here(*args):
        return run_here(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)

    def converted():
        return zarr.open_array(str(tmp_path / "run.input.zarr"), mode="r")[:]

    ok(here("fit", "old.csv", "-k", "2", "-o", "run.zarr", "--max-iter", "3"))
    np.testing.assert_array_equal(converted(), old)
    # Fails after new.npy was converted (the rank is checked against its shape).
    failed = here("fit", "new.csv", "-k", "40", "--init", "nndsvd", "-o", "run.zarr",
                  "--overwrite")
    assert_user_error(failed, USAGE, r"init='nndsvd' can only be used .* 50 × 30")
    # The old run is kept, and so is the input it reads: it can still be resumed.
    np.testing.assert_array_equal(converted(), old)
    ok(here("resume", "run.zarr", "--max-iter", "6"))
    assert dnmf.open_run(str(tmp_path / "run.zarr")).iteration == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "new.csv", "old.csv", "run.input.zarr", "run.zarr"]
    # A new fit that commits replaces both.
    ok(here("fit", "new.csv", "-k", "2", "-o", "run.zarr", "--overwrite", "--max-iter", "3"))
    np.testing.assert_array_equal(converted(), new)
    assert dnmf.open_run(str(tmp_path / "run.zarr")).W.shape == (50, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "new.csv", "old.csv", "run.input.zarr", "run.zarr"]


def _doc_commands(path: Path, section: str) -> list[list[str]]:
    text = path.read_text()
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, flags=re.S)
    assert block is not None
    return [shlex.split(line)[1:] for line in block.group(1).splitlines()
            if line.startswith("dnmf ")]


@pytest.mark.slow
@pytest.mark.heavy  # suite time; test_readme_commands_run_as_written stays
def test_cli_guide_first_session_runs_as_written(tmp_path):
    commands = _doc_commands(ROOT / "docs" / "cli.md", "## A first session")
    assert commands[0] == ["demo"] and len(commands) >= 5
    for args in commands:
        ok(run_dnmf(*args, cwd=tmp_path))
    assert (tmp_path / "parts.png").exists() and (tmp_path / "factors" / "W.npy").exists()
    assert zarr.open_array(str(tmp_path / "W-again.zarr")).shape == (256, 17)


@pytest.mark.slow
@pytest.mark.heavy  # suite time; the dashboard-link test stays
def test_fit_on_a_local_cluster_prints_the_dashboard(tmp_path):
    convert(_save(tmp_path / "v.npy", planted(200, 30, 3, seed=5)[0]), tmp_path / "v.zarr")
    proc = ok(run_dnmf("fit", "v.zarr", "-k", "3", "--out", "run.zarr", "--max-iter", "15",
                       "--scheduler", "local:2", cwd=tmp_path))
    assert "started a local Dask cluster of 2 worker processes; dashboard: http" in proc.stderr
    assert "Dask dashboard: http" in proc.stderr
    assert "--scheduler local:2" in proc.stdout or "converged" in proc.stdout
    assert dnmf.open_run(str(tmp_path / "run.zarr")).complete


@pytest.mark.slow
def test_the_printed_dashboard_link_serves_the_dashboard_during_the_fit(tmp_path):
    pytest.importorskip("bokeh")
    import urllib.request

    # Noisy data: the loss stays well above rounding, so "--tol 0" never stops the fit.
    convert(_save(tmp_path / "v.npy", planted(400, 40, 3, seed=6, noise=0.05)[0]),
            tmp_path / "v.zarr")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnmf", "fit", "v.zarr", "-k", "3", "--out", "run.zarr",
         "--max-iter", "100000", "--tol", "0", "--scheduler", "local:2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            found = re.search(r"dashboard: (http\S+)", line)
            if found:
                break
        assert found, "".join(seen)
        assert "not served" not in line
        with urllib.request.urlopen(found.group(1), timeout=30) as page:
            assert page.status == 200
            assert b"Dask" in page.read()
        assert proc.poll() is None  # the fit was still running
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in rest, rest
    assert "resume" in rest


@pytest.mark.slow
def test_fit_and_resume_on_a_running_scheduler(tmp_path, distributed_client):
    convert(_save(tmp_path / "v.npy", planted(200, 30, 3, seed=6)[0]), tmp_path / "v.zarr")
    address = distributed_client.scheduler.address
    ok(run_dnmf("fit", "v.zarr", "-k", "3", "--out", "run.zarr", "--max-iter", "5",
                "--tol", "0", "--scheduler", address, cwd=tmp_path))
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": address}))
    proc = ok(run_dnmf("resume", "run.zarr", "--max-iter", "8", "--scheduler-file",
                       str(scheduler_file), cwd=tmp_path))
    assert "fit: iteration 8/8" in proc.stderr
    assert dnmf.open_run(str(tmp_path / "run.zarr")).iteration == 8


# ------------------------------------------------ issue 16: concurrency and debris
def test_two_fits_of_one_run_started_together_one_is_refused_and_the_other_is_right(tmp_path):
    """Both used to convert; the loser of the lock then deleted RUN.input.zarr while
    the winner read it: exit 0, "converged", loss 9e-56. Now the run's lock is taken
    before the conversion: the second is refused at once with one line."""
    rng = np.random.default_rng(0)
    # CSV, converted under the lock (a .npy is read in place: nothing to convert)
    np.savetxt(tmp_path / "V.csv", rng.random((3000, 6)) @ rng.random((6, 200)),
               delimiter=",")
    args = ["fit", "V.csv", "--rank", "6", "--seed", "3", "--max-iter", "30", "--tol", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "dnmf", *args, "--out",
                                       "run.zarr"], cwd=tmp_path, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(0.3)
    results = [(p.wait(timeout=TIMEOUT), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1 and "is being written by another process" in lines[0], loser
    solo = run_dnmf(*args, "--out", "solo.zarr", cwd=tmp_path)
    assert solo.returncode == 0, solo.stderr
    got = dnmf.open_run(str(tmp_path / "run.zarr"))
    want = dnmf.open_run(str(tmp_path / "solo.zarr"))
    assert got.loss_history == want.loss_history and got.loss_history[-1] > 1.0
    np.testing.assert_array_equal(got.H, want.H)


@pytest.mark.heavy
def test_info_puts_back_the_run_of_a_killed_fit_overwrite_and_says_so(tmp_path):
    np.save(tmp_path / "a.npy", planted(200, 20, 3, seed=0)[0])
    np.save(tmp_path / "b.npy", planted(200, 20, 3, seed=1)[0])
    done = run_dnmf("fit", "a.npy", "--rank", "3", "--out", "run.zarr", "--max-iter", "4",
                    "--seed", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    marker = tmp_path / "paused"
    env = {**os.environ, "DNMF_TEST_PAUSE_AT": "sink@0", "DNMF_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "dnmf", "fit", "b.npy", "--rank", "3",
                             "--out", "run.zarr", "--overwrite"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (tmp_path / "run.zarr" / "manifest.json").exists()  # the new run, hidden old
    info = run_dnmf("info", "run.zarr", "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert (f"put back the run at {tmp_path / 'run.zarr'}: 'dnmf fit --overwrite' (process "
            f"{proc.pid}, which is gone) was stopped before its new run committed") in info.stderr
    assert json.loads(info.stdout)["iteration"] == 4
    assert not [p for p in os.listdir(tmp_path) if ".replaced-" in p]


@pytest.mark.heavy
def test_an_unreachable_object_store_is_one_clear_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("s3fs")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    done = run_here("info", "s3://dnmf-nowhere/run", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    reach = (rf"cannot reach the object store at http://127\.0\.0\.1:{port} for "
             rf"s3://dnmf-nowhere/{{}}: Connection refused\. Check the endpoint")
    assert_user_error(done, 1, reach.format("run"))
    np.save(tmp_path / "V.npy", np.ones((4, 3)))
    done = run_here("fit", "s3://dnmf-nowhere/V.zarr", "--rank", "1", "--out", "r.zarr",
                    cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_user_error(done, 1, reach.format(r"V\.zarr"))


def test_an_unawaited_zarr_coroutine_is_not_shown_but_other_warnings_are(capsys):
    # A Ctrl-C between zarr creating a read coroutine and awaiting it leaves the
    # coroutine to be collected with RuntimeWarning "... was never awaited": zarr's
    # internals, not the user's business (it once ended the interrupt message).
    from dnmf.cli import _dispatch

    _dispatch._show_warning("coroutine 'AsyncArray._get_selection' was never awaited",
                            RuntimeWarning, "x.py", 1)
    _dispatch._show_warning("overflow encountered in multiply", RuntimeWarning, "x.py", 1)
    _dispatch._show_warning("rank 9 is above min(n, m)", UserWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err == ("warning: overflow encountered in multiply\n"
                   "warning: rank 9 is above min(n, m)\n")


def test_tornado_application_log_is_quiet_once_distributed_is_imported():
    # distributed sets "tornado.application" to ERROR when imported; a Ctrl-C landing in
    # distributed's sync() before its future exists then logs a NameError traceback
    # there (seen in CI after "interrupted before the first checkpoint").
    code = ("from dnmf.cli import _dispatch; _dispatch._quiet_logs(False)\n"
            "import distributed, logging\n"
            "print(logging.getLogger('tornado.application').getEffectiveLevel())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=TIMEOUT, check=True).stdout
    import logging

    assert int(out.split()[-1]) > logging.ERROR
