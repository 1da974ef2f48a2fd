"""A third-party adapter written against the documented protocol works end to end."""

import numpy as np
import pytest

from bundlelab import BundleLabError, find_bundles
from bundlelab.adapters import (
    ActivationAdapter,
    available_adapters,
    get_adapter,
    measure_bundles,
    register_adapter,
    select_layers,
)


class NumpyMLP:
    """A ReLU MLP given by its weight matrices."""

    def __init__(self, weights):
        self.weights = weights


class NumpyMLPAdapter:
    name = "numpy-mlp"

    def layer_names(self, model, inputs=None):
        return [f"dense{i}" for i in range(len(model.weights) - 1)]  # the logits are not tapped

    def iter_layer_outputs(self, model, inputs, *, layers, batch_size):
        for start in range(0, len(inputs), batch_size):
            h = inputs[start:start + batch_size]
            outputs = {}
            for i, w in enumerate(model.weights[:-1]):
                h = np.maximum(h @ w, 0).astype(np.float32)
                outputs[f"dense{i}"] = h
            yield {name: outputs[name] for name in layers}

    def weight_amplitude(self, model):
        return float(max(np.abs(w).max() for w in model.weights))


@pytest.fixture
def model_and_data(rng):
    x = rng.normal(size=(300, 8)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int)
    weights = [rng.normal(size=(8, 16)).astype(np.float32) for _ in range(1)]
    weights.append(-np.abs(rng.normal(size=(16, 4))).astype(np.float32))  # kills every unit
    weights.append(rng.normal(size=(4, 2)).astype(np.float32))
    return NumpyMLP(weights), x, labels


def test_streamed_measurement_matches_in_memory_analysis(model_and_data):
    model, x, labels = model_and_data
    adapter = NumpyMLPAdapter()
    assert isinstance(adapter, ActivationAdapter)
    report = measure_bundles(adapter, model, x, labels, batch_size=64)
    assert report.names == ["dense0", "dense1"]
    w = adapter.weight_amplitude(model)
    full = next(adapter.iter_layer_outputs(model, x, layers=report.names, batch_size=len(x)))
    for name in report.names:
        expected = find_bundles(full[name], labels, weight_amplitude=w, layer=name)
        assert np.array_equal(report[name].bundle_ids, expected.bundle_ids)
        assert report[name].entropy == expected.entropy
    # the layer whose weights are all negative outputs zeros for every sample
    assert report.first_conflicting.layer == "dense1"
    assert report["dense1"].fully_conflicting
    assert report.params["weight_amplitude"] == w


def test_registry_builds_adapters_lazily(model_and_data):
    register_adapter("numpy-mlp-test", NumpyMLPAdapter)
    assert "numpy-mlp-test" in available_adapters()
    assert get_adapter("numpy-mlp-test").name == "numpy-mlp"
    with pytest.raises(BundleLabError, match="unknown adapter 'nope'"):
        get_adapter("nope")
    register_adapter("broken-test", lambda: object())
    with pytest.raises(BundleLabError, match="lacks layer_names"):
        get_adapter("broken-test")


def test_layer_selection_by_name_and_glob_with_close_matches():
    names = ["stem", "block1.relu", "block2.relu", "block10.relu"]
    assert select_layers(names, ["block1*.relu"]) == ["block1.relu", "block10.relu"]
    assert select_layers(names, ["block2.relu", "stem"]) == ["stem", "block2.relu"]
    with pytest.raises(BundleLabError, match=r"the model has no layer 'block3\.relu': did you mean"):
        select_layers(names, ["block3.relu"])
    with pytest.raises(BundleLabError, match="no tappable layer"):
        select_layers([], None)


def test_label_count_must_match_the_samples(model_and_data):
    model, x, labels = model_and_data
    with pytest.raises(BundleLabError, match="more samples than the 299 labels"):
        measure_bundles(NumpyMLPAdapter(), model, x, labels[:-1])
    with pytest.raises(BundleLabError, match="got 301 labels for 300 samples"):
        measure_bundles(NumpyMLPAdapter(), model, x, np.append(labels, 0))


class LabelledBatchesAdapter(NumpyMLPAdapter):
    """Yields each batch's labels with its outputs, like a data loader does."""

    def iter_layer_outputs(self, model, inputs, *, layers, batch_size):
        x, y = inputs
        outputs = super().iter_layer_outputs(model, x, layers=layers, batch_size=batch_size)
        for start, batch in zip(range(0, len(x), batch_size), outputs):
            yield batch, y[start:start + batch_size]


def test_adapters_may_yield_labels_with_each_batch(model_and_data):
    model, x, labels = model_and_data
    with_labels = measure_bundles(LabelledBatchesAdapter(), model, (x, labels), batch_size=50)
    separate = measure_bundles(NumpyMLPAdapter(), model, x, labels, batch_size=70)
    for a, b in zip(with_labels, separate):
        assert np.array_equal(a.bundle_ids, b.bundle_ids) and a.entropy == b.entropy
