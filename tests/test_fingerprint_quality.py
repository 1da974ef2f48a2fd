"""The row fingerprint (``kernels/_hashing.py``) on structured rows: no collision in either lane.

The in-memory path confirms every group exactly, so a collision there costs only time; the
streaming path trusts both lanes, so each lane must separate the rows that activations really
produce: zeros, signed zeros, repeated patterns, permutations, one-ulp and one-bit changes at
every position, swapped values, short and odd-length rows.  The transform is ``t = 0 - a``
(weight 0, learning rate 1, batch 1): distinct activations stay distinct, ``-0.0`` meets ``+0.0``.
"""

import itertools
import warnings

import numpy as np
import pytest

from bundlelab.kernels import Transform
from bundlelab.kernels._formats import FORMATS
from bundlelab.kernels import _hashing
from bundlelab.kernels.cpu import CpuBackend

DTYPES = (np.float32, np.float64)


def _fingerprints(rows):
    rows = np.ascontiguousarray(rows)
    fmt = FORMATS[rows.dtype.name]
    out, _ = CpuBackend().fingerprints(rows, fmt, Transform.for_format(fmt, 0.0, 1.0, 1))
    return out


def _distinct_rows(rows):
    """Number of different rows once -0.0 is +0.0 (the transform's canonical values)."""
    return np.unique(rows + rows.dtype.type(0), axis=0).shape[0]


def _assert_no_collision(rows):
    fingerprints = _fingerprints(rows)
    distinct = _distinct_rows(rows)
    assert distinct > 1
    for lane in (0, 1):
        assert np.unique(fingerprints[:, lane]).size == distinct, f"lane {lane} collides"
    return fingerprints


def _splitmix64(state):
    z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _reference(rows):
    """The formula of ``_hashing.py`` in plain numpy, written out again here."""
    t = (-rows) + rows.dtype.type(0)  # the transform w - (a * 1) * 1 with w = 0, canonical
    if t.dtype == np.float32 and t.shape[1] % 2:
        t = np.concatenate([t, np.zeros((t.shape[0], 1), np.float32)], axis=1)
    words = np.ascontiguousarray(t).view(np.uint64)
    position = np.arange(words.shape[1], dtype=np.uint64)
    out = np.empty((rows.shape[0], 2), dtype=np.uint64)
    golden = np.uint64(0x9E3779B97F4A7C15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uint64 wrap-around is the arithmetic
        for lane in (0, 1):
            # splitmix64 outputs: base from SEED_BASE (lane a first), tweaks from SEED_TWEAK
            # (lanes interleaved), forced odd
            base = _splitmix64(np.uint64(_hashing.SEED_BASE) + golden * (
                np.uint64(lane * 512 + 1) + position % np.uint64(512)))
            tweak = _splitmix64(np.uint64(_hashing.SEED_TWEAK) + golden * (
                np.uint64(2) * (position // np.uint64(512)) + np.uint64(lane + 1))) | np.uint64(1)
            key = base * tweak
            low = (words + key) & np.uint64(0xFFFFFFFF)
            high = ((words >> np.uint64(32)) + (key >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
            out[:, lane] = _splitmix64((low * high + words).sum(axis=1, dtype=np.uint64))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_features", [1, 2, 3, 7, 1024, 1025, 3001])  # 512-word blocks
def test_kernel_is_the_documented_formula(dtype, n_features):
    rows = np.random.default_rng(n_features).normal(size=(5, n_features)).astype(dtype)
    rows[1, 0] = -0.0
    np.testing.assert_array_equal(_fingerprints(rows), _reference(rows))


@pytest.mark.parametrize("dtype", DTYPES)
def test_signed_zeros_agree_and_zero_rows_are_told_apart_by_length(dtype):
    rows = np.zeros((4, 6), dtype=dtype)
    rows[1] = -0.0
    rows[2, ::2] = -0.0
    rows[3, 5] = np.finfo(dtype).smallest_subnormal
    fingerprints = _fingerprints(rows)
    assert (fingerprints[:3] == fingerprints[0]).all()
    assert (fingerprints[3] != fingerprints[0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_features", [2, 5, 64, 257])
def test_one_ulp_and_one_bit_at_every_position(dtype, n_features):
    base = np.random.default_rng(0).normal(size=n_features).astype(dtype)
    rows = [base, np.zeros_like(base)]
    for k in range(n_features):
        for direction in (np.inf, -np.inf):
            row = base.copy()
            row[k] = np.nextafter(row[k], dtype(direction))
            rows.append(row)
        zero = np.zeros_like(base)
        zero[k] = np.finfo(dtype).smallest_subnormal
        rows.append(zero)
    bits = np.finfo(dtype).bits
    uint = np.uint32 if bits == 32 else np.uint64
    for k in range(min(n_features, 5)):
        for bit in range(bits - 1):  # every bit but the sign (its flip of 0.0 is -0.0)
            row = np.zeros_like(base)
            row.view(uint)[k] = uint(1) << uint(bit)
            rows.append(row)
    rows = np.array(rows)
    with np.errstate(invalid="ignore"):
        rows = rows[np.isfinite(rows).all(axis=1)]  # NaN rows equal nothing anyway
    _assert_no_collision(rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_permutations_and_swaps(dtype):
    values = np.array([0.0, 1.0, -1.0, 2.0, 0.5, 3.0, 1.0], dtype=dtype)  # a repeated value
    permutations = np.array(list(itertools.permutations(values)))
    _assert_no_collision(permutations)  # 7! rows, many of them repeated
    base = np.random.default_rng(1).normal(size=40).astype(dtype)
    swapped = [base]
    for i, j in itertools.combinations(range(base.size), 2):
        row = base.copy()
        row[i], row[j] = row[j], row[i]
        swapped.append(row)
    _assert_no_collision(np.array(swapped))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_features", [1, 3, 4, 31, 1024, 2049])
def test_repeated_patterns(dtype, n_features):
    rows = []
    for period in range(1, 9):
        for shift in range(period):
            pattern = np.arange(period, dtype=dtype) + dtype(1)
            rows.append(np.roll(np.resize(pattern, n_features), shift))
    for value in (0.0, 1.0, -1.0, 0.5, 2.0, 1e-30):
        rows.append(np.full(n_features, value, dtype=dtype))
    rows.append(np.arange(n_features, dtype=dtype))
    rows.append(np.arange(n_features, dtype=dtype)[::-1])
    _assert_no_collision(np.array(rows))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_short_row_of_small_values(dtype):
    """All rows of length 1-4 over a small alphabet: short, odd and padded words."""
    alphabet = np.array([0.0, 1.0, -1.0, 0.5, 2.0, np.finfo(dtype).tiny], dtype=dtype)
    for n_features in range(1, 5):
        rows = np.array(list(itertools.product(alphabet, repeat=n_features)), dtype=dtype)
        _assert_no_collision(rows)


def test_random_rows_spread_over_both_lanes():
    """Many rows with small differences: no collision, and every output bit about half set."""
    rng = np.random.default_rng(2)
    rows = np.repeat(rng.normal(size=(1, 33)).astype(np.float32), 20000, axis=0)
    rows[np.arange(20000), rng.integers(0, 33, 20000)] += np.float32(1e-3) * rng.integers(
        1, 1000, 20000)
    fingerprints = _assert_no_collision(rows)
    ones = np.unpackbits(fingerprints.view(np.uint8), axis=0).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 0.05)


@pytest.mark.parametrize("dtype", DTYPES)
def test_permutations_of_small_integers(dtype):
    """Small integers leave most bits of a word zero (float64: the whole low half), the case
    where keys with a pattern in the position fail by the thousand."""
    values = np.arange(8, dtype=dtype)
    _assert_no_collision(np.array(list(itertools.permutations(values))))


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_exchanged_between_key_blocks(dtype):
    """Rows that differ by moving values between the same offsets of different 512-word key
    blocks (pairs, and rectangles of four positions)."""
    per_word = 2 if dtype == np.float32 else 1
    block = 512 * per_word
    rng = np.random.default_rng(4)
    base = rng.integers(0, 4, 4 * block).astype(dtype)
    rows = [base]
    for _ in range(3000):
        j1, j2 = rng.integers(0, block, 2)
        b1, b2 = rng.choice(4, 2, replace=False) * block
        row = base.copy()
        if rng.integers(2):
            row[[j1 + b1, j1 + b2]] = row[[j1 + b2, j1 + b1]]
        else:
            row[[j1 + b1, j2 + b2, j1 + b2, j2 + b1]] = row[[j1 + b2, j2 + b1, j1 + b1, j2 + b2]]
        rows.append(row)
    _assert_no_collision(np.array(rows))


@pytest.mark.parametrize("dtype", DTYPES)
def test_key_blocks_swapped_wholesale(dtype):
    """Rows whose 512-word key blocks are the same blocks in another order, each block a
    rotation of one small-integer pattern (the same values in every block): every block uses
    the same base keys, so only their tweaks tell these rows apart."""
    per_word = 2 if dtype == np.float32 else 1
    block = 512 * per_word
    pattern = np.random.default_rng(6).integers(0, 3, block).astype(dtype)
    blocks = [np.roll(pattern, shift) for shift in (0, 1, 7, 100)]
    rows = [np.concatenate([blocks[k] for k in order])
            for order in itertools.permutations(range(4))]
    _assert_no_collision(np.array(rows))


PINNED = {  # fingerprints of definition 1 (``_hashing.VERSION``), as computed on 2026-12-04
    "float32": [(0xF4E36E4AB95650F4, 0x673FD17A6660908D), (0x44926DFB3915C19D, 0x17CB9998B0FD1E4E),
                (0x432E63B690D12F1A, 0xBE3A4FEAE871B2A3)],
    "float64": [(0xC8DAC171E161E66F, 0x7D652C5F51241FE1), (0x5345271D77D14384, 0xB891D818DEB7C749),
                (0x127C01F92A32EAC9, 0xB5E48F9FE67C019D)],
}


@pytest.mark.parametrize("dtype", sorted(PINNED))
def test_fingerprints_are_pinned_to_their_definition(dtype):
    """Fixed rows (three key blocks in float64) keep their fingerprints: a change of the
    definition must raise ``_hashing.VERSION`` (and update these values), so that pickled
    stream states of the old definition are refused rather than merged."""
    assert _hashing.VERSION == 1, "update PINNED to the new definition's values"
    fmt = FORMATS[dtype]
    rows = np.stack([np.arange(1031), np.zeros(1031), np.full(1031, -0.5)]).astype(dtype)
    out, _ = CpuBackend().fingerprints(rows, fmt, Transform.for_format(fmt, 1.0, 1e-3, 64))
    expected = np.array(PINNED[dtype], dtype=np.uint64)
    assert (out == expected).all(), "the fingerprint changed: raise _hashing.VERSION"
