"""Keras builder: a spec's model has the spec's parameter count, shapes and measured layer names.

Keras runs on its torch backend here (a KERAS_BACKEND set beforehand wins).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

from bundlelab.adapters.keras import KerasAdapter, audit, build_model

from bundlelab import BundleLabError
from bundlelab.search import GatedGraph, conv_fabric, extract, resnet_fabric
from bundlelab.spec import (
    Node,
    Spec,
    conv_net,
    fully_connected,
    measured_layers,
    parameter_count,
)

SHAPES = [(3, 32, 32), (1, 8, 8)]


def _specs():
    for shape in SHAPES:
        yield fully_connected(16, 3, input_shape=shape, n_classes=7)
        for layers in (4, 10):
            for residual in (False, True):
                yield conv_net(
                    layers, residual=residual, width_multiplier=0.125, input_shape=shape
                )


SPECS = list(_specs())
IDS = [f"{spec.name}-{'x'.join(map(str, spec.input_shape))}" for spec in SPECS]


def _all_on(spec):
    return extract(spec, np.ones(GatedGraph(spec).n_gates, bool))


# extracted super-networks: conv_bn (strided, upsampled), branch, add with ReLU, classifier
FABRICS = [
    _all_on(resnet_fabric(1, k=2, filters=(4, 8), input_shape=(1, 8, 8))),
    _all_on(conv_fabric(2, channels=4, input_shape=(1, 8, 8))),
]
FABRIC_IDS = [spec.name for spec in FABRICS]


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _data(spec, n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    return x, np.arange(n) % spec.n_classes


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_model_matches_spec(spec):
    model = build_model(spec, seed=0)
    assert _trainable(model) == parameter_count(spec)
    x, y = _data(spec)
    assert tuple(model(x[:5]).shape) == (5, spec.n_classes)
    report = audit(model, x, y, layers=measured_layers(spec))
    assert report.names == measured_layers(spec)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_default_selection_is_measured_plus_stem(spec):
    """The adapter's default taps every layer ending in a non-linearity: the measured nodes,
    and for conv nets also the stem's ReLU (which the spec does not measure)."""
    names = KerasAdapter().layer_names(build_model(spec, seed=0))
    stem = ["stem_relu"] if any(node.id == "stem_relu" for node in spec.nodes) else []
    assert names == stem + measured_layers(spec)


@pytest.mark.parametrize("spec", FABRICS, ids=FABRIC_IDS)
def test_fabric_matches_spec(spec):
    model = build_model(spec, seed=0)
    assert _trainable(model) == parameter_count(spec)
    x, y = _data(spec)
    assert tuple(model(x[:5]).shape) == (5, spec.n_classes)
    for node in spec.nodes:
        layer = model.get_layer(_layer_name(node.id))
        assert tuple(layer.output.shape) == (None, *spec.shape_of(node.id))
    # The adapter lists layers in Keras' execution order (depth by depth), which for the conv
    # fabric is not the spec's node order (c1s0 runs before c0s2): compare the sets.
    report = audit(model, x, y, layers=measured_layers(spec))
    assert sorted(report.names) == sorted(measured_layers(spec))
    # default: the nodes that end in a non-linearity (the ReLU conv_bn and add nodes), never a
    # branch nor a linear conv_bn
    nonlinear = [node.id for node in spec.nodes
                 if node.params.get("activation", "linear") != "linear"]
    assert sorted(KerasAdapter().layer_names(model)) == sorted(nonlinear)


def _layer_name(node_id):
    # Keras on torch cannot name a layer with weights "g2b1.branch"
    return node_id.replace(".", "_") if keras.backend.backend() == "torch" else node_id


def _copy_torch_weights(torch_model, model, spec):
    """The torch model's weights into the Keras model, after giving every batch norm random
    statistics, scales and offsets (so that evaluation mode tests them too)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                for tensor, offset in ((module.weight, 1.0), (module.bias, 0.0),
                                       (module.running_mean, 0.0)):
                    tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator) + offset)
                module.running_var.copy_(torch.rand(module.running_var.shape,
                                                    generator=generator) + 0.5)
    state = torch_model.state_dict()
    for node in spec.nodes:
        # per node, torch's state and Keras' weights list the same tensors in the same order:
        # conv kernel; BN scale, offset, mean, variance; dense kernel, bias
        prefix = f"nodes.{torch_model.node_keys[node.id]}."
        values = [value.numpy() for key, value in state.items()
                  if key.startswith(prefix) and not key.endswith("num_batches_tracked")]
        layer = model.get_layer(_layer_name(node.id))
        assert len(layer.weights) == len(values), node.id
        for weight, value in zip(layer.weights, values):
            if value.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
                value = value.transpose(2, 3, 1, 0)
            elif value.ndim == 2:  # (out, in) -> (in, out)
                value = value.T
            assert tuple(weight.shape) == value.shape, weight.path
            weight.assign(value)


def _flat_classifier():
    nodes = (
        Node("input", "input"),
        Node("hidden", "dense", {"units": 5, "activation": "gelu"}, ("input",), measured=True),
        Node("skip", "dense", {"units": 5}, ("input",)),
        Node("sum", "add", {"activation": "tanh"}, ("hidden", "skip"), measured=True),
        Node("head", "classifier", {"units": 3}, ("sum",)),
    )
    return Spec(nodes, "head", (6,), 3, name="flat-classifier")


AGREE = FABRICS + [
    conv_net(4, residual=True, width_multiplier=0.125, input_shape=(3, 64, 64)),  # maxpool
    conv_net(10, residual=True, width_multiplier=0.125, input_shape=(1, 8, 8)),
    _flat_classifier(),
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("spec", AGREE, ids=[spec.name for spec in AGREE])
def test_same_weights_same_outputs_as_torch(spec, training):
    """On equal weights the logits and every measured node's output equal the torch
    builder's: padding (strided odd kernels, max-pooling), upsampling, taps after the final
    activation, batch norm in both modes."""
    torch = pytest.importorskip("torch")
    from bundlelab.adapters.torch import build_model as build_torch_model

    torch_model = build_torch_model(spec, seed=0)
    model = build_model(spec, seed=0)
    _copy_torch_weights(torch_model, model, spec)
    x, _ = _data(spec, n=6)
    torch_model.train(training)
    with torch.no_grad():
        expected = torch_model.node_outputs(torch.from_numpy(x))
    names = measured_layers(spec) + [spec.output]
    taps = keras.Model(model.input, [model.get_layer(_layer_name(n)).output for n in names])
    # float32 through ten layers, batch norm on six samples: the two frameworks' convolutions
    # round differently (seen: 2.6e-5 relative on one of 384 values, on one CPU and not
    # another); a wrong padding or layout is off by 1e-1 and more
    for name, got in zip(names, taps(x, training=training)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), expected[name].numpy(), rtol=1e-4, atol=1e-5,
            err_msg=name,
        )


def test_layers_are_named_by_node_id():
    spec = conv_net(10, residual=True, width_multiplier=0.125)
    model = build_model(spec)
    assert [layer.name for layer in model.layers] == [node.id for node in spec.nodes]
    assert model.name == spec.name


def test_projection_only_where_the_shape_changes():
    spec = conv_net(10, residual=True, width_multiplier=0.125)
    model = build_model(spec)
    projects = {node.id: model.get_layer(node.id).projection is not None
                for node in spec.nodes if node.op == "basic_block"}
    # stage a keeps stem width and stride 1 (8 -> 8 channels); b-d stride 2
    assert projects == {"a1": False, "b1": True, "c1": True, "d1": True}


def test_seed_fixes_weights_and_convs_differ():
    spec = conv_net(4, residual=True, width_multiplier=0.125, input_shape=(1, 8, 8))
    first, second = build_model(spec, seed=3), build_model(spec, seed=3)
    other = build_model(spec, seed=4)
    values = lambda m: [keras.ops.convert_to_numpy(w) for w in m.trainable_weights]
    for a, b in zip(values(first), values(second)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(values(first), values(other)))
    block = first.get_layer("a1")
    conv1, conv2 = (keras.ops.convert_to_numpy(c.kernel) for c in (block.conv1, block.conv2))
    assert conv1.shape == conv2.shape and not np.array_equal(conv1, conv2)


def test_numpy_seed_is_converted():
    spec = fully_connected(4, 1)
    for a, b in zip(build_model(spec, seed=np.int64(3)).get_weights(),
                    build_model(spec, seed=3).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_he_normal_kernels_and_zero_biases():
    spec = fully_connected(256, 1, input_shape=(512,))
    dense = build_model(spec, seed=0).get_layer("dense1")
    kernel = keras.ops.convert_to_numpy(dense.kernel)
    assert kernel.std() == pytest.approx(np.sqrt(2 / 512), rel=0.05)
    assert not keras.ops.convert_to_numpy(dense.bias).any()


def test_channels_first_matches_numpy():
    """A 1x1 conv with a known kernel: the model reads (N, C, H, W) as the spec describes."""
    nodes = (
        Node("input", "input"),
        Node("conv", "conv", {"filters": 2, "kernel_size": 1}, ("input",)),
        Node("flatten", "flatten", inputs=("conv",)),
        Node("head", "dense", {"units": 3}, ("flatten",)),
    )
    spec = Spec(nodes, "head", (3, 4, 5), 3)
    model = build_model(spec, seed=0)
    kernel = np.arange(6, dtype=np.float32).reshape(1, 1, 3, 2)
    model.get_layer("conv").kernel.assign(kernel)
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    tap = keras.Model(model.input, model.get_layer("flatten").output)
    expected = np.einsum("nchw,cf->nfhw", x, kernel[0, 0]).reshape(2, -1)  # torch.flatten order
    got = keras.ops.convert_to_numpy(tap(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_other_ops_build_and_count():
    nodes = (
        Node("input", "input"),
        Node("conv", "conv", {"filters": 4, "use_bias": True}, ("input",)),
        Node("bn", "batchnorm", inputs=("conv",)),
        Node("act", "activation", {"function": "gelu"}, ("bn",), measured=True),
        Node("pool", "maxpool", inputs=("act",)),
        Node("block", "basic_block", {"filters": 4, "residual": True}, ("pool",)),
        Node("sum", "add", inputs=("pool", "block"), optional=("block",), measured=True),
        Node("gap", "global_avg_pool", inputs=("sum",)),
        Node("fc", "dense", {"units": 6, "activation": "tanh", "use_bias": False}, ("gap",),
             measured=True),
        Node("fbn", "batchnorm", inputs=("fc",)),
        Node("head", "dense", {"units": 2}, ("fbn",)),
    )
    spec = Spec(nodes, "head", (2, 9, 9), 2)
    model = build_model(spec, seed=1)
    assert _trainable(model) == parameter_count(spec)
    x, y = _data(spec, n=8)
    assert tuple(model(x).shape) == (8, 2)
    assert tuple(model.get_layer("pool").output.shape) == (None, *spec.shape_of("pool"))
    assert audit(model, x, y, layers=measured_layers(spec)).names == ["act", "sum", "fc"]


def test_fit_runs():
    spec = conv_net(4, residual=True, width_multiplier=0.125, input_shape=(1, 8, 8))
    model = build_model(spec, seed=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data(spec, n=16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_bad_arguments():
    with pytest.raises(BundleLabError, match="Spec"):
        build_model("not a spec")
    with pytest.raises(BundleLabError, match="'seed' parameter"):
        build_model(fully_connected(4, 1), seed=1.5)
    with pytest.raises(BundleLabError, match="unexpected keyword argument 'sead'"):
        build_model(fully_connected(4, 1), sead=1)
    with pytest.raises(BundleLabError, match="build_model"):
        build_model(fully_connected(4, 1), 1)  # seed is keyword-only
    if keras.backend.backend() == "torch":
        nodes = (Node("input", "input"),
                 Node("hidden.fc", "dense", {"units": 4}, ("input",), measured=True),
                 Node("head", "dense", {"units": 2}, ("hidden.fc",)))
        with pytest.raises(BundleLabError, match="rename the node"):
            build_model(Spec(nodes, "head", (3,), 2))


def test_dotted_ids_of_unmeasured_layers_with_weights():
    """Named with "_" on the torch backend, avoiding the other ids."""
    nodes = (Node("input", "input"),
             Node("a_b", "dense", {"units": 4}, ("input",)),
             Node("a.b", "dense", {"units": 4}, ("a_b",)),
             Node("head.fc", "dense", {"units": 2}, ("a.b",)))
    model = build_model(Spec(nodes, "head.fc", (3,), 2))
    expected = (["input", "a_b", "a_b_2", "head_fc"] if keras.backend.backend() == "torch"
                else [node.id for node in nodes])
    assert [layer.name for layer in model.layers] == expected


def test_save_and_load(tmp_path):
    spec = conv_net(10, residual=True, width_multiplier=0.125, input_shape=(1, 8, 8))
    model = build_model(spec, seed=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x, _ = _data(spec, n=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )


@pytest.mark.parametrize("spec", FABRICS, ids=FABRIC_IDS)
def test_save_and_load_fabric(spec, tmp_path):
    model = build_model(spec, seed=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x, _ = _data(spec, n=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )
    assert KerasAdapter().layer_names(loaded) == KerasAdapter().layer_names(model)
