"""Option types shared by several commands: named choices, sizes such as 64MiB, and
the reader options (--layer, --raw, --index-col)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from ..errors import InvalidParameterError


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
    auto = "auto"
    hals = "hals"
    cd = "cd"
    mu = "mu"
    als = "als"
    amu = "amu"


class ForgetPer(str, Enum):
    """``--forget-per``: MiniBatchNMF's ``forget_per``."""

    pass_ = "pass"
    batch = "batch"


class ExtrapolateName(str, Enum):
    """``--extrapolate``: NMF's ``extrapolate`` ("auto", True, False)."""

    auto = "auto"
    on = "on"
    off = "off"

    @property
    def param(self) -> bool | str:
        return {"auto": "auto", "on": True, "off": False}[self.value]


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



def _index_col(value: str) -> int | bool | None:
    text = value.strip().lower()
    if text == "auto":
        return None
    if text == "none":
        return False
    if text.isdigit():
        return int(text)
    raise typer.BadParameter(f"must be auto, none or a column number (0 is the first), got "
                             f"{value!r}.")


LayerOpt = Annotated[str | None, typer.Option(
    "--layer", help="AnnData (.h5ad or Zarr): fit layers[NAME] instead of X.",
    show_default=False)]
RawOpt = Annotated[bool, typer.Option(
    "--raw", help="AnnData: fit raw.X instead of X.")]
IndexColOpt = Annotated[str, typer.Option(
    "--index-col", metavar="auto|none|N",
    help="CSV/TSV: the column of row names (auto: detected, e.g. pandas' to_csv index; "
    "none: every column is data).")]


def reading_options(layer: str | None, raw: bool, index_col: str) -> dict[str, Any]:
    """The reader options (:func:`dnmf.io.open_source`) the command line was given."""
    return {"layer": layer, "raw": raw, "index_col": _index_col(index_col)}
