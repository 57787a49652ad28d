"""A fit in its own process, for the crash, lock and concurrent-reader tests.

Usage: python checkpoint_worker.py V OUT [--max-iter N] [--every N] [--solver S]
[--beta B] [--init I] [--k K] [--panel-rows R] [--sleep SECONDS] [--mode fit|resume]

``--sleep`` slows every iteration (a callback) so that another process can watch or
race the writer. ``DNMF_TEST_PAUSE_AT`` / ``DNMF_TEST_PAUSE_FILE`` (read by
dnmf._store) stop the fit at a chosen point so that the test can SIGKILL it there.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("V")
    parser.add_argument("out")
    parser.add_argument("--max-iter", type=int, default=12)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--solver", default="hals")
    parser.add_argument("--beta", default="frobenius")
    parser.add_argument("--init", default="nndsvda")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--panel-rows", type=int, default=None)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--mode", default="fit", choices=("fit", "resume"))
    args = parser.parse_args()

    import dnmf

    warnings.simplefilter("ignore", dnmf.ConvergenceWarning)

    def slow(iteration: int, loss: float) -> bool:
        time.sleep(args.sleep)
        return False

    callback = slow if args.sleep else None
    if args.mode == "resume":
        dnmf.resume(args.out, callback=callback, scheduler="threads")
        return
    dnmf.NMF(
        args.k, solver=args.solver, beta_loss=args.beta, init=args.init,
        max_iter=args.max_iter, tol=0.0, random_state=7, panel_rows=args.panel_rows,
        out=args.out, checkpoint_every=args.every, callback=callback, scheduler="threads",
    ).fit(args.V)


if __name__ == "__main__":
    main()
