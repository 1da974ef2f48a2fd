"""Keras adapter on models this project did not write: nested models, gating branches, blocks,
the update format of mixed precision, and the selection summary.

Keras runs on its torch backend here (a KERAS_BACKEND set beforehand wins).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

from keras import layers  # noqa: E402

from bundlelab import BundleLabError, find_bundles  # noqa: E402
from bundlelab.adapters.keras import KerasAdapter, audit, build_model  # noqa: E402
from bundlelab.datasets import load_dataset  # noqa: E402
from bundlelab.spec import conv_net, fully_connected, measured_layers  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.x_train.transpose(0, 2, 3, 1).copy(), data.y_train  # NHWC, Keras' default


def _numpy(array):
    return keras.ops.convert_to_numpy(array)


def _outputs(model, x, names):
    adapter = KerasAdapter(layers=names)
    batches = list(adapter.iter_layer_outputs(model, x, layers=names, inference_batch_size=97))
    return {name: np.concatenate([_numpy(b[name]) for b in batches]) for name in names}


def _inverted_residual(x, block_id, filters, stride, expansion=4, se=False):
    """MobileNetV2's block (MobileNetV3's with ``se``): expand 1x1, ReLU6, depthwise 3x3,
    ReLU6, [squeeze-excitation,] project 1x1 (linear), add when the shape is kept."""
    prefix = f"block_{block_id}_"
    h = layers.Conv2D(x.shape[-1] * expansion, 1, use_bias=False, name=prefix + "expand")(x)
    h = layers.BatchNormalization(name=prefix + "expand_BN")(h)
    h = layers.ReLU(6.0, name=prefix + "expand_relu")(h)
    h = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False,
                               name=prefix + "depthwise")(h)
    h = layers.BatchNormalization(name=prefix + "depthwise_BN")(h)
    h = layers.ReLU(6.0, name=prefix + "depthwise_relu")(h)
    if se:
        s = layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "se_squeeze")(h)
        s = layers.Conv2D(4, 1, activation="relu", name=prefix + "se_reduce")(s)
        s = layers.Conv2D(h.shape[-1], 1, name=prefix + "se_expand")(s)
        s = layers.Activation("hard_sigmoid", name=prefix + "se_gate")(s)
        h = layers.Multiply(name=prefix + "se_excite")([h, s])
    h = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(h)
    h = layers.BatchNormalization(name=prefix + "project_BN")(h)
    if stride == 1 and x.shape[-1] == filters:
        h = layers.Add(name=prefix + "add")([x, h])
    return h


def _mobilenet_style(name="base", se=False):
    """A small MobileNetV2-style Functional model (MobileNetV3-style with ``se``)."""
    inputs = keras.Input((8, 8, 1))
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="Conv1")(inputs)
    h = layers.BatchNormalization(name="bn_Conv1")(h)
    h = layers.ReLU(6.0, name="Conv1_relu")(h)
    for block_id, (filters, stride) in enumerate([(8, 1), (8, 1), (16, 2), (16, 1)], start=1):
        h = _inverted_residual(h, block_id, filters, stride, se=se)
    h = layers.ReLU(6.0, name="out_relu")(
        layers.BatchNormalization(name="Conv_1_bn")(layers.Conv2D(32, 1, name="Conv_1")(h))
    )
    return keras.Model(inputs, h, name=name)


BLOCK_ACTIVATIONS = [
    f"block_{i}_{part}_relu" for i in range(1, 5) for part in ("expand", "depthwise")
]
MOBILENET_DEFAULT = ["Conv1_relu", *BLOCK_ACTIVATIONS, "out_relu"]


# -- nested models -----------------------------------------------------------------------------


def test_transfer_learning_pattern_taps_the_base_model_inside(digits):
    """Sequential([Input, base, GlobalAveragePooling2D, Dense]) used to fail with "has no
    hidden layer that ends in a non-linearity": the base model's layers are now taps."""
    x, y = digits
    keras.utils.set_random_seed(0)
    base = _mobilenet_style()
    model = keras.Sequential([keras.Input((8, 8, 1)), base, layers.GlobalAveragePooling2D(),
                              layers.Dense(10, name="logits")])
    report = audit(model, x, y, n_samples=600)
    assert report.names == [f"base/{name}" for name in MOBILENET_DEFAULT]
    # each tap is the base model's own layer output, computed through the base model alone
    names = ["base/block_2_add", "base/block_3_depthwise_relu", "base/out_relu"]
    tapped = _outputs(model, x, names)
    for name in names:
        inner = keras.Model(base.input, base.get_layer(name.split("/")[1]).output)
        expected = _numpy(inner(x, training=False))
        np.testing.assert_array_equal(tapped[name], expected)
    reference = find_bundles(tapped["base/out_relu"][np.sort(
        np.random.default_rng(0).choice(len(x), 600, replace=False))],
        y[np.sort(np.random.default_rng(0).choice(len(x), 600, replace=False))],
        weight_amplitude=report.params["weight_amplitude"], batch_size=64)
    assert report["base/out_relu"].n_bundles == reference.n_bundles
    assert np.array_equal(report["base/out_relu"].bundle_ids, reference.bundle_ids)
    # the base model's layers appear once (no node added to the user's layers)
    assert len(base.get_layer("out_relu")._inbound_nodes) == 1


def test_sequential_inside_functional_matches_a_numpy_recomputation(digits):
    x, y = digits[0].reshape(len(digits[0]), -1)[:400], digits[1][:400]
    keras.utils.set_random_seed(1)
    mlp = keras.Sequential([layers.Dense(24, activation="relu", name="h1"),
                            layers.Dense(3, activation="relu", name="h2")], name="mlp")
    inputs = keras.Input((64,))
    hidden = layers.Dense(16, activation="tanh", name="fc")(mlp(inputs))
    model = keras.Model(inputs, layers.Dense(10, name="logits")(hidden))
    report = audit(model, x, y, n_samples=None)
    assert report.names == ["mlp/h1", "mlp/h2", "fc"]
    k1, b1, k2, b2 = mlp.get_weights()
    h1 = np.maximum(x.astype(np.float64) @ k1 + b1, 0)
    h2 = np.maximum(h1 @ k2 + b2, 0)
    tapped = _outputs(model, x, ["mlp/h1", "mlp/h2"])
    np.testing.assert_allclose(tapped["mlp/h1"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tapped["mlp/h2"], h2, rtol=1e-5, atol=1e-5)
    assert report["mlp/h2"].n_conflicting > 0  # a 3-unit ReLU layer: samples collide


def test_deeper_nesting_shared_calls_and_selection_by_name_glob_and_class():
    inner = keras.Sequential([keras.Input((6,)), layers.Dense(6, name="d"), layers.ReLU(name="r")],
                             name="inner")
    mid_in = keras.Input((6,))
    mid = keras.Model(mid_in, layers.Dense(6, activation="elu", name="e")(inner(mid_in)),
                      name="mid")
    inputs = keras.Input((6,))
    a = mid(inputs)
    b = mid(layers.Dense(6, name="between")(a), training=False)  # the same model called twice
    model = keras.Model(inputs, layers.Dense(2, name="out")(layers.Concatenate()([a, b])))
    adapter = KerasAdapter()
    assert adapter.layer_names(model) == [
        "mid/inner/r", "mid/e", "mid:2/inner/r", "mid:2/e",
    ]
    assert KerasAdapter(layers="mid/inner/r").layer_names(model) == ["mid/inner/r"]
    assert KerasAdapter(layers="mid:2/*").layer_names(model) == [
        "mid:2/inner/d", "mid:2/inner/r", "mid:2/inner", "mid:2/e",
    ]
    assert KerasAdapter(layers=layers.ReLU).layer_names(model) == ["mid/inner/r", "mid:2/inner/r"]
    assert KerasAdapter(layers="*/d").layer_names(model) == ["mid/inner/d", "mid:2/inner/d"]
    with pytest.raises(BundleLabError, match="did you mean 'mid/inner/r'") as e:
        KerasAdapter(layers="mid/inner/relu").layer_names(model)
    assert "\n" not in str(e.value)
    # the second call taps the second call's values, not the first's
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    out = _outputs(model, x, ["mid/e", "mid:2/e", "between"])
    second = _numpy(mid(keras.ops.convert_to_tensor(out["between"])))
    np.testing.assert_allclose(out["mid:2/e"], second, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out["mid/e"], out["mid:2/e"])


def test_layer_weight_amplitude_of_a_nested_activation_looks_outside_the_nested_model():
    acts = keras.Sequential([layers.ReLU(name="first")], name="acts")
    inputs = keras.Input((4,))
    dense = layers.Dense(4, name="d0", kernel_initializer="ones",
                         bias_initializer=keras.initializers.Constant(3.0))
    model = keras.Model(inputs, layers.Dense(2, name="out")(acts(dense(inputs))))
    adapter = KerasAdapter()
    # the ReLU's own graph starts at the nested model's input: its nearest weights are d0's
    assert adapter.layer_weight_amplitudes(model, adapter.taps(model)) == {"acts/first": 3.0}


# -- gating branches, attention, custom activations ------------------------------------------


def test_default_leaves_out_squeeze_excitation_gates_and_all_keeps_them(digits, capsys):
    x, y = digits
    keras.utils.set_random_seed(2)
    model = _mobilenet_style(se=True)
    report = audit(model, x, y, n_samples=300)
    assert report.names == MOBILENET_DEFAULT[:-1]  # out_relu is the model's output here
    summary = ("9 activations tapped; 8 squeeze-excitation gate activations left out "
               "(layers='all' keeps them)")
    assert report.params["selection"] == summary
    assert capsys.readouterr().err.count("bundlelab: " + summary) == 1
    everything = audit(model, x, y, n_samples=300, layers="all")
    gates = [f"block_{i}_se_{part}" for i in range(1, 5) for part in ("reduce", "gate")]
    assert set(everything.names) - set(report.names) == set(gates)
    assert "gating branches included" in everything.params["selection"]
    assert capsys.readouterr().err == ""  # an explicit choice is not announced


def test_attention_softmax_weights_are_left_out_and_custom_activations_counted():
    class GELU(keras.layers.Layer):  # an activation that does not subclass a Keras one
        def call(self, inputs):
            return keras.activations.gelu(inputs)

    tokens = keras.Input((8, 8))
    q, k, v = (layers.Dense(8, name=n)(tokens) for n in ("q", "k", "v"))
    scores = keras.ops.matmul(q, keras.ops.transpose(k, (0, 2, 1)))
    weights = layers.Softmax(name="attn_softmax")(scores)
    mixed = keras.ops.matmul(layers.Dropout(0.1, name="attn_drop")(weights), v)
    h = GELU(name="mlp_gelu")(layers.Dense(16, name="mlp_in")(mixed))
    h = layers.Dense(8, activation="swish", name="mlp_out")(h)
    model = keras.Model(tokens, layers.Dense(3, name="head")(layers.Flatten()(h)))
    selection = KerasAdapter().selection(model)
    assert [tap.name for tap in selection.taps] == ["mlp_gelu", "mlp_out"]
    assert selection.summary.endswith(
        "1 attention softmax weight left out (layers='all' keeps them)"
    )
    assert KerasAdapter(layers="all").layer_names(model) == ["attn_softmax", "mlp_gelu", "mlp_out"]


def test_a_gate_at_1x1_spatial_size_is_found_by_its_global_pooling():
    """Late squeeze-excitation blocks of a small input run at 1x1: the gate has the main
    path's shape (no broadcast), but its branch squeezes with a global pooling."""
    inputs = keras.Input((2, 2, 3))
    h = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    s = layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(h)
    s = layers.Dense(2, activation="relu", name="reduce")(s)
    s = layers.Dense(8, activation="sigmoid", name="expand")(s)
    h = layers.Multiply(name="excite")([h, s])
    h = layers.Dense(4, activation="relu", name="after")(h)
    gated = layers.Multiply(name="glu")([h, layers.Dense(4, activation="sigmoid", name="g")(h)])
    model = keras.Model(inputs, layers.Dense(2, name="head")(layers.Flatten()(gated)))
    assert tuple(h.shape[1:3]) == (1, 1)
    # a product of equals (a gated linear unit) is not a squeeze-excitation gate
    assert KerasAdapter().layer_names(model) == ["conv", "after", "g"]


def test_activations_written_as_products_are_tapped_once_at_the_product():
    inputs = keras.Input((8,))
    h = layers.Dense(8, name="d1")(inputs)
    swish = layers.Multiply(name="swish")([h, layers.Activation("sigmoid", name="sig")(h)])
    h = layers.Dense(8, name="d2")(swish)
    hard_swish = h * (layers.ReLU(6.0, name="relu6")(h + 3.0) / 6.0)  # keras.ops calls
    model = keras.Model(inputs, layers.Dense(2, name="head")(layers.Dense(8, name="d3")(
        hard_swish)))
    taps = KerasAdapter().taps(model)
    assert [tap.name for tap in taps][:1] == ["swish"] and len(taps) == 2
    assert taps[1].tensor is hard_swish
    assert KerasAdapter(layers="all").layer_names(model) == [tap.name for tap in taps]


# -- blocks ------------------------------------------------------------------------------------


def test_blocks_from_numbered_names_inside_a_nested_model():
    base = _mobilenet_style()
    model = keras.Sequential([keras.Input((8, 8, 1)), base, layers.GlobalAveragePooling2D(),
                              layers.Dense(10)])
    selection = KerasAdapter(layers="blocks").selection(model)
    assert [tap.name for tap in selection.taps] == [
        "base/block_1_add", "base/block_2_add", "base/block_3_project_BN", "base/block_4_add",
    ]
    assert selection.summary == (
        "4 block outputs tapped (the last layer of each 'block_#_*' group in 'base')"
    )


def test_blocks_from_repeated_sub_models_and_a_one_line_error_without_blocks():
    def block(i):
        return keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(8)],
                                name=f"unit{i}")

    inputs = keras.Input((8,))
    h = inputs
    for i in range(3):
        h = layers.ReLU(name=f"sum_relu{i}")(layers.Add()([h, block(i)(h)]))
    model = keras.Model(inputs, layers.Dense(2)(h))
    names = KerasAdapter(layers="blocks").layer_names(model)
    assert names == ["unit0", "unit1", "unit2"]
    # ConvNeXt's style: blocks known by their names, each summed with its input outside them
    # ("x + block(x)"), and two repeated downsampling Sequentials that are not the blocks
    inputs = keras.Input((8,))
    h = inputs
    for stage in range(2):
        h = keras.Sequential([layers.LayerNormalization(), layers.Dense(8)],
                             name=f"downsample_{stage}")(h)
        for block in range(2):
            prefix = f"stage_{stage}_block_{block}_"
            g = layers.Dense(16, activation="gelu", name=prefix + "pw1")(h)
            h = h + layers.Dense(8, name=prefix + "pw2")(g)
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    blocks = KerasAdapter(layers="blocks").selection(model)
    sums = [tap for tap in blocks.taps if type(tap.operation).__name__ == "Add"]
    assert len(blocks.taps) == len(sums) == 4
    assert [tap.node.parent_nodes[1].operation.name for tap in sums] == [
        f"stage_{s}_block_{b}_pw2" for s in range(2) for b in range(2)
    ]
    assert "'stage_#_block_#_*'" in blocks.summary

    mlp = keras.Sequential([keras.Input((8,)), layers.Dense(8, activation="relu"),
                            layers.Dense(8, activation="relu"), layers.Dense(2)])
    with pytest.raises(BundleLabError, match="has no repeated blocks.*layers=") as e:
        KerasAdapter(layers="blocks").layer_names(mlp)
    assert "\n" not in str(e.value)


# -- the paper's own families keep their layers ----------------------------------------------


@pytest.mark.parametrize("spec", [
    fully_connected(8, 3, input_shape=(1, 8, 8), n_classes=10),
    conv_net(4, residual=False, width_multiplier=0.125, input_shape=(1, 8, 8)),
    conv_net(10, residual=True, width_multiplier=0.125, input_shape=(1, 8, 8)),
], ids=["fc", "conv", "resnet"])
def test_specs_built_here_keep_todays_default_layers(spec):
    names = KerasAdapter().layer_names(build_model(spec, seed=0))
    stem = ["stem_relu"] if any(node.id == "stem_relu" for node in spec.nodes) else []
    assert names == stem + measured_layers(spec)


# -- the update format of mixed precision ----------------------------------------------------


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_mixed_float16_updates_float32_variables(mixed_float16, digits):
    x, y = digits[0].reshape(len(digits[0]), -1), digits[1]
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((64,)), layers.Dense(32, activation="relu", name="h"),
                              layers.Dense(10, name="logits", dtype="float32")])
    adapter = KerasAdapter()
    assert adapter.update_format(model) == "float32"
    tapped = _outputs(model, x[:10], ["h"])
    assert tapped["h"].dtype == np.float16  # float16 activations, float32 master weights
    report = audit(model, x, y, n_samples=512)
    if "update_format" not in report.params:
        pytest.skip("the core does not take an update format yet")
    assert report["h"].update_format == "float32"
    assert report.params["sources"]["update_format"] == "model parameters"
    assert report.params["sources"]["learning_rate"] == "default"
    assert report.params["sources"]["batch_size"] == "default"
    # float32 updates resolve what float16 ones cannot: 512 digits, hardly any bundled
    low = audit(model, x, y, n_samples=512, update_format="activations")
    assert report["h"].n_bundles > low["h"].n_bundles


def test_a_float16_model_updates_in_float16():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="relu",
                                                              dtype="float16"),
                              layers.Dense(2)])
    assert KerasAdapter().update_format(model) == "float32"  # the widest: the float32 head
    half = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="relu",
                                                             dtype="float16")])
    assert KerasAdapter().update_format(half) == "float16"
