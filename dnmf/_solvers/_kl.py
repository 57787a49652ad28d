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

from ._base import EPSILON, Array, PanelContext, Regularization, Stats
from ._mu import KLMultiplicative, _ratio

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
        The coefficient s of w in the data term (row sums of H, broadcast; column
        sums of W for H), same shape.
    l1, l2 : float
        The scaled penalties.

    Returns
    -------
    ndarray
        ``X0·ρ^ω`` per entry for the largest ω in ``omegas`` with G(X) ≤ G(X0), else
        the MU point ``X0·ρ``, with ρ = numerator / (s + l1 + l2·X0) (scikit-learn's
        MU ratio, a zero denominator taken as EPSILON).
    """
    denominator = linear + l1
    if l2 > 0:
        denominator = denominator + l2 * X0
    denominator = np.where(denominator == 0, EPSILON, denominator)
    rho = numerator / denominator
    out = X0 * rho
    movable = (X0 > 0) & (rho > 0)
    if not movable.any():
        return out
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_rho = np.log(np.where(movable, rho, 1.0))
        chosen = ~movable
        for omega in omegas:
            r = np.exp(omega * log_rho)
            # (G(X0·r) − G(X0)) / X0, exactly, for G = (s + l1)·x + (l2/2)·x² − a·log x
            change = (linear + l1) * (r - 1.0) - numerator * omega * log_rho
            if l2 > 0:
                change = change + 0.5 * l2 * X0 * (r * r - 1.0)
            accept = ~chosen & (change <= 0) & np.isfinite(r)
            out = np.where(accept, X0 * r, out)
            chosen |= accept
    return out


class KLAccelerated(KLMultiplicative):
    """``solver="amu"``: safeguarded over-relaxed MU for KL (see the module docstring).

    Everything but the two steps is KL-MU's: the same pass, loss pieces and sparse
    handling; ``transform`` iterates the accelerated W-step.
    """

    @staticmethod
    def _step_W(
        V: Array, W: np.ndarray, WH: np.ndarray, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        numerator = np.asarray(_ratio(V, WH) @ ctx.H.T)
        linear = np.broadcast_to(ctx.H_sum.astype(W.dtype)[np.newaxis, :], W.shape)
        return relaxed_step(W, numerator, linear, reg.l1_W, reg.l2_W).astype(W.dtype,
                                                                             copy=False)

    def update_H(
        self, H: np.ndarray, stats: Stats, ctx: PanelContext, reg: Regularization
    ) -> np.ndarray:
        w_sum = stats["w_sum"].copy()
        w_sum[w_sum == 0] = 1.0
        linear = np.broadcast_to(w_sum[:, np.newaxis], H.shape)
        H_new = relaxed_step(H, stats["A"], linear, reg.l1_H, reg.l2_H)
        H_new[H_new < EPS64] = 0.0
        return H_new
