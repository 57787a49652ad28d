"""Out-of-core fit with a run store: peak memory and time per iteration.

(a) Peak RSS of ``NMF(k, out=...)`` on a float32 Zarr V on disk, measured with
    ``dnmf.testing.peak_rss`` (VmHWM) in a child process, against V's size.
(b) Seconds per iteration of the same fit against
    - the one-pass floor: read every panel and compute ``V_i·Hᵀ`` and ``W_iᵀ·V_i``,
      nothing else (same panels, same threads, same BLAS limits);
    - the obvious dask.array formulation of multiplicative updates
      (``H *= (W.T @ V) / ((W.T @ W) @ H)``, ``W *= (V @ H.T) / (W @ (H @ H.T))``):
      ``dask`` persists H, then W, and so reads V twice per iteration;
      ``dask-fused`` persists both in one call, so Dask reads V once but holds every
      chunk of it until the new H exists (all of V in memory);
    - ``dnmf-cache``: dnmf with ``cache=True`` (V held in memory too), the fair
      match for ``dask-fused``.

Each variant runs in its own process, which reports its wall and CPU seconds per
iteration (CPU seconds are what load from other processes inflates least) and its
peak RSS. The issue's targets: V = 4 GiB, k = 20: peak RSS ≤ 1 GiB; time per
iteration ≤ 1.25 × the floor and ≥ 1.5 × faster than the dask.array formulation.

Usage::

    python benchmarks/bench_out_of_core.py            # 1 GiB, about 8 minutes
    python benchmarks/bench_out_of_core.py --gib 4 --rounds 1   # the issue's size
    python benchmarks/bench_out_of_core.py --skip dask,dask-fused,dnmf-cache

V is generated once (a rank-10 non-negative product plus noise, zstd-compressed by
Zarr's defaults) under ``--data-dir`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np


def make_V(path: str, n: int, m: int, chunk_rows: int) -> None:
    import zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        arr = zarr.open_array(path, mode="r")
        if arr.shape == (n, m) and arr.chunks[0] == chunk_rows:
            return
        shutil.rmtree(path)
    print(f"writing V ({n} × {m} float32, {n * m * 4 / 2**30:.2f} GiB) to {path} ...",
          flush=True)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(store=tmp, shape=(n, m), chunks=(chunk_rows, m), dtype="f4")
    rng = np.random.default_rng(0)
    H = rng.random((10, m), dtype=np.float32)
    for a in range(0, n, chunk_rows):
        b = min(a + chunk_rows, n)
        W = rng.random((b - a, 10), dtype=np.float32)
        block = W @ H + 0.1 * rng.random((b - a, m), dtype=np.float32)
        arr[a:b] = np.round(block, 3)
    os.replace(tmp, path)


# ------------------------------------------------------------- the variants
def clock() -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads): the machine may be shared,
    and CPU seconds are what other processes' load does not inflate."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


def intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def floor_task(v_ref, W, H):
    from dnmf._source import load_panel

    V = load_panel(v_ref)
    P = V @ H.T
    A = W.T @ V
    return None, (float(P[0, 0]), A)


def add(a, b):
    return a[0] + b[0], a[1] + b[1]


def run_floor(args: argparse.Namespace) -> list[tuple[float, float]]:
    """One pass per iteration: read every panel, V_i·Hᵀ and W_iᵀ·V_i, nothing else."""
    from dnmf._backend import get_backend
    from dnmf._source import as_source

    source = as_source(args.path)
    backend = get_backend("threads")
    bounds = source.panel_bounds(None, backend.n_threads)
    refs = source.panel_refs(bounds)
    rng = np.random.default_rng(0)
    H = rng.random((args.k, source.shape[1]), dtype=np.float32)
    Ws = [rng.random((b - a, args.k), dtype=np.float32) for a, b in bounds]
    stamps = []
    for _ in range(args.iters + 1):  # the first is a warm-up
        stamps.append(clock())
        backend.run_pass(floor_task, list(zip(refs, Ws)), (H,), add, keep_outputs=False)
    stamps.append(clock())
    return intervals(stamps)[1:]


def run_dnmf(args: argparse.Namespace, cache: bool = False) -> list[tuple[float, float]]:
    """dnmf with a run store; the times between successive iterations' callbacks.

    ``cache=True`` keeps V's panels in memory after the first pass (the fair match
    for ``dask-fused``, which also ends up holding all of V).
    """
    import dnmf

    stamps: list[tuple[float, float]] = []
    out = tempfile.mkdtemp(prefix="dnmf-bench-run-", dir=args.data_dir)
    try:
        dnmf.NMF(args.k, solver="mu", init="random", max_iter=args.iters + 1, random_state=0,
                 out=out, checkpoint_every=args.every, scheduler="threads", cache=cache,
                 callback=lambda i, loss: stamps.append(clock())).fit(args.path)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return intervals(stamps)


def run_dask(args: argparse.Namespace, fused: bool) -> list[tuple[float, float]]:
    """Multiplicative updates written with dask.array, persisted every iteration.

    ``fused=False`` persists H, then W (V is read twice per iteration). ``fused=True``
    persists both in one call: Dask then reads each chunk of V once but holds every
    chunk until the new H exists, i.e. all of V in memory.
    """
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    V = da.from_zarr(args.path)
    n, m = V.shape
    avg = float(np.sqrt(0.5 / args.k))
    rng = np.random.default_rng(0)
    H = da.from_array(avg * rng.random((args.k, m), dtype=np.float32))
    W = da.random.RandomState(0).random_sample((n, args.k), chunks=(V.chunks[0], args.k))
    W = (W.astype(np.float32) * avg).persist()
    stamps = [clock()]
    # One BLAS thread per worker thread, as dnmf does: the fair best case.
    with threadpool_limits(limits=max(1, (os.cpu_count() or 1) // 2), user_api="blas"):
        for _ in range(args.iters):
            H_new = H * (W.T @ V) / ((W.T @ W) @ H)
            if not fused:
                H_new = H_new.persist()
            W = W * (V @ H_new.T) / (W @ (H_new @ H_new.T))
            W, H = dask.persist(W, H_new)
            stamps.append(clock())
    return intervals(stamps)


VARIANTS = {
    "dnmf": run_dnmf,
    "floor": run_floor,
    "dask": lambda args: run_dask(args, fused=False),
    "dask-fused": lambda args: run_dask(args, fused=True),
    "dnmf-cache": lambda args: run_dnmf(args, cache=True),
}


def child(args: argparse.Namespace) -> None:
    warnings.simplefilter("ignore")
    from dnmf.testing import peak_rss  # VmHWM: getrusage would include the parent's peak

    base = peak_rss()
    times = [list(pair) for pair in VARIANTS[args.child](args)]
    peak = peak_rss()
    print(json.dumps({"base": base, "peak": peak, "times": times}))


def measure(variant: str, path: str, args: argparse.Namespace) -> dict:
    """Run one variant in a fresh process (its own peak RSS)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--path", path, "--k", str(args.k),
         "--iters", str(args.iters), "--every", str(args.every), "--data-dir", args.data_dir],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["per_iter"] = statistics.median(t[0] for t in result["times"])
    result["cpu_per_iter"] = statistics.median(t[1] for t in result["times"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of V in GiB")
    parser.add_argument("--cols", type=int, default=1000, help="columns of V")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per variant")
    parser.add_argument("--every", type=int, default=2, help="checkpoint_every")
    parser.add_argument("--chunk-mib", type=float, default=64.0, help="Zarr chunk (panel) size")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "dnmf-bench"))
    parser.add_argument("--skip", default="", help="comma-separated variants not to run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--quick", action="store_true",
                        help="small V (64 MiB, 8 MiB panels), one round, about 1 minute")
    parser.add_argument("--json", help="write the results here (machine-readable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.gib, args.chunk_mib, args.rounds = 1 / 16, 8.0, 1

    os.makedirs(args.data_dir, exist_ok=True)
    m = args.cols
    n = int(args.gib * 2**30 / (4 * m))
    chunk_rows = max(1, int(args.chunk_mib * 2**20 / (4 * m)))
    path = os.path.join(args.data_dir, f"V-{n}x{m}-c{chunk_rows}.zarr")
    make_V(path, n, m, chunk_rows)
    V_bytes = n * m * 4
    print(f"V: {n} × {m} float32 = {V_bytes / 2**30:.2f} GiB on disk (zstd), panels of "
          f"{chunk_rows} rows ({chunk_rows * m * 4 / 2**20:.0f} MiB), k = {args.k}, "
          f"{os.cpu_count()} cores, {args.iters} timed iterations per variant", flush=True)
    results: dict[str, dict] = {}
    variants = [v for v in VARIANTS if v not in args.skip.split(",")]
    # Interleaved rounds, so that load from other processes hits every variant alike;
    # the time per iteration is the median over all rounds' iterations.
    for round_ in range(args.rounds):
        for variant in variants:
            r = measure(variant, path, args)
            print(f"  round {round_ + 1} {variant:10s} {r['per_iter']:6.2f} s/iteration "
                  f"({r['cpu_per_iter']:.2f} CPU s)   peak RSS {r['peak'] / 2**20:6.0f} MiB",
                  flush=True)
            if variant in results:
                results[variant]["times"] += r["times"]
                results[variant]["peak"] = max(results[variant]["peak"], r["peak"])
            else:
                results[variant] = r
    print("summary (medians over all rounds' iterations; wall s and CPU s per iteration):")
    for variant, r in results.items():
        r["per_iter"] = statistics.median(t[0] for t in r["times"])
        r["cpu_per_iter"] = statistics.median(t[1] for t in r["times"])
        fastest = min(t[0] for t in r["times"])
        print(f"  {variant:10s} {r['per_iter']:6.2f} s (fastest {fastest:.2f})"
              f"  {r['cpu_per_iter']:6.2f} CPU s   peak RSS {r['peak'] / 2**20:6.0f} MiB "
              f"(after imports {r['base'] / 2**20:.0f} MiB)")
    if "dnmf" not in results:
        return
    ours = results["dnmf"]
    print(f"(a) dnmf peak RSS {ours['peak'] / 2**20:.0f} MiB for V of {V_bytes / 2**20:.0f} MiB "
          f"(peak/V = {ours['peak'] / V_bytes:.2f}) [target at 4 GiB: ≤ 1024 MiB]")

    def ratio(a: dict, b: dict) -> str:
        return (f"{a['per_iter'] / b['per_iter']:.2f} wall, "
                f"{a['cpu_per_iter'] / b['cpu_per_iter']:.2f} CPU")

    if "floor" in results:
        print(f"(b) dnmf / one-pass floor = {ratio(ours, results['floor'])} [target ≤ 1.25]")
    for variant in ("dask", "dask-fused"):
        if variant in results:
            r = results[variant]
            print(f"    {variant} / dnmf = {ratio(r, ours)} [target ≥ 1.5]; its peak RSS / "
                  f"dnmf's = {r['peak'] / ours['peak']:.1f}")
    if "dask-fused" in results and "dnmf-cache" in results:
        r, c = results["dask-fused"], results["dnmf-cache"]
        print(f"    with V held in memory by both: dask-fused / dnmf-cache = {ratio(r, c)}")
    if args.json:
        ratios = {"dnmf_peak_over_V": ours["peak"] / V_bytes}
        if "floor" in results:
            ratios["dnmf_over_floor"] = ours["per_iter"] / results["floor"]["per_iter"]
        for variant in ("dask", "dask-fused"):
            if variant in results:
                ratios[f"{variant}_over_dnmf"] = results[variant]["per_iter"] / ours["per_iter"]
                ratios[f"{variant}_peak_over_dnmf"] = results[variant]["peak"] / ours["peak"]
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()
                                if k not in ("child", "path")},
                       "V": {"n": n, "m": m, "chunk_rows": chunk_rows, "bytes": V_bytes},
                       "cores": os.cpu_count(), "results": results, "ratios": ratios},
                      f, indent=1)


if __name__ == "__main__":
    main()
