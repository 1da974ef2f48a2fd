"""Keras adapter: taps the right layers, matches a numpy recomputation and PyTorch, reports errors.

Keras runs on its torch backend here, so no TensorFlow is needed (a KERAS_BACKEND set beforehand
wins: the file also passes on the JAX backend).
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

# Keras' own get_weights/set_weights/fit call np.array() on torch tensors, which numpy 2 warns
# about; bundlelab's adapter avoids that path (it hands torch tensors to the core as they are).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

from keras import layers  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import bundlelab  # noqa: E402
from bundlelab import BundleLabError, find_bundles  # noqa: E402
from bundlelab.adapters import get_adapter, measure_bundles  # noqa: E402
from bundlelab.adapters.keras import BundleCallback, KerasAdapter, audit  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target


def _outputs(model, x, names=None, inference_batch_size=128):
    """Each tapped layer's outputs over x, concatenated over batches."""
    adapter = KerasAdapter(layers=names)
    names = adapter.layer_names(model, x)
    batches = list(adapter.iter_layer_outputs(
        model, x, layers=names, inference_batch_size=inference_batch_size
    ))
    return {name: np.concatenate([_numpy(b[name]) for b in batches]) for name in names}


def _numpy(array):
    return array.numpy() if hasattr(array, "numpy") else array  # torch backend: torch tensors


def _assert_same_bundles(first, second):
    """Two LayerResults describe the same partition and the same numbers."""
    assert np.array_equal(first.bundle_ids, second.bundle_ids)
    assert (first.n_bundles, first.n_conflicting, first.largest_bundle) == (
        second.n_bundles, second.n_conflicting, second.largest_bundle
    )
    assert first.entropy == second.entropy


def _max_abs_weight(arrays):
    return float(max(np.abs(a).max() for a in arrays))


def _quarters(rng, shape, limit):
    """Multiples of 1/4 in [-limit, limit], exact in float32.

    With inputs in {0, 1, 2, 3}, every product and every partial sum in the networks below is a
    multiple of 1/64 (three layers of quarters) of magnitude below 2**18 (worst case: 16 * 3 + 1
    after one layer, 32 * 49 + 1 after two, 32 * 1569 + 1 after three; the CNN stays below that
    as well), i.e. an integer below 2**24 times 2**-6: float32 holds every intermediate exactly,
    so no result depends on the summation order, on blocking, or on FMA."""
    return (rng.integers(-4 * limit, 4 * limit + 1, size=shape) / 4).astype(np.float32)


# -- against a numpy recomputation -------------------------------------------------------------


def test_sequential_mlp_matches_numpy_recomputation(digits):
    x, y = digits[0][:400], digits[1][:400]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        layers.Dense(32, activation="relu", name="fc1"),
        layers.Dense(16, activation="relu", name="fc2"),
        layers.Dense(3, activation="relu", name="fc3"),  # narrow: many all-zero rows bundle
        layers.Dense(10, name="logits"),
    ])
    report = audit(model, x, y, n_samples=400, batch_size=64, inference_batch_size=96)
    assert report.names == ["fc1", "fc2", "fc3"]  # after the ReLU, never the logits

    weights = model.get_weights()
    w = _max_abs_weight(weights)
    assert report.params["weight_amplitude"] == w
    tapped = _outputs(model, x)
    h = x
    for name, kernel, bias in zip(report.names, weights[0::2], weights[1::2]):
        h = np.maximum(h @ kernel + bias, 0).astype(np.float32)
        # numpy's and torch's sgemm may add the products in different orders: the last bit of
        # an activation may differ, hence a tolerance here.  The bundles still agree exactly:
        # they come from rows that are exactly equal in both (all-zero rows of the narrow
        # layer), and a last-bit change of a moves t = w - a*lr/|B| by ~1e-12 * |a|, far below
        # the float32 spacing of t near w, so it cannot make two different rows equal.
        np.testing.assert_allclose(tapped[name], h, rtol=1e-5, atol=1e-6)
        expected = find_bundles(h, y, weight_amplitude=w, batch_size=64, layer=name)
        _assert_same_bundles(report[name], expected)
    assert report["fc3"].is_conflicting and not report["fc1"].is_conflicting


def _conv_same(x, kernel, bias):
    """3x3 'same' convolution, channels last, in float64 (exact for the data used)."""
    n, height, width, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, height, width, kernel.shape[3]))
    for u in range(3):
        for v in range(3):
            out += padded[:, u:u + height, v:v + width, :] @ kernel[u, v]
    return out + bias


def _functional_cnn(weights=None):
    inputs = keras.Input((8, 8, 1))
    c1 = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    c2 = layers.Conv2D(4, 3, padding="same", name="conv2")(c1)  # linear: not tapped
    block = layers.ReLU(name="block_relu")(layers.Add(name="add")([c1, c2]))
    fc = layers.Dense(8, activation="relu", name="fc")(layers.Flatten(name="flatten")(block))
    model = keras.Model(inputs, layers.Dense(3, name="logits")(fc))
    if weights is not None:
        model.set_weights(weights)
    return model


def _exact_cnn_weights(rng):
    shapes = [(3, 3, 1, 4), (4,), (3, 3, 4, 4), (4,), (256, 8), (8,), (8, 3), (3,)]
    limits = [1, 1, 1, 1, 0.5, 0.5, 1, 1]
    return [_quarters(rng, shape, limit) for shape, limit in zip(shapes, limits)]


def _image_data(rng, n=240):
    """Small-integer 8x8 images; the last 40 repeat earlier ones under another label."""
    x = rng.integers(0, 4, size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    x[-40:] = x[:40]
    y[-40:] = (y[:40] + 1) % 3
    return x, y


def test_functional_cnn_matches_numpy_recomputation_exactly(rng):
    weights = _exact_cnn_weights(rng)
    model = _functional_cnn(weights)
    x, y = _image_data(rng)
    report = audit(model, x, y, learning_rate=1e-2, batch_size=64)
    assert report.names == ["conv1", "block_relu", "fc"]

    k1, b1, k2, b2, kf, bf = (a.astype(np.float64) for a in weights[:6])
    c1 = np.maximum(_conv_same(x, k1, b1), 0)
    block = np.maximum(c1 + _conv_same(c1, k2, b2), 0)
    fc = np.maximum(block.reshape(len(x), -1) @ kf + bf, 0)
    tapped = _outputs(model, x, inference_batch_size=64)
    w = _max_abs_weight(weights)
    for name, expected in zip(report.names, [c1, block, fc]):
        assert np.array_equal(tapped[name], expected)  # bit for bit: the data is exact
        _assert_same_bundles(
            report[name],
            find_bundles(expected.astype(np.float32), y, weight_amplitude=w,
                         learning_rate=1e-2, batch_size=64),
        )
        assert report[name].n_conflicting == 40  # the repeated images, and only them


# -- the same network in PyTorch and in Keras --------------------------------------------------


def _torch_mlp(torch, sizes):
    torch.manual_seed(0)
    linears = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]

    def forward(x):
        """Hidden activations after each ReLU, computed by torch itself."""
        out, h = [], x
        for linear in linears[:-1]:
            h = torch.relu(linear(h))
            out.append(h.detach().numpy())
        return out

    return linears, forward


def _keras_copy_of_mlp(linears):
    """Keras Dense layers with torch's weights: kernel = weight.T (torch computes x @ W.T + b)."""
    model = keras.Sequential(
        [keras.Input((linears[0].in_features,))]
        + [layers.Dense(lin.out_features, activation="relu") for lin in linears[:-1]]
        + [layers.Dense(linears[-1].out_features)]
    )
    model.set_weights([
        t for lin in linears for t in (lin.weight.detach().numpy().T, lin.bias.detach().numpy())
    ])
    return model


@pytest.mark.parametrize("data", ["exact", "realistic"])
def test_mlp_in_torch_and_keras_has_the_same_bundles(data, digits, rng):
    torch = pytest.importorskip("torch")
    if data == "exact":
        linears, torch_forward = _torch_mlp(torch, [16, 32, 32, 32, 4])
        with torch.no_grad():
            for lin in linears:
                lin.weight.copy_(torch.from_numpy(_quarters(rng, tuple(lin.weight.shape), 1)))
                lin.bias.copy_(torch.from_numpy(_quarters(rng, tuple(lin.bias.shape), 1)))
        x = rng.integers(0, 4, size=(300, 16)).astype(np.float32)
        y = rng.integers(0, 4, size=300)
        x[-30:], y[-30:] = x[:30], (y[:30] + 1) % 4  # conflicts at every layer
    else:
        # torch's own initialisation on real data, and a 3-unit layer whose all-zero rows
        # bundle samples of different digits
        linears, torch_forward = _torch_mlp(torch, [64, 32, 32, 3, 10])
        x, y = digits[0][:500], digits[1][:500]
    model = _keras_copy_of_mlp(linears)
    with torch.no_grad():
        torch_acts = torch_forward(torch.from_numpy(x))
    w = _max_abs_weight([p.detach().numpy() for lin in linears for p in lin.parameters()])
    assert KerasAdapter().weight_amplitude(model) == w

    report = audit(model, x, y, learning_rate=1e-3, batch_size=64, n_samples=len(x))
    assert len(report) == len(torch_acts)
    for result, torch_act, keras_act in zip(report, torch_acts, _outputs(model, x).values()):
        if data == "exact":
            # every value is exact in float32 (see _quarters): both frameworks give the same bits
            assert np.array_equal(torch_act, keras_act)
        else:
            # torch.nn.Linear (addmm, bias fused) and Keras (matmul, then + bias) may round the
            # last bit differently, and do: on the torch backend a few hundred values of the
            # 3-unit layer differ by one ulp.  The bundles cannot notice (see the numpy MLP test).
            np.testing.assert_allclose(torch_act, keras_act, rtol=1e-5, atol=1e-6)
        from_torch = find_bundles(
            torch_act, y, weight_amplitude=w, learning_rate=1e-3, batch_size=64
        )
        assert (result.n_bundles, result.n_conflicting, result.entropy) == (
            from_torch.n_bundles, from_torch.n_conflicting, from_torch.entropy
        )
        assert np.array_equal(result.bundle_ids, from_torch.bundle_ids)
    assert report.first_conflicting is not None  # the numbers compared are not all trivial


@pytest.mark.parametrize("data", ["exact", "realistic"])
def test_cnn_in_torch_and_keras_has_the_same_bundles(data, rng):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    fc, logits = nn.Linear(256, 8), nn.Linear(8, 3)
    x, y = _image_data(rng)  # NHWC, Keras' default layout
    if data == "exact":
        with torch.no_grad():
            for module, limit in [(conv1, 1), (conv2, 1), (fc, 0.5), (logits, 1)]:
                for p in module.parameters():
                    p.copy_(torch.from_numpy(_quarters(rng, tuple(p.shape), limit)))
    else:
        x = x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
        x[-40:] = x[:40]

    def torch_forward(images_nchw):
        c1 = torch.relu(conv1(images_nchw))
        block = torch.relu(c1 + conv2(c1))
        return [c1, block, torch.relu(fc(block.flatten(1)))]

    with torch.no_grad():
        nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        torch_acts = [t.numpy() for t in torch_forward(nchw)]

    # torch: conv weight (out, in, kh, kw), NCHW activations, flatten in (C, H, W) order.
    # Keras: kernel (kh, kw, in, out), NHWC activations, flatten in (H, W, C) order, so the
    # first Dense kernel's rows are permuted from torch's (C, H, W) order to (H, W, C).
    def numpy_of(p):
        return p.detach().numpy()

    fc_kernel = numpy_of(fc.weight).reshape(8, 4, 8, 8).transpose(2, 3, 1, 0).reshape(256, 8)
    model = _functional_cnn([
        numpy_of(conv1.weight).transpose(2, 3, 1, 0), numpy_of(conv1.bias),
        numpy_of(conv2.weight).transpose(2, 3, 1, 0), numpy_of(conv2.bias),
        fc_kernel, numpy_of(fc.bias), numpy_of(logits.weight).T, numpy_of(logits.bias),
    ])
    w = _max_abs_weight([numpy_of(p) for m in (conv1, conv2, fc, logits) for p in m.parameters()])
    report = audit(model, x, y, batch_size=64)
    keras_acts = _outputs(model, x)
    for result, torch_act, keras_act in zip(report, torch_acts, keras_acts.values()):
        nhwc = torch_act.transpose(0, 2, 3, 1) if torch_act.ndim == 4 else torch_act
        if data == "exact":
            assert np.array_equal(nhwc, keras_act)
        else:
            np.testing.assert_allclose(nhwc, keras_act, rtol=1e-5, atol=1e-5)
        # Bundles compare rows for equality, which does not depend on the order of a row's
        # values: each framework's activations are measured in its own layout.
        from_torch = find_bundles(torch_act, y, weight_amplitude=w, batch_size=64)
        assert (result.n_bundles, result.n_conflicting, result.entropy) == (
            from_torch.n_bundles, from_torch.n_conflicting, from_torch.entropy
        )
        assert result.n_conflicting >= 1


# -- conflicting and healthy networks ----------------------------------------------------------


def _mlp(dead_layer: bool):
    keras.utils.set_random_seed(1)
    stack = [keras.Input((64,)), layers.Dense(32, activation="relu", name="fc1"),
             layers.Dense(32, activation="relu", name="fc2")]
    if dead_layer:  # zero weights and a negative bias: ReLU(-1) = 0 for every sample
        stack.append(layers.Dense(8, activation="relu", name="dead", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(-1.0)))
    stack += [layers.Dense(16, activation="relu", name="fc4"), layers.Dense(10, name="logits")]
    return keras.Sequential(stack)


def test_a_dead_layer_is_reported_conflicting_and_a_healthy_net_is_not(digits):
    x, y = digits
    report = audit(_mlp(dead_layer=True), x, y, n_samples=512)
    assert report.names == ["fc1", "fc2", "dead", "fc4"]
    assert report.first_conflicting.layer == "dead"
    assert report["dead"].fully_conflicting and report["fc4"].fully_conflicting
    subset = np.sort(np.random.default_rng(0).choice(len(x), 512, replace=False))
    counts = np.bincount(y[subset])
    p = counts[counts > 0] / 512
    assert report["dead"].entropy == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    assert report["fc1"].entropy == report["fc2"].entropy == 0.0

    healthy = audit(_mlp(dead_layer=False), x, y, n_samples=512)
    assert healthy.first_conflicting is None
    assert all(result.entropy == 0.0 and result.n_bundles == 512 for result in healthy)


# -- training ----------------------------------------------------------------------------------


def test_callback_records_every_epoch_with_the_optimizer_learning_rate(digits, tmp_path, capsys):
    x, y = digits
    model = _mlp(dead_layer=False)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    path = tmp_path / "history.json"
    every_epoch = BundleCallback(x, y, n_samples=256, batch_size=64, path=path)
    every_second = BundleCallback(x, y, n_samples=256, batch_size=64, every=2, layers="fc2")
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * 0.5**epoch)
    model.fit(x, y, batch_size=64, epochs=3, verbose=0,
              callbacks=[halve, every_epoch, every_second])

    tracker = every_epoch.tracker
    assert isinstance(tracker, bundlelab.BundleTracker)
    assert tracker.steps == [1, 2, 3]
    assert tracker.layer_names == ["fc1", "fc2", "fc4"]
    assert tracker.entropy_over_time().shape == (3, 3)
    assert [r.params["learning_rate"] for r in tracker.reports] == [0.01, 0.005, 0.0025]
    assert all(r.params["batch_size"] == 64 for r in tracker.reports)
    saved = json.loads(path.read_text())
    assert saved["schema"] == "bundlelab.tracker/1" and saved["steps"] == [1, 2, 3]
    assert len(saved["records"]) == 9
    assert every_second.tracker.steps == [2] and every_second.tracker.layer_names == ["fc2"]
    # the default selection is announced once per fit, not per epoch; a chosen one never
    assert capsys.readouterr().err.count("bundlelab: 3 activations tapped") == 1
    assert tracker.reports[-1].params["selection"] == "3 activations tapped"
    assert every_second.tracker.reports[0].params["selection"] == (
        "1 layer tapped, as named by layers="
    )


def test_callback_every_2_measures_after_epochs_2_and_4(digits):
    """t = epochs completed, measured when t % every == 0: with every=2 over 4 epochs the
    callback records t = 2 and 4, as the torch hook and the training loop count; a fit that
    resumes at initial_epoch continues the count."""
    x, y = digits[0][:256], digits[1][:256]
    model = _mlp(dead_layer=False)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    callback = BundleCallback(x, y, every=2, layers="fc2", batch_size=64)
    model.fit(x, y, batch_size=64, epochs=4, verbose=0, callbacks=[callback])
    assert callback.tracker.steps == [2, 4]
    resumed = BundleCallback(x, y, every=2, layers="fc2", batch_size=64)
    model.fit(x, y, batch_size=64, initial_epoch=4, epochs=7, verbose=0, callbacks=[resumed])
    assert resumed.tracker.steps == [6]


# -- layer choice and options ------------------------------------------------------------------


def test_layer_choice_shared_layers_ops_and_the_registry(rng):
    inputs = keras.Input((8,))
    shared = layers.ReLU(name="shared")
    h1 = shared(layers.Dense(16, name="d1")(inputs))
    h2 = shared(layers.Dense(16, name="d2")(h1))
    h3 = keras.ops.relu(layers.Dense(16, name="d3")(h2) + h1)  # keras.ops inside the graph
    h4 = layers.Dense(16, activation="tanh", name="d4")(h3)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax", name="out")(h4))
    # a layer called k times: name, name:2, ..., name:k (the torch adapter's rule)
    assert KerasAdapter().layer_names(model) == ["shared", "shared:2", "relu", "d4"]
    assert KerasAdapter(layers="d*").layer_names(model) == ["d1", "d2", "d3", "d4"]
    assert KerasAdapter(layers=[layers.ReLU, "add"]).layer_names(model) == [
        "shared", "shared:2", "add"
    ]
    # a layer's name selects every call of it, a tap name one call
    assert KerasAdapter(layers="shared").layer_names(model) == ["shared", "shared:2"]
    assert KerasAdapter(layers="shared:2").layer_names(model) == ["shared:2"]
    assert KerasAdapter(layers="shared:2,d4").layer_names(model) == ["shared:2", "d4"]

    x, y = rng.normal(size=(200, 8)).astype(np.float32), rng.integers(0, 3, 200)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    report = audit(model, x, y, batch_size=16)
    assert report.params["learning_rate"] == 0.05 and report.params["batch_size"] == 16
    assert report.params["sources"] == {
        "learning_rate": "optimizer", "batch_size": "given",
        "weight_amplitude": "model parameters", "update_format": "model parameters",
    }
    assert report.params["selection"] == "4 activations tapped"
    via_registry = measure_bundles(get_adapter("keras"), model, x, y, learning_rate=0.05,
                                   batch_size=16)
    for a, b in zip(report, via_registry):
        _assert_same_bundles(a, b)

    per_layer = audit(model, x, y, weight_amplitude="layer")
    own = {
        name: _max_abs_weight(model.get_layer(name).get_weights())
        for name in ["d1", "d2", "d3", "d4"]
    }
    # parameter-free calls take the nearest layer with weights before them (relu: via the add)
    assert per_layer.params["layer_weight_amplitudes"] == {
        "shared": own["d1"], "shared:2": own["d2"], "relu": own["d3"], "d4": own["d4"],
    }
    assert per_layer.params["sources"]["weight_amplitude"] == "model parameters"
    fixed = audit(model, x, y, weight_amplitude=0.25, learning_rate=0.5)
    assert fixed.params["weight_amplitude"] == 0.25
    assert fixed.params["sources"]["weight_amplitude"] == "given"
    assert fixed.params["sources"]["learning_rate"] == "given"
    assert fixed.params["sources"]["batch_size"] == "default"


# -- bad input: one line that says what to do --------------------------------------------------


def _one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_errors_are_one_line(digits):
    x, y = digits[0][:100], digits[1][:100]
    model = _mlp(dead_layer=False)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = layers.Dense(8, activation="relu"), layers.Dense(10)

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    subclassed = Subclassed()
    subclassed(x[:2])
    with pytest.raises(BundleLabError, match="subclassed keras.Model .* Functional API") as e:
        audit(subclassed, x, y)
    assert "bundlelab.analyze_layers" in _one_line(e)

    with pytest.raises(BundleLabError, match=r"has no layer 'fc3': did you mean 'fc.'") as e:
        audit(model, x, y, layers=["fc1", "fc3"])
    _one_line(e)
    with pytest.raises(BundleLabError, match=r"labels of shape \(99,\) for 100 input samples") as e:
        audit(model, x, y[:99])
    _one_line(e)
    with pytest.raises(BundleLabError, match=r"shape \(None, 64\).*got .* shape \(100, 32\)") as e:
        audit(model, x[:, :32], y)
    _one_line(e)
    linear = keras.Sequential([keras.Input((64,)), layers.Dense(8), layers.Dense(10)])
    with pytest.raises(BundleLabError, match="no hidden layer that ends in a non-linearity") as e:
        audit(linear, x, y)
    _one_line(e)
    with pytest.raises(BundleLabError, match="has no hidden Conv2D layer"):
        audit(model, x, y, layers=layers.Conv2D)
    with pytest.raises(BundleLabError, match="'weight_amplitude' parameter must be one of"):
        audit(model, x, y, weight_amplitude="largest")
    with pytest.raises(BundleLabError, match="labels of shape"):
        BundleCallback(x, y[:50])
    with pytest.raises(BundleLabError, match="'mode' parameter must be one of"):
        BundleCallback(x, y, mode="exact")  # at once, not after the first epoch


# -- names: batch_size is |B|, inference_batch_size the forward chunk ----------------------------


def test_batch_size_is_the_training_batch_size_with_the_default_of_every_adapter(digits):
    x, y = digits
    model = _mlp(dead_layer=True)
    assert audit(model, x, y, n_samples=512).params["batch_size"] == 64  # was fit's 32
    report = audit(model, x, y, n_samples=512, batch_size=16)
    assert report.params["batch_size"] == 16  # batch_size was the forward chunk
    callback = BundleCallback(x, y, n_samples=64)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0, callbacks=[callback])
    assert callback.tracker.reports[0].params["batch_size"] == 64


def test_inference_batch_size_only_bounds_memory(digits):
    x, y = digits
    model = _mlp(dead_layer=True)
    reference = audit(model, x, y, n_samples=300, batch_size=16)
    for chunk in (7, 300):
        report = audit(model, x, y, n_samples=300, batch_size=16, inference_batch_size=chunk)
        assert report.params == reference.params
        for a, b in zip(report, reference):
            _assert_same_bundles(a, b)


def test_n_samples_none_measures_all_and_numpy_scalars_are_converted(digits):
    x, y = digits[0][:300], digits[1][:300]
    model = _mlp(dead_layer=False)
    assert all(len(r.bundle_ids) == 300 for r in audit(model, x, y, n_samples=None))
    report = audit(model, x, y, n_samples=np.int64(100), batch_size=np.int64(32),
                   learning_rate=np.float32(0.5), seed=np.int64(1))
    assert type(report.params["batch_size"]) is int and report.params["batch_size"] == 32
    assert type(report.params["learning_rate"]) is float
    assert all(len(r.bundle_ids) == 100 for r in report)
    json.dumps(report.params)


def test_unknown_and_renamed_keywords_are_one_line_errors(digits):
    x, y = digits[0][:100], digits[1][:100]
    model = _mlp(dead_layer=False)
    with pytest.raises(BundleLabError, match="unexpected keyword argument 'train_batch_size'") as e:
        audit(model, x, y, train_batch_size=64)
    _one_line(e)
    with pytest.raises(BundleLabError, match="unexpected keyword argument 'train_batch_size'") as e:
        BundleCallback(x, y, train_batch_size=64)
    _one_line(e)
    with pytest.raises(BundleLabError, match="did you mean 'gamma'") as e:
        audit(model, x, y, gama=1e-8)
    _one_line(e)
    with pytest.raises(BundleLabError, match="KerasAdapter"):
        KerasAdapter("fc1")  # options are keyword-only
    with pytest.raises(BundleLabError, match="'inference_batch_size' parameter"):
        audit(model, x, y, inference_batch_size=0)
    with pytest.raises(BundleLabError, match="'batch_size' parameter"):
        BundleCallback(x, y, batch_size=0)
    with pytest.raises(BundleLabError, match="'every' parameter"):
        BundleCallback(x, y, every=0)
    with pytest.raises(BundleLabError, match="'progress' parameter"):
        audit(model, x, y, progress="yes")


def _import_in_a_fresh_interpreter(setup: str) -> str:
    code = (
        f"{setup}\n"
        "from bundlelab import BundleLabError\n"
        "try:\n"
        "    import bundlelab.adapters.keras\n"
        "except BundleLabError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_missing_keras_is_a_missing_dependency_error_with_the_install_hint():
    message = _import_in_a_fresh_interpreter("import sys; sys.modules['keras'] = None")
    assert message.startswith("MissingDependencyError the Keras adapter requires keras")
    assert message.endswith("pip install 'bundlelab[keras]'`")


def test_a_backend_that_is_not_installed_is_a_missing_dependency_error():
    import importlib.util

    if importlib.util.find_spec("jax") is not None:
        pytest.skip("JAX is installed")
    message = _import_in_a_fresh_interpreter("import os; os.environ['KERAS_BACKEND'] = 'jax'")
    assert message.startswith("MissingDependencyError")
    assert "could not load Keras' backend 'jax'" in message
    assert "set KERAS_BACKEND to an installed one" in message


def test_an_unknown_backend_name_is_one_line():
    message = _import_in_a_fresh_interpreter("import os; os.environ['KERAS_BACKEND'] = 'foo'")
    assert message.startswith("BundleLabError") and "foo" in message
    assert "set KERAS_BACKEND to an installed one" in message
