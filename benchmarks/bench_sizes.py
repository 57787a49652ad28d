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

Frobenius compares dnmf's ``--frobenius-solvers`` (default ``hals``, dnmf's default,
which extrapolates, and ``hals-plain``, ``extrapolate=False``; ``hals+ex`` is
``extrapolate=True``) with scikit-learn's ``solver="cd"``; KL compares
each of dnmf's KL solvers (``--kl-solvers``, default ``mu`` and ``amu``) with
scikit-learn's ``solver="mu"``, all chasing the same target loss ``L``. Targets
(issue 13): Frobenius ≤ 1.0 at 300 × 100 and 1797 × 64, ≤ 0.3 from 2000 × 500 up;
KL ≤ 0.5 everywhere, ≤ 0.25 from 2000 × 500 up.

The 1797 × 64 matrix is scikit-learn's digits; the others are a planted rank-10
factorization plus noise (:func:`dnmf.testing.planted`, seed 0). Both libraries run
with the BLAS threads they choose themselves unless ``--blas-threads`` sets them for
both (one BLAS thread is what dnmf uses on data under 4 MiB).

Usage::

    python benchmarks/bench_sizes.py                       # the four sizes, best of 3
    python benchmarks/bench_sizes.py --quick               # the two small sizes
    python benchmarks/bench_sizes.py --sizes 300x100 --losses frobenius --json out.json
    python benchmarks/bench_sizes.py --sizes 50000x5000@0.001 --losses kullback-leibler

A size ``NxM@D`` is a CSR V of density D instead (bench_sparse.py's planted sparse
matrix, with k = 10 here), fitted as CSR by both libraries. ``--source zarr`` fits
dnmf from a Zarr store of the same V on disk (dense in row chunks, or dnmf's CSR
layout: :func:`dnmf.io.write_csr_zarr`), so the time includes opening and reading it
every pass; scikit-learn still fits from memory::

    python benchmarks/bench_sizes.py --sizes 2000x500,10000x1000 --losses kullback-leibler \
        --kl-solvers amu --source zarr
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

SIZES = ["300x100", "1797x64", "2000x500", "10000x1000"]
QUICK_SIZES = ["300x100", "1797x64"]
K = 10
SK_MAX_ITER = 200
TARGETS = {"frobenius": {"small": 1.0, "large": 0.3}, "kullback-leibler": {"small": 0.5,
                                                                          "large": 0.25}}
SK_SOLVER = {"frobenius": "cd", "kullback-leibler": "mu"}
#: dnmf's solvers for KL (``--kl-solvers``), each measured against scikit-learn's mu.
KL_SOLVERS = ("mu", "amu")
#: dnmf's solvers for Frobenius (``--frobenius-solvers``), against scikit-learn's cd:
#: HALS as it is by default (extrapolate="auto"), and plain.
FROBENIUS_SOLVERS = ("hals", "hals-plain")


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def shape_of(size: str) -> tuple[int, int]:
    n, m = (int(x) for x in size.lower().split("@")[0].split("x"))
    return n, m


def data(size: str) -> Any:
    """V for ``size``: "NxM" dense, "NxM@D" CSR of density D (bench_sparse's planted
    sparse matrix, k = 10)."""
    n, m = shape_of(size)
    if "@" in size:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_sparse import make_sparse

        return make_sparse(n, m, float(size.split("@")[1]), k=K)
    if (n, m) == (1797, 64):
        from sklearn.datasets import load_digits

        return np.ascontiguousarray(load_digits().data, dtype=np.float64)
    from dnmf.testing import planted

    V, _, _ = planted(n, m, K, seed=0, noise=0.1)
    return V


def exact_loss(V: np.ndarray, W: np.ndarray, H: np.ndarray, beta_loss: str) -> float:
    """½‖V − WH‖² or D_KL(V ‖ WH), in float64, as dnmf's ``loss_history_`` defines them.

    KL: Σ v·log(v / wh) + Σ wh − Σ v over the entries with v > eps (scikit-learn's
    ``_beta_divergence`` rule), wh floored at eps inside the log only, Σ wh from the
    column sums of W and the row sums of H — the value dnmf's callback receives, so
    the target means the same thing on both sides.
    """
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    if sp.issparse(V):
        return _exact_loss_sparse(V, W, H, beta_loss)
    WH = W @ H
    if beta_loss == "frobenius":
        R = V - WH
        return 0.5 * float(np.einsum("ij,ij->", R, R))
    eps = float(np.finfo(np.float32).eps)
    keep = V > eps
    x, wh = V[keep], np.maximum(WH[keep], eps)
    return float(np.dot(x, np.log(x / wh)) + W.sum(axis=0) @ H.sum(axis=1) - x.sum())


def _exact_loss_sparse(V: Any, W: np.ndarray, H: np.ndarray, beta_loss: str) -> float:
    """:func:`exact_loss` of a CSR V, from W·H at the stored entries (row blocks)."""
    V = sp.csr_matrix(V, dtype=np.float64)
    rows = np.repeat(np.arange(V.shape[0]), np.diff(V.indptr))
    wh = np.empty(V.nnz)
    for a in range(0, V.nnz, 1 << 18):
        b = min(a + (1 << 18), V.nnz)
        wh[a:b] = np.einsum("ij,ji->i", W[rows[a:b]], H[:, V.indices[a:b]])
    x = V.data
    if beta_loss == "frobenius":
        cross = float(np.dot(x, wh))
        return 0.5 * (float(np.dot(x, x)) - 2 * cross + float(np.sum((W.T @ W) * (H @ H.T))))
    eps = float(np.finfo(np.float32).eps)
    keep = x > eps
    return float(np.dot(x[keep], np.log(x[keep] / np.maximum(wh[keep], eps)))
                 + W.sum(axis=0) @ H.sum(axis=1) - x[keep].sum())


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


def dnmf_fit(V: np.ndarray, beta_loss: str, target: float, max_iter: int,
             solver: str) -> dict[str, Any]:
    import dnmf

    reached: list[int] = []

    def stop(iteration: int, loss: float) -> bool:
        if loss <= target:
            reached.append(iteration)
            return True
        return False

    params: dict[str, Any] = {"beta_loss": beta_loss}
    # "hals": dnmf's default (extrapolate="auto"); "hals+ex": extrapolate=True;
    # "hals-plain": extrapolate=False (the same for als).
    name = solver.removesuffix("+ex").removesuffix("-plain")
    params["solver"] = name
    if solver.endswith("+ex"):
        params["extrapolate"] = True
    elif solver.endswith("-plain"):
        params["extrapolate"] = False
    model = dnmf.NMF(K, init="nndsvda", max_iter=max_iter, tol=0.0, random_state=0,
                     callback=stop, scheduler="threads", **params)
    before = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(V)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": int(model.n_iter_), "reached": bool(reached),
            "solver": solver, "final_loss": float(model.loss_history_[-1]),
            "load": [before, load()]}


def target_of(size: str, beta_loss: str) -> float:
    n, m = shape_of(size)
    return TARGETS[beta_loss]["large" if n * m >= 2000 * 500 else "small"]


def to_zarr(V: Any, directory: str) -> str:
    """V written as a Zarr store in ``directory``: CSR (dnmf's CSR layout) for sparse
    V, a dense array in row chunks of about 32 MiB otherwise."""
    if sp.issparse(V):
        from dnmf.io import write_csr_zarr

        return str(write_csr_zarr(sp.csr_matrix(V), os.path.join(directory, "v.zarr")))
    import zarr

    path = os.path.join(directory, "v.zarr")
    rows = max(1, min(V.shape[0], (32 << 20) // (8 * V.shape[1])))
    z = zarr.create_array(path, shape=V.shape, chunks=(rows, V.shape[1]), dtype=V.dtype)
    z[:] = V
    return path


def measure(size: str, beta_loss: str, repeats: int, max_iter: int,
            solvers: list[str], source: str = "memory") -> list[dict[str, Any]]:
    """One row per dnmf solver, all against the same scikit-learn runs.

    Per repeat: scikit-learn, then each dnmf solver (interleaved), so a change of
    the machine's load hits every side alike. ``source="zarr"``: dnmf fits V from a
    Zarr store on disk (its path: opening and reading it are in dnmf's time),
    scikit-learn from memory.
    """
    V = data(size)
    if source == "zarr":
        with tempfile.TemporaryDirectory() as d:
            return _measure(size, V, to_zarr(V, d), beta_loss, repeats, max_iter, solvers,
                            source)
    return _measure(size, V, V, beta_loss, repeats, max_iter, solvers, source)


def _measure(size: str, V: Any, X: Any, beta_loss: str, repeats: int, max_iter: int,
             solvers: list[str], source: str) -> list[dict[str, Any]]:
    sk_runs: list[dict[str, Any]] = []
    dn_runs: dict[str, list[dict[str, Any]]] = {s: [] for s in solvers}
    target_loss = None
    # Warm-up (imports, numba's cache, first-touch of V) outside the timings.
    for solver in solvers:
        dnmf_fit(V[: min(V.shape[0], 200)], beta_loss, 0.0, 2, solver)
        if source == "zarr":
            dnmf_fit(X, beta_loss, 0.0, 1, solver)
    for _ in range(repeats):
        sk = sklearn_fit(V, beta_loss)
        if target_loss is None:
            target_loss = exact_loss(V, sk["W"], sk["H"], beta_loss)
        sk_runs.append({key: sk[key] for key in ("seconds", "iterations", "load")})
        for solver in solvers:
            dn_runs[solver].append(dnmf_fit(X, beta_loss, target_loss, max_iter, solver))
    assert target_loss is not None
    sk_best = min(r["seconds"] for r in sk_runs)
    rows = []
    for runs in dn_runs.values():
        reached = [r for r in runs if r["reached"]]
        dn_best = min(r["seconds"] for r in reached) if reached else math.inf
        rows.append({
            "size": size, "source": source, "beta_loss": beta_loss, "shape": list(V.shape), "k": K,
            "sklearn_solver": SK_SOLVER[beta_loss], "dnmf_solver": runs[0]["solver"],
            "target_loss": target_loss, "sklearn": sk_runs, "dnmf": runs,
            "sklearn_best": sk_best, "dnmf_best": dn_best, "ratio": dn_best / sk_best,
            "target_ratio": target_of(size, beta_loss),
            "dnmf_iterations": [r["iterations"] for r in runs],
        })
    return rows


def _column(beta_loss: str, solver: str) -> str:
    if beta_loss == "frobenius":
        return f"{solver} vs scikit-learn cd"
    return f"KL: {solver} vs scikit-learn mu"


def table(results: list[dict[str, Any]]) -> str:
    sizes = list(dict.fromkeys(r["size"] for r in results))
    columns = list(dict.fromkeys((r["beta_loss"], r["dnmf_solver"]) for r in results))
    by = {(r["size"], r["beta_loss"], r["dnmf_solver"]): r for r in results}
    head = "| V | " + " | ".join(_column(b, s) for b, s in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for size in sizes:
        cells = []
        for b, solver in columns:
            r = by.get((size, b, solver))
            if r is None:
                cells.append("")
                continue
            ok = "" if r["ratio"] <= r["target_ratio"] else " ✗"
            loads = [x for run in r["sklearn"] + r["dnmf"] for x in run["load"]]
            cells.append(f"{r['ratio']:.2f}{ok} ({r['dnmf_best']:.3f} s / "
                         f"{r['sklearn_best']:.3f} s, load {min(loads):.1f}-{max(loads):.1f})")
        label = size.replace("x", " × ").replace("@", ", sparse, density ")
        if any(r.get("source") == "zarr" for r in results if r["size"] == size):
            label += " (dnmf from Zarr)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
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
    parser.add_argument("--kl-solvers", "--kl-solver", default=",".join(KL_SOLVERS),
                        help=f"comma-separated dnmf solvers for KL (default "
                             f"{','.join(KL_SOLVERS)!r})")
    parser.add_argument("--frobenius-solvers", default=",".join(FROBENIUS_SOLVERS),
                        help="comma-separated dnmf solvers for Frobenius (default "
                             f"{','.join(FROBENIUS_SOLVERS)!r}; '+ex' / '-plain' after a "
                             "name: extrapolate=True / False)")
    parser.add_argument("--source", choices=("memory", "zarr"), default="memory",
                        help="dnmf's V: in memory (default) or a Zarr store on disk "
                             "(scikit-learn's is in memory either way)")
    parser.add_argument("--quick", action="store_true", help="the two small sizes only")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    solvers = {"frobenius": [s.strip() for s in args.frobenius_solvers.split(",") if s.strip()],
               "kullback-leibler": [s.strip() for s in args.kl_solvers.split(",")
                                    if s.strip()]}
    sizes = QUICK_SIZES if args.quick else [s.strip() for s in args.sizes.split(",") if s]
    losses = [b.strip() for b in args.losses.split(",") if b.strip()]
    results = []
    with blas_threads(args.blas_threads):
        for beta_loss in losses:
            for size in sizes:
                for r in measure(size, beta_loss, args.repeats, args.max_iter,
                                 solvers[beta_loss], args.source):
                    results.append(r)
                    print(f"{size:>11} {beta_loss:>16}: dnmf {r['dnmf_best']:.3f} s "
                          f"({r['dnmf_solver']}, iterations {r['dnmf_iterations']}) / "
                          f"scikit-learn {r['sklearn_best']:.3f} s = {r['ratio']:.2f} "
                          f"(target ≤ {r['target_ratio']}; load {load():.1f})", flush=True)
    print()
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "table": table(results),
                       "blas_threads": args.blas_threads,
                       "solvers": solvers,
                       "argv": sys.argv[1:]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
