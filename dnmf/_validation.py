"""Parameter checks: one table of constraints, one function for cross-parameter rules.

Messages quote the offending value and say what is allowed. Input *data* checks
(dtype, shape, NaN, negatives) live with the data: ``_source`` and the scan pass.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ._solvers import Regularization
from .errors import InvalidInputError, InvalidParameterError

__all__ = [
    "check_custom_factor",
    "check_params",
    "regularization",
    "resolve_init",
    "resolve_seed",
]

SOLVERS = ("hals", "mu", "als")
# 2 == 2.0 and 1 == 1.0 as dict keys, so the numeric forms cover ints and floats.
BETA_LOSSES = {
    "frobenius": "frobenius",
    2: "frobenius",
    "kullback-leibler": "kullback-leibler",
    1: "kullback-leibler",
}
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
    "n_components": (lambda v: v == "auto" or _positive_int(v), "a positive int or 'auto'"),
    "solver": (lambda v: v in SOLVERS, f"one of {SOLVERS}"),
    "beta_loss": (
        lambda v: isinstance(v, str | numbers.Real) and v in BETA_LOSSES,
        "'frobenius' (or 2) or 'kullback-leibler' (or 1)",
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
    "cache": (lambda v: isinstance(v, bool | np.bool_), "a bool"),
}


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the estimator's parameters; return them with beta_loss normalised."""
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
        checked["beta_loss"] = BETA_LOSSES[checked["beta_loss"]]
    solver, loss = checked.get("solver"), checked.get("beta_loss")
    if loss == "kullback-leibler" and solver in ("hals", "als"):
        raise InvalidParameterError(
            f"solver={solver!r} minimises the Frobenius norm only, but "
            f"beta_loss='kullback-leibler' was asked for. Use solver='mu' for the KL "
            f"divergence, or beta_loss='frobenius' with {solver!r}."
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
    if arr.shape != shape:
        raise InvalidInputError(
            f"Array with wrong shape passed to NMF (custom init): {name} has shape "
            f"{arr.shape}, expected {shape}. Check n_components and the data's shape."
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(
            f"Input {name} (custom init) contains NaN or infinity; give finite values."
        )
    if np.any(arr < 0):
        raise InvalidInputError(
            f"Negative values in data passed to NMF (input {name}, custom init): "
            f"{int(np.count_nonzero(arr < 0))} entries are negative. A starting factor "
            f"must be non-negative: clip it with np.clip({name}, 0, None)."
        )
    if name == "H" and not np.any(arr):
        raise InvalidInputError(
            "Array passed to NMF (input H) is full of zeros; multiplicative and "
            "coordinate updates cannot move from an all-zero H. Give a non-zero start."
        )
    return arr
