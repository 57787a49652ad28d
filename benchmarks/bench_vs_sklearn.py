"""Speed of dnmf against scikit-learn's NMF on the same in-memory data (issue 2).

On one dense matrix V (n × m, rank k plus noise, from :func:`dnmf.testing.planted`):

* scikit-learn ``NMF(solver="cd", max_iter=200, tol=0)`` (init None → nndsvda,
  random_state=0) is timed including its initialisation, and its final loss
  ``L_cd = ½‖V − WH‖²`` is computed exactly from its W and H;
* dnmf ``NMF(solver="hals")`` and ``NMF(solver="als")`` (default init) are timed, init
  included, until their loss first reaches ``L_cd`` (a callback stops them);
* scikit-learn ``NMF(solver="mu", max_iter=200, tol=0)`` likewise gives ``L_mu``, and
  dnmf ``NMF(solver="mu")`` is timed until it reaches ``L_mu``.

The target of issue 2 is dnmf hals time ≤ 0.5 × scikit-learn cd time.

β-divergences (issue 12; ``--betas``, default ``0,1.5``): on the same V shifted to be
positive (β = 0, Itakura-Saito, refuses zeros), scikit-learn ``NMF(solver="mu",
beta_loss=β, init="custom", tol=0)`` and dnmf's ``NMF(solver="mu", beta_loss=β)``
run ``--beta-iter`` iterations from the same custom W, H; the figure is time per
iteration (whole fit / iterations: no init, dnmf's loss of every iteration and its
final loss pass included), best of ``--repeats`` interleaved rounds, target ≤ 0.5 ×.
The two final H are compared, so the timing is of the same iterates.

Time-to-loss curves (wall time since the start of ``fit_transform``, and loss, after
each iteration) go into the JSON output. dnmf's come from its callback during the
timed run. scikit-learn has no callback, so its curves come from one extra run in
which its per-iteration step functions are wrapped; the time spent evaluating the
loss there is excluded from the clock, and that run's final loss is checked against
the timed run's.

Usage::

    python benchmarks/bench_vs_sklearn.py                 # 20000 × 2000, k = 20
    python benchmarks/bench_vs_sklearn.py --quick         # small, < 30 s
    python benchmarks/bench_vs_sklearn.py --repeats 3 --json out.json --png out.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

SK_MAX_ITER = 200
TARGET_RATIO = 0.5


# ----------------------------------------------------------------------- helpers
def exact_loss(V: np.ndarray, W: np.ndarray, H: np.ndarray, block: int = 2048) -> float:
    """½‖V − WH‖², from the residual itself (row blocks, float64), not from traces."""
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    total = 0.0
    for a in range(0, V.shape[0], block):
        R = V[a : a + block] - W[a : a + block] @ H
        total += float(np.einsum("ij,ij->", R, R))
    return 0.5 * total


class FastLoss:
    """½‖V − WH‖² from ‖V‖², tr(Wᵀ·V·Hᵀ) and tr(WᵀW·HHᵀ): for the curves only."""

    def __init__(self, V: np.ndarray) -> None:
        self.V = V
        self.norm_sq = float(np.einsum("ij,ij->", V, V))

    def __call__(self, W: np.ndarray, H: np.ndarray) -> float:
        cross = float(np.einsum("ij,ij->", W, self.V @ H.T))
        gram = float(np.einsum("ij,ij->", W.T @ W, H @ H.T))
        return max(0.5 * (self.norm_sq - 2.0 * cross + gram), 0.0)


def machine() -> dict[str, Any]:
    import dask
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    import dnmf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "dask": dask.__version__,
        "dnmf": dnmf.__version__,
        "blas": [
            {key: info.get(key) for key in
             ("internal_api", "version", "num_threads", "threading_layer", "architecture")}
            for info in threadpool_info()
            if info.get("user_api") == "blas"
        ],
    }


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


@contextlib.contextmanager
def entry_time(module: Any, name: str) -> Iterator[list[float]]:
    """Record the time at which ``module.name`` is first called (the loop's start).

    Everything before it (validation, the scan pass, initialisation) is "init".
    """
    original = getattr(module, name)
    stamps: list[float] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stamps.append(time.perf_counter())
        return original(*args, **kwargs)

    setattr(module, name, wrapped)
    try:
        yield stamps
    finally:
        setattr(module, name, original)


# ------------------------------------------------------------------- scikit-learn
def sklearn_fit(V: np.ndarray, k: int, solver: str, max_iter: int) -> dict[str, Any]:
    """One timed, uninstrumented scikit-learn fit (init included)."""
    from sklearn.decomposition import NMF, _nmf

    model = NMF(k, solver=solver, max_iter=max_iter, tol=0.0, init=None, random_state=0)
    loop = "_fit_coordinate_descent" if solver == "cd" else "_fit_multiplicative_update"
    load_before = load()
    with entry_time(_nmf, loop) as stamps:
        start = time.perf_counter()
        W = model.fit_transform(V)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "init_seconds": stamps[0] - start,
        "iterations": int(model.n_iter_),
        "loss": exact_loss(V, W, model.components_),
        "load_before": load_before,
        "load_after": load(),
    }


def sklearn_curve(V: np.ndarray, k: int, solver: str, max_iter: int,
                  loss: FastLoss) -> dict[str, Any]:
    """Loss after each iteration of a scikit-learn fit, against loss-free wall time.

    Wraps the module-level step function that ends an iteration (the H update), so
    the fit itself runs scikit-learn's own code unchanged.
    """
    from sklearn.decomposition import NMF, _nmf

    name = "_update_coordinate_descent" if solver == "cd" else "_multiplicative_update_h"
    original = getattr(_nmf, name)
    times: list[float] = []
    losses: list[float] = []
    calls = [0]
    excluded = [0.0]
    start = [0.0]

    def record(W: np.ndarray, H: np.ndarray) -> None:
        now = time.perf_counter()
        times.append(now - start[0] - excluded[0])
        losses.append(loss(W, H))
        excluded[0] += time.perf_counter() - now

    def wrapped_cd(X: Any, W: Any, Ht: Any, *args: Any) -> Any:
        out = original(X, W, Ht, *args)
        calls[0] += 1
        if calls[0] % 2 == 0:  # the H step: called as (X.T, Ht, W, ...)
            record(Ht, W.T)
        return out

    def wrapped_mu(X: Any, W: Any, H: Any, *args: Any, **kwargs: Any) -> Any:
        H_new = original(X, W, H, *args, **kwargs)
        record(W, H_new)
        return H_new

    setattr(_nmf, name, wrapped_cd if solver == "cd" else wrapped_mu)
    try:
        model = NMF(k, solver=solver, max_iter=max_iter, tol=0.0, init=None, random_state=0)
        start[0] = time.perf_counter()
        W = model.fit_transform(V)
        seconds = time.perf_counter() - start[0] - excluded[0]
    finally:
        setattr(_nmf, name, original)
    return {
        "seconds": seconds,
        "loss": exact_loss(V, W, model.components_),
        "time": times,
        "loss_curve": losses,
    }


# -------------------------------------------------------------------------- dnmf
def dnmf_fit(V: np.ndarray, k: int, solver: str, target: float,
             max_iter: int) -> dict[str, Any]:
    """A timed dnmf fit (init included) stopped when the loss first reaches ``target``."""
    import dnmf
    from dnmf import _engine

    times: list[float] = []
    losses: list[float] = []
    start = [0.0]

    def callback(iteration: int, value: float) -> bool:
        times.append(time.perf_counter() - start[0])
        losses.append(value)
        return value <= target

    model = dnmf.NMF(k, solver=solver, max_iter=max_iter, tol=0.0, random_state=0,
                     callback=callback)
    load_before = load()
    with warnings.catch_warnings(), entry_time(_engine, "iterate") as stamps:
        warnings.simplefilter("ignore")  # ConvergenceWarning when the cap is hit
        start[0] = time.perf_counter()
        W = model.fit_transform(V)
        seconds = time.perf_counter() - start[0]
    reached = bool(losses) and losses[-1] <= target
    return {
        "seconds": seconds,
        "init_seconds": stamps[0] - start[0],
        "iterations": int(model.n_iter_),
        "loss": exact_loss(V, W, model.components_),
        "reported_loss": losses[-1] if losses else None,
        "reached_target": reached,
        "time": times,
        "loss_curve": losses,
        "load_before": load_before,
        "load_after": load(),
    }


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of several runs of one measurement, with every run's time kept."""
    fastest = dict(min(runs, key=lambda r: r["seconds"]))
    fastest["all_seconds"] = [r["seconds"] for r in runs]
    fastest["all_loads"] = [r["load_before"] for r in runs]
    return fastest


def per_iteration(run: dict[str, Any]) -> float:
    """Wall time of one iteration of the loop: (total − init) / iterations."""
    return (run["seconds"] - run["init_seconds"]) / max(run["iterations"], 1)


def warm_up() -> None:
    """One tiny fit with each library, so one-time costs (imports, BLAS discovery,
    Dask's thread pool) are not charged to whichever measurement comes first."""
    from sklearn.decomposition import NMF

    import dnmf

    X = np.random.default_rng(0).random((64, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for solver in ("cd", "mu"):
            NMF(4, solver=solver, max_iter=5, random_state=0).fit_transform(X)
        for solver in ("hals", "als", "mu"):
            dnmf.NMF(4, solver=solver, max_iter=5, random_state=0).fit_transform(X)


# --------------------------------------------------------------------- β-divergences
BETA_TARGET = 0.5


def beta_start(V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The custom start both libraries get: scikit-learn's random-init scale."""
    rng = np.random.default_rng(1)
    avg = np.sqrt(V.mean() / k)
    return avg * rng.random((V.shape[0], k)), avg * rng.random((k, V.shape[1]))


def beta_fit(library: str, V: np.ndarray, beta: float, W0: np.ndarray, H0: np.ndarray,
             iterations: int) -> dict[str, Any]:
    """One timed fit of ``iterations`` MU iterations for β from (W0, H0)."""
    params = dict(solver="mu", beta_loss=beta, init="custom", max_iter=iterations, tol=0.0)
    if library == "sklearn":
        from sklearn.decomposition import NMF

        model: Any = NMF(W0.shape[1], **params)
    else:
        import dnmf

        model = dnmf.NMF(W0.shape[1], **params)
    W, H = W0.copy(), H0.copy()
    load_before = load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit_transform(V, W=W, H=H)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": int(model.n_iter_),
            "s_iter": seconds / max(int(model.n_iter_), 1), "H": model.components_,
            "load_before": load_before, "load_after": load()}


def beta_rows(V: np.ndarray, k: int, betas: list[float], iterations: int, repeats: int,
              sklearn_blas: Any, step: Any) -> list[dict[str, Any]]:
    """Interleaved rounds (sklearn, dnmf per β); the best time per iteration of each."""
    Vp = V + 1e-3 * float(V.mean())  # strictly positive, for β <= 0
    W0, H0 = beta_start(Vp, k)
    runs: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for round_ in range(repeats):
        for beta in betas:
            for library in ("sklearn", "dnmf"):
                step(f"{library} mu beta={beta:g}, round {round_ + 1}")
                ctx = sklearn_blas() if library == "sklearn" else contextlib.nullcontext()
                with ctx:
                    runs.setdefault((beta, library), []).append(
                        beta_fit(library, Vp, beta, W0, H0, iterations))
    rows = []
    for beta in betas:
        sk = min(runs[(beta, "sklearn")], key=lambda r: r["s_iter"])
        ours = min(runs[(beta, "dnmf")], key=lambda r: r["s_iter"])
        H_sk, H_ours = sk.pop("H"), ours.pop("H")
        for r in runs[(beta, "sklearn")] + runs[(beta, "dnmf")]:
            r.pop("H", None)
        rows.append({
            "beta": beta, "iterations": iterations,
            "sklearn_s_iter": sk["s_iter"], "dnmf_s_iter": ours["s_iter"],
            "ratio": ours["s_iter"] / sk["s_iter"],
            "same_iterates_rel": float(np.abs(H_ours - H_sk).max() / np.abs(H_sk).max()),
            "sklearn_all_s_iter": [r["s_iter"] for r in runs[(beta, "sklearn")]],
            "dnmf_all_s_iter": [r["s_iter"] for r in runs[(beta, "dnmf")]],
            "loads": [r["load_before"] for r in runs[(beta, "sklearn")]
                      + runs[(beta, "dnmf")]],
        })
    return rows


def beta_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| beta | iterations | sklearn mu s/iter | dnmf mu s/iter | dnmf / sklearn "
             "| max rel. diff of H | loads |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['beta']:g} | {r['iterations']} | {r['sklearn_s_iter']:.3f} "
            f"| {r['dnmf_s_iter']:.3f} | {r['ratio']:.3f} | {r['same_iterates_rel']:.1e} "
            f"| {', '.join(f'{x:.1f}' for x in r['loads'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| solver | library | iterations | seconds | init s | loop s/iter | final loss "
        "| target loss | dnmf / sklearn time | same, init excluded |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for r in rows:
        ratio = fmt(r.get("ratio"), ".3f")
        if r.get("reached") is False:
            ratio += " (target not reached)"
        s_iter = f"{r['s_iter'] * 1e3:.1f} ms" if r.get("s_iter") else ""
        lines.append(
            f"| {r['solver']} | {r['library']} | {r['iterations']} | {r['seconds']:.2f} "
            f"| {r['init_seconds']:.2f} | {s_iter} | {r['loss']:.6e} "
            f"| {fmt(r.get('target'), '.6e')} | {ratio} | {fmt(r.get('ratio_loop'), '.3f')} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = [("Frobenius, cd / hals / als", ("sklearn cd", "dnmf hals", "dnmf als")),
              ("Frobenius, mu", ("sklearn mu", "dnmf mu"))]
    for ax, (title, names) in zip(axes, groups):
        for name in names:
            curve = results["curves"].get(name)
            if curve and curve["time"]:
                ax.plot(curve["time"], curve["loss"], label=name, marker=".", markersize=2)
        ax.set_yscale("log")
        ax.set_xlabel("wall time since fit start (s)")
        ax.set_ylabel("½‖V − WH‖²")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"{results['data']['n']} × {results['data']['m']}, k = "
                 f"{results['data']['k']}, noise {results['data']['noise']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--m", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.1,
                        help="scale of the |N(0, 1)| noise added to W·H (W, H uniform)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per measurement, interleaved; the best is reported")
    parser.add_argument("--max-iter-factor", type=float, default=5.0,
                        help="dnmf's iteration cap, as a multiple of scikit-learn's 200")
    parser.add_argument("--solvers", default="hals,als,mu",
                        help="comma-separated dnmf solvers to run (hals, als, mu)")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit BLAS threads for scikit-learn's runs (default: BLAS's "
                             "own, i.e. all cores); dnmf sets its own per pass")
    parser.add_argument("--betas", default="0,1.5",
                        help="comma-separated beta_loss values for the per-iteration MU "
                             "comparison on a positive V ('' to skip)")
    parser.add_argument("--beta-iter", type=int, default=10,
                        help="MU iterations per timed beta fit")
    parser.add_argument("--no-curves", action="store_true",
                        help="skip the extra instrumented scikit-learn runs")
    parser.add_argument("--quick", action="store_true",
                        help="a small problem (2000 × 300, k = 8) for a smoke test")
    parser.add_argument("--json", dest="json_out", help="write all figures and curves here")
    parser.add_argument("--png", help="plot the time-to-loss curves here (matplotlib)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.m, args.k = 2000, 300, 8
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    max_iter = int(args.max_iter_factor * SK_MAX_ITER)

    from threadpoolctl import threadpool_limits

    from dnmf.testing import planted

    def sklearn_blas() -> contextlib.AbstractContextManager[Any]:
        if args.blas_threads is None:
            return contextlib.nullcontext()
        return threadpool_limits(args.blas_threads, user_api="blas")

    info = machine()
    print(f"machine: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); "
          f"load {load():.2f}")
    for blas in info["blas"]:
        print(f"BLAS: {blas['internal_api']} {blas['version']} ({blas['architecture']}, "
              f"{blas['num_threads']} threads, {blas['threading_layer']})")
    print("versions: " + ", ".join(
        f"{key} {info[key]}" for key in ("python", "numpy", "scipy", "scikit-learn", "dask",
                                         "dnmf")))
    V, _, _ = planted(args.n, args.m, args.k, seed=args.seed, noise=args.noise)
    V = np.ascontiguousarray(V, dtype=np.float64)
    blas_note = "" if args.blas_threads is None else f"; sklearn BLAS threads {args.blas_threads}"
    print(f"data: {args.n} × {args.m} float64, rank {args.k} + noise {args.noise}; "
          f"k = {args.k}; best of {args.repeats}{blas_note}\n", flush=True)
    fast_loss = FastLoss(V)
    warm_up()

    results: dict[str, Any] = {
        "machine": info,
        "data": {"n": args.n, "m": args.m, "k": args.k, "noise": args.noise,
                 "seed": args.seed, "norm_sq": fast_loss.norm_sq},
        "repeats": args.repeats,
        "sklearn_blas_threads": args.blas_threads,
        "load_start": load(),
        "runs": {},
        "curves": {},
    }

    def step(label: str) -> None:
        print(f"  running {label} (load {load():.2f}) ...", file=sys.stderr, flush=True)

    sk_solvers = [s for s in ("cd", "mu")
                  if (s == "cd" and {"hals", "als"} & set(solvers)) or (s == "mu" and "mu" in
                                                                         solvers)]
    dnmf_solvers = [s for s in ("hals", "als", "mu") if s in solvers]
    reference = {"hals": "cd", "als": "cd", "mu": "mu"}
    sk_runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sk_solvers}
    dnmf_runs: dict[str, list[dict[str, Any]]] = {s: [] for s in dnmf_solvers}
    targets: dict[str, float] = {}
    # Rounds interleave the measurements, so a burst of load elsewhere on the machine
    # hits one round of everything rather than every repeat of one measurement.
    for round_ in range(args.repeats):
        for solver in sk_solvers:
            step(f"sklearn {solver}, round {round_ + 1}")
            with sklearn_blas():
                sk_runs[solver].append(sklearn_fit(V, args.k, solver, SK_MAX_ITER))
            # scikit-learn is deterministic: the first round's loss is the target.
            targets.setdefault(solver, sk_runs[solver][0]["loss"])
        for solver in dnmf_solvers:
            target = targets[reference[solver]]
            step(f"dnmf {solver} to sklearn {reference[solver]}'s loss, round {round_ + 1}")
            dnmf_runs[solver].append(dnmf_fit(V, args.k, solver, target, max_iter))

    rows: list[dict[str, Any]] = []
    sk: dict[str, dict[str, Any]] = {}
    for solver in sk_solvers:
        sk[solver] = best(sk_runs[solver])
        results["runs"][f"sklearn {solver}"] = sk[solver]
        if not args.no_curves:
            step(f"sklearn {solver} (instrumented, for the curve)")
            with sklearn_blas():
                curve = sklearn_curve(V, args.k, solver, SK_MAX_ITER, fast_loss)
            results["curves"][f"sklearn {solver}"] = {
                "time": curve["time"], "loss": curve["loss_curve"],
                "seconds": curve["seconds"], "final_loss": curve["loss"],
            }
            if not np.isclose(curve["loss"], sk[solver]["loss"], rtol=1e-9):
                print(f"warning: the instrumented sklearn {solver} run ended at loss "
                      f"{curve['loss']:.9e}, the timed run at {sk[solver]['loss']:.9e}",
                      file=sys.stderr)
        rows.append({"solver": solver, "library": "scikit-learn",
                     "iterations": sk[solver]["iterations"], "seconds": sk[solver]["seconds"],
                     "init_seconds": sk[solver]["init_seconds"],
                     "s_iter": per_iteration(sk[solver]), "loss": sk[solver]["loss"]})
    for solver in dnmf_solvers:
        run = best(dnmf_runs[solver])
        ref = sk[reference[solver]]
        ratio = run["seconds"] / ref["seconds"]
        ratio_loop = ((run["seconds"] - run["init_seconds"])
                      / (ref["seconds"] - ref["init_seconds"]))
        run.update(target=ref["loss"], reference=f"sklearn {reference[solver]}", ratio=ratio,
                   ratio_loop=ratio_loop)
        results["runs"][f"dnmf {solver}"] = run
        results["curves"][f"dnmf {solver}"] = {"time": run["time"],
                                               "loss": run["loss_curve"]}
        rows.append({"solver": solver, "library": "dnmf", "iterations": run["iterations"],
                     "seconds": run["seconds"], "init_seconds": run["init_seconds"],
                     "s_iter": per_iteration(run), "loss": run["loss"],
                     "target": ref["loss"], "ratio": ratio, "ratio_loop": ratio_loop,
                     "reached": run["reached_target"]})

    betas = [float(b) for b in args.betas.split(",") if b.strip()]
    if betas:
        results["betas"] = beta_rows(V, args.k, betas, args.beta_iter, args.repeats,
                                     sklearn_blas, step)
        results["beta_table"] = beta_table(results["betas"])

    results["load_end"] = load()
    results["table"] = table(rows)
    print(results["table"])
    if betas:
        print("\nMU for other beta (time per iteration, positive V):")
        print(results["beta_table"])
        met = all(r["ratio"] <= BETA_TARGET for r in results["betas"])
        results["beta_target_met"] = met
        print(f"dnmf / sklearn mu time per iteration ≤ {BETA_TARGET} for every beta: "
              f"{'met' if met else 'NOT met'}")
    print("\nseconds of every round: " + "; ".join(
        f"{name} " + ", ".join(f"{t:.2f}" for t in run["all_seconds"])
        for name, run in results["runs"].items()))
    hals = results["runs"].get("dnmf hals")
    if hals is not None:
        met = hals["reached_target"] and hals["ratio"] <= TARGET_RATIO
        print(f"hals / cd time = {hals['ratio']:.3f} (target ≤ {TARGET_RATIO}): "
              f"{'met' if met else 'NOT met'}")
        results["target_met"] = met
    print(f"load average (1 min): {results['load_start']:.2f} at the start, "
          f"{results['load_end']:.2f} at the end")
    busy = max(results["load_start"], results["load_end"]) > 0.5 * (os.cpu_count() or 1)
    if busy and args.blas_threads is None:
        print("note: the machine was busy; multi-threaded BLAS slows down sharply when "
              "cores are shared, which penalises scikit-learn (dnmf limits BLAS threads "
              "per task). For a conservative ratio, rerun with --blas-threads 1.")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    if args.png:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
