"""ONNX exports of the architectures users bring: what the default audit taps, names and leaves out.

Each model is a small torch module in the style of a family (a ViT block, an EfficientNet MBConv
with squeeze-excitation, a MobileNetV3 block with HardSwish), exported with the legacy exporter
at an opset below the one that has the activation as a single op, so the graph holds the
activation as arithmetic (GELU as Erf or Tanh, SiLU as x*Sigmoid(x), HardSwish as
x*HardSigmoid(x), Mish as x*Tanh(Softplus(x))).  The taps are checked against torch's own
module outputs, and the names against the torch adapter's.
"""

import json
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from bundlelab import BundleLabError  # noqa: E402
from bundlelab.adapters import measure_bundles  # noqa: E402
from bundlelab.adapters.onnx import OnnxAdapter, audit, load_model  # noqa: E402
from bundlelab.adapters.torch import TorchAdapter  # noqa: E402
from bundlelab.cli import run  # noqa: E402

IR_VERSION = 10  # onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14


def export(module, example, path, *, opset=17):
    """The legacy exporter (needs only onnx), dynamic batch, IR version onnxruntime reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save(proto, str(path))
    return path


def torch_outputs(module, x, names):
    """The outputs of the named activation modules (first call) on x, as numpy."""
    found = {}

    def keep(name):
        def hook(_module, _inputs, output):
            found.setdefault(name, output.detach().numpy())  # returns None: output unchanged
        return hook

    hooks = [module.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    with torch.no_grad():
        module(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    return found


# -- a ViT: attention with softmax weights, an MLP with GELU --------------------------------------


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, approximate):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * 2)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, approximate):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, approximate)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, two blocks, mean pooling, head: timm's VisionTransformer in small."""

    def __init__(self, approximate="none", dim=16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(Block(dim, approximate), Block(dim, approximate))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 3, 8, 8)).astype(np.float32), np.arange(48) % 3


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_vit_at_opset_17_taps_its_gelus_by_module_name(tmp_path, images, approximate):
    """Old code: 'no tappable layer' (GELU is Erf/Tanh arithmetic below opset 20)."""
    torch.manual_seed(0)
    vit = ViT(approximate).eval()
    x, labels = images
    path = export(vit, torch.from_numpy(x[:2]), tmp_path / "vit.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Gelu" not in ops and ("Erf" if approximate == "none" else "Tanh") in ops
    adapter = OnnxAdapter()
    taps = adapter.selected(str(path), x)
    assert [tap.layer for tap in taps] == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert {tap.op_type for tap in taps} == {"Gelu"}
    assert "2 attention softmaxes left out" in adapter.summary
    # the tapped tensor is the whole activation: torch's GELU output
    expected = torch_outputs(vit, x, ["blocks.0.mlp.act", "blocks.1.mlp.act"])
    outputs = next(adapter.iter_layer_outputs(str(path), x, layers=[t.layer for t in taps],
                                              inference_batch_size=len(x)))
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5)
    # the torch adapter names the same layers the same way
    assert TorchAdapter().layer_names(vit, torch.from_numpy(x[:2])) == [t.layer for t in taps]


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory, images):
    torch.manual_seed(1)
    vit = ViT().eval()
    x, _ = images
    return export(vit, torch.from_numpy(x[:2]), tmp_path_factory.mktemp("vit") / "vit.onnx"), vit


def test_layers_all_keeps_attention_weights_and_blocks_taps_block_outputs(vit_file, images):
    path, vit = vit_file
    x, labels = images
    everything = OnnxAdapter(layers="all").layer_names(str(path), x)
    assert everything == ["blocks.0.attn:softmax", "blocks.0.mlp.act", "blocks.1.attn:softmax",
                          "blocks.1.mlp.act"]
    report = audit(path, x, labels, layers="blocks", weight_amplitude=1.0)
    assert report.names == ["blocks.0", "blocks.1"]
    assert report.params["selection"] == "2 block outputs tapped (blocks.0 ... blocks.1)"
    # a block's output is what the torch block returns
    outputs = next(OnnxAdapter(layers="blocks").iter_layer_outputs(
        str(path), x, layers=["blocks.0"], inference_batch_size=len(x)))
    np.testing.assert_allclose(outputs["blocks.0"], torch_outputs(vit, x, ["blocks.0"])["blocks.0"],
                               rtol=1e-4, atol=1e-5)
    assert TorchAdapter(layers="blocks").layer_names(vit, torch.from_numpy(x[:2])) == report.names


def test_all_nodes_skips_tensors_without_a_batch_axis_and_names_them(vit_file, images):
    """Old code aborted at the first one ('/blocks/blocks.0/attn/Transpose_output_0 outputs
    shape (3, 64, 2, 4, 8)')."""
    path, _ = vit_file
    x, labels = images
    report = audit(path, x, labels, all_nodes=True, weight_amplitude=1.0)
    skipped = report.params["selection"]
    assert "skipped, their first axis is not the batch" in skipped
    assert "/blocks/blocks.0/attn/Transpose_output_0" in skipped
    assert "/blocks/blocks.0/attn/Transpose_output_0" not in report.names
    assert all(result.n_samples == len(x) for result in report)
    assert len(report) > 40  # every other node's output is measured
    # naming one explicitly stays an error, in one line
    with pytest.raises(BundleLabError, match=r"outputs shape \(3, 2, 2, 4, 8\) .*not the batch"):
        audit(path, x, labels, all_nodes=True, layers=["/blocks/blocks.0/attn/Transpose_output_0"])


@pytest.mark.parametrize("pattern", ["blocks.1.mlp*", "/blocks/blocks.1/mlp/*",
                                     "blocks/blocks.1/mlp/*"])
def test_globs_match_module_names_and_tensor_names_with_or_without_the_slash(
        vit_file, images, pattern):
    path, _ = vit_file
    x, labels = images
    report = audit(path, x, labels, layers=pattern, weight_amplitude=1.0)
    assert report.names == ["blocks.1.mlp.act"]


# -- EfficientNet: MBConv with SiLU and a squeeze-excitation gate ----------------------------------


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.SiLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        scale = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(scale)


class MBConv(nn.Module):
    def __init__(self, channels, gate_act=nn.Sigmoid, act=nn.SiLU):
        super().__init__()
        self.conv_pw = nn.Conv2d(channels, channels * 4, 1)
        self.bn1 = nn.BatchNorm2d(channels * 4)
        self.act1 = act()
        self.conv_dw = nn.Conv2d(channels * 4, channels * 4, 3, padding=1, groups=channels * 4)
        self.bn2 = nn.BatchNorm2d(channels * 4)
        self.act2 = act()
        self.se = SqueezeExcite(channels * 4, 2)
        self.se.gate = gate_act()
        self.conv_pwl = nn.Conv2d(channels * 4, channels, 1)

    def forward(self, x):
        h = self.act2(self.bn2(self.conv_dw(self.act1(self.bn1(self.conv_pw(x))))))
        return x + self.conv_pwl(self.se(h))


class EfficientNet(nn.Module):
    def __init__(self, gate_act=nn.Sigmoid, act=nn.SiLU):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = act()
        self.blocks = nn.Sequential(MBConv(4, gate_act, act), MBConv(4, gate_act, act))
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        return self.classifier(self.blocks(self.act(self.conv_stem(x))).mean((2, 3)))


def test_efficientnet_se_gates_are_left_out_of_the_default_and_kept_by_all(tmp_path, images):
    torch.manual_seed(0)
    net = EfficientNet().eval()
    x, labels = images
    path = export(net, torch.from_numpy(x[:2]), tmp_path / "effnet.onnx")
    default = OnnxAdapter()
    names = default.layer_names(str(path), x)
    assert names == ["act", "blocks.0.act1", "blocks.0.act2", "blocks.1.act1", "blocks.1.act2"]
    assert default.summary == (
        "5 activations tapped (5 SiLU); 4 squeeze-excitation taps left out (layers='all' "
        "keeps them)")
    everything = OnnxAdapter(layers="all").layer_names(str(path), x)
    assert [n for n in everything if n not in names] == [
        "blocks.0.se.act1", "blocks.0.se.gate", "blocks.1.se.act1", "blocks.1.se.gate"]
    # the same picks and names as the torch adapter on the module itself
    example = torch.from_numpy(x[:2])
    assert TorchAdapter().layer_names(net, example) == names
    assert TorchAdapter(layers="all").layer_names(net, example) == everything
    outputs = next(default.iter_layer_outputs(str(path), x, layers=names, inference_batch_size=48))
    expected = torch_outputs(net, x, ["blocks.0.act2"])["blocks.0.act2"]
    np.testing.assert_allclose(outputs["blocks.0.act2"], expected, rtol=1e-4, atol=1e-5)


# -- MobileNetV3: HardSwish and a HardSigmoid gate, at opset 13 (no HardSwish op) ------------------


@pytest.mark.parametrize("act, opset, op", [(nn.Hardswish, 13, "HardSwish"),
                                            (nn.Mish, 17, "Mish")])
def test_mobilenetv3_hardswish_and_mish_written_as_products(tmp_path, images, act, opset, op):
    torch.manual_seed(0)
    net = EfficientNet(gate_act=nn.Hardsigmoid, act=act).eval()
    x, labels = images
    path = export(net, torch.from_numpy(x[:2]), tmp_path / "mobilenet.onnx", opset=opset)
    graph_ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert op not in graph_ops  # written as x * HardSigmoid(x) or x * Tanh(Softplus(x))
    adapter = OnnxAdapter()
    taps = adapter.selected(str(path), x)
    assert [t.layer for t in taps] == ["act", "blocks.0.act1", "blocks.0.act2", "blocks.1.act1",
                                       "blocks.1.act2"]
    assert {t.op_type for t in taps} == {op}
    assert "4 squeeze-excitation taps left out" in adapter.summary
    outputs = next(adapter.iter_layer_outputs(str(path), x, layers=["blocks.1.act1"],
                                              inference_batch_size=48))
    expected = torch_outputs(net, x, ["blocks.1.act1"])["blocks.1.act1"]
    np.testing.assert_allclose(outputs["blocks.1.act1"], expected, rtol=1e-4, atol=1e-5)


# -- graphs other tools write ---------------------------------------------------------------------


def _graph(nodes, initializers, out, *, dtype=TensorProto.FLOAT, width=4):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", dtype, ["N", width])],
        [helper.make_tensor_value_info(out, dtype, None)], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=IR_VERSION)


def _scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype), name)


def test_gelu_with_the_half_first_and_relu6_hardswish_variants():
    """(0.5 * x) * (1 + erf(x * 0.7071)) and x * clip(x + 3, 0, 6) / 6, as TF and Keras
    converters write them; the taps are the products, with torch-free names."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w.T.copy(), "W2"),
             _scalar("half", 0.5), _scalar("inv_sqrt2", 0.70710678), _scalar("one", 1.0),
             _scalar("three", 3.0), _scalar("zero", 0.0), _scalar("six", 6.0)]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"]),
        helper.make_node("Mul", ["a", "half"], ["a_half"]),
        helper.make_node("Mul", ["a", "inv_sqrt2"], ["a_scaled"]),
        helper.make_node("Erf", ["a_scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["a_half", "erf1"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "W2"], ["b"]),
        helper.make_node("Add", ["b", "three"], ["b3"]),
        helper.make_node("Clip", ["b3", "zero", "six"], ["relu6"]),
        helper.make_node("Div", ["relu6", "six"], ["hsig"]),
        helper.make_node("Mul", ["b", "hsig"], ["hswish"]),
        helper.make_node("Neg", ["hswish"], ["y"]),
    ]
    model = _graph(nodes, inits, "y")
    taps = OnnxAdapter().selected(model)
    assert [(t.layer, t.op_type) for t in taps] == [("gelu", "Gelu"), ("hswish", "HardSwish")]
    x = rng.normal(size=(6, 4)).astype(np.float32)
    from math import erf

    a = x @ w
    expected = a * 0.5 * (1 + np.vectorize(erf)(a / np.sqrt(2)))
    outputs = next(OnnxAdapter().iter_layer_outputs(model, x, layers=["gelu"],
                                                    inference_batch_size=6))
    np.testing.assert_allclose(outputs["gelu"], expected, rtol=1e-5, atol=1e-6)


def test_blocks_without_module_scopes_is_a_one_line_error():
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Neg", ["h"], ["y"])]
    model = _graph(nodes, [w], "y")
    with pytest.raises(BundleLabError, match=r"has no repeated blocks: .*pass layer names"):
        OnnxAdapter(layers="blocks").layer_names(model)
    with pytest.raises(BundleLabError, match="The 'layers' parameter must be"):
        OnnxAdapter(layers=3)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.FLOAT])
def test_update_format_follows_the_weights_but_assumes_float32_master_weights(dtype):
    """float32 weights: the audit updates in float32, read from the model.  float16 weights
    (an export converted for inference): float32 master weights are assumed, and said so;
    the half format stays one option away."""
    half = dtype == TensorProto.FLOAT16
    np_dtype = np.float16 if half else np.float32
    w = numpy_helper.from_array(np.eye(4, dtype=np_dtype) * 0.5, "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Neg", ["h"], ["y"])]
    model = _graph(nodes, [w], "y", dtype=dtype)
    assert OnnxAdapter().update_format(model) == (None if half else "float32")
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np_dtype)
    report = audit(model, x, np.arange(20) % 2)
    assert report[0].update_format == "float32"
    assert report.params["sources"]["update_format"] == (
        "assumed (float16 activations)" if half else "model parameters")
    if half:
        assert audit(model, x, np.arange(20) % 2,
                     update_format="activations")[0].update_format == "float16"
    assert audit(model, x, np.arange(20) % 2, update_format="float64")[0].update_format == "float64"


def test_cli_layers_all_and_blocks_and_the_summary_on_stderr(vit_file, images, tmp_path, capsys):
    path, _ = vit_file
    x, labels = images
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    base = ["audit", str(path), "--data", str(tmp_path / "d.npz"), "-f", "json"]
    assert run(base) == 0
    captured = capsys.readouterr()
    assert captured.err == ("bundlelab: 2 activations tapped (2 Gelu); 2 attention softmaxes "
                            "left out (layers='all' keeps them)\n")
    data = json.loads(captured.out)
    assert [r["layer"] for r in data["layers"]] == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert data["params"]["selection"].startswith("2 activations tapped")
    assert data["params"]["sources"]["learning_rate"] == "default"
    assert run([*base, "--layers", "all"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # an explicit selection is not announced
    assert len(json.loads(captured.out)["layers"]) == 4
    assert run([*base, "--layers", "blocks", "--lr", "0.01", "--update-format", "float64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in data["layers"]] == ["blocks.0", "blocks.1"]
    assert data["params"]["sources"]["learning_rate"] == "given"
    assert data["params"]["sources"]["update_format"] == "given"
    assert {r["update_format"] for r in data["layers"]} == {"float64"}


def test_measure_bundles_with_the_adapter_uses_the_same_selection(vit_file, images):
    path, _ = vit_file
    x, labels = images
    report = measure_bundles(OnnxAdapter(layers="all"), str(path), x, labels,
                             weight_amplitude=1.0, layers=["*softmax"])
    assert report.names == ["blocks.0.attn:softmax", "blocks.1.attn:softmax"]
    assert load_model(path).layers()[0].kind == "attention"


def test_legacy_scope_names_map_to_module_paths():
    """The legacy exporter's scopes: a numbered child keeps its parent's atom ('layer1.0',
    'features.3.0'), a scope met again in one parent gets '_1' (the module's second call),
    and a module really named 'act_1' (no 'act' beside it) keeps its name."""
    from bundlelab.adapters.onnx._names import module_paths

    names = ["/features/features.3/features.3.0/act/Relu", "/layer1/layer1.0/relu/Relu",
             "/layer1/layer1.0/relu_1/Relu", "/head/act_1/Relu", "/encoder/layer.0/Relu",
             "/Relu", "Relu_7"]
    nodes = [helper.make_node("Relu", ["x"], [f"y{i}"], name=name) for i, name in enumerate(names)]
    graph = helper.make_graph(nodes, "g", [], [])
    proto = helper.make_model(graph, producer_name="pytorch")
    assert module_paths(proto, nodes) == [
        ("features", "3", "0", "act"), ("layer1", "0", "relu"), ("layer1", "0", "relu"),
        ("head", "act_1"), ("encoder", "layer", "0"), (), None]
    proto.producer_name = "tf2onnx"  # another producer's '/'-names are not torch scopes
    assert module_paths(proto, nodes) == [None] * len(nodes)


def test_all_nodes_names_what_shape_inference_rules_out_in_a_fixed_batch_export(tmp_path, images):
    """A fixed batch of 4: shape inference already knows the attention's (3, 4, ...) tensors."""
    torch.manual_seed(0)
    x, labels = images
    path = tmp_path / "vit-fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ViT().eval(), (torch.from_numpy(x[:4]),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"])
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(path))
    report = audit(path, x[:10], labels[:10], all_nodes=True, weight_amplitude=1.0)
    assert report.params["selection"].endswith(
        "2 tensors skipped, their first axis is not the batch: "
        "'/blocks/blocks.0/attn/Transpose_output_0' (3, 4, 2, 4, 8), "
        "'/blocks/blocks.1/attn/Transpose_output_0' (3, 4, 2, 4, 8)")
    assert all(result.n_samples == 10 for result in report)


# -- shape inference without the weights: the same types, the same reports ------------------------


def full_inference_types(proto, declared=True):
    """The plain reference: onnx's shape inference over the whole model, weights and all
    (``declared=False``: over a copy without the file's value_info and output shapes)."""
    from bundlelab.adapters.onnx._graph import _dims

    if not declared:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        del copy.graph.value_info[:]
        for output in copy.graph.output:
            if output.type.HasField("tensor_type"):
                output.type.tensor_type.ClearField("shape")
        proto = copy
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001
        inferred = proto
    types = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            tensor_type = value.type.tensor_type
            types[value.name] = (tensor_type.elem_type or None, _dims(tensor_type))
        elif value.type.WhichOneof("value") is not None:
            types[value.name] = (-1, None)
    return types


@pytest.fixture(scope="module")
def style_files(tmp_path_factory, images, vit_file):
    """name -> path of exports in several styles: the legacy exporter (ViT with Erf GELU and
    attention, EfficientNet with SiLU and SE gates, MobileNetV3 HardSwish at opset 13), a
    fixed-batch export, the dynamo exporter with its weights in an external file, and an IR 3
    model that lists its initializers among the graph inputs (with a Reshape read from one)."""
    folder = tmp_path_factory.mktemp("styles")
    x, _ = images
    example = torch.from_numpy(x[:2])
    torch.manual_seed(0)
    files = {"vit": vit_file[0],
             "effnet": export(EfficientNet().eval(), example, folder / "effnet.onnx"),
             "mobilenet": export(EfficientNet(gate_act=nn.Hardsigmoid, act=nn.Hardswish).eval(),
                                 example, folder / "mobilenet.onnx", opset=13)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ViT().eval(), (torch.from_numpy(x[:4]),), str(folder / "fixed.onnx"),
                          dynamo=False, opset_version=17, input_names=["x"])
    proto = onnx.load(str(folder / "fixed.onnx"))
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(folder / "fixed.onnx"))
    files["fixed"] = folder / "fixed.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(EfficientNet().eval(), (example,), str(folder / "dynamo.onnx"),
                              dynamo=True, opset_version=18, input_names=["x"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                              external_data=True)
        proto = onnx.load(str(folder / "dynamo.onnx"), load_external_data=False)
        proto.ir_version = min(proto.ir_version, IR_VERSION)
        onnx.save(proto, str(folder / "dynamo.onnx"))
        files["dynamo"] = folder / "dynamo.onnx"
    except Exception:  # noqa: BLE001 - the dynamo exporter needs onnxscript; the rest still runs
        pass
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=shape).astype(np.float32) for shape in ((3 * 8 * 8, 96), (96, 3))]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w0"], ["h"]),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w1"], ["logits"])]
    initializers = [numpy_helper.from_array(np.array([-1, 3 * 8 * 8], np.int64), "shape"),
                    numpy_helper.from_array(weights[0], "w0"),
                    numpy_helper.from_array(weights[1], "w1")]
    graph = helper.make_graph(
        nodes, "ir3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])] + [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=initializers)
    ir3 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.save(ir3, str(folder / "ir3.onnx"))
    files["ir3"] = folder / "ir3.onnx"
    return files


def test_shape_inference_without_the_weights_types_every_tensor_as_with_them(style_files):
    """Old code serialized every weight for onnx's shape inference; the types must not move."""
    from bundlelab.adapters.onnx._graph import inferred_types, without_weights

    for name, path in style_files.items():
        proto = onnx.load(str(path), load_external_data=False)
        assert inferred_types(proto) == full_inference_types(proto), name
        skeleton, stubs = without_weights(proto)
        inline = [t for t in proto.graph.initializer
                  if t.data_location != TensorProto.EXTERNAL and t.name in stubs]
        if name != "ir3":  # IR 3 declares its weights as inputs already: nothing to add
            assert stubs, name
        assert not {t.name for t in skeleton.graph.initializer} & stubs
        # no weight is copied: the stubs' inputs replace their values
        added = sum(v.ByteSize() + 8 for v in skeleton.graph.input if v.name in stubs)
        assert skeleton.ByteSize() <= proto.ByteSize() - sum(t.ByteSize() for t in inline) + added
    assert "dynamo" in style_files or pytest.skip("the dynamo exporter is not installed")


@pytest.mark.parametrize("all_nodes", [False, True], ids=["activations", "all-nodes"])
def test_audit_report_equals_the_one_with_full_shape_inference(style_files, images, monkeypatch,
                                                               all_nodes):
    """The same layers, names, skips and numbers as with types inferred from the whole model."""
    from bundlelab.adapters.onnx import _model

    x, labels = images
    for name, path in style_files.items():
        kwargs = dict(all_nodes=all_nodes, n_samples=40, inference_batch_size=16,
                      layers="all" if not all_nodes else None)
        report = audit(path, x, labels, **kwargs)
        with monkeypatch.context() as patched:
            patched.setattr(_model, "inferred_types", full_inference_types)
            reference = audit(path, x, labels, **kwargs)
        assert [r.to_record(include_ids=True) for r in report] == [
            r.to_record(include_ids=True) for r in reference], name
        assert report.params == reference.params, name
