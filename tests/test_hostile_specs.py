"""Hostile and broken input (issue 10), specs, datasets, plots and ONNX: every case is refused
in one line (a BundleLabError; ``error: ...`` and exit 2 in the CLI), bounded before it is paid
for, and never a traceback."""

import json
import pickle
import random
import time
import warnings

import numpy as np
import pytest

from bundlelab import BundleLabError, BundleReport, BundleTracker
from bundlelab import spec as S
from bundlelab.cli import run

FC = S.to_dict(S.fully_connected(4, 2, input_shape=(3,), n_classes=2))


def one_line(exc_info, limit=400) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and len(message) <= limit, message[:2000]
    return message


def cli(capsys, *argv):
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- YAML bombs, nesting, encodings -----------------------------------------------------------


def alias_bomb(levels: int) -> str:
    """The "billion laughs": level k is nine aliases of level k - 1 (9**levels strings), quoted
    whole by the 'version' error of a spec that is otherwise fine."""
    items = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ("version: [" + ", ".join(items) + "]\n"
            "input_shape: [4]\nn_classes: 2\noutput: out\nnodes: []\n")


@pytest.mark.parametrize("levels", [6, 9])
def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    assert path.stat().st_size < 800  # the 764 bytes
    start = time.perf_counter()
    with pytest.raises(BundleLabError, match=r"aliases \('\*name'\) stand for more than 10,000"):
        S.load(path)
    assert time.perf_counter() - start < 2


def test_yaml_alias_bomb_in_the_cli_is_one_short_line(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(6))
    code, out, err = cli(capsys, "train", path, "--data", "digits", "--epochs", "1",
                         "--out", tmp_path / "run")
    assert code == 2 and out == ""
    assert err.startswith("error: The spec's YAML aliases") and err.count("\n") == 1
    assert len(err) < 400


def test_a_reused_params_mapping_is_a_harmless_alias():
    text = (
        "version: 1\ninput_shape: [3]\nn_classes: 2\noutput: h\nnodes:\n"
        "- {id: input, op: input}\n"
        "- {id: a, op: dense, params: &p {units: 2}, inputs: [input], measured: true}\n"
        "- {id: h, op: dense, params: *p, inputs: [a]}\n"
    )
    spec = S.loads(text)
    assert spec["a"].params == spec["h"].params == {"units": 2, "activation": "linear",
                                                     "use_bias": True}


def test_a_recursive_alias_is_refused():
    with pytest.raises(BundleLabError, match="refers to a node that contains it") as info:
        S.loads("version: &a [1, *a]\n")
    one_line(info)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("depth", [40, 5000])
def test_deep_nesting_is_refused(tmp_path, fmt, depth):
    path = tmp_path / f"deep.{fmt}"
    path.write_text('{"version": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(BundleLabError, match="nests lists and mappings more than 32") as info:
        S.load(path)
    one_line(info)


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(S.dumps(S.fully_connected(4, 1)).replace("fc-1x4-relu", "caf\xe9")
                     .encode("latin1"))
    with pytest.raises(BundleLabError, match=r"is not UTF-8 text: byte 0xe9 at offset") as info:
        S.load(path)
    one_line(info)
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + S.dumps(S.fully_connected(4, 1), format="json").encode())
    assert S.load(path).name == "fc-1x4-relu"  # a byte-order mark is fine


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_number_of_thousands_of_digits_is_one_line(fmt):
    text = ('{"version": ' + "9" * 5000 + "}")
    with pytest.raises(BundleLabError, match="a number of more than 4300 digits") as info:
        S.loads(text, format=fmt)
    one_line(info)


def test_text_and_path_of_the_wrong_type():
    with pytest.raises(BundleLabError, match="'text' parameter must be a str"):
        S.loads(None)
    with pytest.raises(BundleLabError, match="'path' parameter must be the path of a spec file"):
        S.load(None)
    assert S.loads(S.dumps(S.fully_connected(4, 1)).encode()).name == "fc-1x4-relu"


# -- lists and mappings where names belong -----------------------------------------------------

WHERE_NAMES_BELONG = [
    (("output",), ["h"]),
    (("output",), {"a": 1}),
    (("nodes", 1, "op"), ["dense"]),
    (("nodes", 1, "op"), {"dense": 1}),
    (("nodes", 1, "optional"), [["input"]]),
    (("nodes", 1, "optional"), [{"a": 1}]),
    (("nodes", 1, "params"), {1: 2, "units": 4}),  # keys of mixed types do not sort
]


@pytest.mark.parametrize(("where", "value"), WHERE_NAMES_BELONG)
def test_lists_and_mappings_where_names_belong(where, value):
    data = json.loads(json.dumps(FC))
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    with pytest.raises(BundleLabError) as info:
        S.from_dict(data)
    one_line(info)


def test_a_set_in_yaml_where_the_op_belongs():
    text = S.dumps(S.fully_connected(4, 1)).replace("op: dense", "op: !!set {dense}", 1)
    with pytest.raises(BundleLabError, match="The 'op' field of nodes") as info:
        S.loads(text)
    one_line(info)


def test_a_cycle_through_5000_nodes_is_one_line(tmp_path):
    n = 5000
    nodes = [{"id": "input", "op": "input"}] + [
        {"id": f"n{i}", "op": "activation", "params": {"function": "relu"},
         "inputs": [f"n{(i + 1) % n}"]} for i in range(n)]
    nodes.append({"id": "head", "op": "dense", "params": {"units": 2}, "inputs": ["n0"]})
    path = tmp_path / "cycle.json"
    path.write_text(json.dumps({"version": 1, "input_shape": [3], "n_classes": 2,
                                "output": "head", "nodes": nodes}))
    with pytest.raises(BundleLabError, match=r"closes a cycle: n0 -> n4999 -> .* \(4989 more\) "
                       r".* -> n1 -> n0; a spec must be acyclic") as info:
        S.load(path)
    one_line(info)


def test_a_long_value_is_quoted_short():
    data = json.loads(json.dumps(FC))
    data["version"] = ["x"] * 100_000
    with pytest.raises(BundleLabError, match=r"Got \['x', 'x'.*\.\.\. instead") as info:
        S.from_dict(data)
    one_line(info)
    data = json.loads(json.dumps(FC))
    data["nodes"][1]["id"] = "a" * 100_000
    with pytest.raises(BundleLabError) as info:
        S.from_dict(data)
    one_line(info)


# -- absurd sizes: refused at validation with the size they would take --------------------------

ABSURD = [
    (lambda: S.preset("fc-1000000x16", input_shape=(784,), n_classes=10),
     r"would have 1,000,002 nodes, 272,012,458 trainable parameters \(1\.09 GB as float32\)"),
    (lambda: S.fully_connected(10**7, 3),
     r"200,007,970,000,010 trainable parameters \(800 TB as float32\).*at most 4,294,967,296"),
    (lambda: S.conv_net(blocks=[10**6, 1, 1, 1]), r"would have 1,000,010 nodes"),
    (lambda: S.conv_net(4, width_multiplier=1e300), r"about 10\^604 trainable parameters"),
    (lambda: S.conv_net(4, input_shape=(3, 10**5, 10**5)),
     r"590,000,000,074 activation values per sample \(2\.36 TB as float32\)"),
    (lambda: S.conv_net(4, input_shape=(3, 10**400, 4)), r"output shape is too large"),
    (lambda: S.set_stage_depth(S.conv_net(4), "a", 10**6), r"would have 1,000,006 nodes"),
    (lambda: __import__("bundlelab.search").search.conv_fabric(10**6),
     r"conv_fabric\(1000000\) would have at least 12,000,000 nodes"),
    (lambda: __import__("bundlelab.search").search.resnet_fabric(10**6),
     r"resnet_fabric\(1000000, k=3\) would have at least 6,000,000 nodes"),
    (lambda: S.preset("fc-2x" + "9" * 5000, input_shape=(4,), n_classes=2),
     r"The preset's number '9999\d*\.\.\. is too large"),
]


@pytest.mark.parametrize(("build", "message"), ABSURD)
def test_absurd_specs_are_refused_with_their_size(build, message):
    start = time.perf_counter()
    with pytest.raises(BundleLabError, match=message) as info:
        build()
    one_line(info)
    assert time.perf_counter() - start < 1


def test_an_absurd_spec_file_is_refused_at_validation():
    data = json.loads(json.dumps(FC))
    data["nodes"][1]["params"]["units"] = 10**30
    with pytest.raises(BundleLabError, match=r"about 10\^30 trainable parameters"):
        S.from_dict(data)


def test_the_limits_themselves_are_allowed():
    from bundlelab.spec._graph import check_spec_size

    check_spec_size(S.MAX_NODES, parameters=S.MAX_PARAMETERS, sample_values=S.MAX_SAMPLE_VALUES)
    for sizes in ({"n_nodes": S.MAX_NODES + 1}, {"n_nodes": 1, "parameters": S.MAX_PARAMETERS + 1},
                  {"n_nodes": 1, "sample_values": S.MAX_SAMPLE_VALUES + 1}):
        with pytest.raises(BundleLabError, match="bundlelab builds specs of at most"):
            check_spec_size(**sizes)
    # a large but sane spec: ResNet-120 at full width on ImageNet-sized inputs
    assert S.parameter_count(S.conv_net(120, input_shape=(3, 224, 224), n_classes=1000)) > 10**7


@pytest.mark.parametrize("name", ["fc-2x0", "fc-0x2"])
def test_a_preset_width_or_depth_of_0_is_refused(name):
    with pytest.raises(BundleLabError, match="of 0: use fc-DEPTHxWIDTH with DEPTH and WIDTH >= 1"):
        S.preset(name, input_shape=(4,), n_classes=2)


@pytest.mark.parametrize("multiplier", [-1, 0, 0.0, float("nan"), float("inf"), -float("inf")])
def test_width_multipliers_out_of_range_are_refused(multiplier):
    for build in (
        lambda: S.preset("fc-2x8", input_shape=(4,), n_classes=2, width_multiplier=multiplier),
        lambda: S.preset("plain-4", input_shape=(3, 8, 8), n_classes=2,
                         width_multiplier=multiplier),
        lambda: S.conv_net(4, width_multiplier=multiplier),
        lambda: S.scale_width(S.fully_connected(4, 2), multiplier),
    ):
        with pytest.raises(BundleLabError, match=r"must be a float in \(0, inf\)"):
            build()


# -- the CLI's error line --------------------------------------------------------------------------


def test_the_cli_error_line_is_capped(capsys):
    from bundlelab.cli._app import ERROR_MAX_CHARS, _error

    _error("x" * 10**6 + "\n tail")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= ERROR_MAX_CHARS + len("error: \n")
    assert err.endswith("... (cut from 1,000,006 characters)\n")
    _error("short\nmessage")
    assert capsys.readouterr().err == "error: short message\n"


# -- seeds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_audit_seed_out_of_range_is_one_line(capsys, tmp_path, seed):
    code, out, err = cli(capsys, "audit", tmp_path / "m.onnx", "--data", tmp_path / "d.npz",
                         "--seed", seed)
    assert code == 2 and out == ""
    assert err == (f"error: The '--seed' option must be an int in [0, 9223372036854775807]. "
                   f"Got {seed} instead.\n")


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "0"])
def test_dataset_seeds_out_of_range(seed):
    pytest.importorskip("sklearn")
    from bundlelab.datasets import load_dataset

    with pytest.raises(BundleLabError, match="'seed' parameter must be an int"):
        load_dataset("digits", n_train=10, seed=seed)
    data = load_dataset("digits", n_train=10, n_test=10, seed=0)
    with pytest.raises(BundleLabError, match="'seed' parameter must be an int"):
        data.subset(n_train=5, seed=seed)


# -- plots -------------------------------------------------------------------------------------


def big_report(n_layers: int) -> BundleReport:
    record = {"layer": "", "n_samples": 4, "n_bundles": 1, "n_conflicting": 1,
              "entropy": 0.69, "largest_bundle": 4, "fully_conflicting": True, "n_classes": 2,
              "max_entropy": 0.69, "n_excluded": 0, "n_features": 2, "dtype": "float32"}
    layers = [{**record, "layer": f"layer{i}", "entropy": 0.69 * (i % 3 == 0),
               "n_conflicting": int(i % 3 == 0), "fully_conflicting": i % 3 == 0}
              for i in range(n_layers)]
    return BundleReport.from_dict({
        "schema": "bundlelab.report/1",
        "params": {"mode": "resolution", "learning_rate": 0.001, "batch_size": 64,
                   "weight_amplitude": 1.0, "gamma": 1e-08, "epsilon": 0.0,
                   "nonfinite": "raise"},
        "first_conflicting_layer": "layer0", "layers": layers})


def test_a_3000_layer_plot_is_capped_and_says_so(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from bundlelab.plotting import MAX_FIGURE_INCHES, MAX_LABELS

    report = big_report(3000)
    start = time.perf_counter()
    ax = report.plot(tmp_path / "p.png")
    assert time.perf_counter() - start < 15  # was 28 s and 0.9 GB; the heatmap 40 s and 3.8 GB
    width, height = ax.figure.get_size_inches()
    assert width <= MAX_FIGURE_INCHES[0] and height <= MAX_FIGURE_INCHES[1]
    assert len(ax.patches) == 3000  # every layer drawn
    assert len(ax.get_xticks()) <= MAX_LABELS + 1
    assert ax.get_xlabel() == "layer (3000 layers, 60 labelled)"
    tracker = BundleTracker()
    tracker.steps, tracker.reports = [1, 2, 3], [report] * 3  # as three record() calls leave it
    start = time.perf_counter()
    ax = tracker.plot(tmp_path / "t.png")
    assert time.perf_counter() - start < 15
    width, height = ax.figure.get_size_inches()
    assert width <= MAX_FIGURE_INCHES[0] and height <= MAX_FIGURE_INCHES[1]
    assert ax.get_ylabel() == "layer (3000 layers, 60 labelled)"
    assert plt.get_fignums() == []


def test_figures_are_closed_after_saving(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    plt.close("all")
    report = big_report(3)
    tracker = BundleTracker()
    tracker.record(0, {"a": np.zeros((4, 2), np.float32)}, [0, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "More than 20 figures have been opened" is a warning
        for i in range(11):  # 22 figures: pyplot warns past 20 open ones
            report.plot(tmp_path / f"r{i}.png")
            tracker.plot(tmp_path / f"t{i}.png")
    assert plt.get_fignums() == []
    # an Axes handed in stays the caller's: drawn into, saved, left open
    figure, ax = plt.subplots()
    report.plot(tmp_path / "mine.png", ax=ax)
    assert plt.get_fignums() == [figure.number]
    plt.close(figure)
    # no path: the figure is returned open, for the caller to show or save
    ax = report.plot()
    assert plt.get_fignums() == [ax.figure.number]
    plt.close("all")


def test_layer_names_are_literal_text_in_figures(tmp_path):
    pytest.importorskip("matplotlib")
    report = big_report(3)
    data = report.to_dict()
    for i, name in enumerate(["cost $x", "a$b$c$", "\x1b[2Jclear"]):
        data["layers"][i]["layer"] = name
    data["first_conflicting_layer"] = "cost $x"
    report = BundleReport.from_dict(data)
    ax = report.plot(tmp_path / "names.png")  # an unbalanced $ failed in mathtext before
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [r"cost \$x", r"a\$b\$c\$", r"\x1b[2Jclear"]


# -- CIFAR pickles -----------------------------------------------------------------------------


class _Reconstructed:
    """Pickles as numpy's own reconstructor call, which the CIFAR unpickler allows."""

    def __init__(self, shape, dtype="u1"):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        from bundlelab.datasets._cifar import _RECONSTRUCT

        return _RECONSTRUCT, (np.ndarray, self.shape, np.dtype(self.dtype))


def test_a_cifar_pickle_cannot_build_more_than_its_file_holds(tmp_path):
    from bundlelab.datasets._cifar import _read_py_batch

    path = tmp_path / "data_batch_1"
    # 300 MB of zeros from 200 bytes (the file made 3 GB the same way)
    path.write_bytes(pickle.dumps({b"data": _Reconstructed((100_000, 3072)),
                                   b"labels": _Reconstructed((100_000,))}, protocol=2))
    assert path.stat().st_size < 300
    with pytest.raises(BundleLabError, match=r"builds an array of shape \(100000, 3072\) "
                       r"\(307,200,000 bytes\) from a file of \d+ bytes") as info:
        _read_py_batch(path)
    one_line(info)


@pytest.mark.parametrize(("batch", "message"), [
    ({b"data": _Reconstructed((2,), "O"), b"labels": []}, "not a plain number"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [np.zeros(10**5)] * 2},
     r"'labels' in .* is list, expected a list of 2 ints"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": np.zeros((2, 3))},
     r"'labels' in .* is float64 of shape \(2, 3\)"),
])
def test_cifar_pickles_of_odd_contents(tmp_path, batch, message):
    from bundlelab.datasets._cifar import _read_py_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(BundleLabError, match=message) as info:
        _read_py_batch(path)
    one_line(info)


# -- ONNX external data in sparse constants and functions ----------------------------------------


def _onnx_model_with(tmp_path, where: str, location: str):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def external(name):
        tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        tensor.external_data.add(key="length", value="8")
        return tensor

    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Add", ["h", "c"], ["y"])]
    functions = []
    if where == "sparse":
        indices = helper.make_tensor("i", TensorProto.INT64, [2], [0, 1])
        sparse = helper.make_sparse_tensor(external("v"), indices, [2])
        nodes.insert(0, helper.make_node("Constant", [], ["c"], sparse_value=sparse))
    else:
        body = helper.make_node("Constant", [], ["k"], value=external("k"))
        functions.append(helper.make_function(
            "my.fn", "Const2", [], ["k"], [body], [helper.make_opsetid("", 17)]))
        nodes.insert(0, helper.make_node("Const2", [], ["c"], domain="my.fn"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, functions=functions, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("my.fn", 1)])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx")
    (tmp_path / "outside.bin").write_bytes(bytes(8))
    return folder / "m.onnx", model


@pytest.mark.parametrize("where", ["sparse", "function"])
def test_onnx_external_data_of_sparse_constants_and_functions_is_checked(tmp_path, where):
    path, proto = _onnx_model_with(tmp_path, where, "../outside.bin")
    pytest.importorskip("onnxruntime")
    from bundlelab.adapters.onnx import OnnxModel, load_model

    with pytest.raises(BundleLabError, match=r"keeps its data in '\.\./outside\.bin', which "
                       "leaves the model's folder") as info:
        load_model(path)
    one_line(info)
    # a proto handed in directly is checked against its base_dir too, never the working folder
    with pytest.raises(BundleLabError, match="leaves the model's folder"):
        OnnxModel(proto, base_dir=path.parent)
    with pytest.raises(BundleLabError, match="keeps tensors in external files"):
        OnnxModel(proto)


@pytest.mark.parametrize("where", ["sparse", "function"])
def test_onnx_external_data_inside_the_folder_is_found_there(tmp_path, where, monkeypatch):
    path, _ = _onnx_model_with(tmp_path, where, "w.bin")
    pytest.importorskip("onnxruntime")
    from bundlelab.adapters.onnx import load_model

    with pytest.raises(BundleLabError, match=r"'w\.bin', which is missing"):
        load_model(path)
    np.array([1.0, 2.0], np.float32).tofile(path.parent / "w.bin")
    np.array([50.0, 50.0], np.float32).tofile(tmp_path / "w.bin")  # a decoy in the working folder
    monkeypatch.chdir(tmp_path)  # relative to the model's folder, not the working one
    model = load_model(path)
    assert model.has_external_data and model.base_dir == path.parent
    y = model.run(model.session([]), ["y"], {"x": np.array([[1.0, -1.0]], np.float32)})[0]
    np.testing.assert_array_equal(y, [[2.0, 2.0]])  # relu(x) + the model folder's [1, 2]


# -- fuzz: truncated and bit-flipped spec files through spec.load ---------------------------------


def _variants(text: bytes, rng: random.Random, n: int):
    for _ in range(n):
        data = bytearray(text)
        kind = rng.random()
        if kind < 0.3:
            data = data[: rng.randrange(len(data))]
        elif kind < 0.8:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        else:  # a structural character or an alias where a byte was
            i = rng.randrange(len(data))
            data[i:i + 1] = rng.choice([b"[", b"{", b"*a", b"&a ", b"!!set ", b"\x00", b"\xff",
                                        b'"', b"\n-", b": ", b"9" * 5000, b"!!timestamp ",
                                        b"!!binary ", b"<<: ", b"? ", b"1e999"])
        yield bytes(data)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_fuzzed_spec_files_load_or_raise_one_line(tmp_path, fmt):
    pytest.importorskip("yaml")
    rng = random.Random(f"issue-10-{fmt}")
    sources = [S.dumps(S.fully_connected(4, 2, input_shape=(1, 2, 2), n_classes=3), format=fmt),
               S.dumps(S.conv_net(4, width_multiplier=0.125, input_shape=(1, 8, 8)), format=fmt)]
    path = tmp_path / f"spec.{fmt}"
    start = time.perf_counter()
    outcomes = {"loaded": 0, "refused": 0}
    for source in sources:
        for data in _variants(source.encode(), rng, 400):
            path.write_bytes(data)
            try:
                S.load(path)
                outcomes["loaded"] += 1
            except BundleLabError as exc:
                message = str(exc)
                assert "\n" not in message and len(message) < 1000, (data, message)
                outcomes["refused"] += 1
            # anything else is a traceback: the test fails with it and the input
    assert outcomes["refused"] > 500 and outcomes["loaded"] > 0, outcomes
    assert time.perf_counter() - start < 15


@pytest.mark.parametrize("stage", [["a"], {}, {"a": 1}])
def test_rewrites_name_a_stage_of_the_wrong_type_in_one_line(stage):
    spec = S.conv_net(10)
    for rewrite in (lambda: S.set_stage_depth(spec, stage, 1),
                    lambda: S.set_residual(spec, True, stage=stage)):
        with pytest.raises(BundleLabError, match="The 'stage' parameter must be one of 'a', 'b'"):
            rewrite()


def test_pyyaml_slips_on_odd_input_are_invalid_yaml():
    text = S.dumps(S.fully_connected(4, 1)).replace("id: dense1", "id: !!timestamp dense1")
    with pytest.raises(BundleLabError, match="not valid YAML: .*PyYAML fails on it") as info:
        S.loads(text)  # an AttributeError inside PyYAML before
    one_line(info)


def test_a_gzip_bomb_in_place_of_an_idx_file_is_refused_before_it_is_inflated(tmp_path,
                                                                               monkeypatch):
    import gzip

    from bundlelab.datasets import _files
    from bundlelab.datasets._idx import read_idx

    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as stream:  # 1,000 x 28 x 28 zeros: 784 kB from about 1 kB
        stream.write(bytes([0, 0, 8, 3]) + (1000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        stream.write(bytes(1000 * 28 * 28))
    assert path.stat().st_size < 2000
    monkeypatch.setattr(_files, "MAX_FILE_BYTES", 100_000)  # the real bound is 2 GiB
    with pytest.raises(BundleLabError, match=r"more than 100,000 bytes once gunzipped") as info:
        read_idx(path, 3)
    one_line(info)


def test_a_spec_path_that_is_no_regular_file_is_refused(tmp_path):
    import os

    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(BundleLabError, match="is not a regular file"):
        S.load(tmp_path / "folder.yaml")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.yaml")
        with pytest.raises(BundleLabError, match="is not a regular file"):
            S.load(tmp_path / "pipe.yaml")  # blocked forever before, waiting for a writer


def test_a_spec_file_larger_than_the_bound_is_not_read_whole(tmp_path, monkeypatch):
    from bundlelab.spec import _io

    monkeypatch.setattr(_io, "MAX_SPEC_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("name: " + "x" * 5000 + "\n")
    with pytest.raises(BundleLabError, match="is larger than 1,000 bytes"):
        S.load(path)
    with pytest.raises(BundleLabError, match="at most 1,000"):
        S.loads(path.read_text())
