"""benchmarks/run_all.py runs every benchmark (tiny sizes) and writes the report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("threadpoolctl")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run_all():
    spec = importlib.util.spec_from_file_location("dnmf_bench_run_all", BENCHMARKS / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_writes_json():
    run_all = _run_all()
    scripts = run_all.discover()
    assert {run_all.name_of(s) for s in scripts} >= {"vs_sklearn", "out_of_core",
                                                     "cluster_scaling"}
    for script in scripts:
        opts = run_all.options_of(script)
        assert "--json" in opts, script
        assert "--quick" in opts, script
        cmd = run_all.command(script, Path("o.json"), quick=True, smoke=False,
                              scratch=Path("s"))
        assert cmd[-2:] == ["--json", "o.json"] and "--quick" in cmd
        smoke = run_all.command(script, Path("o.json"), quick=False, smoke=True,
                                scratch=Path("s"))
        # every smoke flag passed is one the script accepts
        assert {a for a in smoke if a.startswith("--")} <= opts


def _check_report(out: Path, names: list[str]) -> str:
    report = (out / "REPORT.md").read_text()
    assert "## Machine" in report
    for word in ("CPU:", "memory:", "BLAS:", "numpy", "dask", "zarr", "scikit-learn"):
        assert word in report
    for name in names:
        assert f"## {name} " in report
        assert (out / f"{name}.json").is_file()
        assert f"| {name} | ok |" in report
    return report


def test_run_all_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    run_all = _run_all()
    names = ["out_of_core", "vs_sklearn"]
    assert run_all.main(["--smoke", "--only", ",".join(names), "--out", str(tmp_path)]) == 0
    report = _check_report(tmp_path, names)
    # the tables, with the ratios of this run
    assert "| solver | library | iterations |" in report
    assert "dnmf hals / scikit-learn cd time:" in report
    assert "| variant | wall s / iter |" in report
    assert "dnmf / one-pass floor =" in report
    assert "![time to loss](time_to_loss.png)" in report
    png = tmp_path / "time_to_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("scratch-*"))  # the smoke data is removed


@pytest.mark.slow
@pytest.mark.heavy  # a real scheduler and workers, ~40 s; test_cluster.py runs by default
def test_run_all_smoke_with_cluster(tmp_path):
    pytest.importorskip("distributed")
    run_all = _run_all()
    assert run_all.main(["--smoke", "--only", "cluster_scaling", "--out", str(tmp_path)]) == 0
    report = _check_report(tmp_path, ["cluster_scaling"])
    assert "| workers | s / iteration |" in report
    assert "Speedup of 2 workers over 1:" in report
