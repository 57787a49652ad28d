"""Per-panel solver kernels: pure NumPy/SciPy, no Dask, no storage.

``get_solver(name, beta_loss)`` returns the kernel the driver runs on each panel.
"""

from __future__ import annotations

from ._als import ALS
from ._base import EPSILON, PanelContext, Regularization, Solver, Stats, add_stats
from ._beta import BetaMultiplicative
from ._hals import HALS, CoordinateDescent
from ._kl import KLAccelerated
from ._mu import KLMultiplicative, Multiplicative

__all__ = [
    "EPSILON",
    "PanelContext",
    "Regularization",
    "Solver",
    "Stats",
    "add_stats",
    "get_solver",
]


def get_solver(name: str, beta_loss: str | float) -> Solver:
    """The kernel for ``solver=name`` and ``beta_loss`` (validated by the caller).

    ``beta_loss`` is "frobenius", "kullback-leibler", "itakura-saito" or a float β
    (as :func:`dnmf._validation.check_params` normalises it).
    """
    if name == "amu":
        return KLAccelerated()
    if beta_loss == "kullback-leibler":
        return KLMultiplicative()
    if beta_loss != "frobenius":
        return BetaMultiplicative(0.0 if beta_loss == "itakura-saito" else float(beta_loss))
    kernels: dict[str, type[Solver]] = {"mu": Multiplicative, "hals": HALS, "als": ALS,
                                        "cd": CoordinateDescent}
    return kernels[name]()
