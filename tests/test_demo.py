"""The swimmer generator: structure of the data set and its known parts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dnmf._demo import SWIMMER_SHAPE, swimmer, swimmer_parts


def test_parts_are_disjoint_and_inside_the_image():
    parts = swimmer_parts()
    assert parts.shape == (17, 32 * 32)
    assert set(np.unique(parts)) == {0.0, 1.0}
    overlap = parts @ parts.T
    np.fill_diagonal(overlap, 0)
    assert overlap.max() == 0  # no two parts share a pixel
    assert (parts.sum(axis=1) >= 6).all()  # every limb position is visible


def test_every_pose_once_with_the_torso():
    X = swimmer()
    parts = swimmer_parts()
    assert X.shape == (256, 1024) and X.dtype == np.float32
    assert len(np.unique(X, axis=0)) == 256
    # Image i is the torso plus limb j in position (i // 4**(3 - j)) % 4.
    poses = [(0, 0, 0, 0), (0, 2, 1, 1), (2, 0, 0, 0), (3, 3, 3, 3)]
    for i, pose in zip([0, 37, 128, 255], poses):
        assert tuple((i // 4 ** (3 - j)) % 4 for j in range(4)) == pose
        expected = parts[16] + sum(parts[4 * j + p] for j, p in enumerate(pose))
        np.testing.assert_array_equal(X[i], expected)


def test_classical_rank_is_13():
    # Each limb's four positions sum to the same "all positions" image across poses,
    # which leaves 1 + 4·3 = 13 independent directions (Donoho & Stodden).
    assert np.linalg.matrix_rank(swimmer(np.float64)) == 13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype(dtype):
    assert swimmer(dtype).dtype == dtype
    assert SWIMMER_SHAPE == (32, 32)


def test_images_are_limbs_attached_to_the_torso():
    parts = swimmer_parts().reshape(17, *SWIMMER_SHAPE)
    torso = parts[16].astype(bool)
    _, cols = np.nonzero(torso)
    for limb, position in itertools.product(range(4), range(4)):
        r, c = np.nonzero(parts[4 * limb + position])
        left = limb in (0, 2)
        # Arms and legs stay on their side of the torso, near their joint.
        assert (c < cols.min()).any() if left else (c > cols.max()).any()
        assert min(abs(r - (11 if limb < 2 else 20)).min(), 99) <= 3
