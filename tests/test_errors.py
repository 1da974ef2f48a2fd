"""Bad input to the public API: a :class:`bundlelab.BundleLabError` with a one-line message
that names the problem (and, for non-finite values, the layer and how many samples)."""

from __future__ import annotations

import re
import sys

import ml_dtypes
import numpy as np
import pytest

import bundlelab
from bundlelab import BundleLabError

A = np.zeros((5, 3), dtype=np.float32)
LABELS = [0, 1, 0, 1, 0]


def error_of(call) -> str:
    with pytest.raises(BundleLabError) as info:
        call()
    assert isinstance(info.value, ValueError)  # callers may catch ValueError
    message = str(info.value)
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    assert message == message.strip()
    assert "Traceback" not in message
    return message


def assert_names(message: str, *fragments: str, any_of: tuple[str, ...] = ()) -> None:
    lower = message.lower()
    for fragment in fragments:
        assert fragment.lower() in lower, f"{fragment!r} not in {message!r}"
    if any_of:
        assert any(f.lower() in lower for f in any_of), f"none of {any_of} in {message!r}"


def has_number(message: str, number: int) -> bool:
    return re.search(rf"(?<![\d.]){number}(?![\d.])", message) is not None


def stream_of(a, labels, **options):
    def call():
        stream = bundlelab.BundleStream(**options)
        stream.update(a, labels)
        return stream.result()

    return call


# ---------------------------------------------------------------------------------------------
# mismatched number of samples
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_labels", [0, 1, 4, 6, 50])
def test_mismatched_n_between_activations_and_labels(n_labels):
    labels = list(range(n_labels))
    message = error_of(lambda: bundlelab.find_bundles(A, labels))
    assert_names(message, "label")
    assert has_number(message, 5) and has_number(message, n_labels), message


def test_mismatched_n_in_a_stream_batch():
    stream = bundlelab.BundleStream(layer="block2")
    stream.update(A, LABELS)
    message = error_of(lambda: stream.update(A, LABELS[:4]))
    assert_names(message, "label")
    assert has_number(message, 5) and has_number(message, 4), message


def test_mismatched_labels_as_array_and_2d():
    error_of(lambda: bundlelab.find_bundles(A, np.array([0, 1, 0])))
    message = error_of(lambda: bundlelab.find_bundles(A, np.zeros((5, 2))))
    assert_names(message, "label")


# ---------------------------------------------------------------------------------------------
# empty input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 3), (0,), (0, 2, 2)])
def test_empty_activations(shape):
    message = error_of(lambda: bundlelab.find_bundles(np.zeros(shape, np.float32), []))
    assert_names(message, any_of=("empty", "0 samples", "no samples"))


def test_zero_values_per_sample():
    message = error_of(lambda: bundlelab.find_bundles(np.zeros((3, 0), np.float32), [0, 1, 2]))
    assert_names(message, any_of=("0 values", "empty", "no values", "0 features"))


def test_empty_stream_result():
    message = error_of(lambda: bundlelab.BundleStream(layer="fc1").result())
    assert_names(message, "fc1")


def test_empty_stream_batch():
    stream = bundlelab.BundleStream()
    message = error_of(lambda: stream.update(np.zeros((0, 3), np.float32), []))
    assert_names(message, any_of=("empty", "0 samples", "no samples"))


# ---------------------------------------------------------------------------------------------
# NaN / Inf activations (default policy 'raise')
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "mixed"])
@pytest.mark.parametrize("mode", ["resolution", "threshold"])
def test_nonfinite_activations_name_layer_and_count(dtype, bad, mode):
    a = np.zeros((7, 4), dtype=np.float64)
    if bad == "mixed":
        a[1, 0], a[4, 3], a[5, 1] = np.nan, np.inf, -np.inf
        a[5, 2] = np.nan  # two bad values in one sample: still one sample
        n_bad = 3
    else:
        a[2, 1] = a[6, 0] = float(bad)
        n_bad = 2
    a = a.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    labels = [0, 1, 0, 1, 0, 1, 0]
    for call in (lambda: bundlelab.find_bundles(a, labels, mode=mode, layer="block7.relu"),
                 stream_of(a, labels, mode=mode, layer="block7.relu")):
        message = error_of(call)
        assert_names(message, "block7.relu", any_of=("nan", "inf", "non-finite", "nonfinite"))
        assert has_number(message, n_bad), message


def test_nonfinite_message_points_at_the_policy():
    a = A.copy()
    a[0, 0] = np.nan
    message = error_of(lambda: bundlelab.find_bundles(a, LABELS, layer="x"))
    assert_names(message, "nonfinite")


def test_every_sample_excluded():
    a = np.full((4, 2), np.nan, np.float32)
    message = error_of(lambda: bundlelab.find_bundles(a, [0, 1, 0, 1], nonfinite="exclude",
                                                      layer="deep"))
    assert_names(message, "deep")


# ---------------------------------------------------------------------------------------------
# activation dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_])
def test_integer_activations(dtype):
    a = np.zeros((5, 3), dtype=dtype)
    for call in (lambda: bundlelab.find_bundles(a, LABELS, layer="conv1"),
                 stream_of(a, LABELS, layer="conv1")):
        message = error_of(call)
        assert_names(message, "conv1", any_of=("integer", "int", "bool"))
        assert_names(message, any_of=("float",))  # says what to pass instead


def test_object_arrays():
    a = np.empty((5, 3), dtype=object)
    a[:] = 0.5
    for call in (lambda: bundlelab.find_bundles(a, LABELS), stream_of(a, LABELS)):
        assert_names(error_of(call), "object")


@pytest.mark.parametrize("values", [np.zeros((5, 3), np.complex64), np.array([["a"] * 3] * 5)])
def test_other_non_float_activations(values):
    assert_names(error_of(lambda: bundlelab.find_bundles(values, LABELS)),
                 any_of=("dtype", "complex", "<u", "str", "unsupported", "refused"))


def test_scalar_activations():
    error_of(lambda: bundlelab.find_bundles(np.float32(1.0), [0]))


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fuzzy", "Resolution", "", None, 1])
def test_unknown_mode(mode):
    for call in (lambda: bundlelab.find_bundles(A, LABELS, mode=mode),
                 lambda: bundlelab.BundleStream(mode=mode)):
        message = error_of(call)
        assert_names(message, "mode", repr(mode), "resolution", "threshold")


@pytest.mark.parametrize("learning_rate", [-1e-3, 0.0, float("nan"), float("inf"), "0.001"])
def test_bad_learning_rate(learning_rate):
    for call in (lambda: bundlelab.find_bundles(A, LABELS, learning_rate=learning_rate),
                 lambda: bundlelab.BundleStream(learning_rate=learning_rate)):
        message = error_of(call)
        assert_names(message, "learning_rate")
        if learning_rate == -1e-3:
            assert_names(message, "-0.001")


@pytest.mark.parametrize("batch_size", [0, -64, 2.5, True, "64"])
def test_bad_batch_size(batch_size):
    for call in (lambda: bundlelab.find_bundles(A, LABELS, batch_size=batch_size),
                 lambda: bundlelab.BundleStream(batch_size=batch_size)):
        message = error_of(call)
        assert_names(message, "batch_size")
        if batch_size == 0:
            assert has_number(message, 0), message


@pytest.mark.parametrize("name, value", [("gamma", -1e-8), ("epsilon", -1e-5),
                                         ("weight_amplitude", -1.0), ("nonfinite", "drop"),
                                         ("gamma", float("nan"))])
def test_other_bad_parameters(name, value):
    message = error_of(lambda: bundlelab.find_bundles(A, LABELS, **{name: value}))
    assert_names(message, name)


@pytest.mark.parametrize("n_classes, present", [(1, 2), (2, 3), (3, 5)])
def test_n_classes_smaller_than_classes_present(n_classes, present):
    labels = [i % present for i in range(5)]
    message = error_of(lambda: bundlelab.find_bundles(A, labels, n_classes=n_classes))
    assert_names(message, "n_classes")
    assert has_number(message, n_classes) and has_number(message, present), message
    stream = bundlelab.BundleStream()
    stream.update(A, labels)
    message = error_of(lambda: stream.result(n_classes=n_classes))
    assert_names(message, "n_classes")


@pytest.mark.parametrize("n_classes", [0, -3, 2.5])
def test_invalid_n_classes(n_classes):
    assert_names(error_of(lambda: bundlelab.find_bundles(A, [0] * 5, n_classes=n_classes)),
                 "n_classes")


def test_n_classes_equal_or_larger_is_fine():
    assert bundlelab.find_bundles(A, LABELS, n_classes=2).n_classes == 2
    assert bundlelab.find_bundles(A, LABELS, n_classes=10).n_classes == 10


# ---------------------------------------------------------------------------------------------
# streams that change shape or dtype mid-way
# ---------------------------------------------------------------------------------------------
def test_stream_batch_with_other_width_or_dtype():
    stream = bundlelab.BundleStream(layer="s")
    stream.update(A, LABELS)
    assert_names(error_of(lambda: stream.update(np.zeros((2, 4), np.float32), [0, 1])), "s")
    error_of(lambda: stream.update(np.zeros((2, 3), np.float64), [0, 1]))


def test_analyze_layers_errors_name_the_layer():
    a = A.copy()
    a[3, 1] = np.inf
    message = error_of(lambda: bundlelab.analyze_layers({"ok": A, "bad.layer": a}, LABELS))
    assert_names(message, "bad.layer")
    assert has_number(message, 1), message
    error_of(lambda: bundlelab.analyze_layers({}, LABELS))


# -- unknown keywords: one line at the call (issue 9) ------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: bundlelab.find_bundles(A, LABELS, lrr=1),
        lambda: bundlelab.BundleOptions(lrr=1),
        lambda: bundlelab.analyze_layers({"x": A}, LABELS, lrr=1),
        lambda: bundlelab.BundleStream(lrr=1),
        lambda: bundlelab.bundle_entropy([0, 0], [0, 1], lrr=1),
        lambda: bundlelab.BundleReport([]).to_json(lrr=1),
    ],
    ids=["find_bundles", "BundleOptions", "analyze_layers", "BundleStream", "bundle_entropy",
         "BundleReport.to_json"],
)
def test_an_unknown_keyword_is_one_line_at_the_call(call):
    message = error_of(call)  # was a raw TypeError
    assert_names(message, "unexpected keyword argument 'lrr'", "(valid: ")


def test_a_misspelt_keyword_gets_a_suggestion():
    message = error_of(lambda: bundlelab.find_bundles(A, LABELS, learning_rte=1e-3))
    assert_names(message, "find_bundles()", "did you mean 'learning_rate'?")


def test_tracker_refuses_a_bad_option_at_construction_not_at_record():
    # was accepted, then a TypeError at the first record()
    message = error_of(lambda: bundlelab.BundleTracker(lrr=1))
    assert_names(message, "BundleTracker()", "'lrr'")
    error_of(lambda: bundlelab.BundleTracker(mode="fast"))
    error_of(lambda: bundlelab.BundleTracker(n_classes=0))


def test_a_missing_argument_is_one_line():
    assert_names(error_of(lambda: bundlelab.find_bundles(A)), "find_bundles()", "labels")


def test_checked_keywords_tells_bad_arguments_from_a_type_error_of_the_body():
    """Arguments that do not fit are the one-line error and the body never runs; a TypeError
    the body raises itself reaches the caller unchanged, after the body ran."""
    from bundlelab._validation import checked_keywords

    ran = []

    @checked_keywords
    def scale(values, *, factor=2):
        ran.append(values)
        return [v * factor for v in values]  # a TypeError for values that do not multiply

    assert scale([1, 2], factor=3) == [3, 6]
    for bad in (lambda: scale([1], fctor=3), lambda: scale(), lambda: scale([1], 2)):
        ran.clear()
        with pytest.raises(BundleLabError, match=r"scale\(\)"):
            bad()
        assert ran == []
    with pytest.raises(TypeError, match="unsupported operand") as caught:
        scale([None])
    assert not isinstance(caught.value, BundleLabError) and ran == [[None]]


def test_numpy_scalars_are_converted_so_results_serialise():
    import json

    options = bundlelab.BundleOptions(batch_size=np.int64(32), learning_rate=np.float32(0.5))
    assert type(options.batch_size) is int and type(options.learning_rate) is float
    report = bundlelab.analyze_layers({"x": A}, LABELS, batch_size=np.int64(32))
    assert json.loads(report.to_json())["params"]["batch_size"] == 32
    tracker = bundlelab.BundleTracker(batch_size=np.int64(8))
    tracker.record(np.int64(1), {"x": A}, LABELS)
    assert json.loads(tracker.to_json())["steps"] == [1]


def test_a_missing_optional_dependency_is_one_missing_dependency_error(monkeypatch):
    from bundlelab._errors import MissingDependencyError

    report = bundlelab.analyze_layers({"x": A}, LABELS)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependencyError) as info:  # was a plain BundleLabError
        report.plot()
    assert isinstance(info.value, ImportError) and isinstance(info.value, BundleLabError)
    assert "`pip install 'bundlelab[plot]'`" in str(info.value)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'bundlelab\[pandas\]'"):
        report.to_dataframe()
