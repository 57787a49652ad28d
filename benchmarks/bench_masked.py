"""Masked HALS against unmasked HALS: time per iteration, in one run, interleaved.

V (n × m) is a planted rank-20 product plus noise; a seeded ``missing`` share of its
entries is set to NaN. Each round fits the complete V with ``NMF(solver="hals")``
and the NaN V with ``NMF(solver="hals", missing="nan")`` (same start, k, panels,
threads), one after the other in alternating order, and times every iteration from
the fit's callback (the start and the validation pass excluded). The figure is the
ratio of the medians of the per-iteration times, per round and over all rounds
(target: masked ≤ 3 × unmasked at 20000 × 2000, 10 % missing). The machine's load
(``os.getloadavg``) is reported next to every round, since other work shares it.

Usage::

    python benchmarks/bench_masked.py                    # 20000 × 2000, 10 % missing
    python benchmarks/bench_masked.py --n 5000 --rounds 2 --json out.json
    python benchmarks/bench_masked.py --quick             # 3000 × 500, for run_all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from typing import Any

import numpy as np


def make(n: int, m: int, k: int, missing: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    V = rng.random((n, k)) @ rng.random((k, m)) + 0.05 * rng.random((n, m))
    X = V.copy()
    X[rng.random((n, m)) < missing] = np.nan
    return V, X


def timed_fit(X: np.ndarray, iters: int, k: int, masked: bool, threads: int) -> dict[str, Any]:
    import dnmf

    stamps: list[float] = []

    def tick(iteration: int, loss: float) -> bool:
        stamps.append(time.perf_counter())
        return False

    model = dnmf.NMF(k, solver="hals", init="random", max_iter=iters, tol=0.0,
                     random_state=0, callback=tick, missing="nan" if masked else None,
                     scheduler="threads")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    total = time.perf_counter() - start
    per_iter = np.diff(stamps)
    return {"per_iter_median": float(np.median(per_iter)), "per_iter_min": float(per_iter.min()),
            "total": total, "iterations": model.n_iter_, "loss": model.loss_history_[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--m", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--missing", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="a small run (3000 × 500, 2 rounds of 4 iterations)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.n, args.m, args.rounds, args.iters = 3000, 500, 2, 4

    V, X = make(args.n, args.m, args.k, args.missing)
    rounds = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        load = os.getloadavg()[0]
        result = {masked: timed_fit(X if masked else V, args.iters, args.k, masked,
                                    args.threads) for masked in order}
        ratio = result[True]["per_iter_median"] / result[False]["per_iter_median"]
        rounds.append({"round": r, "load_1min": load, "ratio": ratio,
                       "unmasked": result[False], "masked": result[True]})
        print(f"round {r}: unmasked {result[False]['per_iter_median'] * 1e3:.0f} ms/iter, "
              f"masked {result[True]['per_iter_median'] * 1e3:.0f} ms/iter, "
              f"ratio {ratio:.2f}  (load {load:.1f})", flush=True)
    un = np.median([x["unmasked"]["per_iter_median"] for x in rounds])
    ma = np.median([x["masked"]["per_iter_median"] for x in rounds])
    summary = {"n": args.n, "m": args.m, "k": args.k, "missing": args.missing,
               "ratio_of_medians": float(ma / un),
               "ratio_per_round": [x["ratio"] for x in rounds],
               "load_end": os.getloadavg()[0], "cpus": os.cpu_count(),
               "machine": platform.machine(), "rounds": rounds}
    print(f"masked / unmasked time per iteration: {ma / un:.2f} "
          f"(rounds {', '.join(f'{x:.2f}' for x in summary['ratio_per_round'])}); "
          f"target <= 3; load at end {summary['load_end']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
