"""The iteration driver: one pass over V per iteration, then the H-step.

Per iteration the backend runs one pass (per panel: read ``V_i`` once, update ``W_i``,
return ``A_i``, ``B_i`` and loss pieces) and sums the panel statistics in a fixed
tree; the H-step (:func:`h_step`) then computes the losses, H from the sums and the
H-sized context of the next pass (``H·Hᵀ``, row sums of H). The H-step runs where
the sum is: in this process locally, on a worker on a cluster, where the next pass
is queued behind it so that workers need not wait for this process between passes.
This module owns the loop, the convergence test, callbacks and progress; the
mathematics is in ``_solvers`` and the scheduling in ``_backend``. It does not know
where W panels live: a *W keeper* says where each pass writes them (memory, or a
buffer of a run store).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from . import _extrapolation, _init, errors
from ._backend import Backend, Pending
from ._solvers import PanelContext, Regularization, Solver, Stats, add_stats
from ._solvers._base import w_pieces
from ._source import (
    PanelSource,
    check_panel,
    load_panel,
    needs_check,
    panel_digest,
    panel_start,
)
from .errors import InvalidInputError

if TYPE_CHECKING:
    from ._extrapolation import Extrapolation

__all__ = [
    "DataSummary",
    "FitState",
    "Loss",
    "MemoryKeeper",
    "balance",
    "balance_scale",
    "balanced_H",
    "balanced_W",
    "balances",
    "context_for",
    "initialize",
    "iterate",
    "scan",
    "transform",
]

logger = logging.getLogger("dnmf")


# --------------------------------------------------------------------------- scan
@dataclass(frozen=True)
class DataSummary:
    """What one validation pass over V learns: ‖V‖², the mean, the count of entries."""

    norm_sq: float
    total: float
    size: int
    nnz: int
    #: entries a hold-out excludes from the fit (0 without one)
    n_heldout: int = 0

    @property
    def mean(self) -> float:
        return self.total / self.size


#: Values per block when summing a panel in float64 (8 MiB of temporaries).
SCAN_BLOCK = 1 << 20


def scan_task(v_ref: Any, start: int, digest: bool = False) -> dict[str, Any]:
    """Counts of bad entries (with the first position) and sums, for one panel; with
    ``digest``, also the SHA-256 of its bytes (:func:`dnmf._source.panel_digest`).

    Sums run block by block in float64 (fixed order), so the temporaries stay small
    however large the panel; for sparse panels only the stored values are read.
    """
    V = load_panel(v_ref)
    import scipy.sparse as sp

    sha = panel_digest(V) if digest else None

    if sp.issparse(V):
        V = V.tocsr()
        values = V.data
    else:
        values = np.asarray(V).ravel()
    m = V.shape[1]

    def position(flat: int) -> tuple[int, int]:
        if sp.issparse(V):
            row = int(np.searchsorted(V.indptr, flat, side="right")) - 1
            return start + row, int(V.indices[flat])
        return start + flat // m, flat % m

    counts = {"n_nonfinite": 0, "n_negative": 0, "nnz": 0}
    firsts: dict[str, tuple[int, int] | None] = {"first_nonfinite": None,
                                                 "first_negative": None}
    norm_sq = 0.0
    total = 0.0
    for lo in range(0, values.shape[0], SCAN_BLOCK):
        block = values[lo:lo + SCAN_BLOCK]
        bad = ~np.isfinite(block)
        negative = block < 0
        for name, mask in (("nonfinite", bad), ("negative", negative)):
            count = int(np.count_nonzero(mask))
            if count and firsts["first_" + name] is None:
                firsts["first_" + name] = position(lo + int(np.argmax(mask)))
            counts["n_" + name] += count
        counts["nnz"] += int(np.count_nonzero(block))
        f64 = np.asarray(block[~bad] if bad.any() else block, dtype=np.float64)
        norm_sq += float(np.dot(f64, f64))
        total += float(f64.sum())
    return {**counts, **firsts, "norm_sq": norm_sq, "total": total, "digest": sha}


def scan(backend: Backend, source: PanelSource, refs: list[Any], bounds: list[tuple[int, int]],
         name: str = "NMF", *, digests: list[str] | None = None) -> DataSummary:
    """Read V once, refuse NaN, ±inf and negative values, and return its summary.

    ``digests`` (a list): filled with each panel's SHA-256, from the same read.
    """
    with backend.small_limits():
        parts = backend.map(scan_task, [(ref, a, digests is not None)
                                        for ref, (a, _) in zip(refs, bounds)])
    if digests is not None:
        digests.extend(p["digest"] for p in parts)
    n_nonfinite = sum(p["n_nonfinite"] for p in parts)
    if n_nonfinite:
        r, c = next(p["first_nonfinite"] for p in parts if p["first_nonfinite"])
        raise InvalidInputError(
            f"Input X contains NaN or infinity: {n_nonfinite} entries are NaN or inf "
            f"(the first at row {r}, column {c}). NMF needs finite values: impute or "
            f"drop them first, or, if NaN marks missing entries, pass missing='nan' to "
            f"fit on the observed entries only."
        )
    n_negative = sum(p["n_negative"] for p in parts)
    if n_negative:
        r, c = next(p["first_negative"] for p in parts if p["first_negative"])
        raise InvalidInputError(
            f"Negative values in data passed to {name}: {n_negative} entries are negative "
            f"(the first at row {r}, column {c}). NMF needs non-negative data: shift or "
            f"clip it, e.g. X - X.min() or np.clip(X, 0, None)."
        )
    n, m = source.shape
    # Fixed order: panels in row order.
    norm_sq = math.fsum(p["norm_sq"] for p in parts)
    total = math.fsum(p["total"] for p in parts)
    if not (math.isfinite(norm_sq) and math.isfinite(total)):
        raise InvalidInputError(
            f"Input X is too large for {name} in float64: its sum of squares overflows "
            f"(values near 1e154 or more). Scale it down first, e.g. X / X.max(); W "
            f"then scales by the same factor."
        )
    return DataSummary(norm_sq, total, n * m, sum(p["nnz"] for p in parts))


# ------------------------------------------------------------------- the context
def context_for(H: np.ndarray, source: PanelSource,
                iteration: int | None = None) -> PanelContext:
    """The H-derived data every panel of a pass needs (``iteration``: passes done)."""
    return _context(H.astype(source.dtype, copy=False), source.shape, source.work_nnz,
                    iteration)


def _context(H_data: np.ndarray, shape: tuple[int, int], nnz: int,
             iteration: int | None = None, gram: bool = True,
             compiled: bool | None = None) -> PanelContext:
    """The context of a pass; ``gram``: compute H·Hᵀ now (else only if a panel asks);
    ``compiled``: the last pass's :attr:`PanelContext.compiled`, if known."""
    H64 = H_data.astype(np.float64, copy=False)
    # (np.add.reduce is H64.sum(axis=1) without the method's Python layer)
    return PanelContext(H_data, H64 @ H64.T if gram else None, H_sum=np.add.reduce(H64, 1),
                        shape=shape, nnz=nnz, iteration=iteration, compiled=compiled)


# ---------------------------------------------------------------- initialisation
def initialize(
    backend: Backend,
    source: PanelSource,
    refs: list[Any],
    bounds: list[tuple[int, int]],
    *,
    init: str,
    k: int,
    seed: int,
    summary: DataSummary,
    keeper: WKeeper | None = None,
    want_W: bool = True,
) -> tuple[list[Any], np.ndarray]:
    """W panels (handles) and H for ``init`` in {"random", "nndsvd", "nndsvda", "nndsvdar"}.

    With a ``keeper``, each W panel is written where the keeper says by the task
    that makes it, so W is never gathered (and NNDSVD's U is recomputed per panel
    from one more read of V rather than held). Without ``want_W`` only H is made
    (the same H) and no W panel (nor NNDSVD's U) exists at any point: ``[]`` for W.
    """
    with backend.small_limits():
        return _initialize(backend, source, refs, bounds, init=init, k=k, seed=seed,
                           summary=summary, keeper=keeper, want_W=want_W)


def _initialize(
    backend: Backend,
    source: PanelSource,
    refs: list[Any],
    bounds: list[tuple[int, int]],
    *,
    init: str,
    k: int,
    seed: int,
    summary: DataSummary,
    keeper: WKeeper | None,
    want_W: bool = True,
) -> tuple[list[Any], np.ndarray]:
    n, m = source.shape
    dtype = source.dtype.str
    avg = math.sqrt(summary.mean / k)
    if init == "random":
        H = _init.random_H(seed, k, m, avg, source.dtype)
        if not want_W:
            return [], H
        W = _map_W(
            backend, keeper, _init.random_W_task, [(a, b) for a, b in bounds],
            (k, avg, seed, dtype),
        )
        return W, H
    # NNDSVD family: a randomized range finder, one read of V per power pass.
    Q = _init.svd_sketch(seed, m, k)
    # One pass is one power iteration (Vᵀ·V·Q); the last pass also gives the Gram of V·Q.
    # scikit-learn runs 4 or 7 power iterations; so do we, plus the final pass.
    n_passes = 5 if k >= 0.1 * min(n, m) else 8
    C = np.zeros((Q.shape[1], Q.shape[1]))
    for power in range(n_passes):
        _, (Z, C) = backend.run_pass(
            _range_pass_task, [(ref,) for ref in refs], (Q,), _add_pair, keep_outputs=False
        )
        if power < n_passes - 1:
            Q = np.linalg.qr(Z)[0]
    S, Vt = _init.svd_from_gram(Q, C, k)
    proj = Vt.T / np.where(S > 0, S, 1.0)
    U_handles, x_norms = backend.run_pass(
        _init.nndsvd_U_task, [(ref,) for ref in refs], (proj,), _add,
        keep_outputs=keeper is None and want_W,
    )
    H, use_pos, scale = _init.nndsvd_H(S, Vt, x_norms)
    if not want_W:
        W = []
    elif keeper is None:
        W = backend.map_keep(
            _init.nndsvd_W_task,
            [(U, a) for U, (a, _) in zip(U_handles, bounds)],
            (use_pos, scale, init, summary.mean, seed, dtype),
        )
    else:
        W = _map_W(
            backend, keeper, _nndsvd_W_from_V_task,
            [(ref, a) for ref, (a, _) in zip(refs, bounds)],
            (proj, use_pos, scale, init, summary.mean, seed, dtype),
        )
    H = _init.fill_H(H, init, summary.mean, seed)
    return W, H.astype(source.dtype)


def _map_W(backend: Backend, keeper: WKeeper | None, task: Callable[..., np.ndarray],
           per_panel: list[tuple[Any, ...]], shared: tuple[Any, ...]) -> list[Any]:
    """Run an init task per panel; keep W on the workers, or store it via ``keeper``."""
    if keeper is None:
        return backend.map_keep(task, per_panel, shared)
    sinks = keeper.sinks(0)
    outputs = backend.map(
        _stored_task, [(task, sink, *args) for sink, args in zip(sinks, per_panel)], shared
    )
    return keeper.handles(outputs, sinks)


def _stored_task(task: Callable[..., np.ndarray], sink: Any, *args: Any) -> Any:
    return sink.store(task(*args))


def _nndsvd_W_from_V_task(v_ref: Any, start: int, proj: np.ndarray, *args: Any) -> np.ndarray:
    U, _ = _init.nndsvd_U_task(v_ref, proj)
    return _init.nndsvd_W_task(U, start, *args)


def _range_pass_task(v_ref: Any, Q: np.ndarray) -> tuple[None, tuple[np.ndarray, np.ndarray]]:
    return None, _init.range_finder_task(v_ref, Q)


def _add(a: Any, b: Any) -> Any:
    return a + b


def _add_pair(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    return a[0] + b[0], a[1] + b[1]


# --------------------------------------------------------------------- the loop
class WKeeper(Protocol):
    """Where a pass writes the new W panels."""

    def sinks(self, iteration: int) -> list[Any]:
        """One sink per panel for the pass that produces iteration ``iteration``."""

    def handles(self, outputs: list[Any], sinks: list[Any]) -> list[Any]:
        """The W handles for the next pass, from a pass's outputs and sinks."""

    #: May the next pass start before this one's result is back (it has no side effects)?
    queue_ahead: bool


#: On a cluster without a run store, W's lineage is cut this often (see MemoryKeeper).
REROOT_EVERY = 20


class MemoryKeeper:
    """W panels live in memory (this process, or the workers' memory as futures).

    On a cluster, W panels are futures whose recipe reaches back through every pass
    (so a lost worker's panels can be recomputed); every ``reroot_every`` passes the
    panels are brought back once (n × k values) and re-rooted as graph literals so
    the scheduler's memory of past passes stays bounded. Long cluster runs should
    use a run store (``out=``), where W is re-read from storage instead.
    """

    def __init__(
        self, n_panels: int, backend: Backend | None = None, reroot_every: int = REROOT_EVERY
    ) -> None:
        self.n_panels = n_panels
        self.backend = backend
        self.reroot_every = reroot_every
        self._passes = 0

    #: Passes write nothing: a queued pass that is not wanted is simply dropped.
    queue_ahead = True

    def sinks(self, iteration: int) -> list[Any]:
        return [None] * self.n_panels

    def handles(self, outputs: list[Any], sinks: list[Any]) -> list[Any]:
        self._passes += 1
        if self.backend is not None and self._passes % self.reroot_every == 0:
            return self.backend.reroot(outputs)
        return outputs


def update_task(
    v_ref: Any, w_ref: Any, sink: Any, solver: Solver, ctx: PanelContext, reg: Regularization
) -> tuple[Any, Stats]:
    """The panel task: read V_i and W_i, update W_i, return it (or store it) and stats."""
    V = load_panel(v_ref)
    if needs_check(v_ref):
        check_panel(V, panel_start(v_ref) if sink is None else sink.start)
    W = load_panel(w_ref)
    W_new, stats = solver.update_panel(V, W, ctx, reg)
    if "w_sum0" not in stats:
        # The penalties' W terms at the pass's start (for solvers that do not report
        # them themselves): the objective of the iterate the pass started from.
        stats = {**stats, **w_pieces(W)}
    if sink is not None:
        return sink.store(W_new), stats
    return W_new, stats


class Loss(NamedTuple):
    """The value of the objective at one iterate: the data term and the penalties.

    ``objective = data + penalty`` is what the solvers minimise and what the stopping
    rule and ``loss_history_`` use; ``data`` alone (½‖X − WH‖² or the KL divergence)
    gives ``reconstruction_err_``, as in scikit-learn. (A named tuple: two are made
    per iteration, and a frozen dataclass costs several times as much to build.)
    """

    data: float
    penalty: float = 0.0

    @property
    def objective(self) -> float:
        return self.data + self.penalty


def h_step(stats: Stats, solver: Solver, ctx: PanelContext, reg: Regularization, *,
           norm_sq: float
           ) -> tuple[PanelContext, tuple[Loss, Loss | None, np.ndarray, float | None]]:
    """After a pass: the losses, H from the summed stats, and the next pass's context.

    Runs where the sum is (a worker, on a cluster). The context goes on to the next
    pass; only the two losses and the new H come back to the driver.
    """
    before = Loss(solver.loss_before(stats, ctx, norm_sq),
                  solver.penalty_before(stats, ctx.H, reg))
    heldout = _heldout(solver, stats)
    H_new = solver.update_H(ctx.H.astype(np.float64), stats, ctx, reg)
    data_after = solver.loss_after(stats, H_new, norm_sq)
    after = (None if data_after is None
             else Loss(data_after, solver.penalty_after(stats, H_new, reg)))
    # The context holds H_new itself when the dtypes agree: the task's result then
    # carries H once, to the driver and to the workers of the next pass.
    next_ctx = _context(H_new.astype(ctx.H.dtype, copy=False), ctx.shape, ctx.nnz,
                        None if ctx.iteration is None else ctx.iteration + 1,
                        gram=solver.uses_gram, compiled=ctx._compiled)
    return next_ctx, (before, after, H_new, heldout)


def _h_step_extrapolated(stats: Stats, solver: Solver, ctx: PanelContext, reg: Regularization,
                         beta: float, from_extrapolated: bool, *, norm_sq: float) -> Any:
    """:func:`h_step` after an extrapolated pass (whose shared arguments it ignores)."""
    return h_step(stats, solver, ctx, reg, norm_sq=norm_sq)


def _heldout(solver: Solver, stats: Stats) -> float | None:
    """The held-out loss at the pass's starting (W, H), for masked solvers with a hold-out."""
    method = getattr(solver, "heldout_before", None)
    return method(stats) if method is not None else None


def loss_task(v_ref: Any, w_ref: Any, solver: Solver, ctx: PanelContext) -> tuple[None, Stats]:
    """Loss pieces at (W_i, H) for one panel (the extra pass KL needs at the end)."""
    V = load_panel(v_ref)
    if needs_check(v_ref):
        check_panel(V, panel_start(v_ref))
    W = load_panel(w_ref)
    pieces = solver.loss_pieces(V, W, ctx)
    return None, pieces if "w_sum0" in pieces else {**pieces, **w_pieces(W)}


@dataclass
class FitState:
    """Everything the loop needs to continue: it is what a checkpoint saves."""

    W: list[Any]
    H: np.ndarray
    iteration: int = 0
    #: The objective (data term + penalties) after each iteration.
    loss_history: list[float] = field(default_factory=list)
    init_loss: float | None = None
    #: loss over the held-out entries at the (W, H) of the last recorded loss
    heldout_loss: float | None = None
    #: The data term alone at the last recorded iterate (None: equal to the objective).
    data_loss: float | None = None
    converged: bool = False
    stopped_by_callback: bool = False
    done: bool = False


def _converged(history: list[float], init_loss: float | None, tol: float,
               rounding: float = 0.0) -> bool:
    """Relative decrease of the objective over the last iteration is below ``tol``.

    A rise counts as convergence only while it is within ``rounding`` (the error of
    computing the objective): the objective has then stopped decreasing. A larger
    rise is not convergence; the fit goes on (to ``max_iter`` if need be, with its
    ConvergenceWarning).
    """
    if len(history) == 0:
        return False
    previous = history[-2] if len(history) >= 2 else init_loss
    if previous is None:
        return False
    current = history[-1]
    if current - previous > rounding + 64.0 * np.finfo(np.float64).eps * abs(previous):
        return False
    if previous <= rounding / 16.0:
        # At the floor: an objective within rounding of 0 (a 16th of the bound above:
        # the noise measured is ~1 eps·‖V‖²) is an exact factorization; testing for
        # exactly 0 would let rounding decide (a dense V and its sparse copy stopped
        # at different iterations).
        return True
    # tol=0 means "run max_iter iterations": a loss that rose (a negative decrease)
    # must not pass for convergence there.
    return tol > 0 and (previous - current) / previous < tol


def _unresolved(history: list[float], rounding: float) -> bool:
    """Whether the recorded objective ever fell by less than ``rounding`` (or rose)
    from one iteration to the next."""
    return any(a - b <= rounding for a, b in itertools.pairwise(history))


def iterate(
    backend: Backend,
    source: PanelSource,
    refs: list[Any],
    solver: Solver,
    reg: Regularization,
    state: FitState,
    *,
    max_iter: int,
    tol: float,
    norm_sq: float,
    total: float | None = None,
    keeper: WKeeper | None = None,
    callback: Callable[[int, float], Any] | None = None,
    on_iteration: Callable[[FitState], None] | None = None,
    progress: Callable[[FitState], None] | None = None,
    extrapolation: Extrapolation | None = None,
) -> FitState:
    """Run iterations until convergence, ``max_iter`` or the callback says stop.

    For solvers whose loss needs a pass (KL), pass t also yields the loss of
    iteration t − 1; when that loss meets the stopping rule the pass's new W is
    dropped, so the state returned always matches its last recorded loss.

    With ``extrapolation`` (HALS/ALS with W in memory, :mod:`dnmf._extrapolation`)
    each pass works from the extrapolated factors; a pass whose iterate is rejected
    counts as an iteration that records the unchanged loss (without the stopping
    test) and keeps the state as it was.
    """
    keeper = keeper or MemoryKeeper(len(refs), backend)
    ex = extrapolation
    # A float32 loss from float32 products cannot resolve changes below ~1e-7·‖V‖²,
    # so near the end of a fit rounding alone decides its decrease, and the fit would
    # stop there (where float64 goes on decreasing). Frobenius solvers then switch to
    # statistics accumulated exactly in float64, from the first recorded decrease
    # within rounding (or rise) on. Derived from the recorded losses alone, so a
    # resumed run switches where the first one did. (Not for extrapolated fits: a
    # rise undoes their step instead of being recorded.)
    exact = solver.with_exact_stats() if (
        ex is None and np.dtype(source.dtype) != np.float64 and not solver.exact_stats
    ) else None

    def bound(solver: Solver) -> float:
        """How far the data term can be off by rounding alone (see _converged)."""
        return solver.rounding(norm_sq, norm_sq if total is None else total,
                               solver.stats_eps(source.dtype))

    rounding = bound(solver)
    if exact is not None and _unresolved(state.loss_history, rounding):
        solver, exact = exact, None
        rounding = bound(solver)

    def record(loss: Loss | float, test: bool = True) -> bool:
        """Record an iteration's objective (a float: a rejected extrapolated pass
        repeating the last one, whose data term stays recorded)."""
        if isinstance(loss, Loss):
            value = float(loss.objective)
            state.data_loss = float(loss.data) if loss.penalty else None
        else:
            value = float(loss)
        state.loss_history.append(value)
        stop = False
        nonlocal solver, exact, rounding, queued
        if test and exact is not None and _unresolved(state.loss_history[-2:], rounding):
            # The first unresolved decrease: from now on the loss is computed exactly
            # (no stopping test on this one, which rounding decided); a pass already
            # queued with the float32 statistics is dropped.
            solver, exact = exact, None
            rounding = bound(solver)
            test = False
            if queued is not None:
                queued[0].cancel()
                queued = None
        if callback is not None and callback(state.iteration, value):
            state.stopped_by_callback = True
            stop = True
        if test and _converged(state.loss_history, state.init_loss, tol, rounding):
            state.converged = True
            stop = True
        if progress is not None:
            progress(state)
        return stop

    lagged = not solver.exact_loss_after_update
    # On a cluster with W in memory, the next pass is queued as soon as this one is
    # submitted: its tasks take the context from the H-step task of this pass, so the
    # workers go from one pass to the next without waiting for this process. A queued
    # pass that is not wanted (convergence, callback) is cancelled; it writes nothing.
    # With extrapolation the next pass depends on this one's verdict: no queueing.
    ahead = backend.distributed and keeper.queue_ahead and ex is None

    plain_then = functools.partial(h_step, norm_sq=norm_sq)
    extrapolated_then = functools.partial(_h_step_extrapolated, norm_sq=norm_sq)

    def submit(W: list[Any], ctx_arg: Any, iteration: int) -> tuple[Pending, list[Any]]:
        sinks = keeper.sinks(iteration + 1)
        task: Callable[..., Any] = update_task
        shared: tuple[Any, ...] = (solver, ctx_arg, reg)
        then: Callable[..., Any] = plain_then
        if ex is not None:
            task, then = _extrapolation.extrapolated_update_task, extrapolated_then
            shared = (solver, ctx_arg, reg, ex.beta, ex.from_extrapolated)
        pending = backend.submit_pass(
            task, list(zip(refs, W, sinks)), shared, add_stats, keep_outputs=True, then=then,
        )
        return pending, sinks

    queued: tuple[Pending, list[Any]] | None = None
    # The context of the pass to come: made here for the first; after that, the one
    # the last H-step made (a handle to it on a cluster, where it stays) when passes
    # are pure. Passes that write W to a run store must not hang on the last pass's
    # tasks: a lost worker would make Dask rerun them, writing a W buffer that may
    # have been reused since; their context is made here from H.
    reuse_ctx = (ahead or not backend.distributed) and ex is None
    # (A resumed extrapolated run continues from its recorded H_y, not from its H.)
    # Extrapolated passes start as plain HALS's (its warm-up included) until
    # extrapolation starts (dnmf/_extrapolation.py); no shuffle (refused with them).
    ctx: Any = (context_for(state.H, source, state.iteration) if ex is None
                else context_for(ex.H_y, source, state.iteration))
    with backend.driver_limits():
        while True:
            if lagged and state.iteration == max_iter:
                _, pieces = backend.run_pass(
                    loss_task,
                    list(zip(refs, state.W)),
                    (solver, ctx),
                    add_stats,
                    keep_outputs=False,
                )
                # ``ctx`` may be a handle on a cluster; the loss needs the values here.
                loss = Loss(solver.loss_before(pieces, context_for(state.H, source), norm_sq),
                            solver.penalty_before(pieces, state.H, reg))
                if len(state.loss_history) < state.iteration:
                    state.heldout_loss = _heldout(solver, pieces)
                    record(loss)
                break
            pending, sinks = queued or submit(state.W, ctx, state.iteration)
            queued = None
            if ahead and state.iteration + 1 < max_iter:
                next_W = keeper.handles(pending.outputs, sinks)
                queued = submit(next_W, pending.part(), state.iteration + 1)
            else:
                next_W = None
            loss_before, loss_after, H_new, heldout = pending.result()
            if state.iteration == 0 and state.init_loss is None:
                state.init_loss = loss_before.objective
            if lagged and len(state.loss_history) < state.iteration:
                # Pass t measured iteration t - 1: record it, and stop before committing
                # to this pass's W if that loss says so.
                state.heldout_loss = heldout
                if record(loss_before):
                    break
            if ex is not None:
                assert loss_after is not None
                # Ties: losses within rounding of each other (a 16th of the stopping
                # rule's bound, which is generous: measured noise ~1 eps·‖V‖²).
                accepted = ex.judge(loss_after.objective, H_new, source.dtype,
                                    tie=rounding / 16.0)
                if accepted:
                    state.W = keeper.handles(pending.outputs, sinks)
                    state.H = H_new.astype(source.dtype)
                state.iteration += 1
                stop = record(loss_after if accepted else ex.loss_prev, test=accepted)
                if on_iteration is not None:
                    on_iteration(state)
                if stop or state.iteration >= max_iter:
                    break
                ctx = context_for(ex.H_y, source, state.iteration)
                continue
            state.W = next_W if next_W is not None else keeper.handles(pending.outputs, sinks)
            state.H = H_new.astype(source.dtype)
            ctx = (pending.part() if reuse_ctx
                   else context_for(state.H, source, state.iteration + 1))
            state.iteration += 1
            stop = False
            if not lagged:
                assert loss_after is not None
                stop = record(loss_after)
            if on_iteration is not None:
                on_iteration(state)
            if stop or (not lagged and state.iteration >= max_iter):
                break
    if queued is not None:
        queued[0].cancel()
    if ex is not None and isinstance(keeper, MemoryKeeper):
        # The iterate's W: the accepted pass's W_y, left where it is. (A run store's
        # keeps the pairs: its commit records both, and its W is the W_y buffer.)
        state.W = (backend.map_keep(_extrapolation.final_W_task, [(w,) for w in state.W])
                   if backend.distributed else [_extrapolation.final_W_task(w) for w in state.W])
    state.done = True
    if not (state.converged or state.stopped_by_callback):
        warnings.warn(
            f"Maximum number of iterations {max_iter} reached. Increase it to improve "
            f"convergence (the relative decrease of the objective was still above "
            f"tol={tol}; or raise tol).",
            errors.ConvergenceWarning,
            stacklevel=3,
        )
    return state


# ----------------------------------------------------------------- balancing
def balances(solver: Solver, reg: Regularization) -> bool:
    """Whether a fit with ``solver`` and ``reg`` ends with :func:`balance`.

    HALS and ALS do; MU does not, so that its W and H stay those of scikit-learn's
    ``solver="mu"`` from the same start. Penalised fits do not: with L1/L2 penalties
    the objective depends on how W and H share the scale, so a rescaling would change
    the value that was minimised.
    """
    unpenalised = not (reg.l1_W or reg.l2_W or reg.l1_H or reg.l2_H)
    return bool(getattr(solver, "balances", False)) and unpenalised


def _column_max_task(w_ref: Any) -> tuple[None, np.ndarray]:
    W = load_panel(w_ref)
    if W.shape[0] == 0:
        return None, np.zeros(W.shape[1])
    return None, W.max(axis=0).astype(np.float64)


def _scale_task(w_ref: Any, sink: Any, scale: np.ndarray) -> Any:
    W = balanced_W(load_panel(w_ref), scale)
    return sink.store(W) if sink is not None else W


def balanced_W(W: Any, scale: Any) -> Any:
    """W's columns times ``scale`` (a NumPy panel or a Dask array), in W's dtype.

    The one formula every reader of a balanced result uses, so that a fit in memory,
    a run store's W and an export agree bit for bit.
    """
    return W * np.asarray(scale, dtype=np.float64).astype(W.dtype)


def balanced_H(H: np.ndarray, scale: Any) -> np.ndarray:
    """H's rows divided by ``scale``, in H's dtype (see :func:`balanced_W`)."""
    H = np.asarray(H)
    scale = np.asarray(scale, dtype=np.float64)
    return (H.astype(np.float64) / scale[:, np.newaxis]).astype(H.dtype)


def balance_scale(backend: Backend, state: FitState) -> np.ndarray | None:
    """The scale that balances W's columns and H's rows: ``max W[:, j] = max H[j]``.

    Applied as ``W · diag(s)`` and ``diag(s)⁻¹ · H`` (:func:`balanced_W`,
    :func:`balanced_H`), W·H is unchanged (up to rounding), and then
    ``max(W)·max(H) = max_j max(W[:, j])·max(H[j]) = max_j max(w_j h_j) <= max(W·H)``:
    no entry of either factor is larger than the data's scale. HALS and ALS leave the
    split of scale between a column of W and its row of H to chance (their iterates
    are equivariant to it); without this step a swimmer fit ended with
    max(W)·max(H) = 150 × max(V). A component that is 0 in either factor keeps scale
    1. One read of W for its column maxima (reduced by max in the fixed tree); V is
    not read. None when nothing would change.

    A run store commits the iterate itself and this scale beside it (``balance`` in
    the manifest): results read from the store are balanced, while a resume or an
    extension continues from the iterate, so that it stays bit for bit the fit that
    was never interrupted.
    """
    k = state.H.shape[0]
    _, w_max = backend.run_pass(_column_max_task, [(w,) for w in state.W], (), np.maximum,
                                keep_outputs=False)
    h_max = np.asarray(state.H, dtype=np.float64).max(axis=1)
    scale = np.ones(k)
    live = (w_max > 0) & (h_max > 0) & np.isfinite(w_max) & np.isfinite(h_max)
    scale[live] = np.sqrt(h_max[live] / w_max[live])
    return None if np.all(scale == 1.0) else scale


def balance(backend: Backend, state: FitState, keeper: WKeeper | None = None) -> np.ndarray | None:
    """Balance an in-memory fit's W and H in place (:func:`balance_scale`)."""
    scale = balance_scale(backend, state)
    if scale is None:
        return None
    keeper = keeper or MemoryKeeper(len(state.W))
    sinks = keeper.sinks(state.iteration)
    outputs = backend.map_keep(_scale_task, list(zip(state.W, sinks)), (scale,))
    state.W = keeper.handles(outputs, sinks)
    state.H = balanced_H(state.H, scale)
    return scale


# ---------------------------------------------------------------- transform
def transform_task(
    v_ref: Any,
    w_ref: Any,
    solver: Solver,
    ctx: PanelContext,
    reg: Regularization,
    max_iter: int,
    tol: float,
) -> np.ndarray:
    """Solve one panel of W with H fixed: one read of V_i, inner iterations in memory."""
    V = load_panel(v_ref)
    W0 = load_panel(w_ref)
    return solver.transform_panel(V, W0, ctx, reg, max_iter, tol)


def transform_count_task(*args: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`transform_task` (same arguments), and the iterations its slowest row
    needed."""
    from ._solvers._base import ROW_ITERATIONS

    counts: list[int] = []
    token = ROW_ITERATIONS.set(counts)
    try:
        W = transform_task(*args)
    finally:
        ROW_ITERATIONS.reset(token)
    return W, np.array([max(counts, default=0)], dtype=np.int64)


def start_W_task(start: int, stop: int, k: int, value: float, dtype: str) -> np.ndarray:
    """A constant start for ``transform`` (scikit-learn's choice for MU)."""
    return np.full((stop - start, k), value, dtype=dtype)


def transform(
    backend: Backend,
    source: PanelSource,
    refs: list[Any],
    bounds: list[tuple[int, int]],
    solver: Solver,
    reg: Regularization,
    H: np.ndarray,
    *,
    start_value: float,
    max_iter: int,
    tol: float,
    count: bool = False,
) -> Any:
    """W (handles per panel) minimising the loss with H fixed.

    With ``count``: ``(handles, n_iter)``, n_iter the iterations the slowest row of
    any panel needed (at most ``max_iter``).
    """
    k = H.shape[0]
    ctx = context_for(H, source)
    starts = backend.map_keep(
        start_W_task, [(a, b) for a, b in bounds], (k, start_value, source.dtype.str)
    )
    if count:
        handles, n_iter = backend.run_pass(
            transform_count_task, list(zip(refs, starts)),
            (solver, ctx, reg, max_iter, tol), np.maximum, keep_outputs=True,
        )
        return handles, int(np.asarray(n_iter)[0])
    return backend.map_keep(
        transform_task,
        list(zip(refs, starts)),
        (solver, ctx, reg, max_iter, tol),
    )
