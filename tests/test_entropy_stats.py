"""``bundle_stats`` against the plain reference, on both of its ways to count (bundle, label)
pairs: a dense table when bundles × labels is small, a sort otherwise."""

import math
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab import entropy
from bundlelab._validation import label_codes
from bundlelab.entropy import bundle_stats

sys.path.insert(0, os.path.dirname(__file__))
from reference import reference_entropy  # noqa: E402


@st.composite
def bundles_and_labels(draw):
    n = draw(st.integers(1, 300))
    n_bundles = draw(st.integers(1, n))
    n_codes = draw(st.integers(1, 40))
    ids = draw(st.lists(st.integers(0, n_bundles - 1), min_size=n, max_size=n))
    codes = draw(st.lists(st.integers(0, n_codes - 1), min_size=n, max_size=n))
    # ids 0..k-1 in order of first appearance, as find_bundles gives them
    first = {}
    ids = [first.setdefault(i, len(first)) for i in ids]
    return np.array(ids, dtype=np.int64), np.array(codes, dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(case=bundles_and_labels(), epsilon=st.sampled_from([0.0, 1e-5]), dense=st.booleans())
def test_stats_match_the_reference_on_both_ways(case, epsilon, dense):
    ids, codes = case
    with pytest.MonkeyPatch.context() as patch:
        # forcing the sort: no table is small enough; forcing the table: every one is
        patch.setattr(entropy, "DENSE_PAIRS_PER_SAMPLE", 10**9 if dense else -10**9)
        stats = bundle_stats(ids, codes, epsilon=epsilon)
    want = reference_entropy(ids.tolist(), codes.tolist(), epsilon=epsilon)
    assert math.isclose(stats.entropy, want, rel_tol=1e-12, abs_tol=1e-15)
    sizes = np.bincount(ids)
    labels_per_bundle = [len(set(codes[ids == b].tolist())) for b in range(ids.max() + 1)]
    assert stats.n_samples == len(ids)
    assert stats.n_bundles == ids.max() + 1
    assert stats.n_conflicting == sum(k >= 2 for k in labels_per_bundle)
    assert stats.largest_bundle == sizes.max()
    assert stats.fully_conflicting == (stats.n_bundles == 1 and len(set(codes.tolist())) >= 2)


def first_occurrence_codes(values: list) -> tuple[list[int], list]:
    """Codes 0..k-1 by first occurrence, and the classes in that order: a plain dict."""
    seen: dict = {}
    return [seen.setdefault(v, len(seen)) for v in values], list(seen)


@settings(max_examples=300, deadline=None)
@given(data=st.data(),
       dtype=st.sampled_from(["bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                              "uint64"]),
       n=st.integers(1, 400), wide=st.booleans())
def test_integer_labels_are_coded_by_first_occurrence(data, dtype, n, wide):
    """Integer and bool labels get the codes and classes of a plain first-occurrence dict,
    both through the table over their range (a narrow range) and through the sort (a range
    wider than the table allows), at the extremes of every integer type."""
    info = np.iinfo(dtype) if dtype != "bool" else None
    if info is None:
        values = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    else:
        low = data.draw(st.integers(int(info.min), int(info.max)))
        reach = int(info.max) - low if wide else min(int(info.max) - low, 3 * n)
        offsets = st.integers(0, reach)
        values = [low + o for o in data.draw(st.lists(offsets, min_size=n, max_size=n))]
    labels = np.array(values, dtype=dtype)
    codes, classes = label_codes(labels, n)
    want_codes, want_classes = first_occurrence_codes(labels.tolist())
    assert codes.tolist() == want_codes
    assert classes == want_classes
    assert [type(c) for c in classes] == [type(c) for c in want_classes]
