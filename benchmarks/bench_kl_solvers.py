"""KL solvers against scikit-learn's MU: time to reach the loss sklearn's mu reaches in 200.

Per size (dense, in memory, k = 10, ``init="nndsvda"`` on both sides; for each, W and H
start from scikit-learn's own NNDSVDa passed as a custom init, so every solver starts
from the same point): scikit-learn ``NMF(solver="mu", beta_loss="kullback-leibler",
max_iter=200, tol=0)`` is timed and its final KL divergence is the target; each dnmf
solver (``mu``, ``amu``) is timed until its loss first reaches the target (a callback
stops it). Rounds interleave the three; the best of ``--repeats`` is reported with the
load average before each run. Issue 13's target: ≤ 0.5 × sklearn at every size,
≤ 0.25 × from 2000 × 500 up.

Usage::

    python benchmarks/bench_kl_solvers.py                  # 300×100 ... 10000×1000
    python benchmarks/bench_kl_solvers.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

SIZES = [(300, 100), (2000, 500), (10000, 1000)]


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def kl(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
    from sklearn.decomposition._nmf import _beta_divergence

    return float(_beta_divergence(V, W, H, 1))


def sklearn_run(V: np.ndarray, W0: np.ndarray, H0: np.ndarray) -> dict[str, Any]:
    from sklearn.decomposition import NMF

    model = NMF(W0.shape[1], solver="mu", beta_loss="kullback-leibler", init="custom",
                max_iter=200, tol=0.0)
    before = load()
    start = time.perf_counter()
    W = model.fit_transform(V, W=W0.copy(), H=H0.copy())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": int(model.n_iter_),
            "loss": kl(V, W, model.components_), "load": before}


def dnmf_run(V: np.ndarray, W0: np.ndarray, H0: np.ndarray, solver: str,
             target: float) -> dict[str, Any]:
    import dnmf

    losses: list[float] = []
    model = dnmf.NMF(W0.shape[1], solver=solver, beta_loss="kullback-leibler",
                     init="custom", max_iter=2000, tol=0.0,
                     callback=lambda i, loss: losses.append(loss) or loss <= target)
    before = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(V, W=W0, H=H0)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": int(model.n_iter_),
            "reached": bool(losses) and losses[-1] <= target, "load": before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None,
                        help="comma-separated NxM sizes (default 300x100,2000x500,10000x1000)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--solvers", default="mu,amu")
    parser.add_argument("--quick", action="store_true", help="300x100 and 1000x300 only")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    sizes = SIZES
    if args.quick:
        sizes = [(300, 100), (1000, 300)]
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    solvers = [s for s in args.solvers.split(",") if s]
    from sklearn.decomposition._nmf import _initialize_nmf

    from dnmf.testing import planted

    print(f"load {load():.2f}; k = {args.k}; best of {args.repeats}", flush=True)
    rows = []
    for n, m in sizes:
        V, _, _ = planted(n, m, args.k, seed=0, noise=0.1)
        W0, H0 = _initialize_nmf(V, args.k, init="nndsvda", random_state=0)
        runs: dict[str, list[dict[str, Any]]] = {"sklearn": [], **{s: [] for s in solvers}}
        target = None
        for _ in range(args.repeats):
            runs["sklearn"].append(sklearn_run(V, W0, H0))
            target = runs["sklearn"][0]["loss"]
            for solver in solvers:
                runs[solver].append(dnmf_run(V, W0, H0, solver, target))
        sk = min(runs["sklearn"], key=lambda r: r["seconds"])
        row: dict[str, Any] = {"n": n, "m": m, "target": target, "sklearn": sk,
                               "all": runs}
        line = f"{n} × {m}: sklearn mu {sk['seconds']:.2f} s (200 it)"
        for solver in solvers:
            best = min(runs[solver], key=lambda r: r["seconds"])
            row[solver] = {**best, "ratio": best["seconds"] / sk["seconds"]}
            line += (f"; dnmf {solver} {best['seconds']:.2f} s ({best['iterations']} it"
                     f"{'' if best['reached'] else ', NOT reached'}) = "
                     f"{best['seconds'] / sk['seconds']:.3f} ×")
        loads = [r["load"] for rs in runs.values() for r in rs]
        print(line + f"  [loads {min(loads):.1f}-{max(loads):.1f}]", flush=True)
        rows.append(row)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"rows": rows, "k": args.k, "repeats": args.repeats}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
