"""Layer selection on models in the styles of torchvision, timm and Hugging Face (issue 11 §2):
activations recognised by what they compute, gates left out, repeated blocks, dict batches,
the update format of the model's parameters."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from equality import assert_same_report  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from bundlelab import BundleLabError, find_bundles  # noqa: E402
from bundlelab.adapters.torch import TorchAdapter, audit, build_model, trace_model  # noqa: E402
from bundlelab.spec import conv_net, fully_connected, measured_layers  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# -- models in the styles of the libraries (digits-sized: 1 x 8 x 8 inputs, 10 classes) --------


class BasicBlock(nn.Module):
    """torchvision's: one shared in-place ReLU called twice, a downsampling shortcut."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetStyle(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvNormActivation(nn.Sequential):
    """torchvision's Conv2dNormActivation: a Sequential subclass (a layer, not a block)."""

    def __init__(self, c_in, c_out, kernel=1, stride=1, groups=1, activation=nn.Hardswish):
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(c_out)]
        super().__init__(*layers, *([activation()] if activation else []))


class SqueezeExcitation(nn.Module):
    """torchvision's: pool, 1x1 reduce, ReLU (the inner activation), 1x1 expand, Hardsigmoid."""

    def __init__(self, channels, squeezed):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class InvertedResidual(nn.Module):
    def __init__(self, c_in, expanded, c_out, stride=1):
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            ConvNormActivation(c_in, expanded),
            ConvNormActivation(expanded, expanded, 3, stride, groups=expanded),
            SqueezeExcitation(expanded, 8),
            ConvNormActivation(expanded, c_out, activation=None),
        )

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3Style(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            ConvNormActivation(1, 16, 3, 1),
            InvertedResidual(16, 32, 16),
            InvertedResidual(16, 48, 24, 2),
            InvertedResidual(24, 48, 24),
            ConvNormActivation(24, 48),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class SqueezeExcite(nn.Module):
    """timm's: mean, conv_reduce, SiLU module, conv_expand, then a FUNCTIONAL sigmoid gate."""

    def __init__(self, channels, squeezed):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, squeezed, 1)
        self.act1 = nn.SiLU()
        self.conv_expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * x_se.sigmoid()


class MBConv(nn.Module):
    """timm's InvertedResidual (EfficientNet): pw SiLU, dw SiLU, SE, pwl, residual."""

    def __init__(self, channels, expanded):
        super().__init__()
        self.conv_pw = nn.Conv2d(channels, expanded, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(expanded)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_dw = nn.Conv2d(expanded, expanded, 3, 1, 1, groups=expanded, bias=False)
        self.bn2 = nn.BatchNorm2d(expanded)
        self.act2 = nn.SiLU(inplace=True)
        self.se = SqueezeExcite(expanded, 8)
        self.conv_pwl = nn.Conv2d(expanded, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.act2(self.bn2(self.conv_dw(self.act1(self.bn1(self.conv_pw(x))))))
        return self.bn3(self.conv_pwl(self.se(out))) + x


class EfficientNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(MBConv(16, 64), MBConv(16, 64), MBConv(16, 64))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(F.silu(self.bn1(self.conv_stem(x))))
        return self.classifier(x.mean((2, 3)))


class GELU(nn.Module):
    """timm's own GELU: calls F.gelu, does NOT subclass nn.GELU."""

    def forward(self, x):
        return F.gelu(x)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))  # layer scale: a parameter, no gate

    def forward(self, x):
        out = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        out = self.fc2(self.act(self.fc1(out))) * self.gamma
        return x + out.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    def __init__(self, c_in, dim, depth):
        super().__init__()
        self.downsample = nn.Conv2d(c_in, dim, 2, 2) if c_in != dim else nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class ConvNeXtStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 2, 2)
        self.stages = nn.Sequential(ConvNeXtStage(16, 16, 2), ConvNeXtStage(16, 32, 2))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


class Attention(nn.Module):
    """Returns a tuple (output, attention weights), as many transformer libraries do."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), weights


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class ViTStyle(nn.Module):
    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, 2, 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


class ConvPath(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class FunctionalBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_path = ConvPath(c)

    def forward(self, x):
        return (self.conv_path(x) + x).relu()


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block1, self.block2 = FunctionalBlock(8), FunctionalBlock(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.block2(self.block1(x))
        x = F.relu(x, inplace=True)  # in place, on a block's output
        return self.fc(x.mean((2, 3)))


def digits(n=96):
    from bundlelab.datasets import load_dataset

    data = load_dataset("digits")
    x, y = data[:2] if isinstance(data, tuple) else (data.x_train, data.y_train)
    x = torch.as_tensor(np.asarray(x[:n], dtype=np.float32)).reshape(-1, 1, 8, 8)
    return x, np.asarray(y[:n])


def picks(model, layers=None):
    return TorchAdapter(layers=layers).layer_names(model, torch.randn(2, 1, 8, 8))


# -- what the default, "all" and "blocks" pick, per style ----------------------------------------


def test_resnet_style_default_is_every_relu_call_and_blocks_are_the_basic_blocks():
    model = ResNetStyle()
    relus = ["relu"] + [f"layer{i}.{j}.relu{k}" for i in (1, 2) for j in (0, 1)
                        for k in ("", ":2")]
    assert picks(model) == relus
    assert picks(model, "all") == relus  # no gate to add
    assert picks(model, "blocks") == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]


def test_mobilenetv3_style_leaves_the_squeeze_excitation_gates_and_their_inner_relu_out():
    model = MobileNetV3Style()
    trace = trace_model(model, torch.randn(2, 1, 8, 8))
    default = picks(model)
    assert default == [
        "features.0.2",
        "features.1.block.0.2", "features.1.block.1.2",
        "features.2.block.0.2", "features.2.block.1.2",
        "features.3.block.0.2", "features.3.block.1.2",
        "features.4.2", "classifier.1",
    ]
    gates = [f"features.{i}.block.2.{m}" for i in (1, 2, 3)
             for m in ("activation", "scale_activation")]
    assert [t.name for t in trace.taps if t.gate] == gates
    assert {t.gate for t in trace.taps if t.gate} == {"squeeze-excitation gate"}
    assert [t.shape for t in trace.taps if t.name == gates[0]] == [(8, 1, 1)]  # 8 values
    assert picks(model, "all") == [n for n in trace.names if n in set(default) | set(gates)]
    assert picks(model, "blocks") == ["features.1", "features.2", "features.3"]
    assert trace.summary(None, trace.default()) == (
        "9 activations tapped; 6 squeeze-excitation gates left out (layers='all' keeps them)"
    )


def test_efficientnet_style_functional_sigmoid_gate_and_silu_stem_call():
    model = EfficientNetStyle()
    default = picks(model)
    assert default == ["forward:silu"] + [f"blocks.{i}.act{k}" for i in range(3) for k in (1, 2)]
    every = picks(model, "all")
    for i in range(3):
        assert f"blocks.{i}.se.act1" in every and f"blocks.{i}.se:sigmoid" in every
    assert len(every) == len(default) + 6
    assert picks(model, "blocks") == ["blocks.0", "blocks.1", "blocks.2"]


def test_convnext_style_custom_gelu_class_is_an_activation_and_blocks_open_the_stages():
    model = ConvNeXtStyle()
    gelus = [f"stages.{s}.blocks.{b}.act" for s in (0, 1) for b in (0, 1)]
    assert picks(model) == gelus  # one tap per GELU module, not a second one for its F.gelu
    assert picks(model, "all") == gelus  # the layer scale is a parameter, not a gate
    assert picks(model, "blocks") == [f"stages.{s}.blocks.{b}" for s in (0, 1) for b in (0, 1)]


def test_vit_style_gelu_calls_are_taps_and_softmax_weights_are_left_out():
    model = ViTStyle()
    trace = trace_model(model, torch.randn(2, 1, 8, 8))
    assert picks(model) == ["blocks.0.mlp:gelu", "blocks.1.mlp:gelu"]
    softmax = [t for t in trace.taps if t.gate]
    assert [t.name for t in softmax] == ["blocks.0.attn:softmax", "blocks.1.attn:softmax"]
    assert softmax[0].gate == "attention weights" and softmax[0].shape == (2, 16, 16)
    assert "blocks.0.attn" in trace.untappable  # its tuple is not a layer
    assert picks(model, "all") == [
        "blocks.0.attn:softmax", "blocks.0.mlp:gelu", "blocks.1.attn:softmax", "blocks.1.mlp:gelu"
    ]
    assert picks(model, "blocks") == ["blocks.0", "blocks.1"]
    assert "attention weights" in trace.summary(None, trace.default())


def test_functional_net_taps_each_call_under_the_module_that_makes_it():
    model = FunctionalNet()
    names = ["forward:relu", "block1.conv_path:relu", "block1:relu", "block2.conv_path:relu",
             "block2:relu", "forward:relu:2"]
    assert picks(model) == names
    assert picks(model, "block?.conv_path:*") == ["block1.conv_path:relu", "block2.conv_path:relu"]
    assert picks(model, "blocks") == ["block1", "block2"]


def test_functional_taps_measure_the_values_the_forward_pass_computes():
    model, (x, y) = FunctionalNet().eval(), digits()
    report = audit(model, x, y, n_samples=None, learning_rate=0.1)
    with torch.no_grad():
        stem = torch.relu(model.stem(x))
        inner = F.relu(model.block1.conv_path.conv1(stem))
        first = (model.block1.conv_path.conv2(inner) + stem).relu()
        last = F.relu(model.block2(first))
    w = max(float(p.detach().abs().max()) for p in model.parameters())
    for name, value in (("forward:relu", stem), ("block1.conv_path:relu", inner),
                        ("block1:relu", first), ("forward:relu:2", last)):
        expected = find_bundles(value.numpy(), y, weight_amplitude=w, learning_rate=0.1)
        assert np.array_equal(report[name].bundle_ids, expected.bundle_ids), name
    # the in-place F.relu at the end changes the block's output after it was tapped: the
    # block's tap keeps the value it returned
    blocks = audit(model, x, y, n_samples=None, layers="blocks", learning_rate=0.1)
    with torch.no_grad():
        second = model.block2(first)
    expected = find_bundles(second.numpy(), y, weight_amplitude=w, learning_rate=0.1)
    assert np.array_equal(blocks["block2"].bundle_ids, expected.bundle_ids)


def test_the_gate_of_a_mobilenet_measures_the_gate_and_all_keeps_it():
    model, (x, y) = MobileNetV3Style().eval(), digits()
    report = audit(model, x, y, layers="all")
    gate = model.features[1].block[2]
    captured = {}
    handle = gate.scale_activation.register_forward_hook(lambda m, a, o: captured.setdefault(
        "gate", o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    w = max(float(p.detach().abs().max()) for p in model.parameters())
    expected = find_bundles(captured["gate"].numpy(), y, weight_amplitude=w)
    result = report["features.1.block.2.scale_activation"]
    assert np.array_equal(result.bundle_ids, expected.bundle_ids)
    assert report.params["selection"].startswith("15 activations tapped (layers='all', 6 ")


class SpatialGate(nn.Module):
    """A spatial attention map: one channel, broadcast over all of them (no pooling)."""

    def __init__(self, c):
        super().__init__()
        self.conv, self.score = nn.Conv2d(1, c, 3, padding=1), nn.Conv2d(c, 1, 1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        h = F.elu(self.conv(x))
        h = h * torch.sigmoid(self.score(h))
        return self.fc(h.mean((2, 3)))


def test_a_broadcast_spatial_gate_and_the_relu_of_a_torch_transformer_layer():
    trace = trace_model(SpatialGate(8), torch.randn(2, 1, 8, 8))
    assert [(t.name, t.gate) for t in trace.taps if t.role] == [
        ("forward:elu", None), ("forward:sigmoid", "broadcast gate")
    ]
    assert trace.summary(None, trace.default()) == (
        "1 activation tapped, 1 of them a functional call; 1 broadcast gate left out "
        "(layers='all' keeps them)"
    )
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 2), nn.Flatten(),
                          nn.Linear(5 * 16, 3))
    x = torch.randn(2, 5, 8)
    assert TorchAdapter().layer_names(model, x) == ["1.layers.0:relu", "1.layers.1:relu"]
    assert TorchAdapter(layers="blocks").layer_names(model, x) == ["1.layers.0", "1.layers.1"]


@pytest.mark.parametrize("name, role", [
    ("QuickGELU", "activation"), ("StarReLU", "activation"), ("HardSwishMe", "activation"),
    ("h_swish", "activation"), ("Hsigmoid", "activation"), ("NewGELUActivation", "activation"),
    ("MemoryEfficientSwish", "activation"), ("Softmax", "attention"),
    ("PixelUnshuffled", None), ("LinearActivation", None), ("BatchNormAct2d", None),
])
def test_activation_classes_of_any_library_are_recognised_by_name(name, role):
    from bundlelab.adapters.torch._activations import module_role

    cls = type(name, (nn.Module,), {"forward": lambda self, x: torch.tanh(x)})
    assert module_role(cls()) == role
    layer = type("ConvBNReLU", (nn.Module,), {})()
    layer.conv = nn.Conv2d(1, 1, 1)  # holds a layer with weights: a layer, not an activation
    assert module_role(layer) is None


# -- the audit says what it picked ---------------------------------------------------------------


def test_audit_announces_its_default_selection_once_and_stores_it(capsys):
    model, (x, y) = MobileNetV3Style(), digits(64)
    report = audit(model, x, y)
    said = "9 activations tapped; 6 squeeze-excitation gates left out (layers='all' keeps them)"
    assert report.params["selection"] == said
    assert capsys.readouterr().err == f"bundlelab: {said}\n"
    explicit = audit(model, x, y, layers="blocks")
    assert capsys.readouterr().err == ""  # silent when the user chose
    assert explicit.params["selection"] == (
        "3 block outputs tapped (InvertedResidual; layers='blocks')"
    )
    assert audit(model, x, y, layers=["classifier.1"]).params["selection"] == (
        "1 layer tapped (layers=['classifier.1'])"
    )


def test_blocks_without_repeated_blocks_is_one_line():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(BundleLabError, match="layers='blocks' found no repeated blocks") as info:
        picks(model, "blocks")
    assert "\n" not in str(info.value)


# -- the paper's families keep today's layers ----------------------------------------------------


@pytest.mark.parametrize("spec", [
    conv_net(depth=10, input_shape=(1, 8, 8)),
    conv_net(blocks=(2, 1, 1, 1), residual=True, input_shape=(1, 8, 8)),
    fully_connected(16, 3, input_shape=(64,)),
    fully_connected(16, 2, activation="tanh", input_shape=(64,)),
])
def test_models_built_from_specs_keep_their_measured_layers_as_the_default(spec):
    model = build_model(spec, seed=0)
    x = torch.randn(2, *spec.input_shape)
    measured = [model.layer_names[node] for node in measured_layers(spec)]
    adapter = TorchAdapter()
    assert adapter.layer_names(model, x) == measured
    assert TorchAdapter(layers="blocks").layer_names(model, x) == measured


# -- dict batches (the Hugging Face convention) --------------------------------------------------


class HFStyle(nn.Module):
    """Takes keyword inputs, as a Hugging Face model does."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, pixel_values, scale=None):
        h = F.gelu(self.fc1(pixel_values.flatten(1)))
        return self.fc2(h if scale is None else h * 1.0)


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, x, y, extra=False):
        self.x, self.y, self.extra = x, y, extra

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        item = {"pixel_values": self.x[i], "labels": int(self.y[i])}
        return dict(item, image_id=i) if self.extra else item


def test_dict_batches_feed_the_model_by_keyword_or_by_key():
    model, (x, y) = HFStyle(), digits()
    reference = audit(model, x, y, n_samples=64, layers="all")
    for data in (DictDataset(x, y), torch.utils.data.DataLoader(DictDataset(x, y), batch_size=32),
                 {"pixel_values": x, "labels": y}):
        report = audit(model, data, n_samples=64, layers="all")
        assert report.names == ["forward:gelu"]
        assert np.array_equal(report["forward:gelu"].bundle_ids,
                              reference["forward:gelu"].bundle_ids)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    keyed = audit(plain, DictDataset(x, y, extra=True), input_key="pixel_values")
    assert keyed["2"].n_samples == len(y)
    renamed = [{"pixel_values": x[i:i + 32], "target": torch.from_numpy(y[i:i + 32])}
               for i in range(0, 96, 32)]
    loader = torch.utils.data.DataLoader(renamed, batch_size=None)
    assert audit(plain, loader, label_key="target", input_key="pixel_values")["2"].n_samples == 96
    with pytest.raises(BundleLabError, match="hold no 'labels' key .* pass label_key="):
        audit(plain, loader, input_key="pixel_values")
    with pytest.raises(BundleLabError, match="hold no 'image' key .* pass input_key="):
        audit(plain, DictDataset(x, y), input_key="image")
    with pytest.raises(BundleLabError, match="'label_key' parameter"):
        audit(plain, DictDataset(x, y), label_key=3)


# -- the update format is the parameters' ------------------------------------------------------


def test_update_format_is_the_dtype_of_the_trainable_parameters():
    adapter = TorchAdapter()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert adapter.update_format(model) == "float32"
    assert adapter.update_format(model.half()) == "float16"
    assert adapter.update_format(model.bfloat16()) == "bfloat16"
    assert adapter.update_format(model.double()) == "float64"
    assert adapter.update_format(nn.ReLU()) is None


def test_audit_under_autocast_updates_float32_weights_and_says_where_values_came_from():
    model, (x, y) = ResNetStyle(), digits(64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = audit(model, x, y, optimizer=optimizer, layers=["relu"])
    result = report["relu"]
    assert result.dtype == "bfloat16" and result.update_format == "float32"
    sources = report.params["sources"]
    assert sources["learning_rate"] == "optimizer" and sources["batch_size"] == "default"
    assert sources["weight_amplitude"] == "model parameters"
    assert sources["update_format"] == "model parameters"
    half = audit(ResNetStyle().half(), x.half(), y, layers=["relu"], batch_size=32)
    assert half["relu"].update_format == "float16"
    assert half.params["sources"]["batch_size"] == "given"


# -- the audit consumes each tap in its hook: reports equal to the cloning path's ----------------


def previous_path(monkeypatch):
    """The audit path before taps were consumed in their hooks: each pass's tapped outputs
    cloned (``iter_layer_outputs``), then one ``BundleStream.update`` per layer and batch."""
    from bundlelab.streaming import StreamBatcher

    monkeypatch.delattr(TorchAdapter, "feed_layer_outputs")
    monkeypatch.setattr(StreamBatcher, "_update",  # what LayerFeed.take calls
                        lambda self, name, output, labels, codes: self.streams[name].update(
                            output, labels))


def repeated_digits(n=150):
    """Digits with every sample twice (bundles of two, some conflicting) and a few NaN pixels
    (rows that must stay apart), shuffled."""
    x, y = digits(75)
    x, y = torch.cat([x, x]), np.concatenate([y, (y + 1) % 10])
    x[[3, 40]] = float("nan")
    order = np.random.default_rng(0).permutation(n)
    return x[order], y[order]


def mlp(depth=6, width=24):
    layers = [nn.Flatten(), nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(width, 10))


STYLES = {
    "resnet": ResNetStyle, "mobilenetv3": MobileNetV3Style, "efficientnet": EfficientNetStyle,
    "convnext": ConvNeXtStyle, "vit": ViTStyle, "functional": FunctionalNet, "mlp": mlp,
}


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("options", [
    dict(inference_batch_size=64, nonfinite="keep"),  # 64, 64, 22: a short last pass
    dict(inference_batch_size=150, layers="all", weight_amplitude="layer", nonfinite="exclude",
         learning_rate=0.5, batch_size=2),  # per-layer w: several transforms share no block
    dict(inference_batch_size=7, layers="blocks", update_format="bfloat16",
         nonfinite="keep"),
])
def test_taps_consumed_in_their_hooks_give_the_cloning_path_report(style, options, monkeypatch):
    model, (x, y) = STYLES[style](), repeated_digits()
    if style == "mlp" and options.get("layers") == "blocks":  # it has no repeated blocks
        options = dict(options, layers=None)
    report = audit(model, x, y, n_samples=None, **options)
    with monkeypatch.context() as patch:
        previous_path(patch)
        before = audit(model, x, y, n_samples=None, **options)
    assert_same_report(report, before)
    assert max(r.largest_bundle for r in report) > 1


@pytest.mark.parametrize("case", ["float64", "half", "threshold", "loader", "tiny blocks"])
def test_every_stream_path_gives_the_cloning_path_report(case, monkeypatch):
    from bundlelab.streaming import StreamBatcher

    model, (x, y) = mlp(), repeated_digits()
    data, labels, options = x, y, dict(inference_batch_size=32, nonfinite="keep")
    if case == "float64":
        model, data = model.double(), x.double()
    elif case == "half":  # float16 rows: streamed at once, not gathered into blocks
        model, data = model.half(), x.half()
    elif case == "threshold":
        options["mode"] = "threshold"
    elif case == "loader":  # labels carried by the batches (strings), batches kept
        dataset = torch.utils.data.TensorDataset(x, torch.as_tensor(y))
        data = torch.utils.data.DataLoader(dataset, batch_size=40)
        labels = None
    else:  # blocks of one batch, a budget of one block: blocks retired as new ones start
        init = StreamBatcher.__init__
        monkeypatch.setattr(StreamBatcher, "__init__", lambda self, streams, **kwargs: init(
            self, streams, **kwargs, direct_bytes=1 << 14, block_bytes=1, budget_bytes=1))
    report = audit(model, data, labels, n_samples=None, **options)
    with monkeypatch.context() as patch:
        previous_path(patch)
        before = audit(model, data, labels, n_samples=None, **options)
    assert_same_report(report, before)
