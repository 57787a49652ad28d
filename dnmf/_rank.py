r"""Choosing k: :func:`select_rank` by speckled cross-validation or by consensus.

A sweep fits NMF for every k of a grid, ``n_replicates`` times each (the fits are
scheduled by :mod:`dnmf._sweep`, each an ordinary :class:`~dnmf.NMF` fit, so this
module sits on top of the estimator and never inside the engine). Then:

- ``method="cv"`` (speckled holdout, as RcppML's ``crossValidate``): replicate r of
  every k holds out the same ``fraction`` of the entries, chosen by a hash of (row,
  column, seed) (:class:`~dnmf.SpeckledHoldout`), fits on the rest and measures the
  mean loss per held-out entry (``test_error``). k is the smallest k whose mean test
  error is within one standard error of the lowest (``rule="1se"``, the default:
  beyond the true rank the test error flattens, and the rule does not pay
  components for noise), or the lowest mean (``rule="min"``).
- ``method="consensus"``: random restarts per k. The cophenetic correlation of the
  consensus matrix of the rows' cluster labels (Brunet et al. 2004) and the
  stability of the components: the components of all restarts, matched into k
  clusters (one per restart each), and the lowest of the clusters' mean cosine
  silhouettes (NMFk, Alexandrov et al.; cNMF, Kotliar et al. 2019). k is the largest k whose
  stability is at least ``stability_threshold`` (the components are reproduced by
  every restart); consensus H (the median of each cluster) and W for it follow.

This module decides k and draws the curves; fits and the sweep store are
:mod:`dnmf._sweep`'s.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._sweep import FitSpec, SweepStore, fit_key, replicate_seed, run_fits
from .errors import ConvergenceWarning, InvalidParameterError

__all__ = ["RankSelection", "component_stability", "cophenetic_correlation", "select_rank"]

logger = logging.getLogger("dnmf")

METHODS = ("cv", "consensus")
RULES = {"cv": ("1se", "min"), "consensus": ("stability", "cophenetic")}

#: NMF parameters a sweep sets itself, per fit.
OWN = ("n_components", "random_state", "out", "overwrite", "callback", "verbose")


# ------------------------------------------------------------------ consensus
def row_labels(W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Each row's component: argmax_j W[i, j]·‖H[j]‖ (invariant to W·D, D⁻¹·H)."""
    scale = np.linalg.norm(H, axis=1)
    return np.argmax(np.asarray(W) * scale[None, :], axis=1)


def cophenetic_correlation(labels: np.ndarray) -> float:
    """Cophenetic correlation of the consensus matrix of ``labels`` (replicates × items).

    The consensus matrix holds, for each pair of items, the fraction of replicates
    that put them in the same cluster; average linkage on 1 − consensus, and the
    correlation of its cophenetic distances with 1 − consensus (Brunet et al. 2004).
    1 when every replicate clusters the items alike.
    """
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform

    labels = np.asarray(labels)
    if labels.shape[1] < 3:
        return 1.0
    same = np.zeros((labels.shape[1], labels.shape[1]))
    for row in labels:
        same += row[:, None] == row[None, :]
    distance = 1.0 - same / len(labels)
    np.fill_diagonal(distance, 0.0)
    condensed = squareform(distance, checks=False)
    if np.ptp(condensed) == 0.0:
        return 1.0
    c, _ = cophenet(linkage(condensed, method="average"), condensed)
    return float(c)


def _unit_rows(H: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(H, axis=1, keepdims=True)
    return H / np.where(norms > 0, norms, 1.0)


def match_components(Hs: list[np.ndarray], rounds: int = 20) -> np.ndarray:
    """Cluster the components of several fits, one per fit in each cluster.

    ``Hs`` are the fits' H (k × m each). Returns ``assign`` of shape (fits, k):
    component ``assign[r, c]`` of fit r belongs to cluster c. Centroids start from
    the first fit and alternate with optimal matchings (Hungarian) of every fit's
    unit-norm components to them, as NMFk's constrained clustering.
    """
    from scipy.optimize import linear_sum_assignment

    units = [_unit_rows(np.asarray(H, dtype=np.float64)) for H in Hs]
    k = units[0].shape[0]
    centroids = units[0].copy()
    assign = np.tile(np.arange(k), (len(units), 1))
    for _ in range(rounds):
        new = np.empty_like(assign)
        for r, U in enumerate(units):
            rows, cols = linear_sum_assignment(-(centroids @ U.T))
            new[r, rows] = cols
        centroids = _unit_rows(np.mean([U[a] for U, a in zip(units, new)], axis=0))
        if np.array_equal(new, assign):
            break
        assign = new
    return assign


def silhouettes(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine-distance silhouette of each point (scikit-learn's definition)."""
    U = _unit_rows(points)
    D = np.clip(1.0 - U @ U.T, 0.0, 2.0)
    clusters = np.unique(labels)
    s = np.zeros(len(points))
    for i in range(len(points)):
        own = labels == labels[i]
        size = own.sum()
        if size <= 1:
            continue
        a = D[i, own].sum() / (size - 1)
        b = min(D[i, labels == c].mean() for c in clusters if c != labels[i])
        s[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return s


def component_stability(Hs: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Stability of the components of restarts: (stability, mean silhouette, H).

    The stability is the lowest of the clusters' mean silhouettes (NMFk's
    criterion): high only if every component is reproduced by every restart.

    H is the consensus: per cluster, the median of its unit-norm components, rows
    in the order of the first fit's components. With k = 1 the silhouette is
    undefined; the stability is then the mean cosine similarity to the centroid.
    """
    assign = match_components(Hs)
    units = [_unit_rows(np.asarray(H, dtype=np.float64)) for H in Hs]
    k = assign.shape[1]
    stacked = np.concatenate([U[a] for U, a in zip(units, assign)])  # fit-major
    labels = np.tile(np.arange(k), len(units))
    consensus = np.stack([np.median(stacked[labels == c], axis=0) for c in range(k)])
    if k == 1:
        cos = _unit_rows(stacked) @ _unit_rows(consensus)[0]
        return float(cos.mean()), float(cos.mean()), consensus
    s = silhouettes(stacked, labels)
    per_cluster = np.array([s[labels == c].mean() for c in range(k)])
    return float(per_cluster.min()), float(s.mean()), consensus


# ---------------------------------------------------------------- the choice
def choose_cv(summary: list[dict[str, Any]], rule: str) -> int:
    means = np.array([row["test_error"] for row in summary])
    best = int(np.nanargmin(means))
    if rule == "min":
        return int(summary[best]["k"])
    limit = means[best] + (summary[best]["test_error_se"] or 0.0)
    return int(next(row["k"] for row, mean in zip(summary, means) if mean <= limit))


def choose_consensus(summary: list[dict[str, Any]], rule: str, threshold: float) -> int:
    column = "stability" if rule == "stability" else "cophenetic"
    values = np.array([row[column] for row in summary])
    good = [row["k"] for row, v in zip(summary, values) if v >= threshold]
    if good:
        return int(max(good))
    return int(summary[int(np.argmax(values))]["k"])


# ------------------------------------------------------------------ the result
class RankSelection:
    """The outcome of :func:`select_rank`.

    Attributes
    ----------
    k : int
        The chosen rank.
    method : {"cv", "consensus"}
    rule : str
        How ``k`` was chosen from ``summary`` (see :func:`select_rank`).
    rows : list of dict
        One per fit: ``k``, ``replicate``, ``seed`` (its random_state), ``loss``
        (final training loss), ``iterations``, ``time`` (seconds), and for cv
        ``test_error`` (mean loss per held-out entry) and ``n_heldout``; for
        consensus the k's ``cophenetic`` and ``stability``.
    table : pandas.DataFrame
        ``rows`` as a DataFrame.
    summary : pandas.DataFrame
        One row per k: the means (cv: ``test_error``, ``test_error_se``, the
        standard error over replicates; consensus: ``cophenetic``, ``stability``
        (the lowest of the clusters' mean silhouettes), ``mean_silhouette``),
        ``loss`` and ``time``.
    consensus_H : ndarray of shape (k, n_features) or None
        Consensus: the median of each cluster of matched unit-norm components.
    consensus_W : ndarray or dask array of shape (n_samples, k) or None
        Consensus: W for ``consensus_H`` (``transform`` with H fixed).
    path : str or None
        The sweep store, if ``out`` was given.
    panel_cache : dict or None
        The sweep's shared panel cache, if one was used: ``budget`` and ``peak``
        (bytes; the peak never exceeds the budget), ``kept`` (panels), ``reads``
        (panels decoded) and ``hits`` (panel loads served without a read).
    """

    panel_cache: dict[str, int] | None = None

    def __init__(self, method: str, rule: str, k: int, rows: list[dict[str, Any]],
                 summary: list[dict[str, Any]], *, threshold: float | None = None,
                 consensus_H: np.ndarray | None = None, consensus_W: Any = None,
                 path: str | None = None) -> None:
        self.method = method
        self.rule = rule
        self.k = k
        self.rows = rows
        self.summary_rows = summary
        self.threshold = threshold
        self.consensus_H = consensus_H
        self.consensus_W = consensus_W
        self.path = path

    @staticmethod
    def _frame(rows: list[dict[str, Any]]) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise InvalidParameterError(
                "RankSelection.table needs pandas, which is not installed: pip install "
                "pandas (or use .rows, a list of dicts)."
            ) from None
        return pd.DataFrame(rows)

    @property
    def table(self) -> Any:
        return self._frame(self.rows)

    @property
    def summary(self) -> Any:
        return self._frame(self.summary_rows)

    def plot(self, path: str | os.PathLike[str] | None = None, *, title: str = "") -> Any:
        """The rank plot (a Matplotlib Figure); written to ``path`` if given."""
        from ._plot import rank_figure, save_figure

        fig = rank_figure(self, title=title)
        if path is not None:
            save_figure(fig, path)
        return fig

    def __repr__(self) -> str:
        ks = [row["k"] for row in self.summary_rows]
        return (f"RankSelection(k={self.k}, method={self.method!r}, rule={self.rule!r}, "
                f"ks={ks[0]}..{ks[-1]}, fits={len(self.rows)})")


# ------------------------------------------------------------------ validation
def _check_ks(ks: Any, method: str) -> list[int]:
    if isinstance(ks, numbers.Integral) or isinstance(ks, str):
        raise InvalidParameterError(
            f"ks must be an iterable of ranks such as range(2, 21), got {ks!r}."
        )
    try:
        values = list(ks)
    except TypeError:
        raise InvalidParameterError(
            f"ks must be an iterable of ranks such as range(2, 21), got {ks!r}."
        ) from None
    low = 2 if method == "consensus" else 1
    for k in values:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < low:
            raise InvalidParameterError(
                f"ks must hold integers >= {low}"
                + (" (consensus compares clusterings of at least 2 components)"
                   if method == "consensus" else "")
                + f"; got {k!r} in {values!r}."
            )
    if not values:
        raise InvalidParameterError("ks is empty: give at least one rank, e.g. range(2, 21).")
    if len(set(values)) != len(values):
        raise InvalidParameterError(f"ks holds a rank twice: {values!r}.")
    return sorted(int(k) for k in values)


def _check_nmf_params(params: dict[str, Any], method: str) -> dict[str, Any]:
    from ._estimator import NMF

    valid = NMF._get_param_names()
    for name in params:
        if name in OWN:
            raise InvalidParameterError(
                f"select_rank sets {name!r} itself for each fit; do not pass it"
                + (" (the sweep's seed= sets every fit's random_state)."
                   if name == "random_state" else
                   " (out= of select_rank is the sweep store)." if name == "out" else ".")
            )
        if name not in valid:
            raise InvalidParameterError(
                f"select_rank got an unknown parameter {name!r}: the NMF parameters are "
                f"{[v for v in valid if v not in OWN]!r}."
            )
    init = params.get("init", "random")
    if init == "custom":
        raise InvalidParameterError(
            "init='custom' cannot be used in a sweep: each k needs its own W and H."
        )
    if method == "consensus" and init != "random":
        raise InvalidParameterError(
            f"method='consensus' compares random restarts, but init={init!r} starts "
            f"every replicate alike. Use init='random' (the default of select_rank)."
        )
    NMF(2, **params)._checked()  # the estimator's own checks and messages
    if params.get("extrapolate") is True and (method == "cv" or params.get("missing")):
        why = ("every fit of method='cv' is masked (its held-out entries)" if method == "cv"
               else f"missing={params['missing']!r} masks every fit")
        raise InvalidParameterError(
            f"extrapolate=True is not available here: {why}, and masked fits do not "
            f"extrapolate. Use extrapolate='auto' (extrapolate where available) or "
            f"extrapolate=False."
        )
    for name, value in params.items():
        if name == "scheduler":
            continue
        try:
            json.dumps(value)
        except TypeError:
            raise InvalidParameterError(
                f"{name}={value!r} cannot be recorded in the sweep store; give a number "
                f"or a string."
            ) from None
    return {"init": "random", **params}


def _positive_int(name: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise InvalidParameterError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_arguments(*, method: str, rule: str | None, ks: Any, n_replicates: int | None,
                    fraction: float, stability_threshold: float, seed: int,
                    n_concurrent: int | None, consensus_rows: int) -> dict[str, Any]:
    """Check :func:`select_rank`'s own arguments before any work; normalised values.

    The command line calls it before converting its input, so a bad option costs
    nothing.
    """
    if method not in METHODS:
        raise InvalidParameterError(
            f"method must be one of {METHODS}, got {method!r}."
        )
    rule = RULES[method][0] if rule is None else rule
    if rule not in RULES[method]:
        raise InvalidParameterError(
            f"rule={rule!r} is not a rule of method={method!r}: use one of {RULES[method]}."
        )
    grid = _check_ks(ks, method)
    if n_replicates is None:
        n_replicates = 4 if method == "consensus" else 3
    replicates = _positive_int("n_replicates", n_replicates, 2 if method == "consensus" else 1)
    seed = _positive_int("seed", seed, 0)
    rows_cap = _positive_int("consensus_rows", consensus_rows, 3)
    if method == "cv" and not (isinstance(fraction, numbers.Real) and 0 < fraction < 1):
        raise InvalidParameterError(
            f"fraction must be a number between 0 and 1 (the share of entries held "
            f"out), got {fraction!r}."
        )
    if not isinstance(stability_threshold, numbers.Real) or not -1 <= stability_threshold <= 1:
        raise InvalidParameterError(
            f"stability_threshold must be between -1 and 1, got {stability_threshold!r}."
        )
    if n_concurrent is not None:
        n_concurrent = _positive_int("n_concurrent", n_concurrent)
    return {"rule": rule, "ks": grid, "n_replicates": replicates, "seed": seed,
            "consensus_rows": rows_cap, "n_concurrent": n_concurrent}


# ------------------------------------------------------------------ the sweep
def select_rank(
    X: Any,
    ks: Iterable[int] = range(2, 21),
    *,
    method: str = "cv",
    n_replicates: int | None = None,
    rule: str | None = None,
    fraction: float = 0.05,
    stability_threshold: float = 0.8,
    seed: int = 0,
    out: Any = None,
    overwrite: bool = False,
    n_concurrent: int | None = None,
    consensus_rows: int = 1000,
    scheduler: Any = None,
    on_fit: Callable[[dict[str, Any], int, int], Any] | None = None,
    mask: Any = None,
    panel_cache: int | str | None = "auto",
    **nmf_params: Any,
) -> RankSelection:
    r"""Choose the rank k of an NMF of ``X`` by cross-validation or by consensus.

    Parameters
    ----------
    X : array-like, sparse matrix, Dask array, Zarr array or path
        The data, as for :meth:`NMF.fit`; read once per iteration of every fit.
    ks : iterable of int, default=range(2, 21)
        The ranks to try.
    method : {"cv", "consensus"}, default="cv"
        ``"cv"``: speckled-holdout cross-validation (masked fits; test error on the
        held-out entries). ``"consensus"``: random restarts; cophenetic correlation
        and component stability.
    n_replicates : int or None, default=None
        Fits per k: holdout sets for cv (replicate r uses the same held-out entries
        for every k; None: 3), restarts for consensus (at least 2; None: 4 — with 2
        or 3 restarts a split component can come out alike by chance).
    rule : str or None, default=None
        cv: ``"1se"`` (default) the smallest k whose mean test error is within one
        standard error (over replicates) of the lowest mean, or ``"min"`` the lowest
        mean. consensus: ``"stability"`` (default) the largest k whose component
        stability is at least ``stability_threshold``, or ``"cophenetic"`` the
        largest k whose cophenetic correlation is (either falls back to the k with
        the highest value when no k reaches the threshold).
    fraction : float, default=0.05
        cv: the fraction of entries held out (0 < fraction < 1).
    stability_threshold : float, default=0.8
        consensus: see ``rule``.
    seed : int, default=0
        Seeds every fit's random_state (from (seed, k, replicate), so a fit does not
        depend on the grid or on the order of the fits) and the holdout sets.
    out : str, os.PathLike or None, default=None
        A sweep store (directory or fsspec URL): one run store per (k, replicate)
        and the table of finished fits. A sweep found there is continued: finished
        fits are kept, unfinished ones resume from their last commit, so an
        interrupted sweep ends with the same table. Without ``out`` the fits run in
        memory and nothing is kept.
    overwrite : bool, default=False
        With ``out``: discard what is there and start afresh.
    n_concurrent : int or None, default=None
        Fits run at the same time. None: on a cluster, one per worker thread (at
        least 2); locally, one per core (each with ``cores // n_concurrent``
        threads).
    consensus_rows : int, default=1000
        consensus: the cophenetic correlation is computed over at most this many rows
        (a seeded sample), so that the consensus matrix stays small for any n.
    scheduler : None, "threads", str or distributed.Client
        As for :class:`NMF`; every fit of the sweep uses it.
    on_fit : callable(row, done, total) or None
        Called as each fit finishes (from the thread that ran it, one at a time) with
        its table row, the number of fits of the grid done so far, and their total.
    mask : boolean array of X's shape or None, default=None
        True where an entry is observed (NumPy, Dask or Zarr, as for
        :meth:`NMF.fit`); with ``missing="nan"`` (an NMF parameter) NaN entries are
        unobserved too. Every fit uses only the observed entries; cv holds out
        entries among them, so the test error is measured on observed entries only.
    panel_cache : "auto", int or None, default="auto"
        A local sweep of a V read from storage (Zarr, a CSR Zarr group): the bytes
        of decoded panels of V (and of a Zarr mask) kept in memory and shared by all
        the sweep's fits, so that a panel is decompressed once rather than once per
        fit and iteration. ``"auto"``: a quarter of the memory available when the
        sweep starts; 0 or None: no cache. Panels are kept while there is room and
        never evicted; with V larger than the budget the rest is read by each fit
        as without a cache (fits reading the same panel at the same time still
        share that read). The results are the same, bit for bit, with and without
        it; it is not used on a cluster (each fit's tasks read on the workers). The
        fits do not keep V themselves (``cache=False``) unless ``cache`` is given.
        See docs/rank.md.
    **nmf_params
        Any other :class:`NMF` parameter (``solver``, ``beta_loss``, ``max_iter``,
        ``tol``, ``init``, ``alpha_W``, ...). ``init`` defaults to ``"random"``
        (consensus needs random restarts).

    Returns
    -------
    RankSelection

    References
    ----------
    Brunet, J.-P., Tamayo, P., Golub, T. R. and Mesirov, J. P. (2004). Metagenes and
    molecular pattern discovery using matrix factorization. PNAS 101(12).
    doi:10.1073/pnas.0308531101
    Kotliar, D. et al. (2019). Identifying gene expression programs of cell-type
    identity and cellular activity with single-cell RNA-Seq. eLife 8.
    doi:10.7554/eLife.43803
    Alexandrov, L. B. et al. (2013). Deciphering signatures of mutational processes
    operative in human cancer. Cell Reports 3(1). doi:10.1016/j.celrep.2012.12.008
    DeBruine, Z. J. et al. RcppML: fast non-negative matrix factorization
    (speckled cross-validation), https://github.com/zdebruine/RcppML
    """
    checked = check_arguments(method=method, rule=rule, ks=ks, n_replicates=n_replicates,
                              fraction=fraction, stability_threshold=stability_threshold,
                              seed=seed, n_concurrent=n_concurrent,
                              consensus_rows=consensus_rows)
    rule, grid, replicates = checked["rule"], checked["ks"], checked["n_replicates"]
    seed, rows_cap = checked["seed"], checked["consensus_rows"]
    from ._panelcache import PanelCache, resolve_budget, using

    budget = resolve_budget(panel_cache)
    params = _check_nmf_params({**nmf_params, "scheduler": scheduler}, method)
    from ._mask import split_mask

    if split_mask(mask)[1] is not None:
        raise InvalidParameterError(
            "select_rank makes the hold-outs of method='cv' itself: pass mask= a boolean "
            "array of observed entries (or None), not a SpeckledHoldout."
        )
    if mask is not None and params.get("extrapolate") is True:
        raise InvalidParameterError(
            "extrapolate=True is not available here: mask= masks every fit, and masked "
            "fits do not extrapolate. Use extrapolate='auto' (extrapolate where "
            "available) or extrapolate=False."
        )

    from ._backend import get_backend
    from ._source import as_source
    from .io import engine_input

    source = as_source(engine_input(X))
    n, m = source.shape
    backend = get_backend(scheduler)
    specs = [FitSpec(k, r) for k in grid for r in range(replicates)]
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, rows_cap), replace=False))
    recorded = {key: value for key, value in params.items() if key != "scheduler"}
    header = {
        "method": method, "ks": grid, "n_replicates": replicates, "seed": seed,
        "fraction": float(fraction) if method == "cv" else None,
        "consensus_rows": rows_cap if method == "consensus" else None,
        "shape": [int(n), int(m)], "dtype": source.dtype.str,
        **{f"nmf.{key}": value for key, value in sorted(recorded.items())},
        **({"mask": _mask_identity(mask)} if mask is not None else {}),
    }
    store = SweepStore(out) if out is not None else None
    memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fit_scheduler = backend.client if backend.distributed else "threads"
    from ._panelcache import CACHED_KINDS

    # One cache for the sweep's fits in this process (a cluster's fits read on the
    # workers); only for V read from storage, where a read is a decompression.
    cache = (PanelCache(budget) if budget and not backend.distributed
             and source.kind in CACHED_KINDS and len(specs) > 1 else None)

    def fit_one(spec: FitSpec, callback: Any) -> dict[str, Any]:
        with using(cache):
            return _fit(X, spec, params, method, seed, fraction, store, fit_scheduler,
                        callback, sample, memory, mask)

    def run(rows: list[dict[str, Any]], on_done: Any) -> None:
        done = {(row["k"], row["replicate"]) for row in rows}
        pending = [s for s in specs if (s.k, s.replicate) not in done]
        if not pending:
            return
        concurrent = n_concurrent or (
            max(2, backend.n_threads) if backend.distributed else (os.cpu_count() or 1)
        )
        import dask

        # Threads per local fit from the configured concurrency, not from how many
        # fits are left: a fit's panels (and so its bits) must not depend on how
        # far an earlier, interrupted run of the sweep got.
        threads = max(1, (os.cpu_count() or 1) // concurrent)
        logger.info("rank sweep: %d fits, %d at a time on %s", len(pending), concurrent,
                    backend.describe())
        from ._backend import _blas_limit

        # BLAS threads per fit likewise; the fits' own limits nest inside this one,
        # which restores the process's setting when the sweep ends.
        with dask.config.set(num_workers=threads), _blas_limit(concurrent), \
                warnings.catch_warnings():
            # A sweep's fits stop at max_iter as often as not; the table records the
            # iterations. (Filters are process-wide: set here, not in the threads.)
            warnings.simplefilter("ignore", ConvergenceWarning)
            run_fits(pending, fit_one, n_concurrent=min(concurrent, len(pending)),
                     on_done=on_done)

    wanted = {(s.k, s.replicate) for s in specs}

    def report(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        if on_fit is not None:
            done = sum((r["k"], r["replicate"]) in wanted for r in rows)
            on_fit(dict(row), done, len(specs))

    if store is None:
        rows: list[dict[str, Any]] = []

        def in_memory(spec: FitSpec, row: dict[str, Any]) -> None:
            rows.append(row)
            report(row, rows)

        run(rows, in_memory)
        path = None
    else:
        with store.writing(header, overwrite=overwrite):
            rows = store.rows()

            def on_done(spec: FitSpec, row: dict[str, Any]) -> None:
                rows.append(row)
                store.commit_rows(rows)
                report(row, rows)

            run(rows, on_done)
        path = store.path
    cache_stats = None
    if cache is not None:
        from ._panelcache import describe

        cache_stats = cache.stats()
        logger.info("rank sweep: %s", describe(cache_stats))
        cache.clear()
    rows = sorted((r for r in rows if (r["k"], r["replicate"]) in wanted),
                  key=lambda r: (r["k"], r["replicate"]))
    if method == "cv":
        summary = _summarize_cv(rows, grid)
        k = choose_cv(summary, rule)
        result = RankSelection(method, rule, k, rows, summary, path=path)
        result.panel_cache = cache_stats
        return result
    summary, consensus = _summarize_consensus(rows, grid, store, memory, sample)
    k = choose_consensus(summary, rule, float(stability_threshold))
    per_k = {s["k"]: s for s in summary}
    rows = [{**row, "cophenetic": per_k[row["k"]]["cophenetic"],
             "stability": per_k[row["k"]]["stability"]} for row in rows]
    H = consensus[k]
    W = _consensus_W(X, k, H, {**params, "scheduler": fit_scheduler}, mask)
    result = RankSelection(method, rule, k, rows, summary,
                           threshold=float(stability_threshold),
                           consensus_H=H, consensus_W=W, path=path)
    result.panel_cache = cache_stats
    return result


def holdout_seed(seed: int, replicate: int) -> int:
    """The SpeckledHoldout seed of replicate r: shared by every k of the sweep."""
    return int(np.random.SeedSequence([int(seed), 0x5EC1, int(replicate)]).generate_state(1)[0])


def _fit(X: Any, spec: FitSpec, params: dict[str, Any], method: str, seed: int,
         fraction: float, store: SweepStore | None, scheduler: Any, callback: Any,
         sample: np.ndarray, memory: dict[str, tuple[np.ndarray, np.ndarray]],
         mask: Any = None) -> dict[str, Any]:
    from ._estimator import NMF

    fit_seed = replicate_seed(seed, spec.k, spec.replicate)
    if "cache" not in params:
        # A sweep's fits do not keep their own copy of V (cache="auto"): one per fit in
        # flight. Locally they read it through the sweep's panel cache (panel_cache).
        params = {**params, "cache": False}
    est = NMF(spec.k, random_state=fit_seed, callback=callback,
              out=None if store is None else store.run_out(spec.key),
              **{**params, "scheduler": scheduler})
    if method == "cv":
        from ._mask import SpeckledHoldout

        holdout = SpeckledHoldout(fraction, seed=holdout_seed(seed, spec.replicate))
        W = est.fit_transform(X, mask=holdout if mask is None else (mask, holdout))
    else:
        W = est.fit_transform(X, mask=mask)
    row: dict[str, Any] = {"k": spec.k, "replicate": spec.replicate, "seed": fit_seed}
    if method == "cv":
        row["test_error"] = float(est.heldout_loss_) / max(int(est.n_heldout_), 1)
        row["n_heldout"] = int(est.n_heldout_)
    row["loss"] = float(est.loss_history_[-1]) if est.loss_history_ else math.nan
    row["iterations"] = int(est.n_iter_)
    if method == "consensus" and store is None:
        rows_W = np.asarray(W[sample] if not hasattr(W, "dask") else W[sample].compute())
        memory[spec.key] = (np.asarray(est.components_), row_labels(rows_W, est.components_))
    return row


def _summarize_cv(rows: list[dict[str, Any]], grid: list[int]) -> list[dict[str, Any]]:
    summary = []
    for k in grid:
        errors = np.array([r["test_error"] for r in rows if r["k"] == k])
        losses = np.array([r["loss"] for r in rows if r["k"] == k])
        times = np.array([r["time"] for r in rows if r["k"] == k])
        se = float(errors.std(ddof=1) / math.sqrt(len(errors))) if len(errors) > 1 else 0.0
        summary.append({"k": k, "test_error": float(errors.mean()), "test_error_se": se,
                        "loss": float(losses.mean()), "time": float(times.sum()),
                        "replicates": len(errors)})
    return summary


def _artifacts(key: str, store: SweepStore | None, memory: dict[str, Any],
               sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if key in memory:
        return memory[key]
    assert store is not None
    from ._runs import open_run

    run = open_run(store.run_out(key), verify=False)
    rows_W = np.asarray(run.W[sample].compute())
    memory[key] = (run.H, row_labels(rows_W, run.H))
    return memory[key]


def _summarize_consensus(rows: list[dict[str, Any]], grid: list[int], store: SweepStore | None,
                         memory: dict[str, Any], sample: np.ndarray,
                         ) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    summary, consensus = [], {}
    for k in grid:
        mine = [r for r in rows if r["k"] == k]
        parts = [_artifacts(fit_key(k, r["replicate"]), store, memory, sample) for r in mine]
        stability, mean_silhouette, H = component_stability([H for H, _ in parts])
        cophenetic = cophenetic_correlation(np.stack([labels for _, labels in parts]))
        consensus[k] = H
        summary.append({"k": k, "cophenetic": cophenetic, "stability": stability,
                        "mean_silhouette": mean_silhouette,
                        "loss": float(np.mean([r["loss"] for r in mine])),
                        "time": float(np.sum([r["time"] for r in mine])),
                        "replicates": len(mine)})
    return summary, consensus


def _mask_identity(mask: Any) -> Any:
    """What the sweep's header records of an explicit mask (each fit's run store also
    records its sampled checksum): a Zarr mask's location, a Dask mask's name, a
    digest of an in-memory one."""
    import hashlib

    module = type(mask).__module__
    shape = [int(s) for s in getattr(mask, "shape", ())]
    if module.startswith("zarr"):
        from ._run import _source_location

        return {"zarr": _source_location(mask), "shape": shape}
    if module.startswith("dask"):
        return {"dask": str(mask.name), "shape": shape}
    packed = np.packbits(np.asarray(mask, dtype=bool))
    return {"sha1": hashlib.sha1(packed.tobytes()).hexdigest(), "shape": shape}


def _consensus_W(X: Any, k: int, H: np.ndarray, params: dict[str, Any],
                 mask: Any = None) -> Any:
    """W for the consensus H: each row's NNLS (or the solver's transform) with H fixed."""
    from ._estimator import NMF

    est = NMF(k, **params)
    est.components_ = H.astype(np.float64)
    est.n_components_ = k
    est.n_features_in_ = H.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.transform(X, mask=mask)
