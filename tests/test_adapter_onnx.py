"""The ONNX adapter and ``bundlelab audit``: models written by others, exact numbers, safe loading."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import bundlelab  # noqa: E402
from bundlelab import BundleLabError  # noqa: E402
from bundlelab.adapters import get_adapter, measure_bundles  # noqa: E402
from bundlelab.adapters.onnx import OnnxAdapter, audit, load_model  # noqa: E402
from bundlelab.cli import run  # noqa: E402

# onnx 1.23 stamps new models with IR version 14; onnxruntime 1.31 reads up to 13.
IR_VERSION = 10


def cli(capsys, *argv):
    """Run the CLI in-process: (exit status, stdout, stderr)."""
    code = run([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def relu(a):
    return np.maximum(a, np.float32(0))


def mlp_graph(weights, biases, *, hidden_names=None, activation="Relu", inputs_dims=("N", None)):
    """x -> (MatMul, Add, activation) per hidden layer -> MatMul -> logits, as onnx.helper writes it."""
    nodes, initializers = [], []
    current = "x"
    hidden_names = hidden_names or [f"h{i}" for i in range(len(weights) - 1)]
    for i, (w, b) in enumerate(zip(weights, biases)):
        initializers += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"add{i}"),
        ]
        current = f"z{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node(activation, [current], [hidden_names[i]], name=f"act{i}"))
            current = hidden_names[i]
    dims = [inputs_dims[0], weights[0].shape[0]]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def numpy_mlp(x, weights, biases):
    """Hidden activations of mlp_graph, in float32."""
    hidden, h = [], x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = relu(h @ w + b)
        hidden.append(h)
    return hidden


# -- a model written by scikit-learn + skl2onnx -----------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y


@pytest.fixture(scope="module")
def sklearn_mlp(digits):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), activation="relu", max_iter=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def to_onnx(clf, x, path):
    from skl2onnx import to_onnx as convert

    model = convert(clf, x[:1], target_opset=17)  # float32 input, ZipMap output left in
    assert model.ir_version <= 10
    onnx.save(model, path)
    return model


def sklearn_hidden(clf, x):
    weights = [w.astype(np.float32) for w in clf.coefs_]
    biases = [b.astype(np.float32) for b in clf.intercepts_]
    return numpy_mlp(x, weights, biases), max(float(np.abs(a).max()) for a in weights + biases)


def test_sklearn_mlp_through_the_cli_matches_find_bundles_on_numpy_activations(
    sklearn_mlp, digits, tmp_path, capsys
):
    x, y = digits
    model = to_onnx(sklearn_mlp, x, tmp_path / "mlp.onnx")
    relus = [node.output[0] for node in model.graph.node if node.op_type == "Relu"]
    assert len(relus) == 2  # skl2onnx writes MatMul, Add, Relu per hidden layer; no fusion
    np.savez(tmp_path / "digits.npz", X=x, labels=y)  # under the model input's name

    code, out, err = cli(capsys, "audit", tmp_path / "mlp.onnx", "--data", tmp_path / "digits.npz",
                         "-f", "json", "--lr", "0.5")
    # stderr holds one line: what the default picked (skl2onnx's output softmax is no layer)
    assert code == 0 and err == "bundlelab: 2 activations tapped (2 Relu)\n"
    data = json.loads(out)
    hidden, w = sklearn_hidden(sklearn_mlp, x)
    assert data["schema"] == "bundlelab.report/1"
    assert data["params"]["weight_amplitude"] == w  # max |value| over every coef and intercept
    assert [record["layer"] for record in data["layers"]] == relus
    # ORT's MLAS GEMM sums in another order than numpy, so the activations agree to rounding
    # only; bundles see values at the resolution of w * lr / |B| (~1e-7 relative), far coarser,
    # so the numbers agree unless two samples straddle a rounding boundary (none do here).
    # The exact, order-independent comparison is the next test.
    ort_outputs = next(OnnxAdapter().iter_layer_outputs(
        str(tmp_path / "mlp.onnx"), x, layers=relus, inference_batch_size=len(x)))
    for record, expected, name in zip(data["layers"], hidden, relus):
        np.testing.assert_allclose(ort_outputs[name], expected, rtol=1e-5, atol=1e-5)
        result = bundlelab.find_bundles(expected, y, learning_rate=0.5, weight_amplitude=w, layer=name)
        assert record == json.loads(json.dumps(result.to_record()))


def test_sklearn_mlp_with_exact_float32_sums_gives_identical_bundles(sklearn_mlp, digits, tmp_path):
    """Weights rounded to multiples of 1/16 and inputs to 1/16: every product and partial sum is
    exactly representable in float32, so any summation order gives the same bits."""
    import copy

    x, y = digits
    clf = copy.deepcopy(sklearn_mlp)
    clf.coefs_ = [np.round(w * 16) / 16 for w in clf.coefs_]
    clf.intercepts_ = [np.round(b * 16) / 16 for b in clf.intercepts_]
    to_onnx(clf, x, tmp_path / "exact.onnx")
    hidden, w = sklearn_hidden(clf, x)
    adapter = OnnxAdapter()
    names = adapter.layer_names(str(tmp_path / "exact.onnx"))
    outputs = next(adapter.iter_layer_outputs(str(tmp_path / "exact.onnx"), x, layers=names,
                                              inference_batch_size=len(x)))
    for name, expected in zip(names, hidden):
        assert np.array_equal(outputs[name], expected)
    # The threshold mode with a coarse gamma forms real, conflicting bundles.
    options = dict(mode="threshold", gamma=2.0, learning_rate=1.0)
    report = measure_bundles(adapter, str(tmp_path / "exact.onnx"), x, y, inference_batch_size=256,
                             batch_size=1, **options)
    assert report.params["weight_amplitude"] == w
    for result, expected in zip(report, hidden):
        reference = bundlelab.find_bundles(expected, y, batch_size=1, **options, layer=result.layer)
        assert result.to_record(include_ids=True) == reference.to_record(include_ids=True)
    assert any(result.n_conflicting for result in report)


def test_python_api_subset_and_registry(sklearn_mlp, digits, tmp_path, capsys):
    x, y = digits
    to_onnx(sklearn_mlp, x, tmp_path / "mlp.onnx")
    adapter = get_adapter("onnx")
    assert isinstance(adapter, OnnxAdapter)
    model = load_model(tmp_path / "mlp.onnx")
    report = measure_bundles(adapter, model, x[:300], y[:300], inference_batch_size=64)
    hidden, w = sklearn_hidden(sklearn_mlp, x[:300])
    for result, expected in zip(report, hidden):
        reference = bundlelab.find_bundles(expected, y[:300], weight_amplitude=w)
        assert (result.n_bundles, result.n_conflicting, result.entropy) == (
            reference.n_bundles, reference.n_conflicting, reference.entropy)

    # --n-samples: a seeded random subset, the same for the same seed; x.npy + labels.npy folder
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "labels.npy", y)
    coarse = ["--mode", "threshold", "--gamma", "2", "--lr", "1", "--batch-size", "1"]  # real bundles
    runs = [cli(capsys, "audit", tmp_path / "mlp.onnx", "--data", folder, "-n", "500", "--seed", seed,
                "-f", "json", *coarse) for seed in (3, 3, 4)]
    assert all(code == 0 for code, _, _ in runs)
    assert runs[0][1] == runs[1][1] and runs[0][1] != runs[2][1]
    assert json.loads(runs[0][1])["layers"][0]["n_samples"] == 500


# -- models built with onnx.helper -------------------------------------------------------------


@pytest.fixture
def dead_layer_model(rng):
    """A healthy ReLU layer, then one whose weights are zero: it outputs relu(bias) for all."""
    weights = [rng.normal(size=(8, 16)).astype(np.float32), np.zeros((16, 4), np.float32),
               rng.normal(size=(4, 3)).astype(np.float32)]
    biases = [rng.normal(size=16).astype(np.float32), np.array([0.5, -1, 2, 0], np.float32),
              np.zeros(3, np.float32)]
    return mlp_graph(weights, biases), weights, biases


def test_constant_layer_is_fully_conflicting_and_healthy_layer_has_zero_entropy(
    dead_layer_model, rng, tmp_path, capsys
):
    model, weights, biases = dead_layer_model
    x = rng.normal(size=(120, 8)).astype(np.float32)
    labels = np.arange(120) % 3
    onnx.save(model, tmp_path / "dead.onnx")
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    code, out, err = cli(capsys, "audit", tmp_path / "dead.onnx", "--data", tmp_path / "data.npz")
    assert code == 0 and err == "bundlelab: 2 activations tapped (2 Relu)\n"
    text = " ".join(out.split())
    assert "the first conflicting layer is h1 (layer 2 of 2)" in text
    assert "From h1 on, every sample is in one single bundle" in text
    marked = [line for line in out.splitlines() if " h1 " in line][0]
    assert marked.lstrip("│| ").startswith(("\u25b6", ">"))

    report = measure_bundles(OnnxAdapter(), model, x, labels)
    healthy, dead = report
    assert healthy.entropy == 0.0 and healthy.n_bundles == 120
    assert dead.fully_conflicting and dead.n_bundles == 1
    assert dead.entropy == pytest.approx(np.log(3))
    assert report.params["weight_amplitude"] == max(float(np.abs(a).max()) for a in weights + biases)


def test_the_tapped_session_sleeps_between_passes_and_leaves_the_model_as_it_was(
    dead_layer_model, rng
):
    """Between passes the audit fingerprints on the same cores: onnxruntime's threads must not
    spin there (a session setting, never a process-wide variable); the taps are added to one
    serialized copy, not to the caller's model."""
    from bundlelab.adapters.onnx import OnnxModel

    model, _, _ = dead_layer_model
    before = model.SerializeToString()
    onnx_model = OnnxModel(model)
    adapter = OnnxAdapter()
    x = rng.normal(size=(20, 8)).astype(np.float32)
    outputs = list(adapter.iter_layer_outputs(onnx_model, x, layers=["h0", "h1"],
                                              inference_batch_size=8))
    assert [o["h1"].shape[0] for o in outputs] == [8, 8, 4]
    session = onnx_model.session(onnx_model.candidate_taps())
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert {"h0", "h1"} <= {o.name for o in session.get_outputs()}
    assert model.SerializeToString() == before


def test_all_nodes_taps_every_float_output_but_never_the_logits(dead_layer_model):
    model, _, _ = dead_layer_model
    assert OnnxAdapter().layer_names(model) == ["h0", "h1"]
    # z2 (the logits) is a graph output; tensors that depend on no input are not layers either.
    assert OnnxAdapter(all_nodes=True).layer_names(model) == ["mm0", "z0", "h0", "mm1", "z1", "h1", "mm2"]


def test_layer_names_may_be_any_string(rng, tmp_path, capsys):
    shapes = [(4, 6), (6, 6), (6, 6), (6, 2)]
    weights = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    biases = [np.zeros(w.shape[1], np.float32) for w in weights]
    # '7' (older exporters name tensors by number) is named after its node
    names = ["block 1/relu[0]: ✓", "block 1/relu0: ✓", "7"]
    model = mlp_graph(weights, biases, hidden_names=names)
    onnx.save(model, tmp_path / "names.onnx")
    x = rng.normal(size=(30, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(30) % 2)
    assert OnnxAdapter().layer_names(model) == [*names[:2], "act2:7"]
    base = ["audit", tmp_path / "names.onnx", "--data", tmp_path / "d.npz"]
    code, out, _ = cli(capsys, *base)
    assert code == 0 and all(name in out for name in [*names[:2], "act2:7"])
    # an exact name is taken literally: as a glob, 'relu[0]' would also match 'relu0'
    code, out, _ = cli(capsys, *base, "-f", "json", "--layers", names[0])
    assert [r["layer"] for r in json.loads(out)["layers"]] == [names[0]]
    code, out, _ = cli(capsys, *base, "-f", "csv", "--layers", "block 1/relu0*,act2:*")
    assert code == 0
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == [names[1], "act2:7"]


def test_weight_amplitude_leaves_out_settings_and_scalars(rng):
    w = np.full((4, 4), 0.5, np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi"), numpy_helper.from_array(np.float32(8.0), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Div", ["m", "scale"], ["d"]),
             helper.make_node("Clip", ["d", "lo", "hi"], ["relu6"]), helper.make_node("Neg", ["relu6"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    adapter = OnnxAdapter()
    assert adapter.layer_names(model) == ["relu6"]  # Clip from 0 is ReLU6
    assert adapter.weight_amplitude(model) == 0.5  # not the Clip bound 6, nor the rank-0 scale 8
    report = measure_bundles(adapter, model, np.ones((4, 4), np.float32), [0, 1, 0, 1], weight_amplitude=2.0)
    assert report.params["weight_amplitude"] == 2.0


# -- a torch model, legacy exporter -------------------------------------------------------------


def _torch_net(torch):
    """Linear/ReLU, Linear/LeakyReLU(1/4), Linear/ReLU6 on a (2, 4, 4) input; weights and inputs
    on a grid of powers of two, so float32 sums are exact in any order."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
        torch.nn.LeakyReLU(0.25), torch.nn.Linear(8, 8), torch.nn.ReLU6(), torch.nn.Linear(8, 3),
    ).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.round(parameter * 8) / 8)
    return net


def _numpy_net(net, x):
    params = [p.detach().numpy() for p in net.parameters()]
    h = x.reshape(len(x), -1)
    out = []
    for (w, b), act in zip(zip(params[0::2], params[1::2]),
                           [relu, lambda a: np.where(a > 0, a, a * np.float32(0.25)),
                            lambda a: np.clip(a, np.float32(0), np.float32(6))]):
        h = act(h @ w.T + b)
        out.append(h)
    return out, max(float(np.abs(p).max()) for p in params)


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "fixed-batch-4"])
def test_torch_export_matches_numpy(tmp_path, rng, capsys, dynamic):
    torch = pytest.importorskip("torch")
    net = _torch_net(torch)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(4, 2, 4, 4),), str(path), dynamo=False, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": {0: "batch"}} if dynamic else None,
        )
    model = load_model(path)
    assert model.fixed_batch_size == (None if dynamic else 4)
    x = (rng.integers(-8, 9, size=(10, 2, 4, 4)) / 4).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    hidden, w = _numpy_net(net, x)
    report = measure_bundles(OnnxAdapter(), model, x, labels, inference_batch_size=3,
                             learning_rate=4.0)
    assert [t.op_type for t in model.layers()] == ["Relu", "LeakyRelu", "Clip"]
    assert report.params["weight_amplitude"] == w
    for result, expected in zip(report, hidden):
        reference = bundlelab.find_bundles(expected, labels, learning_rate=4.0, weight_amplitude=w)
        assert result.to_record(include_ids=True) == {
            **reference.to_record(include_ids=True), "layer": result.layer}
    # the fixed-batch export runs batches of 4: 4, 4, then 2 padded to 4 and cut back
    np.savez(tmp_path / "d.npz", image=x, labels=labels)
    code, out, _ = cli(capsys, "audit", path, "--data", tmp_path / "d.npz", "-f", "json", "--lr", "4")
    assert code == 0
    assert [r["n_bundles"] for r in json.loads(out)["layers"]] == [r.n_bundles for r in report]


# -- external data -------------------------------------------------------------------------------


def test_external_data_inside_the_folder_loads(dead_layer_model, rng, tmp_path):
    model, _, _ = dead_layer_model
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving moves the copy's tensors out to the file
    onnx.save(saved, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights/m.bin", size_threshold=0)
    stored = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.arange(40) % 2
    external = measure_bundles(OnnxAdapter(), str(folder / "m.onnx"), x, labels)
    inline = measure_bundles(OnnxAdapter(), model, x, labels)
    assert [r.to_record() for r in external] == [r.to_record() for r in inline]
    assert external.params == inline.params


def _with_external_location(model, folder, location):
    tensor = model.graph.initializer[0]
    size = len(numpy_helper.to_array(tensor).tobytes())
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    tensor.external_data.add(key="length", value=str(size))
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


# -- bad input: one line on stderr, exit status 2 -----------------------------------------------


@pytest.fixture
def bad_inputs(tmp_path, rng, dead_layer_model):
    """Files for each bad-input case; returns name -> path."""
    model, _, _ = dead_layer_model
    onnx.save(model, tmp_path / "ok.onnx")
    x = rng.normal(size=(20, 8)).astype(np.float32)
    labels = np.arange(20) % 2
    np.savez(tmp_path / "ok.npz", x=x, labels=labels)
    np.savez(tmp_path / "shape.npz", x=x[:, :6], labels=labels)
    np.savez(tmp_path / "short.npz", x=x, labels=labels[:19])
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}] * 20, dtype=object), labels=labels)
    (tmp_path / "notes.onnx").write_text("not a model")
    (tmp_path / "script.pt").write_bytes(b"PK\x03\x04 a TorchScript archive")
    linear = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.ones((8, 2), np.float32), "W")])
    onnx.save(helper.make_model(linear, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION),
              tmp_path / "linear.onnx")
    custom = onnx.ModelProto()
    custom.CopyFrom(model)
    custom.graph.node[2].op_type, custom.graph.node[2].domain = "FancyRelu", "my.ops"
    custom.opset_import.append(helper.make_opsetid("my.ops", 1))
    onnx.save(custom, tmp_path / "custom.onnx")
    no_kernel = onnx.ModelProto()
    no_kernel.CopyFrom(model)
    no_kernel.graph.node[2].op_type = "Elu"  # float32 only, fed float64 below
    no_kernel.graph.node.insert(2, helper.make_node("Cast", ["z0"], ["z0d"], to=TensorProto.DOUBLE))
    no_kernel.graph.node[3].input[0] = "z0d"
    no_kernel.graph.node.insert(4, helper.make_node("Cast", ["h0"], ["h0f"], to=TensorProto.FLOAT))
    no_kernel.graph.node[5].input[0] = "h0f"
    onnx.save(no_kernel, tmp_path / "nokernel.onnx")
    for name, location in (("evil", "../evil.bin"), ("absolute", str(tmp_path / "w.bin"))):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        _with_external_location(copy, tmp_path / name, location)
    (tmp_path / "evil.bin").write_bytes(bytes(8 * 16 * 4))
    (tmp_path / "w.bin").write_bytes(bytes(8 * 16 * 4))
    if hasattr(os, "symlink"):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        (tmp_path / "link").mkdir()
        os.symlink(tmp_path / "w.bin", tmp_path / "link" / "w.bin")
        _with_external_location(copy, tmp_path / "link", "w.bin")
    return tmp_path


BAD_INPUTS = [
    (["notes.onnx"], "notes.onnx is not an ONNX model"),
    (["script.pt"], "script.pt is a zip archive (a TorchScript"),
    (["ok.onnx", "--data", "shape.npz"], "expects input 'x' of shape (N, 8) and type float32, the data has shape (20, 6)"),
    (["ok.onnx", "--data", "short.npz"], "19 labels for 20 samples of input 'x'"),
    (["ok.onnx", "--layers", "h01"], "ok.onnx has no layer 'h01': did you mean 'h"),
    (["ok.onnx", "--layers", "z0"], "(only activation outputs are layers; --all-nodes taps every node)"),
    (["linear.onnx"], "linear.onnx has no tappable layer"),
    (["linear.onnx", "--all-nodes"], "linear.onnx has no tappable layer"),
    (["evil/m.onnx"], "keeps its data in '../evil.bin', which leaves the model's folder"),
    (["absolute/m.onnx"], "an absolute path"),
    (["link/m.onnx"], "a link that leads out of the model's folder"),
    (["custom.onnx"], "cannot run node 'act0': op FancyRelu of domain 'my.ops' is not registered"),
    (["nokernel.onnx"], "cannot run node 'act0': it has no kernel for Elu (opset 6) with inputs of type double"),
    (["ok.onnx", "--data", "pickled.npz"], "array 'x' holds Python objects (pickled)"),
    (["ok.onnx", "--labels", "y"], "ok.npz has no labels array 'y'; it holds 'x', 'labels'"),
    (["ok.onnx", "--data", "missing.npz"], "no such file or directory"),
    (["ok.onnx", "--data", "notes.onnx"], "unknown data format '.onnx'"),
    (["ok.onnx", "--n-samples", "0"], "--n-samples"),
]


@pytest.mark.parametrize("argv, fragment", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_on_stderr_with_status_2(bad_inputs, capsys, argv, fragment):
    if argv[0].startswith("link/") and not (bad_inputs / "link").exists():
        pytest.skip("no symlinks here")
    argv = [bad_inputs / argv[0], *argv[1:]]
    if "--data" not in argv:
        argv += ["--data", "ok.npz"]
    argv = [bad_inputs / a if isinstance(a, str) and a.endswith((".npz", ".onnx")) else a for a in argv]
    code, out, err = cli(capsys, "audit", *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err


def test_cuda_provider_without_onnxruntime_gpu_is_a_clear_error(bad_inputs, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    code, _, err = cli(capsys, "audit", bad_inputs / "ok.onnx", "--data", bad_inputs / "ok.npz",
                       "--providers", "cuda")
    assert code == 2 and "has no CUDAExecutionProvider" in err and err.count("\n") == 1


def test_models_with_several_inputs_take_a_dict(rng):
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Neg", ["t"], ["y"])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3]) for name in "ab"]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    a, b = rng.normal(size=(2, 10, 3)).astype(np.float32)
    report = measure_bundles(OnnxAdapter(), model, {"a": a, "b": b}, np.arange(10) % 2, weight_amplitude=1.0)
    assert report.names == ["t"] and report[0].n_samples == 10
    with pytest.raises(BundleLabError, match="takes 2 inputs .*pass a dict"):
        measure_bundles(OnnxAdapter(), model, a, np.arange(10) % 2, weight_amplitude=1.0)


def test_report_file_and_plot(bad_inputs, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = cli(capsys, "audit", bad_inputs / "ok.onnx", "--data", bad_inputs / "ok.npz",
                         "-o", tmp_path / "report.csv", "--plot", tmp_path / "entropy.png")
    assert code == 0 and out == "" and "report.csv" in err and "entropy.png" in err
    assert (tmp_path / "report.csv").read_text().splitlines()[0].startswith("layer,n_samples")
    assert (tmp_path / "entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runtime_failure_names_the_node():
    shape = numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
             helper.make_node("Neg", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    with pytest.raises(BundleLabError, match=r"node 'reshape' \(Reshape\) failed: .*cannot be reshaped"):
        measure_bundles(OnnxAdapter(), model, np.ones((5, 8), np.float32), np.arange(5), weight_amplitude=1.0)


def test_progress_off_a_terminal_goes_to_stderr_only(bad_inputs, capsys, monkeypatch):
    monkeypatch.setattr("bundlelab.cli._app.LONG_RUN_S", -1.0)
    monkeypatch.setattr("bundlelab.cli._audit.NOTE_EVERY_S", 0.0)
    code, out, err = cli(capsys, "audit", bad_inputs / "ok.onnx", "--data", bad_inputs / "ok.npz",
                         "--inference-batch-size", "8", "-f", "json")
    assert code == 0 and json.loads(out)["schema"] == "bundlelab.report/1"
    assert [line.split(" (")[0] for line in err.splitlines()] == [
        "bundlelab: 2 activations tapped", "bundlelab: batch 1 done, 8 samples", "bundlelab: batch 2 done, 16 samples",
        "bundlelab: batch 3 done, 20 samples"]


def test_audit_help_says_onnx_only_and_imports_no_framework():
    code = (
        "import sys, io, contextlib\n"
        "import bundlelab.cli\n"
        "buffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n"
        "    assert bundlelab.cli.run(['audit', '--help']) == 0\n"
        "assert 'ONNX only' in ' '.join(buffer.getvalue().split()), buffer.getvalue()\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_small_audit_loads_neither_numba_nor_a_framework(dead_layer_model, rng, tmp_path):
    """An audit whose taps fit the host fingerprint path pays no Numba load, no torch, no
    training machinery: what it costs over a plain onnxruntime process is the bundle work."""
    model, _, _ = dead_layer_model
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(300, 8)).astype(np.float32),
             labels=np.arange(300) % 3)
    code = (
        "import sys\n"
        "from bundlelab.cli import run\n"
        f"assert run(['audit', {str(tmp_path / 'm.onnx')!r}, '--data', "
        f"{str(tmp_path / 'd.npz')!r}, '-f', 'json', '-o', {str(tmp_path / 'r.json')!r}]) == 0\n"
        "print(sorted(m for m in ('numba', 'torch', 'scipy', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    report = json.loads((tmp_path / "r.json").read_text())
    assert [layer["n_samples"] for layer in report["layers"]] == [300, 300]


# -- bundlelab.adapters.onnx.audit: what the CLI's audit runs ----------------------------------


@pytest.fixture
def dead_layer_files(dead_layer_model, rng, tmp_path):
    model, _, _ = dead_layer_model
    onnx.save(model, tmp_path / "dead.onnx")
    x = rng.normal(size=(300, 8)).astype(np.float32)
    labels = np.arange(300) % 3
    np.savez(tmp_path / "data.npz", x=x, y=labels)
    return tmp_path / "dead.onnx", tmp_path / "data.npz", x, labels


def test_audit_equals_measure_bundles_on_the_same_seeded_subset(dead_layer_files):
    path, data, x, labels = dead_layer_files
    chosen = np.sort(np.random.default_rng(7).choice(300, 100, replace=False))
    options = dict(mode="threshold", gamma=0.5, learning_rate=0.5, batch_size=4)
    expected = measure_bundles(OnnxAdapter(), str(path), x[chosen], labels[chosen], **options)
    from_file = audit(path, data, labels_key="y", n_samples=100, seed=7, **options)
    from_arrays = audit(load_model(path), {"x": x}, labels, n_samples=100, seed=7, **options)
    for report in (from_file, from_arrays):
        # audit() adds what it selected (decisions §2: report.params["selection"])
        assert report.params == {**expected.params, "selection": "2 activations tapped (2 Relu)"}
        assert [r.to_record(include_ids=True) for r in report] == [
            r.to_record(include_ids=True) for r in expected]
    assert audit(path, x, labels, n_samples=None).names == ["h0", "h1"]
    assert audit(path, x, labels, n_samples=100, seed=8)[0].n_samples == 100


def test_audit_defaults_match_the_other_adapters(dead_layer_files):
    path, _, x, labels = dead_layer_files
    report = audit(path, x, labels)  # 300 < 2048 samples: all of them
    assert report[0].n_samples == 300
    assert report.params["batch_size"] == 64 and report.params["learning_rate"] == 1e-3


def test_audit_progress_reports_rows_and_shapes_and_inference_batch_size_bounds_them(dead_layer_files):
    path, _, x, labels = dead_layer_files
    calls = []
    audit(path, x, labels, inference_batch_size=128, progress=lambda n, shapes: calls.append((n, shapes)))
    assert calls == [(128, {"h0": (16,), "h1": (4,)}), (128, {"h0": (16,), "h1": (4,)}),
                     (44, {"h0": (16,), "h1": (4,)})]
    calls.clear()
    audit(path, x, labels, progress=lambda n, shapes: calls.append(n))
    assert calls == [256, 44]  # automatic: (16 + 4) floats a sample, capped at 256 samples


def test_automatic_inference_batch_size_keeps_a_pass_near_256_mib():
    from bundlelab.adapters.onnx import AUDIT_BATCH_BYTES, automatic_batch_size

    assert AUDIT_BATCH_BYTES == 256 << 20
    assert automatic_batch_size(80) == 256
    assert automatic_batch_size(4 << 20) == 64
    assert automatic_batch_size(1 << 30) == 1
    assert automatic_batch_size(None) == 64


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(layers="z0"), "(only activation outputs are layers; all_nodes=True taps every node)"),
    (dict(layers="h9"), "has no layer 'h9'"),
    (dict(n_samples=0), "'n_samples' parameter must be an int in [1, inf)"),
    (dict(inference_batch_size=0), "'inference_batch_size'"),
    (dict(batch_size=1.5), "'batch_size' parameter must be an int"),
    (dict(progress=True), "'progress' parameter must be None or a callable"),
    (dict(providers=3), "'providers' parameter must be 'cpu', 'cuda'"),
    (dict(train_batch_size=8), "unexpected keyword argument 'train_batch_size'"),
])
def test_audit_bad_arguments_are_one_line_errors(dead_layer_files, kwargs, fragment):
    path, _, x, labels = dead_layer_files
    with pytest.raises(BundleLabError) as error:
        audit(path, x, labels, **kwargs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_audit_data_errors(dead_layer_files):
    path, data, x, labels = dead_layer_files
    with pytest.raises(BundleLabError, match="no labels: pass labels="):
        audit(path, x)
    with pytest.raises(BundleLabError, match="holds its own"):
        audit(path, data, labels)
    with pytest.raises(BundleLabError, match="no labels array 'labels'"):
        audit(path, data)
    with pytest.raises(BundleLabError, match="got 299 labels for 300 samples"):
        audit(path, x, labels[:-1])


def test_repeated_layer_names_get_the_torch_suffix_rule(rng):
    """Tensor names are unique, but a bare-number tensor is named after its node, and that name
    may already be taken: the second one gets ':2', as a module called twice in torch."""
    nodes = [helper.make_node("Relu", ["x"], ["act:7"], name="first"),
             helper.make_node("Tanh", ["act:7"], ["7"], name="act"),
             helper.make_node("Neg", ["7"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    assert OnnxAdapter().layer_names(model) == ["act:7", "act:7:2"]
    report = measure_bundles(OnnxAdapter(), model, rng.normal(size=(6, 3)).astype(np.float32),
                             np.arange(6) % 2, weight_amplitude=1.0)
    assert report.names == ["act:7", "act:7:2"]


def test_onnx_model_is_one_class_and_the_compatibility_names_are_gone():
    import bundlelab.adapters.onnx as module
    from bundlelab.adapters.onnx import OnnxModel

    assert OnnxModel.__bases__ == (object,)
    for name in ("SETTING_INPUTS", "PROVIDERS", "resolve_providers", "check_external_data",
                 "explain_load_error"):
        assert not hasattr(module, name) or name in module.__all__


def test_measure_bundles_renamed_keywords(dead_layer_model, rng):
    model, _, _ = dead_layer_model
    x = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.arange(40) % 2
    report = measure_bundles(OnnxAdapter(), model, x, labels, inference_batch_size=7, batch_size=8)
    assert report.params["batch_size"] == 8
    with pytest.raises(BundleLabError, match="unexpected keyword argument 'train_batch_size'"):
        measure_bundles(OnnxAdapter(), model, x, labels, train_batch_size=8)
    with pytest.raises(BundleLabError, match="'inference_batch_size'"):
        next(OnnxAdapter().iter_layer_outputs(model, x, layers=["h0"], inference_batch_size=0))


# -- what the audit need not do: probe batches inference answers, a second serialization --------


def _record_batch_sizes(monkeypatch):
    """The sample counts of every batch onnxruntime runs, in order."""
    from bundlelab.adapters.onnx import OnnxModel

    sizes, run = [], OnnxModel.run

    def recording(self, session, tensors, feeds):
        sizes.append(next(iter(feeds.values())).shape[0])
        return run(self, session, tensors, feeds)

    monkeypatch.setattr(OnnxModel, "run", recording)
    return sizes


def _with_reversed_reshape(model):
    """``model`` plus Relu(Reshape(h0, reversed Shape(h0))): a (16, N) tensor whose shape
    onnx's inference cannot tell (the Reshape's shape is computed at run time)."""
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    extra.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "minus1"))
    extra.graph.initializer.append(numpy_helper.from_array(np.array([-3], np.int64), "start"))
    extra.graph.initializer.append(numpy_helper.from_array(np.array([-4], np.int64), "stop"))
    extra.graph.node.extend([
        helper.make_node("Shape", ["h0"], ["h0_shape"]),
        helper.make_node("Slice", ["h0_shape", "minus1", "start", "minus1", "minus1"],
                         ["reversed_shape"]),
        helper.make_node("Reshape", ["h0", "reversed_shape"], ["h0_t"]),
        helper.make_node("Relu", ["h0_t"], ["r"], name="act_t"),
        helper.make_node("ReduceSum", ["r"], ["r_sum"], keepdims=0),
    ])
    extra.graph.output.append(helper.make_tensor_value_info("r_sum", TensorProto.FLOAT, None))
    return extra


def test_probe_batches_run_only_for_taps_inference_has_not_typed(dead_layer_model, rng,
                                                                monkeypatch):
    """Where onnx's shape inference proves every tap's first axis is the batch ('N', as the
    input), no probe batch of 2 and 3 samples runs; a tap it cannot tell still gets them and
    is left out, named, when its first axis is not the batch."""
    model, _, _ = dead_layer_model
    x = rng.normal(size=(20, 8)).astype(np.float32)
    labels = np.arange(20) % 3
    sizes = _record_batch_sizes(monkeypatch)
    report = audit(model, x, labels, inference_batch_size=8)
    assert report.names == ["h0", "h1"]
    assert sizes == [8, 8, 4]  # the measured batches only
    sizes.clear()
    weights, biases = dead_layer_model[1:]
    fixed = mlp_graph(weights, biases, inputs_dims=(4, None))  # exported with a batch of 4
    assert audit(fixed, x[:10], labels[:10]).names == ["h0", "h1"]
    assert sizes == [4, 4, 4]  # no probe of the fixed size either; the last batch padded

    sizes.clear()
    report = audit(_with_reversed_reshape(model), x, labels, inference_batch_size=8)
    assert sizes == [2, 3, 8, 8, 4]
    assert report.names == ["h0", "h1"]
    assert report.params["selection"].endswith(
        "; 1 tensor skipped, its first axis is not the batch: 'r' (16, 2)")
    # a probe repeats samples when the data holds fewer than 3
    sizes.clear()
    assert OnnxAdapter().layer_names(_with_reversed_reshape(model), x[:1]) == ["h0", "h1"]
    assert sizes == [2, 3]


def test_a_declared_batch_axis_is_not_taken_for_a_proof(dead_layer_model, rng, monkeypatch):
    """A file that declares a tensor ('N', 16) where it is (16, N) at run time: inference
    would keep the declaration and derive ('N', 16) for what follows; the probe batches still
    run, and the tap is left out, named, instead of measured along the wrong axis."""
    model = _with_reversed_reshape(dead_layer_model[0])
    model.graph.value_info.append(
        helper.make_tensor_value_info("h0_t", TensorProto.FLOAT, ["N", 16]))
    x = rng.normal(size=(20, 8)).astype(np.float32)
    labels = np.arange(20) % 3
    sizes = _record_batch_sizes(monkeypatch)
    report = audit(model, x, labels, inference_batch_size=8)
    assert sizes == [2, 3, 8, 8, 4]
    assert report.names == ["h0", "h1"]
    assert "skipped, its first axis is not the batch: 'r' (16, 2)" in report.params["selection"]


def test_a_text_format_model_audits_as_its_binary_file(dead_layer_model, rng, tmp_path):
    """onnx's text formats (by extension, as onnx.load reads them) load as before."""
    model, _, _ = dead_layer_model
    x = rng.normal(size=(30, 8)).astype(np.float32)
    labels = np.arange(30) % 3
    onnx.save(model, tmp_path / "dead.onnx")
    onnx.save(model, tmp_path / "dead.textproto")
    binary, text = (audit(tmp_path / name, x, labels) for name in ("dead.onnx", "dead.textproto"))
    assert load_model(tmp_path / "dead.textproto").proto == model
    assert [r.to_record(include_ids=True) for r in text] == [
        r.to_record(include_ids=True) for r in binary]
