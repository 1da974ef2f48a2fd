"""The architecture-spec language: validation, round trips, presets and rewrites."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab import BundleLabError
from bundlelab.spec import (
    ACTIVATIONS,
    PRESETS,
    Node,
    Spec,
    conv_net,
    dump,
    dumps,
    from_dict,
    fully_connected,
    layer_count,
    load,
    loads,
    measured_layers,
    parameter_count,
    scale_width,
    set_residual,
    set_stage_depth,
    stage_depths,
    to_dict,
    truncate_stage_from,
)

STAGES = ("a", "b", "c", "d")


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- round trips -------------------------------------------------------------------------------

fc_specs = st.builds(
    fully_connected,
    width=st.integers(1, 64),
    depth=st.integers(1, 6),
    activation=st.sampled_from([a for a in ACTIVATIONS]),
    input_shape=st.one_of(
        st.tuples(st.integers(1, 50)),
        st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    ),
    n_classes=st.integers(1, 20),
    name=st.one_of(st.none(), st.text(max_size=12)),
)


@settings(max_examples=40, deadline=None)
@given(spec=fc_specs, fmt=st.sampled_from(["yaml", "json"]))
def test_fully_connected_specs_round_trip(spec, fmt):
    text = dumps(spec, format=fmt)
    again = loads(text, format=fmt)
    assert again == spec
    assert dumps(again, format=fmt) == text
    assert hash(again) == hash(spec)


@pytest.mark.parametrize("depth", sorted(PRESETS))
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_conv_presets_round_trip_through_files(tmp_path, depth, suffix):
    spec = conv_net(depth=depth, residual=depth % 20 == 0, width_multiplier=0.25)
    path = tmp_path / f"net{suffix}"
    dump(spec, path)
    assert load(path) == spec
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if suffix == ".json":
        assert json.loads(path.read_text()) == to_dict(spec)


def test_a_spec_built_in_python_equals_the_loaded_one_with_defaults_filled():
    nodes = (
        Node("x", "input"),
        Node("h", "dense", {"units": 4, "activation": "relu"}, ("x",), measured=True),
        Node("out", "dense", {"units": 2}, ["h"]),
    )
    spec = Spec(nodes, "out", (3,), 2)
    assert spec["out"].params == {"units": 2, "activation": "linear", "use_bias": True}
    data = {
        "version": 1,
        "input_shape": [3],
        "n_classes": 2,
        "output": "out",
        "nodes": [
            {"id": "x", "op": "input"},
            {
                "id": "h",
                "op": "dense",
                "params": {"units": 4, "activation": "relu"},
                "inputs": ["x"],
                "measured": True,
            },
            {"id": "out", "op": "dense", "params": {"units": 2}, "inputs": ["h"]},
        ],
    }
    assert from_dict(data) == spec
    assert measured_layers(spec) == ["h"]


def test_yaml_is_read_with_safe_load_only():
    text = dumps(fully_connected(4, 1)).replace(
        "name: fc-1x4-relu", "name: !!python/object/apply:os.getcwd []"
    )
    with pytest.raises(BundleLabError, match="not valid YAML") as exc:
        loads(text)
    _one_line(exc)


# --- validation --------------------------------------------------------------------------------


def _fc_dict():
    return to_dict(fully_connected(8, 3, input_shape=(5,), n_classes=3))


def _mutated(path, value):
    data = _fc_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (
            ("nodes", 2, "params", "activation"),
            "rleu",
            "The 'params.activation' field of nodes[2] ('dense2') must be one of 'relu', 'tanh', ",
        ),
        (
            ("nodes", 1, "params", "units"),
            0,
            "The 'params.units' field of nodes[1] ('dense1') must be an int in [1, inf). Got 0",
        ),
        (("nodes", 1, "params", "units"), True, "must be an int in [1, inf). Got True instead."),
        (
            ("nodes", 1, "op"),
            "dnese",
            "The 'op' field of nodes[1] ('dense1') must be one of 'input', ",
        ),
        (
            ("nodes", 2, "id"),
            "dense1",
            "The 'id' field of nodes[2] ('dense1') must be unique; nodes[1]",
        ),
        (
            ("nodes", 2, "inputs"),
            ["nowhere"],
            "The 'inputs' field of nodes[2] ('dense2') must be ids of earlier nodes",
        ),
        (("nodes", 2, "inputs"), [], "must be a list of exactly 1 node id(s) for 'dense'"),
        (
            ("nodes", 2, "measured"),
            "yes",
            "The 'measured' field of nodes[2] ('dense2') must be a bool",
        ),
        (("nodes", 2, "optional"), ["dense1"], "only 'add' has optional edges"),
        (
            ("nodes", 2, "params", "unit"),
            3,
            "has unknown key 'unit'; 'dense' allows 'units', 'activation', 'use_bias'",
        ),
        (("version",), 2, "The 'version' field must be one of 1. Got 2 instead."),
        (
            ("n_classes",),
            4,
            "The output node 'head' must produce shape (4,) for n_classes=4; got (3,).",
        ),
        (("output",), "dense2", "must produce shape (3,)"),
        (("output",), "missing", "The 'output' field must be the id of a node ("),
        (
            ("input_shape",),
            [0],
            "The 'input_shape' field must be (features,) or (channels, height, width)",
        ),
        (("init",), "xavier", "The 'init' field must be one of 'he_normal', 'framework_default'."),
        (("colour",), "red", "Unknown key 'colour' in the spec; allowed keys are 'version', "),
    ],
)
def test_invalid_specs_give_one_line_naming_the_field(path, value, expected):
    with pytest.raises(BundleLabError) as exc:
        from_dict(_mutated(path, value))
    assert expected in _one_line(exc)


def test_missing_required_param_and_shape_errors():
    data = _fc_dict()
    del data["nodes"][1]["params"]["units"]
    with pytest.raises(
        BundleLabError, match=r"'params.units' field of nodes\[1\] \('dense1'\) is required"
    ):
        from_dict(data)
    nodes = (
        Node("x", "input"),
        Node("c", "conv", {"filters": 4}, ("x",)),
        Node("o", "dense", {"units": 2}, ("c",)),
    )
    with pytest.raises(
        BundleLabError,
        match=r"nodes\[2\] \('o'\): 'dense' needs a flat input .* insert a 'flatten'",
    ) as exc:
        Spec(nodes, "o", (3, 8, 8), 2)
    _one_line(exc)


def test_dead_nodes_are_refused():
    nodes = (
        Node("x", "input"),
        Node("dead", "dense", {"units": 3}, ("x",)),
        Node("o", "dense", {"units": 2}, ("x",)),
    )
    with pytest.raises(BundleLabError, match=r"nodes\[1\] \('dead'\) does not feed the output 'o'"):
        Spec(nodes, "o", (4,), 2)


# --- DAGs with optional edges ------------------------------------------------------------------


def _fabric_nodes():
    """A 2x2 fabric: every node sums optional edges from the previous column."""
    return [
        Node("x", "input"),
        Node("s", "conv", {"filters": 8}, ("x",)),
        Node("p00", "basic_block", {"filters": 8}, ("s",)),
        Node("p10", "basic_block", {"filters": 8, "stride": 2}, ("s",)),
        Node("u01", "basic_block", {"filters": 8}, ("p00",)),
        Node("u11", "basic_block", {"filters": 8, "stride": 2}, ("p00",)),
        Node("v11", "basic_block", {"filters": 8}, ("p10",)),
        Node("m11", "add", inputs=("u11", "v11"), optional=("v11", "u11"), measured=True),
        Node("m01", "add", inputs=("u01",), measured=True),
        Node("g0", "global_avg_pool", inputs=("m01",)),
        Node("g1", "global_avg_pool", inputs=("m11",)),
        Node("sum", "add", inputs=("g0", "g1"), optional=("g1",)),
        Node("head", "dense", {"units": 5}, ("sum",)),
    ]


def test_a_dag_with_optional_edges_validates_and_round_trips():
    spec = Spec(tuple(_fabric_nodes()), "head", (3, 16, 16), 5, name="fabric")
    assert spec["m11"].optional == ("u11", "v11")  # canonical order: as in inputs
    assert spec.shape_of("m11") == (8, 8, 8)
    assert measured_layers(spec) == ["m11", "m01"]
    for fmt in ("yaml", "json"):
        assert loads(dumps(spec, format=fmt), format=fmt) == spec


def test_cycles_are_refused_and_reported():
    nodes = _fabric_nodes()
    nodes[4] = Node("u01", "basic_block", {"filters": 8}, ("m01",))  # m01 reads u01
    with pytest.raises(BundleLabError) as exc:
        Spec(tuple(nodes), "head", (3, 16, 16), 5)
    assert "closes a cycle: u01 -> m01 -> u01" in _one_line(exc)


def test_forward_references_without_a_cycle_ask_for_order():
    nodes = _fabric_nodes()
    nodes[2], nodes[3] = nodes[3], nodes[2]
    nodes[2] = Node("p10", "basic_block", {"filters": 8, "stride": 2}, ("p00",))
    with pytest.raises(
        BundleLabError, match="comes later in 'nodes'; list every node after its inputs"
    ):
        Spec(tuple(nodes), "head", (3, 16, 16), 5)


def test_add_needs_equal_shapes():
    nodes = _fabric_nodes()
    nodes[7] = Node("m11", "add", inputs=("u11", "p00"), optional=("u11",), measured=True)
    with pytest.raises(
        BundleLabError, match=r"nodes\[7\] \('m11'\): 'add' needs inputs of one shape"
    ):
        Spec(tuple(nodes), "head", (3, 16, 16), 5)


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, blocks", sorted(PRESETS.items()))
def test_preset_table(depth, blocks):
    spec = conv_net(depth)
    assert stage_depths(spec, stages=STAGES) == dict(zip(STAGES, blocks))
    assert layer_count(spec) == 2 * sum(blocks) + 2 == depth
    assert len(measured_layers(spec)) == sum(blocks)
    first_blocks = [f"{s}1" for s, n in zip(STAGES, blocks) if n]
    for node_id in measured_layers(spec):
        node = spec[node_id]
        assert node.op == "basic_block"
        assert node.params["filters"] == 64 * 2 ** STAGES.index(node.stage)
        assert node.params["stride"] == (2 if node_id in first_blocks[1:] else 1)
        assert node.params["residual"] is False


def test_the_stem_max_pools_only_inputs_wider_than_50_px():
    for width, pooled in [(32, False), (50, False), (51, True), (224, True)]:
        spec = conv_net(10, input_shape=(3, 28, width))
        assert ("stem_pool" in [n.id for n in spec.nodes]) is pooled
    assert conv_net(10, input_shape=(3, 64, 64)).shape_of("a1") == (64, 16, 16)
    stem = conv_net(10)["stem_conv"].params
    assert (stem["filters"], stem["kernel_size"], stem["stride"]) == (64, 7, 2)


def test_parameter_count_matches_torchvision_resnets():
    # torchvision's resnet18 / resnet34 (1000 classes) have 11,689,512 / 21,797,672 parameters.
    big = {"residual": True, "n_classes": 1000, "input_shape": (3, 224, 224)}
    assert parameter_count(conv_net(blocks=[2, 2, 2, 2], **big)) == 11_689_512
    assert parameter_count(conv_net(blocks=[3, 4, 6, 3], **big)) == 21_797_672
    assert parameter_count(fully_connected(10, 2, input_shape=(4,), n_classes=3)) == 50 + 110 + 33


def test_width_multiplier_equals_scale_width_and_keeps_the_head():
    small = conv_net(30, width_multiplier=0.125)
    assert small == scale_width(conv_net(30), 0.125).replace(name=small.name)
    assert small["a1"].params["filters"] == 8 and small["d1"].params["filters"] == 64
    assert small["head"].params["units"] == 10


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            {"depth": 18},
            "The 'depth' parameter must be one of 4, 10, 20, 30, 50, 76, 100, 120. Got 18",
        ),
        (
            {"blocks": [2, 0, 1, 1]},
            "The 'blocks' field of stages[1] (stage 'b') must be an int in [1, inf) because",
        ),
        (
            {"blocks": [0, 0, 0, 0]},
            "The 'blocks' field of stages[0] (stage 'a') must be an int in [1, inf)",
        ),
        ({"blocks": [1, -1, 0, 0]}, "stages[1] (stage 'b') must be an int in [0, inf). Got -1"),
        ({"blocks": [1, 1]}, "The 'blocks' parameter must be a list of 4 ints"),
        ({"depth": 10, "blocks": [1, 1, 1, 1]}, "needs exactly one of 'depth'"),
        (
            {"depth": 10, "width_multiplier": 0},
            "The 'width_multiplier' parameter must be a float in (0, inf)",
        ),
        (
            {"depth": 10, "input_shape": (784,)},
            "The 'input_shape' parameter must be (channels, height, width)",
        ),
    ],
)
def test_bad_preset_arguments(kwargs, expected):
    with pytest.raises(BundleLabError) as exc:
        conv_net(**kwargs)
    assert expected in _one_line(exc)


def test_bad_fully_connected_arguments():
    with pytest.raises(
        BundleLabError, match="The 'activation' parameter must be one of 'relu', 'tanh'.*Got 'rleu'"
    ):
        fully_connected(8, 2, activation="rleu")
    with pytest.raises(BundleLabError, match=r"The 'depth' parameter must be an int in \[1, inf\)"):
        fully_connected(8, 0)


# --- rewrites ----------------------------------------------------------------------------------


def test_truncation_removes_the_layer_and_the_rest_of_its_stage():
    spec = conv_net(30)  # 3, 3, 5, 3
    names = measured_layers(spec)
    cut = truncate_stage_from(spec, names.index("c3"))  # by report index
    assert cut == truncate_stage_from(spec, "c3")
    assert stage_depths(cut, stages=STAGES) == {"a": 3, "b": 3, "c": 2, "d": 3}
    assert measured_layers(cut) == [n for n in names if n not in ("c3", "c4", "c5")]
    assert cut["d1"].inputs == ("c2",)
    assert layer_count(cut) == 2 * 11 + 2


def test_truncating_a_stage_to_nothing_drops_it_and_rewires():
    spec = conv_net(20, residual=True)
    cut = truncate_stage_from(spec, "b1")
    assert stage_depths(cut, stages=STAGES) == {"a": 2, "b": 0, "c": 3, "d": 2}
    assert "b" not in stage_depths(cut)
    assert cut["c1"].inputs == ("a2",)
    assert cut.shape_of("c1") == (256, 8, 8)  # one downsampling fewer
    last = truncate_stage_from(conv_net(10), "d1")
    assert last["pool"].inputs == ("c1",)
    fc = truncate_stage_from(fully_connected(16, 3), 0)
    assert measured_layers(fc) == [] and fc["head"].inputs == ("input",)


def test_set_stage_depth_shrinks_and_grows_with_stride_one_copies():
    spec = conv_net(120)
    tuned = set_stage_depth(set_stage_depth(spec, "c", 4), "b", 0)
    assert stage_depths(tuned, stages=STAGES) == {"a": 3, "b": 0, "c": 4, "d": 3}
    grown = set_stage_depth(conv_net(10), "b", 3)
    assert measured_layers(grown) == ["a1", "b1", "b2", "b3", "c1", "d1"]
    assert [grown[f"b{k}"].params["stride"] for k in (1, 2, 3)] == [2, 1, 1]
    assert grown == conv_net(blocks=[1, 3, 1, 1]).replace(name=grown.name)
    assert set_stage_depth(grown, "b", 3) is grown
    deeper = set_stage_depth(fully_connected(8, 2), "hidden", 4)
    assert measured_layers(deeper) == ["dense1", "dense2", "dense3", "dense4"]


def test_the_numbering_stays_consistent_with_measured_layers():
    spec = conv_net(50)
    before = measured_layers(spec)
    cut = truncate_stage_from(spec, 12)  # c4: the report's layer 12
    assert before[12] == "c4"
    after = measured_layers(cut)
    assert after == before[:12] + before[21:]
    assert after[12] == "d1"


def test_set_residual_and_rewrite_errors():
    spec = conv_net(10)
    on = set_residual(spec, True)
    assert all(on[n].params["residual"] for n in measured_layers(on))
    assert parameter_count(on) > parameter_count(spec)  # projection shortcuts in stages b-d
    only_c = set_residual(spec, True, stage="c")
    assert [only_c[n].params["residual"] for n in measured_layers(only_c)] == [
        False,
        False,
        True,
        False,
    ]
    assert set_residual(on, False) == spec
    with pytest.raises(
        BundleLabError, match=r"The 'stage' parameter must be one of 'a', 'b', 'c', 'd'. Got 'e'"
    ):
        set_stage_depth(spec, "e", 1)
    with pytest.raises(BundleLabError, match=r"The 'layer' parameter must be an int in \[0, 3\]"):
        truncate_stage_from(spec, 4)
    with pytest.raises(BundleLabError, match="must be a measured layer"):
        truncate_stage_from(spec, "stem_conv")
    with pytest.raises(BundleLabError, match=r"The 'depth' parameter must be an int in \[0, inf\)"):
        set_stage_depth(spec, "a", -1)
    with pytest.raises(
        BundleLabError, match=r"The 'factor' parameter must be a float in \(0, inf\)"
    ):
        scale_width(spec, 0)


def test_rewrites_leave_the_input_spec_unchanged():
    spec = conv_net(20)
    frozen = to_dict(spec)
    truncate_stage_from(spec, "a1")
    set_residual(spec, True)
    scale_width(spec, 0.5)
    assert to_dict(spec) == frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.nodes[0].id = "other"


def test_docstring_examples_run():
    import doctest

    import bundlelab.spec
    from bundlelab.spec import _graph, _presets

    for module in (bundlelab.spec, _graph, _presets):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# -- issue 9 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fabric", ["resnet", "conv"])
def test_scale_width_scales_the_fabrics(fabric):
    # conv_bn and branch nodes were ignored: the fabrics kept their width (139770 parameters
    # before and after scale_width(resnet_fabric(1), 0.5))
    from bundlelab.search import conv_fabric, resnet_fabric

    spec = resnet_fabric(1) if fabric == "resnet" else conv_fabric(2, channels=16, scales=2)
    half = scale_width(spec, 0.5)
    assert parameter_count(half) < 0.4 * parameter_count(spec)
    for node in spec.nodes:
        key = "filters" if "filters" in node.params else None
        if key and node.op in ("conv_bn", "branch"):
            assert half[node.id].params[key] == max(1, round(node.params[key] * 0.5))
    assert half.shape_of(half.output) == spec.shape_of(spec.output)  # n_classes kept
    assert scale_width(spec, 1.0) == spec


def test_conv_net_takes_depth_like_fully_connected():
    assert conv_net(depth=20) == conv_net(20)
    assert layer_count(conv_net(depth=20)) == 20
    with pytest.raises(BundleLabError) as exc:  # the old keyword is gone, in one line
        conv_net(layers=20)
    assert "unexpected keyword argument 'layers'" in _one_line(exc)


def test_unknown_keywords_are_one_line_errors():
    for call in (
        lambda: fully_connected(8, 2, activaton="relu"),
        lambda: scale_width(conv_net(4), factor=0.5, round=True),
        lambda: dumps(conv_net(4), fmt="json"),
        lambda: Node("x", "input", measure=True),
    ):
        with pytest.raises(BundleLabError) as exc:
            call()
        assert "unexpected keyword argument" in _one_line(exc)


def test_numpy_integers_are_converted():
    import numpy as np

    spec = fully_connected(
        np.int64(8), np.int32(2), input_shape=(np.int64(1), 8, 8), n_classes=np.int64(3)
    )
    assert type(spec.n_classes) is int and all(type(d) is int for d in spec.input_shape)
    assert type(spec["dense1"].params["units"]) is int
    assert loads(dumps(spec, format="json"), format="json") == spec  # JSON saw plain ints
    assert conv_net(np.int64(10)) == conv_net(10)


def test_op_definitions_carry_no_dead_fields():
    from bundlelab.spec._ops import OpDef

    assert "doc" not in {f.name for f in dataclasses.fields(OpDef)}
