"""MiniBatchNMF on a 2-worker local Dask cluster: one batch split across the workers,
or several batches in flight per step, against this process alone.

- ``threads``: the steps in this process (no cluster);
- ``split``: each batch cut into one block per worker thread; the workers read their
  rows from the Zarr store, make their W rows and H-update terms, the driver adds the
  terms in row order and folds them into H (the same mathematics as ``threads``);
- ``in-flight``: one batch per worker thread at once, all against the same H, folded
  into H's running sums one after the other in batch order (a different algorithm:
  the later batches of a round see an H one or more steps old).

Every run records H with the time since its start (several times per pass, outside
the timed work); each H is scored as in bench_online.py (relative error of the exact
NNLS fit of a fixed sample of rows). Rounds are interleaved, the order rotating.
The target is the largest final error among the modes (every mode reaches it).

Usage: python benchmarks/bench_online_cluster.py [--gib 0.2] [--rounds 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from bench_online import DATA, first_below, load_average, make_V, score

MODES = ("threads", "split", "in-flight")


def run(mode: str, V: str, client, k: int, batch: int, epochs: int, every: int):
    import dnmf
    from dnmf._online import MiniBatchNMF

    times, Hs, paused = [], [], [0.0]
    t0 = [0.0]

    class Recorded(MiniBatchNMF):
        def _fold(self, *args, **kwargs):
            result = super()._fold(*args, **kwargs)
            self._count = getattr(self, "_count", 0) + 1
            if self._count % every == 0:
                t = time.perf_counter()
                times.append(t - t0[0] - paused[0])
                Hs.append(np.array(result[2], dtype=np.float32))
                paused[0] += time.perf_counter() - t
            return result

    Recorded._cluster_mode = "split" if mode == "threads" else mode
    est = Recorded(k, init="random", batch_size=batch, max_iter=epochs, tol=0.0,
                   max_no_improvement=None, random_state=0,
                   scheduler="threads" if mode == "threads" else client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0[0] = time.perf_counter()
        est.fit(V)
        total = time.perf_counter() - t0[0] - paused[0]
    times.append(total)
    Hs.append(est.components_.astype(np.float32))
    assert isinstance(est, dnmf.MiniBatchNMF)
    return np.array(times), np.stack(Hs), total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=0.2)
    p.add_argument("--m", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sample-rows", type=int, default=8192)
    args = p.parse_args()

    from distributed import Client, LocalCluster

    n = int(args.gib * 2**30 / (4 * args.m))
    os.makedirs(DATA, exist_ok=True)
    V = os.path.join(DATA, f"online_{n}x{args.m}_c{args.batch}.zarr")
    make_V(V, n, args.m, args.k, args.batch // 2)
    steps_per_epoch = -(-n // args.batch)
    every = max(1, steps_per_epoch // 4)
    print(f"V: {n} x {args.m} float32 ({n * args.m * 4 / 2**30:.2f} GiB), k={args.k}, "
          f"batch {args.batch}, {args.epochs} passes; 2 workers x 1 thread; load "
          f"{load_average()}", flush=True)
    results: list[dict] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for r in range(args.rounds):
            order = MODES[r % 3:] + MODES[:r % 3]
            result = {}
            for mode in order:
                load = load_average()
                times, Hs, total = run(mode, V, client, args.k, args.batch, args.epochs,
                                       every)
                errors = score(V, Hs, args.sample_rows)
                result[mode] = (times, errors, total, load)
                print(f"round {r + 1} {mode:10s} {total:7.1f} s, final error "
                      f"{errors[-1]:.5f}, load {load}", flush=True)
            results.append(result)
    print("\nTime to the largest final error of the round (every mode reaches it):")
    print(f"{'round':>5} {'target':>9} " + " ".join(f"{m:>12}" for m in MODES))
    for r, result in enumerate(results):
        target = max(v[1][-1] for v in result.values())
        cells = []
        for mode in MODES:
            t = first_below(result[mode][0], result[mode][1], target)
            cells.append(f"{t:10.1f} s" if t is not None else f"{'-':>12}")
        print(f"{r + 1:>5} {target:9.5f} " + " ".join(cells))
    print(f"load at the end {load_average()}")


if __name__ == "__main__":
    main()
