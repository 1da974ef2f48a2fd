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

    def iter_layer_outputs(self, model, inputs, *, layers, inference_batch_size):
        for start in range(0, len(inputs), inference_batch_size):
            h = inputs[start:start + inference_batch_size]
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
    report = measure_bundles(adapter, model, x, labels, inference_batch_size=64)
    assert report.names == ["dense0", "dense1"]
    w = adapter.weight_amplitude(model)
    full = next(adapter.iter_layer_outputs(model, x, layers=report.names,
                                           inference_batch_size=len(x)))
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
    with pytest.raises(BundleLabError, match="The 'name' parameter must be one of .*'torch'.*Got 'nope'"):
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

    def iter_layer_outputs(self, model, inputs, *, layers, inference_batch_size):
        x, y = inputs
        step = inference_batch_size
        outputs = super().iter_layer_outputs(model, x, layers=layers, inference_batch_size=step)
        for start, batch in zip(range(0, len(x), step), outputs):
            yield batch, y[start:start + step]


def test_adapters_may_yield_labels_with_each_batch(model_and_data):
    model, x, labels = model_and_data
    with_labels = measure_bundles(LabelledBatchesAdapter(), model, (x, labels),
                                  inference_batch_size=50)
    separate = measure_bundles(NumpyMLPAdapter(), model, x, labels, inference_batch_size=70)
    for a, b in zip(with_labels, separate):
        assert np.array_equal(a.bundle_ids, b.bundle_ids) and a.entropy == b.entropy


# -- one meaning per keyword: batch_size is |B|, inference_batch_size the forward pass -------


def test_batch_size_is_the_training_batch_and_inference_batch_size_the_forward_pass(model_and_data):
    model, x, labels = model_and_data
    calls = []
    report = measure_bundles(NumpyMLPAdapter(), model, x, labels, inference_batch_size=128,
                             batch_size=16, learning_rate=0.5,
                             progress=lambda n, shapes: calls.append((n, shapes)))
    assert report.params["batch_size"] == 16  # |B| enters the metric
    assert [n for n, _ in calls] == [128, 128, 44]
    assert calls[0][1] == {"dense0": (16,), "dense1": (4,)}
    w = NumpyMLPAdapter().weight_amplitude(model)
    full = next(NumpyMLPAdapter().iter_layer_outputs(model, x, layers=["dense0"],
                                                     inference_batch_size=len(x)))
    expected = find_bundles(full["dense0"], labels, weight_amplitude=w, learning_rate=0.5,
                            batch_size=16)
    assert np.array_equal(report["dense0"].bundle_ids, expected.bundle_ids)
    assert measure_bundles(NumpyMLPAdapter(), model, x, labels).params["batch_size"] == 64


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(train_batch_size=8), "unexpected keyword argument 'train_batch_size'"),
    (dict(inference_batch_size=0), "'inference_batch_size' parameter must be an int"),
    (dict(batch_size=np.float64(8)), "'batch_size' parameter must be an int"),
    (dict(weight_amplitude=-1.0), "'weight_amplitude' parameter"),
    (dict(progress="yes"), "'progress' parameter must be a bool"),
])
def test_measure_bundles_bad_keywords_are_one_line_errors(model_and_data, kwargs, fragment):
    model, x, labels = model_and_data
    with pytest.raises(BundleLabError) as error:
        measure_bundles(NumpyMLPAdapter(), model, x, labels, **kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_measure_bundles_converts_numpy_integers(model_and_data):
    model, x, labels = model_and_data
    report = measure_bundles(NumpyMLPAdapter(), model, x, labels, batch_size=np.int64(32),
                             inference_batch_size=np.int32(100))
    assert type(report.params["batch_size"]) is int and report.params["batch_size"] == 32


# -- training backends register where adapters do ------------------------------------------


def test_backend_registry_hard_codes_no_adapter_module():
    import inspect

    import bundlelab.training._backend as backend_module

    source = inspect.getsource(backend_module)
    assert "adapters.torch" not in source and "adapters.keras" not in source


def test_backends_are_registered_by_the_adapters_package_without_importing_a_framework():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from bundlelab.training import available_backends, get_backend\n"
        "assert 'bundlelab.adapters' not in sys.modules\n"
        "print(available_backends())\n"
        "frameworks = ('torch', 'keras', 'tensorflow', 'jax', 'onnx')\n"
        "print(sorted(m for m in frameworks if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['keras', 'torch']", "[]"]


def test_third_party_backends_and_the_super_network_protocol(monkeypatch):
    from bundlelab.training import _backend

    # the registry is process-wide: leave it as it was for the tests that follow
    registry = _backend._registered()
    monkeypatch.setattr(registry, "_factories", dict(registry._factories))
    from bundlelab.training import (
        Backend,
        SuperNetBackend,
        available_backends,
        get_backend,
        register_backend,
    )

    class PlainBackend:
        name, checkpoint_suffix = "plain-test", ".bin"

        def build(self, spec, config):
            raise NotImplementedError

    class SuperBackend(PlainBackend):
        def build_supernet(self, spec, config, **options):
            raise NotImplementedError

    register_backend("plain-test", PlainBackend)
    assert "plain-test" in available_backends() and "torch" in available_backends()
    plain = get_backend("plain-test")
    assert isinstance(plain, Backend) and not isinstance(plain, SuperNetBackend)
    assert isinstance(SuperBackend(), SuperNetBackend)
    with pytest.raises(BundleLabError, match="'backend' parameter must be one of .*'torch'"):
        get_backend("nope")
    with pytest.raises(BundleLabError, match="'factory' parameter"):
        register_backend("bad-test", "no colon")


def test_a_backend_registered_under_a_builtin_name_before_any_lookup_stays():
    """The built-in backends are registered on the first lookup: a user's own "torch",
    registered before that, is not replaced (a fresh process: the registry is global)."""
    import subprocess
    import sys

    code = (
        "import bundlelab.adapters\n"
        "from bundlelab.training import get_backend, register_backend\n"
        "class Mine:\n"
        "    name, checkpoint_suffix = 'torch', '.bin'\n"
        "    def build(self, spec, config): raise NotImplementedError\n"
        "register_backend('torch', Mine)\n"
        "print(type(get_backend('torch')).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "Mine"


@pytest.mark.parametrize("package, blocked, hint", [
    ("bundlelab.adapters.torch", "torch", "pip install 'bundlelab[torch]'"),
    ("bundlelab.adapters.onnx", "onnx", "pip install 'bundlelab[onnx]'"),
])
def test_a_missing_framework_is_one_missing_dependency_error(package, blocked, hint):
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None  # as if not installed\n"
        "from bundlelab._errors import MissingDependencyError\n"
        "try:\n"
        f"    import {package}\n"
        "except MissingDependencyError as exc:\n"
        "    print(isinstance(exc, ImportError), exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True ") and hint in done.stdout
