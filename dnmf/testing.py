"""Helpers for tests, benchmarks and examples: planted factorizations, peak memory.

Public so that users can check dnmf on data whose answer is known, and measure
its memory the way the benchmarks do.
"""

from __future__ import annotations

import numpy as np

__all__ = ["peak_rss", "planted"]


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: the high-water mark of
    this process's own memory. ``resource.getrusage(...).ru_maxrss`` is not used
    there because a process started with fork + exec inherits its parent's value
    (a child of a 1 GiB parent reports at least 1 GiB). Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def planted(
    n: int,
    m: int,
    k: int,
    *,
    seed: int = 0,
    noise: float = 0.0,
    density: float = 1.0,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``V = W·H + noise·|N(0, 1)|`` with uniform random non-negative W and H.

    With ``density < 1`` each entry of W and H is kept with that probability (the
    others are zero), which makes the factorization essentially unique, so a solver
    can be checked to recover W and H themselves.

    Returns
    -------
    V : ndarray of shape (n, m)
    W : ndarray of shape (n, k)
    H : ndarray of shape (k, m)
    """
    rng = np.random.default_rng(seed)
    W = rng.random((n, k))
    H = rng.random((k, m))
    if density < 1.0:
        W *= rng.random(W.shape) < density
        H *= rng.random(H.shape) < density
    V = W @ H
    if noise:
        V = V + noise * np.abs(rng.standard_normal(V.shape))
    return V.astype(dtype), W.astype(dtype), H.astype(dtype)
