"""The resolution-mode grouping: the compiled hash-table grouping, the duplicates proven during
the fingerprint pass (``partner``), and the exact confirmation behind both.

The fused pass (:func:`~bundlelab.kernels.cpu.fingerprints_partners_native`) runs only for rows
of at least ``PARTNER_ROW_BYTES``; the tests lower that bound so that the small rows of the
property strategies go through it too.  Fingerprint collisions are forced with constant word
keys: the lanes become symmetric sums, so a row and any permutation of it collide, and only
the exact comparison can keep them apart.
"""

from __future__ import annotations

import os
import sys
from unittest import mock

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bundlelab
from bundlelab.bundles import _sorted_roots, group_fingerprints
from bundlelab.kernels import Transform, cpu
from bundlelab.kernels._formats import FORMATS

sys.path.insert(0, os.path.dirname(__file__))
from reference import reference_bundles  # noqa: E402
from test_reference_properties import (  # noqa: E402
    assert_matches,
    planted,
    run_library,
    run_reference,
)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def weak_keys(n_values, fmt):
    """Word keys that make every position alike: permuted rows collide in both lanes."""
    n_blocks = max(1, -(-cpu._hashing.n_words(n_values, fmt.name) // cpu.BLOCK_WORDS))
    base = np.ones(cpu.BLOCK_WORDS, dtype=np.uint64)
    tweak = np.ones(n_blocks, dtype=np.uint64)
    return base, base, tweak, tweak


def every_row_fused():
    """Route rows of every length through the fused pass."""
    return mock.patch.object(cpu, "PARTNER_ROW_BYTES", 0)


def first_occurrence_ids(rows: np.ndarray) -> list[int]:
    """Bundle ids of exactly equal rows (no NaN, no signed zeros), by first occurrence."""
    seen: dict = {}
    return [seen.setdefault(row.tobytes(), len(seen)) for row in rows]


@st.composite
def fingerprint_tables(draw):
    """Fingerprints with many ties (few distinct values) and sometimes equal first words."""
    n = draw(st.integers(0, 300))
    n_distinct = draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, 2**64, size=(n_distinct, 2), dtype=np.uint64)
    if draw(st.booleans()):
        values[:, 0] = values[0, 0]  # same first word: only the second tells them apart
    if draw(st.booleans()):
        values[:, 0] &= np.uint64(7)  # a crowded table: long probe sequences
    return values[rng.integers(0, n_distinct, size=n)]


@settings(max_examples=200, **SETTINGS)
@given(fingerprints=fingerprint_tables())
def test_compiled_grouping_equals_the_sort(fingerprints):
    root, unproven = cpu.CpuBackend().group_rows(fingerprints)
    np.testing.assert_array_equal(root, _sorted_roots(fingerprints))
    np.testing.assert_array_equal(unproven, root != np.arange(len(root)))


@settings(max_examples=100, **SETTINGS)
@given(fingerprints=fingerprint_tables(), seed=st.integers(0, 2**32 - 1))
def test_members_connected_by_proven_edges_are_not_compared_again(fingerprints, seed):
    """``unproven`` is exactly: a member whose proven edges do not reach its representative."""
    root = _sorted_roots(fingerprints)
    n = len(root)
    rng = np.random.default_rng(seed)
    # edges only inside groups (equal rows have equal fingerprints), to any other member
    partner = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        group = np.flatnonzero(root == root[i])
        if rng.random() < 0.6 and group.size > 1:
            partner[i] = rng.choice(group[group != i])
    _, unproven = cpu.CpuBackend().group_rows(fingerprints, partner)
    component = np.arange(n)  # the components of the edges, by a plain fixed point
    changed = True
    while changed:
        changed = False
        for i in np.flatnonzero(partner >= 0):
            low = min(component[i], component[partner[i]])
            if component[i] != low or component[partner[i]] != low:
                component[component == component[i]] = low
                component[component == component[partner[i]]] = low
                changed = True
    expected = (root != np.arange(n)) & (component != component[root])
    np.testing.assert_array_equal(unproven, expected)


def test_grouping_without_compiled_kernels_is_the_sort():
    fingerprints = np.array([[5, 1], [3, 2], [5, 1], [5, 2], [3, 2]], dtype=np.uint64)
    with mock.patch.dict(sys.modules, {"bundlelab.kernels.cpu": None}):
        assert group_fingerprints(fingerprints).tolist() == [0, 1, 0, 3, 1]
    assert group_fingerprints(fingerprints).tolist() == [0, 1, 0, 3, 1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [False, True])
def test_forced_collisions_are_separated_by_the_confirmation(dtype, fused, monkeypatch):
    """With weak keys, permutations of a row collide; the bundles stay those of equal rows."""
    rng = np.random.default_rng(11)
    d = 9000 if fused else 24  # fused: rows over PARTNER_ROW_BYTES (32 KiB) in both dtypes
    base = rng.normal(size=(3, d)).astype(dtype)
    per_word = 8 // base.itemsize

    def reversed_words(row):
        return row.reshape(-1, per_word)[::-1].reshape(-1)

    def rolled_words(row):
        return np.roll(row, per_word)

    rows = [base[0], reversed_words(base[0]), base[1], base[0], rolled_words(base[0]),
            reversed_words(base[1]), reversed_words(base[0]), base[2], rolled_words(base[0]),
            base[1]]
    a = np.ascontiguousarray(rows, dtype=dtype)
    monkeypatch.setattr(cpu, "fingerprint_keys", weak_keys)
    fmt = FORMATS[dtype]
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    fingerprints, _, partner = cpu.CpuBackend().fingerprints_partners(a, fmt, transform)
    # the collisions are real: every permutation of base[0] has base[0]'s fingerprint
    assert (fingerprints[[1, 4, 6, 8]] == fingerprints[0]).all()
    assert (partner is not None) == fused
    labels = np.arange(len(rows)) % 3
    result = bundlelab.find_bundles(a, labels)
    expected = first_occurrence_ids(a)
    assert result.bundle_ids.tolist() == expected == [0, 1, 2, 0, 3, 4, 1, 5, 3, 2]
    ref = reference_bundles(a, labels)
    assert result.bundle_ids.tolist() == ref["bundle_ids"]


def test_fused_pass_proves_every_duplicate_on_one_thread():
    """One thread hashes rows in order: each member meets an earlier equal row, never a
    different one; -0.0 against 0.0 is proven by the transformed comparison."""
    rng = np.random.default_rng(4)
    n, d = 64, 9000
    a = rng.normal(size=(n, d)).astype(np.float32)
    source = rng.integers(0, 16, size=n)
    a = a[source]
    a[source == 3, 7] = 0.0
    a[np.flatnonzero(source == 3)[1:], 7] = -0.0  # equal after the transform, other bits
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        _, _, partner = cpu.CpuBackend().fingerprints_partners(a, fmt, transform)
    finally:
        numba.set_num_threads(threads)
    first = {}
    for i, s in enumerate(source):
        expected = first.setdefault(s, i)
        assert partner[i] == (-1 if expected == i else expected), i


@pytest.mark.parametrize("weight_amplitude", [1.0, float("inf")])
def test_fused_pass_never_proves_nan_rows(weight_amplitude):
    """Rows whose t holds NaN equal no row: equal bits must not prove them (w = inf makes a
    finite activation's t NaN when a * alpha * invb overflows too)."""
    d = 9000
    a = np.ones((4, d), dtype=np.float32)
    a[:2, 5] = np.nan
    a[2:, 5] = 3e38
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, weight_amplitude, 1e30, 1)
    _, _, partner = cpu.CpuBackend().fingerprints_partners(a, fmt, transform)
    assert partner[0] == partner[1] == -1
    proven = partner[3] == 2 or partner[2] == 3  # whichever the threads hashed second
    assert proven == (weight_amplitude != float("inf"))


#: what a later value of a repeated row may become: nothing, one ulp up, the other zero, a NaN,
#: an infinity
TAIL_EDITS = ("same", "ulp", "signed zero", "nan", "inf")


@settings(max_examples=60, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["float32", "float64"]),
       d=st.sampled_from([3, 1024, 1025, 2500]),
       edits=st.lists(st.sampled_from(TAIL_EDITS), min_size=1, max_size=40),
       weight_amplitude=st.sampled_from([1.0, float("inf")]))
def test_near_duplicates_get_the_plain_fingerprints(seed, dtype, d, edits, weight_amplitude):
    """Rows that repeat an earlier row but for one later value (one ulp, the sign of a zero, a
    NaN, an infinity) get the fingerprints and non-finite flags of the plain pass from the
    fused pass, and a proven partner is a row whose t equals its own in every value (never a
    NaN row, also when w = inf makes t NaN)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, d)).astype(dtype)
    base[:, -1] = 0.0
    rows = [base[k % 3].copy() for k in range(3)]
    for edit in edits:
        row = base[rng.integers(0, 3)].copy()
        at = rng.integers(min(cpu.TILE, d - 1), d)  # past the first tile of the kernels
        if edit == "ulp":
            row[at] = np.nextafter(row[at], np.inf)
        elif edit == "signed zero":
            row[-1] = -0.0
        elif edit == "nan":
            row[at] = np.nan
        elif edit == "inf":
            row[at] = np.inf
        rows.append(row)
    a = np.stack(rows)
    fmt = FORMATS[dtype]
    transform = Transform.for_format(fmt, weight_amplitude, 1e-3, 64)
    plain, plain_bad = cpu.CpuBackend().fingerprints(a, fmt, transform)
    with every_row_fused():
        fused, fused_bad, partner = cpu.CpuBackend().fingerprints_partners(a, fmt, transform)
    np.testing.assert_array_equal(fused, plain)
    np.testing.assert_array_equal(fused_bad, plain_bad)
    w, alpha, invb = cpu._native_constants(fmt, transform)
    with np.errstate(all="ignore"):
        t = w - (a * alpha) * invb
    for i, j in enumerate(partner):
        if j >= 0:
            assert j != i and (t[i] == t[j]).all(), (i, j)


@pytest.mark.parametrize("d", [4096, 8192])  # 16 KiB rows: no shortcut; 32 KiB: the shortcut
def test_an_alpha_that_overflows_leaves_zero_rows_apart(d):
    """A learning rate finite in float64 but infinite in float32 gives 0 * inf = NaN for a zero
    activation: such rows equal no row, with or without the in-cache shortcut."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bundlelab.find_bundles(np.zeros((4, d), np.float32), [0, 1, 0, 1],
                                        learning_rate=1e39, update_format="float32",
                                        weight_amplitude=1.0, nonfinite="keep")
    assert list(result.bundle_ids) == [0, 1, 2, 3]
    assert result.entropy == 0.0


@settings(max_examples=150, **SETTINGS)
@given(case=planted(modes=("resolution",)))
def test_fused_pass_matches_reference(case):
    with every_row_fused():
        result = run_library(case)
    assert_matches(result, run_reference(case), case)


@settings(max_examples=60, **SETTINGS)
@given(case=planted(modes=("resolution",), nonfinite=True),
       policy=st.sampled_from(["keep", "exclude"]))
def test_fused_pass_with_nonfinite_rows_matches_reference(case, policy):
    a = np.asarray(case["a"]).astype(np.float64).reshape(len(case["labels"]), -1)
    if policy == "exclude" and not np.isfinite(a).all(axis=1).any():
        return
    with every_row_fused():
        result = run_library(case, nonfinite=policy)
    assert_matches(result, run_reference(case, nonfinite=policy), case)


@settings(max_examples=100, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200))
def test_ids_number_representatives_of_kept_samples_by_first_occurrence(seed, n):
    """The O(n) numbering of ``_layer_result`` is np.unique's inverse, also when a kept
    sample's representative is an excluded sample."""
    from bundlelab.bundles import BundleOptions, _layer_result

    rng = np.random.default_rng(seed)
    roots = np.arange(n)
    for i in range(1, n):
        if rng.random() < 0.5:
            roots[i] = roots[rng.integers(0, i)]
    keep = rng.random(n) < 0.7
    keep[rng.integers(0, n)] = True
    result = _layer_result(roots, keep, np.zeros(n, dtype=np.int64), 1, BundleOptions(),
                           layer="l", n_features=1, dtype="float32", update_format="float32")
    expected = np.full(n, -1)
    expected[keep] = np.unique(roots[keep], return_inverse=True)[1].reshape(-1)
    np.testing.assert_array_equal(result.bundle_ids, expected)
