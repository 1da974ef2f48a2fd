"""The PyTorch adapter on real models: taps, numbers, model state, training hook, errors, memory."""

import json
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from bundlelab import BundleLabError, find_bundles  # noqa: E402
from bundlelab._errors import MissingDependencyError  # noqa: E402
from bundlelab.adapters import get_adapter, measure_bundles  # noqa: E402
from bundlelab.adapters import torch as torch_adapter  # noqa: E402
from bundlelab.adapters.torch import BundleHook, TorchAdapter, audit, trace_model  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def quantized_data(rng, n=300, d=4):
    """Few distinct inputs (3**d) under random labels: bundles of duplicates that conflict."""
    x = torch.from_numpy(rng.integers(0, 3, size=(n, d)).astype(np.float32))
    return x, rng.integers(0, 3, size=n)


def model_amplitude(model):
    return max(float(p.detach().abs().max()) for p in model.parameters())


def assert_same_bundles(result, activations, labels, **options):
    expected = find_bundles(activations, labels, layer=result.layer, **options)
    assert np.array_equal(result.bundle_ids, expected.bundle_ids)
    assert (result.n_bundles, result.n_conflicting, result.entropy) == (
        expected.n_bundles, expected.n_conflicting, expected.entropy
    )
    return expected


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- (1) the adapter's numbers are find_bundles on activations computed by hand ----------------


def test_mlp_layers_equal_find_bundles_on_hand_computed_activations(rng):
    x, y = quantized_data(rng)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )
    options = dict(learning_rate=0.5, batch_size=8)  # |B|, as find_bundles calls it
    core = options
    report = audit(model, x, y, n_samples=None, inference_batch_size=64, **options)
    assert report.names == ["1", "3"]  # after each non-linearity, never the logits
    with torch.no_grad():
        a1 = model[1](model[0](x))
        a3 = model[3](model[2](a1))
    w = model_amplitude(model)
    assert report.params["weight_amplitude"] == w
    assert report.params["learning_rate"] == 0.5 and report.params["batch_size"] == 8
    for name, activations in (("1", a1), ("3", a3)):
        expected = assert_same_bundles(
            report[name], activations.numpy(), y, weight_amplitude=w, **core
        )
        assert 0 < expected.n_bundles < len(y) and expected.entropy > 0  # not a trivial case

    threshold = audit(
        model, x, y, mode="threshold", gamma=1e-3, inference_batch_size=64, progress=True,
        **options,
    )
    assert_same_bundles(threshold["3"], a3.numpy(), y, mode="threshold", gamma=1e-3, **core)

    # a seeded subset: the sorted indices default_rng(seed).choice(N, n_samples, replace=False)
    subset = audit(model, x, y, n_samples=100, seed=3, inference_batch_size=64, **options)
    index = np.sort(np.random.default_rng(3).choice(len(y), 100, replace=False))
    assert subset["1"].n_samples == 100
    assert_same_bundles(subset["1"], a1.numpy()[index], y[index], weight_amplitude=w, **core)
    again = audit(model, x, y, n_samples=100, seed=3, **options)
    assert np.array_equal(again["3"].bundle_ids, subset["3"].bundle_ids)

    # per-layer w: the parameters of the Linear before each activation
    per_layer = audit(model, x, y, n_samples=None, weight_amplitude="layer", **options)
    amplitudes = per_layer.params["layer_weight_amplitudes"]
    assert per_layer.params["weight_amplitude"] == "layer"  # as the Keras adapter says it
    assert amplitudes == {"1": model_amplitude(model[0]), "3": model_amplitude(model[2])}
    for name, activations in (("1", a1), ("3", a3)):
        assert_same_bundles(
            per_layer[name], activations.numpy(), y, weight_amplitude=amplitudes[name], **core
        )


def test_cnn_layers_equal_find_bundles_and_select_by_type(rng):
    x = torch.from_numpy(rng.integers(0, 2, size=(300, 1, 3, 3)).astype(np.float32))
    y = rng.integers(0, 4, size=300)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 2), nn.ReLU(), nn.Conv2d(4, 8, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4)
    )
    report = audit(model, x, y, inference_batch_size=50, learning_rate=0.1)
    assert report.names == ["1", "3"]
    with torch.no_grad():
        c0 = model[0](x)
        a1 = model[1](c0)
        c2 = model[2](a1)
        a3 = model[3](c2)
    w = model_amplitude(model)
    for name, activations in (("1", a1), ("3", a3)):
        assert_same_bundles(
            report[name], activations.numpy(), y, weight_amplitude=w, learning_rate=0.1
        )
    by_type = audit(model, x, y, layers=[nn.Conv2d], learning_rate=0.1)
    assert by_type.names == ["0", "2"]
    assert by_type["2"].n_features == 8
    assert_same_bundles(by_type["0"], c0.numpy(), y, weight_amplitude=w, learning_rate=0.1)


def test_registered_adapter_follows_the_protocol(rng):
    x, y = quantized_data(rng, n=120)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    adapter = get_adapter("torch")
    assert isinstance(adapter, TorchAdapter) and adapter.layer_names(model, x) == ["1"]
    streamed = measure_bundles(adapter, model, x, y, inference_batch_size=32, weight_amplitude=0.5)
    audited = audit(model, x, y, weight_amplitude=0.5)
    assert np.array_equal(streamed["1"].bundle_ids, audited["1"].bundle_ids)


# -- (2) conflicts found at the right layer ----------------------------------------------------


def deep_mlp(width=16, depth=4):
    layers = [nn.Linear(6, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def test_layer_with_constant_output_is_reported_conflicting_healthy_net_is_not(rng):
    x = torch.randn(256, 6)
    y = rng.integers(0, 4, size=256)
    healthy = deep_mlp()
    report = audit(healthy, x, y)
    assert report.names == ["1", "3", "5", "7"]
    assert report.first_conflicting is None
    assert all(r.entropy == 0.0 and r.n_bundles == 256 for r in report)

    broken = deep_mlp()
    with torch.no_grad():
        broken[4].weight.zero_()
        broken[4].bias.fill_(-1.0)  # ReLU "5" outputs 0 for every sample
    report = audit(broken, x, y)
    assert report.first_conflicting.layer == "5"
    assert report["5"].fully_conflicting and report["7"].fully_conflicting
    assert report["1"].entropy == report["3"].entropy == 0.0
    assert report["5"].entropy == pytest.approx(
        -sum(p * np.log(p) for p in np.bincount(y) / len(y))
    )


# -- (3) execution order, shared modules, in-place ops -----------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)  # shared: called twice per forward

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)  # registered first, runs last
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.block1 = BasicBlock(4)
        self.block2 = BasicBlock(4)

    def forward(self, x):
        h = self.block2(self.block1(self.act(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))


def test_shared_relu_gives_one_tap_per_call_in_execution_order():
    model = TinyResNet()
    for bn in (model.block1.bn1, model.block1.bn2, model.block2.bn1, model.block2.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(40, 1, 5, 5)
    names = ["act", "block1.relu", "block1.relu:2", "block2.relu", "block2.relu:2"]
    assert TorchAdapter().layer_names(model, x) == names
    taps = {tap.name: tap for tap in trace_model(model, x).taps}
    assert list(taps)[-1] == "head" and taps["head"].is_output
    assert taps["block1.relu:2"].shape == (4, 5, 5)

    outputs = next(TorchAdapter().iter_layer_outputs(model, x, layers=names,
                                                     inference_batch_size=64))
    model.eval()
    with torch.no_grad():
        s = torch.relu(model.stem(x))
        b = model.block1
        first = torch.relu(b.bn1(b.conv1(s)))
        second = torch.relu(b.bn2(b.conv2(first)) + s)
    torch.testing.assert_close(outputs["act"], s)
    torch.testing.assert_close(outputs["block1.relu"], first)
    torch.testing.assert_close(outputs["block1.relu:2"], second)

    y = np.arange(40) % 2
    assert audit(model, x, y, layers=["block1.relu"]).names == ["block1.relu", "block1.relu:2"]
    assert audit(model, x, y, layers=["block?.relu:2"]).names == ["block1.relu:2", "block2.relu:2"]
    assert audit(model, x, y, layers=["block2", "stem"]).names == ["stem", "block2"]


class InPlaceAfterwards(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.act2 = nn.ReLU(inplace=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.act(self.fc(x))
        h.mul_(0.0)  # changes the tapped output after it was returned
        g = self.act2(self.fc(x))
        g.add_(1.0)
        return self.out(h + g)


def test_tapped_outputs_are_taken_before_later_in_place_ops():
    model = InPlaceAfterwards()
    x = torch.randn(16, 4)
    assert [t.name for t in trace_model(model, x).taps] == ["fc", "act", "fc:2", "act2", "out"]
    taps = ["act", "act2", "fc"]
    batches = TorchAdapter().iter_layer_outputs(model, x, layers=taps, inference_batch_size=16)
    outputs = next(batches)
    with torch.no_grad():
        expected = torch.relu(model.fc(x))
        torch.testing.assert_close(outputs["fc"], model.fc(x))
    torch.testing.assert_close(outputs["act"], expected)
    torch.testing.assert_close(outputs["act2"], expected)


class FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Linear3(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(x)))


def test_functional_activations_are_taps_named_after_the_module_that_calls_them(rng):
    model, x = FunctionalReLU(), torch.randn(40, 4)
    names = ["forward:relu", "forward:relu:2"]
    assert TorchAdapter().layer_names(model, x) == names
    outputs = next(TorchAdapter().iter_layer_outputs(model, x, layers=names,
                                                     inference_batch_size=64))
    with torch.no_grad():
        a1 = torch.relu(model.fc1(x))
        a2 = torch.relu(model.fc2(a1))
    torch.testing.assert_close(outputs["forward:relu"], a1)
    torch.testing.assert_close(outputs["forward:relu:2"], a2)
    y = rng.integers(0, 2, size=40)
    assert audit(model, x, y, layers=[nn.ReLU]).names == names  # by type: F.relu is a ReLU
    assert audit(model, x, y, layers="forward:relu:2").names == ["forward:relu:2"]
    assert audit(model, x, y, layers="*:relu*").names == names


def test_without_any_activation_top_level_children_but_the_last_are_tapped():
    assert TorchAdapter().layer_names(Linear3(), torch.randn(4, 4)) == ["fc1", "fc2"]


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.act = nn.Tanh()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(self.act(out[:, -1]))


def test_modules_without_one_batch_first_tensor_output_are_not_layers():
    model, x, y = Recurrent(), torch.randn(30, 5, 3), np.arange(30) % 2
    assert TorchAdapter().layer_names(model, x) == ["act"]
    with pytest.raises(BundleLabError, match="module 'lstm' outputs a tuple; a layer must output"):
        audit(model, x, y, layers="lstm")


# -- (4) model state -------------------------------------------------------------------------


def stateful_model():
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3),
    )


def test_training_mode_is_restored_and_no_gradient_is_recorded(rng):
    x, y = torch.randn(128, 6), rng.integers(0, 3, size=128)
    model = stateful_model()
    model.train()
    running_mean = model[1].running_mean.clone()
    first = audit(model, x, y, inference_batch_size=32)
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running_mean)  # eval mode: statistics untouched
    second = audit(model, x, y, inference_batch_size=32)  # dropout off: the same numbers every time
    assert all(np.array_equal(a.bundle_ids, b.bundle_ids) for a, b in zip(first, second))
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled() and no_hooks_left(model)

    model.eval()
    audit(model, x, y)
    assert not any(m.training for m in model.modules())
    model.train()
    model[1].eval()  # a frozen batch norm inside a training model stays as it was
    audit(model, x, y)
    assert [m.training for m in model] == [True, False, True, True, True, True, True]

    outputs = next(TorchAdapter().iter_layer_outputs(model, x, layers=["2"],
                                                     inference_batch_size=8))
    assert not outputs["2"].requires_grad


class FailsOnMarkedSample(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        if (x[:, 0] > 100).any():
            raise RuntimeError("boom")
        return self.out(self.act(self.fc(x)))


def test_state_is_restored_when_a_later_batch_fails():
    model = FailsOnMarkedSample().train()
    x = torch.randn(64, 2)
    x[-1, 0] = 1000.0  # in the last batch, never in the tracing pass
    with pytest.raises(RuntimeError, match="boom"):
        audit(model, x, np.arange(64) % 2, inference_batch_size=16)
    assert all(m.training for m in model.modules()) and no_hooks_left(model)
    assert torch.is_grad_enabled()


# -- (5) training hyperparameters --------------------------------------------------------------


def test_learning_rate_and_batch_size_come_from_optimizer_and_loader(rng):
    x, y = torch.randn(200, 6), torch.from_numpy(rng.integers(0, 3, size=200))
    model = stateful_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)
    report = audit(model, loader, optimizer=optimizer, train_loader=loader, n_samples=150)
    assert report.params["learning_rate"] == 0.05 and report.params["batch_size"] == 32
    assert report["2"].n_samples == 150
    explicit = audit(model, dataset, optimizer=optimizer, learning_rate=0.1, batch_size=16)
    assert explicit.params["learning_rate"] == 0.1 and explicit.params["batch_size"] == 16
    # a loader built from a batch sampler says its batch size there
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), 24, False)
    by_sampler = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    assert audit(model, (x, y), train_loader=by_sampler).params["batch_size"] == 24
    # the same samples whatever form the data takes
    as_pair = audit(model, (x, y), n_samples=150)
    assert np.array_equal(as_pair["5"].bundle_ids, report["5"].bundle_ids)


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return zip(self.x, self.y)


def test_iterable_datasets_give_their_first_samples_and_frozen_weights_are_not_w(rng):
    x, y = torch.randn(100, 6), rng.integers(0, 3, size=100)
    model = stateful_model()
    streamed = audit(model, Stream(x, y), n_samples=50, inference_batch_size=16)
    first = audit(model, x[:50], y[:50])
    assert streamed["2"].n_samples == 50
    assert np.array_equal(streamed["2"].bundle_ids, first["2"].bundle_ids)

    with torch.no_grad():
        model[0].weight.fill_(7.0)
    model[0].requires_grad_(False)  # frozen: not a trainable weight of the model
    trainable = [p for p in model.parameters() if p.requires_grad]
    w = max(float(p.detach().abs().max()) for p in trainable)
    assert audit(model, x, y).params["weight_amplitude"] == w
    assert audit(model, x, y, weight_amplitude=0.25).params["weight_amplitude"] == 0.25


# -- (6) training hook -------------------------------------------------------------------------


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_bundle_hook_records_each_epoch_of_a_real_training_loop(tmp_path):
    from sklearn.datasets import load_digits

    x64, y = load_digits(return_X_y=True)
    x64 = x64 / 16.0  # the hook gets float64 numpy inputs: cast to the model's float32
    x = x64.astype(np.float32)
    model = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=64, shuffle=True,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = RecordingWriter()
    hook = BundleHook(
        model, x64, y, n_samples=512, optimizer=optimizer, train_loader=loader, tensorboard=writer
    )
    for epoch in range(3):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        report = hook()  # t = epoch + 1: the epochs completed
        assert model.training and report.params["learning_rate"] == 0.1
        assert report.params["batch_size"] == 64 and report["1"].n_samples == 512
    tracker = hook.tracker
    assert tracker.steps == [1, 2, 3] and tracker.layer_names == ["1", "3"]
    assert tracker.entropy_over_time().shape == tracker.bundles_over_time().shape == (3, 2)
    averaged = tracker.time_averaged()
    assert set(averaged) == {"1", "3"} and all(v >= 0 for v in averaged.values())
    assert json.loads(tracker.to_json(tmp_path / "h.json"))["steps"] == [1, 2, 3]
    assert len(tracker.to_csv().splitlines()) == 1 + 3 * 2
    assert ("bundles/entropy/1", tracker.reports[2]["1"].entropy, 3) in writer.scalars
    assert len(writer.scalars) == 3 * 2 * 2

    every_other = BundleHook(model, x, y, n_samples=64, every=2)
    recorded = [every_other.step(step) is not None for step in range(5)]
    assert recorded == [True, False, True, False, True]  # per optimiser step: its own unit
    assert every_other.tracker.steps == [0, 2, 4]


def test_hook_counts_epochs_completed_and_every_two_measures_epochs_two_and_four():
    """The step rule of bundlelab.training and the Keras callback: t = epochs completed."""
    model, x, y = deep_mlp(), torch.randn(32, 6), np.arange(32) % 2
    counting = BundleHook(model, x, y, every=2)
    measured = [counting() is not None for _ in range(4)]
    assert measured == [False, True, False, True]
    assert counting.tracker.steps == [2, 4] and counting.epochs == 4
    explicit = BundleHook(model, x, y, every=2)
    assert [explicit(t) is not None for t in (1, 2, 3, 4)] == [False, True, False, True]
    assert explicit.tracker.steps == [2, 4]
    explicit(6)
    explicit()  # goes on counting from the last t: 7, not measured
    assert explicit.tracker.steps == [2, 4, 6] and explicit.epochs == 7
    with pytest.raises(BundleLabError, match="'t' parameter"):
        explicit(-1)


def test_lightning_callback_every_two_measures_epochs_two_and_four(monkeypatch):
    fake = types.ModuleType("lightning.pytorch")
    fake.Callback = type("Callback", (), {})
    monkeypatch.setitem(sys.modules, "lightning", types.ModuleType("lightning"))
    monkeypatch.setitem(sys.modules, "lightning.pytorch", fake)
    try:
        callback = torch_adapter.BundleCallback(torch.randn(32, 6), np.arange(32) % 2, every=2)
    finally:
        torch_adapter.__dict__.pop("BundleCallback", None)
    logged, model = [], deep_mlp()
    trainer = types.SimpleNamespace(
        is_global_zero=True, current_epoch=0, global_step=0, optimizers=[], train_dataloader=None,
        logger=types.SimpleNamespace(log_metrics=lambda m, step: logged.append(step)),
    )
    for epoch in range(4):
        trainer.current_epoch, trainer.global_step = epoch, 10 * (epoch + 1)
        callback.on_train_epoch_end(trainer, model)
    assert callback.tracker.steps == [2, 4] and logged == [2, 4]


def test_tensorboard_log_dir_needs_tensorboard(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
            BundleHook(deep_mlp(), torch.randn(8, 6), np.arange(8) % 2, tensorboard=tmp_path)
    else:
        hook = BundleHook(deep_mlp(), torch.randn(8, 6), np.arange(8) % 2, tensorboard=tmp_path)
        hook()
        hook.close()
        assert any(tmp_path.iterdir())


def test_lightning_callback_exists_only_with_lightning(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install lightning"):
        torch_adapter.BundleCallback
    assert "BundleCallback" not in torch_adapter.__dict__

    fake = types.ModuleType("lightning.pytorch")
    fake.Callback = type("Callback", (), {})
    monkeypatch.setitem(sys.modules, "lightning", types.ModuleType("lightning"))
    monkeypatch.setitem(sys.modules, "lightning.pytorch", fake)
    try:
        callback = torch_adapter.BundleCallback(torch.randn(32, 6), np.arange(32) % 2, n_samples=16)
    finally:
        torch_adapter.__dict__.pop("BundleCallback", None)  # built on the fake: forget it
    assert isinstance(callback, fake.Callback)
    logged = []
    model = deep_mlp()
    trainer = types.SimpleNamespace(
        is_global_zero=True, current_epoch=0, global_step=7,
        optimizers=[torch.optim.SGD(model.parameters(), lr=0.3)],
        train_dataloader=types.SimpleNamespace(batch_size=16),
        logger=types.SimpleNamespace(log_metrics=lambda m, step: logged.append((m, step))),
    )
    callback.on_train_epoch_end(trainer, model)  # t = current_epoch + 1, logged under step t
    assert callback.tracker.steps == [1]
    assert callback.tracker.reports[0].params["learning_rate"] == 0.3
    assert callback.tracker.reports[0].params["batch_size"] == 16
    assert logged[0][1] == 1 and "bundles/entropy/1" in logged[0][0]
    trainer.current_epoch, trainer.is_global_zero = 1, False  # other ranks do not measure
    callback.on_train_epoch_end(trainer, model)
    assert callback.tracker.steps == [1]


# -- (7) bad input: one line, no traceback -----------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x, y: audit(m, x, y, layers=["fc"]), "has no layer 'fc': did you mean 'fc1'"),
        (lambda m, x, y: audit(m, x, y, layers=["act:3"]), r"has no layer 'act:3'"),
        (lambda m, x, y: audit(m, x, y, layers=[nn.Conv2d]), "no layer of type Conv2d"),
        (lambda m, x, y: audit(m, x, y, layers=[3]), "'layers' parameter must hold"),
        (lambda m, x, y: audit(nn.Linear(6, 3), x, y), "the model has no tappable layer"),
        (lambda m, x, y: audit(m, x, y[:-1]), "got 59 labels for 60 samples"),
        (lambda m, x, y: audit(m, x), "no labels"),
        (lambda m, x, y: audit(m, x[:, :5], y), r"samples of shape \(5,\) do not fit the model: "
         r"layer 'fc1' \(Linear\) expects \(\.\.\., 6\), got \(2, 5\)"),
        (lambda m, x, y: audit(m, x.view(60, 2, 3), y), r"expects \(\.\.\., 6\), got \(2, 2, 3\)"),
        (lambda m, x, y: audit("model.pt", x, y), "expected a torch.nn.Module, got str"),
        (lambda m, x, y: audit(m, x, y, weight_amplitude="max"), "'weight_amplitude' parameter"),
        (lambda m, x, y: audit(m, x, y, batch_size=0), "'batch_size' parameter"),
        (lambda m, x, y: audit(m, x, y, inference_batch_size=0), "'inference_batch_size' param"),
        (lambda m, x, y: audit(m, x, y, train_batch_size=8), "unexpected keyword"),
        (lambda m, x, y: audit(m, x, y, n_samples=2.5), "'n_samples' parameter"),
        (lambda m, x, y: audit(m, x, y, seed=-1), "'seed' parameter"),
        (lambda m, x, y: audit(m, x, y, progress="yes"), "'progress' parameter"),
        (lambda m, x, y: TorchAdapter(layer=["fc1"]), "did you mean 'layers'"),
        (lambda m, x, y: BundleHook(m, x, y, batch_sise=8), "unexpected keyword"),
        (lambda m, x, y: audit(m, x, y, device="gpu0"), "'device' parameter"),
        (lambda m, x, y: audit(m, x, y, gama=1e-8), "unexpected keyword"),
        (lambda m, x, y: audit(m, x, y, train_loader=object()), "pass batch_size=..."),
        (lambda m, x, y: BundleHook(m, x, y, every=0), "'every' parameter"),
        (lambda m, x, y: BundleHook(m, x, y, tensorboard=3), "'tensorboard' parameter"),
        (lambda m, x, y: TorchAdapter().layer_names(m), "pass inputs"),
    ],
)
def test_bad_input_gives_a_one_line_error(call, message):
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 8), act=nn.ReLU(), out=nn.Linear(8, 2)))
    x, y = torch.randn(60, 6), np.arange(60) % 2
    with pytest.raises(BundleLabError, match=message) as info:
        call(model, x, y)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None
    assert no_hooks_left(model) and model.training


# -- (8) memory --------------------------------------------------------------------------------


def test_memory_holds_no_output_beyond_its_use(rng, monkeypatch):
    """Each tapped output is handed to the streams from inside its hook, uncloned (the very
    storage the module produced), and the streams' blocks stay within their budget."""
    from bundlelab.adapters import LayerFeed
    from bundlelab.streaming import BUDGET_BYTES, StreamBatcher

    depth, width, n, batch = 10, 32, 512, 64
    layers = [nn.Linear(8, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 2))
    produced, taken, held, passes = set(), [], [], []
    for module in model:
        if isinstance(module, nn.ReLU):
            module.register_forward_hook(
                lambda m, args, out: produced.add(out.untyped_storage().data_ptr()))
    take, end, update = LayerFeed.take, LayerFeed.end, StreamBatcher._update

    def taking(self, name, output):
        taken.append(output.untyped_storage().data_ptr())
        take(self, name, output)

    def ending(self):
        passes.append(self._size)
        end(self)

    def updating(self, name, activations, labels, codes):
        codes = update(self, name, activations, labels, codes)
        held.append(sum(block.buffer.nbytes for block in self._blocks.values()))
        return codes

    monkeypatch.setattr(LayerFeed, "take", taking)
    monkeypatch.setattr(LayerFeed, "end", ending)
    monkeypatch.setattr(StreamBatcher, "_update", updating)
    x, y = torch.randn(n, 8), rng.integers(0, 2, size=n)
    report = audit(model, x, y, inference_batch_size=batch)
    assert len(report) == depth and passes == [batch] * (n // batch)
    assert len(taken) == depth * n // batch and set(taken) <= produced  # no clone
    assert 0 < max(held) <= BUDGET_BYTES


def test_blocks_are_fingerprinted_between_layers_when_torch_takes_every_core(rng, monkeypatch):
    """A background fingerprint thread would take a core from torch's own thread pool, whose
    threads wait for each other after every operation: with torch on every core the blocks
    are fingerprinted in the calling thread instead; the report is the same either way."""
    from bundlelab import adapters
    from bundlelab.streaming import StreamBatcher

    made = []
    init = StreamBatcher.__init__

    def recording(self, streams, **kwargs):
        init(self, streams, **kwargs)
        made.append(self.background)

    monkeypatch.setattr(StreamBatcher, "__init__", recording)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    assert TorchAdapter().forward_threads(model) == torch.get_num_threads()
    x, y = quantized_data(rng, n=600)
    reports = {}
    for spare in (0, 1):
        monkeypatch.setattr(adapters, "_usable_cores", lambda: torch.get_num_threads() + spare)
        reports[spare] = audit(model, x, y, n_samples=None, inference_batch_size=64)
    assert made == [False, True]
    for busy, free in zip(reports[0], reports[1]):
        assert np.array_equal(busy.bundle_ids, free.bundle_ids)
        assert (busy.n_bundles, busy.entropy) == (free.n_bundles, free.entropy)


def test_an_audit_hooks_the_model_once_not_once_per_pass(rng, monkeypatch):
    """Hooks and eval mode are set up once for every forward pass of a measurement (the
    tracing pass has its own), and the model is left as it was."""
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    registered = []
    register = nn.Module.register_forward_hook

    def counting(self, hook, *args, **kwargs):
        registered.append(self)
        return register(self, hook, *args, **kwargs)

    x, y = quantized_data(rng, n=640)
    trace_model(model, x)  # the tracing pass hooks every module once
    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    trace_model(model, x)
    traced = len(registered)
    registered.clear()
    model.train()
    audit(model, x, y, n_samples=None, inference_batch_size=64)  # ten passes
    assert len(registered) == traced + 1  # the tracing pass, then the one tapped ReLU once
    assert no_hooks_left(model) and model.training


def test_a_failing_progress_callback_leaves_the_model_as_it_was_at_once(rng):
    """The hooks and eval mode last for all the passes: a failure between two passes (here
    the caller's progress callback) restores the model before the error reaches the caller,
    even while the caller still holds the error and its traceback."""
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).train()
    x, y = quantized_data(rng, n=256)

    def failing(n_rows, shapes):
        raise RuntimeError("progress display closed")

    with pytest.raises(RuntimeError, match="display closed") as info:
        measure_bundles(TorchAdapter(), model, x, y, inference_batch_size=64, progress=failing)
    assert info.traceback  # held: the frames that ran the passes are still referenced
    assert no_hooks_left(model) and model.training and torch.is_grad_enabled()
