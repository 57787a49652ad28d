"""Peak memory of a sparse fit against the number of rows: it must not grow with n.

CSR Zarr groups of n rows × m columns (density d, values at random columns) are
written once under ``--data-dir`` for each n in ``--rows``. Each is fitted by
``dnmf.NMF(k, solver="mu", beta_loss="kullback-leibler", out=..., panel_bytes=P)``
(KL is the most memory-hungry solver: it also holds W·H at every stored entry) in a
child process, which reports its own peak RSS (``dnmf.testing.peak_rss``: VmHWM;
``getrusage`` would include this parent's peak). The peer in the
same run is the *read floor*: a child that imports dnmf (as the fit does) and reads
the largest panel of the largest V once, nothing else.

Printed per n: V's stored bytes, panels, peak RSS, peak ÷ the smallest n's peak
(target: about 1, i.e. memory bounded by panels in flight, independent of n) and
peak ÷ the read floor.

Usage::

    python benchmarks/bench_sparse_memory.py                 # 0.4M–3.2M rows, ~6 min
    python benchmarks/bench_sparse_memory.py --quick         # 50k–400k rows, ~1 min
    MALLOC_TRIM_THRESHOLD_=65536 python benchmarks/bench_sparse_memory.py  # glibc returns
                                                       # freed memory promptly (see docs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

CHILD_FIT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import dnmf
from dnmf.testing import peak_rss
path, out, k, iters, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \\
    int(sys.argv[5])
dnmf.NMF(k, solver="mu", beta_loss="kullback-leibler", max_iter=iters, tol=0.0,
         random_state=0, out=out, scheduler="threads", panel_bytes=budget,
         cache=False).fit(path)
run = dnmf.open_run(out)
print(json.dumps({"peak": peak_rss(),
                  "panels": len(run.bounds),
                  "rows": [b - a for a, b in run.bounds]}))
"""

CHILD_FLOOR = """
import json, sys, warnings
warnings.simplefilter("ignore")
import dnmf
from dnmf.testing import peak_rss
from dnmf._backend import get_backend
from dnmf._source import as_source, load_panel
path, budget = sys.argv[1], int(sys.argv[2])
source = as_source(path)
bounds = source.panel_bounds(None, get_backend("threads").n_threads, budget)
import numpy as np
entries = np.diff(source.offsets(np.asarray(bounds)), axis=1)[:, 0]
largest = int(np.argmax(entries))
V = load_panel(source.panel_refs([bounds[largest]])[0])
print(json.dumps({"peak": peak_rss(),
                  "nnz": int(V.nnz)}))
"""


def make_csr(path: str, n: int, m: int, density: float, seed: int = 0,
             block: int = 200_000) -> None:
    """A CSR Zarr group of n × m, about ``density·m`` entries per row, by row blocks."""
    import scipy.sparse as sp

    from dnmf.io import write_csr_zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        return
    rng = np.random.default_rng(seed)
    parts = []
    for a in range(0, n, block):
        b = min(a + block, n)
        per_row = rng.poisson(m * density, b - a)
        indptr = np.concatenate([[0], np.cumsum(per_row)])
        indices = rng.integers(0, m, indptr[-1]).astype(np.int32)
        data = (rng.random(indptr[-1], dtype=np.float32) + 0.01).astype(np.float32)
        part = sp.csr_matrix((data, indices, indptr), shape=(b - a, m))
        part.sum_duplicates()
        parts.append(part)
    V = sp.vstack(parts, format="csr")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_csr_zarr(V, tmp, chunk_nnz=1 << 20)
    os.replace(tmp, path)


def child(code: str, *args: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stored_bytes(path: str) -> int:
    from dnmf._source import as_source

    group = as_source(path).data
    return int(group.nnz) * int(group.bytes_per_entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="400000,800000,1600000,3200000",
                        help="comma-separated row counts")
    parser.add_argument("--m", type=int, default=20000)
    parser.add_argument("--density", type=float, default=0.001)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--panel-mib", type=float, default=16.0,
                        help="panel_bytes of the fits, in MiB")
    parser.add_argument("--quick", action="store_true", help="50k–400k rows, ~1 min")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(),
                                                           "dnmf-bench-sparse-memory"))
    parser.add_argument("--json", dest="json_out", help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.panel_mib = "50000,100000,200000,400000", 2.0
    rows = [int(r) for r in args.rows.split(",")]
    budget = int(args.panel_mib * 2**20)
    os.makedirs(args.data_dir, exist_ok=True)
    results = []
    for n in rows:
        path = os.path.join(args.data_dir, f"v-{n}x{args.m}-{args.density}.zarr")
        t = time.perf_counter()
        make_csr(path, n, args.m, args.density)
        out = tempfile.mkdtemp(prefix="run-", dir=args.data_dir)
        try:
            t = time.perf_counter()
            fit = child(CHILD_FIT, path, os.path.join(out, "run.zarr"), args.k, args.iters,
                        budget)
            seconds = time.perf_counter() - t
        finally:
            shutil.rmtree(out, ignore_errors=True)
        results.append({"n": n, "v_bytes": stored_bytes(path), "panels": fit["panels"],
                        "largest_panel_rows": max(fit["rows"]), "peak_rss_bytes": fit["peak"],
                        "seconds": seconds})
        print(results[-1], flush=True)
    floor = child(CHILD_FLOOR, path, budget)
    base = results[0]["peak_rss_bytes"]
    lines = ["| rows | V stored | panels | peak RSS | ÷ smallest n | ÷ read floor |",
             "|---|---|---|---|---|---|"]
    for r in results:
        r["ratio_to_smallest"] = r["peak_rss_bytes"] / base
        r["ratio_to_floor"] = r["peak_rss_bytes"] / floor["peak"]
        lines.append(f"| {r['n']:,} | {r['v_bytes'] / 2**20:.0f} MiB | {r['panels']} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} MiB | {r['ratio_to_smallest']:.2f} | "
                     f"{r['ratio_to_floor']:.2f} |")
    env = {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}
    table = "\n".join(lines)
    print(f"KL-MU, k = {args.k}, {args.iters} iterations, panel_bytes = {args.panel_mib:g} "
          f"MiB, 2 threads; read floor (import dnmf + read the largest panel): "
          f"{floor['peak'] / 2**20:.0f} MiB; allocator settings: {env or 'glibc defaults'}")
    print(table)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"rows": results, "floor_peak_rss_bytes": floor["peak"],
                       "panel_bytes": budget, "k": args.k, "m": args.m,
                       "density": args.density, "iterations": args.iters, "malloc_env": env,
                       "machine": {"cpus": os.cpu_count(),
                                   "python": platform.python_version()},
                       "table": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
