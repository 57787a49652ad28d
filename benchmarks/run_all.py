"""Run every benchmark in benchmarks/ and write one report a user can rerun.

Discovers ``benchmarks/bench_*.py`` and runs each in its own subprocess (with a
timeout), passing ``--json FILE`` (and ``--quick`` with ``--quick``) when the
script's argparse accepts it. Then writes, under ``--out``:

* ``REPORT.md``: the machine (CPU model, cores, memory, BLAS, versions) and one
  Markdown table per benchmark, with the ratios measured in this same run;
* ``time_to_loss.png``: loss against wall time for dnmf's solvers and
  scikit-learn's, from bench_vs_sklearn's curves;
* ``<bench>.json`` and ``<bench>.log``: each benchmark's raw results and output.

Usage::

    python benchmarks/run_all.py                 # full sizes (tens of minutes)
    python benchmarks/run_all.py --quick         # small sizes, a few minutes
    python benchmarks/run_all.py --smoke         # tiny sizes, for tests; timings meaningless
    python benchmarks/run_all.py --only vs_sklearn,out_of_core --out /tmp/results

Timings depend on other load on the machine: run it on an otherwise idle machine
(the report records the load average before and after each benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Tiny sizes for --smoke (per benchmark; only the flags a script accepts are passed).
SMOKE_ARGS: dict[str, list[str]] = {
    "vs_sklearn": ["--n", "300", "--m", "40", "--k", "4"],
    "out_of_core": ["--gib", "0.002", "--cols", "100", "--chunk-mib", "0.25", "--iters", "2",
                    "--rounds", "1", "--skip", "dask-fused"],
    "sizes": ["--sizes", "60x30", "--repeats", "1", "--max-iter", "400"],
    "startup": ["--repeats", "2"],
    "kl_extrapolation": ["--sizes", "60x30", "--max-iter", "50"],
    "cluster_scaling": ["--n", "400", "--m", "40", "--k", "4", "--panel-rows", "100",
                        "--iters", "4", "--rounds", "1"],
}


# ------------------------------------------------------------------ discovery
def discover(only: list[str] | None = None) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if name_of(s) in only]
    return scripts


def name_of(script: Path) -> str:
    return script.stem.removeprefix("bench_")


def options_of(script: Path) -> set[str]:
    """The long options a script's argparse declares (read from its source)."""
    text = script.read_text()
    return set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)[\"']", text))


def command(script: Path, json_out: Path, quick: bool, smoke: bool,
            scratch: Path) -> list[str]:
    opts = options_of(script)
    cmd = [sys.executable, str(script)]
    if smoke and name_of(script) in SMOKE_ARGS:
        args = SMOKE_ARGS[name_of(script)]
        i = 0
        while i < len(args):  # keep "--flag value" pairs the script accepts
            flag = args[i]
            value = [args[i + 1]] if i + 1 < len(args) and not args[i + 1].startswith("--") else []
            if flag in opts:
                cmd += [flag, *value]
            i += 1 + len(value)
    elif (quick or smoke) and "--quick" in opts:
        cmd.append("--quick")
    if smoke and "--data-dir" in opts:
        cmd += ["--data-dir", str(scratch)]
    if "--json" in opts:
        cmd += ["--json", str(json_out)]
    return cmd


def run(cmd: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run one benchmark in its own process group; on timeout, SIGINT (so its
    ``finally`` blocks stop clusters it started), then SIGKILL after 30 s."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    load_before = _load()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=HERE.parent, start_new_session=True)
        status = "ok"
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = "timeout"
            _signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        except KeyboardInterrupt:
            _signal_group(proc.pid, signal.SIGINT)
            proc.wait()
            raise
    if status == "ok" and proc.returncode != 0:
        status = f"failed (exit code {proc.returncode})"
    return {"status": status, "seconds": time.perf_counter() - start,
            "load_before": load_before, "load_after": _load(), "command": cmd}


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# -------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    import dask
    import numpy
    import zarr

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cores_usable"] = os.cpu_count()
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        info["memory_bytes"] = None
    info["platform"] = platform.platform()
    versions = {"python": sys.version.split()[0], "numpy": numpy.__version__,
                "dask": dask.__version__, "zarr": zarr.__version__}
    for mod, key in (("distributed", "distributed"), ("sklearn", "scikit-learn"),
                     ("scipy", "scipy"), ("dnmf", "dnmf")):
        try:
            versions[key] = __import__(mod).__version__
        except ImportError:
            versions[key] = "not installed"
    info["versions"] = versions
    try:
        from threadpoolctl import threadpool_info

        numpy.ones((2, 2)) @ numpy.ones((2, 2))  # make sure BLAS is loaded
        info["blas"] = [
            f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')}, "
            f"{b.get('num_threads')} threads, {b.get('threading_layer')})"
            for b in threadpool_info() if b.get("user_api") == "blas"
        ]
    except ImportError:
        info["blas"] = ["unknown (threadpoolctl not installed)"]
    return info


# -------------------------------------------------------------------- report
def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def section_vs_sklearn(data: dict[str, Any]) -> list[str]:
    d = data["data"]
    lines = [f"V: {d['n']} × {d['m']} float64 (planted rank {d['k']} + noise {d['noise']}), "
             f"k = {d['k']}; best of {data.get('repeats', 1)} run(s). dnmf's solvers run "
             "until they reach the loss scikit-learn's matching solver ends at after 200 "
             "iterations; a ratio < 1 means dnmf is faster.", "", data["table"], ""]
    hals = data["runs"].get("dnmf hals")
    if hals is not None:
        lines.append(f"**dnmf hals / scikit-learn cd time: {hals['ratio']:.3f}** "
                     f"(target ≤ 0.5: {'met' if data.get('target_met') else 'not met'}).")
    return lines


def section_out_of_core(data: dict[str, Any]) -> list[str]:
    v = data["V"]
    res = data["results"]
    ours = res["dnmf"]

    def wall(t: Any) -> float:  # times are [wall, cpu] pairs, or wall seconds
        return t[0] if isinstance(t, list) else t

    def cpu(r: dict[str, Any]) -> float | None:
        return r.get("cpu_per_iter")

    lines = [f"V: {v['n']} × {v['m']} float32 on disk ({v['bytes'] / 2**20:.0f} MiB, Zarr, "
             f"panels of {v['chunk_rows']} rows), k = {data['args']['k']}; each variant in its "
             "own process; per iteration = median over all rounds' iterations. CPU seconds "
             "(all threads of the process) are less affected by other load than wall time.",
             "",
             "| variant | wall s / iter | fastest | wall / dnmf | CPU s / iter | CPU / dnmf "
             "| peak RSS MiB | peak RSS / V |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, r in res.items():
        c, c0 = cpu(r), cpu(ours)
        lines.append(
            f"| {variant} | {r['per_iter']:.3f} | {min(wall(t) for t in r['times']):.3f} "
            f"| {r['per_iter'] / ours['per_iter']:.2f} | {_fmt(c)} "
            f"| {_fmt(c / c0, '.2f') if c is not None and c0 else ''} "
            f"| {r['peak'] / 2**20:.0f} | {r['peak'] / v['bytes']:.2f} |")
    lines.append("")
    parts = []
    if "floor" in res:
        parts.append(f"dnmf / one-pass floor = **{ours['per_iter'] / res['floor']['per_iter']:.2f}"
                     "** wall (target ≤ 1.25)")
    if "dask" in res:
        parts.append(f"dask.array MU / dnmf = **{res['dask']['per_iter'] / ours['per_iter']:.2f}"
                     "** wall (target ≥ 1.5)")
    parts.append(f"dnmf peak RSS / V = **{ours['peak'] / v['bytes']:.2f}** (the target, "
                 "≤ 1 GiB at V = 4 GiB, is 0.25)")
    lines.append("; ".join(parts) + ".")
    return lines


def section_cluster_scaling(data: dict[str, Any]) -> list[str]:
    a = data["args"]
    rounds = len(data.get("round_speedups", [])) or 1
    lines = [f"V: {a['n']} × {a['m']} float64 (Zarr, cached on the workers), k = {a['k']}, "
             f"panels of {a['panel_rows']} rows, {a['iters']} HALS iterations, on a local "
             f"cluster of 1 then 2 worker processes × 1 thread; medians of {rounds} round(s).",
             "", "| workers | s / iteration | panel compute s / iter | ideal s | busiest worker s "
             "| H-step s | scheduler overhead s | overhead |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(f"| {r['workers']} | {r['iteration_seconds']:.3f} "
                     f"| {r['panel_compute_seconds_per_iteration']:.3f} "
                     f"| {r['ideal_parallel_seconds']:.3f} "
                     f"| {r.get('busiest_worker_seconds', float('nan')):.3f} "
                     f"| {r.get('hstep_seconds', float('nan')):.3f} "
                     f"| {r['overhead_seconds']:.3f} | {r['overhead_fraction']:.1%} |")
    lines += ["", f"**Speedup of 2 workers over 1: {data['speedup']:.2f}×** (target ≥ 1.7×)."]
    if data.get("round_speedups"):
        lines[-1] += " Per round: " + ", ".join(f"{x:.2f}×" for x in data["round_speedups"]) + "."
    if data.get("fit_speedups"):
        lines += ["", "Whole fit (reading V into the workers, the start and every iteration): "
                      "speedup " + ", ".join(f"{x:.2f}×" for x in data["fit_speedups"])
                  + " (per round)."]
    ceiling = data.get("ceiling")
    if ceiling:
        lines += ["", f"Machine ceiling, the peer in this run (the measured passes' HALS panel "
                      f"updates in 1 vs 2 plain processes, no Dask): "
                      f"{ceiling['one_process_seconds']:.3f} s vs "
                      f"{ceiling['two_processes_seconds']:.3f} s per pass = "
                      f"{ceiling['speedup']:.2f}×; **dnmf / ceiling = "
                      f"{data['speedup_over_ceiling']:.2f}**."]
    return lines


def section_generic(data: Any) -> list[str]:
    if isinstance(data, dict) and isinstance(data.get("table"), str):
        return [data["table"]]
    rows = ["| key | value |", "|---|---|"]
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                rows.append(f"| {key} | {_fmt(value, '.4g')} |")
    return rows


SECTIONS = {"vs_sklearn": section_vs_sklearn, "out_of_core": section_out_of_core,
            "cluster_scaling": section_cluster_scaling}


def report(mach: dict[str, Any], runs: dict[str, dict[str, Any]], mode: str,
           png: Path | None) -> str:
    mem = mach.get("memory_bytes")
    lines = ["# dnmf benchmark report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by "
             f"`python benchmarks/run_all.py{'' if mode == 'full' else ' --' + mode}` "
             f"({mode} sizes). Every figure and ratio below comes from this one run.", ""]
    if mode == "smoke":
        lines += ["> **Smoke mode:** tiny sizes to check the pipeline; the timings and ratios "
                  "are meaningless.", ""]
    lines += ["## Machine", "",
              f"* CPU: {mach['cpu']}; {mach['cores']} cores ({mach['cores_usable']} usable)",
              f"* memory: {mem / 2**30:.1f} GiB" if mem else "* memory: unknown",
              f"* platform: {mach['platform']}",
              "* BLAS: " + ("; ".join(mach["blas"]) or "none found"),
              "* versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
              ""]
    lines += ["| benchmark | status | wall s | load avg before → after |",
              "|---|---|---:|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.1f} "
                     f"| {r['load_before']:.2f} → {r['load_after']:.2f} |")
    busy = max(max(r["load_before"], r["load_after"]) for r in runs.values()) if runs else 0
    if busy > 0.5 * (mach["cores"] or 1):
        lines += ["", f"Note: the machine was busy (load average up to {busy:.1f} on "
                  f"{mach['cores']} cores) — other processes compete for the cores, so "
                  "the timings are noisy; rerun on an idle machine for firm numbers."]
    lines.append("")
    for name, r in runs.items():
        lines += [f"## {name} (`benchmarks/bench_{name}.py`)", "",
                  "Command: `" + " ".join(_short(c) for c in r["command"]) + "`", ""]
        if r.get("data") is None:
            lines += [f"No results ({r['status']}); see `{name}.log`.", ""]
            continue
        try:
            lines += SECTIONS.get(name, section_generic)(r["data"])
        except (KeyError, TypeError, ZeroDivisionError) as exc:
            lines += [f"(could not tabulate {name}.json: {exc!r})"]
        if name == "vs_sklearn" and png is not None:
            lines += ["", f"![time to loss]({png.name})"]
        lines.append("")
    return "\n".join(lines)


def _short(arg: str) -> str:
    """Paths relative to the repository, for a readable command line."""
    if arg == sys.executable:
        return "python"
    try:
        return str(Path(arg).resolve().relative_to(HERE.parent))
    except ValueError:
        return arg


def plot_time_to_loss(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = data.get("curves", {})
    groups = [("Frobenius: sklearn cd vs dnmf hals, als",
               ("sklearn cd", "dnmf hals", "dnmf als")),
              ("Frobenius: sklearn mu vs dnmf mu", ("sklearn mu", "dnmf mu"))]
    groups = [(t, [n for n in names if curves.get(n, {}).get("time")]) for t, names in groups]
    groups = [(t, names) for t, names in groups if names]
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, (title, names) in zip(axes[0], groups):
        for name in names:
            c = curves[name]
            style = "-" if name.startswith("dnmf") else "--"
            ax.plot(c["time"], c["loss"], style, label=name, marker=".", markersize=2)
        ax.set_yscale("log")
        ax.set_xlabel("wall time since fit start (s)")
        ax.set_ylabel("loss ½‖V − WH‖²")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    d = data["data"]
    fig.suptitle(f"time to loss: V {d['n']} × {d['m']}, k = {d['k']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="each benchmark's --quick size")
    size.add_argument("--smoke", action="store_true",
                      help="tiny sizes that only check the pipeline (tests)")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory")
    parser.add_argument("--only", default="",
                        help="comma-separated benchmarks to run (e.g. vs_sklearn,out_of_core)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per benchmark (default 3600; 900 with --quick, "
                             "300 with --smoke)")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    timeout = args.timeout or {"full": 3600.0, "quick": 900.0, "smoke": 300.0}[mode]
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    scripts = discover(only)
    if not scripts:
        parser.error(f"no benchmark matches --only {args.only!r}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    mach = machine()
    print(f"machine: {mach['cpu']}, {mach['cores']} cores; running {len(scripts)} "
          f"benchmark(s) ({mode} sizes) into {out}", flush=True)
    runs: dict[str, dict[str, Any]] = {}
    for script in scripts:
        name = name_of(script)
        json_out = out / f"{name}.json"
        json_out.unlink(missing_ok=True)
        scratch = out / f"scratch-{name}"
        cmd = command(script, json_out, args.quick, args.smoke, scratch)
        print(f"[{name}] {' '.join(_short(c) for c in cmd)}", flush=True)
        r = run(cmd, out / f"{name}.log", timeout)
        shutil.rmtree(scratch, ignore_errors=True)
        r["data"] = None
        if json_out.exists():
            try:
                r["data"] = json.loads(json_out.read_text())
            except ValueError as exc:
                r["status"] += f"; unreadable JSON ({exc})"
        elif r["status"] == "ok":
            r["status"] = "ok, but no JSON (the script has no --json option)"
        print(f"[{name}] {r['status']} in {r['seconds']:.1f} s (log: {out / (name + '.log')})",
              flush=True)
        runs[name] = r

    png: Path | None = None
    sk = runs.get("vs_sklearn", {}).get("data")
    if sk:
        png = out / "time_to_loss.png"
        png.unlink(missing_ok=True)
        try:
            plot_time_to_loss(sk, png)
        except ImportError:
            print("matplotlib is not installed: no time_to_loss.png", file=sys.stderr)
        if not png.exists():
            png = None
    text = report(mach, runs, mode, png)
    (out / "REPORT.md").write_text(text + "\n")
    print(f"wrote {out / 'REPORT.md'}" + (f" and {png}" if png else ""))
    return 0 if all(r["status"] == "ok" for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
