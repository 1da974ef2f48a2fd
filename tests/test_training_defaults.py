"""Training that works by default (issue 12): the defaults, the paper's preset, the schedule,
divergence reports and progress on a terminal."""

import io
import math
import sys
import warnings

import pytest

from bundlelab import BundleLabError
from bundlelab.datasets import load_dataset
from bundlelab.spec import conv_net, fully_connected
from bundlelab.training import (
    DivergenceWarning,
    TrainConfig,
    Training,
    TrainingDiverged,
    fit,
    training_batches,
)
from bundlelab.training._progress import resolve_progress

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_fc(data, depth=2, width=32):
    return fully_connected(width, depth, input_shape=data.input_shape, n_classes=data.n_classes)


# -- the defaults and the paper's preset -------------------------------------------------


def test_paper_preset_is_the_papers_setup_and_the_defaults_differ_where_measured():
    paper = TrainConfig.paper()
    assert (paper.optimizer, paper.learning_rate, paper.weight_decay, paper.epochs,
            paper.schedule, paper.drop_last) == ("ranger", 1e-3, 0.01, 120, "constant", False)
    default = TrainConfig()
    assert (default.optimizer, default.learning_rate, default.schedule, default.drop_last) == (
        "adamw", 1e-2, "cosine", True)
    assert TrainConfig.paper(epochs=5, seed=2).epochs == 5
    with pytest.raises(BundleLabError, match="schedule"):
        TrainConfig.paper(schedule="linear")


@pytest.mark.parametrize("field, value", [
    ("schedule", "linear"), ("drop_last", 1), ("on_divergence", "ignore"),
    ("divergence_threshold", 0.0), ("divergence_threshold", float("inf")),
])
def test_new_options_are_validated_in_one_line(field, value):
    with pytest.raises(BundleLabError, match=field) as info:
        TrainConfig(**{field: value})
    assert "\n" not in str(info.value)


def test_new_options_round_trip_through_the_run_folders_record():
    config = TrainConfig(schedule="constant", drop_last=False, on_divergence="warn",
                         divergence_threshold=1e3)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_the_incomplete_last_batch_is_dropped_by_default(digits):
    n = len(digits.y_train)  # 1347 = 21 * 64 + 3
    sizes = [len(y) for _, y in training_batches(digits, TrainConfig(), 1)]
    assert sizes == [64] * (n // 64)
    assert TrainConfig().batches_per_epoch(n) == n // 64
    kept = [len(y) for _, y in training_batches(digits, TrainConfig.paper(), 1)]
    assert sum(kept) == n and kept[-1] == n % 64
    assert TrainConfig.paper().batches_per_epoch(n) == len(kept)
    # a training set smaller than a batch is still one batch
    assert TrainConfig(batch_size=4096).batches_per_epoch(n) == 1


def test_the_default_trains_a_batchnorm_conv_net_on_digits(digits):
    # the failure of issue 12 in small: a plain conv net with batch-norm under the old
    # defaults stalled (the 3-sample last batch, Ranger at 1e-3)
    net = conv_net(4, width_multiplier=0.25, input_shape=digits.input_shape)
    config = TrainConfig(epochs=6, n_samples=64, measure_every=100, device="cpu")
    result = fit(net, digits, config=config, progress=False)
    assert result.test_accuracy >= 0.9


# -- the learning-rate schedule ------------------------------------------------------------


def test_cosine_falls_from_the_learning_rate_to_zero():
    config = TrainConfig(epochs=4, learning_rate=0.1)
    assert config.learning_rate_at(1, 0, 10) == pytest.approx(0.1)
    assert config.learning_rate_at(3, 0, 10) == pytest.approx(0.05)
    assert config.learning_rate_at(4, 9, 10) == pytest.approx(
        0.05 * (1 + math.cos(math.pi * 39 / 40)))
    steps = [config.learning_rate_at(e, s, 10) for e in range(1, 5) for s in range(10)]
    assert all(a > b for a, b in zip(steps, steps[1:]))
    constant = config.replace(schedule="constant")
    assert {constant.learning_rate_at(e, s, 10) for e in (1, 4) for s in (0, 9)} == {0.1}


def test_the_run_sets_the_scheduled_rate_before_every_step(digits):
    config = TrainConfig(epochs=3, learning_rate=0.05, n_samples=32, measure_every=100,
                         device="cpu")
    seen = []
    with Training(small_fc(digits), digits, config=config, progress=False) as run:
        original = run.trainee.optimizer.step

        def step(*args, **kwargs):
            seen.append(run.trainee.optimizer.param_groups[0]["lr"])
            return original(*args, **kwargs)

        run.trainee.optimizer.step = step
        run.run()
    steps = config.batches_per_epoch(len(digits.y_train))
    assert len(seen) == 3 * steps
    assert seen == pytest.approx([config.learning_rate_at(e, s, steps)
                                  for e in (1, 2, 3) for s in range(steps)])


def test_a_cosine_run_resumes_only_with_its_epochs(digits, tmp_path):
    config = TrainConfig(epochs=2, n_samples=32, measure_every=100, device="cpu")
    fit(small_fc(digits), digits, config=config, directory=tmp_path / "cos", progress=False)
    with pytest.raises(BundleLabError, match="laid over 2 epochs") as info:
        fit(small_fc(digits), digits, config=config.replace(epochs=3),
            directory=tmp_path / "cos", progress=False)
    assert "\n" not in str(info.value)
    constant = config.replace(schedule="constant")
    fit(small_fc(digits), digits, config=constant, directory=tmp_path / "c", progress=False)
    longer = fit(small_fc(digits), digits, config=constant.replace(epochs=3),
                 directory=tmp_path / "c", progress=False)
    assert len(longer.history) == 3


def test_a_resumed_cosine_run_trains_as_an_uninterrupted_one(digits, tmp_path):
    config = TrainConfig(epochs=3, n_samples=32, measure_every=100, device="cpu")
    straight = fit(small_fc(digits), digits, config=config, progress=False)
    with Training(small_fc(digits), digits, config=config, directory=tmp_path,
                  progress=False) as run:
        run.train_epoch()
    resumed = fit(small_fc(digits), digits, config=config, directory=tmp_path, progress=False)
    assert [r.train_loss for r in resumed.history] == pytest.approx(
        [r.train_loss for r in straight.history], rel=1e-5)


# -- divergence ----------------------------------------------------------------------------


def test_a_diverging_run_stops_naming_the_epoch_and_the_layer(digits, tmp_path):
    net = conv_net(4, width_multiplier=0.25, input_shape=digits.input_shape)
    config = TrainConfig(epochs=3, optimizer="sgd", learning_rate=1e3, schedule="constant",
                         n_samples=32, measure_every=100, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1: .*layer \w+") as info:
        fit(net, digits, config=config, directory=tmp_path, progress=False)
    assert "\n" not in str(info.value) and "learning_rate" in str(info.value)
    # the folder keeps no diverged epoch
    with Training(net, digits, config=config, directory=tmp_path, progress=False) as run:
        assert run.epochs_done == 0


def test_a_diverging_run_can_warn_once_and_train_on(digits):
    net = conv_net(4, width_multiplier=0.25, input_shape=digits.input_shape)
    config = TrainConfig(epochs=2, optimizer="sgd", learning_rate=1e3, schedule="constant",
                         n_samples=32, measure_every=100, device="cpu", on_divergence="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(net, digits, config=config, progress=False)
    diverged = [w for w in caught if issubclass(w.category, DivergenceWarning)]
    assert len(diverged) == 1 and "epoch 1" in str(diverged[0].message)
    assert len(result.history) == 2


def test_a_sound_run_is_not_reported(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        fit(small_fc(digits), digits, progress=False,
            config=TrainConfig(epochs=1, n_samples=32, device="cpu", on_divergence="warn"))


def test_weights_above_the_threshold_count_as_divergence(digits):
    config = TrainConfig(epochs=1, n_samples=32, device="cpu", divergence_threshold=1e-3)
    with pytest.raises(TrainingDiverged, match="limit 0.001"):
        fit(small_fc(digits), digits, config=config, progress=False)


# -- progress on a terminal ----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_defaults_to_whether_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert resolve_progress(None) is False
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert resolve_progress(None) is True
    assert resolve_progress(False) is False
    with pytest.raises(BundleLabError, match="progress"):
        resolve_progress("yes")


def test_fit_shows_progress_on_a_terminal_by_default(digits, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    fit(small_fc(digits), digits, config=TrainConfig(epochs=1, n_samples=32, device="cpu"))
    assert "epoch 1/1" in terminal.getvalue()
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    fit(small_fc(digits), digits, config=TrainConfig(epochs=1, n_samples=32, device="cpu"))
    assert piped.getvalue() == ""


def test_autotune_and_search_show_progress_on_a_terminal_by_default(digits, monkeypatch):
    from bundlelab.autotune import autotune
    from bundlelab.search import SearchConfig, resnet_fabric, search

    small = load_dataset("digits", n_train=256, n_test=64)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    autotune(small_fc(small, depth=2, width=16), small,
             config=TrainConfig(epochs=1, n_samples=32, device="cpu"))
    assert "epoch 1/1" in terminal.getvalue()
    fabric = resnet_fabric(1, k=2, filters=(4, 8), input_shape=small.input_shape)
    search(fabric, small, SearchConfig(budget=1e9, warmup_epochs=0, search_epochs=1),
           config=TrainConfig(n_samples=32, device="cpu"))
    assert "search epoch 1/1" in terminal.getvalue()
