"""Online NMF on a float32 Zarr V: time to reach a given loss, and peak memory.

Three contenders, each in its own process (so that its peak RSS is its own), run in
interleaved rounds (the order rotates every round), all reading the same Zarr V:

- ``dnmf-online``: ``dnmf.MiniBatchNMF(fresh_restarts=True, forget_per="batch")
  .fit(path)`` (batches read as row ranges, the next one read ahead while the current
  one is computed and validated as it is read; each batch's W solved from a flat start
  and each batch weighing the past by 0.7, as scikit-learn's partial_fit does; fit
  makes H only, W and ``reconstruction_err_`` are left to when they are asked for);
- ``dnmf-partial_fit``: dnmf's ``MiniBatchNMF.partial_fit`` in the same loop as
  scikit-learn's below (the same mathematics; only the implementation differs);
- ``sklearn-online``: scikit-learn's ``MiniBatchNMF.partial_fit`` fed the same Zarr
  one batch at a time (its only way to see data it cannot hold);
- ``dnmf-hals``: ``dnmf.NMF(solver="hals")``, one full pass over V per iteration.

Every contender records its H, with the wall-clock time since its start, several
times per pass over V (the recording is outside the timed work). Afterwards each H
is scored the same way: the relative error ‖V_S − W*·H‖ / ‖V_S‖ on a fixed sample S
of rows, W* the exact NNLS fit of those rows to H (dnmf's ALS with H fixed). The
target loss of a round is the loss scikit-learn's MiniBatchNMF reaches at the end of
its budget; the table gives each contender's time to reach it (the first record at
or below it), and the ratio to scikit-learn's in the same round.

Starts: the online contenders start from the same H (scikit-learn's random start from
the first batch); HALS from dnmf's init="random" (NNDSVD would add passes over V).

Usage: python benchmarks/bench_online.py [--gib 1] [--rounds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, ".data")
METHODS = ("dnmf-online", "dnmf-partial_fit", "sklearn-online", "dnmf-hals")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def make_V(path: str, n: int, m: int, k: int, chunk: int) -> None:
    import zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        z = zarr.open_array(path, mode="r")
        if z.shape == (n, m):
            return
    rng = np.random.default_rng(0)
    H = rng.gamma(0.5, 1.0, size=(k, m)).astype(np.float32)
    z = zarr.create_array(store=path, shape=(n, m), chunks=(chunk, m), dtype=np.float32,
                          overwrite=True)
    for a in range(0, n, 16 * chunk):
        b = min(n, a + 16 * chunk)
        W = rng.gamma(0.5, 1.0, size=(b - a, k)).astype(np.float32)
        noise = rng.random((b - a, m), dtype=np.float32) * 0.3
        z[a:b] = W @ H + noise


# ------------------------------------------------------------------ workers
def run_worker(method: str, V: str, epochs: int, k: int, batch: int, out: str,
               hals_iter: int) -> None:
    import zarr

    import dnmf
    from dnmf.testing import peak_rss

    warnings.simplefilter("ignore")
    z = zarr.open_array(V, mode="r")
    n = z.shape[0]
    steps_per_epoch = -(-n // batch)
    every = max(1, steps_per_epoch // 4)
    times: list[float] = []
    Hs: list[np.ndarray] = []
    paused = [0.0]
    t0 = time.perf_counter()

    def record(H: np.ndarray) -> None:
        t = time.perf_counter()
        times.append(t - t0 - paused[0])
        Hs.append(np.array(H, dtype=np.float32))
        paused[0] += time.perf_counter() - t

    # The online contenders start from the same H: scikit-learn's random start drawn
    # from the first batch (what its partial_fit does with init="random").
    from sklearn.decomposition import _nmf

    W_first, H0 = _nmf._initialize_nmf(np.asarray(z[:batch]), k, init="random",
                                       random_state=0)
    if method in ("dnmf-partial_fit", "sklearn-online"):
        if method == "sklearn-online":
            from sklearn.decomposition import MiniBatchNMF as Online
        else:
            from dnmf import MiniBatchNMF as Online
        est = Online(k, init="custom", batch_size=batch, tol=0.0,
                     max_no_improvement=None, random_state=0)
        t0 = time.perf_counter()
        count = 0
        for _ in range(epochs):
            for a in range(0, n, batch):
                est.partial_fit(np.asarray(z[a:a + batch]), W=W_first, H=H0.copy())
                count += 1
                if count % every == 0:
                    record(est.components_)
        record(est.components_)
    elif method == "dnmf-online":
        from dnmf._online import MiniBatchNMF

        class Recorded(MiniBatchNMF):
            def _step(self, *args, **kwargs):
                result = super()._step(*args, **kwargs)
                self._count = getattr(self, "_count", 0) + 1
                if self._count % every == 0:
                    record(result[2])
                return result

        # forget_per="batch": each batch weighs past ones by 0.7, as partial_fit's
        # default does (fit's default, 0.7 per pass, keeps the poor early H in the sums
        # for passes; forget_factor=0.7 ** (n / batch), the same thing in scikit-learn's
        # terms, underflows to 0.0 past ~2100 batches and then keeps no past at all)
        est = Recorded(k, init="custom", batch_size=batch, max_iter=epochs, tol=0.0,
                       max_no_improvement=None, random_state=0, scheduler="threads",
                       # each batch's W solved from a flat start, as scikit-learn's
                       # partial_fit solves it (fresh_restarts_max_iter=30 both)
                       fresh_restarts=True, forget_factor=0.7, forget_per="batch")
        t0 = time.perf_counter()
        # fresh restarts solve every batch's W from a flat start: W is not read
        est.fit(V, W=np.full((n, k), float(W_first.mean()), dtype=np.float32), H=H0.copy())
        record(est.components_)
    elif method == "dnmf-hals":
        from dnmf import _engine

        h_step = _engine.h_step

        def spy(*args, **kwargs):
            result = h_step(*args, **kwargs)
            record(result[1][2])
            return result

        _engine.h_step = spy
        est = dnmf.NMF(k, solver="hals", init="random", max_iter=hals_iter, tol=0.0,
                       random_state=0, scheduler="threads")
        t0 = time.perf_counter()
        est.fit(V)
    else:
        raise SystemExit(f"unknown method {method!r}")
    total = time.perf_counter() - t0 - paused[0]
    np.savez(out, times=np.array(times), Hs=np.stack(Hs), total=total, rss=peak_rss(),
             load=load_average())


# ------------------------------------------------------------------- scoring
def score(V: str, Hs: np.ndarray, sample_rows: int) -> np.ndarray:
    import zarr

    import dnmf

    z = zarr.open_array(V, mode="r")
    n = z.shape[0]
    stride = max(1, n // sample_rows)
    X = np.asarray(z[::stride][:sample_rows], dtype=np.float64)
    norm = np.linalg.norm(X)
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for H in Hs:
            H64 = H.astype(np.float64)
            W, _, _ = dnmf.non_negative_factorization(
                X, H=H64, n_components=H.shape[0], update_H=False, solver="als",
                max_iter=50, scheduler="threads")
            errors.append(np.linalg.norm(X - np.asarray(W) @ H64) / norm)
    return np.array(errors)


#: "The same loss": within this relative tolerance (the online contenders run the same
#: mathematics and end within rounding, ~1e-7, of each other).
SAME_LOSS_RTOL = 1e-4


def first_below(times: np.ndarray, errors: np.ndarray, target: float) -> float | None:
    hits = np.flatnonzero(errors <= target * (1 + SAME_LOSS_RTOL))
    return float(times[hits[0]]) if hits.size else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0, help="size of V in GiB (float32)")
    p.add_argument("--m", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hals-iter", type=int, default=None,
                   help="HALS iterations (passes) [default: 4 x --epochs]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sample-rows", type=int, default=8192)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="a small V, one round, one pass")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--V", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.gib, args.rounds, args.epochs, args.sample_rows = 0.02, 1, 1, 2048
    if args.hals_iter is None:
        args.hals_iter = 4 * args.epochs
    if args.worker:
        run_worker(args.worker, args.V, args.epochs, args.k, args.batch, args.out,
                   args.hals_iter)
        return

    n = int(args.gib * 2**30 / (4 * args.m))
    os.makedirs(DATA, exist_ok=True)
    V = os.path.join(DATA, f"online_{n}x{args.m}.zarr")
    print(f"V: {n} x {args.m} float32 = {n * args.m * 4 / 2**30:.2f} GiB, k={args.k}, "
          f"batch {args.batch}, {args.epochs} passes online, {args.hals_iter} HALS "
          f"iterations; load {load_average()}", flush=True)
    make_V(V, n, args.m, args.k, args.batch)
    methods = args.methods.split(",")
    rounds = []
    for r in range(args.rounds):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        result = {}
        for method in order:
            out = os.path.join(DATA, f"snap_{method}_{r}.npz")
            load = load_average()
            subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", method,
                            "--V", V, "--out", out, "--epochs", str(args.epochs), "--k",
                            str(args.k), "--batch", str(args.batch), "--hals-iter",
                            str(args.hals_iter)], check=True)
            data = np.load(out)
            errors = score(V, data["Hs"], args.sample_rows)
            result[method] = {"times": data["times"].tolist(), "errors": errors.tolist(),
                              "total": float(data["total"]), "rss": int(data["rss"]),
                              "load": load}
            print(f"round {r + 1} {method:15s} {float(data['total']):8.1f} s, final error "
                  f"{errors[-1]:.5f}, peak RSS {int(data['rss']) / 2**20:.0f} MiB, "
                  f"load {load}", flush=True)
        target = result["sklearn-online"]["errors"][-1] if "sklearn-online" in result else \
            min(v["errors"][-1] for v in result.values())
        for v in result.values():
            v["time_to_target"] = first_below(np.array(v["times"]), np.array(v["errors"]),
                                              target)
        result["_target"] = target
        rounds.append(result)

    print(f"\nTime to the loss scikit-learn's MiniBatchNMF reaches in {args.epochs} passes "
          f"(within {SAME_LOSS_RTOL:g}, relative error on {args.sample_rows} sampled rows, "
          f"exact NNLS W):")
    print(f"{'round':>5} {'target':>9} " + " ".join(f"{m:>16}" for m in methods)
          + "   dnmf-online / sklearn")
    ratios = []
    for r, result in enumerate(rounds):
        cells = []
        for method in methods:
            t = result[method]["time_to_target"]
            cells.append(f"{'not reached':>16}" if t is None else f"{t:14.1f} s")
        ratio = None
        t_ours, t_sk = (result.get(m, {}).get("time_to_target") for m in
                        ("dnmf-online", "sklearn-online"))
        if t_ours is not None and t_sk:
            ratio = t_ours / t_sk
            ratios.append(ratio)
        print(f"{r + 1:>5} {result['_target']:9.5f} " + " ".join(cells)
              + (f"   {ratio:.3f}" if ratio is not None else ""))
    if ratios:
        print(f"median ratio {np.median(ratios):.3f} (rounds {min(ratios):.3f}-"
              f"{max(ratios):.3f}); goal <= 0.5")
    for method in methods:
        rss = max(result[method]["rss"] for result in rounds) / 2**20
        print(f"peak RSS {method:15s} {rss:7.0f} MiB")
    print(f"load at the end {load_average()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
