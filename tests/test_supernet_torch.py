"""The PyTorch super-network: per-example gating, no leaks, BN over alive examples, REINFORCE."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from bundlelab import BundleLabError
from bundlelab.adapters.torch import TorchBackend, TorchSuperTrainee, build_model
from bundlelab.spec import Node, Spec
from bundlelab.training import TrainConfig


def fabric(side=8, name="fabric", width=4):
    """stem -> {t1, t2} -> agg (both optional), stem -> t3 (optional) -> join -> head."""
    return Spec(
        nodes=[
            Node("in", "input"),
            Node("stem", "conv_bn", {"filters": width, "activation": "relu"}, ("in",)),
            Node("t1", "conv_bn", {"filters": width}, ("stem",)),
            Node("t2", "conv_bn", {"filters": width}, ("stem",)),
            Node("agg", "add", {"activation": "relu"}, ("t1", "t2"), optional=("t1", "t2"),
                 measured=True),
            Node("t3", "branch", {"filters": width}, ("stem",)),
            Node("join", "add", {"activation": "relu"}, ("agg", "t3"), optional=("t3",)),
            Node("head", "classifier", {"units": 3}, ("join",)),
        ],
        output="head", input_shape=(1, side, side), n_classes=3, name=name,
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tensors of a few hundred values: more threads only contend (seconds per step on a busy
    # machine instead of milliseconds).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SPEC = fabric()
N = len(SPEC.nodes)
INDEX = {node.id: i for i, node in enumerate(SPEC.nodes)}


def config(**changes):
    return TrainConfig(optimizer="sgd", learning_rate=0.05, weight_decay=0.0, device="cpu",
                       seed=0).replace(**changes)


def alive_of(spec, gates, switches):
    """Reference real architecture: nodes on an input -> output path of usable edges."""
    rows = []
    for row in np.atleast_2d(switches):
        on = {gate for gate, h in zip(gates, row) if h}

        def usable(u, node):
            return u not in node.optional or (u, node.id) in on

        reach = set()
        for node in spec.nodes:
            if node.op == "input" or any(u in reach and usable(u, node) for u in node.inputs):
                reach.add(node.id)
        back = {spec.output}
        for node in reversed(spec.nodes):
            if node.id in back:
                back.update(u for u in node.inputs if usable(u, node))
        rows.append([node.id in reach and node.id in back for node in spec.nodes])
    return np.array(rows, dtype=bool)


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *SPEC.input_shape)).astype(np.float32), rng.integers(0, 3, n)


def forward(trainee, x, switches, alive):
    return trainee.model(torch.from_numpy(x), torch.from_numpy(np.asarray(switches, bool)),
                         torch.from_numpy(np.asarray(alive, bool)))


def test_gates_follow_the_canonical_order_and_start_at_gate_init():
    trainee = TorchSuperTrainee(SPEC, config(), gate_init=2.0)
    assert trainee.gates == [("t1", "agg"), ("t2", "agg"), ("t3", "join")]
    p = trainee.gate_probabilities()
    assert p.dtype == np.float64 and p.shape == (3,)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-2.0)))
    assert isinstance(TorchBackend().build_supernet(SPEC, config()), TorchSuperTrainee)


@pytest.mark.parametrize("training", [True, False])
def test_gating_is_transparent_when_everything_is_on(training):
    trainee = TorchSuperTrainee(SPEC, config())
    seeded = build_model(SPEC, seed=0).state_dict()  # the config's seed gives build_model's weights
    assert all(torch.equal(v, seeded[k]) for k, v in trainee.model.state_dict().items())
    plain_spec = SPEC.replace(nodes=[node.replace(optional=()) for node in SPEC.nodes])
    plain = build_model(plain_spec, seed=123)
    plain.load_state_dict(trainee.model.state_dict())
    plain.train(training), trainee.model.train(training)
    x, _ = batch()
    out = forward(trainee, x, np.ones((6, 3)), np.ones((6, N)))
    assert torch.equal(out, plain(torch.from_numpy(x)))


def sub_network(spec, gates, row):
    """The plain spec of one architecture: its alive nodes and switched-on edges."""
    alive = dict(zip((n.id for n in spec.nodes), alive_of(spec, gates, [row])[0]))
    on = {gate for gate, h in zip(gates, row) if h}
    nodes = [
        node.replace(inputs=[u for u in node.inputs if alive[u] and (
            u not in node.optional or (u, node.id) in on)], optional=())
        for node in spec.nodes if alive[node.id]
    ]
    return spec.replace(nodes=nodes)


SKIP = Spec(
    nodes=[
        Node("in", "input"),
        Node("stem", "conv_bn", {"filters": 4, "activation": "relu"}, ("in",)),
        Node("t1", "conv_bn", {"filters": 4}, ("stem",)),
        Node("agg", "add", {"activation": "relu"}, ("stem", "t1"), optional=("stem", "t1")),
        Node("head", "classifier", {"units": 3}, ("agg",)),
    ],
    output="head", input_shape=(1, 8, 8), n_classes=3, name="skip",
)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("row", [(1, 1), (0, 1), (1, 0)])
def test_one_architecture_computes_its_plain_sub_network(row, training):
    # (0, 1): the skip stem -> agg is off while stem stays alive through t1
    trainee = TorchSuperTrainee(SKIP, config())
    plain = build_model(sub_network(SKIP, trainee.gates, row))
    weights = trainee.model.state_dict()
    plain.load_state_dict({key: weights[key] for key in plain.state_dict()})
    plain.train(training), trainee.model.train(training)
    x, _ = batch()
    switches = np.tile(row, (6, 1))
    out = forward(trainee, x, switches, alive_of(SKIP, trainee.gates, switches))
    torch.testing.assert_close(out, plain(torch.from_numpy(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_a_dead_branch_cannot_leak_into_the_logits(training):
    trainee = TorchSuperTrainee(SPEC, config())
    trainee.model.train(training)
    x, _ = batch()
    switches = np.ones((6, 3), bool)
    switches[0, 0] = False  # example 0: t1 -> agg off, so t1 is dead for it
    switches[1] = False     # example 1: nothing reaches the output
    alive = alive_of(SPEC, trainee.gates, switches)
    assert not alive[0, INDEX["t1"]] and alive[0, INDEX["head"]] and not alive[1].any()
    before = forward(trainee, x, switches, alive).detach()
    assert torch.equal(before[1], torch.zeros(3))
    t1 = trainee.model.nodes["t1"]
    with torch.no_grad():
        t1.bn.bias.add_(5.0)  # a conv + BN on zeros would emit this shift
        t1.conv.conv.weight.mul_(-3.0)
    after = forward(trainee, x, switches, alive).detach()
    assert torch.equal(after[0], before[0])
    assert torch.equal(after[1], torch.zeros(3))
    assert not torch.allclose(after[2:], before[2:])  # the live examples did change


def test_examples_are_independent_in_eval_mode():
    trainee = TorchSuperTrainee(SPEC, config())
    trainee.model.eval()
    x, _ = batch(8)
    rng = np.random.default_rng(1)
    switches = rng.random((8, 3)) < 0.6
    with torch.no_grad():
        together = forward(trainee, x, switches, alive_of(SPEC, trainee.gates, switches))
        changed = switches.copy()
        changed[1:] = ~changed[1:]  # every other example switches every gate
        others = forward(trainee, x, changed, alive_of(SPEC, trainee.gates, changed))
        alone = forward(trainee, x[:1], switches[:1], alive_of(SPEC, trainee.gates, switches[:1]))
    assert torch.equal(together[0], others[0])
    torch.testing.assert_close(together[:1], alone, rtol=1e-6, atol=1e-6)
    weights = trainee.model.state_dict()
    for b, row in enumerate(switches):
        if not alive_of(SPEC, trainee.gates, row)[0].any():
            assert torch.equal(together[b], torch.zeros(3))
            continue
        plain = build_model(sub_network(SPEC, trainee.gates, row)).eval()
        plain.load_state_dict({key: weights[key] for key in plain.state_dict()})
        with torch.no_grad():
            expected = plain(torch.from_numpy(x[b:b + 1]))[0]
        torch.testing.assert_close(together[b], expected, rtol=1e-6, atol=1e-6)


def test_batch_norm_statistics_exclude_dead_examples():
    trainee = TorchSuperTrainee(SPEC, config())
    model = trainee.model
    x, _ = batch(8)
    switches = np.ones((8, 3), bool)
    switches[[0, 3, 4], 0] = False  # t1 dead for three examples
    alive = alive_of(SPEC, trainee.gates, switches)
    assert alive[:, INDEX["stem"]].all() and alive[:, INDEX["t1"]].sum() == 5
    with torch.no_grad():
        stem = copy.deepcopy(model.nodes["stem"]).train()(torch.from_numpy(x))
        rows = torch.from_numpy(alive[:, INDEX["t1"]])
        conv = model.nodes["t1"].conv(stem[rows])
        everyone = model.nodes["t1"].conv(stem)
        forward(trainee, x, switches, alive)
    bn = model.nodes["t1"].bn
    torch.testing.assert_close(bn.running_mean, 0.1 * conv.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * conv.var(dim=(0, 2, 3)))
    assert not torch.allclose(bn.running_mean, 0.1 * everyone.mean(dim=(0, 2, 3)))


def test_a_lone_alive_example_uses_running_statistics_even_on_a_1x1_map():
    spec = fabric(side=1)
    trainee = TorchSuperTrainee(spec, config())
    x = np.random.default_rng(0).normal(size=(4, 1, 1, 1)).astype(np.float32)
    switches = np.ones((4, 3), bool)
    switches[1:, 0] = False  # t1 alive for example 0 only
    alive = alive_of(spec, trainee.gates, switches)
    out = trainee.train_step(x, np.array([0, 1, 2, 0]), switches, alive, np.zeros(4))
    assert np.isfinite(out["loss"])
    bn = trainee.model.nodes["t1"].bn
    assert torch.equal(bn.running_mean, torch.zeros(4)) and bn.training


def test_reinforce_gradient_matches_the_hand_formula():
    trainee = TorchSuperTrainee(SPEC, config(), gate_optimizer="sgd", gate_learning_rate=1.0)
    gamma = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        trainee.gate_logits.copy_(gamma)
    x, y = batch(8)
    rng = np.random.default_rng(2)
    switches = rng.random((8, 3)) < 0.5
    switches[:, 2] |= ~switches[:, :2].any(1)  # no empty architectures
    alive = alive_of(SPEC, trainee.gates, switches)
    penalty = rng.random(8).astype(np.float32)
    with torch.no_grad():
        logits = forward(copy.deepcopy(trainee), x, switches, alive)
        losses = F.cross_entropy(logits, torch.from_numpy(y), reduction="none").double().numpy()
    out = trainee.train_step(x, y, switches, alive, penalty)
    reward = -(losses + penalty)
    h, p = switches.astype(np.float64), 1 / (1 + np.exp(-gamma.double().numpy()))
    gradient = -((reward - reward.mean())[:, None] * (h - p)).mean(0)
    np.testing.assert_allclose(gamma.numpy() - trainee.gate_logits.detach().numpy(), gradient,
                               rtol=1e-5, atol=1e-6)
    assert out["n"] == 8 and 0 <= out["correct"] <= 8
    np.testing.assert_allclose(out["loss"], losses.mean(), rtol=1e-6)


def test_warm_up_leaves_gates_and_a_penalty_switches_a_gate_off():
    trainee = TorchSuperTrainee(SPEC, config(), gate_learning_rate=0.2)
    x, y = batch(16)
    weights = copy.deepcopy(trainee.model.state_dict())
    trainee.train_step(x, y, np.ones((16, 3)), np.ones((16, N)), np.zeros(16), reinforce=False)
    assert torch.equal(trainee.gate_logits.detach(), torch.full((3,), 3.0))
    assert not torch.equal(weights["nodes.t1.conv.conv.weight"],
                           trainee.model.state_dict()["nodes.t1.conv.conv.weight"])
    rng = np.random.default_rng(3)
    start = trainee.gate_probabilities()
    for _ in range(20):
        switches = rng.random((16, 3)) < trainee.gate_probabilities()
        alive = alive_of(SPEC, trainee.gates, switches)
        trainee.train_step(x, y, switches, alive, 10.0 * switches[:, 2])  # t3 -> join costs
    end = trainee.gate_probabilities()
    assert start[2] > 0.9 and end[2] < 0.5


def test_evaluate_runs_one_architecture_deterministically():
    trainee = TorchSuperTrainee(SPEC, config())
    x, y = batch(10)
    on, alive = np.array([True, False, True]), alive_of(SPEC, trainee.gates, [[1, 0, 1]])[0]
    first = trainee.evaluate(x, y, on, alive, inference_batch_size=3)
    whole = trainee.evaluate(x, y, on, alive, inference_batch_size=10)
    assert first["accuracy"] == whole["accuracy"]
    np.testing.assert_allclose(first["loss"], whole["loss"], rtol=1e-6)
    assert trainee.model.training
    trainee.model.eval()
    with torch.no_grad():
        logits = forward(trainee, x, np.tile(on, (10, 1)), np.tile(alive, (10, 1)))
    expected = float(F.cross_entropy(logits, torch.from_numpy(y)))
    np.testing.assert_allclose(first["loss"], expected, rtol=1e-6)
    with pytest.raises(BundleLabError, match="'alive' parameter must have shape"):
        trainee.evaluate(x, y, on, alive[:-1], inference_batch_size=3)


def test_save_and_load_round_trip(tmp_path):
    x, y = batch(8)

    def step(trainee, seed):
        rng = np.random.default_rng(seed)
        switches = rng.random((8, 3)) < 0.7
        return trainee.train_step(x, y, switches, alive_of(SPEC, trainee.gates, switches),
                                  rng.random(8))

    first = TorchSuperTrainee(SPEC, config(optimizer="ranger"))
    step(first, 0), step(first, 1)
    first.save(tmp_path / "super.pt")
    second = TorchSuperTrainee(SPEC, config(optimizer="ranger", seed=7))
    second.load(tmp_path / "super.pt")
    assert torch.equal(first.gate_logits, second.gate_logits)
    assert step(first, 2) == step(second, 2)
    assert torch.equal(first.gate_logits, second.gate_logits)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key

    with pytest.raises(BundleLabError, match="another super-network"):
        TorchSuperTrainee(fabric(width=8, name="wide"), config()).load(tmp_path / "super.pt")
    fewer = SPEC.replace(nodes=[n.replace(optional=()) if n.id == "join" else n
                                for n in SPEC.nodes])
    with pytest.raises(BundleLabError, match="another super-network"):
        TorchSuperTrainee(fewer, config()).load(tmp_path / "super.pt")


def test_node_seconds():
    seconds = TorchSuperTrainee(SPEC, config()).node_seconds(4, repeats=2)
    assert seconds.shape == (N,) and seconds[0] == 0
    assert np.all(np.isfinite(seconds)) and np.all(seconds >= 0) and seconds[1:].min() > 0


def test_settings_are_converted_and_checked_in_one_line():
    trainee = TorchSuperTrainee(SPEC, config(), gate_init=np.float32(2.0),
                                gate_learning_rate=np.float64(0.05))
    np.testing.assert_allclose(trainee.gate_probabilities(), 1 / (1 + np.exp(-2.0)))
    for kwargs, fragment in [(dict(gate_init=float("nan")), "'gate_init' parameter"),
                             (dict(gate_optimizer="adamw"), "'gate_optimizer' parameter"),
                             (dict(gate_lr=0.1), "unexpected keyword argument 'gate_lr'")]:
        with pytest.raises(BundleLabError, match=fragment) as error:
            TorchSuperTrainee(SPEC, config(), **kwargs)
        assert "\n" not in str(error.value)


def test_torch_backend_follows_the_declared_super_network_protocol():
    from bundlelab.training import SuperNetBackend, SuperTrainee, get_backend

    backend = get_backend("torch")
    assert isinstance(backend, SuperNetBackend)
    assert isinstance(backend.build_supernet(SPEC, config()), SuperTrainee)
