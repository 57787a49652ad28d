"""The swimmer data set and the ``dnmf demo`` run built on it.

Swimmer (Donoho & Stodden 2003) is the classic test of whether NMF finds *parts*:
256 images of 32 × 32 pixels, each a torso plus four limbs, every limb in one of four
positions, all 4⁴ combinations once. Its 17 parts (16 limb positions and the torso)
are known, so a picture of the learned basis shows at a glance whether a fit worked.
The images are drawn here procedurally; nothing is downloaded. This module owns the
generator and the demo's sequence of steps; it does not draw (``_plot``) or fit
(``_estimator``) by itself.

References
----------
Donoho, D. and Stodden, V. (2003). When does non-negative matrix factorization give
a correct decomposition into parts? NIPS 16.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SWIMMER_SHAPE", "swimmer", "swimmer_parts"]

#: Height and width of one swimmer image.
SWIMMER_SHAPE = (32, 32)

_TORSO_ROWS = (10, 22)  # rows 10..21
_TORSO_COLS = (15, 17)  # columns 15 and 16
_SHOULDER_ROW = 11.5
_HIP_ROW = 20.5
# Each limb is a 1-pixel-wide segment starting a few pixels away from its joint, so
# the four positions of a limb do not touch each other or the torso.
_LIMB_START, _LIMB_STOP = 2.5, 10.0
# Angles (degrees) of the four positions, measured from the horizontal, pointing away
# from the body: arms fan out from the shoulders, legs from the hips.
_ARM_ANGLES = (-70.0, -35.0, 0.0, 35.0)
_LEG_ANGLES = (0.0, 25.0, 50.0, 75.0)


@dataclass(frozen=True)
class _Limb:
    joint_row: float
    joint_col: float
    side: int  # -1 left, +1 right
    angles: tuple[float, ...]


_LIMBS = (
    _Limb(_SHOULDER_ROW, _TORSO_COLS[0] - 0.5, -1, _ARM_ANGLES),  # left arm
    _Limb(_SHOULDER_ROW, _TORSO_COLS[1] - 0.5, +1, _ARM_ANGLES),  # right arm
    _Limb(_HIP_ROW, _TORSO_COLS[0] - 0.5, -1, _LEG_ANGLES),  # left leg
    _Limb(_HIP_ROW, _TORSO_COLS[1] - 0.5, +1, _LEG_ANGLES),  # right leg
)


def _segment(limb: _Limb, angle: float) -> np.ndarray:
    """Mask of one limb position: a rasterised segment from the joint outwards."""
    mask = np.zeros(SWIMMER_SHAPE, dtype=bool)
    rad = math.radians(angle)
    d_row, d_col = math.sin(rad), limb.side * math.cos(rad)
    for r in np.arange(_LIMB_START, _LIMB_STOP, 0.25):
        row = math.floor(limb.joint_row + r * d_row)
        col = math.floor(limb.joint_col + 0.5 + r * d_col)
        mask[row, col] = True
    return mask


def swimmer_parts() -> np.ndarray:
    """The 17 ground-truth parts: 16 limb positions (limb-major), then the torso.

    Returns
    -------
    parts : ndarray of shape (17, 1024), values in {0, 1}
    """
    parts = [_segment(limb, angle) for limb in _LIMBS for angle in limb.angles]
    torso = np.zeros(SWIMMER_SHAPE, dtype=bool)
    torso[slice(*_TORSO_ROWS), slice(*_TORSO_COLS)] = True
    parts.append(torso)
    return np.stack([p.ravel() for p in parts]).astype(np.float64)


def swimmer(dtype: type = np.float32) -> np.ndarray:
    """The swimmer data set: every combination of the four limbs' positions.

    Returns
    -------
    X : ndarray of shape (256, 1024)
        One 32 × 32 image per row (row-major pixels), values in {0, 1}. Image
        ``i`` has limb ``j`` in position ``(i // 4**(3 - j)) % 4``.
    """
    parts = swimmer_parts()
    torso = parts[16]
    images = []
    for pose in itertools.product(range(4), repeat=4):
        image = torso.copy()
        for limb, position in enumerate(pose):
            image = np.maximum(image, parts[4 * limb + position])
        images.append(image)
    return np.stack(images).astype(dtype)
