"""Sparse V: dnmf against scikit-learn on CSR input, and peak memory from a CSR Zarr store.

V (n × m, density d) holds, at randomly sampled places, the entries of a planted
rank-20 product W·H (plus a little noise); it is built by row blocks, computing W·H
only at the sampled entries, so the dense product never exists. k = 20.

* scikit-learn ``NMF(solver="cd", max_iter=200, tol=0)`` is timed (init included) and
  its loss ``½‖V − WH‖²`` computed exactly; dnmf ``NMF(solver="hals")`` is timed, init
  included, until its loss first reaches it (target: ≤ 0.5 × scikit-learn's time).
* scikit-learn and dnmf ``solver="mu", beta_loss="kullback-leibler"`` run a fixed number
  of iterations; time per iteration (whole fit / iterations, init included; target:
  dnmf ≤ 0.5 ×).
* the same V written as a CSR Zarr group is fitted by dnmf with ``out=`` set in a child
  process; its own peak RSS (``dnmf.testing.peak_rss``, VmHWM: ``getrusage`` would
  include this parent's) is reported next to V's size.

Usage::

    python benchmarks/bench_sparse.py                 # 200000 × 20000, density 0.1 %
    python benchmarks/bench_sparse.py --scale 0.25    # 50000 × 5000
    python benchmarks/bench_sparse.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp


def make_sparse(n: int, m: int, density: float, k: int = 20, seed: int = 0,
                block: int = 20000) -> sp.csr_matrix:
    """mask ∘ (W·H) + noise at the mask, by row blocks (never the dense product)."""
    rng = np.random.default_rng(seed)
    W = rng.random((n, k))
    H = rng.random((k, m)) * (rng.random((k, m)) < 0.3)  # sparse-ish topics
    parts = []
    for a in range(0, n, block):
        b = min(a + block, n)
        per_row = rng.binomial(m, density, size=b - a)
        rows = np.repeat(np.arange(b - a), per_row)
        cols = rng.integers(0, m, size=rows.size)
        vals = np.einsum("ij,ji->i", W[a + rows], H[:, cols]) + 0.01 * rng.random(rows.size)
        parts.append(sp.csr_matrix((vals, (rows, cols)), shape=(b - a, m)))  # sums repeats
    V = sp.vstack(parts, format="csr")
    V.sum_duplicates()
    return V


def frobenius(V: sp.csr_matrix, W: np.ndarray, H: np.ndarray, norm_sq: float) -> float:
    """½‖V − WH‖² without forming WH."""
    cross = float(np.sum(np.asarray(V @ H.T) * W))
    return 0.5 * max(norm_sq - 2 * cross + float(np.sum((W.T @ W) * (H @ H.T))), 0.0)


def bench_hals_vs_cd(V: sp.csr_matrix, k: int, max_iter: int) -> dict[str, Any]:
    from sklearn.decomposition import NMF as SkNMF

    import dnmf

    norm_sq = float(V.data @ V.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sk = SkNMF(k, solver="cd", max_iter=max_iter, tol=0.0, random_state=0,
                   init="nndsvda")
        W = sk.fit_transform(V)
        sk_time = time.perf_counter() - t
    target = frobenius(V, W, sk.components_, norm_sq)
    losses: list[float] = []

    def callback(iteration: int, value: float) -> bool:
        losses.append(value)
        return value <= target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        est = dnmf.NMF(k, solver="hals", max_iter=3 * max_iter, tol=0.0, random_state=0,
                       init="nndsvda", callback=callback, scheduler="threads")
        Wd = est.fit_transform(V)
        dn_time = time.perf_counter() - t
    reached = frobenius(V, np.asarray(Wd), est.components_, norm_sq)
    return {"sklearn_seconds": sk_time, "sklearn_iterations": int(sk.n_iter_),
            "target_loss": target, "dnmf_seconds": dn_time, "dnmf_iterations": len(losses),
            "dnmf_loss": reached, "reached": bool(losses and losses[-1] <= target),
            "ratio": dn_time / sk_time}


def bench_kl(V: sp.csr_matrix, k: int, iters: int) -> dict[str, Any]:
    from sklearn.decomposition import NMF as SkNMF

    import dnmf

    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make in (
            ("sklearn", lambda it: SkNMF(k, solver="mu", beta_loss="kullback-leibler",
                                         max_iter=it, tol=0.0, random_state=0,
                                         init="nndsvda")),
            ("dnmf", lambda it: dnmf.NMF(k, solver="mu", beta_loss="kullback-leibler",
                                         max_iter=it, tol=0.0, random_state=0,
                                         init="nndsvda", scheduler="threads")),
        ):
            make(1).fit(V)  # warm-up: first-call costs out of the clock
            # Whole fit / iterations (init included: robust on a shared machine,
            # where the difference of two runs can come out negative).
            t = time.perf_counter()
            make(iters).fit(V)
            out[f"{name}_per_iter"] = (time.perf_counter() - t) / iters
    out["ratio"] = out["dnmf_per_iter"] / out["sklearn_per_iter"]
    out["iterations"] = iters
    return out


CHILD = """
import sys, warnings, dnmf
from dnmf.testing import peak_rss
warnings.simplefilter("ignore")
path, out, k, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dnmf.NMF(k, solver="mu", beta_loss="kullback-leibler", max_iter=iters, tol=0.0,
         random_state=0, out=out, scheduler="threads", cache=False).fit(path)
print(peak_rss())
"""


def bench_store_rss(V: sp.csr_matrix, k: int, iters: int) -> dict[str, Any]:
    from dnmf.io import write_csr_zarr

    with tempfile.TemporaryDirectory() as d:
        path = write_csr_zarr(V, os.path.join(d, "v.zarr"))
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, path, os.path.join(d, "run.zarr"),
                               str(k), str(iters)], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t
    peak = int(proc.stdout.strip().splitlines()[-1])
    v_bytes = V.data.nbytes + V.indices.nbytes + V.indptr.nbytes
    return {"peak_rss_bytes": peak, "v_bytes": v_bytes, "seconds": seconds,
            "iterations": iters}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| measure | scikit-learn | dnmf | dnmf / sklearn | target |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['sklearn']} | {r['dnmf']} | {r['ratio']} | "
                     f"{r['target']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200000)
    parser.add_argument("--m", type=int, default=20000)
    parser.add_argument("--density", type=float, default=0.001)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply n and m by this (density kept)")
    parser.add_argument("--max-iter", type=int, default=200, help="scikit-learn cd iterations")
    parser.add_argument("--kl-iter", type=int, default=20, help="timed KL iterations")
    parser.add_argument("--quick", action="store_true", help="small (20000 × 2000), < 1 min")
    parser.add_argument("--json", dest="json_out", help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.max_iter, args.kl_iter = min(args.scale, 0.1), 50, 5
    n, m = int(args.n * args.scale), int(args.m * args.scale)
    t = time.perf_counter()
    V = make_sparse(n, m, args.density, args.k)
    build = time.perf_counter() - t
    print(f"V: {n} × {m}, {V.nnz} stored entries (density {V.nnz / (n * m):.4%}), "
          f"built in {build:.1f} s", flush=True)
    hals = bench_hals_vs_cd(V, args.k, args.max_iter)
    print("hals vs cd:", hals, flush=True)
    kl = bench_kl(V, args.k, args.kl_iter)
    print("KL mu:", kl, flush=True)
    rss = bench_store_rss(V, args.k, args.kl_iter)
    print("CSR Zarr + out=:", rss, flush=True)
    rows = [
        {"measure": f"Frobenius: time to sklearn-cd loss after {args.max_iter} it "
                    f"(init incl.)",
         "sklearn": f"{hals['sklearn_seconds']:.2f} s",
         "dnmf": f"{hals['dnmf_seconds']:.2f} s (hals, {hals['dnmf_iterations']} it"
                 f"{'' if hals['reached'] else ', NOT reached'})",
         "ratio": f"{hals['ratio']:.2f}", "target": "≤ 0.5"},
        {"measure": "KL mu: time per iteration",
         "sklearn": f"{kl['sklearn_per_iter'] * 1e3:.0f} ms",
         "dnmf": f"{kl['dnmf_per_iter'] * 1e3:.0f} ms", "ratio": f"{kl['ratio']:.2f}",
         "target": "≤ 0.5"},
        {"measure": f"CSR Zarr, out=, KL {args.kl_iter} it: peak RSS (child process)",
         "sklearn": "—", "dnmf": f"{rss['peak_rss_bytes'] / 2**20:.0f} MiB (V: "
                                 f"{rss['v_bytes'] / 2**20:.0f} MiB)",
         "ratio": "—", "target": "—"},
    ]
    results = {"shape": [n, m], "nnz": int(V.nnz), "k": args.k, "scale": args.scale,
               "hals_vs_cd": hals, "kl_mu": kl, "store_rss": rss, "rows": rows,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "table": table(rows)}
    print(results["table"])
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
