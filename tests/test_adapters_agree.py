"""One network, three frameworks: PyTorch, its ONNX export and Keras report the same bundles.

The network is built so that float32 arithmetic is exact in every framework: inputs are small
integers and weights are multiples of 1/4, so every product and partial sum is a multiple of
1/16 far below 2**24 and no summation order, blocking or fused multiply-add can change a bit.
With such weights each adapter must give identical bundle ids, counts and entropies; with
arbitrary float weights the frameworks' matmuls may differ in the last bit, which moves
``t = w - a * lr / |B|`` by ~1e-12 * |a| — far below float32's spacing near ``w`` — so the
numbers still agree in practice, but exactness would no longer be guaranteed by construction.
"""

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from bundlelab import find_bundles  # noqa: E402
from bundlelab.adapters import measure_bundles  # noqa: E402
from bundlelab.adapters.keras import KerasAdapter  # noqa: E402
from bundlelab.adapters.onnx import OnnxAdapter  # noqa: E402
from bundlelab.adapters.torch import TorchAdapter  # noqa: E402

WIDTHS = [6, 8, 4, 2, 3]  # input, three hidden layers, output


def _quarter_grid(rng, shape):
    return (rng.integers(-4, 5, size=shape) / 4).astype(np.float32)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    rng = np.random.default_rng(7)
    weights = [_quarter_grid(rng, (n_in, n_out)) for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:])]
    biases = [_quarter_grid(rng, (n_out,)) for n_out in WIDTHS[1:]]
    x = rng.integers(0, 4, size=(300, WIDTHS[0])).astype(np.float32)
    labels = rng.integers(0, 3, size=300)

    layers = []
    for i, (w, b) in enumerate(zip(weights, biases)):
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    torch_model = torch.nn.Sequential(*layers).eval()

    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    with warnings.catch_warnings():  # the legacy exporter needs only onnx; it warns it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
                torch_model, (torch.from_numpy(x[:2]),), str(path), input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))

    inputs = keras.Input((WIDTHS[0],))
    h = inputs
    for i, (w, b) in enumerate(zip(weights, biases)):
        last = i == len(weights) - 1
        dense = keras.layers.Dense(w.shape[1], activation=None if last else "relu", name=f"dense{i}")
        h = dense(h)
        dense.set_weights([w, b])
    keras_model = keras.Model(inputs, h)
    return torch_model, path, keras_model, x, labels, weights, biases


def test_torch_onnx_and_keras_report_identical_bundles(network):
    torch_model, onnx_path, keras_model, x, labels, weights, biases = network
    w = float(max(np.abs(m).max() for m in weights))
    options = dict(weight_amplitude=w, learning_rate=0.25, batch_size=1, inference_batch_size=64)
    reports = {
        "torch": measure_bundles(TorchAdapter(), torch_model, x, labels, **options),
        "onnx": measure_bundles(OnnxAdapter(), onnx_path, x, labels, **options),
        "keras": measure_bundles(KerasAdapter(), keras_model, x, labels, **options),
    }
    for name, report in reports.items():
        assert len(report) == 3, f"{name} tapped {report.names}"

    # The layers' outputs by hand (exact in float32, see above): every adapter must match them.
    h = x
    for weight, bias, result in zip(weights, biases, reports["torch"]):
        h = np.maximum(h @ weight + bias, 0)
        expected = find_bundles(h, labels, weight_amplitude=w, learning_rate=0.25, batch_size=1)
        assert np.array_equal(result.bundle_ids, expected.bundle_ids)
    for torch_layer, onnx_layer, keras_layer in zip(*reports.values()):
        for other in (onnx_layer, keras_layer):
            assert np.array_equal(other.bundle_ids, torch_layer.bundle_ids)
            assert other.n_bundles == torch_layer.n_bundles
            assert other.n_conflicting == torch_layer.n_conflicting
            assert other.entropy == torch_layer.entropy
    # the narrowing network really has conflicting layers, so the agreement is not trivial
    assert any(layer.n_conflicting for layer in reports["torch"])
    assert reports["torch"].first_conflicting.layer  # named in each framework's own way



def test_every_framework_audit_has_the_same_names_and_defaults(network):
    """One meaning per keyword: |B| is batch_size (default 64) and the forward pass is
    inference_batch_size in every framework's audit; n_samples defaults to 2048."""
    import inspect

    from bundlelab.adapters.keras import audit as keras_audit
    from bundlelab.adapters.onnx import audit as onnx_audit
    from bundlelab.adapters.torch import audit as torch_audit

    torch_model, onnx_path, keras_model, x, labels, _, _ = network
    for audit in (torch_audit, onnx_audit, keras_audit):
        parameters = inspect.signature(audit).parameters
        assert parameters["n_samples"].default == 2048
        assert {"batch_size", "inference_batch_size", "learning_rate"} <= set(parameters)
        assert "train_batch_size" not in parameters
    reports = [torch_audit(torch_model, x, labels), onnx_audit(onnx_path, x, labels),
               keras_audit(keras_model, x, labels)]
    for report in reports:
        assert report.params["batch_size"] == 64 and report.params["learning_rate"] == 1e-3
        assert report[0].n_samples == len(labels)


def test_a_layer_called_twice_gives_name_and_name_2_in_torch_and_keras():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.shared = torch.nn.ReLU()
            self.out = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.shared(self.fc(self.shared(x))))

    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert TorchAdapter().layer_names(Twice(), torch.from_numpy(x)) == ["shared", "shared:2"]

    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, activation="relu", name="shared")
    outputs = keras.layers.Dense(2, name="logits")(shared(shared(inputs)))
    names = KerasAdapter().layer_names(keras.Model(inputs, outputs), x)
    assert names == ["shared", "shared:2"]
