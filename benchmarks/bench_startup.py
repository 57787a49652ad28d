"""Start-up cost of ``import dnmf`` and ``dnmf --help``, against the bare interpreter.

Issue 13's target: ``import dnmf`` and ``dnmf --help`` each under 0.3 s. Each command
runs in a fresh interpreter, from an empty temporary directory (so the installed
package is what is measured, not a checkout in the working directory), rounds
interleaving the commands; per command the best and the median of ``--repeats`` runs
are reported, as CPU seconds (user + system of the child: on a shared machine wall
time also measures the queue for a core) and as wall seconds, with the load average.

* ``python -c pass``: the interpreter alone, the floor every command pays;
* ``import dnmf``: the package's import (plus its own cumulative time from
  ``-X importtime``, which excludes the interpreter's start);
* ``dnmf --help``, ``dnmf fit --help``: the command line's help (Typer builds every
  command's options from their annotations);
* ``import sklearn.decomposition``: a peer, what importing scikit-learn's NMF costs.

The test suite checks the exact part (which packages each of these loads,
tests/test_startup.py); the seconds are measured here, not in timed tests.

Usage::

    python benchmarks/bench_startup.py                 # 15 rounds
    python benchmarks/bench_startup.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TARGET = 0.3

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import dnmf": ["-c", "import dnmf"],
    "dnmf --help": ["-m", "dnmf", "--help"],
    "dnmf fit --help": ["-m", "dnmf", "fit", "--help"],
    "import sklearn.decomposition": ["-c", "import sklearn.decomposition"],
}


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def one(args: list[str], cwd: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``python ARGS`` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def import_time(cwd: str) -> float:
    """``import dnmf``'s own cumulative seconds from ``-X importtime``."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import dnmf"], cwd=cwd,
                         capture_output=True, text=True, check=True)
    line = [r for r in out.stderr.splitlines() if r.rstrip().endswith("| dnmf")][-1]
    return int(line.split("|")[1]) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 5)

    names = list(COMMANDS)
    try:
        __import__("sklearn")
    except ImportError:
        names.remove("import sklearn.decomposition")
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    own: list[float] = []
    loads = [load()]
    with tempfile.TemporaryDirectory() as cwd:
        for name in names:  # warm the file cache (and .pyc where they are written)
            one(COMMANDS[name], cwd)
        for _ in range(args.repeats):
            for name in names:
                c, w = one(COMMANDS[name], cwd)
                cpu[name].append(c)
                wall[name].append(w)
            own.append(import_time(cwd))
            loads.append(load())

    floor = min(cpu["python -c pass"])
    results: dict[str, Any] = {}
    print(f"{args.repeats} rounds, load {min(loads):.2f}-{max(loads):.2f}; "
          f"Python {sys.version.split()[0]}; target < {TARGET} s")
    print(f"{'command':30} {'CPU best':>9} {'CPU median':>11} {'wall best':>10} "
          f"{'wall median':>12} {'CPU - interpreter':>18}")
    for name in names:
        r = {"cpu_best": min(cpu[name]), "cpu_median": statistics.median(cpu[name]),
             "wall_best": min(wall[name]), "wall_median": statistics.median(wall[name])}
        r["cpu_over_interpreter"] = r["cpu_best"] - floor
        results[name] = r
        print(f"{name:30} {r['cpu_best']:9.3f} {r['cpu_median']:11.3f} {r['wall_best']:10.3f} "
              f"{r['wall_median']:12.3f} {r['cpu_over_interpreter']:18.3f}")
    print(f"import dnmf, own cumulative time (-X importtime): best {min(own):.4f} s, "
          f"median {statistics.median(own):.4f} s")
    met = {name: results[name]["cpu_median"] < TARGET for name in ("import dnmf", "dnmf --help")}
    for name, ok in met.items():
        print(f"{name}: median CPU {results[name]['cpu_median']:.3f} s, target < {TARGET} s "
              f"{'met' if ok else 'NOT met'}")
    table = "\n".join(
        [f"{args.repeats} rounds, load {min(loads):.2f}-{max(loads):.2f}; seconds of CPU "
         "(user + system) per command in a new interpreter; target < 0.3 s (median).", "",
         "| command | CPU best | CPU median | wall median | CPU over the interpreter |",
         "|---|---:|---:|---:|---:|"]
        + [f"| {n} | {r['cpu_best']:.3f} | {r['cpu_median']:.3f} | {r['wall_median']:.3f} "
           f"| {r['cpu_over_interpreter']:.3f} |" for n, r in results.items()])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": table, "repeats": args.repeats, "load": [min(loads), max(loads)],
                       "results": results, "import_own_best": min(own),
                       "import_own_median": statistics.median(own), "target": TARGET,
                       "target_met": met}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
