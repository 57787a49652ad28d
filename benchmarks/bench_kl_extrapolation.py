"""Does extrapolation across iterations (Ang & Gillis 2019) help amu on KL? (issue 13)

A whole-matrix NumPy prototype, not dnmf's engine: iterations for amu (dnmf's KL
solver: :func:`dnmf._solvers._kl.relaxed_step` for W, then for H with scikit-learn's
``H[H < eps] = 0``) to reach the KL loss scikit-learn's mu reaches in 200 iterations,
from scikit-learn's NNDSVDa, with and without extrapolation. Iterations are counted,
not timed, so the load does not matter; a rejected (restarted) iteration counts, as it
costs a pass.

Extrapolation is HALS's scheme in dnmf/_extrapolation.py (W_y, H_y pushed along the
last move, β grown by γ after an accepted iterate, shrunk by η = 1.5 with a restart
from the last accepted one after a rise), in two forms:

* ``lin``: ``max(floor·X_n, X_n + β·(X_n − X_prev))``. With ``floor = 0`` (HALS's
  projection) the zeros it makes are fixed points of multiplicative steps;
  ``floor = 0.5`` keeps every entry at least half its unextrapolated value;
* ``geo``: ``X_n·(X_n / X_prev)^β``, the push in log space, positive by construction;

and two acceptance tests: ``free``, the loss of (W_y, H_n) that a pass would give
(as dnmf's HALS extrapolation uses), and ``oracle``, the loss of (W_n, H_n), which
would cost one more product per pass (an upper bound of what a free test could gain).

Usage::

    python benchmarks/bench_kl_extrapolation.py                 # 300x100, 1797x64, 2000x500
    python benchmarks/bench_kl_extrapolation.py --sizes 300x100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EPS = 1e-16  # dnmf's and scikit-learn's floor of WH
EPS64 = float(np.finfo(np.float64).eps)
K = 10
#: (β₀, γ, γ̄): Ang & Gillis's HALS setting, dnmf's ALS setting, a timid and a bold one.
SCHEDULES = ((0.5, 1.05, 1.01), (0.5, 1.1, 1.05), (0.3, 1.01, 1.005), (0.8, 1.1, 1.05))
VARIANTS = (("lin", 0.0), ("lin", 0.5), ("geo", 0.0))


def kl(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
    WH = np.maximum(W @ H, EPS)
    keep = V > EPS
    return float(np.sum(V[keep] * np.log(V[keep] / WH[keep])) - V.sum() + WH.sum())


def w_step(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    from dnmf._solvers._kl import relaxed_step

    R = V / np.maximum(W @ H, EPS)
    return relaxed_step(W, R @ H.T, H.sum(axis=1)[np.newaxis, :], 0.0, 0.0)


def h_step(V: np.ndarray, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    from dnmf._solvers._kl import relaxed_step

    R = V / np.maximum(W @ H, EPS)
    H_new = relaxed_step(H, W.T @ R, W.sum(axis=0)[:, np.newaxis], 0.0, 0.0)
    H_new[H_new < EPS64] = 0.0
    return H_new


def push(X_new: np.ndarray, X_prev: np.ndarray, beta: float, form: str,
         floor: float) -> np.ndarray:
    if form == "lin":
        return np.maximum(X_new + beta * (X_new - X_prev), floor * X_new)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(X_prev > 0, X_new / X_prev, 1.0)
    return X_new * ratio ** beta


def iterations(V: np.ndarray, W: np.ndarray, H: np.ndarray, target: float, *,
               form: str | None = None, floor: float = 0.0, schedule: tuple = (0.5, 1.05, 1.01),
               oracle: bool = False, max_iter: int = 400) -> int | None:
    """Passes until the recorded loss reaches ``target`` (None: not in ``max_iter``)."""
    beta0, gamma, gamma_bar = schedule
    W_prev, H_prev, W_y, H_y = W, H, W, H
    beta, beta_bar = (beta0 if form else 0.0), 1.0
    best = kl(V, W, H)
    for it in range(1, max_iter + 1):
        W_n = w_step(V, W_y, H_y)
        W_x = push(W_n, W_prev, beta, form, floor) if form else W_n
        H_n = h_step(V, W_x, H_y)
        loss = kl(V, W_n if oracle else W_x, H_n)
        if loss <= target:
            return it
        if form and loss > best:  # restart from the last accepted iterate
            W_y, H_y = W_prev, H_prev
            beta_bar, beta = beta, beta / 1.5
            continue
        best = min(best, loss)
        H_x = push(H_n, H_prev, beta, form, floor) if form else H_n
        W_prev, H_prev, W_y, H_y = W_x, H_n, W_x, H_x
        if form:
            beta, beta_bar = min(beta_bar, gamma * beta), min(1.0, gamma_bar * beta_bar)
    return None


def main(argv: list[str] | None = None) -> int:
    import bench_sizes
    from sklearn.decomposition._nmf import _initialize_nmf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300x100,1797x64,2000x500")
    parser.add_argument("--max-iter", type=int, default=400)
    parser.add_argument("--quick", action="store_true",
                        help="one small matrix (300 x 100) and at most 200 iterations")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.max_iter = "300x100", min(args.max_iter, 200)
    warnings.simplefilter("ignore")
    results: list[dict[str, Any]] = []
    for size in args.sizes.split(","):
        V = bench_sizes.data(size)
        sk = bench_sizes.sklearn_fit(V, "kullback-leibler")
        target = bench_sizes.exact_loss(V, sk["W"], sk["H"], "kullback-leibler")
        W0, H0 = _initialize_nmf(V, K, init="nndsvda", random_state=0)
        row: dict[str, Any] = {"size": size, "amu": iterations(V, W0, H0, target,
                                                                max_iter=args.max_iter)}
        for form, floor in VARIANTS:
            for schedule in SCHEDULES:
                for oracle in (False, True):
                    name = (f"{form} floor={floor} beta0={schedule[0]} gamma={schedule[1]} "
                            f"{'oracle' if oracle else 'free'}")
                    row[name] = iterations(V, W0, H0, target, form=form, floor=floor,
                                           schedule=schedule, oracle=oracle,
                                           max_iter=args.max_iter)
        results.append(row)
        best = min((v for k, v in row.items() if k not in ("size", "amu") and v), default=None)
        print(f"{size}: amu {row['amu']} iterations; best extrapolated variant {best} "
              f"(None: not reached in {args.max_iter})", flush=True)
        for name, value in row.items():
            if name not in ("size", "amu"):
                print(f"    {name:55s} {value}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
