"""Out of core: fit a Zarr V larger than the memory budget, checkpoint, interrupt, resume.

Writes a V (float32, a planted rank-10 product plus noise) to a Zarr v3 array on
disk, a few times larger than a configured budget (at scale 1: V ≈ 200 MB, panels
of ≈ 64 MB), one panel at a time so V is never whole in memory. Then:

1. fits it with ``out=`` (a run store on disk for W, H and the fit's state) and
   ``checkpoint_every=``, printing seconds per iteration and the process's peak RSS;
2. fits it again into a second run store, interrupted part-way (a callback stops
   it, as Ctrl-C would), and continues that run with :func:`dnmf.resume`;
3. shows that the resumed run ends at the same loss as the uninterrupted one.

    python examples/out_of_core.py --out /tmp/figs [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import warnings
from typing import Any

import numpy as np

import dnmf
from dnmf.testing import peak_rss

MB = 1 << 20
K = 10


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return peak_rss() / MB


def write_v(path: str, n: int, m: int, panel_rows: int, seed: int = 0) -> Any:
    """A planted low-rank V written panel by panel to a Zarr v3 array."""
    import zarr

    rng = np.random.default_rng(seed)
    H = rng.random((K, m)).astype(np.float32)
    z = zarr.create_array(store=path, shape=(n, m), chunks=(panel_rows, m),
                          dtype="float32", overwrite=True)
    for a in range(0, n, panel_rows):
        b = min(n, a + panel_rows)
        W = rng.random((b - a, K)).astype(np.float32)
        z[a:b] = W @ H + 0.1 * rng.random((b - a, m), dtype=np.float32)
    return z


class _Interrupt(KeyboardInterrupt):
    """Raised from the callback: the fit stops as on Ctrl-C and stays resumable."""


def main(out_dir: str | os.PathLike[str], scale: float = 1.0) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    work = os.path.join(out_dir, "out_of_core_data")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    m = 1000
    budget = max(1 * MB, int(64 * MB * scale))
    panel_rows = budget // (4 * m)
    n = int(200 * MB * scale) // (4 * m)
    max_iter, every, stop_at = 8, 2, 3

    t0 = time.perf_counter()
    v_path = os.path.join(work, "V.zarr")
    write_v(v_path, n, m, panel_rows)
    v_mb = n * m * 4 / MB
    print(f"V: {n}×{m} float32 = {v_mb:.0f} MB in {v_path} "
          f"({n // panel_rows + (n % panel_rows > 0)} panels of {panel_rows} rows ≈ "
          f"{panel_rows * m * 4 / MB:.0f} MB; budget {budget / MB:.0f} MB), "
          f"written in {time.perf_counter() - t0:.1f} s")

    params = dict(max_iter=max_iter, tol=0.0, random_state=0, panel_rows=panel_rows,
                  checkpoint_every=every, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        # 1. Uninterrupted fit into a run store.
        full_path = os.path.join(work, "run_full")
        t0 = time.perf_counter()
        est = dnmf.NMF(K, out=full_path, **params)
        est.fit(v_path)
        sec_per_iter = (time.perf_counter() - t0) / est.n_iter_
        rss = peak_rss_mb()
        full = dnmf.open_run(full_path)
        print(f"full fit: {full.iteration} iterations, {sec_per_iter:.2f} s/iteration, "
              f"peak RSS {rss:.0f} MB (V is {v_mb:.0f} MB), final loss "
              f"{full.loss_history[-1]:.6g}")

        # 2. The same fit, interrupted after `stop_at` iterations, then resumed.
        part_path = os.path.join(work, "run_resumed")

        def interrupt(iteration: int, loss: float) -> bool:
            if iteration >= stop_at:
                raise _Interrupt
            return False

        try:
            dnmf.NMF(K, out=part_path, callback=interrupt, **params).fit(v_path)
        except _Interrupt:
            pass
        stopped = dnmf.open_run(part_path)
        print(f"interrupted: {stopped}")
        resumed = dnmf.resume(part_path)
        print(f"resumed:     {resumed}")
    diff = abs(resumed.loss_history[-1] - full.loss_history[-1]) / full.loss_history[-1]
    print(f"final loss: uninterrupted {full.loss_history[-1]:.6g}, interrupted + resumed "
          f"{resumed.loss_history[-1]:.6g} (relative difference {diff:.1e})")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    it = np.arange(1, len(full.loss_history) + 1)
    ax.semilogy(it, full.loss_history, "o-", color="C0", label="uninterrupted")
    ax.semilogy(it, resumed.loss_history, "x--", color="C1", ms=8,
                label="interrupted + dnmf.resume")
    ax.axvline(stopped.iteration, color="k", ls=":", lw=1)
    ax.annotate(f"interrupted (last checkpoint: iteration {stopped.iteration})",
                (stopped.iteration, full.loss_history[stopped.iteration - 1]),
                xytext=(10, 20), textcoords="offset points", fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss ½‖V − WH‖²")
    ax.set_title(f"V {v_mb:.0f} MB on disk, {panel_rows * m * 4 / MB:.0f} MB panels: "
                 f"{sec_per_iter:.2f} s/it, peak RSS {rss:.0f} MB", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(out_dir, "out_of_core.png")
    fig.savefig(png, dpi=80)
    plt.close(fig)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {png}")
    return {"png": png, "v_mb": v_mb, "peak_rss_mb": rss, "sec_per_iter": sec_per_iter,
            "full_loss": full.loss_history[-1], "resumed_loss": resumed.loss_history[-1],
            "interrupted_at": stopped.iteration, "relative_difference": diff}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples_out", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0, help="problem size factor")
    args = parser.parse_args()
    main(args.out, args.scale)
