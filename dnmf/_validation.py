"""Parameter checks: one table of constraints, one function for cross-parameter rules.

Messages quote the offending value and say what is allowed. Input *data* checks
(dtype, shape, NaN, negatives) live with the data: ``_source`` and the scan pass.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ._solvers import Regularization
from .errors import InvalidInputError, InvalidParameterError

__all__ = [
    "beta_of",
    "check_beta_data",
    "check_custom_factor",
    "check_params",
    "normalize_beta_loss",
    "regularization",
    "resolve_init",
    "resolve_seed",
    "resolve_solver",
]

#: "cd" is scikit-learn's coordinate descent: HALS's updates on scikit-learn's schedule.
#: "auto" picks per fit (see :func:`resolve_solver`).
SOLVERS = ("auto", "hals", "mu", "als", "amu", "cd")
#: The named divergences and their β (scikit-learn's names).
BETA_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


def _beta_loss_ok(value: Any) -> bool:
    if isinstance(value, str):
        return value in BETA_NAMES
    return _is_real(value) and bool(np.isfinite(value))


def normalize_beta_loss(value: str | float) -> str | float:
    """The name for β = 2, 1, 0 ("frobenius", ...); any other β as a float.

    This is the form a run records and the solvers are chosen by, so that
    ``beta_loss=1`` and ``beta_loss="kullback-leibler"`` are the same run.
    """
    beta = BETA_NAMES[value] if isinstance(value, str) else float(value)
    for name, named in BETA_NAMES.items():
        if beta == named:
            return name
    return beta


def beta_of(beta_loss: str | float) -> float:
    """β as a float for a (normalised or not) ``beta_loss``."""
    return BETA_NAMES[beta_loss] if isinstance(beta_loss, str) else float(beta_loss)


INITS = (None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _non_negative_real(value: Any) -> bool:
    return _is_real(value) and value >= 0 and np.isfinite(value)


#: parameter → (test, what is allowed)
CONSTRAINTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_components": (lambda v: v is None or v == "auto" or _positive_int(v),
                     "a positive int, 'auto' or None"),
    "solver": (lambda v: v in SOLVERS, f"one of {SOLVERS}"),
    "beta_loss": (
        _beta_loss_ok,
        "'frobenius' (or 2), 'kullback-leibler' (or 1), 'itakura-saito' (or 0) or "
        "a finite float",
    ),
    "init": (lambda v: v in INITS, f"one of {INITS}"),
    "max_iter": (_positive_int, "a positive int"),
    "tol": (_non_negative_real, "a non-negative float"),
    "alpha_W": (_non_negative_real, "a non-negative float"),
    "alpha_H": (lambda v: v == "same" or _non_negative_real(v), "a non-negative float or 'same'"),
    "l1_ratio": (lambda v: _is_real(v) and 0 <= v <= 1, "a float in [0, 1]"),
    "callback": (lambda v: v is None or callable(v), "None or a callable(iteration, loss)"),
    "verbose": (lambda v: _is_int(v) or isinstance(v, bool), "an int (0: silent)"),
    "random_state": (
        lambda v: v is None
        or (_is_int(v) and v >= 0)
        or isinstance(v, np.random.RandomState | np.random.Generator),
        "None, a non-negative int, a numpy RandomState or Generator",
    ),
    "panel_rows": (lambda v: v is None or _positive_int(v), "None (auto) or a positive int"),
    "panel_bytes": (lambda v: v is None or _positive_int(v),
                    "None (64 MiB) or a positive int of bytes"),
    "out": (
        lambda v: v is None
        or isinstance(v, str | os.PathLike)
        or (hasattr(v, "list_prefix") and hasattr(v, "get")),
        "None, a directory or '.zip' path, an fsspec URL or a zarr Store",
    ),
    "checkpoint_every": (_positive_int, "a positive int"),
    "overwrite": (lambda v: isinstance(v, bool | np.bool_), "a bool"),
    "shuffle": (lambda v: isinstance(v, bool | np.bool_), "a bool"),
    "cache": (lambda v: v == "auto" or isinstance(v, bool | np.bool_),
              "'auto', True or False"),
    "extrapolate": (lambda v: v == "auto" or isinstance(v, bool | np.bool_),
                    "'auto', True or False"),
    "missing": (lambda v: v is None or (isinstance(v, str) and v in ("nan", "unstored")),
                "None, 'nan' (NaN entries are missing) or 'unstored' (sparse X: only "
                "stored entries are observed)"),
}


def resolve_solver(solver: str, beta_loss: str | float, masked: bool = False) -> str:
    """The solver ``solver="auto"`` stands for; any other name is returned as is.

    The fastest solver measured for the loss (see the guide's "Which solver"):
    accelerated HALS for the Frobenius norm, accelerated MU for an unmasked KL
    fit, and Lee & Seung's MU for a masked KL fit and every other β-divergence
    (the only solver for those). ``beta_loss`` is the normalised one
    (:func:`normalize_beta_loss`).
    """
    if solver != "auto":
        return solver
    if beta_loss == "frobenius":
        return "hals"
    if beta_loss == "kullback-leibler" and not masked:
        return "amu"
    return "mu"


def check_params(params: dict[str, Any], masked: bool = False) -> dict[str, Any]:
    """Validate the estimator's parameters; return them with beta_loss normalised
    and ``solver="auto"`` resolved (for a masked fit when ``masked``)."""
    for name, value in params.items():
        if name not in CONSTRAINTS:
            continue
        test, allowed = CONSTRAINTS[name]
        try:
            ok = bool(test(value))
        except TypeError:
            ok = False
        if not ok:
            raise InvalidParameterError(
                f"The {name!r} parameter of NMF must be {allowed}. Got {value!r} instead."
            )
    checked = dict(params)
    if "beta_loss" in checked:
        checked["beta_loss"] = normalize_beta_loss(checked["beta_loss"])
    if "solver" in checked:
        checked["solver"] = resolve_solver(
            checked["solver"], checked.get("beta_loss", "frobenius"),
            masked or checked.get("missing") is not None)
    solver, loss = checked.get("solver"), checked.get("beta_loss")
    if loss is not None and loss != "frobenius" and solver in ("hals", "als", "cd"):
        divergence = {"kullback-leibler": "KL divergence (or 'amu', accelerated MU)",
                      "itakura-saito": "Itakura-Saito divergence"}.get(
                          str(loss), f"beta-divergence with beta={loss!r}")
        raise InvalidParameterError(
            f"Invalid beta_loss parameter: solver {solver!r} does not handle "
            f"beta_loss = {params['beta_loss']!r} (solver={solver!r} minimises the "
            f"Frobenius norm only). Use solver='mu' for the {divergence}, or "
            f"beta_loss='frobenius' with {solver!r}."
        )
    if solver == "amu" and loss is not None and loss != "kullback-leibler":
        raise InvalidParameterError(
            f"solver='amu' (accelerated MU) minimises the KL divergence only, but "
            f"beta_loss={params['beta_loss']!r} was asked for. Use "
            f"beta_loss='kullback-leibler' with 'amu', or solver='mu' for other "
            f"divergences."
        )
    if checked.get("panel_rows") is not None and checked.get("panel_bytes") is not None:
        raise InvalidParameterError(
            f"panel_rows={checked['panel_rows']!r} and panel_bytes="
            f"{checked['panel_bytes']!r} were both given, but they are two ways to size "
            f"the same panels. Give one of them."
        )
    return checked


def regularization(
    alpha_W: float, alpha_H: float | str, l1_ratio: float, n_samples: int, n_features: int
) -> Regularization:
    """scikit-learn's scaling of the penalties by the size of the data."""
    a_H = alpha_W if alpha_H == "same" else float(alpha_H)
    return Regularization(
        l1_W=n_features * alpha_W * l1_ratio,
        l2_W=n_features * alpha_W * (1.0 - l1_ratio),
        l1_H=n_samples * a_H * l1_ratio,
        l2_H=n_samples * a_H * (1.0 - l1_ratio),
    )


def resolve_init(init: str | None, k: int, n: int, m: int) -> str:
    """The start to use: ``init``, or for None NNDSVDa when the rank allows, else random.

    NNDSVD starts from k singular vectors, so it needs k <= min(n, m).
    """
    if init is None:
        return "nndsvda" if k <= min(n, m) else "random"
    if init.startswith("nndsvd") and k > min(n, m):
        raise InvalidParameterError(
            f"init={init!r} can only be used when n_components <= min(n_samples, "
            f"n_features): n_components={k}, but the data is {n} × {m}. Use "
            f"init='random', or at most {min(n, m)} components."
        )
    return init


def resolve_seed(random_state: Any) -> int:
    """A concrete integer seed, recorded with the run so a resume continues it."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    return int(random_state)


def value_range(arr: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of a float array as floats, ``(0.0, 0.0)`` if it is empty.

    Two reductions and no temporaries (a custom W of a tall V is large). A NaN makes
    both NaN and an infinity is the smallest or the largest, so the array is finite
    and non-negative exactly when ``lo >= 0 and math.isfinite(hi)``, and it is all
    zeros (given that) exactly when ``hi == 0``.
    """
    if not arr.size:
        return 0.0, 0.0
    return float(arr.min()), float(arr.max())


def check_custom_factor(
    value: Any, name: str, shape: tuple[int, int], dtype: np.dtype
) -> np.ndarray:
    """A user-supplied W or H: right shape, finite, non-negative; returned as a copy."""
    if value is None:
        raise InvalidInputError(
            f"init='custom' needs both W and H: {name} is missing. Pass "
            f"fit(X, W=..., H=...), or choose another init such as 'nndsvda'."
        )
    arr = np.array(value, dtype=dtype, copy=True)
    if arr.ndim != 2 or arr.shape != shape:
        # scikit-learn's wording, then what to check.
        which = "first" if arr.ndim != 2 or arr.shape[0] != shape[0] else "second"
        axis = 0 if which == "first" else 1
        got = arr.shape[axis] if arr.ndim == 2 else arr.shape
        raise InvalidInputError(
            f"Array with wrong {which} dimension passed to NMF (input {name}). Expected "
            f"{shape[axis]}, but got {got}: {name} has shape {arr.shape}, expected "
            f"{shape}. Check n_components and the data's shape."
        )
    lo, hi = value_range(arr)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidInputError(
            f"Input {name} (custom init) contains NaN or infinity; give finite values."
        )
    if lo < 0:
        raise InvalidInputError(
            f"Negative values in data passed to NMF (input {name}): "
            f"{int(np.count_nonzero(arr < 0))} entries are negative (custom init). A "
            f"starting factor "
            f"must be non-negative: clip it with np.clip({name}, 0, None)."
        )
    if name == "H" and hi == 0:
        raise InvalidInputError(
            "Array passed to NMF (input H) is full of zeros; multiplicative and "
            "coordinate updates cannot move from an all-zero H. Give a non-zero start."
        )
    return arr


def check_beta_data(beta_loss: str | float, size: int, nnz: int) -> None:
    """scikit-learn's refusal of zeros in X for β ≤ 0 (they make the loss infinite).

    ``size`` is n·m and ``nnz`` the count of non-zero values (stored zeros and a
    sparse matrix's implicit zeros are zeros).
    """
    if beta_of(beta_loss) <= 0 and nnz < size:
        raise InvalidInputError(
            f"When beta_loss <= 0 and X contains zeros, the solver may diverge. Please "
            f"add small values to X, or use a positive beta_loss. (beta_loss="
            f"{beta_loss!r}; X has {size - nnz} zero entries of {size}.)"
        )


def _fmt_gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@functools.cache
def param_names(cls: type) -> tuple[str, ...]:
    """scikit-learn's ``_get_param_names`` of the estimator class ``cls``, once per class.

    scikit-learn reads them from ``__init__``'s signature on every ``get_params``
    (about 60 µs, a visible share of a small fit's set-up); they cannot change."""
    from sklearn.base import BaseEstimator

    return tuple(BaseEstimator._get_param_names.__func__(cls))  # type: ignore[attr-defined]


#: Factors of at most this many bytes fit on any machine dnmf runs on.
_SURELY_AVAILABLE = 256 << 20


@functools.cache
def _total_memory() -> int | None:
    """This machine's memory in bytes (None if psutil cannot tell)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a dependency
        return None


def check_rank_memory(k: int, n: int, m: int, *, w_in_memory: bool) -> None:
    """Refuse, before anything is allocated, a rank whose factors cannot fit in memory.

    The driver holds H (k × m) and its statistics, about five k × m and three k × k
    float64 arrays; with W in memory (no ``out=``) also W (n × k) and its update.
    ``n_components=10**9`` would otherwise fail deep in NumPy with a MemoryError.
    """
    need = 8 * (5 * k * m + 3 * k * k + (2 * n * k if w_in_memory else 0))
    if need <= _SURELY_AVAILABLE:
        return  # (asking the system costs ~0.1 ms: a tenth of a small fit's set-up)
    total = _total_memory()
    if total is not None and need > total:
        where = "H (k × m), its Gram (k × k) and their statistics" + (
            ", and W (n × k)" if w_in_memory else "")
        raise InvalidParameterError(
            f"n_components={k} needs about {_fmt_gib(need)} of memory for {where}, more "
            f"than this machine has ({_fmt_gib(total)}); choose a smaller n_components "
            f"(usually well below min(n_samples, n_features) = {min(n, m)})."
        )
