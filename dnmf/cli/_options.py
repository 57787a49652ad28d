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


class LossName(str, Enum):
    frobenius = "frobenius"
    kullback_leibler = "kullback-leibler"
    kl = "kl"


class InitName(str, Enum):
    random = "random"
    nndsvd = "nndsvd"
    nndsvda = "nndsvda"
    nndsvdar = "nndsvdar"


class DtypeName(str, Enum):
    float32 = "float32"
    float64 = "float64"

