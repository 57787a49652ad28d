"""A masked fit in its own process, for the SIGKILL-and-resume test of masked runs.

Usage: python masked_worker.py V OUT MASK [--mode fit|resume] [--holdout F]

V and MASK are Zarr arrays on disk (MASK boolean, True = observed). ``--holdout``
also holds out a SpeckledHoldout(F, seed=3) of the observed entries.
"""

from __future__ import annotations

import argparse
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("V")
    parser.add_argument("out")
    parser.add_argument("mask")
    parser.add_argument("--mode", default="fit", choices=("fit", "resume"))
    parser.add_argument("--holdout", type=float, default=0.0)
    parser.add_argument("--max-iter", type=int, default=12)
    args = parser.parse_args()

    import zarr

    import dnmf

    warnings.simplefilter("ignore", dnmf.ConvergenceWarning)
    if args.mode == "resume":
        dnmf.resume(args.out, scheduler="threads")
        return
    mask = (dnmf.SpeckledHoldout(args.holdout, 3) if args.holdout
            else zarr.open_array(args.mask, mode="r"))
    dnmf.NMF(4, solver="hals", init="nndsvda", max_iter=args.max_iter, tol=0.0,
             random_state=7, panel_rows=100, out=args.out, checkpoint_every=2,
             scheduler="threads", missing="nan" if args.holdout else None,
             ).fit(args.V, mask=mask)


if __name__ == "__main__":
    main()
