"""dnmf against scikit-learn at four sizes, Frobenius and KL (issue 13).

For each V (in memory, dense; k = 10; init "nndsvda" on both sides):

* scikit-learn runs 200 iterations (``tol=0``) and its final loss ``L`` is computed
  exactly (float64, from its W and H: ½‖V − WH‖², or the generalised KL divergence);
* dnmf runs until its own loss first reaches ``L`` (a callback stops it; at most
  ``--max-iter`` iterations);
* the figure is dnmf's time / scikit-learn's time, both wall times of the whole
  ``fit`` (validation and initialisation included), each the best of ``--repeats``
  runs, the two sides interleaved (sk, dnmf, sk, dnmf, ...) so that changes of the
  machine's load hit both alike. The 1-minute load average is reported beside each.

Frobenius compares ``NMF(solver="hals")`` with scikit-learn's ``solver="cd"``; KL
compares dnmf's default solver for ``beta_loss="kullback-leibler"`` with
scikit-learn's ``solver="mu"``. Targets (issue 13): Frobenius ≤ 1.0 at 300 × 100 and
1797 × 64, ≤ 0.3 from 2000 × 500 up; KL ≤ 0.5 everywhere, ≤ 0.25 from 2000 × 500 up.

The 1797 × 64 matrix is scikit-learn's digits; the others are a planted rank-10
factorization plus noise (:func:`dnmf.testing.planted`, seed 0). Both libraries run
with the BLAS threads they choose themselves unless ``--blas-threads`` sets them for
both (one BLAS thread is what dnmf uses on data under 4 MiB).

Usage::

    python benchmarks/bench_sizes.py                       # the four sizes, best of 3
    python benchmarks/bench_sizes.py --quick               # the two small sizes
    python benchmarks/bench_sizes.py --sizes 300x100 --losses frobenius --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

SIZES = ["300x100", "1797x64", "2000x500", "10000x1000"]
QUICK_SIZES = ["300x100", "1797x64"]
K = 10
SK_MAX_ITER = 200
TARGETS = {"frobenius": {"small": 1.0, "large": 0.3}, "kullback-leibler": {"small": 0.5,
                                                                          "large": 0.25}}
SK_SOLVER = {"frobenius": "cd", "kullback-leibler": "mu"}
#: dnmf's solver for KL (``--kl-solver``): its default for beta_loss="kullback-leibler".
KL_SOLVER = "mu"


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def data(size: str) -> np.ndarray:
    n, m = (int(x) for x in size.lower().split("x"))
    if (n, m) == (1797, 64):
        from sklearn.datasets import load_digits

        return np.ascontiguousarray(load_digits().data, dtype=np.float64)
    from dnmf.testing import planted

    V, _, _ = planted(n, m, K, seed=0, noise=0.1)
    return V


def exact_loss(V: np.ndarray, W: np.ndarray, H: np.ndarray, beta_loss: str) -> float:
    """½‖V − WH‖² or D_KL(V ‖ WH) (scikit-learn's definitions), in float64."""
    WH = np.asarray(W, dtype=np.float64) @ np.asarray(H, dtype=np.float64)
    if beta_loss == "frobenius":
        R = V - WH
        return 0.5 * float(np.einsum("ij,ij->", R, R))
    eps = float(np.finfo(np.float32).eps)
    WH = np.maximum(WH, eps)
    keep = V > eps
    return float(np.sum(V[keep] * np.log(V[keep] / WH[keep])) + WH.sum() - V.sum())


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def sklearn_fit(V: np.ndarray, beta_loss: str) -> dict[str, Any]:
    from sklearn.decomposition import NMF

    model = NMF(K, solver=SK_SOLVER[beta_loss], beta_loss=beta_loss, init="nndsvda",
                max_iter=SK_MAX_ITER, tol=0.0, random_state=0)
    before = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        W = model.fit_transform(V)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": int(model.n_iter_), "W": W,
            "H": model.components_, "load": [before, load()]}


def dnmf_fit(V: np.ndarray, beta_loss: str, target: float, max_iter: int) -> dict[str, Any]:
    import dnmf

    reached: list[int] = []

    def stop(iteration: int, loss: float) -> bool:
        if loss <= target:
            reached.append(iteration)
            return True
        return False

    params: dict[str, Any] = {"beta_loss": beta_loss}
    params["solver"] = "hals" if beta_loss == "frobenius" else KL_SOLVER
    model = dnmf.NMF(K, init="nndsvda", max_iter=max_iter, tol=0.0, random_state=0,
                     callback=stop, scheduler="threads", **params)
    before = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(V)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": int(model.n_iter_), "reached": bool(reached),
            "solver": model.solver, "final_loss": float(model.loss_history_[-1]),
            "load": [before, load()]}


def target_of(size: str, beta_loss: str) -> float:
    n, m = (int(x) for x in size.lower().split("x"))
    return TARGETS[beta_loss]["large" if n * m >= 2000 * 500 else "small"]


def measure(size: str, beta_loss: str, repeats: int, max_iter: int) -> dict[str, Any]:
    V = data(size)
    sk_runs, dn_runs = [], []
    target_loss = None
    # Warm-up (imports, numba's cache, first-touch of V) outside the timings.
    dnmf_fit(V[: min(V.shape[0], 200)], beta_loss, 0.0, 2)
    for _ in range(repeats):
        sk = sklearn_fit(V, beta_loss)
        if target_loss is None:
            target_loss = exact_loss(V, sk["W"], sk["H"], beta_loss)
        sk_runs.append({key: sk[key] for key in ("seconds", "iterations", "load")})
        dn_runs.append(dnmf_fit(V, beta_loss, target_loss, max_iter))
    assert target_loss is not None
    sk_best = min(r["seconds"] for r in sk_runs)
    reached = [r for r in dn_runs if r["reached"]]
    dn_best = min(r["seconds"] for r in reached) if reached else math.inf
    return {
        "size": size, "beta_loss": beta_loss, "shape": list(V.shape), "k": K,
        "sklearn_solver": SK_SOLVER[beta_loss], "dnmf_solver": dn_runs[0]["solver"],
        "target_loss": target_loss, "sklearn": sk_runs, "dnmf": dn_runs,
        "sklearn_best": sk_best, "dnmf_best": dn_best, "ratio": dn_best / sk_best,
        "target_ratio": target_of(size, beta_loss),
        "dnmf_iterations": [r["iterations"] for r in dn_runs],
    }


def table(results: list[dict[str, Any]]) -> str:
    sizes = list(dict.fromkeys(r["size"] for r in results))
    losses = list(dict.fromkeys(r["beta_loss"] for r in results))
    by = {(r["size"], r["beta_loss"]): r for r in results}
    head = "| V | " + " | ".join(
        f"{'hals vs scikit-learn cd' if b == 'frobenius' else 'KL: dnmf vs scikit-learn mu'}"
        for b in losses) + " |"
    lines = [head, "|---|" + "---:|" * len(losses)]
    for size in sizes:
        cells = []
        for b in losses:
            r = by.get((size, b))
            if r is None:
                cells.append("")
                continue
            ok = "" if r["ratio"] <= r["target_ratio"] else " ✗"
            loads = [x for run in r["sklearn"] + r["dnmf"] for x in run["load"]]
            cells.append(f"{r['ratio']:.2f}{ok} ({r['dnmf_best']:.3f} s / "
                         f"{r['sklearn_best']:.3f} s, load {min(loads):.1f}-{max(loads):.1f})")
        lines.append(f"| {size.replace('x', ' × ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help="comma-separated NxM sizes (1797x64 is the digits data)")
    parser.add_argument("--losses", default="frobenius,kullback-leibler",
                        help="comma-separated: frobenius, kullback-leibler")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (best of)")
    parser.add_argument("--max-iter", type=int, default=2000,
                        help="dnmf's iteration limit while it chases the target loss")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="BLAS threads for both libraries (default: their own choice)")
    parser.add_argument("--kl-solver", default=KL_SOLVER,
                        help=f"dnmf's solver for KL (default {KL_SOLVER!r})")
    parser.add_argument("--quick", action="store_true", help="the two small sizes only")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    globals()["KL_SOLVER"] = args.kl_solver
    sizes = QUICK_SIZES if args.quick else [s.strip() for s in args.sizes.split(",") if s]
    losses = [b.strip() for b in args.losses.split(",") if b.strip()]
    results = []
    with blas_threads(args.blas_threads):
        for beta_loss in losses:
            for size in sizes:
                r = measure(size, beta_loss, args.repeats, args.max_iter)
                results.append(r)
                print(f"{size:>11} {beta_loss:>16}: dnmf {r['dnmf_best']:.3f} s "
                      f"({r['dnmf_solver']}, iterations {r['dnmf_iterations']}) / "
                      f"scikit-learn {r['sklearn_best']:.3f} s = {r['ratio']:.2f} "
                      f"(target ≤ {r['target_ratio']}; load {load():.1f})", flush=True)
    print()
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "blas_threads": args.blas_threads,
                       "kl_solver": args.kl_solver,
                       "argv": sys.argv[1:]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
