"""Option types shared by several commands: the named choices and sizes such as 64MiB.
"""

from __future__ import annotations

from enum import Enum

from ..errors import (
    InvalidParameterError,
)


def _parse_size(text: str, option: str = "--max-size") -> int:
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
             "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
             "tib": 2**40}
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0 or (option == "--panel-size" and value * units[unit] < 1):
        raise InvalidParameterError(
            f"{option} must be a size such as 500MB, 2GiB or 1000000, got {text!r}."
        )
    return int(value * units[unit])


class SolverName(str, Enum):
    hals = "hals"
    mu = "mu"
    als = "als"
    amu = "amu"


class LossName(str, Enum):
    """The loss names of commands that take only Frobenius or KL (``dnmf rank``)."""

    frobenius = "frobenius"
    kullback_leibler = "kullback-leibler"
    kl = "kl"


#: --loss names and their beta_loss (``dnmf fit``: any β also as a number).
LOSS_NAMES = {"frobenius": "frobenius", "kullback-leibler": "kullback-leibler",
              "kl": "kullback-leibler", "itakura-saito": "itakura-saito",
              "is": "itakura-saito"}


def _parse_loss(text: str) -> str | float:
    """``--loss``: a name (frobenius, kl, is, ...) or a number β."""
    name = text.strip().lower()
    if name in LOSS_NAMES:
        return LOSS_NAMES[name]
    try:
        beta = float(name)
    except ValueError:
        beta = float("nan")
    if beta != beta or beta in (float("inf"), float("-inf")):
        raise InvalidParameterError(
            f"--loss must be frobenius, kullback-leibler (kl), itakura-saito (is) or a "
            f"number beta such as 1.5, got {text!r}."
        )
    return beta


class InitName(str, Enum):
    random = "random"
    nndsvd = "nndsvd"
    nndsvda = "nndsvda"
    nndsvdar = "nndsvdar"


class DtypeName(str, Enum):
    float32 = "float32"
    float64 = "float64"

