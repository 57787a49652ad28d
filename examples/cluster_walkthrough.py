"""A fit on a real (local) Dask cluster: start it, watch it, compare, stop it.

1. starts a scheduler and 2 worker processes × 1 thread on 127.0.0.1 with
   ``cluster/local/start_cluster.py`` (its importable ``start()`` / ``stop()``), and
   prints the dashboard link (open it to watch the panel tasks run);
2. writes a V (float64, a planted rank-10 product plus noise) to a Zarr v3 array,
   one panel per chunk;
3. fits it with ``scheduler=client`` and ``out=`` (a run store, checkpointed every few
   iterations), and reads the run back with :func:`dnmf.open_run`;
4. fits it again with the default threads scheduler, in this process, and compares
   the two: same loss (the same algorithm on the same panels), and the wall times;
5. stops the cluster (also on errors or Ctrl-C).

    python examples/cluster_walkthrough.py --out /tmp/figs [--scale 1.0]

On a real cluster (Docker, Kubernetes, SLURM: see cluster/README.md) only step 1
changes: connect the ``Client`` to that scheduler instead, and put V and the run
store where every worker can read them (a shared file system or an object store).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import dnmf

ROOT = Path(__file__).resolve().parent.parent
K = 10


def local_cluster_module() -> Any:
    """cluster/local/start_cluster.py, imported by path (it is a script, not a package)."""
    name = "dnmf_cluster_local"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "cluster" / "local" / "start_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_v(path: str, n: int, m: int, panel_rows: int, seed: int = 0) -> None:
    """A planted low-rank V written panel by panel to a Zarr v3 array."""
    import zarr

    rng = np.random.default_rng(seed)
    H = rng.random((K, m))
    z = zarr.create_array(store=path, shape=(n, m), chunks=(panel_rows, m), dtype="float64",
                          overwrite=True)
    for a in range(0, n, panel_rows):
        b = min(n, a + panel_rows)
        z[a:b] = rng.random((b - a, K)) @ H + 0.05 * rng.random((b - a, m))


def timed_fit(v_path: str, out: str, scheduler: Any, params: dict[str, Any]
              ) -> tuple[dnmf.NMF, list[float], float]:
    """Fit with ``scheduler``; the wall time after each iteration, and the total."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    est = dnmf.NMF(K, out=out, scheduler=scheduler,
                   callback=lambda i, loss: stamps.append(time.perf_counter() - t0), **params)
    est.fit(v_path)
    return est, stamps, time.perf_counter() - t0


def main(out_dir: str | os.PathLike[str], scale: float = 1.0) -> dict[str, Any]:
    import distributed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = os.path.abspath(os.fspath(out_dir))  # workers have their own cwd
    os.makedirs(out_dir, exist_ok=True)
    work = os.path.join(out_dir, "cluster_walkthrough_data")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    n, m = max(400, int(20_000 * scale)), 400
    panel_rows = max(50, n // 10)
    params = dict(solver="hals", max_iter=max(10, int(40 * scale)), tol=0.0, random_state=0,
                  panel_rows=panel_rows, checkpoint_every=5)

    v_path = os.path.join(work, "V.zarr")
    write_v(v_path, n, m, panel_rows)
    print(f"V: {n}×{m} float64 in {v_path} ({-(-n // panel_rows)} panels of {panel_rows} "
          f"rows, {n * m * 8 / 2**20:.0f} MB)")

    local = local_cluster_module()
    cluster_dir = os.path.join(work, "cluster")
    t0 = time.perf_counter()
    # port=0, dashboard_port=0: any free ports, so this never clashes with another cluster.
    info = local.start(cluster_dir, workers=2, threads_per_worker=1, port=0, dashboard_port=0)
    try:
        print(f"cluster up in {time.perf_counter() - t0:.1f} s: scheduler {info['address']}, "
              f"{info['n_workers']} workers × {info['threads_per_worker']} thread")
        print(f"dashboard: {info['dashboard_link'] or 'not available (pip install bokeh)'}")
        print(f"scheduler file: {info['scheduler_file']} (for `dnmf fit --scheduler-file`)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
            with distributed.Client(scheduler_file=info["scheduler_file"]) as client:
                est_c, t_c, sec_c = timed_fit(v_path, os.path.join(work, "run_cluster"),
                                              client, params)
            run = dnmf.open_run(os.path.join(work, "run_cluster"))
            print(f"cluster fit: {est_c.n_iter_} iterations in {sec_c:.2f} s; run store: {run}")
    finally:
        local.stop(cluster_dir)
        print("cluster stopped")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        est_t, t_t, sec_t = timed_fit(v_path, os.path.join(work, "run_threads"), "threads",
                                      params)
    print(f"threads fit: {est_t.n_iter_} iterations in {sec_t:.2f} s")
    loss_c, loss_t = run.loss_history[-1], est_t.loss_history_[-1]
    diff = abs(loss_c - loss_t) / loss_t
    h_diff = float(np.abs(run.H - est_t.components_).max() / np.abs(est_t.components_).max())
    print(f"final loss: cluster {loss_c:.8g}, threads {loss_t:.8g} (relative difference "
          f"{diff:.1e}; largest H difference {h_diff:.1e} of max H)")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.semilogy(t_c, run.loss_history, "o-", ms=3, label=f"2 workers × 1 thread ({sec_c:.1f} s)")
    ax.semilogy(t_t, est_t.loss_history_, "x--", ms=4, label=f"threads scheduler ({sec_t:.1f} s)")
    ax.set_xlabel("wall time since fit start (s)")
    ax.set_ylabel("loss ½‖V − WH‖²")
    ax.set_title(f"V {n}×{m} from Zarr, k = {K}, HALS: the same loss on a local cluster",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(out_dir, "cluster_walkthrough.png")
    fig.savefig(png, dpi=80)
    plt.close(fig)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {png}")
    return {"png": png, "dashboard_link": info["dashboard_link"],
            "cluster_seconds": sec_c, "threads_seconds": sec_t,
            "cluster_loss": loss_c, "threads_loss": loss_t, "relative_difference": diff,
            "H_difference": h_diff, "run_complete": run.complete,
            "iterations": (est_c.n_iter_, est_t.n_iter_)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples_out", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0, help="problem size factor")
    args = parser.parse_args()
    main(args.out, args.scale)
