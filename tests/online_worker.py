"""A MiniBatchNMF fit with a run store in its own process, for the online crash tests.

Usage: python online_worker.py V OUT [--every N] [--beta B] [--sleep SECONDS] [--custom]

``DNMF_TEST_PAUSE_AT`` / ``DNMF_TEST_PAUSE_FILE`` (read by dnmf._store) stop the fit
at a chosen point so that the test can SIGKILL it there; ``--sleep`` slows every
batch (a test kills it at a random instant).
"""

from __future__ import annotations

import argparse
import time
import warnings


def params(beta: str) -> dict:
    return dict(n_components=4, init="random", batch_size=50, beta_loss=beta, max_iter=6,
                tol=0.0, max_no_improvement=20, forget_factor=0.8, random_state=7)


def custom_start(n: int, m: int) -> tuple:
    """W and H for init="custom" (V is then validated as the first pass reads it)."""
    import numpy as np

    rng = np.random.default_rng(11)
    return ((rng.random((n, 4)) + 0.1).astype(np.float32),
            (rng.random((4, m)) + 0.1).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("V")
    parser.add_argument("out")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--beta", default="frobenius")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--custom", action="store_true")
    args = parser.parse_args()

    import dnmf
    from dnmf import _online

    warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
    if args.sleep:
        step = _online.MiniBatchNMF._step

        def slow(self, *a, **k):
            time.sleep(args.sleep)
            return step(self, *a, **k)

        _online.MiniBatchNMF._step = slow
    start = {}
    extra = {}
    if args.custom:
        import zarr

        start = dict(zip("WH", custom_start(*zarr.open_array(args.V, mode="r").shape)))
        extra = {"init": "custom"}
    dnmf.MiniBatchNMF(**{**params(args.beta), **extra}, out=args.out,
                      checkpoint_every=args.every, scheduler="threads").fit(args.V, **start)


if __name__ == "__main__":
    main()
