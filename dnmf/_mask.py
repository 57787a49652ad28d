"""Speckled hold-out: a seeded, reproducible set of held-out entries of V.

A :class:`SpeckledHoldout` decides for every entry (row, column) of V whether it is
held out, from a hash of (row, column, seed) alone. Any panel of V can regenerate
its own part on any worker, in any order, so nothing of V's size is ever stored or
shipped: out-of-core and cluster fits hold out exactly the same entries.

The hash is SplitMix64 (Steele, Lea & Flood 2014), in unsigned 64-bit integer
arithmetic, which NumPy wraps modulo 2**64 on every platform; the comparison with
the fraction is an integer one on the top 53 bits. The set is therefore identical
on every machine, NumPy version and panel size.

This module owns the hold-out's definition only; how a fit uses it (which entries
it observes, ``heldout_loss_``) lives with the solvers and the engine.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidParameterError

__all__ = ["SpeckledHoldout", "splitmix64"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
#: entries hashed per block, so the uint64 temporaries stay small for big panels
_BLOCK_ENTRIES = 1 << 20
_TOP53 = 1 << 53


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of ``x + golden gamma``, element-wise on uint64.

    A bijection of 64-bit integers with full avalanche: neighbouring inputs (row
    r and r + 1) give unrelated outputs.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GAMMA
        z = (z ^ (z >> _S30)) * _MUL1
        z = (z ^ (z >> _S27)) * _MUL2
        return z ^ (z >> _S31)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class SpeckledHoldout:
    """Hold out a seeded, reproducible ``fraction`` of V's entries for cross-validation.

    Entry (i, j) is held out when the SplitMix64 hash of (i, j, ``seed``) falls
    below ``fraction`` of its range, so each entry is held out independently with
    probability ``fraction``, and the same ``(fraction, seed)`` holds out the same
    entries of every matrix, whatever its panels, chunks or the machine. Nothing of
    V's size is stored.

    Pass it as ``NMF(...).fit(X, mask=SpeckledHoldout(...))``: the fit uses the
    entries not held out, and reports its loss over the held-out ones as
    ``heldout_loss_`` (``n_heldout_`` of them).

    Parameters
    ----------
    fraction : float, default=0.05
        Probability that an entry is held out, in (0, 1).
    seed : int, default=0
        Non-negative integer below 2**64; different seeds hold out independent sets.

    Examples
    --------
    >>> from dnmf import SpeckledHoldout
    >>> holdout = SpeckledHoldout(fraction=0.1, seed=3)
    >>> block = holdout.heldout(0, 1000, 200)  # rows 0..999 of a 200-column V
    >>> block.shape, round(float(block.mean()), 2)
    ((1000, 200), 0.1)
    """

    fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        f = self.fraction
        if (
            not isinstance(f, numbers.Real)
            or isinstance(f, bool)
            or not np.isfinite(f)
            or not 0 < f < 1
        ):
            raise InvalidParameterError(
                f"SpeckledHoldout fraction must be a float in (0, 1) (the share of entries "
                f"held out, e.g. 0.05), got {f!r}"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**64:
            raise InvalidParameterError(
                f"SpeckledHoldout seed must be a non-negative int below 2**64, got {self.seed!r}"
            )
        object.__setattr__(self, "fraction", float(f))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def _threshold(self) -> np.uint64:
        # held out iff the top 53 bits of the hash < fraction * 2**53 (exact in float64)
        return np.uint64(int(self.fraction * _TOP53))

    def heldout(self, start: int, stop: int, m: int) -> np.ndarray:
        """Which entries of rows ``start .. stop-1`` (of an ``m``-column V) are held out.

        Parameters
        ----------
        start, stop : int
            The rows, ``0 <= start <= stop``.
        m : int
            The number of columns of V.

        Returns
        -------
        heldout : ndarray of bool, shape (stop - start, m)
            True where the entry is held out.
        """
        for name, value in (("start", start), ("stop", stop), ("m", m)):
            if not _is_int(value) or value < 0:
                raise InvalidParameterError(
                    f"heldout {name} must be a non-negative int, got {value!r}"
                )
        if stop < start:
            raise InvalidParameterError(f"heldout needs start <= stop, got {start!r} > {stop!r}")
        n = stop - start
        out = np.empty((n, m), dtype=bool)
        if n == 0 or m == 0:
            return out
        seed_key = splitmix64(np.array([self.seed], dtype=np.uint64))
        row_keys = splitmix64(seed_key ^ np.arange(start, stop, dtype=np.uint64))
        cols = np.arange(m, dtype=np.uint64)
        threshold = self._threshold
        step = max(1, _BLOCK_ENTRIES // m)
        for a in range(0, n, step):
            b = min(n, a + step)
            h = splitmix64(row_keys[a:b, None] ^ cols[None, :])
            np.less(h >> _S11, threshold, out=out[a:b])
        return out

    def observed(self, start: int, stop: int, m: int) -> np.ndarray:
        """The complement of :meth:`heldout`: True where the entry is used for fitting."""
        return ~self.heldout(start, stop, m)

    def identity(self) -> dict[str, Any]:
        """What a run store records so that a resume can refuse a different hold-out."""
        return {"kind": "speckled", "hash": "splitmix64", "fraction": self.fraction,
                "seed": self.seed}
