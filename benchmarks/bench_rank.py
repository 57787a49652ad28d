"""Rank sweeps: concurrent fits vs the same fits one by one; 2 workers vs 1 (issue 14).

A sweep k = KS × R replicates on a Zarr V on disk (planted rank 8 plus noise) runs
as ``dnmf.select_rank``. Measured, interleaved round by round (a shared machine
drifts from minute to minute):

* **one by one**: the sweep's fits as a plain loop of ``NMF(...).fit`` calls on the
  threads scheduler (what a user would write without select_rank), same seeds,
  same holdout sets;
* **sweep, in memory**: ``select_rank(out=None)``, fits run concurrently (one per
  core, each with cores // concurrent threads), sharing each decoded panel of V
  through the sweep's panel cache (``panel_cache="auto"``);
* **sweep, no cache**: the same with ``panel_cache=0``: every fit decodes every
  panel on every pass (what the cache saves);
* **sweep, small cache**: ``panel_cache=`` a quarter of V's bytes (V larger than
  the budget: how the cache degrades);
* **sweep, sweep store**: ``select_rank(out=DIR)``: the same, every fit resumable
  from its own run store (W written every pass, commits every 10 iterations);
* **1-worker / 2-worker local cluster**: ``select_rank(scheduler=client)`` on a
  ``distributed.LocalCluster`` of 1 and 2 worker processes of 1 thread each.

Ratios: sweep / one by one (issue target <= 1.0), sweep / sweep without the cache,
and 2 workers / 1 worker (target <= 0.6). The configurations of a round run in turn,
in reverse order every other round. Every figure is printed with the load average
(``os.getloadavg``) taken next to it, and before the 2-worker cluster a probe of the
machine: how much slower two single-threaded jobs run at once than one alone (what a
second worker can gain now). A comparison per stored entry and iteration with
RcppML's published CPU timings is printed at the end (docs/rank.md says what is
compared).

Usage::

    python benchmarks/bench_rank.py                    # 20000 x 1000, ks 2..20 x 3
    python benchmarks/bench_rank.py --n 200000 --m 2000   # the issue's size (slow)
    # the issue's size, a bounded subset (3 fits of 2 iterations, V written once and kept):
    python benchmarks/bench_rank.py --n 200000 --m 2000 --dtype float32 --ks 2:20:9 \
        --replicates 1 --iters 2 --skip nocache,small,store --data-dir /tmp/dnmf-rank-V
    python benchmarks/bench_rank.py --quick            # small, about a minute
    python benchmarks/bench_rank.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: RcppML's published CPU timings (vignettes/gpu-acceleration.Rmd, "Representative
#: benchmarks": dual Intel Xeon Gold, 48 cores, 100 iterations, tol = 0).
RCPPML = [
    {"data": "dense synthetic 10K x 5K", "entries": 10_000 * 5_000, "k": 20, "seconds": 45.0,
     "iterations": 100, "cores": 48},
    {"data": "dense synthetic 10K x 5K", "entries": 10_000 * 5_000, "k": 50,
     "seconds": 120.0, "iterations": 100, "cores": 48},
    {"data": "sparse 50K x 10K (2 %)", "entries": int(50_000 * 10_000 * 0.02), "k": 20,
     "seconds": 38.0, "iterations": 100, "cores": 48},
    {"data": "single-cell RNA-seq 30K x 20K (5 %)", "entries": int(30_000 * 20_000 * 0.05),
     "k": 30, "seconds": 185.0, "iterations": 100, "cores": 48},
]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def open_loadavg() -> str:
    """/proc/loadavg as it reads (1, 5, 15 minutes; runnable/total), or the 3 averages."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_data(path: Path, n: int, m: int, k: int, chunk_rows: int,
              dtype: str = "float64") -> str:
    """Write V (planted rank k plus noise) as a Zarr array, or reuse the one at ``path``
    when it has this shape, chunking and dtype (``--data-dir``: written once, kept)."""
    import zarr

    if path.exists():
        try:
            z = zarr.open_array(str(path), mode="r")
            if (z.shape == (n, m) and z.chunks == (chunk_rows, m)
                    and z.dtype == np.dtype(dtype)):
                return str(path)
        except Exception:  # anything else there is rewritten
            pass
        shutil.rmtree(path)
    rng = np.random.default_rng(0)
    W = rng.random((n, k)) * (rng.random((n, k)) < 0.5)
    H = rng.random((k, m)) * (rng.random((k, m)) < 0.5)
    z = zarr.create_array(str(path), shape=(n, m), chunks=(chunk_rows, m), dtype=dtype)
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        block = W[start:stop] @ H
        z[start:stop] = (block + 0.05 * np.abs(rng.standard_normal(block.shape))).astype(dtype)
    return str(path)


def one_by_one(path: str, ks: list[int], replicates: int, method: str,
               params: dict[str, Any]) -> tuple[float, list[float]]:
    """The sweep's fits in a plain loop, same seeds and holdouts as select_rank."""
    import dnmf
    from dnmf._rank import holdout_seed
    from dnmf._sweep import replicate_seed

    errors = []
    start = time.perf_counter()
    for k in ks:
        for r in range(replicates):
            est = dnmf.NMF(k, random_state=replicate_seed(0, k, r), scheduler="threads",
                           init="random", **params)
            if method == "cv":
                est.fit(path, mask=dnmf.SpeckledHoldout(0.05, seed=holdout_seed(0, r)))
                errors.append(est.heldout_loss_ / est.n_heldout_)
            else:
                est.fit(path)
                errors.append(est.loss_history_[-1])
    return time.perf_counter() - start, errors


#: The panel cache's counters of the last sweep (None: no cache was used).
LAST_CACHE: dict[str, Any] = {}


def sweep(path: str, ks: list[int], replicates: int, method: str, params: dict[str, Any],
          **options: Any) -> tuple[float, list[float], int]:
    import dnmf

    start = time.perf_counter()
    res = dnmf.select_rank(path, ks, method=method, n_replicates=replicates, **params,
                           **options)
    seconds = time.perf_counter() - start
    LAST_CACHE["stats"] = res.panel_cache
    column = "test_error" if method == "cv" else "loss"
    return seconds, [row[column] for row in res.rows], res.k


def on_cluster(path: str, ks: list[int], replicates: int, method: str,
               params: dict[str, Any], workers: int) -> tuple[float, list[float], int]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        return sweep(path, ks, replicates, method, params, scheduler=client)


#: A fixed single-threaded job (NumPy products of NMF's shapes), for :func:`capacity`.
PROBE = ("import numpy as np, time; a = np.random.default_rng(0).random((5000, 1000)); "
         "b = np.random.default_rng(1).random((1000, 8)); t = time.perf_counter(); "
         "[a @ b for _ in range(40)]; [a.T @ (a @ b) for _ in range(20)]; "
         "print(time.perf_counter() - t)")


def capacity(processes: int = 2) -> float:
    """How much slower each of ``processes`` single-threaded jobs run at once than one
    alone: 1.0 means that many cores are free, ``processes`` that none is spare. It
    bounds what the 2-worker cluster can gain on this machine at this moment."""
    import subprocess

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}

    def run(n: int) -> list[float]:
        children = [subprocess.Popen([sys.executable, "-c", PROBE], env=env, text=True,
                                     stdout=subprocess.PIPE) for _ in range(n)]
        return [float(c.communicate()[0]) for c in children]

    alone = run(1)[0]
    return max(run(processes)) / alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--ks", default="2:20")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="max_iter of every fit")
    parser.add_argument("--method", default="cv", choices=["cv", "consensus"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip", default="",
                        help="comma list of: onebyone,memory,nocache,small,store,cluster")
    parser.add_argument("--workers", default="1,2",
                        help="cluster sizes to run (comma list), 1 thread each")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="V's dtype on disk (the issue's 200000 x 2000: float32, 1.6 GB)")
    parser.add_argument("--chunk-rows", type=int, default=5000,
                        help="rows per Zarr chunk (and panel)")
    parser.add_argument("--data-dir", default=None,
                        help="where V is written and kept (reused by the next run with "
                             "the same --n --m --dtype --chunk-rows); default: a temporary "
                             "directory removed at the end")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.m, args.ks, args.iters = 2000, 200, "2:6", 5
    from dnmf.cli.rank import parse_ks

    ks = parse_ks(args.ks)
    skip = set(filter(None, args.skip.split(",")))
    warnings.simplefilter("ignore")
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="dnmf-bench-rank-"))
    base.mkdir(parents=True, exist_ok=True)
    written = time.perf_counter()
    data = make_data(base / "V.zarr", args.n, args.m, 8, max(1, min(args.n, args.chunk_rows)),
                     args.dtype)
    written = time.perf_counter() - written
    params = {"max_iter": args.iters, "tol": 0.0}
    fits = len(ks) * args.replicates
    print(f"V: {args.n} x {args.m} {args.dtype} Zarr (planted k = 8, chunks of "
          f"{args.chunk_rows} rows; {written:.0f} s to write or find), ks {ks} x "
          f"{args.replicates} replicates = {fits} fits of {args.iters} iterations, method "
          f"{args.method}; {os.cpu_count()} cores; load {open_loadavg()}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, seconds: float, load_before: float, values: list[float],
               cache: dict[str, Any] | None = None) -> None:
        entry = {"seconds": seconds, "load_before": load_before, "load_after": load()}
        if cache:
            entry["panel_cache"] = cache
        results.setdefault(name, []).append(entry)
        extra = (f"   cache: {cache['reads']} reads, {cache['hits']} shared, peak "
                 f"{cache['peak'] / 2**20:.0f} of {cache['budget'] / 2**20:.0f} MiB"
                 if cache else "")
        entry["per_fit_iteration"] = seconds / (fits * args.iters)
        print(f"  {name:24s} {seconds:8.2f} s  ({entry['per_fit_iteration']:.3f} s per "
              f"fit-iteration)   load {entry['load_before']:.1f} -> {entry['load_after']:.1f}"
              f"  [{open_loadavg()}]{extra}", flush=True)
        results.setdefault(name + ":values", []).append(values)

    v_bytes = args.n * args.m * np.dtype(args.dtype).itemsize

    def run_sweep(name: str, **options: Any) -> None:
        before = load()
        seconds, values, _ = sweep(data, ks, args.replicates, args.method, params, **options)
        record(name, seconds, before, values, LAST_CACHE.get("stats"))

    def run_store(round_: int) -> None:
        out = base / f"sweep-{round_}"
        run_sweep("sweep (sweep store)", out=out)
        shutil.rmtree(out, ignore_errors=True)

    def run_one_by_one() -> None:
        before = load()
        seconds, values = one_by_one(data, ks, args.replicates, args.method, params)
        record("one by one", seconds, before, values)

    def run_cluster(workers: int) -> None:
        if workers == 2:
            before = load()
            slower = capacity(2)
            results.setdefault("capacity", []).append(
                {"two_jobs_over_one": slower, "load_before": before, "load_after": load()})
            print(f"  machine: 2 single-threaded jobs at once each take {slower:.2f}x one "
                  f"alone (1.0: 2 free cores)   load {before:.1f}", flush=True)
        before = load()
        seconds, values, _ = on_cluster(data, ks, args.replicates, args.method, params,
                                        workers)
        record(f"cluster {workers} worker(s)", seconds, before, values)

    configs: list[tuple[str, Any]] = [
        ("onebyone", lambda r: run_one_by_one()),
        ("memory", lambda r: run_sweep("sweep (memory)")),
        ("nocache", lambda r: run_sweep("sweep (no cache)", panel_cache=0)),
        ("small", lambda r: run_sweep("sweep (cache V/4)", panel_cache=v_bytes // 4)),
        ("store", run_store),
    ]
    configs += [("cluster", functools.partial(lambda w, r: run_cluster(w), int(w)))
                for w in args.workers.split(",")]
    configs = [(name, run) for name, run in configs if name not in skip]
    try:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}", flush=True)
            for _, run in (configs if round_ % 2 == 0 else configs[::-1]):
                run(round_)
    finally:
        if args.data_dir is None:
            shutil.rmtree(base, ignore_errors=True)

    def median(name: str) -> float:
        return statistics.median(e["seconds"] for e in results[name])

    summary: dict[str, Any] = {
        "n": args.n, "m": args.m, "ks": ks, "replicates": args.replicates,
        "iterations": args.iters, "method": args.method, "rounds": args.rounds,
        "cores": os.cpu_count(), "runs": {k: v for k, v in results.items()
                                          if not k.endswith(":values")},
    }
    if "capacity" in results:
        summary["capacity_two_jobs_over_one"] = statistics.median(
            e["two_jobs_over_one"] for e in results.pop("capacity"))
        summary["runs"].pop("capacity", None)
    values = {name[:-7]: vals[0] for name, vals in results.items()
              if name.endswith(":values")}
    first = next(iter(values.values()))
    same = {name: bool(np.array_equal(vals, first)) for name, vals in values.items()}
    summary["same_values"] = same
    print(f"the same test errors (bit for bit) in every configuration: {same}")

    def ratio(key: str, a: str, b: str) -> None:
        if a in results and b in results:
            summary[key] = median(a) / median(b)
            print(f"{a} / {b}: {summary[key]:.2f}")

    ratio("sweep_over_one_by_one", "sweep (memory)", "one by one")
    ratio("sweep_over_no_cache", "sweep (memory)", "sweep (no cache)")
    ratio("no_cache_over_one_by_one", "sweep (no cache)", "one by one")
    ratio("small_cache_over_no_cache", "sweep (cache V/4)", "sweep (no cache)")
    ratio("store_over_one_by_one", "sweep (sweep store)", "one by one")
    ratio("two_over_one_worker", "cluster 2 worker(s)", "cluster 1 worker(s)")
    # Per stored entry and iteration (and per core), next to RcppML's CPU figures.
    k_mean = float(np.mean(ks))
    if "sweep (memory)" not in results:
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
        return 0
    ours = median("sweep (memory)") / (fits * args.iters * args.n * args.m)
    summary["ns_per_entry_iteration"] = ours * 1e9
    summary["ns_per_entry_iteration_core"] = ours * 1e9 * (os.cpu_count() or 1)
    print(f"dnmf sweep: {ours * 1e9:.2f} ns per stored entry and iteration (mean k "
          f"{k_mean:.1f}, {os.cpu_count()} cores: {summary['ns_per_entry_iteration_core']:.2f} "
          f"core-ns)")
    for row in RCPPML:
        per = row["seconds"] / (row["iterations"] * row["entries"])
        print(f"RcppML CPU, {row['data']}, k = {row['k']}: {per * 1e9:.2f} ns per stored "
              f"entry and iteration ({row['cores']} cores: {per * 1e9 * row['cores']:.1f} "
              f"core-ns)")
    summary["rcppml"] = RCPPML
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
