"""Topic modelling of a synthetic corpus with KL multiplicative updates on CSR counts.

Eight planted topics each own 40 made-up (pronounceable) words with Zipf-like
frequencies; 80 more words form a background vocabulary shared by every document.
Each document is a multinomial draw of ~150 words from a sparse mix of 1–2 topics
plus the background. The term counts (documents × words) go to
``dnmf.NMF(solver="mu", beta_loss="kullback-leibler")`` as a
``scipy.sparse.csr_matrix``; the rows of H are the recovered topics. They are
matched to the planted topics by the Hungarian method on cosine similarity, and the
recovered top-8 words are printed next to the planted ones, with the overlap of the
top-10 word sets per topic.

    python examples/topic_model.py --out /tmp/figs [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

import dnmf

N_TOPICS = 8
WORDS_PER_TOPIC = 40
N_BACKGROUND = 80
DOC_LENGTH = 150  # mean words per document
BACKGROUND_SHARE = 0.15  # share of a document's words drawn from the background
TOP = 10  # top-word sets compared per topic

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gl", "kr", "pl", "st", "tr", "sh", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


def make_vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable words of 2–3 consonant-vowel syllables."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        n_syl = rng.integers(2, 4)
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                    for _ in range(n_syl))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def planted_corpus(n_docs: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
    """Counts (n_docs × n_words, CSR), the planted topic-word distributions and words.

    Topic ``t`` owns words ``t * 40 .. t * 40 + 39`` with Zipf(1) weights in a random
    order; the last 80 words are the background, with flat-ish weights.
    """
    rng = np.random.default_rng(seed)
    n_words = N_TOPICS * WORDS_PER_TOPIC + N_BACKGROUND
    vocab = make_vocabulary(n_words, rng)
    topics = np.zeros((N_TOPICS, n_words))
    zipf = 1.0 / np.arange(1, WORDS_PER_TOPIC + 1)
    for t in range(N_TOPICS):
        topics[t, t * WORDS_PER_TOPIC:(t + 1) * WORDS_PER_TOPIC] = rng.permutation(zipf)
    topics /= topics.sum(axis=1, keepdims=True)
    background = np.zeros(n_words)
    background[-N_BACKGROUND:] = rng.uniform(0.5, 1.5, N_BACKGROUND)
    background /= background.sum()

    rows, cols, vals = [], [], []
    for d in range(n_docs):
        n_mix = rng.integers(1, 3)  # 1 or 2 topics
        chosen = rng.choice(N_TOPICS, n_mix, replace=False)
        weights = rng.dirichlet(np.full(n_mix, 2.0)) * (1 - BACKGROUND_SHARE)
        p = BACKGROUND_SHARE * background + weights @ topics[chosen]
        counts = rng.multinomial(max(20, rng.poisson(DOC_LENGTH)), p / p.sum())
        nz = np.flatnonzero(counts)
        rows.append(np.full(nz.size, d))
        cols.append(nz)
        vals.append(counts[nz])
    X = sp.csr_matrix((np.concatenate(vals).astype(np.float64),
                       (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_docs, n_words))
    return X, topics, vocab


def match_topics(topics: np.ndarray, H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on cosine similarity: (recovered row per planted topic, cosines)."""
    A = topics / np.linalg.norm(topics, axis=1, keepdims=True)
    B = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-300)
    C = A @ B.T
    planted, recovered = linear_sum_assignment(-C)
    order = recovered[np.argsort(planted)]
    return order, C[np.arange(len(topics)), order]


def top_words(row: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(row)[::-1][:n]


def main(out_dir: str | os.PathLike[str], scale: float = 1.0) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    n_docs = max(300, int(3000 * scale))
    X, topics, vocab = planted_corpus(n_docs)
    print(f"corpus: {X.shape[0]} documents × {X.shape[1]} words, "
          f"{X.nnz} non-zeros ({X.nnz / np.prod(X.shape):.1%}), {int(X.sum())} tokens")

    est = dnmf.NMF(N_TOPICS, solver="mu", beta_loss="kullback-leibler", init="nndsvda",
                   max_iter=200, tol=1e-5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
        W = np.asarray(est.fit_transform(X))  # (documents, topics): document mixes
    order, cosine = match_topics(topics, est.components_)
    H = est.components_[order]  # row t is the topic matched to planted topic t
    W = W[:, order]
    print(f"fit: {est.n_iter_} iterations, KL divergence {est.loss_history_[-1]:.4g}")

    overlap = np.array([
        len(set(top_words(topics[t], TOP)) & set(top_words(H[t], TOP))) / TOP
        for t in range(N_TOPICS)])
    print(f"\n{'topic':<6} {'cos':>5} {'top-10':>6}  recovered top-8 words"
          f"  |  planted top-8 words")
    for t in range(N_TOPICS):
        rec = " ".join(vocab[i] for i in top_words(H[t], 8))
        pla = " ".join(vocab[i] for i in top_words(topics[t], 8))
        print(f"{t:<6} {cosine[t]:5.3f} {overlap[t]:6.1f}  {rec}  |  {pla}")
    print(f"\nmin top-{TOP} overlap {overlap.min():.1f}, min cosine {cosine.min():.3f}")

    # Heat map of H (rows: recovered topics, normalised) over each planted topic's
    # top-10 words, grouped by planted topic: a clean block diagonal means recovery.
    cols = np.concatenate([top_words(topics[t], TOP) for t in range(N_TOPICS)])
    Hn = H / H.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    im = ax.imshow(Hn[:, cols], aspect="auto", cmap="Greys", interpolation="nearest",
                   norm=matplotlib.colors.PowerNorm(0.5))
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([vocab[i] for i in cols], rotation=90, fontsize=7)
    ax.set_yticks(np.arange(N_TOPICS))
    ax.set_yticklabels([f"topic {t} ({overlap[t]:.1f})" for t in range(N_TOPICS)],
                       fontsize=8)
    for t in range(1, N_TOPICS):
        ax.axvline(t * TOP - 0.5, color="C3", lw=0.6)
    ax.set_title("H: recovered topics (rows, top-10 overlap in brackets) over the "
                 "planted topics' top-10 words (square-root colour scale)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    fig.tight_layout()
    path = os.path.join(out_dir, "topic_model.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return {"png": path, "overlap": overlap, "cosine": cosine, "n_iter": est.n_iter_,
            "shape": X.shape, "nnz": X.nnz, "H": H, "W": W, "topics": topics,
            "vocab": vocab}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples_out", help="output directory")
    parser.add_argument("--scale", type=float, default=1.0, help="problem size factor")
    args = parser.parse_args()
    main(args.out, args.scale)
