"""Accelerated MU for the KL divergence: over-relaxed steps kept inside MU's majorant.

Lee & Seung's KL update of one entry w of W (H fixed) minimises, over w alone, the
separable majorant from Jensen's inequality

    G(w) = (s + l1)·w + (l2/2)·w² − a·log w,    a = w⁰·num,

with ``num = Σ_c H_jc V_ic / (WH)_ic`` and s the row sum of H (the column sum of W
for H). G touches the objective at w⁰ and lies above it elsewhere, so *any* point
with G(w) ≤ G(w⁰) — not only its minimiser, the MU point — lowers the objective.
MU's step is short (G's minimiser is about half-way to the other end of that set), so
this solver tries the over-relaxed points ``w⁰·ρ^ω`` (ρ = the MU ratio) for ω in
:data:`OMEGAS` and keeps, per entry, the largest ω whose point passes the exact test
G(w) ≤ G(w⁰); an entry where none passes takes the MU step. The test needs only what
MU computes anyway (``num``, s, the penalties), so a pass still reads V once and the
H-step still works from the k × m sums; the loss is monotone by construction (the
same argument for H with the roles swapped).

Measured before choosing it (issue 13, docs/benchmarks): about half of MU's
iterations to reach the loss scikit-learn's MU reaches in 200, at MU's cost per
iteration; inner repeats of the W-step on the panel in memory (Gillis & Glineur)
saved iterations but not time for KL, whose inner steps cost as much as a pass.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._base import EPSILON, PanelContext, Regularization, Stats
from ._mu import KLMultiplicative

__all__ = ["OMEGAS", "KLAccelerated", "relaxed_step"]

#: Over-relaxation exponents tried per entry, largest first (then MU's ω = 1).
OMEGAS = (1.9, 1.5)

#: The float64 eps below which H entries are set to 0 (scikit-learn's KL-MU step).
EPS64 = float(np.finfo(np.float64).eps)


def relaxed_step(X0: np.ndarray, numerator: np.ndarray, linear: np.ndarray, l1: float,
                 l2: float, omegas: tuple[float, ...] = OMEGAS) -> np.ndarray:
    """The new entries of a factor: MU, or over-relaxed where the majorant allows.

    Parameters
    ----------
    X0 : ndarray
        The current entries (W or H), non-negative.
    numerator : ndarray
        MU's numerator (``(V / WH)·Hᵀ`` for W, ``Wᵀ·(V / WH)`` for H), same shape.
    linear : ndarray
        The coefficient s of w in the data term (row sums of H for W, a row; column
        sums of W for H, a column): broadcastable to ``X0``'s shape.
    l1, l2 : float
        The scaled penalties.

    Returns
    -------
    ndarray
        ``X0·ρ^ω`` per entry for the largest ω in ``omegas`` with G(X) ≤ G(X0), else
        the MU point ``X0·ρ``, with ρ = numerator / (s + l1 + l2·X0) (scikit-learn's
        MU ratio, a zero denominator taken as EPSILON).
    """
    # Bit for bit the straightforward evaluation of the docstring (the tests keep it
    # as the reference), in fewer array operations: at small sizes their count, not
    # their arithmetic, is the cost.
    s = linear + l1
    denominator = s + l2 * X0 if l2 > 0 else s
    if not denominator.all():
        denominator = np.where(denominator == 0, EPSILON, denominator)
    rho = numerator / denominator
    out = X0 * rho
    pending = (X0 > 0) & (rho > 0)  # movable entries not yet given an ω
    if not pending.any():
        return out
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_rho = np.log(np.where(pending, rho, 1.0))
        for omega in omegas:
            r = np.exp(omega * log_rho)
            # (G(X0·r) − G(X0)) / X0, exactly, for G = (s + l1)·x + (l2/2)·x² − a·log x
            change = s * (r - 1.0)
            change -= numerator * omega * log_rho
            if l2 > 0:
                change += 0.5 * l2 * X0 * (r * r - 1.0)
            accept = change <= 0
            accept &= pending
            accept &= np.isfinite(r)
            out = np.where(accept, X0 * r, out)
            pending &= ~accept
            if not pending.any():
                break
    return out


class KLAccelerated(KLMultiplicative):
    """``solver="amu"``: safeguarded over-relaxed MU for KL (see the module docstring).

    Everything but the two steps is KL-MU's: the same pass, loss pieces and sparse
    handling; ``transform`` iterates the accelerated W-step.
    """

    accelerated = True
    omegas = OMEGAS
    _omega_array = np.array(OMEGAS)

    @staticmethod
    def _step_from_ratio(
        W: np.ndarray, numerator: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        linear = ctx.H_sum.astype(W.dtype)[np.newaxis, :]
        return relaxed_step(W, numerator, linear, reg.l1_W, reg.l2_W).astype(W.dtype,
                                                                             copy=False)

    def update_H(
        self, H: np.ndarray, stats: Stats, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        w_sum = stats["w_sum"]
        if np.count_nonzero(w_sum) < w_sum.size:
            w_sum = np.where(w_sum == 0, 1.0, w_sum)
        if ctx.compiled:
            # (entries below EPS64 become 0 inside)
            return _kernels.relaxed_step(H, stats["A"], w_sum, True, reg.l1_H, reg.l2_H,
                                         self._omega_array, EPSILON, EPS64)
        H_new = relaxed_step(H, stats["A"], w_sum[:, np.newaxis], reg.l1_H, reg.l2_H)
        H_new[H_new < EPS64] = 0.0
        return H_new
