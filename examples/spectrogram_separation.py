"""Source separation of a synthetic spectrogram with KL multiplicative updates.

Three synthetic "instruments", each a harmonic stack (a fundamental and its decaying
overtones) played as notes with an attack-decay envelope at random times, are mixed
and turned into a magnitude spectrogram V (frequency × time) with a numpy STFT.
``dnmf.NMF(solver="mu", beta_loss="kullback-leibler")`` with k = 3 factors V into
spectral templates W (one harmonic comb per instrument) and activations H (when
each plays). The recovered activations are matched to the true ones (each source's
own spectrogram summed over frequency) and their correlations printed.

    python examples/spectrogram_separation.py --out /tmp/figs [--scale 1.0]
"""

from __future__ import annotations

import argparse
import itertools
import os
import warnings
from typing import Any

import numpy as np

import dnmf

SR = 8000  # samples per second
N_FFT, HOP = 512, 128
#: Fundamentals (Hz) and overtone decay of the three instruments.
INSTRUMENTS = ((220.0, 0.7), (277.2, 0.5), (349.2, 0.85))


def stft_magnitude(x: np.ndarray) -> np.ndarray:
    """|STFT| with a Hann window: shape (N_FFT // 2 + 1, n_frames)."""
    window = np.hanning(N_FFT)
    n_frames = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    return np.abs(np.fft.rfft(x[idx] * window, axis=1)).T


def synthesize(seconds: float, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The mix and each instrument's own signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    sources = []
    for f0, decay in INSTRUMENTS:
        tone = sum(decay**h * np.sin(2 * np.pi * f0 * (h + 1) * t)
                   for h in range(int(SR / 2 / f0) - 1))
        envelope = np.zeros_like(t)
        n_notes = max(2, int(seconds * 1.5))
        for onset in rng.uniform(0, seconds - 0.3, n_notes):
            length = rng.uniform(0.2, 0.6)
            dt = t - onset
            note = np.where((dt >= 0) & (dt < length),
                            np.minimum(dt / 0.02, 1.0) * np.exp(-3.0 * dt / length), 0.0)
            envelope = np.maximum(envelope, rng.uniform(0.5, 1.0) * note)
        sources.append(envelope * tone)
    return sum(sources), sources


def match_correlations(H_true: np.ndarray, H: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Per true source, the Pearson correlation with its matched recovered row."""
    C = np.corrcoef(H_true, H)[: len(H_true), len(H_true):]
    best = max(itertools.permutations(range(len(H))),
               key=lambda p: sum(C[i, j] for i, j in enumerate(p)))
    return np.array([C[i, j] for i, j in enumerate(best)]), best


def main(out_dir: str | os.PathLike[str], scale: float = 1.0) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    seconds = max(1.5, 8.0 * scale)
    mix, sources = synthesize(seconds)
    V = stft_magnitude(mix)  # (freq, time): columns are frames
    H_true = np.stack([stft_magnitude(s).sum(axis=0) for s in sources])
    k = len(INSTRUMENTS)
    est = dnmf.NMF(k, solver="mu", beta_loss="kullback-leibler", init="nndsvda",
                   max_iter=max(100, int(400 * scale)), tol=1e-6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        W = np.asarray(est.fit_transform(V))  # (freq, k): spectral templates
    H = est.components_  # (k, time): activations
    corr, order = match_correlations(H_true, H)
    W, H = W[:, list(order)], H[list(order)]
    for (f0, _), c in zip(INSTRUMENTS, corr):
        print(f"instrument {f0:6.1f} Hz: activation correlation {c:.3f}")

    freqs = np.fft.rfftfreq(N_FFT, 1 / SR)
    times = (np.arange(V.shape[1]) * HOP + N_FFT / 2) / SR
    fig = plt.figure(figsize=(9, 5))
    gs = fig.add_gridspec(2, 2, width_ratios=(1, 4), height_ratios=(3, 2))
    axV = fig.add_subplot(gs[0, 1])
    axV.imshow(np.log1p(V), origin="lower", aspect="auto", cmap="magma",
               extent=(times[0], times[-1], freqs[0], freqs[-1]))
    axV.set_title("V: magnitude spectrogram of the mix (log scale)", fontsize=10)
    axV.set_ylabel("Hz")
    axW = fig.add_subplot(gs[0, 0], sharey=axV)
    for i in range(k):
        axW.plot(W[:, i] / W[:, i].max() + i, freqs, color=f"C{i}", lw=0.8)
    axW.set_title("W: templates", fontsize=10)
    axW.set_xticks([])
    axW.set_ylabel("Hz")
    axH = fig.add_subplot(gs[1, 1], sharex=axV)
    for i in range(k):
        off = 1.1 * (k - 1 - i)
        axH.plot(times, H_true[i] / H_true[i].max() + off, color="0.6", lw=2.5)
        axH.plot(times, H[i] / H[i].max() + off, color=f"C{i}", lw=1,
                 label=f"{INSTRUMENTS[i][0]:.0f} Hz (r = {corr[i]:.2f})")
    axH.set_title("H: recovered activations (colour) over the true ones (grey)",
                  fontsize=10)
    axH.set_xlabel("s")
    axH.set_yticks([])
    axH.legend(fontsize=7, loc="upper right", ncol=3)
    fig.tight_layout()
    path = os.path.join(out_dir, "spectrogram_separation.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return {"png": path, "correlations": corr, "W": W, "H": H, "H_true": H_true}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples_out", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0, help="problem size factor")
    args = parser.parse_args()
    main(args.out, args.scale)
