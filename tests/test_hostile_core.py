"""Hostile and broken input to the core (issue 10): labels, layers, options at the edge of
float64, and the two inputs that used to take quadratic time.

Every case is a one-line :class:`bundlelab.BundleLabError`, a one-line warning, or a result equal
to the slow reference of ``tests/reference.py``.
"""

from __future__ import annotations

import decimal
import os
import sys
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bundlelab
from bundlelab import BundleLabError

sys.path.insert(0, os.path.dirname(__file__))
from reference import reference_bundles  # noqa: E402

A = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0], [2.0, 3.0]], dtype=np.float32)
LABELS = [0, 1, 0, 1]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def error_of(call) -> str:
    with pytest.raises(BundleLabError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message and message == message.strip(), repr(message)
    assert len(message) < 400, message
    return message


def stream_of(a, labels, **options):
    def call():
        stream = bundlelab.BundleStream(**options)
        stream.update(a, labels)
        return stream.result()

    return call


def entry_points(a, labels, **options):
    """Every public way to hand labels to the core."""
    return {
        "find_bundles": lambda: bundlelab.find_bundles(a, labels, **options),
        "analyze_layers": lambda: bundlelab.analyze_layers({"x": a}, labels, **options),
        "BundleStream": stream_of(a, labels, **options),
        "BundleTracker": lambda: bundlelab.BundleTracker(**options).record(0, {"x": a}, labels),
    }


# -- labels: NaN, Inf, None and unhashable values are refused everywhere -----------------------


MISSING = {
    "nan in a list": [0.0, float("nan"), 1.0, 1.0],
    "two nans in a list": [float("nan"), float("nan"), 1, 1],
    "nan in an object array": np.array([np.nan, np.nan, 1, 1], dtype=object),
    "numpy nan in a list": [np.float32("nan"), 1, 1, 1],
    "inf in a list": [float("inf"), 1, 1, 1],
    "None in a list": [None, 0, 1, 1],
    "decimal nan": [decimal.Decimal("NaN"), 1, 1, 1],
    "complex nan": [complex("nan"), 1, 1, 1],
    "nan in a float array": np.array([0.0, np.nan, 1.0, 1.0]),
}


@pytest.mark.parametrize("case", list(MISSING))
@pytest.mark.parametrize(
    "entry", ["find_bundles", "analyze_layers", "BundleStream", "BundleTracker"]
)
def test_missing_labels_are_refused_everywhere(case, entry):
    message = error_of(entry_points(A, MISSING[case])[entry])
    assert "label" in message and "position" in message, message


@pytest.mark.parametrize("case", list(MISSING))
def test_missing_labels_are_refused_by_bundle_entropy(case):
    assert "position" in error_of(lambda: bundlelab.bundle_entropy([0, 0, 1, 1], MISSING[case]))


def test_nan_bundle_ids_are_refused():
    """A NaN id used to open a bundle of its own (np.unique keeps every NaN)."""
    message = error_of(lambda: bundlelab.bundle_entropy([0, np.nan, 1, 1], [0, 1, 0, 1]))
    assert "bundle_ids" in message
    assert "bundle_ids" in error_of(lambda: bundlelab.bundle_entropy([[0, 1], [1, 1]], [0, 1]))


UNHASHABLE = {
    "lists": [[1, 2], [3, 4], [1, 2], [3, 4]],
    "ragged lists": [[1], [2, 3], [1], [1]],
    "dicts": [{}, {}, {"a": 1}, {}],
    "sets in an object array": np.array([{1}, {2}, {1}, {2}], dtype=object),
    "arrays in an object array":
        np.array([np.zeros(2), np.ones(2), None, None], dtype=object)[[0, 1, 0, 1]],
}


@pytest.mark.parametrize("case", list(UNHASHABLE))
@pytest.mark.parametrize("entry", ["find_bundles", "BundleStream"])
def test_unhashable_labels_are_one_line(case, entry):
    message = error_of(entry_points(A, UNHASHABLE[case])[entry])
    assert "hashable" in message, message


def test_unhashable_labels_in_bundle_entropy_are_one_line():
    assert "hashable" in error_of(lambda: bundlelab.bundle_entropy([0, 0, 1, 1], [{}, {}, {}, {}]))


@pytest.mark.parametrize("labels", [None, "abcd", {0, 1, 2, 3}, {"a": 0}, 5])
def test_labels_that_are_not_a_sequence(labels):
    for call in entry_points(A, labels).values():
        assert "label" in error_of(call)


def test_hashable_labels_still_work():
    """Tuples, a (n, 1) column given as lists, generators, huge ints: one class per value."""
    assert bundlelab.find_bundles(A, [(1, 2), (1, 2), (3,), (1, 2)]).n_classes == 2
    assert bundlelab.find_bundles(A, [[0], [1], [0], [1]]).n_classes == 2
    assert bundlelab.find_bundles(A, (i % 3 for i in range(4))).n_classes == 3
    assert bundlelab.find_bundles(A, [2**70, 2**70 + 1, 2**70, 1.0]).n_classes == 3


# -- one label encoding, whatever the entry point and the split into batches ------------------


def python_value(value):
    return value.item() if isinstance(value, np.generic) else value


def test_int_and_str_one_are_two_classes_in_a_stream():
    """BundleStream used to merge 1 and "1" (np.asarray of the batch made both strings)."""
    labels = [1, "1", 1, "1"]
    expected = bundlelab.find_bundles(A, labels)
    assert expected.n_classes == 2 and expected.n_conflicting == 2
    stream = bundlelab.BundleStream()
    stream.update(A[:2], labels[:2])
    stream.update(A[2:], labels[2:])
    result = stream.result()
    assert result.n_classes == 2 and result.entropy == expected.entropy


def test_batches_of_other_label_types_keep_their_classes():
    """Batches [1, 2] (ints) then ["1", "2"] (strings) hold four classes, as the whole list does."""
    a = np.arange(8, dtype=np.float32).reshape(4, 2)
    expected = bundlelab.find_bundles(a, [1, 2, "1", "2"])
    stream = bundlelab.BundleStream()
    stream.update(a[:2], np.array([1, 2]))
    stream.update(a[2:], np.array(["1", "2"]))
    assert stream.result().n_classes == expected.n_classes == 4


POOL = st.one_of(
    st.integers(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.5]),
    st.booleans(),
    st.sampled_from(["0", "1", "a", "a\x00", ""]),
    st.sampled_from([b"0", b"a"]),
    st.sampled_from([np.int64(1), np.float32(1.5), np.float32(0.1), np.str_("a"), np.bool_(True)]),
    st.sampled_from([0.1, 2**64, (1, 2)]),
)


def as_container(batch, kind):
    """A batch of labels as a list, a tuple, an object array, or (when every label has one type
    numpy stores exactly) a typed numpy array."""
    if kind == "tuple":
        return tuple(batch)
    if kind == "object":
        out = np.empty(len(batch), dtype=object)
        for i, value in enumerate(batch):
            out[i] = value
        return out
    if kind == "array":
        kinds = {type(python_value(v)) for v in batch}
        plain = kinds <= {int} and all(abs(python_value(v)) < 2**62 for v in batch)
        if plain or kinds <= {float} or kinds <= {bool} or (
            kinds <= {str} and not any(v.endswith("\x00") for v in map(str, batch))
        ):
            return np.array([python_value(v) for v in batch])
    return list(batch)


@settings(max_examples=150, **SETTINGS)
@given(
    labels=st.lists(POOL, min_size=1, max_size=14),
    data=st.data(),
    mode=st.sampled_from(["resolution", "threshold"]),
)
def test_stream_and_find_bundles_encode_labels_alike_over_any_split(labels, data, mode):
    n = len(labels)
    rng = np.random.default_rng(n)
    a = rng.integers(0, 3, size=(n, 2)).astype(np.float32)  # repeated rows: conflicting bundles
    expected = bundlelab.find_bundles(a, labels, mode=mode)
    classes = {python_value(v) for v in labels}
    assert expected.n_classes == len(classes)
    ref = reference_bundles(a, [python_value(v) for v in labels], mode=mode)
    assert expected.n_conflicting == ref["n_conflicting"]
    assert expected.entropy == pytest.approx(ref["entropy"], rel=1e-12, abs=1e-15)

    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5))))
    bounds = [0] + [c for c in cuts if 0 < c < n] + [n]
    stream = bundlelab.BundleStream(mode=mode)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        kind = data.draw(st.sampled_from(["list", "tuple", "object", "array"]))
        stream.update(a[lo:hi], as_container(labels[lo:hi], kind))
    streamed = stream.result()
    assert streamed.bundle_ids.tolist() == expected.bundle_ids.tolist()
    for name in ("n_classes", "n_conflicting", "n_bundles", "largest_bundle", "fully_conflicting"):
        assert getattr(streamed, name) == getattr(expected, name), name
    # classes are numbered by first occurrence on every path: bit-identical entropies
    assert streamed.entropy == expected.entropy
    assert bundlelab.bundle_entropy(expected.bundle_ids, labels) == expected.entropy


# -- layers ------------------------------------------------------------------------------------


def test_analyze_layers_refuses_a_bare_array_in_a_list():
    """[array] used to unpack the array's rows as (name, activations): with two rows the first
    row became a layer's *name*, silently."""
    two_rows = np.zeros((2, 4, 3), dtype=np.float32)
    message = error_of(lambda: bundlelab.analyze_layers([two_rows], LABELS))
    assert "(name, activations)" in message and "(2, 4, 3)" in message


@pytest.mark.parametrize(
    "layers",
    [None, np.zeros((2, 4, 3), np.float32), "fc1", 5, [np.zeros((4, 2), np.float32)],
     [("fc1", A, "extra")], [("fc1",)], [(np.zeros(2), A)], [(None, A)]],
)
def test_analyze_layers_bad_layers_are_one_line(layers):
    message = error_of(lambda: bundlelab.analyze_layers(layers, LABELS))
    assert "layer" in message


def test_analyze_layers_accepts_mappings_and_pairs():
    by_mapping = bundlelab.analyze_layers({"a": A, "b": A}, LABELS)
    by_pairs = bundlelab.analyze_layers([("a", A), ["b", lambda: A]], LABELS)
    by_generator = bundlelab.analyze_layers(((name, A) for name in "ab"), LABELS)
    assert by_mapping.names == by_pairs.names == by_generator.names == ["a", "b"]


def test_tracker_record_of_none_is_one_line():
    tracker = bundlelab.BundleTracker()
    for call in (lambda: tracker.record(None), lambda: tracker.record(0, None),
                 lambda: tracker.record(0, None, LABELS), lambda: tracker.record(0, A, LABELS)):
        error_of(call)
    assert not tracker.steps


# -- options at the edge of float64 ------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [10**400, 2**53 + 1, 10**30])
def test_huge_batch_size_is_one_line(batch_size):
    for call in entry_points(A, LABELS, batch_size=batch_size).values():
        assert "batch_size" in error_of(call)
    assert "batch_size" in error_of(lambda: bundlelab.BundleOptions(batch_size=batch_size))


def test_largest_batch_size_is_accepted():
    result = bundlelab.find_bundles(
        A.astype(np.float64), LABELS, batch_size=2**53, weight_amplitude=0.0
    )
    assert result.n_bundles == 2


@pytest.mark.parametrize("learning_rate, batch_size", [(1e-323, 64), (5e-324, 2), (1e-310, 2**53)])
def test_threshold_scale_that_underflows_is_one_line(learning_rate, batch_size):
    """alpha / |B| == 0 in float64 used to divide by zero in the kernel."""
    for call in entry_points(A, LABELS, mode="threshold", learning_rate=learning_rate,
                             batch_size=batch_size).values():
        message = error_of(call)
        assert "learning_rate" in message and "batch_size" in message


def test_a_tiny_threshold_scale_that_does_not_underflow_is_exact():
    a = np.array([[0.0, 1.0], [0.0, 1.0], [1e300, 0.0]])
    options = dict(mode="threshold", learning_rate=1e-320, batch_size=64, gamma=1e-8)
    result = bundlelab.find_bundles(a, [0, 1, 0], **options)
    assert result.bundle_ids.tolist() == reference_bundles(a, [0, 1, 0], **options)["bundle_ids"]


@pytest.mark.parametrize(
    "dtype, options, value",
    [("float32", dict(learning_rate=1e-50), "1e-50"),
     ("float16", dict(learning_rate=1e-8), "1e-08"),
     ("bfloat16", dict(learning_rate=1e-45), "1e-45"),
     ("float16", dict(batch_size=2**26), "67108864")],
)
def test_constant_that_rounds_to_zero_in_the_format_warns(dtype, options, value):
    """With alpha (or 1/|B|) == 0 in the format every finite row maps to t = w: one bundle."""
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    options = {**options, "update_format": "activations"}  # the narrow formats' own constants
    a = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).astype(np_dtype)
    for run in (lambda: bundlelab.find_bundles(a, [0, 1, 0], **options),
                stream_of(a, [0, 1, 0], **options)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run()
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1, messages
        assert dtype in messages[0] and value in messages[0] and "\n" not in messages[0]
        assert result.n_bundles == 1


def test_no_warning_when_the_constants_are_representable():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundlelab.find_bundles(A, LABELS, learning_rate=1e-30)
        bundlelab.find_bundles(A.astype(np.float16), LABELS, learning_rate=1e-7)


# -- rows whose transform is NaN though the activation is not ---------------------------------


@pytest.mark.parametrize("policy", ["keep", "exclude"])
def test_inf_times_zero_rows_never_bundle_in_memory_or_streamed(policy):
    """alpha rounds to 0 in float32: an Inf activation gives t = w - (inf * 0) * invb = NaN, which
    equals nothing; the stream used to look for NaN in the activations only and merged them."""
    a = np.array([[np.inf, 1.0], [np.inf, 1.0], [1.0, 1.0], [2.0, 1.0]], dtype=np.float32)
    labels = [0, 1, 0, 1]
    options = dict(learning_rate=1e-50, nonfinite=policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_memory = bundlelab.find_bundles(a, labels, **options)
        stream = bundlelab.BundleStream(**options)
        stream.update(a[:1], labels[:1])
        stream.update(a[1:], labels[1:])
        streamed = stream.result()
    ref = reference_bundles(a, labels, learning_rate=1e-50, nonfinite=policy)
    assert in_memory.bundle_ids.tolist() == streamed.bundle_ids.tolist() == ref["bundle_ids"]


def test_overflow_times_zero_rows_never_bundle_in_memory_or_streamed():
    """float16 with 1/|B| == 0: a finite a whose a * alpha overflows gives inf * 0 = NaN."""
    a = np.array([[60000.0], [60000.0], [1.0], [2.0]], dtype=np.float16)
    labels = [0, 1, 0, 1]
    options = dict(learning_rate=10.0, batch_size=2**26, update_format="activations")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_memory = bundlelab.find_bundles(a, labels, **options)
        stream = bundlelab.BundleStream(**options)
        stream.update(a, labels)
        streamed = stream.result()
    ref = reference_bundles(a, labels, **options)
    assert in_memory.bundle_ids.tolist() == streamed.bundle_ids.tolist() == ref["bundle_ids"]
    assert ref["bundle_ids"][:2] == [0, 1]


# -- threshold mode: exact bounds at the edge of float64 ---------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 5e-324, 1e-320])
def test_threshold_with_subnormal_or_zero_gamma_is_exact(gamma):
    """The mean pruning used gamma / scale as the largest accepted difference; with gamma = 0 and
    a tiny scale, fl(d * scale) rounds to 0 <= gamma for d up to 2**-1075 / scale, and rows that
    close were split."""
    a = np.zeros((3, 10))
    a[1, 0] = 1e-293
    a[2, 0] = 1e-280
    options = dict(mode="threshold", learning_rate=1e-30, batch_size=64, gamma=gamma)
    result = bundlelab.find_bundles(a, [0, 1, 0], **options)
    ref = reference_bundles(a, [0, 1, 0], **options)
    assert result.bundle_ids.tolist() == ref["bundle_ids"] == [0, 0, 1]


@st.composite
def equal_mean_rows(draw):
    """Rows with equal (or nearly equal) means: permutations of a few values, centred rows,
    planted near-duplicates a fraction or a multiple of the reach apart, and NaN/Inf rows."""
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    gamma = draw(st.sampled_from([0.0, 1e-8, 1e-7, 1e-6]))
    scale = 1e-3 / 64
    reach = gamma / scale
    base = rng.integers(-3, 4, d).astype(np.float64)
    kind = draw(st.sampled_from(["permutations", "centred", "columns"]))
    if kind == "permutations":
        a = np.stack([rng.permutation(base) for _ in range(n)])
    elif kind == "centred":
        a = rng.normal(size=(n, d))
        a -= a.mean(axis=1, keepdims=True)
    else:  # equal in every column but one
        a = np.tile(base, (n, 1))
        a[np.arange(n), rng.integers(0, d, n)] += rng.integers(-3, 4, n) * max(reach, 1e-9)
    for _ in range(draw(st.integers(0, n))):  # near-duplicates across buckets
        i, j = rng.integers(0, n, 2)
        a[j] = a[i] + rng.choice([-1.0, 1.0], d) * rng.choice([0.0, 0.5, 1.0, 1.5, 2.0]) * reach
    for _ in range(draw(st.integers(0, 2))):
        a[rng.integers(0, n), rng.integers(0, d)] = rng.choice([np.nan, np.inf, -np.inf])
    dtype = draw(st.sampled_from(["float64", "float32"]))
    return a.astype(dtype), gamma, rng.integers(0, 3, n)


@settings(max_examples=150, **SETTINGS)
@given(case=equal_mean_rows(), data=st.data())
def test_threshold_on_equal_means_matches_reference(case, data):
    a, gamma, labels = case
    options = dict(mode="threshold", gamma=gamma, nonfinite="keep")
    ref = reference_bundles(a, labels, **options)["bundle_ids"]
    assert bundlelab.find_bundles(a, labels, **options).bundle_ids.tolist() == ref
    n = a.shape[0]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4))))
    bounds = [0] + [c for c in cuts if 0 < c < n] + [n]
    stream = bundlelab.BundleStream(**options)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        stream.update(a[lo:hi], labels[lo:hi])
    assert stream.result().bundle_ids.tolist() == ref


# -- the two slow paths: near-linear now ------------------------------------------------------


def test_identical_nan_rows_are_not_compared_pairwise(monkeypatch):
    """nonfinite='keep' with many identical NaN rows: they share a fingerprint, and the exact
    split of that group compared every pair (86 s at 64k rows).  Now each NaN row is its own
    group: the exact comparisons stay linear in the number of rows."""
    from bundlelab.kernels.cpu import CpuBackend

    compared = []
    original = CpuBackend.pairs_equal

    def counting(self, rows, first, second, fmt, transform, source=None):
        compared.append(len(first))
        return original(self, rows, first, second, fmt, transform, source)

    monkeypatch.setattr(CpuBackend, "pairs_equal", counting)
    n = 3000
    a = np.full((n, 4), np.nan, dtype=np.float32)
    a[::10] = np.arange(4)  # a bundle of equal finite rows among them
    for policy in ("keep", "exclude"):
        compared.clear()
        result = bundlelab.find_bundles(a, np.arange(n) % 3, nonfinite=policy)
        assert sum(compared) <= 3 * n and len(compared) <= 4, compared
        expected_bundles = (n - n // 10 + 1) if policy == "keep" else 1
        assert result.n_bundles == expected_bundles


@pytest.mark.slow
def test_identical_nan_rows_at_64k_rows_are_fast():
    a = np.full((65536, 16), np.nan, dtype=np.float32)
    a[::100] = 1.0
    labels = np.arange(65536) % 10
    bundlelab.find_bundles(a[:100], labels[:100], nonfinite="keep")  # compile outside the clock
    start = time.perf_counter()
    result = bundlelab.find_bundles(a, labels, nonfinite="keep")
    assert time.perf_counter() - start < 15.0  # 86 s before; well under a second on one core
    assert result.n_bundles == 65536 - 656 + 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["permutations", "centred"])
def test_threshold_on_40k_rows_of_equal_mean_is_fast(kind):
    rng = np.random.default_rng(0)
    if kind == "permutations":
        base = rng.integers(-1000, 1000, 32).astype(np.float64)
        a = np.stack([rng.permutation(base) for _ in range(40000)]).astype(np.float32)
    else:
        a = rng.normal(size=(40000, 32))
        a -= a.mean(axis=1, keepdims=True)
    labels = rng.integers(0, 10, 40000)
    bundlelab.find_bundles(a[:100], labels[:100], mode="threshold")  # compile outside the clock
    start = time.perf_counter()
    result = bundlelab.find_bundles(a, labels, mode="threshold")
    assert time.perf_counter() - start < 20.0  # 52 s before
    assert result.n_bundles == len({row.tobytes() for row in a})


# -- the CUDA backend (Numba's simulator unless BUNDLELAB_TEST_REAL_GPU=1) ----------------------


@pytest.mark.cuda
def test_cuda_threshold_is_exact_at_the_edges():
    pytest.importorskip("numba.cuda")
    pytest.importorskip("bundlelab.kernels.cuda")
    rng = np.random.default_rng(7)
    base = rng.integers(-3, 4, 5).astype(np.float64)
    a = np.stack([rng.permutation(base) for _ in range(12)])
    a[5] = a[2] + 1e-6
    a[8, 1] = np.nan
    tiny = np.zeros((3, 10))
    tiny[1, 0] = 1e-293
    for rows, options in ((a, dict(gamma=1e-7)),
                          (tiny, dict(gamma=0.0, learning_rate=1e-30))):
        labels = np.arange(rows.shape[0]) % 3
        options = dict(options, mode="threshold", nonfinite="keep")
        ref = reference_bundles(rows, labels, **options)["bundle_ids"]
        for device in ("cpu", "cuda"):
            got = bundlelab.find_bundles(rows, labels, device=device, **options)
            assert got.bundle_ids.tolist() == ref


@pytest.mark.cuda
def test_cuda_nan_rows_of_an_inf_times_zero_never_bundle():
    pytest.importorskip("numba.cuda")
    pytest.importorskip("bundlelab.kernels.cuda")
    a = np.array([[np.inf, 1.0], [np.inf, 1.0], [np.nan, 1.0], [np.nan, 1.0], [1.0, 1.0]],
                 dtype=np.float32)
    labels = [0, 1, 0, 1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for options in (dict(learning_rate=1e-50), dict()):
            ref = reference_bundles(a, labels, **options)["bundle_ids"]
            for device in ("cpu", "cuda"):
                got = bundlelab.find_bundles(a, labels, device=device, nonfinite="keep", **options)
                assert got.bundle_ids.tolist() == ref
                stream = bundlelab.BundleStream(device=device, nonfinite="keep", **options)
                stream.update(a[:3], labels[:3])
                stream.update(a[3:], labels[3:])
                assert stream.result().bundle_ids.tolist() == ref


def test_a_refused_batch_leaves_the_stream_as_it_was():
    """A first batch with bad labels used to fix the stream's width and format all the same."""
    stream = bundlelab.BundleStream()
    error_of(lambda: stream.update(A, [0, float("nan"), 1, 1]))
    stream.update(np.zeros((2, 5), np.float64), ["a", "b"])  # another width: the first batch now
    error_of(lambda: stream.update(np.zeros((2, 5), np.float64), [{}, {}]))
    result = stream.result()
    assert stream.n_samples == 2 and result.n_classes == 2 and result.n_features == 5


def test_bundle_entropy_refuses_a_negative_epsilon():
    for epsilon in (-1e-5, -1, float("nan")):
        message = error_of(
            lambda: bundlelab.bundle_entropy([0, 0, 1, 1], [0, 1, 0, 0], epsilon=epsilon)
        )
        assert "epsilon" in message


@pytest.mark.parametrize(
    "damage",
    [lambda d: [], lambda d: {**d, "layers": None}, lambda d: {**d, "params": []},
     lambda d: {**d, "layers": [5]}, lambda d: {**d, "layers": [{}]},
     lambda d: {**d, "layers": [{**d["layers"][0], "n_bundles": "2"}]},
     lambda d: {**d, "layers": [{**d["layers"][0], "fully_conflicting": 1}]},
     lambda d: {**d, "layers": [{**d["layers"][0], "entropy": None}]},
     lambda d: {**d, "layers": [{**d["layers"][0], "bundle_ids": [0, "x"]}]},
     lambda d: {**d, "layers": [{**d["layers"][0], "bundle_ids": 7}]}],
)
def test_a_malformed_report_is_one_line(damage):
    """A report read back (e.g. from a run folder) used to fail with KeyError/TypeError."""
    data = bundlelab.analyze_layers({"x": A}, LABELS).to_dict(include_ids=True)
    assert bundlelab.BundleReport.from_dict(data)["x"].bundle_ids.tolist() == [0, 0, 1, 1]
    assert "report" in error_of(lambda: bundlelab.BundleReport.from_dict(damage(data)))


def test_threshold_rows_whose_sums_overflow_are_exact():
    """Finite rows whose float64 sum overflows have a non-finite mean: they are still indexed
    (on the columns) and compared exactly."""
    big = 1.7e308
    a = np.array([[big, big, 0.0], [big, big, 0.0], [big, big, 1.0], [-big, -big, 0.0],
                  [-big, -big, 1e-9], [1.0, 2.0, 3.0]])
    labels = [0, 1, 0, 1, 0, 1]
    options = dict(mode="threshold", gamma=1e-8)
    ref = reference_bundles(a, labels, **options)["bundle_ids"]
    assert bundlelab.find_bundles(a, labels, **options).bundle_ids.tolist() == ref
    assert ref == [0, 0, 1, 2, 2, 3]
