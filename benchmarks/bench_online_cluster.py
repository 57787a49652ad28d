"""MiniBatchNMF on a 2-worker local Dask cluster: one batch split across the workers,
or several batches in flight per step, against this process alone.

- ``threads``: the steps in this process (no cluster);
- ``split``: each batch cut into one block per worker thread; the workers read their
  rows from the Zarr store, make their W rows and H-update terms, the driver adds the
  terms in row order and folds them into H (the same mathematics as ``threads``; the
  variant that lost, kept here only to measure it);
- ``in-flight``: one batch per worker thread at once, all against the same H, folded
  into H's running sums one after the other in batch order (what MiniBatchNMF does on
  a cluster; the later batches of a round see an H one or more steps old).

Every run records H with the time since its start (several times per pass, outside
the timed work); each H is scored as in bench_online.py (relative error of the exact
NNLS fit of a fixed sample of rows). Rounds are interleaved, the order rotating.
The target is the largest final error among the modes (every mode reaches it).

Usage: python benchmarks/bench_online_cluster.py [--gib 0.2] [--rounds 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
import warnings

import numpy as np
from bench_online import DATA, first_below, load_average, make_V, score

MODES = ("threads", "split", "in-flight")


def _split_steps(self, backend, source, memory, bounds, n_steps, n, m, state, on_step):
    """The variant that lost: each batch cut into one block per worker thread, the
    H-update terms added in row order (the same mathematics as one process)."""
    import math

    from dnmf._online import _task_refs, batch_terms

    W, H_prev, i = state["W"], state["H"], state["step"]
    P = max(1, backend.n_threads)
    l1_W, _, l2_W, _ = self._reg(1, m)
    shared = (self._beta_loss, self._gamma, l1_W, l2_W, bool(self.fresh_restarts),
              self.fresh_restarts_max_iter, self.tol)
    while i < n_steps and not state["stopped"]:
        H = state["H"]
        a, b = bounds[i % len(bounds)]
        cuts = np.linspace(a, b, min(P, b - a) + 1).astype(int)
        pieces = [(int(x), int(y)) for x, y in itertools.pairwise(cuts)]
        parts = backend.map(batch_terms, [(ref, W[x:y], H) for ref, (x, y) in
                                          zip(_task_refs(source, memory, pieces), pieces)],
                            shared)
        for (x, y), part in zip(pieces, parts):
            W[x:y] = part[0]
        numerator, denominator = parts[0][2].copy(), parts[0][3].copy()
        for part in parts[1:]:
            numerator += part[2]
            denominator += part[3]
        div = math.fsum(part[1] for part in parts)
        _, cost, H_new, A, B = self._fold(W[a:b], div, numerator, denominator, H,
                                          state["A"], state["B"], b - a, m)
        state.update(H=H_new, A=A, B=B)
        state["stopped"] = self._converged(b - a, cost, H_new, H_prev, n, i, n_steps, state)
        H_prev = H_new
        i += 1
        state["step"] = i


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

    if mode == "split":
        Recorded._run_cluster = _split_steps  # the variant measured against in-flight
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
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="a small V, one round, one pass")
    args = p.parse_args()
    if args.quick:
        args.gib, args.rounds, args.epochs, args.sample_rows = 0.02, 1, 1, 2048

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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": [
                {mode: {"times": v[0].tolist(), "errors": v[1].tolist(), "total": v[2],
                        "load": v[3]} for mode, v in result.items()} for result in results]},
                f, indent=1)


if __name__ == "__main__":
    main()
