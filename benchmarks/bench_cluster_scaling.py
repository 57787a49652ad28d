"""Scaling of one fit from 1 to 2 worker processes on a real local cluster (issue 4).

The same compute-bound fit (a Zarr V on disk, read once into the workers' memory
with ``cache=True``, so passes are BLAS work, not decompression) runs on a
cluster from cluster/local/start_cluster.py with 1 and then 2 worker processes of
1 thread each. Per configuration it reports:

* per pass (one iteration), from ``client.get_task_stream``, then the median over
  the passes measured: its time (from the end of the previous pass's H-step to
  the end of its own, on the workers' clock; the client's callbacks, also
  reported, give the same within noise); the panel tasks' compute time, and that
  divided by the workers (the ideal parallel time); the busiest worker's panel
  compute (above the ideal when panels take unequal times: imbalance); the H-step
  (the task that adds the last levels of the tree and updates H: serial by
  nature, the other workers wait for it); and the rest, the *scheduler
  overhead*: the pass's time minus its busiest worker's panel compute minus its
  H-step, i.e. time the critical path spends on task dispatch and transfers
  rather than computing. Taking each figure per pass keeps one pass's compute
  from being set against another's time when the machine's speed drifts;
* the speedup of 2 workers over 1 (target ≥ 1.7×);
* the *machine ceiling*, the peer measured in the same run: the measured passes'
  panel updates (dnmf's HALS ``update_panel``, one BLAS thread, from the W and the
  H of each of those passes, replayed once in this process: HALS's inner sweeps,
  and so the work, change from one iteration to the next) run by 1 and then by 2
  plain processes (``multiprocessing``, no Dask) that start each pass together.
  Its speedup is what the cores themselves give to this work (shared caches,
  memory bandwidth, clock); dnmf's speedup is reported against it. The replay's
  losses are checked against the clusters' fits.

A shared machine drifts from minute to minute, so the configurations are measured
in ``--rounds`` rounds, each round running 1 worker, 2 workers and the ceiling back
to back; the figures are medians over rounds, with each round's speedups listed.

Usage::

    python benchmarks/bench_cluster_scaling.py            # 24000 × 1000, k = 40
    python benchmarks/bench_cluster_scaling.py --n 100000 --panel-rows 12500  # 100 MB panels
    python benchmarks/bench_cluster_scaling.py --quick    # small, < 1 min
    python benchmarks/bench_cluster_scaling.py --json out.json

Other load on the machine (other processes on the same cores) lowers the speedup:
run it on an otherwise idle machine with at least two cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _local_cluster_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "dnmf_cluster_local", ROOT / "cluster" / "local" / "start_cluster.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dnmf_cluster_local"] = module
    spec.loader.exec_module(module)
    return module


def make_data(path: Path, n: int, m: int, k: int, panel_rows: int) -> str:
    import zarr

    rng = np.random.default_rng(0)
    z = zarr.create_array(str(path), shape=(n, m), chunks=(panel_rows, m), dtype="f8")
    for a in range(0, n, panel_rows):
        b = min(n, a + panel_rows)
        z[a:b] = rng.random((b - a, k)) @ rng.random((k, m)) + 0.01 * rng.random((b - a, m))
    return str(path)


def run_one(V: str, workers: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import distributed

    import dnmf

    local = _local_cluster_module()
    d = Path(tempfile.mkdtemp(prefix=f"cluster-{workers}-", dir=work))
    info = local.start(d, workers=workers, threads_per_worker=1, port=0, dashboard_port=0)
    try:
        with distributed.Client(scheduler_file=info["scheduler_file"]) as client:
            stamps: list[float] = []

            def tick(iteration: int, loss: float) -> None:
                stamps.append(time.time())  # the clock of the task stream

            est = dnmf.NMF(
                args.k, solver="hals", init="random", max_iter=args.iters, tol=0.0,
                random_state=0, panel_rows=args.panel_rows, scheduler=client, cache=True,
                # plain passes: what is measured is how a pass scales (extrapolated
                # passes are other tasks, and wait for the last pass's verdict)
                extrapolate=False, callback=tick,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
                with distributed.get_task_stream(client) as ts:
                    t0 = time.perf_counter()
                    est.fit(V)
                    total = time.perf_counter() - t0
            tasks = list(ts.data)
    finally:
        local.stop(d)

    return {"workers": workers, "fit_seconds": total, **per_pass_figures(tasks, workers, args),
            "client_iteration_seconds": float(statistics.median(np.diff(stamps)[args.warmup:])),
            "panel_tasks": sum(str(t.get("key")).startswith("update_task") for t in tasks),
            "losses": [float(x) for x in est.loss_history_]}


def _compute(task: dict[str, Any]) -> tuple[float, float]:
    """A task's compute interval (the task stream's clock: the workers')."""
    spans = [(s["start"], s["stop"]) for s in task["startstops"] if s["action"] == "compute"]
    return min(a for a, _ in spans), max(b for _, b in spans)


def per_pass_figures(tasks: list[dict[str, Any]], workers: int,
                     args: argparse.Namespace) -> dict[str, Any]:
    """Medians over passes of where a pass's time goes, from the task stream.

    A pass ends with its ``_finish`` task (the H-step); pass j is the time from
    the end of pass j − 1's to the end of its own, and its panel tasks are those
    that start in between. Per pass: its time, the panel compute of its busiest
    worker, its H-step, and the rest (scheduler overhead). Each figure is the
    median over the passes after the first ``warmup``: per pass, so that a slow
    minute of the machine does not mix one pass's compute with another's time.
    """
    panels = [(t["worker"], *_compute(t)) for t in tasks
              if str(t.get("key")).startswith("update_task")]
    # The ends of the iterations' passes: ``_finish`` tasks with panel updates
    # before them (not since an earlier one), not the reductions of the start-up.
    finishes, since = [], float("-inf")
    for start, stop in sorted(_compute(t) for t in tasks
                              if str(t.get("key")).startswith("_finish")):
        if any(since <= a < start for _, a, _ in panels):
            finishes.append((start, stop))
        since = stop
    rows = []
    for (_, prev_stop), (start, stop) in itertools.pairwise(finishes):
        mine = [(w, b - a) for w, a, b in panels if prev_stop <= a < start]
        per_worker: dict[str, float] = {}
        for w, seconds in mine:
            per_worker[w] = per_worker.get(w, 0.0) + seconds
        rows.append({"iteration": stop - prev_stop, "panels": sum(per_worker.values()),
                     "busiest": max(per_worker.values()), "hstep": stop - start})
    # rows[0] is the second pass (the first has no pass before it to start from).
    rows = rows[max(0, args.warmup - 1):]
    assert rows, "no pass measured: raise --iters"

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    overheads = [r["iteration"] - r["busiest"] - r["hstep"] for r in rows]
    fractions = [o / r["iteration"] for o, r in zip(overheads, rows)]
    iteration = median("iteration")
    return {
        "passes_measured": len(rows),
        "iteration_seconds": iteration,
        "iteration_seconds_all": [r["iteration"] for r in rows],
        "panel_compute_seconds_per_iteration": median("panels"),
        "ideal_parallel_seconds": median("panels") / workers,
        "busiest_worker_seconds": median("busiest"),
        "imbalance_seconds": float(statistics.median(
            r["busiest"] - r["panels"] / workers for r in rows)),
        "hstep_seconds": median("hstep"),
        "hstep_fraction": float(statistics.median(r["hstep"] / r["iteration"] for r in rows)),
        "overhead_seconds": float(statistics.median(overheads)),
        "overhead_fraction": float(statistics.median(fractions)),
    }


def trajectory(V: str, args: argparse.Namespace, work: Path) -> tuple[str, list[float]]:
    """The fit's own path, replayed in this process: what the ceiling's passes use.

    The same fit as the clusters' (random start, seed 0), first iteration by dnmf on
    the threads scheduler, then by hand with dnmf's own panel update, fixed tree and
    H-step; saved are W after iteration ``warmup`` and every H the measured passes
    start from, so the ceiling repeats exactly the passes that were measured (HALS's
    inner sweeps, and so the work, change from one iteration to the next). Returns
    the file and the losses, which must match the cluster fits'.
    """
    import math

    import dnmf
    from dnmf._engine import context_for, h_step
    from dnmf._solvers import add_stats, get_solver
    from dnmf._source import as_source, load_panel
    from dnmf._tree import pairwise_tree
    from dnmf._validation import regularization

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est = dnmf.NMF(args.k, solver="hals", init="random", max_iter=1, tol=0.0,
                       random_state=0, panel_rows=args.panel_rows, scheduler="threads",
                       extrapolate=False)
        # The iterate after pass 0 as the longer fit has it: without the balancing
        # that ends a fit (it would change the sweeps' per-row stopping from there on).
        from dnmf import _engine

        balances, _engine.balances = _engine.balances, lambda *args: False
        try:
            W = np.asarray(est.fit_transform(V))
        finally:
            _engine.balances = balances
    source = as_source(V)
    bounds = [(a, min(a + args.panel_rows, args.n)) for a in range(0, args.n, args.panel_rows)]
    panels = [load_panel(ref) for ref in source.panel_refs(bounds)]
    Ws = [W[a:b].copy() for a, b in bounds]
    norm_sq = math.fsum(float(np.vdot(p, p)) for p in panels)
    solver = get_solver("hals", "frobenius")
    reg = regularization(0.0, "same", 0.0, *source.shape)
    ctx = context_for(est.components_, source, 1)  # the fit's pass 1 (HALS warm-up)
    losses = [float(est.loss_history_[0])]
    saved: dict[str, np.ndarray] = {}
    # Pass t starts from (W_t, H_t) and makes iteration t + 1; measured are the
    # iterations after the first ``warmup``, so the passes t = warmup ... iters - 1.
    for t in range(1, args.iters):
        if t == args.warmup:
            saved["W"] = np.concatenate(Ws)
        if t >= args.warmup:
            saved[f"H{t}"] = ctx.H
        results = [solver.update_panel(P, Wi, ctx, reg) for P, Wi in zip(panels, Ws)]
        Ws = [r[0] for r in results]
        ctx, (_, loss, *_) = h_step(pairwise_tree([r[1] for r in results], add_stats), solver,
                                   ctx, reg, norm_sq=norm_sq)
        losses.append(float(loss.objective))
    path = str(work / "trajectory.npz")
    np.savez(path, **saved)
    return path, losses


def _ceiling_worker(path: str, saved: str, bounds: list[tuple[int, int]],
                    args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    """Time, pass by pass, the measured passes' panel updates of the panels ``bounds``
    in this process (1 BLAS thread), from the fit's own W and H (``saved``)."""
    from threadpoolctl import threadpool_limits

    from dnmf._engine import context_for
    from dnmf._solvers import get_solver
    from dnmf._source import as_source, load_panel
    from dnmf._validation import regularization

    source = as_source(path)
    panels = [load_panel(ref) for ref in source.panel_refs(bounds)]
    state = np.load(saved)
    Ws = [state["W"][a:b].copy() for a, b in bounds]
    solver = get_solver("hals", "frobenius")
    reg = regularization(0.0, "same", 0.0, *source.shape)
    times = []
    with threadpool_limits(1, user_api="blas"):
        for t in range(args.warmup, args.iters):
            ctx = context_for(state[f"H{t}"], source, t)
            barrier.wait()  # the processes start each pass together, as workers do
            start = time.perf_counter()
            for i, V in enumerate(panels):
                Ws[i], _ = solver.update_panel(V, Ws[i], ctx, reg)
            times.append(time.perf_counter() - start)
    queue.put(times)


def machine_ceiling(V: str, saved: str, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per pass of the measured passes' panel updates in 1 and in 2 processes.

    Per pass the slower process sets the pace (a pass ends when all its panels are
    done); the figure is the median over passes, as for the clusters.
    """
    import multiprocessing as mp

    bounds = [(a, min(a + args.panel_rows, args.n)) for a in range(0, args.n, args.panel_rows)]
    ctx = mp.get_context("spawn")
    out = {}
    for procs in (1, 2):
        queue, barrier = ctx.Queue(), ctx.Barrier(procs)
        shares = [bounds[i * len(bounds) // procs:(i + 1) * len(bounds) // procs]
                  for i in range(procs)]
        workers = [ctx.Process(target=_ceiling_worker,
                               args=(V, saved, share, args, barrier, queue))
                   for share in shares]
        for w in workers:
            w.start()
        times = [queue.get() for _ in workers]
        for w in workers:
            w.join()
        out[procs] = float(statistics.median(max(per) for per in zip(*times)))
    return {"one_process_seconds": out[1], "two_processes_seconds": out[2],
            "speedup": out[1] / out[2]}


def _median_result(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over rounds (numbers), else the first round's value."""
    out: dict[str, Any] = {}
    for key, value in rounds[0].items():
        if isinstance(value, float):
            out[key] = float(statistics.median(r[key] for r in rounds))
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24_000)
    parser.add_argument("--m", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--panel-rows", type=int, default=1_500)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1,
                        help="first iterations left out of the figures (at least 1: the "
                             "first includes start-up; the H-step costs most early on)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (1 worker, 2 workers, ceiling); medians are reported")
    parser.add_argument("--quick", action="store_true", help="small problem, < 1 minute")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.m, args.k, args.panel_rows, args.iters = 8_000, 600, 30, 1_000, 6
        args.warmup = 1
        args.rounds = 1
    args.warmup = max(1, min(args.warmup, args.iters - 2))

    per_round: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="dnmf-bench-") as tmp:
        work = Path(tmp)
        V = make_data(work / "V.zarr", args.n, args.m, args.k, args.panel_rows)
        saved, losses = trajectory(V, args, work)
        for _ in range(max(1, args.rounds)):
            one, two = (run_one(V, w, args, work) for w in (1, 2))
            per_round.append((one, two, machine_ceiling(V, saved, args)))
    for one, two, _ in per_round:
        # The clusters computed the same fit, and the ceiling replayed it.
        for fit in (one, two):
            np.testing.assert_allclose(fit["losses"], losses, rtol=1e-8)
    results = [_median_result([r[i] for r in per_round]) for i in (0, 1)]
    ceiling = _median_result([r[2] for r in per_round])
    one, two = results
    speedup = one["iteration_seconds"] / two["iteration_seconds"]
    round_speedups = [r[0]["iteration_seconds"] / r[1]["iteration_seconds"] for r in per_round]
    round_ceilings = [r[2]["speedup"] for r in per_round]
    print(
        f"V {args.n} × {args.m} (f8, Zarr, cached on the workers), k = {args.k}, "
        f"{-(-args.n // args.panel_rows)} panels of {args.panel_rows} rows, "
        f"{args.iters} HALS iterations (the first {args.warmup} left out); "
        f"{os.cpu_count()} cores; medians of "
        f"{len(per_round)} round(s)"
    )
    print(f"{'workers':>8} {'iter s':>8} {'client s':>9} {'panels s':>9} {'ideal s':>8} "
          f"{'busiest s':>10} {'H-step s':>9} {'sched. s':>9} {'sched.':>7}")
    for r in results:
        print(
            f"{r['workers']:>8} {r['iteration_seconds']:>8.3f} "
            f"{r['client_iteration_seconds']:>9.3f} "
            f"{r['panel_compute_seconds_per_iteration']:>9.3f} "
            f"{r['ideal_parallel_seconds']:>8.3f} {r['busiest_worker_seconds']:>10.3f} "
            f"{r['hstep_seconds']:>9.3f} "
            f"{r['overhead_seconds']:>9.3f} {r['overhead_fraction']:>7.1%}"
        )
    print(f"machine ceiling (the measured passes' panel updates in 1 vs 2 plain processes, "
          f"no Dask): {ceiling['one_process_seconds']:.3f} s vs "
          f"{ceiling['two_processes_seconds']:.3f} s per pass: {ceiling['speedup']:.2f}x")
    print(f"speedup 2 vs 1 worker: {speedup:.2f}x (target >= 1.7x): "
          f"{'met' if speedup >= 1.7 else 'NOT met'}; "
          f"dnmf / machine ceiling = {speedup / ceiling['speedup']:.2f}")
    print("per round: speedup " + ", ".join(f"{x:.2f}x" for x in round_speedups)
          + "; ceiling " + ", ".join(f"{x:.2f}x" for x in round_ceilings))
    # The whole fit as a user times it: reading V into the workers, the start and
    # every iteration, the first ones included.
    fit_speedups = [r[0]["fit_seconds"] / r[1]["fit_seconds"] for r in per_round]
    print(f"whole fit ({args.iters} iterations, reading V and the start included): "
          f"{one['fit_seconds']:.2f} s vs {two['fit_seconds']:.2f} s, speedup per round "
          + ", ".join(f"{x:.2f}x" for x in fit_speedups))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "results": results, "speedup": speedup,
                        "ceiling": ceiling,
                        "speedup_over_ceiling": speedup / ceiling["speedup"],
                        "round_speedups": round_speedups, "round_ceilings": round_ceilings,
                        "fit_speedups": fit_speedups,
                        "rounds": [list(r) for r in per_round]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
