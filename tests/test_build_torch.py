"""build_model: a spec becomes a PyTorch module with its parameters, shapes and layer names."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from bundlelab.adapters.torch import audit, build_model

from bundlelab import BundleLabError
from bundlelab.spec import (
    Node,
    Spec,
    conv_net,
    fully_connected,
    measured_layers,
    parameter_count,
    truncate_stage_from,
)

SPECS = {
    "fc-digits": fully_connected(16, 3, input_shape=(1, 8, 8)),
    "fc-flat-tanh": fully_connected(8, 2, activation="tanh", input_shape=(20,), n_classes=3),
    "plain-4": conv_net(4, width_multiplier=0.125),
    "resnet-10": conv_net(10, residual=True, width_multiplier=0.125),
    "plain-20": conv_net(20, width_multiplier=0.125),
    "resnet-20": conv_net(20, residual=True, width_multiplier=0.125),
    "resnet-10-64px": conv_net(10, residual=True, width_multiplier=0.125, input_shape=(3, 64, 64)),
    "plain-10-digits": conv_net(10, width_multiplier=0.125, input_shape=(1, 8, 8)),
}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def inputs(spec, n=4):
    return torch.randn(n, *spec.input_shape)


@pytest.mark.parametrize("key", SPECS)
def test_parameters_shapes_and_layers_match_the_spec(key, rng):
    spec = SPECS[key]
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == parameter_count(spec)
    x = inputs(spec)
    assert model(x).shape == (4, spec.n_classes)
    for node_id, out in model.node_outputs(x).items():
        assert tuple(out.shape) == (4, *spec.shape_of(node_id)), node_id
    data = inputs(spec, 40)
    labels = rng.integers(0, spec.n_classes, size=40)
    assert audit(model, data, labels).names == measured_layers(spec)
    chosen = audit(model, data, labels, layers=measured_layers(spec))
    assert chosen.names == measured_layers(spec)


def test_the_stem_max_pools_only_wide_inputs():
    wide = build_model(SPECS["resnet-10-64px"])
    narrow = build_model(SPECS["resnet-10"])
    assert isinstance(wide.nodes["stem_pool"].pool, nn.MaxPool2d)
    assert "stem_pool" not in narrow.node_keys


def test_the_model_is_built_as_the_spec_says():
    spec = conv_net(10, residual=True, width_multiplier=0.125)
    model = build_model(spec)
    first, stride2 = model.nodes["a1"], model.nodes["b1"]
    assert first.shortcut is None and stride2.shortcut is not None  # a1: 8 -> 8 channels
    assert stride2.conv1.conv.stride == (2, 2) and stride2.conv1.conv.bias is None
    assert isinstance(model.b1, nn.ReLU) and not isinstance(model.nodes["stem_relu"], nn.ReLU)
    plain = build_model(conv_net(10, width_multiplier=0.125))
    assert plain.nodes["b1"].shortcut is None


def test_he_normal_initialisation_zero_biases_and_unit_batch_norm():
    spec = fully_connected(256, 2, input_shape=(512,))
    model = build_model(spec, seed=1)
    weight = model.nodes["dense1"].linear.weight.detach()
    assert float(weight.std()) == pytest.approx((2 / 512) ** 0.5, rel=0.02)
    assert float(weight.abs().max()) <= 2 * (2 / 512) ** 0.5 / 0.8796 + 1e-6  # truncated
    for node_id in ("dense1", "dense2", "head"):
        assert not model.nodes[node_id].linear.bias.any()
    conv = build_model(conv_net(4, width_multiplier=0.125))
    bn = conv.nodes["stem_bn"]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_framework_default_init_keeps_torch_biases():
    spec = fully_connected(16, 1, input_shape=(8,)).replace(init="framework_default")
    model = build_model(spec, seed=0)
    assert model.nodes["dense1"].linear.bias.any()


def test_seeded_builds_are_identical_and_leave_the_global_rng_alone():
    spec = SPECS["resnet-10"]
    state = torch.random.get_rng_state()
    a, b = build_model(spec, seed=3), build_model(spec, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    c = build_model(spec, seed=4)
    assert not torch.equal(a.nodes["a1"].conv1.conv.weight, c.nodes["a1"].conv1.conv.weight)


def test_a_truncated_spec_builds_and_runs(rng):
    spec = truncate_stage_from(conv_net(20, residual=True, width_multiplier=0.125), "c2")
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(spec)
    assert model(inputs(spec)).shape == (4, 10)
    report = audit(model, inputs(spec, 30), rng.integers(0, 10, size=30))
    assert report.names == measured_layers(spec)
    assert "c2" not in report.names and "c3" not in report.names


def test_a_graph_spec_with_linear_measured_nodes_and_odd_ids(rng):
    # a measured add (identity tap), a measured linear dense, ids that cannot name a module
    nodes = (
        Node("input", "input"),
        Node("x.1", "dense", {"units": 6, "activation": "relu"}, ("input",), measured=True),
        Node("train", "dense", {"units": 6}, ("x.1",), measured=True),
        Node("sum", "add", inputs=("x.1", "train"), optional=("train",), measured=True),
        Node("bn", "batchnorm", inputs=("sum",)),
        Node("act", "activation", {"function": "gelu"}, ("bn",), measured=True),
        Node("head", "dense", {"units": 3, "use_bias": False}, ("act",)),
    )
    spec = Spec(nodes, "head", (5,), 3)
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(spec)
    assert model.layer_names["x.1"] == "x_1" and model.layer_names["train"] != "train"
    x, y = inputs(spec, 20), rng.integers(0, 3, size=20)
    assert model(x).shape == (20, 3)
    assert audit(model, x, y).names == ["x_1", "act"]  # activation modules only
    tapped = audit(model, x, y, layers=list(model.layer_names.values()))
    assert tapped.names == [model.layer_names[i] for i in measured_layers(spec)]


def test_even_kernels_pad_same_as_keras():
    nodes = (
        Node("input", "input"),
        Node("conv", "conv", {"filters": 2, "kernel_size": 4, "stride": 2}, ("input",)),
        Node("pool", "maxpool", {"pool_size": 2, "stride": 3}, ("conv",)),
        Node("gap", "global_avg_pool", inputs=("pool",)),
        Node("head", "dense", {"units": 2}, ("gap",)),
    )
    spec = Spec(nodes, "head", (1, 9, 10), 2)
    model = build_model(spec)
    for node_id, out in model.node_outputs(inputs(spec)).items():
        assert tuple(out.shape[1:]) == spec.shape_of(node_id), node_id


def test_a_deep_narrow_plain_net_conflicts_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.from_numpy((x / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    spec = fully_connected(3, 30, input_shape=(1, 8, 8))
    report = audit(build_model(spec, seed=0), x, y, n_samples=500)
    assert report.names == measured_layers(spec)
    assert report.first_conflicting is not None
    assert report[-1].n_bundles < 50  # 500 samples of 10 digits collapse


def test_rejects_what_is_not_a_spec():
    with pytest.raises(BundleLabError, match="'spec' parameter"):
        build_model({"nodes": []})
    with pytest.raises(BundleLabError, match="'seed' parameter"):
        build_model(SPECS["fc-digits"], seed=1.5)


def test_seeds_are_converted_and_unknown_keywords_are_one_line_errors():
    spec = SPECS["fc-digits"]
    same = [build_model(spec, seed=seed).state_dict() for seed in (3, np.int64(3))]
    assert all(torch.equal(a, b) for a, b in zip(same[0].values(), same[1].values()))
    with pytest.raises(BundleLabError, match="did you mean 'seed'"):
        build_model(spec, sed=3)


@pytest.mark.parametrize("name, kind, decoupled", [
    ("adam", "Adam", False), ("adamw", "AdamW", True), ("sgd", "SGD", False),
])
def test_adam_is_adam_and_adamw_is_adamw(name, kind, decoupled):
    from bundlelab.adapters.torch import TorchBackend
    from bundlelab.training import TrainConfig

    config = TrainConfig(optimizer=name, weight_decay=1e-3, device="cpu")
    optimizer = TorchBackend().build(SPECS["fc-digits"], config).optimizer
    assert type(optimizer).__name__ == kind
    assert optimizer.param_groups[0]["weight_decay"] == 1e-3
    assert optimizer.param_groups[0].get("decoupled_weight_decay", kind == "AdamW") is decoupled


def test_trainees_share_one_runtime_module_and_do_not_import_each_other():
    import ast
    from pathlib import Path

    import bundlelab.adapters.torch as package

    folder = Path(package.__file__).parent

    def imported(name):
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        return {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert "_supernet" not in imported("_train") and "_train" not in imported("_supernet")
    assert "_runtime" in imported("_train") and "_runtime" in imported("_supernet")
