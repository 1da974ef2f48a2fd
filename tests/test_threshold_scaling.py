"""Threshold mode's grid index and block-parallel greedy (``kernels/_threshold.py``) against a
plain-Python reference of the greedy rule, written here independently: sample i joins the
earliest leader j with fl(fl(|a_ik - a_jk|) * scale) <= gamma for every k (float64), else opens
a bundle.  Inputs include duplicates, pairs exactly at the reach and one ulp either side,
NaN/Inf rows, several blocks, and leaders carried over from earlier batches (streaming)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bundlelab
from bundlelab.kernels import _threshold
from bundlelab.kernels.cpu import CpuBackend

BACKEND = CpuBackend()


def reference_assign(rows, scale, gamma, leaders=()):
    """Leader positions (in opening order, ``leaders`` first) of every row: each row against
    every leader so far, in float64 (a NaN difference compares false)."""
    rows = np.asarray(rows, dtype=np.float64)
    opened = np.empty((len(leaders) + len(rows), rows.shape[1]))
    opened[:len(leaders)] = np.asarray(leaders, dtype=np.float64).reshape(-1, rows.shape[1])
    n_open = len(leaders)
    out = []
    for row in rows:
        within = np.flatnonzero((np.abs(opened[:n_open] - row) * scale <= gamma).all(axis=1))
        if within.size:
            out.append(int(within[0]))
        else:
            out.append(n_open)
            opened[n_open] = row
            n_open += 1
    return out


def kernel_assign(rows, scale, gamma, old=None):
    """``CpuBackend.threshold_assign`` as the streaming path calls it: ``old`` leader rows
    first, the new rows after."""
    rows = np.ascontiguousarray(rows)
    n_old = 0 if old is None else len(old)
    combined = rows if old is None else np.ascontiguousarray(np.concatenate([old, rows]))
    means, tolerances, _ = BACKEND.row_means(combined)
    leaders = np.empty(combined.shape[0], dtype=np.int64)
    leaders[:n_old] = np.arange(n_old)
    assign, n_leaders = BACKEND.threshold_assign(
        combined, means, tolerances, n_old, leaders, n_old, scale, gamma
    )
    return assign.tolist(), n_leaders


@st.composite
def near_threshold_rows(draw):
    """Rows whose pairwise differences sit at the reach of (scale, gamma), one ulp either side,
    exactly equal, or far; with NaN/Inf rows sprinkled in."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n_features = draw(st.integers(1, 6))
    n_rows = draw(st.integers(1, 40))
    scale = draw(st.sampled_from([1e-3 / 64, 1.0, 0.5, 3.0 / 7.0]))
    gamma = draw(st.sampled_from([1e-8, 0.25, 1.0, 5e-324, 0.0]))
    step = dtype(gamma / scale) if gamma else dtype(1.0)
    base = draw(st.lists(st.integers(-3, 3), min_size=n_features, max_size=n_features))
    rows = []
    for _ in range(n_rows):
        kind = draw(st.sampled_from(["copy", "step", "up", "down", "far", "nonfinite", "new"]))
        if rows and kind in ("copy", "step", "up", "down"):
            row = np.array(rows[draw(st.integers(0, len(rows) - 1))], dtype=dtype)
            k = draw(st.integers(0, n_features - 1))
            if kind != "copy":
                row[k] = row[k] + step * dtype(draw(st.sampled_from([1, -1])))
            with np.errstate(all="ignore"):  # an ulp above the largest float is inf: fine
                if kind == "up":
                    row[k] = np.nextafter(row[k], dtype(np.inf), dtype=dtype)
                elif kind == "down":
                    row[k] = np.nextafter(row[k], dtype(-np.inf), dtype=dtype)
        elif kind == "nonfinite":
            row = np.array(base, dtype=dtype) * step
            row[draw(st.integers(0, n_features - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
        elif kind == "far":
            row = np.array(base, dtype=dtype) * step * dtype(draw(st.integers(2, 9)))
        else:
            row = np.array(draw(st.lists(st.integers(-4, 4), min_size=n_features,
                                         max_size=n_features)), dtype=dtype) * step
        rows.append(row)
    return np.array(rows, dtype=dtype), scale, gamma


@settings(max_examples=300, deadline=None)
@given(case=near_threshold_rows())
def test_matches_the_greedy_rule_at_the_edges(case):
    rows, scale, gamma = case
    assign, n_leaders = kernel_assign(rows, scale, gamma)
    expected = reference_assign(rows, scale, gamma)
    assert assign == expected
    assert n_leaders == max(expected) + 1


@settings(max_examples=100, deadline=None)
@given(case=near_threshold_rows(), split=st.integers(0, 40), data=st.data())
def test_streaming_batches_match_the_whole(case, split, data):
    """Leaders of earlier batches come first, in their opening order."""
    rows, scale, gamma = case
    split = min(split, len(rows))
    expected = reference_assign(rows, scale, gamma)
    first = reference_assign(rows[:split], scale, gamma)
    leader_rows = [rows[i] for i, a in enumerate(first) if a == (max(first[:i], default=-1) + 1)]
    assert len(leader_rows) == (max(first) + 1 if first else 0)
    old = np.array(leader_rows, dtype=rows.dtype).reshape(len(leader_rows), rows.shape[1])
    assign, _ = kernel_assign(rows[split:], scale, gamma, old if len(old) else None)
    assert first + assign == expected


def _clustered(rng, n_rows, n_features, n_centres, spread, dtype):
    centres = rng.random((n_centres, n_features))
    rows = centres[rng.integers(0, n_centres, n_rows)] + spread * rng.random((n_rows, n_features))
    return rows.astype(dtype)


@pytest.mark.parametrize("regime", ["distinct", "duplicated", "clustered", "sparse", "narrow"])
def test_several_blocks_match_the_greedy_rule(regime):
    """More rows than one parallel block (``BLOCK``), in every regime the grid meets: rows that
    spread (few leaders per cell), duplicates, clusters whose members chain across the reach,
    rows that tie on most columns, and rows whose values all lie within a few reaches (cells
    that hold everything: the index falls back to comparing more pairs)."""
    rng = np.random.default_rng(7)
    n, d, scale, gamma = _threshold.BLOCK + 700, 8, 1e-3 / 64, 1e-8
    reach = gamma / scale
    if regime == "distinct":
        rows = rng.random((n, d)).astype(np.float32)
    elif regime == "duplicated":
        rows = rng.random((n, d)).astype(np.float32)
        rows[n // 2:] = rows[rng.integers(0, n // 2, n - n // 2)]
    elif regime == "clustered":
        rows = _clustered(rng, n, d, 10, 3 * reach, np.float32)
    elif regime == "sparse":  # wider than SUBSET: the sums over a subset of columns are keys
        d = _threshold.SUBSET + 40
        rows = (rng.random((n, d)) * (rng.random((n, d)) < 0.05)).astype(np.float64)
    else:
        rows = (rng.random((n, d)) * 2.5 * reach).astype(np.float64)
    rows[rng.integers(0, n, 5)] = np.nan
    assign, _ = kernel_assign(rows, scale, gamma)
    assert assign == reference_assign(rows, scale, gamma)


def test_streaming_over_blocks_matches_the_whole():
    rng = np.random.default_rng(3)
    reach = 1e-8 / (1e-3 / 64)
    a = _clustered(rng, 3 * _threshold.BLOCK, 6, 40, 2.5 * reach, np.float32)
    labels = rng.integers(0, 4, len(a))
    whole = bundlelab.find_bundles(a, labels, mode="threshold")
    stream = bundlelab.BundleStream(mode="threshold")
    for start in range(0, len(a), 1500):
        stream.update(a[start:start + 1500], labels[start:start + 1500])
    streamed = stream.result()
    assert streamed.bundle_ids.tolist() == whole.bundle_ids.tolist()
    expected = reference_assign(a, 1e-3 / 64, 1e-8)
    assert whole.n_bundles == max(expected) + 1


def test_the_grid_prunes_rows_that_spread():
    """Rows that spread on a few keys get a grid of more than one key, with cells that hold a
    handful of rows, and a row visits about ``2**m`` of its ``3**m`` neighbour cells (buckets
    twice a key's width): the reason distinct rows cost near-linear time."""
    rng = np.random.default_rng(0)
    rows = (rng.random((20000, 64)) * (rng.random((20000, 64)) < 0.05)).astype(np.float32)
    rows = np.unique(rows, axis=0)[rng.permutation(np.unique(rows, axis=0).shape[0])]
    means, tolerances, _ = BACKEND.row_means(rows)
    probes = _threshold.probe_columns(rows)
    finite, cells, strides, sides = _threshold.grid_keys(rows, means, tolerances, probes,
                                                         1e-3 / 64, 1e-8)
    assert finite.all() and 2 <= len(strides) <= _threshold.GRID_KEYS
    _, per_cell = np.unique(cells, return_counts=True)
    assert per_cell.max() < 100 and per_cell.sum() == len(rows) > 19000
    _, needs = _threshold.neighbour_offsets(strides)
    visited = ((needs[None, :] & ~sides[:, None]) == 0).sum(axis=1)
    assert visited.mean() < 1.25 * 2 ** len(strides)


# -- the buckets: every key within width lies in the same bucket or a side the key records ----


def _check_buckets(keys, width, buckets, sides):
    """Every pair with fl(|x - y|) <= width: buckets at most one apart, and the bucket of the
    other key on a side the key records (bit 0 below, bit 1 above)."""
    x, y = keys[:, None], keys[None, :]
    near = np.abs(x - y) <= width
    step = buckets[None, :] - buckets[:, None]
    assert np.all(np.abs(step[near]) <= 1)
    below = np.broadcast_to((sides & 1)[:, None] != 0, near.shape)
    above = np.broadcast_to((sides & 2)[:, None] != 0, near.shape)
    assert below[near & (step == -1)].all()
    assert above[near & (step == 1)].all()


@st.composite
def keys_at_borders(draw):
    """Keys at multiples of a width (bucket borders), one or two ulps either side, halfway,
    duplicated, with widths that are tiny, zero, huge or ordinary."""
    width = draw(st.sampled_from([1.0, 6.4e-4, 0.1, 3.0 / 7.0, 1e-300, 5e-324, 0.0, 1e300]))
    base = draw(st.sampled_from([0.0, -1.0, 12345.678, -7e-4]))
    unit = width if width else 1e-3
    keys = []
    for _ in range(draw(st.integers(1, 40))):
        k = base + unit * draw(st.integers(-12, 12)) / draw(st.sampled_from([1, 2, 4]))
        for _ in range(draw(st.integers(0, 2))):
            k = np.nextafter(k, draw(st.sampled_from([np.inf, -np.inf])))
        keys.append(k)
    if draw(st.booleans()):
        keys.append(keys[0])
    return np.array(keys, dtype=np.float64), width


@settings(max_examples=300, deadline=None)
@given(case=keys_at_borders())
def test_buckets_and_sides_keep_every_key_within_width(case):
    """Both bucketings (without a sort, and on the sorted keys) keep every pair within width in
    buckets the key visits."""
    keys, width = case
    n = keys.size
    buckets, sides = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    n_buckets = _threshold._bucket_floor(keys, width, 2.0 * n + 64, buckets, sides)
    if n_buckets >= 0:
        assert buckets.min() >= 0 and buckets.max() < n_buckets
        _check_buckets(keys, width, buckets, sides)
    order = np.argsort(keys)
    ids, sorted_sides = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    n_buckets = _threshold._bucket_sides(np.ascontiguousarray(keys[order]), width, ids,
                                         sorted_sides)
    buckets[order], sides[order] = ids, sorted_sides
    assert buckets.max() < n_buckets
    _check_buckets(keys, width, buckets, sides)


def test_floor_buckets_fall_back_when_keys_spread_too_far():
    keys = np.array([0.0, 1.0, 1e12])
    out = np.empty(3, dtype=np.int64)
    assert _threshold._bucket_floor(keys, 1e-3, 64.0, out, out.copy()) == -1
    assert _threshold._bucket_floor(keys, 0.0, 64.0, out, out.copy()) == -1
    assert _threshold._bucket_floor(keys[:2], 0.25, 64.0, out[:2], out[:2].copy()) == 3


# -- many small blocks: the block sizes grow and shrink, the result stays the greedy's ---------


@st.composite
def grid_rows(draw):
    """Enough rows for the grid to choose keys: clusters on a lattice of half reaches (so keys
    sit on bucket borders), rows exactly at the reach of another and one ulp beyond, duplicates,
    NaN/Inf rows, and gamma 0."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = 1e-3 / 64
    gamma = draw(st.sampled_from([1e-8, 0.0]))
    reach = dtype(gamma / scale) if gamma else dtype(2.0**-10)
    n_features = draw(st.integers(2, 5))
    n_rows = draw(st.integers(60, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([4, 40, 400]))
    rows = (rng.integers(-spread, spread, (n_rows, n_features)) * (reach / 2)).astype(dtype)
    kinds = rng.integers(0, 6, n_rows)
    for i in range(1, n_rows):
        other = rows[rng.integers(0, i)]
        k = rng.integers(0, n_features)
        if kinds[i] == 0:
            rows[i] = other
        elif kinds[i] in (1, 2):
            rows[i] = other
            rows[i, k] = other[k] + reach * dtype(rng.choice([-1, 1]))
            if kinds[i] == 2:
                rows[i, k] = np.nextafter(rows[i, k], dtype(rng.choice([-np.inf, np.inf])),
                                          dtype=dtype)
    bad = rng.random(n_rows) < 0.02
    rows[bad, 0] = rng.choice([np.nan, np.inf, -np.inf], bad.sum())
    return rows, scale, gamma


@settings(max_examples=60, deadline=None)
@given(case=grid_rows())
def test_small_blocks_match_the_greedy_rule(case, monkeypatch_blocks):
    rows, scale, gamma = case
    assign, n_leaders = kernel_assign(rows, scale, gamma)
    expected = reference_assign(rows, scale, gamma)
    assert assign == expected
    assert n_leaders == max(expected) + 1


@pytest.fixture(scope="module")
def monkeypatch_blocks():
    """Blocks of 8 rows growing to 32, so a few hundred rows take many rounds of either size."""
    patch = pytest.MonkeyPatch()
    patch.setattr(_threshold, "BLOCK", 8)
    patch.setattr(_threshold, "MAX_BLOCK", 32)
    yield
    patch.undo()


def test_large_grid_rows_match_the_greedy_rule():
    """Distinct rows on a lattice of half reaches (keys on bucket borders), then a narrow
    cluster that chains across the reach: blocks grow on the first part and shrink on the
    second, over more rows than ``MAX_BLOCK``-sized rounds would need to be one."""
    rng = np.random.default_rng(11)
    scale, gamma = 1e-3 / 64, 1e-8
    reach = gamma / scale
    distinct = rng.integers(-300, 300, (9000, 6)) * (reach / 2)
    narrow = rng.random((3000, 6)) * 3 * reach
    rows = np.concatenate([distinct, narrow, distinct[:500]]).astype(np.float64)
    assign, _ = kernel_assign(rows, scale, gamma)
    assert assign == reference_assign(rows, scale, gamma)


# -- the row means: a bound for every summation order ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1,
                    max_size=70),
    n_rows=st.integers(1, 3),
)
def test_row_means_tolerance_bounds_the_exact_mean(values, n_rows):
    """``|mean - exact mean| <= tolerance`` for finite rows (the means prune pairs, summed in
    any order), and the non-finite flag is exact."""
    import math
    from fractions import Fraction

    rows = np.array([values[i:] + values[:i] for i in range(n_rows)], dtype=np.float32)
    means, tolerances, nonfinite = BACKEND.row_means(rows)
    for row, mean, tolerance, bad in zip(rows, means, tolerances, nonfinite):
        assert bad == (not np.isfinite(row).all())
        if not bad:
            exact = sum(Fraction(float(v)) for v in row) / row.size
            assert abs(Fraction(float(mean)) - exact) <= Fraction(float(tolerance))
            assert math.isfinite(tolerance)
