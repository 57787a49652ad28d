"""Choosing the rank k: loss and explained variance over a range of k.

On data with a planted rank (``dnmf.testing.planted``: V = W·H + noise with k = 6),
fit NMF for k = 1 … 12 and plot the loss ‖V − WH‖ and the explained variance
1 − ‖V − WH‖² / ‖V − mean(V)‖². The curve falls steeply until the planted rank and
is flat after it; the elbow (the largest bend of log-loss) is marked.

    python examples/choose_rank.py --out /tmp/figs [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import numpy as np

import dnmf
from dnmf.testing import planted

PLANTED_K = 6


def elbow(ks: list[int], losses: list[float]) -> int:
    """The k where log-loss bends most: largest drop before it minus drop after it."""
    log = np.log(np.asarray(losses))
    drops = log[:-1] - log[1:]  # drops[i]: from ks[i] to ks[i + 1]
    bend = drops[:-1] - drops[1:]  # at ks[i + 1]
    return int(ks[int(np.argmax(bend)) + 1])


def main(out_dir: str | os.PathLike[str], scale: float = 1.0) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    n, m = max(100, int(1000 * scale)), max(40, int(200 * scale))
    V, _, _ = planted(n, m, PLANTED_K, seed=0, noise=0.05)
    total = float(((V - V.mean(axis=0)) ** 2).sum())
    ks = list(range(1, 2 * PLANTED_K + 1))
    losses, explained = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        for k in ks:
            est = dnmf.NMF(k, max_iter=max(60, int(200 * scale)), tol=1e-5, random_state=0)
            est.fit(V)
            err = est.reconstruction_err_
            losses.append(err)
            explained.append(1.0 - err**2 / total)
            print(f"k={k:2d}  loss {err:10.4f}  explained variance {explained[-1]:.4f}")
    k_hat = elbow(ks, losses)
    print(f"elbow at k={k_hat} (planted k={PLANTED_K})")

    fig, ax1 = plt.subplots(figsize=(6, 3.6))
    ax1.semilogy(ks, losses, "o-", color="C0", label="loss ‖V − WH‖")
    ax1.set_xlabel("k (n_components)")
    ax1.set_ylabel("loss ‖V − WH‖ (log)", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(ks, explained, "s--", color="C1", label="explained variance")
    ax2.set_ylabel("explained variance", color="C1")
    ax1.axvline(PLANTED_K, color="k", ls=":", lw=1)
    ax1.annotate(f"planted k = {PLANTED_K}", (PLANTED_K, losses[PLANTED_K - 1]),
                 xytext=(10, 25), textcoords="offset points",
                 arrowprops={"arrowstyle": "->"})
    ax1.set_xticks(ks)
    ax1.set_title(f"Choosing the rank: V {n}×{m}, planted k = {PLANTED_K}, elbow at {k_hat}",
                  fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "choose_rank.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return {"png": path, "ks": ks, "losses": losses, "explained": explained,
            "elbow": k_hat, "planted_k": PLANTED_K}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples_out", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0, help="problem size factor")
    args = parser.parse_args()
    main(args.out, args.scale)
