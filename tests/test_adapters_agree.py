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


# -- a small ResNet exported to ONNX: the torch audit and the ONNX audit line up by name -----------


class BasicBlock(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))  # torchvision calls one ReLU module twice
        return self.relu(self.bn2(self.conv2(out)) + x)


class SmallResNet(torch.nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.relu = torch.nn.ReLU()
        self.layer1 = torch.nn.Sequential(BasicBlock(channels), BasicBlock(channels))
        self.layer2 = torch.nn.Sequential(BasicBlock(channels), BasicBlock(channels))
        self.fc = torch.nn.Linear(channels, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.nn.functional.silu(x).mean((2, 3)))  # a functional call too


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = SmallResNet().eval()
    with torch.no_grad():  # trained-looking batch norms, so folding them changes the weights
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.01, 0.05)
    # Every sample twice, the copy labelled differently one time in three: copies give equal
    # activations in either framework (bundles of two, some conflicting), while distinct samples
    # differ far above float32's spacing near w = 1, so the last-bit differences between torch's
    # convolutions and onnxruntime's on the folded weights cannot change a count.
    rng = np.random.default_rng(3)
    unique = rng.normal(size=(80, 3, 8, 8)).astype(np.float32)
    x = np.concatenate([unique, unique])
    labels = np.concatenate([np.arange(80) % 3, (np.arange(80) + (np.arange(80) % 3 == 0)) % 3])
    return model, x, labels


def _export(model, x, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(path), dynamo=True,
                              input_names=["x"], verbose=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        else:
            torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(path), dynamo=False,
                              opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy-exporter", "dynamo-exporter"])
def test_torch_and_onnx_audits_of_one_model_agree_layer_by_layer(resnet, tmp_path, dynamo):
    """With the same w, the torch audit of the module and the ONNX audit of its export name the
    same layers (the module names, 'layer1.0.relu:2' for the second call, 'forward:silu' for a
    functional call) and count the same bundles, although the export folded batch norm into
    the convolutions (the activations differ in the last bits only)."""
    if dynamo:
        pytest.importorskip("onnxscript")
    from bundlelab.adapters.onnx import audit as onnx_audit
    from bundlelab.adapters.torch import audit as torch_audit

    model, x, labels = resnet
    path = _export(model, x, tmp_path / "resnet.onnx", dynamo)
    options = dict(n_samples=None, weight_amplitude=1.0, learning_rate=0.05, batch_size=8)
    onnx_report = onnx_audit(path, x, labels, **options)
    torch_report = torch_audit(model, torch.from_numpy(x), labels, **options)
    names = ["relu", "layer1.0.relu", "layer1.0.relu:2", "layer1.1.relu", "layer1.1.relu:2",
             "layer2.0.relu", "layer2.0.relu:2", "layer2.1.relu", "layer2.1.relu:2",
             "forward:silu"]
    assert onnx_report.names == torch_report.names == names
    for ours, theirs in zip(onnx_report, torch_report):
        assert (ours.n_bundles, ours.n_conflicting) == (theirs.n_bundles, theirs.n_conflicting)
        assert ours.entropy == pytest.approx(theirs.entropy, abs=1e-12)
    assert [layer.n_bundles for layer in onnx_report] == [80] * len(names)  # pairs of copies
    assert all(layer.n_conflicting == 27 for layer in onnx_report)  # 27 copies relabelled
    # blocks and globs line up too
    blocks = dict(n_samples=None, weight_amplitude=1.0, layers="blocks")
    assert onnx_audit(path, x, labels, **blocks).names == ["layer1.0", "layer1.1", "layer2.0",
                                                           "layer2.1"]
    assert torch_audit(model, torch.from_numpy(x), labels, **blocks).names == [
        "layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert onnx_audit(path, x, labels, n_samples=None, layers="layer2*").names == names[5:9]


def test_onnx_audit_says_its_w_comes_from_folded_batch_norm(resnet, tmp_path):
    from bundlelab.adapters.onnx import audit as onnx_audit
    from bundlelab.adapters.torch import audit as torch_audit

    model, x, labels = resnet
    path = _export(model, x, tmp_path / "resnet.onnx", dynamo=False)
    onnx_report = onnx_audit(path, x[:40], labels[:40])
    torch_report = torch_audit(model, torch.from_numpy(x[:40]), labels[:40])
    assert onnx_report.params["sources"]["weight_amplitude"] == (
        "ONNX weights, batch norm folded into 9 conv")
    assert torch_report.params["sources"]["weight_amplitude"] == "model parameters"
    # the folded weights are larger than any trained one: the two w differ
    assert onnx_report.params["weight_amplitude"] > torch_report.params["weight_amplitude"]
    given = onnx_audit(path, x[:40], labels[:40], weight_amplitude=2.0)
    assert given.params["sources"]["weight_amplitude"] == "given"
