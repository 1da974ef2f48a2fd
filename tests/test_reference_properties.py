"""Property tests: the library against the slow reference in ``tests/reference.py``.

The strategies *plant* bundles so that most examples are interesting: exact duplicate rows,
rows that differ by about the float resolution at ``w`` (scaled back through alpha/|B|, so some
collide after the transform and some do not), rows whose zeros change sign, rows a fraction or
a multiple of gamma apart in threshold mode (and gammas that hit a pair's distance exactly),
and NaN / Inf rows for ``nonfinite='keep'`` and ``'exclude'``.
"""

from __future__ import annotations

import math
import os
import sys
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bundlelab

sys.path.insert(0, os.path.dirname(__file__))
from reference import (  # noqa: E402
    reference_bundles,
    reference_entropy,
    round_fraction,
    transformed_rows,
)

DTYPES = ("float64", "float32", "float16", "bfloat16")
MODES = ("resolution", "threshold")
BF16 = np.dtype(ml_dtypes.bfloat16)
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def np_dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def cast(values, name):
    return np.asarray(values, dtype=np.float64).astype(np_dtype(name))


def options_of(case):
    return dict(
        mode=case["mode"],
        learning_rate=case["learning_rate"],
        batch_size=case["batch_size"],
        weight_amplitude=case["weight_amplitude"],
        gamma=case["gamma"],
    )


def spacing(values, name):
    """Distance from each value (already in format ``name``) to the next one away from zero."""
    values = np.asarray(values, dtype=np.float64)
    if name != "bfloat16":
        return np.abs(np.spacing(values.astype(name))).astype(np.float64)
    exponent = np.floor(np.log2(np.maximum(np.abs(values), 2.0**-126)))
    return 2.0 ** (exponent - 7)


UINT = {"float64": np.uint64, "float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}


def edge_values(a0, name, same):
    """(last x with same(a0, x), first x without) scanning away from zero from ``a0``.

    ``same`` must be monotone along that scan (true up to some point, false after), which holds
    for both modes: the resolution transform is monotone in a, the distance grows with |x - a0|.
    Returns None when no finite x ends the run.
    """
    dt, ut = np_dtype(name), UINT[name]
    start = np.array(a0, dtype=np.float64).astype(dt)
    b0 = int(start.view(ut))
    largest = np.array(-np.inf if np.signbit(start) else np.inf, dtype=dt)
    limit = int(largest.view(ut)) - 1  # bits of the largest finite value of a0's sign

    def value(b):
        return float(np.array(b, dtype=ut).view(dt).astype(np.float64))

    def ok(b):
        return same(value(b))

    step, lo = 1, b0
    while True:
        hi = min(b0 + step, limit)
        if hi <= lo:
            return None
        if not ok(hi):
            break
        if hi == limit:
            return None
        lo, step = hi, step * 2
    # ok(lo) (lo == b0 is a0 itself), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return value(lo), value(hi)


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
@st.composite
def planted(draw, *, modes=MODES, dtypes=DTYPES, nonfinite=False, near=True, max_n=40,
            max_d=16):
    """A dict with activations ``a`` (N, D) in some dtype, labels and the options."""
    mode = draw(st.sampled_from(modes))
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    learning_rate = draw(st.sampled_from([1e-3, 1e-2, 3e-4, 0.1, 1.0]))
    batch_size = draw(st.sampled_from([64, 1, 3, 32, 128, 7]))
    weight_amplitude = draw(st.sampled_from([1.0, 0.37, 2.5, 1e-3]))
    gamma = draw(st.sampled_from([1e-8, 1e-6, 1e-10, 0.0]))
    magnitudes = [1.0, 1e-3, 100.0, 1e4, 1e-30] + (["1e-310"] if dtype == "float64" else [])
    magnitude = float(draw(st.sampled_from(magnitudes)))
    relu = draw(st.booleans())
    n_base = draw(st.integers(1, 6))
    n_labels = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    bases = rng.normal(size=(n_base, d)) * magnitude
    if dtype == "float16":
        bases = np.clip(bases, -30000.0, 30000.0)
    if relu:
        bases[bases < 0] = 0.0
    bases = cast(bases, dtype).astype(np.float64)

    # how far apart rows must be to be told apart
    if mode == "resolution":
        unit = EPS[dtype] * weight_amplitude / (learning_rate / batch_size)
    else:
        unit = gamma / (learning_rate / batch_size) if gamma > 0 else EPS[dtype] * magnitude
    kinds = ["dup", "dup", "fresh", "zero_flip"]
    if near:
        kinds += ["near", "near", "chain", "ulps", "ulps", "edge", "edge"]

    scale = learning_rate / batch_size
    if mode == "resolution":
        def transform(x):
            return transformed_rows(cast([[x]], dtype), dtype, learning_rate, batch_size,
                                    weight_amplitude)[0][0]

        def same_as(x0):
            t0 = transform(x0)
            return lambda x: transform(x) == t0
    else:
        def same_as(x0):
            return lambda x: scale * abs(x - x0) <= gamma
    if nonfinite:
        kinds += ["nan", "inf", "nan_dup"]

    rows = np.empty((n, d))
    last_nan = None
    for i in range(n):
        kind = draw(st.sampled_from(kinds))
        base = bases[draw(st.integers(0, n_base - 1))].copy()
        if kind == "fresh":
            row = rng.normal(size=d) * magnitude
            if relu:
                row[row < 0] = 0.0
        elif kind == "zero_flip":
            row = np.where(base == 0.0, -0.0, base)
            if draw(st.booleans()):
                row = np.where(row == 0.0, -row, row)  # back and forth: mixed signs of zero
        elif kind == "near":
            factor = draw(st.sampled_from([0.01, 0.25, 0.5, 0.99, 1.0, 1.01, 2.0, 10.0]))
            mask = rng.random(d) < 0.5
            row = base + mask * rng.choice([-1.0, 1.0], size=d) * factor * unit
        elif kind == "ulps":  # a few steps of the activation's own resolution away
            steps = rng.integers(-3, 4, size=d) * (rng.random(d) < 0.5)
            row = base + steps * spacing(base, dtype)
        elif kind == "edge":  # the last value that still bundles with base, or the first not
            row = base.copy()
            for k in set(draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=3))):
                edges = edge_values(base[k], dtype, same_as(base[k]))
                if edges is not None:
                    row[k] = edges[draw(st.integers(0, 1))]
        elif kind == "chain":  # previous row plus a step just under / at the tolerance
            row = (rows[i - 1] if i else base) + draw(st.sampled_from([0.6, 1.0])) * unit
        elif kind == "nan":
            row = base.copy()
            row[draw(st.integers(0, d - 1))] = np.nan
            last_nan = row
        elif kind == "nan_dup" and last_nan is not None:
            row = last_nan.copy()
        elif kind == "inf":
            row = base.copy()
            row[draw(st.integers(0, d - 1))] = draw(st.sampled_from([np.inf, -np.inf]))
        else:
            row = base
        rows[i] = row
    with np.errstate(all="ignore"):
        a = cast(rows, dtype)
    if dtype == "float16" and not nonfinite:
        a = np.where(np.isfinite(a), a, np.float16(0.0)).astype(np.float16)

    if mode == "threshold" and draw(st.booleans()) and n >= 2:
        # make gamma hit one pair's distance exactly: ties must count as within
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        with np.errstate(all="ignore"):
            dist = np.max(np.abs(a[i].astype(np.float64) - a[j].astype(np.float64)))
            tie = (learning_rate / batch_size) * dist
        if np.isfinite(tie):
            gamma = float(tie)

    shape_extra = draw(st.sampled_from(["flat", "3d"]))
    if shape_extra == "3d" and d % 2 == 0:
        a = a.reshape(n, 2, d // 2)
    labels = [int(x) for x in rng.integers(0, n_labels, size=n)]
    return dict(a=a, labels=labels, mode=mode, dtype=dtype, learning_rate=learning_rate,
                batch_size=batch_size, weight_amplitude=weight_amplitude, gamma=gamma)


def run_library(case, **extra):
    return bundlelab.find_bundles(case["a"], case["labels"], **options_of(case), **extra)


def run_reference(case, **extra):
    return reference_bundles(case["a"], case["labels"], **options_of(case), **extra)


def describe(case):
    a = np.asarray(case["a"])
    return (f"mode={case['mode']} dtype={case['dtype']} lr={case['learning_rate']} "
            f"B={case['batch_size']} w={case['weight_amplitude']} gamma={case['gamma']!r}\n"
            f"a={a.astype(np.float64).reshape(a.shape[0], -1).tolist()!r}\n"
            f"labels={case['labels']}")


def assert_entropy_close(got, expected):
    assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=0.0), (got, expected)


def assert_matches(result, ref, case):
    where = describe(case)
    assert result.bundle_ids.tolist() == ref["bundle_ids"], where
    assert result.bundle_ids.dtype == np.int64
    for name in ("n_samples", "n_excluded", "n_bundles", "n_conflicting", "largest_bundle",
                 "fully_conflicting", "n_features", "dtype"):
        assert getattr(result, name) == ref[name], (name, getattr(result, name), ref[name], where)
    assert_entropy_close(result.entropy, ref["entropy"])


def sizes_of(ids):
    ids = np.asarray(ids)
    ids = ids[ids >= 0]
    return sorted(np.bincount(ids).tolist(), reverse=True) if ids.size else []


# ---------------------------------------------------------------------------------------------
# the reference itself (it has to be right before it can judge)
# ---------------------------------------------------------------------------------------------
@settings(max_examples=200, **SETTINGS)
@given(x=st.floats(-70000, 70000, allow_nan=False), y=st.floats(-70000, 70000, allow_nan=False),
       dtype=st.sampled_from(["float16", "float32"]))
def test_reference_rounding_agrees_with_numpy(x, y, dtype):
    dt = np.dtype(dtype)
    with np.errstate(all="ignore"):
        xs, ys = dt.type(x), dt.type(y)
        if not (np.isfinite(xs) and np.isfinite(ys)):
            return
        for exact, native in (
            (Fraction(float(xs)) * Fraction(float(ys)), xs * ys),
            (Fraction(float(xs)) - Fraction(float(ys)), xs - ys),
            (Fraction(float(xs)) * Fraction(1, 64), xs * dt.type(1 / 64)),
        ):
            assert round_fraction(exact, dtype) == float(native), (xs, ys, exact)


@settings(max_examples=200, **SETTINGS)
@given(x=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_reference_bfloat16_rounding_agrees_with_ml_dtypes_cast(x):
    # float32 -> bfloat16 casts in ml_dtypes round to nearest even: a second opinion
    expected = float(np.array(x, dtype=np.float32).astype(BF16).astype(np.float64))
    assert round_fraction(Fraction(x), "bfloat16") == expected


def test_reference_small_examples():
    a = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    ref = reference_bundles(a, ["cat", "dog", "cat"])
    assert ref["bundle_ids"] == [0, 0, 1]
    assert math.isclose(ref["entropy"], (2 / 3) * math.log(2), rel_tol=1e-15)
    # threshold mode is greedy against the opener: 0 ~ 1 and 1 ~ 2 but not 0 ~ 2
    scale = 1e-3 / 64
    step = 0.6 * 1e-8 / scale
    b = np.array([[0.0], [step], [2 * step]])
    assert reference_bundles(b, [0, 0, 0], mode="threshold")["bundle_ids"] == [0, 0, 1]


# ---------------------------------------------------------------------------------------------
# library == reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=300, **SETTINGS)
@given(case=planted(modes=("resolution",)))
def test_resolution_matches_reference(case):
    assert_matches(run_library(case), run_reference(case), case)


@pytest.mark.slow
@settings(max_examples=300, **SETTINGS)
@given(case=planted(modes=("threshold",)))
def test_threshold_matches_reference(case):
    assert_matches(run_library(case), run_reference(case), case)


@settings(max_examples=100, **SETTINGS)
@given(case=planted(nonfinite=True), policy=st.sampled_from(["keep", "exclude"]))
def test_nonfinite_policies_match_reference(case, policy):
    a = np.asarray(case["a"]).astype(np.float64).reshape(len(case["labels"]), -1)
    assume(policy == "keep" or np.isfinite(a).all(axis=1).any())
    result = run_library(case, nonfinite=policy)
    assert_matches(result, run_reference(case, nonfinite=policy), case)
    if policy == "exclude":
        bad = ~np.isfinite(a).all(axis=1)
        assert result.bundle_ids[bad].tolist() == [-1] * int(bad.sum())
        assert result.n_excluded == int(bad.sum())


@settings(max_examples=60, **SETTINGS)
@given(case=planted(), epsilon=st.sampled_from([1e-5, 1e-3, 0.1]))
def test_epsilon_entropy_matches_reference(case, epsilon):
    result = run_library(case, epsilon=epsilon)
    ref = run_reference(case, epsilon=epsilon)
    assert result.bundle_ids.tolist() == ref["bundle_ids"]
    assert_entropy_close(result.entropy, ref["entropy"])


@settings(max_examples=60, **SETTINGS)
@given(case=planted(), extra=st.integers(0, 5))
def test_n_classes_and_max_entropy(case, extra):
    present = len(set(case["labels"]))
    result = run_library(case, n_classes=present + extra)
    assert result.n_classes == present + extra
    assert result.max_entropy == pytest.approx(math.log(present + extra), rel=1e-15, abs=0)
    assert_entropy_close(result.entropy, run_reference(case)["entropy"])
    inferred = run_library(case)
    assert inferred.n_classes == present
    assert inferred.max_entropy == pytest.approx(math.log(present), rel=1e-15, abs=0)


# ---------------------------------------------------------------------------------------------
# metamorphic properties
# ---------------------------------------------------------------------------------------------
@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_permutation_invariance(data):
    # threshold mode is greedy (order-dependent) unless the planted clusters are well apart
    case = data.draw(planted(near=data.draw(st.booleans()), modes=("resolution",))
                     | planted(near=False, modes=("threshold",)))
    n = len(case["labels"])
    perm = data.draw(st.permutations(range(n)))
    permuted = dict(case, a=np.asarray(case["a"])[list(perm)],
                    labels=[case["labels"][p] for p in perm])
    if case["mode"] == "threshold":
        # well apart: every pair is either within gamma or beyond 2 gamma (no chains)
        ref = run_reference(case)
        a = np.asarray(case["a"]).astype(np.float64).reshape(n, -1)
        scale = case["learning_rate"] / case["batch_size"]
        # "within" must be transitive on this data: it then equals "same reference bundle"
        for i in range(n):
            for j in range(n):
                dist = scale * np.max(np.abs(a[i] - a[j]))
                assume((dist <= case["gamma"]) == (ref["bundle_ids"][i] == ref["bundle_ids"][j]))
    first, second = run_library(case), run_library(permuted)
    assert first.n_bundles == second.n_bundles, describe(case)
    assert first.n_conflicting == second.n_conflicting
    assert first.largest_bundle == second.largest_bundle
    assert sizes_of(first.bundle_ids) == sizes_of(second.bundle_ids)
    assert_entropy_close(second.entropy, first.entropy)
    # same partition, carried along the permutation
    pairs_first = {(i, j) for i in range(n) for j in range(n)
                   if first.bundle_ids[perm[i]] == first.bundle_ids[perm[j]]}
    pairs_second = {(i, j) for i in range(n) for j in range(n)
                    if second.bundle_ids[i] == second.bundle_ids[j]}
    assert pairs_first == pairs_second


@settings(max_examples=80, **SETTINGS)
@given(case=planted(nonfinite=True), policy=st.sampled_from(["keep", "exclude"]),
       extra=st.integers(0, 3))
def test_entropy_bounded_by_log_n_classes(case, policy, extra):
    a = np.asarray(case["a"], dtype=np.float64).reshape(len(case["labels"]), -1)
    assume(policy == "keep" or np.isfinite(a).all(axis=1).any())  # all excluded is an error
    n_classes = len(set(case["labels"])) + extra
    result = run_library(case, nonfinite=policy, n_classes=n_classes)
    assert 0.0 <= result.entropy <= math.log(n_classes) + 1e-12
    assert result.max_entropy == pytest.approx(math.log(n_classes), rel=1e-15, abs=0)


@settings(max_examples=60, **SETTINGS)
@given(mode=st.sampled_from(MODES), dtype=st.sampled_from(DTYPES), k=st.integers(1, 6),
       per_class=st.integers(1, 6), d=st.integers(1, 16), value=st.floats(-100, 100),
       label_kind=st.sampled_from(["int", "str"]), seed=st.integers(0, 1000))
def test_single_full_bundle_balanced_labels_gives_log_nc(mode, dtype, k, per_class, d, value,
                                                          label_kind, seed):
    n = k * per_class
    a = cast(np.full((n, d), value), dtype)
    labels = list(np.random.default_rng(seed).permutation([c for c in range(k)
                                                           for _ in range(per_class)]))
    labels = [f"class-{c}" if label_kind == "str" else int(c) for c in labels]
    result = bundlelab.find_bundles(a, labels, mode=mode)
    assert result.n_bundles == 1
    assert result.largest_bundle == n
    assert result.bundle_ids.tolist() == [0] * n
    assert result.fully_conflicting == (k >= 2)
    assert result.n_conflicting == (1 if k >= 2 else 0)
    assert result.max_entropy == pytest.approx(math.log(k), rel=1e-15, abs=0)
    assert math.isclose(result.entropy, math.log(k), rel_tol=1e-12, abs_tol=0.0)
    if k == 1:
        assert result.entropy == 0.0


@settings(max_examples=80, **SETTINGS)
@given(case=planted())
def test_pure_bundles_have_exactly_zero_entropy(case):
    ids = run_library(case).bundle_ids
    # bundles do not depend on labels: relabel so that each bundle is pure (several per label)
    pure = dict(case, labels=[f"c{int(i) % 3}" for i in ids])
    result = run_library(pure)
    assert result.bundle_ids.tolist() == ids.tolist()
    assert result.n_conflicting == 0
    assert result.entropy == 0.0
    assert not result.fully_conflicting


@settings(max_examples=80, **SETTINGS)
@given(mode=st.sampled_from(MODES), dtype=st.sampled_from(DTYPES), d=st.integers(1, 16),
       seed=st.integers(0, 2**32 - 1), others=st.integers(0, 5))
def test_signed_zeros_bundle(mode, dtype, d, seed, others):
    rng = np.random.default_rng(seed)
    row = rng.normal(size=d)
    row[rng.random(d) < 0.6] = 0.0
    row[rng.integers(0, d)] = 0.0
    flipped = np.where(row == 0.0, -0.0, row)
    rows = [row, flipped] + [rng.normal(size=d) + 5.0 for _ in range(others)]
    order = rng.permutation(len(rows))
    a = cast(np.array(rows)[order], dtype)
    assert np.signbit(a.astype(np.float64)).any()  # the -0.0 survived the cast
    labels = [0, 1] + [2] * others
    labels = [labels[o] for o in order]
    result = bundlelab.find_bundles(a, labels, mode=mode)
    first, second = np.flatnonzero(order == 0)[0], np.flatnonzero(order == 1)[0]
    assert result.bundle_ids[first] == result.bundle_ids[second]
    assert result.n_conflicting >= 1
    ref = reference_bundles(a, labels, mode=mode)
    assert result.bundle_ids.tolist() == ref["bundle_ids"]


@settings(max_examples=80, **SETTINGS)
@given(mode=st.sampled_from(MODES), dtype=st.sampled_from(DTYPES), d=st.integers(1, 16),
       n_nan=st.integers(1, 5), n_dup=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_nan_rows_never_bundle(mode, dtype, d, n_nan, n_dup, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d)
    rows, is_nan = [], []
    nan_row = base.copy()
    nan_row[rng.integers(0, d)] = np.nan
    for _ in range(n_nan):  # identical NaN rows (same NaN position) and a few other NaN rows
        rows.append(nan_row if rng.random() < 0.5 else np.where(rng.random(d) < 0.3, np.nan,
                                                                 nan_row))
        is_nan.append(True)
    for _ in range(n_dup):
        rows.append(base)
        is_nan.append(False)
    order = rng.permutation(len(rows))
    a = cast(np.array(rows)[order], dtype)
    is_nan = np.array(is_nan)[order]
    labels = [0] * len(rows)
    result = bundlelab.find_bundles(a, labels, mode=mode, nonfinite="keep")
    ids = result.bundle_ids
    for i in np.flatnonzero(is_nan):
        assert (ids == ids[i]).sum() == 1, (ids.tolist(), is_nan.tolist())
    assert result.n_bundles == n_nan + (1 if n_dup else 0)
    assert result.n_samples == len(rows) and result.n_excluded == 0
    assert ids.tolist() == reference_bundles(a, labels, mode=mode)["bundle_ids"]


@settings(max_examples=100, **SETTINGS)
@given(case=planted(nonfinite=True), data=st.data())
def test_streaming_equals_in_memory(case, data):
    policy = data.draw(st.sampled_from(["keep", "exclude"]))
    epsilon = data.draw(st.sampled_from([0.0, 1e-5]))
    a, labels = np.asarray(case["a"]), case["labels"]
    n = len(labels)
    # all samples excluded is an error (tests/test_errors.py), not a result
    assume(policy == "keep" or np.isfinite(a.astype(np.float64).reshape(n, -1)).all(axis=1).any())
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < n]
    bounds = [0] + cuts + [n]
    stream = bundlelab.BundleStream(**options_of(case), nonfinite=policy, epsilon=epsilon)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        label_batch = labels[lo:hi]
        if data.draw(st.booleans()):
            label_batch = np.array(label_batch)
        stream.update(a[lo:hi], label_batch)
    assert stream.n_samples == n
    streamed = stream.result()
    in_memory = run_library(case, nonfinite=policy, epsilon=epsilon)
    assert streamed.bundle_ids.tolist() == in_memory.bundle_ids.tolist(), (bounds, describe(case))
    for name in ("n_samples", "n_excluded", "n_bundles", "n_conflicting", "largest_bundle",
                 "fully_conflicting", "n_classes", "n_features", "dtype"):
        assert getattr(streamed, name) == getattr(in_memory, name), name
    assert_entropy_close(streamed.entropy, in_memory.entropy)
    assert streamed.max_entropy == in_memory.max_entropy
    ref = run_reference(case, nonfinite=policy, epsilon=epsilon)
    assert streamed.bundle_ids.tolist() == ref["bundle_ids"], (bounds, describe(case))


@settings(max_examples=80, **SETTINGS)
@given(case=planted(), data=st.data())
def test_string_labels_equal_integer_labels(case, data):
    names = data.draw(st.lists(st.text(min_size=0, max_size=5), min_size=4, max_size=4,
                               unique=True))
    as_strings = dict(case, labels=[names[c] for c in case["labels"]])
    ints, strings = run_library(case), run_library(as_strings)
    assert strings.bundle_ids.tolist() == ints.bundle_ids.tolist()
    for name in ("n_bundles", "n_conflicting", "largest_bundle", "fully_conflicting",
                 "n_classes", "max_entropy"):
        assert getattr(strings, name) == getattr(ints, name), name
    assert_entropy_close(strings.entropy, ints.entropy)


@settings(max_examples=40, **SETTINGS)
@given(dtype=st.sampled_from(DTYPES), mode=st.sampled_from(MODES), k=st.integers(2, 5),
       per_class=st.integers(4, 8), n_singletons=st.integers(0, 8), seed=st.integers(0, 1000))
def test_epsilon_entropy_slightly_below_exact_for_large_bundles(dtype, mode, k, per_class,
                                                               n_singletons, seed):
    rng = np.random.default_rng(seed)
    n_big = k * per_class
    # the singletons are far enough apart to stay apart even in bfloat16 at w = 1
    rows = [np.ones(4)] * n_big + [np.full(4, 1000.0 * (s + 1)) for s in range(n_singletons)]
    labels = [c for c in range(k) for _ in range(per_class)] + list(rng.integers(0, k,
                                                                                 n_singletons))
    a = cast(np.array(rows), dtype)
    exact = bundlelab.find_bundles(a, labels, mode=mode)
    approx = bundlelab.find_bundles(a, labels, mode=mode, epsilon=1e-5)
    assert exact.bundle_ids.tolist() == approx.bundle_ids.tolist()
    assert approx.entropy < exact.entropy
    # -sum p ln(p + eps) = -sum p ln p - sum p ln(1 + eps/p): at most k * eps lower
    gap = exact.entropy - approx.entropy
    share = n_big / len(labels)
    assert 0.0 < gap <= share * k * 1e-5 * (1 + 1e-6)
    assert gap >= share * k * 1e-5 * 0.99  # for p >> eps the gap is about k * eps
    assert math.isclose(approx.entropy, reference_entropy(approx.bundle_ids.tolist(), labels,
                                                          1e-5), rel_tol=1e-12)


def test_epsilon_entropy_of_pure_bundles_is_clamped_at_zero():
    a = np.array([[1.0], [1.0], [2.0], [2.0]], dtype=np.float32)
    assert bundlelab.find_bundles(a, [0, 0, 1, 1], epsilon=1e-5).entropy == 0.0


def test_threshold_greedy_against_the_opener():
    scale = 1e-3 / 64
    step = 0.6 * 1e-8 / scale
    a = np.array([[0.0], [step], [2 * step], [3 * step]])
    result = bundlelab.find_bundles(a, [0, 1, 0, 1], mode="threshold")
    assert result.bundle_ids.tolist() == [0, 0, 1, 1]
    assert result.bundle_ids.tolist() == reference_bundles(a, [0, 1, 0, 1],
                                                           mode="threshold")["bundle_ids"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_resolution_collapses_values_below_resolution_at_w(dtype):
    # a and a + delta collide iff delta * alpha / |B| is below the spacing of t near w
    spacing = EPS[dtype] / 2  # t lies just below w = 1, where the spacing is eps/2
    unit = spacing / (1e-3 / 64)
    a = cast(np.array([[0.0], [0.1 * unit], [8.0 * unit]]), dtype)
    # the resolution of the activations' own format (low-precision bundling)
    result = bundlelab.find_bundles(a, [0, 1, 0], update_format="activations")
    ref = reference_bundles(a, [0, 1, 0], update_format="activations")
    assert result.bundle_ids.tolist() == ref["bundle_ids"] == [0, 0, 1]


def test_epsilon_entropy_of_a_conflicting_bundle_is_clamped_at_zero():
    # -0.975 ln(1.075) - 0.025 ln(0.125) < 0: the authors' max(0, .) makes it exactly 0
    a = np.zeros((40, 3), dtype=np.float32)
    labels = [0] * 39 + [1]
    result = bundlelab.find_bundles(a, labels, epsilon=0.1)
    assert result.n_conflicting == 1 and result.fully_conflicting
    assert result.entropy == 0.0
    assert reference_bundles(a, labels, epsilon=0.1)["entropy"] == 0.0


@pytest.mark.parametrize("policy", ["raise", "exclude"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_activations_whose_transform_overflows_are_not_nonfinite(dtype, policy):
    # The activations are finite; only t = w - a*alpha/|B| overflows (alpha > 1).  The spec's
    # non-finite policy is about activations, and IEEE equality bundles -inf with -inf.
    big = {"float64": 1e308, "float32": 3e38, "float16": 60000.0, "bfloat16": 3e38}[dtype]
    a = cast([[big], [0.9 * big], [1.0]], dtype)
    labels = [0, 1, 0]
    # computed in the activations' format, where big * 100 overflows
    result = bundlelab.find_bundles(a, labels, learning_rate=100.0, batch_size=1,
                                    nonfinite=policy, update_format="activations")
    ref = reference_bundles(a, labels, learning_rate=100.0, batch_size=1,
                            update_format="activations")
    assert ref["bundle_ids"] == [0, 0, 1]
    assert result.bundle_ids.tolist() == ref["bundle_ids"]
    assert result.n_excluded == 0
