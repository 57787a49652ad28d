"""Extrapolation with restarts for HALS and ALS (Ang & Gillis, 2019), one pass per iteration.

Plain alternating updates go from (W, H) to the W-step's W_n and the H-step's H_n.
With extrapolation the steps start from, and use, points pushed further along the
last move:

    W_n = step_W(from W_y, with H_y)        (in the pass, per panel)
    W_y ← max(0, W_n + β·(W_n − W_prev))    (the same task: the H-step's W)
    H_n = step_H(from H_y, with W_y)        (after the pass, from Σ W_yᵀV, Σ W_yᵀW_y)
    H_y ← H_n + β·(H_n − H_prev)            (on the driver: the next pass's H)

W_prev, H_prev are the last accepted W_n, H_n. The loss of (W_y, H_n) — a
non-negative pair — comes free from the pass's sums, as plain HALS's does, so an
iteration still reads V once. It is the iterate the fit records and returns.

If that loss is above the last accepted one, the iteration is rejected: the
pass is dropped, the next one restarts from the accepted (W_prev, H_prev) without
extrapolation's push, and β shrinks (β ← β/η, its ceiling β̄ set to the last β
that worked). Otherwise β grows (β ← min(β̄, γ·β), β̄ ← min(1, γ̄·β̄)). Ang &
Gillis compare with the previous iteration's loss; comparing with the last
accepted one keeps the recorded losses non-increasing, so the fit's stopping rule
and its returned factors are those of the best iterate so far.

A fit starts with plain passes (β = 0, HALS's warm-up included) and extrapolates
from the first that lowers the loss by less than :data:`START_BELOW` (relative):
on exact rank-deficient data (the swimmer) pushes in the first passes commit a fit
to a poor factorization, and there the loss falls fast to its floor, so such a fit
stays plain. An iterate whose loss is within rounding of the last accepted one ends
extrapolation for good (:meth:`Extrapolation.judge`).

The fit returns its iterate (W_y, H_n) as it stands, so a finished run given more
iterations continues exactly as the longer fit would have. Everything here is
deterministic: β's schedule depends only on the losses. (Other
panels round the sums differently; the pushes amplify that, and a near-tie restart
could go either way, so results agree across panellings only to ~1e-12, not 1e-15.)

References
----------
Ang, A. M. S. and Gillis, N. (2019). Accelerating nonnegative matrix factorization
algorithms using extrapolation. Neural Computation 31(2), 417–439.
doi:10.1162/neco_a_01157
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._solvers import PanelContext, Regularization, Stats
from ._source import check_panel, load_panel, needs_check, panel_start

__all__ = ["Extrapolation", "extrapolated_update_task", "final_W_task", "resolve",
           "supported"]

#: Ang & Gillis's defaults (their code's ``beta0``, ``eta``, ``gammabeta``,
#: ``gammabetabar``; γ and γ̄ differ for ANLS, whose steps are exact).
BETA0 = 0.5
ETA = 1.5
GAMMA = {"hals": 1.01, "als": 1.1}
GAMMA_BAR = {"hals": 1.005, "als": 1.05}
#: Extrapolation starts after the first plain iteration whose relative decrease of
#: the loss is below this (see :meth:`Extrapolation.judge`).
START_BELOW = 0.1


def supported(solver: str, beta_loss: Any) -> bool:
    """Whether ``solver`` on ``beta_loss`` can extrapolate (Frobenius HALS and ALS)."""
    return solver in ("hals", "als") and beta_loss == "frobenius"


def resolve(params: dict[str, Any], k: int, shape: tuple[int, int], *,
            masked: bool = False) -> bool:
    """Whether a fit with these parameters extrapolates (``extrapolate`` resolved).

    True: Frobenius HALS or ALS without missing values or ``shuffle``, else an
    error; "auto" (the default): the same where available, and also only for
    k < min(n, m) (at k ≥ min(n, m) exact factorizations form a continuum, and the
    pushes go along it instead of down); False: never.
    """
    from .errors import InvalidParameterError

    wanted = params.get("extrapolate", False)
    if not isinstance(wanted, str):
        wanted = bool(wanted)
    if wanted is False:
        return False
    why = None
    if not supported(params["solver"], params["beta_loss"]):
        why = (f"solver={params['solver']!r} with beta_loss={params['beta_loss']!r} "
               f"(it is for Frobenius 'hals' and 'als')")
    elif masked:
        why = "missing values or a mask"
    elif params.get("shuffle"):
        # Extrapolated passes have their own schedule (no iteration-seeded order).
        why = "shuffle=True"
    if why is None:
        return wanted is True or k < min(shape)
    if wanted is True:
        raise InvalidParameterError(
            f"extrapolate=True is not available with {why}. Use extrapolate='auto' "
            f"(extrapolate where available) or extrapolate=False."
        )
    return False


@dataclass
class Extrapolation:
    """The driver's extrapolation state between passes.

    Attributes
    ----------
    H_prev : ndarray
        The last accepted H-step (float64).
    H_y : ndarray
        The H the next pass uses.
    beta, beta_max, beta_last : float
        The current weight, its ceiling, and the weight of the last accepted step.
    loss_prev : float
        The loss of the last accepted iterate (inf before the first).
    from_extrapolated : bool
        The next W-step starts from the last W_y (False after a restart: from W_prev).
    restarts : int
        Rejected iterations so far.
    waiting : bool
        Plain passes (β = 0) until one lowers the loss by less than
        :data:`START_BELOW` (relative); then extrapolation starts from β0.
    plain : bool
        Extrapolation has stopped for good (β = 0: plain passes), after an iterate
        whose loss was within rounding of the last accepted one (see :meth:`judge`).
    """

    H_prev: np.ndarray
    H_y: np.ndarray
    gamma: float
    gamma_bar: float
    eta: float = ETA
    beta: float = BETA0
    beta_max: float = 1.0
    beta_last: float = BETA0
    loss_prev: float = math.inf
    from_extrapolated: bool = True
    restarts: int = 0
    plain: bool = False
    waiting: bool = False

    #: The scalars a run store's manifest keeps (with H_y, and H_prev = the run's H).
    SCALARS = ("beta", "beta_max", "beta_last", "loss_prev", "from_extrapolated",
               "restarts", "plain", "waiting")
    #: Their values in manifests written before a scalar existed.
    DEFAULTS: ClassVar[dict[str, Any]] = {"plain": False, "waiting": False}

    @classmethod
    def start(cls, solver: str, H: np.ndarray, wait: bool = True) -> Extrapolation:
        """The state at the start of a fit: waiting (plain passes) unless ``wait=False``."""
        H64 = np.array(H, dtype=np.float64)
        ex = cls(H_prev=H64, H_y=H64.copy(), gamma=GAMMA[solver], gamma_bar=GAMMA_BAR[solver])
        if wait:
            ex.waiting = True
            ex.beta = 0.0
        return ex

    def scalars(self) -> dict[str, Any]:
        """The state besides H_prev and H_y, JSON-ready (inf as None)."""
        out = {name: getattr(self, name) for name in self.SCALARS}
        if not math.isfinite(out["loss_prev"]):
            out["loss_prev"] = None
        return out

    @classmethod
    def restore(cls, solver: str, H_prev: np.ndarray, H_y: np.ndarray,
                scalars: dict[str, Any]) -> Extrapolation:
        """The state a manifest recorded (:meth:`scalars`, H_prev = the run's H)."""
        ex = cls.start(solver, H_prev, wait=False)
        ex.H_y = np.array(H_y, dtype=np.float64)
        for name in cls.SCALARS:
            setattr(ex, name, scalars[name] if name in scalars else cls.DEFAULTS[name])
        ex.loss_prev = math.inf if scalars["loss_prev"] is None else float(scalars["loss_prev"])
        return ex

    def judge(self, loss: float, H_new: np.ndarray, dtype: Any = np.float64,
              tie: float = 0.0) -> bool:
        """Accept the pass's iterate (loss at (W_y, H_new)) or restart; update β.

        Returns True if accepted: the caller then keeps the pass's W panels. H_prev and
        H_y are kept as values of the data's ``dtype`` (H_prev is the fit's H, H_y
        what the next pass uses), so a run store holds them exactly and a resumed
        float32 run continues bit for bit.

        ``tie`` is how far two losses can differ by rounding alone. An extrapolated
        iterate whose loss is within ``tie`` of the last accepted one is a tie that
        rounding decides (a fit at its floor, or sliding along a continuum of exact
        factorizations, where pushes that change nothing would be accepted forever
        and other panels or a sparse copy of V would decide such ties otherwise):
        it is rejected, and the fit goes on with plain passes (β = 0) for good. A
        plain pass is accepted unless its loss rises by more than ``tie``, as plain
        HALS/ALS take their steps (letting rounding decide again would make two
        copies of a fit part at its floor).
        """
        if self.waiting:
            # Plain passes, taken as plain HALS/ALS takes them, until the loss falls
            # by less than START_BELOW in one: the early passes decide which of the
            # many factorizations of rank-deficient data a fit heads for, and pushes
            # there commit it to a poor one (the swimmer: min part cosine 0.35-0.65
            # extrapolating from the first pass, 0.86-0.97 plain); on exact data the
            # loss keeps falling fast and the fit stays plain.
            H_new = np.asarray(H_new, dtype=dtype).astype(np.float64)
            decrease = ((self.loss_prev - loss) / self.loss_prev
                        if math.isfinite(self.loss_prev) and self.loss_prev > 0 else math.inf)
            self.H_prev = H_new
            self.H_y = H_new.copy()
            self.loss_prev = float(loss)
            if decrease < START_BELOW:
                self.waiting = False
                self.beta = self.beta_last = BETA0
                self.beta_max = 1.0
            return True
        if not self.plain and abs(loss - self.loss_prev) <= tie:
            self.restarts += 1
            self.H_y = self.H_prev.copy()
            self.from_extrapolated = False
            self.plain = True
            self.beta = self.beta_max = self.beta_last = 0.0
            return False
        if loss <= self.loss_prev + (tie if self.plain else 0.0):
            H_new = np.asarray(H_new, dtype=dtype).astype(np.float64)
            H_y = H_new + self.beta * (H_new - self.H_prev)
            self.H_y = H_y.astype(dtype).astype(np.float64)
            self.H_prev = H_new
            self.loss_prev = float(loss)
            self.from_extrapolated = True
            self.beta_last = self.beta
            self.beta = min(self.beta_max, self.gamma * self.beta)
            self.beta_max = min(1.0, self.gamma_bar * self.beta_max)
            return True
        self.restarts += 1
        self.H_y = self.H_prev.copy()
        self.from_extrapolated = False
        self.beta_max = self.beta_last
        self.beta = self.beta / self.eta
        return False


def _pair(W: Any) -> tuple[np.ndarray, np.ndarray]:
    """(W_n, W_y) of a pass's output; a start W (an array) is both."""
    if isinstance(W, tuple):
        return W
    return W, W


def extrapolated_update_task(
    v_ref: Any, w_ref: Any, sink: Any, solver: Any, ctx: PanelContext, reg: Regularization,
    beta: float, from_extrapolated: bool
) -> tuple[tuple[np.ndarray, np.ndarray], Stats]:
    """The panel task with extrapolation: read V_i once; return (W_n, W_y) and stats.

    ``w_ref`` is the last accepted pass's output for this panel (or the start W):
    the W-step starts from its W_y (or from its W_n after a restart) and extrapolates
    from its W_n.
    """
    V = load_panel(v_ref)
    if needs_check(v_ref):
        check_panel(V, panel_start(v_ref) if sink is None else sink[1].start)
    W_prev, W_y = _pair(load_panel(w_ref))
    W_prev = load_panel(W_prev)
    W_start = load_panel(W_y) if from_extrapolated else W_prev
    pair, stats = solver.update_panel_extrapolated(V, W_start, W_prev, ctx, reg, beta)
    if sink is not None:  # a run store: (W_n, W_y) into the pass's two buffers
        return (sink[0].store(pair[0]), sink[1].store(pair[1])), stats
    return pair, stats


def final_W_task(w_ref: Any) -> np.ndarray:
    """The W of the fit's iterate: the accepted pass's W_y."""
    return load_panel(_pair(load_panel(w_ref))[1])
