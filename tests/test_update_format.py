"""The update format (issue 11 §1): ``t = w - a * alpha / |B|`` computed in the format the
weights are updated in, not necessarily the activations' own.

The oracle is :func:`slow_update`: per element, with explicit conversions and exact rational
arithmetic rounded to the format after every operation (``tests/reference.py``'s
``round_fraction``), and cross-checked against numpy's own float16/float32/float64 casts and
arithmetic.  It shares nothing with the kernels.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tracemalloc
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bundlelab
from bundlelab import BundleLabError, BundleReport, BundleStream, BundleTracker
from bundlelab.adapters import measure_bundles
from bundlelab.bundles import resolve_update_format

sys.path.insert(0, os.path.dirname(__file__))
from reference import round_fraction  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")

ACTIVATION_DTYPES = ("float16", "bfloat16", "float32", "float64")
UPDATE_FORMATS = ("auto", "activations", "float16", "bfloat16", "float32", "float64")
BF16 = np.dtype(ml_dtypes.bfloat16)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def np_dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def cast(values, name):
    return np.asarray(values, dtype=np.float64).astype(np_dtype(name))


# -- the slow oracle ----------------------------------------------------------------------------


def expected_format(update_format: str, activations: str) -> str:
    """What the update format resolves to, written out from the issue's rule."""
    if update_format == "activations":
        return activations
    if update_format == "auto":
        return {"float16": "float32", "bfloat16": "float32"}.get(activations, activations)
    return update_format


def to_format(x: float, fmt: str) -> float:
    """``x`` converted to ``fmt``: one rounding to nearest, ties to even (a cast)."""
    if math.isnan(x) or math.isinf(x):
        return x
    return round_fraction(Fraction(x), fmt)


def _op(x: float, y: float, fmt: str, op) -> float:
    if any(math.isnan(v) or math.isinf(v) for v in (x, y)):
        with np.errstate(all="ignore"):
            return float(op(np.float64(x), np.float64(y)))  # IEEE specials: same in every format
    return round_fraction(op(Fraction(x), Fraction(y)), fmt)


def slow_update(a: float, fmt: str, learning_rate: float, batch_size: int, w: float) -> float:
    """``fl(fl(w) - fl(fl(fl(a) * fl(alpha)) * fl(1/|B|)))``, every fl() to ``fmt``."""
    alpha = to_format(learning_rate, fmt)
    inverse = round_fraction(Fraction(1, batch_size), fmt)
    step = _op(_op(to_format(a, fmt), alpha, fmt, lambda p, q: p * q), inverse, fmt,
               lambda p, q: p * q)
    return _op(to_format(w, fmt), step, fmt, lambda p, q: p - q)


def numpy_update(a: float, fmt: str, learning_rate: float, batch_size: int, w: float) -> float:
    """The same with numpy's casts and arithmetic in ``fmt`` (float16/32/64 only)."""
    dt = np.dtype(fmt).type
    with np.errstate(all="ignore"):
        return float(dt(w) - (dt(a) * dt(learning_rate)) * dt(1.0 / batch_size))


def slow_bundle_ids(a, fmt, learning_rate, batch_size, w) -> list[int]:
    """First-occurrence bundle ids of the rows of ``a`` under IEEE equality of their ``t``."""
    rows = np.asarray(a).reshape(len(a), -1)
    values = [[slow_update(float(v), fmt, learning_rate, batch_size, w) for v in row]
              for row in rows]
    ids = [-1] * len(values)
    next_id = 0
    for i, row in enumerate(values):
        if ids[i] >= 0:
            continue
        ids[i] = next_id
        for j in range(i + 1, len(values)):
            if ids[j] < 0 and all(x == y for x, y in zip(row, values[j])):
                ids[j] = next_id
        next_id += 1
    return ids


# -- the oracle itself --------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(
    a=st.floats(allow_nan=True, allow_infinity=True, width=64),
    fmt=st.sampled_from(["float16", "float32", "float64"]),
    learning_rate=st.sampled_from([1e-3, 0.1, 10.0, 1e-8, 3e-5]),
    batch_size=st.sampled_from([1, 3, 64, 2**20]),
    w=st.sampled_from([0.0, 1.0, 0.75, 100.0, 1e5]),
)
def test_the_oracle_agrees_with_numpy_arithmetic(a, fmt, learning_rate, batch_size, w):
    mine = slow_update(a, fmt, learning_rate, batch_size, w)
    theirs = numpy_update(a, fmt, learning_rate, batch_size, w)
    assert (mine == theirs) or (math.isnan(mine) and math.isnan(theirs)), (mine, theirs)


def test_resolution_rule():
    for activations in ACTIVATION_DTYPES:
        for update_format in UPDATE_FORMATS:
            assert resolve_update_format(update_format, activations) == expected_format(
                update_format, activations)


# -- every (activation dtype, update format) pair against the oracle ---------------------------

POOL = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 17.0, 100.0, 1e-3, 2.0**-20, 60000.0, 70000.0, 1e5,
        1e30, 3e38, 1e-40, 1e-310, math.inf, -math.inf, math.nan]


@st.composite
def planted_rows(draw):
    """Rows from special values and values a few ulps of some format apart (so that one update
    format bundles them and a finer one does not), with planted duplicates."""
    n = draw(st.integers(1, 10))
    d = draw(st.integers(1, 3))
    base = draw(st.lists(st.sampled_from(POOL), min_size=n * d, max_size=n * d))
    a = np.array(base, dtype=np.float64).reshape(n, d)
    for _ in range(draw(st.integers(0, n))):
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        bits = draw(st.sampled_from([8, 9, 11, 12, 14, 20, 24, 30, 53]))
        a[j] = a[i] * (1.0 + draw(st.integers(-2, 2)) * 2.0**-bits)
    return a


@pytest.mark.parametrize("update_format", UPDATE_FORMATS)
@pytest.mark.parametrize("dtype", ACTIVATION_DTYPES)
@settings(max_examples=40, **SETTINGS)
@given(
    values=planted_rows(),
    learning_rate=st.sampled_from([1e-3, 0.1, 3.0, 10.0, 3e-5]),
    batch_size=st.sampled_from([1, 64, 2**20]),
    w=st.sampled_from([0.0, 1.0, 0.75, 100.0, 1e5]),
    cuts=st.lists(st.integers(1, 9), max_size=3),
)
def test_every_pair_matches_the_slow_oracle(dtype, update_format, values, learning_rate,
                                            batch_size, w, cuts):
    with np.errstate(all="ignore"):
        a = cast(values, dtype)
    fmt = expected_format(update_format, dtype)
    labels = list(range(len(a)))
    options = dict(learning_rate=learning_rate, batch_size=batch_size, weight_amplitude=w,
                   nonfinite="keep", update_format=update_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constants that round to 0 in a narrow format
        result = bundlelab.find_bundles(a, labels, **options)
        stream = BundleStream(**options)
        bounds = [0] + sorted({c for c in cuts if c < len(a)}) + [len(a)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            stream.update(a[lo:hi], labels[lo:hi])
        streamed = stream.result()
    expected = slow_bundle_ids(a, fmt, learning_rate, batch_size, w)
    assert result.bundle_ids.tolist() == expected
    assert streamed.bundle_ids.tolist() == expected
    assert result.update_format == streamed.update_format == fmt
    assert result.dtype == dtype


@pytest.mark.parametrize("dtype", ACTIVATION_DTYPES)
def test_activations_is_todays_behaviour(dtype):
    """'activations' computes in the activations' own format, exactly as before the option."""
    rng = np.random.default_rng(5)
    a = cast(rng.normal(size=(40, 3)) * 30, dtype)
    a[20:] = a[:20] + cast(rng.integers(-2, 3, size=(20, 3)), dtype)  # near duplicates
    result = bundlelab.find_bundles(a, np.arange(40) % 3, update_format="activations")
    assert result.bundle_ids.tolist() == slow_bundle_ids(a, dtype, 1e-3, 64, 1.0)
    assert result.update_format == dtype


def test_a_weight_amplitude_that_overflows_the_update_format_warns():
    with pytest.warns(UserWarning, match="weight_amplitude=100000.0 overflows float16") as caught:
        result = bundlelab.find_bundles(np.eye(3, dtype=np.float32), [0, 1, 2],
                                        weight_amplitude=1e5, update_format="float16")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert result.n_bundles == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_narrowing_rounds_the_activation_before_the_first_operation(dtype):
    """a = 1 + 2**-8 - 2**-20 is 1 in bfloat16, so 3 * a is 3: bundled with a = 1.  Rounding only
    the product instead would give fl(3.0117...) = 3.015625: a different t."""
    a = np.array([[1 + 2.0**-8 - 2.0**-20], [1.0]], dtype=dtype)
    options = dict(learning_rate=3.0, batch_size=1, weight_amplitude=0.0)
    result = bundlelab.find_bundles(a, [0, 1], update_format="bfloat16", **options)
    assert result.bundle_ids.tolist() == slow_bundle_ids(a, "bfloat16", 3.0, 1, 0.0) == [0, 0]
    assert bundlelab.find_bundles(a, [0, 1], update_format="float32", **options).n_bundles == 2


def test_narrowing_rounds_like_a_cast():
    """float32 activations in a float16 update are the float16 cast of them, then updated."""
    rng = np.random.default_rng(6)
    a = (rng.normal(size=(64, 5)) * 300).astype(np.float32)
    a[::4] = 70000.0  # overflows float16: the cast gives inf, t = -inf (not a non-finite input)
    narrowed = bundlelab.find_bundles(a, np.arange(64) % 2, update_format="float16")
    with np.errstate(over="ignore"):
        cast16 = a.astype(np.float16)
    native = bundlelab.find_bundles(cast16, np.arange(64) % 2, update_format="activations",
                                    nonfinite="keep")  # here the infinities are inputs
    assert narrowed.bundle_ids.tolist() == native.bundle_ids.tolist()
    assert narrowed.n_excluded == 0 and narrowed.dtype == "float32"


def test_a_wider_update_equals_the_converted_activations():
    """float16 evaluated in float32 is the same computation as float32 activations holding the
    same values (and float32 in float64 the same as float64): ids and fingerprints."""
    from bundlelab._arrays import as_rows
    from bundlelab.bundles import resolution_transform, BundleOptions
    from bundlelab.kernels import get_kernel_backend
    from bundlelab.kernels._formats import FORMATS

    rng = np.random.default_rng(7)
    a16 = (rng.normal(size=(30, 9)) * 4).astype(np.float16)
    a16[15:] = a16[:15]
    for narrow, wide in ((a16, a16.astype(np.float32)), (a16.astype(np.float32),
                                                          a16.astype(np.float64))):
        fmt = FORMATS[wide.dtype.name]
        got = bundlelab.find_bundles(narrow, np.arange(30) % 4, update_format=fmt.name)
        expected = bundlelab.find_bundles(wide, np.arange(30) % 4)
        assert got.bundle_ids.tolist() == expected.bundle_ids.tolist()
        backend = get_kernel_backend("cpu")
        transform = resolution_transform(fmt, BundleOptions())
        rows, wide_rows = as_rows(narrow, device="cpu"), as_rows(wide, device="cpu")
        fingerprints = backend.fingerprints(rows.data, fmt, transform, rows.fmt)[0]
        np.testing.assert_array_equal(
            fingerprints, backend.fingerprints(wide_rows.data, fmt, transform)[0])


def test_widening_and_narrowing_copy_no_array():
    """The conversion happens inside the kernels: no float64 copy of float32 activations (nor
    a float32 copy of float64 ones) is made."""
    a32 = np.random.default_rng(8).random((4096, 128)).astype(np.float32)
    a64 = a32.astype(np.float64)
    labels = np.arange(4096) % 10
    for a, update_format in ((a32, "float64"), (a64, "float32"), (a64, "float16")):
        bundlelab.find_bundles(a[:8], labels[:8], update_format=update_format)  # compile first
        tracemalloc.start()
        bundlelab.find_bundles(a, labels, update_format=update_format)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < a32.nbytes / 4, (a.dtype, update_format, peak)


# -- the scenario: float16 activations of a 64-wide digits MLP --------------------------


def _digits_mlp(dtype, n_samples=512, width=64, depth=2):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    pick = np.random.default_rng(0).choice(len(x), n_samples, replace=False)
    h, y = (x[pick] / 16.0).astype(dtype), y[pick]
    weights = np.random.default_rng(1)
    outputs = {}
    for layer in range(depth):
        fan_in = h.shape[1]
        w = (weights.standard_normal((fan_in, width)) * math.sqrt(2.0 / fan_in)).astype(dtype)
        h = np.maximum(h @ w, 0).astype(dtype)  # He-initialised Dense + ReLU, in `dtype`
        outputs[f"dense{layer}"] = h
    return outputs, y


def test_half_precision_digits_mlp_is_measured_at_float32_update_resolution():
    half, labels = _digits_mlp(np.float16)
    full, _ = _digits_mlp(np.float32)
    auto = bundlelab.analyze_layers(half, labels)
    low = bundlelab.analyze_layers(half, labels, update_format="activations")
    reference = bundlelab.analyze_layers(full, labels)
    for layer in half:
        # float32 activations: every sample its own bundle; float16 with the float32 update of
        # mixed precision: the same; low-precision bundling: one fully conflicting bundle
        assert reference[layer].n_bundles == 512
        assert auto[layer].n_bundles >= 500 and auto[layer].update_format == "float32"
        assert auto[layer].bundle_ids.tolist() == bundlelab.find_bundles(
            half[layer].astype(np.float32), labels).bundle_ids.tolist()
        assert low[layer].n_bundles == 1 and low[layer].fully_conflicting
        assert low[layer].entropy > 2.2 and low[layer].update_format == "float16"
    assert auto.params["update_format"] == "auto"
    assert auto.params["sources"]["update_format"] == "assumed (float16 activations)"
    assert low.params["sources"]["update_format"] == "given"
    assert reference.params["sources"]["update_format"] == "default"


# -- reports: JSON, CSV, from_dict, older reports, the tracker ----------------------------------


def _report(**options):
    a = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]], dtype=np.float16)
    return bundlelab.analyze_layers({"fc": a, "fc2": a.astype(np.float64)}, [0, 1, 0], **options)


def test_report_round_trips_the_update_format_and_sources():
    report = _report(learning_rate=0.01, sources={"batch_size": "train loader"})
    data = json.loads(report.to_json())
    assert [layer["update_format"] for layer in data["layers"]] == ["float32", "float64"]
    assert [layer["dtype"] for layer in data["layers"]] == ["float16", "float64"]
    assert data["params"]["update_format"] == "auto"
    assert data["params"]["sources"] == {
        "learning_rate": "given", "batch_size": "train loader", "weight_amplitude": "default",
        "update_format": "assumed (float16 activations)",
    }
    back = BundleReport.from_dict(data)
    assert [r.update_format for r in back] == ["float32", "float64"]
    assert back.params == report.params
    assert back.to_json() == report.to_json()


def test_a_report_written_before_the_update_format_still_loads():
    data = json.loads(_report(update_format="activations").to_json())
    for record in data["layers"]:
        del record["update_format"]  # what bundlelab wrote before
    del data["params"]["update_format"], data["params"]["sources"]
    back = BundleReport.from_dict(data)
    assert [r.update_format for r in back] == ["float16", "float64"]  # what it computed


def test_csv_states_the_format_w_alpha_and_batch_size_with_their_sources():
    text = _report(weight_amplitude=0.5).to_csv()
    header, first, _ = text.strip().split("\n")
    row = dict(zip(header.split(","), first.split(",")))
    assert row["dtype"] == "float16" and row["update_format"] == "float32"
    assert row["update_format_source"] == "assumed (float16 activations)"
    assert (row["weight_amplitude"], row["weight_amplitude_source"]) == ("0.5", "given")
    assert (row["learning_rate"], row["learning_rate_source"]) == ("0.001", "default")
    assert (row["batch_size"], row["batch_size_source"]) == ("64", "default")


def test_tracker_takes_the_update_format_and_sources():
    a = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]], dtype=np.float16)
    tracker = BundleTracker(update_format="float16", sources={"learning_rate": "optimizer"})
    report = tracker.record(0, {"fc": a}, [0, 1, 0])
    assert report["fc"].update_format == "float16"
    assert report.params["sources"]["learning_rate"] == "optimizer"
    assert report.params["sources"]["update_format"] == "given"
    assert json.loads(tracker.to_json())["records"][0]["update_format"] == "float16"


def test_threshold_mode_records_float64_and_assumes_nothing():
    a = np.array([[0.0], [1e-9], [1.0]], dtype=np.float16)
    report = bundlelab.analyze_layers({"fc": a}, [0, 1, 0], mode="threshold")
    assert report["fc"].update_format == "float64"
    assert report.params["sources"]["update_format"] == "default"


@pytest.mark.parametrize("bad, message", [
    (dict(update_format="half"), "The 'update_format' parameter must be one of 'auto'"),
    (dict(update_format=None), "The 'update_format' parameter must be one of"),
    (dict(sources={"lr": "given"}), "sources has an unknown key 'lr'"),
    (dict(sources={"learning_rate": 3}), r"sources\['learning_rate'\] must be a non-empty text"),
    (dict(sources="given"), "sources must be a mapping"),
])
def test_bad_update_format_or_sources_is_one_line(bad, message):
    with pytest.raises(BundleLabError, match=message) as caught:
        bundlelab.analyze_layers({"fc": np.zeros((2, 2), np.float32)}, [0, 1], **bad)
    assert "\n" not in str(caught.value)


# -- measure_bundles and the adapter's optional update_format(model) ----------------------------


class StubAdapter:
    """Yields the layers of a dict "model" in batches of 2, like a framework adapter."""

    name = "stub"

    def layer_names(self, model, inputs=None):
        return list(model["layers"])

    def iter_layer_outputs(self, model, inputs, *, layers, inference_batch_size):
        n = len(inputs)
        for start in range(0, n, 2):
            yield {name: model["layers"][name][start:start + 2] for name in layers}

    def weight_amplitude(self, model):
        return 1.0


class HalfModelAdapter(StubAdapter):
    def update_format(self, model):
        return model["parameters"]


def _half_model(parameters):
    half, labels = _digits_mlp(np.float16, n_samples=64, depth=1)
    return {"layers": half, "parameters": parameters}, labels


@pytest.mark.parametrize("parameters, expected, source", [
    ("float16", "float16", "model parameters"),   # model.half(): float16 weights and updates
    ("float32", "float32", "model parameters"),   # autocast/AMP: float32 master weights
    (None, "float32", "assumed (float16 activations)"),  # the adapter cannot tell
])
def test_measure_bundles_takes_the_adapters_update_format(parameters, expected, source):
    model, labels = _half_model(parameters)
    report = measure_bundles(HalfModelAdapter(), model, np.arange(64), labels)
    assert report["dense0"].update_format == expected and report["dense0"].dtype == "float16"
    assert report.params["sources"] == {
        "learning_rate": "default", "batch_size": "default",
        "weight_amplitude": "model parameters", "update_format": source,
    }
    if expected == "float16":
        assert report["dense0"].n_bundles == 1  # w - a * 1.6e-5 == w in float16
    else:
        assert report["dense0"].n_bundles > 32


def test_measure_bundles_without_the_method_and_with_explicit_values():
    model, labels = _half_model("float16")
    report = measure_bundles(StubAdapter(), model, np.arange(64), labels)
    assert report["dense0"].update_format == "float32"  # no method: 'auto'
    given = measure_bundles(
        HalfModelAdapter(), model, np.arange(64), labels, update_format="float64",
        batch_size=32, weight_amplitude=2.0, learning_rate=0.1,
        sources={"learning_rate": "optimizer"},
    )
    assert given["dense0"].update_format == "float64"
    assert given.params["sources"] == {
        "learning_rate": "optimizer", "batch_size": "given", "weight_amplitude": "given",
        "update_format": "given",
    }
    assert given.params["batch_size"] == 32 and given.params["update_format"] == "float64"


def test_an_adapter_that_names_an_unknown_format_is_one_line():
    model, labels = _half_model("half")
    with pytest.raises(BundleLabError, match=r"HalfModelAdapter.update_format\(model\)"):
        measure_bundles(HalfModelAdapter(), model, np.arange(64), labels)


# -- the CLI's report header --------------------------------------------------------------------


def test_describe_params_states_format_w_alpha_batch_and_sources():
    from bundlelab.cli._app import describe_params

    report = _report(learning_rate=0.01)
    assert describe_params(report) == (
        "resolution mode, float32/float64 updates (assumed (float16 activations)), "
        "w=1 (default), lr=0.01 (given), |B|=64 (default)"
    )
    single = bundlelab.analyze_layers({"fc": np.zeros((2, 2), np.float32)}, [0, 1])
    assert describe_params(single).startswith("resolution mode, float32 updates (default), w=1")
    # an older report's params: no sources, the requested format
    old = {"mode": "resolution", "learning_rate": 0.001, "batch_size": 64,
           "weight_amplitude": 1.0}
    assert describe_params(old) == (
        "resolution mode, updates in the activations' format, w=1, lr=0.001, |B|=64"
    )
    threshold = bundlelab.analyze_layers({"fc": np.zeros((2, 2))}, [0, 1], mode="threshold")
    assert describe_params(threshold) == (
        "threshold mode, gamma=1e-08, lr=0.001 (default), |B|=64 (default)"
    )
