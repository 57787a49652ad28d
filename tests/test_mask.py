"""SpeckledHoldout: the held-out set is a pure function of (row, column, seed)."""

from __future__ import annotations

import numpy as np
import pytest

import dnmf
from dnmf import InvalidParameterError, SpeckledHoldout
from dnmf._mask import splitmix64

M64 = (1 << 64) - 1


def _splitmix64_py(x: int) -> int:
    """SplitMix64 in Python's unbounded ints, as published (Steele et al. 2014)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _heldout_py(fraction: float, seed: int, i: int, j: int) -> bool:
    row_key = _splitmix64_py(_splitmix64_py(seed) ^ i)
    return (_splitmix64_py(row_key ^ j) >> 11) < int(fraction * (1 << 53))


def test_exported():
    assert dnmf.SpeckledHoldout is SpeckledHoldout
    assert "SpeckledHoldout" in dnmf.__all__


def test_splitmix64_matches_the_published_sequence():
    # SplitMix64 seeded with 0 yields these first outputs (the reference C code's
    # state advances by the golden gamma; our function is its output for state k*gamma).
    first = [_splitmix64_py((k * 0x9E3779B97F4A7C15) & M64) for k in range(3)]
    assert first[0] == 0xE220A8397B1DCDAF
    assert first[1] == 0x6E789E6AA1B965F4
    assert first[2] == 0x06C45D188009454F
    xs = np.array([0, 1, 2**63, M64, 12345678901234567], dtype=np.uint64)
    got = splitmix64(xs)
    assert [int(v) for v in got] == [_splitmix64_py(int(v)) for v in xs]


@pytest.mark.parametrize("fraction,seed", [(0.05, 0), (0.2, 7), (0.5, 2**64 - 1)])
def test_heldout_equals_the_pure_python_hash(fraction, seed):
    h = SpeckledHoldout(fraction, seed)
    block = h.heldout(1000, 1030, 17)
    expected = np.array([[_heldout_py(fraction, seed, i, j) for j in range(17)]
                         for i in range(1000, 1030)])
    np.testing.assert_array_equal(block, expected)
    assert block.dtype == bool and block.shape == (30, 17)


def test_any_panel_regenerates_its_part():
    h = SpeckledHoldout(0.1, 3)
    whole = h.heldout(0, 500, 300)
    for start, stop in [(0, 1), (17, 123), (123, 500), (499, 500), (250, 250)]:
        np.testing.assert_array_equal(h.heldout(start, stop, 300), whole[start:stop])
    # a row's entries do not depend on how many columns V has
    np.testing.assert_array_equal(h.heldout(0, 500, 120), whole[:, :120])


def test_large_panels_are_hashed_in_blocks_with_the_same_result(monkeypatch):
    import dnmf._mask as mask_module

    h = SpeckledHoldout(0.3, 11)
    whole = h.heldout(5, 205, 64)
    monkeypatch.setattr(mask_module, "_BLOCK_ENTRIES", 100)  # 1 row per block
    np.testing.assert_array_equal(h.heldout(5, 205, 64), whole)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2, 0.5, 0.9])
def test_fraction_within_binomial_tolerance(fraction):
    n, m = 2000, 500
    held = SpeckledHoldout(fraction, seed=42).heldout(0, n, m)
    N = n * m
    sd = np.sqrt(fraction * (1 - fraction) / N)
    assert abs(held.mean() - fraction) < 5 * sd  # 5 standard deviations
    # no structure by row or column: the per-row and per-column shares are binomial too
    for share, count in ((held.mean(axis=1), m), (held.mean(axis=0), n)):
        sd1 = np.sqrt(fraction * (1 - fraction) / count)
        assert abs(share.std() - sd1) < 0.15 * sd1


def test_neighbouring_entries_are_independent():
    held = SpeckledHoldout(0.5, seed=1).heldout(0, 1000, 1000).astype(float)
    x = held - held.mean()
    for a, b in ((x[:, 1:], x[:, :-1]), (x[1:, :], x[:-1, :])):
        corr = (a * b).mean() / x.var()
        assert abs(corr) < 5 / np.sqrt(a.size)


def test_seeds_give_independent_sets():
    a = SpeckledHoldout(0.2, 0).heldout(0, 1000, 200)
    b = SpeckledHoldout(0.2, 1).heldout(0, 1000, 200)
    both = (a & b).mean()
    assert abs(both - 0.04) < 5 * np.sqrt(0.04 * 0.96 / a.size)
    # a larger fraction with the same seed holds out a superset
    c = SpeckledHoldout(0.3, 0).heldout(0, 1000, 200)
    assert not (a & ~c).any()


def test_observed_is_the_complement_and_value_semantics():
    h = SpeckledHoldout(0.25, 9)
    np.testing.assert_array_equal(h.observed(3, 40, 11), ~h.heldout(3, 40, 11))
    assert h == SpeckledHoldout(0.25, 9) and hash(h) == hash(SpeckledHoldout(0.25, 9))
    assert h != SpeckledHoldout(0.25, 8)
    assert h.identity() == {"kind": "speckled", "hash": "splitmix64",
                            "fraction": 0.25, "seed": 9}
    assert SpeckledHoldout().fraction == 0.05 and SpeckledHoldout().seed == 0
    assert SpeckledHoldout(np.float32(0.5), np.int64(2)).seed == 2


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), "0.1", True, None])
def test_bad_fraction(fraction):
    with pytest.raises(InvalidParameterError, match="fraction must be a float in"):
        SpeckledHoldout(fraction)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "3", None, True])
def test_bad_seed(seed):
    with pytest.raises(InvalidParameterError, match="seed must be a non-negative int"):
        SpeckledHoldout(0.1, seed)


def test_bad_heldout_arguments():
    h = SpeckledHoldout()
    with pytest.raises(InvalidParameterError, match="start <= stop"):
        h.heldout(5, 4, 3)
    with pytest.raises(InvalidParameterError, match="m must be a non-negative int"):
        h.heldout(0, 4, -1)
    with pytest.raises(InvalidParameterError, match="start must be"):
        h.heldout(1.0, 4, 3)
    assert h.heldout(0, 0, 5).shape == (0, 5)
    assert h.heldout(0, 3, 0).shape == (3, 0)


@pytest.mark.parametrize(("fraction", "seed", "start", "m"), [
    (0.05, 0, 0, 2000), (0.5, 7, 123_457, 1), (0.999, 2**64 - 1, 2**62 - 40, 33),
    (1e-6, 12345, 10**12, 257)])
def test_compiled_hold_out_hash_is_the_numpy_one_bit_for_bit(monkeypatch, fraction, seed,
                                                              start, m):
    pytest.importorskip("numba")
    holdout = SpeckledHoldout(fraction=fraction, seed=seed)
    n = max(40, (1 << 18) // m + 3)  # over HASH_TINY entries: auto runs it compiled
    rng = np.random.default_rng(seed % 97)
    rows = rng.integers(start, start + n, 50_000).astype(np.uint64)
    cols = rng.integers(0, m, 50_000).astype(np.uint64)
    results = {}
    for mode in ("numpy", "numba", "auto"):
        monkeypatch.setenv("DNMF_KERNELS", mode)
        results[mode] = (holdout.heldout(start, start + n, m), holdout.heldout_at(rows, cols))
    for mode in ("numba", "auto"):
        np.testing.assert_array_equal(results[mode][0], results["numpy"][0])
        np.testing.assert_array_equal(results[mode][1], results["numpy"][1])
    block, at = results["numpy"]
    # the pointwise and the block hash agree, and the share held out is the fraction
    np.testing.assert_array_equal(at, block[(rows - np.uint64(start)).astype(np.int64),
                                            cols.astype(np.int64)])
    assert abs(block.mean() - fraction) < 5 * np.sqrt(fraction * (1 - fraction) / block.size) \
        + 1e-9
