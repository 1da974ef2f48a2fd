"""Merging bundle streams: any split of the samples into consecutive shards, merged in any
grouping, gives the result of one pass in sample order (resolution mode), bit for bit.

Checked against the single stream, against :func:`bundlelab.find_bundles` (exact, confirmed
bundles) and against the plain reference of ``tests/reference.py``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bundlelab
from bundlelab import BundleLabError, BundleStream, merge_streams
from reference import reference_bundles

#: few distinct values, so rows repeat; +0/-0 (equal), NaN (equal to nothing), infinities
VALUES = [0.0, -0.0, 1.0, 1.5, 2.0**-20, 3.0, math.nan, math.inf, -math.inf]
#: labels equal as Python values are one class (1 == 1.0 == True), 1 and "1" are two
LABEL_POOLS = {
    "int": [0, 1, 2],
    "str": ["cat", "dog", "1"],
    "mixed": [1, "1", 1.0, True, "cat", 2],
    "numpy": [0, 1, 2],  # passed as a numpy array per batch
}
#: (learning_rate, batch_size, weight_amplitude, update_format): the plain case, a coarse
#: update that bundles near values, and w overflowing float16 (every row may turn NaN: the
#: NaN check then runs on every row, not only the non-finite ones)
OPTION_SETS = [
    (1e-3, 64, 1.0, "auto"),
    (0.5, 2, 4.0, "float16"),
    (1e-3, 64, 1e5, "float16"),
]


def result_fields(result) -> dict:
    """Every field of a LayerResult, arrays as lists and floats by their bits (NaN-safe)."""
    fields = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, np.ndarray):
            value = (value.dtype.str, value.tolist())
        elif isinstance(value, float):
            value = float(value).hex()
        fields[field.name] = value
    return fields


def outcome(make):
    """``result_fields`` of ``make()``, or the message of the BundleLabError it raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the w-overflow warning of one option set
        try:
            return result_fields(make())
        except BundleLabError as exc:
            return ("error", str(exc))


def batch_labels(labels: list, kind: str):
    return np.asarray(labels) if kind == "numpy" else list(labels)


def stream_of(a, labels, kind, options, batches) -> BundleStream:
    stream = BundleStream(layer="fc", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for lo, hi in zip(batches[:-1], batches[1:]):
            stream.update(a[lo:hi], batch_labels(labels[lo:hi], kind))
    return stream


def merge_tree(streams: list, draw, *, pickled: bool) -> BundleStream:
    """Merge ``streams`` (in order) along a random binary tree, pickling some nodes."""
    if len(streams) == 1:
        node = streams[0]
    else:
        cut = draw(st.integers(1, len(streams) - 1))
        node = merge_tree(streams[:cut], draw, pickled=pickled).merge(
            merge_tree(streams[cut:], draw, pickled=pickled)
        )
    if pickled and draw(st.booleans()):
        node = pickle.loads(pickle.dumps(node))
    return node


@st.composite
def sharded_problems(draw):
    n = draw(st.integers(1, 24))
    n_features = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    values = draw(st.lists(st.sampled_from(VALUES), min_size=n * n_features,
                           max_size=n * n_features))
    a = np.array(values, dtype=dtype).reshape(n, n_features)
    kind = draw(st.sampled_from(sorted(LABEL_POOLS)))
    labels = draw(st.lists(st.sampled_from(LABEL_POOLS[kind]), min_size=n, max_size=n))
    lr, batch_size, w, update_format = draw(st.sampled_from(OPTION_SETS))
    options = dict(learning_rate=lr, batch_size=batch_size, weight_amplitude=w,
                   update_format=update_format,
                   nonfinite=draw(st.sampled_from(["keep", "exclude", "raise"])))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=5))) if n > 1 else []
    bounds = [0, *cuts, n]
    return a, labels, kind, options, bounds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=sharded_problems(), data=st.data())
def test_any_split_merged_in_any_grouping_equals_one_pass(problem, data):
    a, labels, kind, options, bounds = problem
    n = a.shape[0]
    one_pass = outcome(lambda: stream_of(a, labels, kind, options, [0, n]).result())

    # shards of consecutive samples, each fed in one or two batches, merged along a random tree
    shards = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        inner = [lo, hi] if hi - lo < 2 else sorted({lo, hi, data.draw(st.integers(lo, hi))})
        shards.append(stream_of(a, labels, kind, options, inner))
    merged = outcome(lambda: merge_tree(shards, data.draw, pickled=True).result())
    assert merged == one_pass
    # left to right in one call, too
    assert outcome(lambda: merge_streams(shards).result()) == one_pass

    # the exact in-memory path (rows confirmed value by value) gives the same numbers
    everything = batch_labels(labels, kind)
    assert one_pass == outcome(lambda: bundlelab.find_bundles(a, everything, layer="fc", **options))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=sharded_problems(), data=st.data())
def test_merged_result_matches_the_plain_reference(problem, data):
    a, labels, kind, options, bounds = problem
    if options["nonfinite"] == "raise":
        options = {**options, "nonfinite": "keep"}  # the reference never raises
    shards = [stream_of(a, labels, kind, options, [lo, hi])
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    merged = outcome(lambda: merge_tree(shards, data.draw, pickled=False).result())
    if isinstance(merged, tuple):  # every sample excluded
        assert options["nonfinite"] == "exclude" and not np.isfinite(a).all(axis=1).any()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # w overflowing float16, on purpose
        expected = reference_bundles(
            a, labels, learning_rate=options["learning_rate"], batch_size=options["batch_size"],
            weight_amplitude=options["weight_amplitude"],
            update_format=options["update_format"], nonfinite=options["nonfinite"],
        )
    assert merged["bundle_ids"][1] == expected["bundle_ids"]
    for key in ("n_samples", "n_excluded", "n_bundles", "n_conflicting", "largest_bundle",
                "fully_conflicting"):
        assert merged[key] == expected[key], key
    assert float.fromhex(merged["entropy"]) == pytest.approx(expected["entropy"], abs=1e-12)


def test_nan_rows_stay_distinct_across_shards():
    # identical NaN rows in two shards at the same local position: their fingerprints are
    # made of the sample index, so the merge must shift them or they would look equal
    a = np.array([[1.0], [np.nan], [1.0], [np.nan]], np.float32)
    first, second = BundleStream(nonfinite="keep"), BundleStream(nonfinite="keep")
    first.update(a[:2], [0, 1])
    second.update(a[2:], [0, 1])
    merged = first.merge(second).result()
    assert merged.bundle_ids.tolist() == [0, 1, 0, 2]
    assert merged.n_bundles == 3


def test_label_classes_merge_as_python_values():
    a = np.zeros((4, 2), np.float32)
    first, second = BundleStream(), BundleStream()
    first.update(a[:2], np.array([1, 1]))  # numpy ints
    second.update(a[2:], [True, "1"])  # True == 1 is the same class, "1" is another
    merged = first.merge(second).result()
    assert merged.n_classes == 2
    assert merged.n_conflicting == 1
    assert result_fields(merged) == result_fields(
        bundlelab.find_bundles(a, [1, 1, True, "1"])
    )


def test_merge_changes_neither_input_and_the_merged_stream_keeps_streaming():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, size=(30, 2)).astype(np.float32)
    a[[4, 17, 25], 0] = np.nan
    labels = rng.integers(0, 3, size=30)
    options = {"nonfinite": "keep"}
    first = stream_of(a, labels.tolist(), "int", options, [0, 6, 10])
    second = stream_of(a, labels.tolist(), "int", options, [10, 20])
    before = (result_fields(first.result()), result_fields(second.result()))
    merged = first.merge(second)
    merged.update(a[20:], labels[20:])  # a batch after the merge gets the right sample indices
    assert (result_fields(first.result()), result_fields(second.result())) == before
    assert first.n_samples == 10 and second.n_samples == 10 and merged.n_samples == 30
    assert result_fields(merged.result()) == result_fields(
        stream_of(a, labels.tolist(), "int", options, [0, 30]).result()
    )


def test_an_empty_stream_is_the_identity():
    a = np.arange(6, dtype=np.float64).reshape(3, 2)
    full = BundleStream()
    full.update(a, [0, 1, 0])
    expected = result_fields(full.result())
    empty = BundleStream()
    assert result_fields(empty.merge(full).result()) == expected
    assert result_fields(full.merge(empty).result()) == expected
    assert result_fields(merge_streams([empty, full, BundleStream()]).result()) == expected
    with pytest.raises(BundleLabError, match="no batch was added"):
        merge_streams([empty, BundleStream()]).result()


def test_pickling_is_compact_and_round_trips():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 64)).astype(np.float32)
    a[7, 3] = np.nan
    labels = rng.integers(0, 10, size=2000)
    stream = BundleStream(layer="block", nonfinite="keep")
    for lo in range(0, 2000, 100):  # 20 batches: pickled as one array per field
        stream.update(a[lo:lo + 100], labels[lo:lo + 100])
    payload = pickle.dumps(stream)
    # 16 B fingerprint + 1 B label code (10 classes) + 1 B flag per sample, no activations
    assert len(payload) < 2000 * 18 + 2000
    state = stream.__getstate__()
    arrays = [value for value in state.values() if isinstance(value, np.ndarray)]
    assert {array.shape[0] for array in arrays} <= {2000, 0, 1}
    assert not any(isinstance(value, list) and value and isinstance(value[0], np.ndarray)
                   for value in state.values())
    copy = pickle.loads(payload)
    assert result_fields(copy.result()) == result_fields(stream.result())
    copy.update(a[:5], labels[:5])  # an unpickled stream keeps streaming
    assert copy.n_samples == 2005
    many = BundleStream(nonfinite="keep")  # 300 classes: codes pickled in two bytes
    many.update(a[:600], [f"class {i % 300}" for i in range(600)])
    assert result_fields(pickle.loads(pickle.dumps(many)).result()) == result_fields(
        many.result())
    empty = pickle.loads(pickle.dumps(BundleStream(layer="x")))
    assert empty.n_samples == 0 and empty.layer == "x"


def test_state_of_another_fingerprint_definition_is_refused(monkeypatch):
    """A stream pickled by a bundlelab whose fingerprints differ would split equal rows when
    merged: unpickling it says so.  A state from before the definition was recorded counts as
    definition 1 (the NH hash)."""
    from bundlelab.kernels import _hashing

    stream = BundleStream(layer="block")
    stream.update(np.ones((4, 3), np.float32), [0, 1, 0, 1])
    payload = pickle.dumps(stream)
    assert pickle.loads(payload).n_samples == 4
    monkeypatch.setattr(_hashing, "VERSION", _hashing.VERSION + 1)
    with pytest.raises(BundleLabError, match="layer 'block'.*definition 1, this bundlelab "
                       "computes definition 2"):
        pickle.loads(payload)
    # a state pickled before the definition was recorded is definition 1
    state = stream.__getstate__()
    del state["fingerprint_version"]
    old = BundleStream.__new__(BundleStream)
    monkeypatch.setattr(_hashing, "VERSION", 1)
    old.__setstate__(state)
    assert old.n_samples == 4


def test_threshold_streams_pickle_but_refuse_to_merge():
    a = np.array([[0.0], [1e-6], [1.0]], np.float64)
    stream = BundleStream(mode="threshold", gamma=1e-8)
    stream.update(a[:2], [0, 1])
    copy = pickle.loads(pickle.dumps(stream))
    copy.update(a[2:], [0])
    stream.update(a[2:], [0])
    assert result_fields(copy.result()) == result_fields(stream.result())
    with pytest.raises(BundleLabError) as exc:
        stream.merge(copy)
    message = str(exc.value)
    assert "\n" not in message
    assert "threshold mode" in message and "every row before" in message
    assert "mode='resolution'" in message and "one stream in order" in message


@pytest.mark.parametrize("other, fragment", [
    (dict(learning_rate=0.01), "learning_rate differs"),
    (dict(batch_size=32), "batch_size differs"),
    (dict(weight_amplitude=2.0), "weight_amplitude differs"),
    (dict(update_format="float64"), "update_format differs"),
    (dict(nonfinite="keep"), "nonfinite differs"),
    (dict(epsilon=1e-5), "epsilon differs"),
    (dict(layer="other"), "layer 'other'"),
])
def test_different_options_are_a_one_line_error(other, fragment):
    a = np.zeros((2, 3), np.float32)
    first = BundleStream(layer="fc")
    first.update(a, [0, 1])
    second = BundleStream(**{"layer": "fc", **other})
    second.update(a, [0, 1])
    with pytest.raises(BundleLabError, match=fragment) as exc:
        first.merge(second)
    assert "\n" not in str(exc.value)


def test_the_device_may_differ():
    a = np.zeros((2, 3), np.float32)
    first, second = BundleStream(device="cpu"), BundleStream(device="auto")
    first.update(a, [0, 1])
    second.update(a, [0, 1])
    assert first.merge(second).result().n_bundles == 1


@pytest.mark.parametrize("second_rows, fragment", [
    (np.zeros((2, 4), np.float32), "3 float32 values per sample, another 4 float32"),
    (np.zeros((2, 3), np.float64), "3 float32 values per sample, another 3 float64"),
])
def test_different_rows_are_a_one_line_error(second_rows, fragment):
    first, empty, second = BundleStream(), BundleStream(), BundleStream()
    first.update(np.zeros((2, 3), np.float32), [0, 1])
    second.update(second_rows, [0, 1])
    with pytest.raises(BundleLabError, match=fragment):
        merge_streams([empty, first, empty, second])


def test_bad_arguments_are_one_line_errors():
    stream = BundleStream()
    with pytest.raises(BundleLabError, match="stream 1 is a ndarray"):
        stream.merge(np.zeros(3))
    with pytest.raises(BundleLabError, match="got no stream"):
        merge_streams([])
    with pytest.raises(BundleLabError, match="sequence of BundleStream"):
        merge_streams(stream)
    with pytest.raises(BundleLabError, match="sequence of BundleStream"):
        merge_streams(s for s in [stream])
    with pytest.raises(BundleLabError, match="not_an_option"):
        merge_streams([stream], not_an_option=1)


@pytest.mark.cuda
def test_cuda_and_cpu_shards_merge_and_cuda_streams_pickle_to_the_host():
    pytest.importorskip("numba.cuda")
    pytest.importorskip("bundlelab.kernels.cuda")
    rng = np.random.default_rng(5)
    a = rng.integers(0, 3, size=(12, 5)).astype(np.float32)
    a[3, 1] = np.nan
    labels = rng.integers(0, 3, size=12)
    single = BundleStream(nonfinite="keep", device="cpu")
    single.update(a, labels)
    on_gpu, on_cpu = BundleStream(nonfinite="keep", device="cuda"), BundleStream(
        nonfinite="keep", device="cpu")
    on_gpu.update(a[:7], labels[:7])
    on_cpu.update(a[7:], labels[7:])
    travelled = pickle.loads(pickle.dumps(on_gpu))
    assert all(isinstance(value, np.ndarray) or not hasattr(value, "copy_to_host")
               for value in on_gpu.__getstate__().values())
    assert result_fields(travelled.merge(on_cpu).result()) == result_fields(single.result())

    threshold = BundleStream(mode="threshold", gamma=1e-7, device="cuda", nonfinite="keep")
    threshold.update(a[:6], labels[:6])
    state = threshold.__getstate__()
    assert isinstance(state["leader_rows"], np.ndarray)  # a host copy, not a device array
    copy = pickle.loads(pickle.dumps(threshold))
    copy.update(a[6:], labels[6:])
    threshold.update(a[6:], labels[6:])
    assert result_fields(copy.result()) == result_fields(threshold.result())
