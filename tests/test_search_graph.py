"""The budgeted search's framework-free half: real architectures, costs, rounds, extraction."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab import BundleLabError
from bundlelab.search import (
    GatedGraph,
    SearchConfig,
    cheapest_architecture,
    conv_fabric,
    extract,
    fit_to_budget,
    get_cost,
    resnet_fabric,
    rounds,
)
from bundlelab.spec import Node, Spec, layer_count, measured_layers, parameter_count


def all_on_cost(spec, name):
    graph = GatedGraph(spec)
    alive, live = graph.real_architecture(graph.all_on()[None])
    return get_cost(name)(graph, alive, live)[0]


# -- the paper's figures ---------------------------------------------------------------------


@pytest.mark.parametrize("n, one, two_or_four", [(3, 22, 20), (18, 112, 110)])
def test_resnet_rounds_match_the_paper(n, one, two_or_four):
    spec = resnet_fabric(n, extra=False)
    assert layer_count(spec) == 6 * n + 2
    assert all_on_cost(spec, "parallel:1") == one
    assert all_on_cost(spec, "parallel:2") == two_or_four
    assert all_on_cost(spec, "parallel:4") == two_or_four


@pytest.mark.parametrize("columns, expected", [(8, 171), (4, 83), (2, 39), (1, 12)])
def test_fabric_rounds_on_one_machine_match_the_paper(columns, expected):
    spec = conv_fabric(columns, channels=2)
    assert len(spec.nodes) - 1 == expected  # every node but the input computes
    assert all_on_cost(spec, "parallel:1") == expected


def test_the_fabric_has_the_papers_transformations():
    graph = GatedGraph(conv_fabric(8, channels=2))
    assert graph.n_gates == 122
    assert sum(node.op == "add" for node in graph.spec.nodes) == 47  # + the stem: 48


def figure8(kind):
    """Two graphs in the spirit of the supplementary's Figure 8 (n = 2 machines): 9 modules
    that need 6 rounds (a chain of three, then three pairs) and 10 modules that need 5 (five
    pairs)."""
    nodes = [Node("input", "input")]
    previous = ["input"]
    layers = [1, 1, 1, 2, 2, 2] if kind == "blue" else [2, 2, 2, 2, 2]
    for depth, width in enumerate(layers):
        ids = [f"m{depth}_{k}" for k in range(width)]
        if width == 1:
            source = previous if len(previous) == 1 else None
            nodes.append(Node(ids[0], "add", inputs=tuple(previous)))
        else:
            for node_id, source in zip(ids, itertools.cycle(previous)):
                nodes.append(Node(node_id, "add", inputs=(source,)))
        previous = ids
    nodes.append(Node("head", "dense", {"units": 2}, tuple(previous[:1])))
    if len(previous) > 1:  # every node must feed the output
        nodes[-1] = Node("join", "add", inputs=tuple(previous))
        nodes.append(Node("head", "dense", {"units": 2}, ("join",)))
    return Spec(tuple(nodes), "head", (4,), 2)


def test_figure_8_two_machines():
    # the join and the head add one round each to both networks
    blue, red = figure8("blue"), figure8("red")
    assert all_on_cost(blue, "parallel:2") - 2 == 6
    assert all_on_cost(red, "parallel:2") - 2 == 5
    assert all_on_cost(blue, "parallel:1") < all_on_cost(red, "parallel:1")


def test_resnet_flops_and_parameters():
    spec = resnet_fabric(3, extra=False)
    assert all_on_cost(spec, "params") == parameter_count(spec) == 272474
    # ResNet-20 on CIFAR: about 41 M multiply-accumulates (He et al. report ~41 M)
    assert 40e6 < all_on_cost(spec, "flops") < 42e6


# -- costs by hand ---------------------------------------------------------------------------


def small_supernet():
    """input -> stem -> {t1 (3x3 conv), t2 (upsampled 3x3 conv), t3 (strided)}; sums; head."""
    nodes = (
        Node("input", "input"),
        Node("stem", "conv_bn", {"filters": 2, "activation": "relu"}, ("input",)),
        Node("t1", "conv_bn", {"filters": 2}, ("stem",)),
        Node("t2", "conv_bn", {"filters": 2, "stride": 2}, ("stem",)),
        Node("up", "conv_bn", {"filters": 2, "upsample": 2}, ("t2",)),
        Node("sum", "add", {"activation": "relu"}, ("t1", "up", "stem"), optional=("t1", "up"),
             measured=True),
        Node("head", "classifier", {"units": 3}, ("sum",)),
    )
    return Spec(nodes, "head", (1, 4, 4), 3)


def test_flops_count_strided_and_upsampled_convs_at_their_output_resolution():
    spec = small_supernet()
    graph = GatedGraph(spec)
    stem = 1 * 2 * 4 * 4 * 9
    t1 = 2 * 2 * 4 * 4 * 9
    t2 = 2 * 2 * 2 * 2 * 9  # stride 2: a 2x2 output
    up = 2 * 2 * 4 * 4 * 9  # upsampled back to 4x4 before the conv
    add_each = 2 * 4 * 4
    head = 2 * 3
    flops = get_cost("flops")
    for gates, expected in [
        ([1, 1], stem + t1 + t2 + up + 2 * add_each + head),
        ([1, 0], stem + t1 + add_each + head),  # t2 and up are dead
        ([0, 0], stem + head),  # only the identity edge into the sum
    ]:
        alive, live = graph.real_architecture(np.array([gates], dtype=bool))
        assert flops(graph, alive, live)[0] == expected


def test_a_node_cut_from_every_path_costs_nothing():
    graph = GatedGraph(small_supernet())
    alive, _ = graph.real_architecture(np.array([True, False]))
    assert [graph.node_ids[i] for i in np.flatnonzero(alive)] == ["input", "stem", "t1", "sum", "head"]


# -- real architecture against a plain reference ---------------------------------------------


@st.composite
def random_supernets(draw):
    n = draw(st.integers(2, 8))
    nodes = [Node("input", "input")]
    consumed = set()
    for k in range(n):
        earlier = [node.id for node in nodes]
        inputs = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True))
        optional = draw(st.lists(st.sampled_from(inputs), max_size=len(inputs), unique=True))
        nodes.append(Node(f"n{k}", "add", inputs=tuple(inputs), optional=tuple(optional)))
        consumed.update(inputs)
    loose = [node.id for node in nodes if node.id not in consumed]
    nodes.append(Node("join", "add", inputs=tuple(loose)))
    nodes.append(Node("head", "dense", {"units": 2}, ("join",)))
    spec = Spec(tuple(nodes), "head", (3,), 2)
    gates = draw(st.lists(st.booleans(), min_size=GatedGraph(spec).n_gates,
                          max_size=GatedGraph(spec).n_gates))
    return spec, np.array(gates, dtype=bool)


def reference_alive(spec, switches):
    """Nodes on some input-to-output path of on edges, by enumerating every path."""
    gate = {edge: on for edge, on in zip(GatedGraph(spec).gates, switches)}
    consumers = {node.id: [] for node in spec.nodes}
    for node in spec.nodes:
        for source in node.inputs:
            if gate.get((source, node.id), True):
                consumers[source].append(node.id)
    on_path = set()

    def walk(node_id, path):
        if node_id == spec.output:
            on_path.update(path + [node_id])
        for nxt in consumers[node_id]:
            walk(nxt, path + [node_id])

    walk("input", [])
    return on_path


@settings(max_examples=150, deadline=None)
@given(random_supernets())
def test_real_architecture_is_the_union_of_fully_on_paths(case):
    spec, gates = case
    graph = GatedGraph(spec)
    alive, live = graph.real_architecture(gates[None])
    assert {graph.node_ids[i] for i in np.flatnonzero(alive[0])} == reference_alive(spec, gates)
    # batches are rows of the same computation
    both, _ = graph.real_architecture(np.stack([gates, ~gates]))
    assert (both[0] == alive[0]).all()
    assert (both[1] == graph.real_architecture((~gates)[None])[0][0]).all()
    # the extracted spec runs exactly the alive nodes, and its rounds equal the gated ones'
    if alive[0, graph.output]:
        plain = extract(spec, gates)
        assert [n.id for n in plain.nodes] == [graph.node_ids[i] for i in np.flatnonzero(alive[0])]
        assert all(not n.optional for n in plain.nodes)
        plain_graph = GatedGraph(plain)
        a, l = plain_graph.real_architecture(plain_graph.all_on()[None])
        for machines in (1, 2, 3):
            assert rounds(plain_graph, a[0], l[0], machines) == rounds(graph, alive[0], live[0], machines)


def reference_rounds(graph, alive, live, machines):
    """The allocation as the docs state it: each round scans every waiting node in order."""
    waiting = [int(v) for v in np.flatnonzero(alive)]
    predecessors = {v: [] for v in waiting}
    for e in np.flatnonzero(live):
        predecessors[int(graph.targets[e])].append(int(graph.sources[e]))
    pending, count = set(waiting), 0
    while waiting:
        used, taken = 0, []
        for v in waiting:
            if used >= machines:
                break
            if not any(u in pending for u in predecessors[v]):
                taken.append(v)
                used += int(graph.compute_weight[v])
        pending.difference_update(taken)
        waiting = [v for v in waiting if v not in taken]
        count += used > 0
    return count


@settings(max_examples=150, deadline=None)
@given(random_supernets(), st.integers(1, 4))
def test_rounds_follow_the_documented_scan(case, machines):
    spec, gates = case
    graph = GatedGraph(spec)
    alive, live = graph.real_architecture(gates)
    assert rounds(graph, alive, live, machines) == reference_rounds(graph, alive, live, machines)


@pytest.mark.parametrize("spec", [resnet_fabric(2), conv_fabric(4, channels=2)],
                         ids=["resnet-fabric", "conv-fabric"])
def test_rounds_follow_the_documented_scan_on_sampled_fabrics(spec):
    graph = GatedGraph(spec)
    gates = np.random.default_rng(0).random((20, graph.n_gates)) < 0.7
    alive, live = graph.real_architecture(gates)
    for b in range(20):
        for machines in (1, 2, 4):
            assert rounds(graph, alive[b], live[b], machines) == \
                reference_rounds(graph, alive[b], live[b], machines)


# -- extraction, the cheapest architecture ---------------------------------------------------


def test_extracting_the_fabric_without_its_extra_gates_gives_resnet_20():
    fabric = resnet_fabric(3, width_multiplier=0.5, input_shape=(1, 8, 8))
    graph = GatedGraph(fabric)
    plain_gates = np.array([".from" not in target and ".from" not in source
                            for source, target in graph.gates])
    plain = extract(fabric, plain_gates)
    resnet = resnet_fabric(3, extra=False, width_multiplier=0.5, input_shape=(1, 8, 8))
    assert parameter_count(plain) == parameter_count(resnet)
    assert measured_layers(plain) == measured_layers(resnet)
    assert all_on_cost(plain, "flops") == all_on_cost(resnet, "flops")


def test_the_cheapest_architecture_is_a_single_path():
    spec = resnet_fabric(3, extra=False)
    gates, rounds_needed = cheapest_architecture(GatedGraph(spec), get_cost("parallel:1"))
    # stem, 9 sums, the head, and one transformation in each of the two downsampling blocks
    assert rounds_needed == 13 and gates.sum() == 2
    _, flops = cheapest_architecture(GatedGraph(spec), get_cost("flops"))
    assert flops < all_on_cost(spec, "flops") / 10


# -- bad input -------------------------------------------------------------------------------


def test_unknown_cost_names_the_known_ones():
    with pytest.raises(BundleLabError, match="use flops, params, latency or parallel:N"):
        get_cost("energy")


@pytest.mark.parametrize("changes, fragment", [
    ({"lam": 0.0}, "'lam' parameter must be a float in (0, inf)"),
    ({"lam": -1.0}, "'lam' parameter must be"),
    ({"cost": "parallel:0"}, "must be an int in [1, inf)"),
    ({"penalty": "square"}, "'penalty' parameter must be one of 'hinge', 'abs'"),
])
def test_bad_search_options_are_one_line_errors(changes, fragment):
    with pytest.raises(BundleLabError) as error:
        SearchConfig(**{"budget": 1e6, **changes})
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_gates_that_cut_the_output_off_are_an_empty_architecture():
    spec = small_supernet().replace(nodes=tuple(
        n.replace(inputs=("t1", "up"), optional=("t1", "up")) if n.id == "sum" else n
        for n in small_supernet().nodes))
    with pytest.raises(BundleLabError, match="no path from the input to the output"):
        extract(spec, np.array([False, False]))


# -- model selection -------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_pareto_front_keeps_exactly_the_undominated_points(pairs):
    from bundlelab.search import pareto_front

    points = [{"cost": c, "validation_accuracy": a} for c, a in pairs]
    flags = pareto_front(points)
    for p, on_front in zip(points, flags):
        better = [q for q in points if (q["cost"], -q["validation_accuracy"]) != (p["cost"], -p["validation_accuracy"])
                  and q["cost"] <= p["cost"] and q["validation_accuracy"] >= p["validation_accuracy"]]
        assert on_front == (not better)
    assert any(flags)


def test_budget_checks_choose_within_the_budget_and_compare_with_the_family():
    from bundlelab.search import budget_checks

    points = [
        {"name": "over", "budget": 10.0, "cost": 12.0, "met_budget": False,
         "validation_accuracy": 0.99, "test_accuracy": 0.99},
        {"name": "under", "budget": 10.0, "cost": 8.0, "met_budget": True,
         "validation_accuracy": 0.90, "test_accuracy": 0.905},
        {"name": "never", "budget": 5.0, "cost": 7.0, "met_budget": False,
         "validation_accuracy": 0.5, "test_accuracy": 0.5},
    ]
    family = [{"name": "small", "cost": 4.0, "test_accuracy": 0.80},
              {"name": "mid", "cost": 9.0, "test_accuracy": 0.91},
              {"name": "big", "cost": 20.0, "test_accuracy": 0.99}]
    ten, five = budget_checks(points, family, [10.0, 5.0])
    assert ten["architecture"] == "under" and ten["met_budget"]
    assert ten["best_family_member"] == "mid" and ten["within_one_point"]  # 0.905 vs 0.91
    assert five["architecture"] == "never" and not five["met_budget"]
    assert five["best_family_member"] == "small"


def test_search_options_are_converted_so_a_search_folder_can_record_them():
    import json

    settings = SearchConfig(budget=np.float32(1e6), lam=np.float64(1e-6),
                            warmup_epochs=np.int64(0), search_epochs=np.int32(3),
                            validation_fraction=np.float16(0.25))
    assert type(settings.warmup_epochs) is int and type(settings.budget) is float
    json.dumps(settings.to_dict())
    assert SearchConfig.from_dict(settings.to_dict()) == settings
    with pytest.raises(BundleLabError, match="did you mean 'search_epochs'"):
        SearchConfig.from_dict({**settings.to_dict(), "search_epoch": 3})


@pytest.mark.parametrize("changes, fragment", [
    ({"validation_fraction": "0.1"}, "'validation_fraction' parameter must be a float in (0, 1)"),
    ({"validation_fraction": 1.0}, "'validation_fraction' parameter must be a float in (0, 1)"),
    ({"warmup_epochs": -1}, "'warmup_epochs' parameter must be an int in [0, inf)"),
    ({"cost": get_cost("flops")}, "'cost' parameter must be a cost name"),
])
def test_more_bad_search_options_are_one_line_errors(changes, fragment):
    with pytest.raises(BundleLabError) as error:
        SearchConfig(**{"budget": 1e6, **changes})
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_switches_of_the_wrong_width_are_one_line_errors():
    spec = small_supernet()
    with pytest.raises(BundleLabError, match="expected 2 switches"):
        extract(spec, np.array([True, True, True]))
    with pytest.raises(BundleLabError, match="expected 2 switches"):
        GatedGraph(spec).real_architecture(np.ones((4, 3), dtype=bool))


def test_deterministic_switches_turn_on_the_gates_above_one_half():
    from bundlelab.search import deterministic_switches

    assert deterministic_switches(np.array([0.2, 0.5, 0.51])).tolist() == [False, False, True]


# -- the final budget step (a departure from the paper) ------------------------------------


def _cost_of(graph, switches, name="flops"):
    alive, live = graph.real_architecture(np.asarray(switches)[None])
    return float(get_cost(name)(graph, alive, live)[0])


def _slow_budget_step(graph, probabilities, budget, name="flops"):
    """The documented rule, one gate at a time, without batching: the reference."""
    switches = np.asarray(probabilities) > 0.5
    dropped = []
    while _cost_of(graph, switches, name) > budget:
        for gate in sorted(np.flatnonzero(switches), key=lambda g: (probabilities[g], g)):
            trial = switches.copy()
            trial[gate] = False
            if graph.real_architecture(trial)[0][graph.output]:
                switches = trial
                dropped.append(int(gate))
                break
        else:
            break
    return switches, dropped


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.4, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_budget_step_drops_the_least_likely_gates_until_the_architecture_fits(fraction, seed):
    spec = resnet_fabric(2, k=2, filters=(4, 8))
    graph = GatedGraph(spec)
    cost = get_cost("flops")
    full = _cost_of(graph, graph.all_on())
    minimum = cheapest_architecture(graph, cost)[1]
    budget = minimum + fraction * (full - minimum)
    probabilities = np.random.default_rng(seed).uniform(0.5001, 1.0, graph.n_gates)
    switches, final, dropped = fit_to_budget(graph, probabilities, cost, budget)
    expected, expected_dropped = _slow_budget_step(graph, probabilities, budget)
    assert dropped == expected_dropped and np.array_equal(switches, expected)
    assert final == _cost_of(graph, switches)
    assert graph.real_architecture(switches)[0][graph.output]  # a path is kept
    # probabilities of the dropped gates come in ascending order, and none kept is lower
    # than a dropped one unless the path needed it
    assert [probabilities[g] for g in dropped] == sorted(probabilities[g] for g in dropped)
    if final <= budget:
        assert not dropped or _cost_of(graph, switches | np.isin(
            np.arange(graph.n_gates), dropped[-1:])) > budget


def test_an_architecture_within_the_budget_is_left_as_it_is():
    graph = GatedGraph(resnet_fabric(1, k=2, filters=(4, 8)))
    probabilities = np.full(graph.n_gates, 0.9)
    full = _cost_of(graph, graph.all_on())
    switches, cost, dropped = fit_to_budget(graph, probabilities, get_cost("flops"), full)
    assert switches.all() and cost == full and dropped == []


def test_a_budget_no_path_fits_ends_over_it_on_a_single_path():
    graph = GatedGraph(resnet_fabric(2, k=2, filters=(4, 8)))
    cost = get_cost("flops")
    minimum = cheapest_architecture(graph, cost)[1]
    switches, final, dropped = fit_to_budget(graph, np.full(graph.n_gates, 0.9), cost,
                                             minimum / 2)
    assert final > minimum / 2 and dropped
    assert graph.real_architecture(switches)[0][graph.output]
    # nothing more can go: each gate still on carries the only path
    for gate in np.flatnonzero(switches):
        trial = switches.copy()
        trial[gate] = False
        assert not graph.real_architecture(trial)[0][graph.output]


def test_the_budget_step_is_an_option_on_by_default():
    assert SearchConfig(budget=1e5).budget_step is True
    assert SearchConfig(budget=1e5, budget_step=False).to_dict()["budget_step"] is False
    with pytest.raises(BundleLabError, match="budget_step"):
        SearchConfig(budget=1e5, budget_step="yes")
