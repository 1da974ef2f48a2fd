"""Keras training backend: every optimizer learns digits, RAdam, Adam, AdamW and SGD match
torch.optim step for step, Lookahead moves the slow weights as written, checkpoints restore
training exactly.

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

from sklearn.datasets import load_digits  # noqa: E402

from bundlelab import BundleLabError  # noqa: E402
from bundlelab.adapters.keras import KerasBackend, make_optimizer  # noqa: E402
from bundlelab.adapters.keras._optim import (  # noqa: E402
    OPTIMIZERS,
    L2SGD,
    Lookahead,
    RAdam,
    TorchAdam,
)
from bundlelab.spec import conv_net, fully_connected, measured_layers  # noqa: E402
from bundlelab.training import Backend, TrainConfig, Trainee, get_backend  # noqa: E402

FC = fully_connected(16, 2, input_shape=(1, 8, 8))
CONV = conv_net(blocks=[1, 1, 0, 0], width_multiplier=0.125, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = data.data.astype(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # constant border pixels stay 0
    return x.reshape(-1, 1, 8, 8).astype(np.float32)[:512], data.target[:512].astype(np.int64)


def _batches(x, y, size=64):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _weights(trainee):
    return [keras.ops.convert_to_numpy(w) for w in trainee.model.weights]


# -- the protocol ------------------------------------------------------------------------------


def test_backend_is_registered_and_fits_the_protocol():
    backend = get_backend("keras")
    assert isinstance(backend, KerasBackend) and isinstance(backend, Backend)
    assert (backend.name, backend.checkpoint_suffix) == ("keras", ".weights.h5")
    assert isinstance(backend.build(FC, TrainConfig()), Trainee)


LEARNING_RATES = {"ranger": 0.05, "adam": 0.01, "adamw": 0.01, "sgd": 0.05}  # Lookahead halves
# ranger's pace


@pytest.mark.parametrize("optimizer", ["ranger", "adam", "adamw", "sgd"])
def test_every_optimizer_learns(digits, optimizer):
    config = TrainConfig(optimizer=optimizer, learning_rate=LEARNING_RATES[optimizer])
    trainee = KerasBackend().build(FC, config)
    batches = _batches(*digits)
    history = [trainee.train_epoch(batches) for _ in range(5)]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["accuracy"] > 0.5  # chance: 0.1
    evaluated = trainee.evaluate(*digits, inference_batch_size=100)
    assert evaluated["accuracy"] > 0.5 and np.isfinite(evaluated["loss"])


def test_conv_net_learns_and_reports_its_measured_layers(digits):
    trainee = KerasBackend().build(CONV, TrainConfig(optimizer="adam", learning_rate=0.01))
    batches = _batches(*digits, size=128)
    first, second = (trainee.train_epoch(batches) for _ in range(2))
    assert second["loss"] < first["loss"]
    report = trainee.measure_bundles(*digits, batch_size=128)
    assert report.names == measured_layers(CONV) == ["a1", "b1"]
    assert report.params["learning_rate"] == 0.01 and report.params["batch_size"] == 128


def test_measure_bundles_defaults_to_the_config(digits):
    trainee = KerasBackend().build(FC, TrainConfig(learning_rate=0.02, batch_size=32))
    report = trainee.measure_bundles(*digits)
    assert report.names == measured_layers(FC)
    assert report.params["learning_rate"] == 0.02 and report.params["batch_size"] == 32
    assert sum(len(r.bundle_ids) == len(digits[1]) for r in report) == len(report.names)


def test_same_config_and_batches_train_identically(digits):
    batches = _batches(*digits)
    config = TrainConfig(optimizer="ranger", seed=3)
    first, second = (KerasBackend().build(FC, config) for _ in range(2))
    assert first.train_epoch(batches) == second.train_epoch(batches)
    for a, b in zip(_weights(first), _weights(second)):
        np.testing.assert_array_equal(a, b)


def test_inference_seconds(digits):
    seconds = KerasBackend().build(FC, TrainConfig(device="cpu")).inference_seconds(digits[0][:64])
    assert 0 < seconds < 5


def test_cuda_without_a_gpu_is_one_clear_error():
    import torch

    if keras.backend.backend() != "torch" or torch.cuda.is_available():
        pytest.skip("needs the torch backend without a GPU")
    with pytest.raises(BundleLabError, match="no CUDA device"):
        KerasBackend().build(FC, TrainConfig(device="cuda"))


def test_empty_epoch_is_an_error():
    with pytest.raises(BundleLabError, match="no batches"):
        KerasBackend().build(FC, TrainConfig()).train_epoch([])


# -- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_resumes_training_exactly(digits, tmp_path):
    """Weights, RAdam's moments and Lookahead's slow weights all come back: a loaded trainee
    evaluates and then trains exactly as the one that wrote the checkpoint."""
    batches = _batches(*digits)
    config = TrainConfig(optimizer="ranger", learning_rate=0.05)
    trainee = KerasBackend().build(FC, config)
    trainee.train_epoch(batches[:5])  # 5 steps: the next one is mid-way to a Lookahead sync
    path = tmp_path / "checkpoint.weights.h5"
    trainee.save(str(path))
    fresh = KerasBackend().build(FC, config.replace(seed=1))
    fresh.load(str(path))
    assert fresh.evaluate(*digits, inference_batch_size=128) == trainee.evaluate(*digits, inference_batch_size=128)
    assert fresh.train_epoch(batches) == trainee.train_epoch(batches)
    for a, b in zip(_weights(fresh), _weights(trainee)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_a_conv_net_with_any_file_name(digits, tmp_path):
    config = TrainConfig(optimizer="sgd", learning_rate=0.05)
    trainee = KerasBackend().build(CONV, config)
    trainee.train_epoch(_batches(*digits, size=256))  # moves the batch-norm statistics too
    path = tmp_path / "epoch-1.ckpt"
    trainee.save(str(path), optimizer=False)
    fresh = KerasBackend().build(CONV, config)
    fresh.load(str(path))
    assert fresh.evaluate(*digits, inference_batch_size=256) == trainee.evaluate(*digits, inference_batch_size=256)


def test_weights_only_checkpoint_restarts_the_optimizer(tmp_path):
    config = TrainConfig(optimizer="ranger")
    trainee = KerasBackend().build(FC, config)
    trainee.save(str(tmp_path / "full.weights.h5"))
    trainee.save(str(tmp_path / "weights.weights.h5"), optimizer=False)
    assert (tmp_path / "weights.weights.h5").stat().st_size < (
        tmp_path / "full.weights.h5").stat().st_size
    fresh = KerasBackend().build(FC, config.replace(seed=5))
    fresh.load(str(tmp_path / "weights.weights.h5"))
    # Lookahead's slow weights start from the loaded weights, not from the seed-5 ones
    for slow, weight in zip(fresh.model.optimizer._slow, fresh.model.trainable_weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(slow),
                                      keras.ops.convert_to_numpy(weight))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = str(tmp_path / "fc.weights.h5")
    KerasBackend().build(FC, TrainConfig()).save(path)
    other = KerasBackend().build(fully_connected(16, 3, input_shape=(1, 8, 8)), TrainConfig())
    before = _weights(other)
    with pytest.raises(BundleLabError, match="written for another architecture") as error:
        other.load(path)
    assert "\n" not in str(error.value)
    for a, b in zip(before, _weights(other)):  # nothing was loaded half-way
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_optimizer_and_foreign_files_are_refused(tmp_path):
    path = str(tmp_path / "adam.weights.h5")
    KerasBackend().build(FC, TrainConfig(optimizer="adam")).save(path)
    with pytest.raises(BundleLabError, match="optimizer 'adam'"):
        KerasBackend().build(FC, TrainConfig(optimizer="sgd")).load(path)
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(BundleLabError, match="cannot read checkpoint"):
        KerasBackend().build(FC, TrainConfig()).load(str(junk))
    plain = str(tmp_path / "plain.weights.h5")
    KerasBackend().build(FC, TrainConfig()).model.save_weights(plain)
    with pytest.raises(BundleLabError, match="not a bundlelab Keras checkpoint"):
        KerasBackend().build(FC, TrainConfig()).load(plain)


# -- the optimizers against references ---------------------------------------------------------


def _quadratic(seed=0):
    """A badly scaled quadratic 0.5 * sum(a * (w - target)^2): gradient a * (w - target)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.1, 10, size=(3, 4)).astype(np.float32)
    target = rng.normal(size=(3, 4)).astype(np.float32)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    return a, target, start


def _keras_trajectory(optimizer, steps, seed=0):
    a, target, start = _quadratic(seed)
    variable = keras.Variable(start)
    trajectory = []
    for _ in range(steps):
        gradient = a * (keras.ops.convert_to_numpy(variable) - target)
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        trajectory.append(keras.ops.convert_to_numpy(variable).copy())
    return trajectory


def _torch_trajectory(make, steps, seed=0):
    torch = pytest.importorskip("torch")
    a, target, start = _quadratic(seed)
    parameter = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = make([parameter])
    trajectory = []
    for _ in range(steps):
        parameter.grad = torch.from_numpy(a * (parameter.detach().numpy() - target))
        optimizer.step()
        trajectory.append(parameter.detach().numpy().copy())
    return trajectory


def test_radam_matches_torch():
    """Both regimes: momentum SGD while rho_t <= 5 (steps 1-5), rectified Adam afterwards."""
    torch = pytest.importorskip("torch")
    ours = _keras_trajectory(RAdam(0.05, epsilon=1e-6, weight_decay=0.1), 20)
    reference = _torch_trajectory(
        lambda p: torch.optim.RAdam(p, lr=0.05, eps=1e-6, weight_decay=0.1,
                                    decoupled_weight_decay=True), 20)
    for step, (got, expected) in enumerate(zip(ours, reference), 1):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_l2_sgd_matches_torch():
    torch = pytest.importorskip("torch")
    ours = _keras_trajectory(L2SGD(0.02, momentum=0.9, l2=0.1), 20)
    reference = _torch_trajectory(
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, weight_decay=0.1), 20)
    for step, (got, expected) in enumerate(zip(ours, reference), 1):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_adam_is_adam_with_l2_decay_as_in_torch():
    """"adam" means torch.optim.Adam in both backends: weight decay added to the gradient."""
    torch = pytest.importorskip("torch")
    ours = _keras_trajectory(make_optimizer("adam", learning_rate=0.05, weight_decay=0.1), 20)
    reference = _torch_trajectory(
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1), 20)
    for step, (got, expected) in enumerate(zip(ours, reference), 1):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    decoupled = _keras_trajectory(make_optimizer("adamw", learning_rate=0.05, weight_decay=0.1), 20)
    assert not np.allclose(decoupled[-1], ours[-1])


def test_adamw_is_adamw_as_in_torch():
    torch = pytest.importorskip("torch")
    ours = _keras_trajectory(make_optimizer("adamw", learning_rate=0.05, weight_decay=0.1), 20)
    reference = _torch_trajectory(
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1), 20)
    for step, (got, expected) in enumerate(zip(ours, reference), 1):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_make_optimizer_takes_the_names_of_the_training_config():
    from bundlelab.training import OPTIMIZERS as CONFIG_OPTIMIZERS

    assert set(OPTIMIZERS) == set(CONFIG_OPTIMIZERS)
    kinds = {name: type(make_optimizer(name, learning_rate=0.01)) for name in OPTIMIZERS}
    assert kinds == {"ranger": Lookahead, "adam": TorchAdam, "adamw": TorchAdam, "sgd": L2SGD}
    with pytest.raises(BundleLabError, match="'optimizer' parameter must be one of"):
        make_optimizer("adamax", learning_rate=0.01)
    with pytest.raises(BundleLabError, match="'learning_rate' parameter"):
        make_optimizer("adam", learning_rate=0)
    with pytest.raises(BundleLabError, match="unexpected keyword argument 'lr'"):
        make_optimizer("adam", lr=0.01)
    clone = TorchAdam.from_config(make_optimizer("adam", learning_rate=0.01, weight_decay=0.5)
                                  .get_config())
    assert (clone.l2, clone.weight_decay) == (0.5, None)
    clone = TorchAdam.from_config(make_optimizer("adamw", learning_rate=0.01, weight_decay=0.5)
                                  .get_config())
    assert (clone.l2, clone.weight_decay) == (0.0, 0.5)


def test_lookahead_moves_slow_weights_every_k_steps():
    k, alpha = 6, 0.5
    _, _, start = _quadratic()
    fast = _keras_trajectory(RAdam(0.05), k)  # the inner optimizer alone
    wrapped = _keras_trajectory(Lookahead(RAdam(0.05), k=k, alpha=alpha), k)
    for step in range(k - 1):  # no synchronisation before step k
        np.testing.assert_array_equal(wrapped[step], fast[step])
    expected = start + np.float32(alpha) * (fast[-1] - start)
    np.testing.assert_allclose(wrapped[-1], expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(wrapped[-1], fast[-1])


def test_lookahead_state_is_saved_with_its_inner_optimizer():
    optimizer = Lookahead(RAdam(0.01))
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer.build([variable])
    # own: iterations, learning-rate slot, one slow copy; RAdam's: iterations, rate, m, v
    assert len(optimizer.variables) == 3 + 4
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    clone = Lookahead.from_config(optimizer.get_config())
    assert (clone.k, clone.alpha, type(clone.inner)) == (6, 0.5, RAdam)


def test_reports_follow_the_spec_order_on_a_dag():
    from bundlelab.search import GatedGraph, conv_fabric, extract

    fabric = conv_fabric(2, channels=2, input_shape=(1, 8, 8))
    spec = extract(fabric, np.ones(GatedGraph(fabric).n_gates, bool))
    trainee = KerasBackend().build(spec, TrainConfig(device="cpu"))
    x = np.random.default_rng(0).normal(size=(32, 1, 8, 8)).astype(np.float32)
    report = trainee.measure_bundles(x, np.arange(32) % 10)
    assert report.names == measured_layers(spec)


def test_the_training_loop_runs_and_resumes_through_keras(tmp_path):
    from bundlelab.datasets import load_dataset
    from bundlelab.training import Training, fit

    data = load_dataset("digits", n_train=256, n_test=64)
    spec = fully_connected(16, 2, input_shape=data.input_shape)
    config = TrainConfig(epochs=2, optimizer="adam", n_samples=128, device="cpu")
    straight = fit(spec, data, backend="keras", config=config)
    first = Training(spec, data, backend="keras", config=config, directory=tmp_path)
    first.train_epoch()
    first.close()  # the process ends here: its lock of the run folder goes with it
    resumed = Training(spec, data, backend="keras", config=config, directory=tmp_path)
    assert resumed.epochs_done == 1
    result = resumed.run()
    assert [r.train_loss for r in result.history] == [r.train_loss for r in straight.history]
    assert result.history[-1].report.names == ["dense1", "dense2"]
    assert result.checkpoint_mb > 0


@pytest.mark.slow
def test_keras_modules_pick_an_installed_backend_when_none_is_set():
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed: Keras's own default works")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", "import os, bundlelab.adapters.keras as m; "
                               "print(os.environ['KERAS_BACKEND'])"],
        capture_output=True, text=True, env=env, check=True,
    )
    assert done.stdout.strip() == "torch"


def test_a_backend_named_in_keras_json_is_kept(tmp_path, monkeypatch):
    from bundlelab.adapters.keras._import import _configured_backend

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert _configured_backend() == "tensorflow"  # no config file: Keras' default
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    assert _configured_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert _configured_backend() == "torch"


@pytest.mark.parametrize("optimizer", ["ranger", "adamw"])
def test_the_schedule_reaches_the_keras_optimizer_and_divergence_is_watched(optimizer):
    trainee = KerasBackend().build(CONV, TrainConfig(optimizer=optimizer, device="cpu"))
    trainee.set_learning_rate(0.0125)
    inner = getattr(trainee.model.optimizer, "inner", trainee.model.optimizer)
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(0.0125)
    largest = trainee.largest_values()
    assert set(measured_layers(CONV)) <= set(largest)
    assert all(0 < v < 10 for v in largest.values())
