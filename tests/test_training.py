"""Training a spec through the backend protocol: augmentation, the loop, checkpoints, resuming."""

import json
import os
import socket
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab import BundleLabError
from bundlelab.datasets import load_dataset
from bundlelab.spec import conv_net, fully_connected, parameter_count
from bundlelab.training import (
    RESUMABLE_OPTIONS,
    FolderLock,
    TrainConfig,
    Training,
    augment_batch,
    fit,
    get_backend,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=512, n_test=200)


def small_config(**changes):
    return TrainConfig(epochs=3, optimizer="adamw", n_samples=256, device="cpu").replace(
        **changes
    )


# -- augmentation ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(2, 7), st.integers(0, 3),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_every_augmented_image_is_a_window_of_the_padded_or_mirrored_original(
    n, channels, side, padding, flip, seed
):
    x = np.random.default_rng(seed).normal(size=(n, channels, side, side + 1)).astype(np.float32)
    out = augment_batch(x, np.random.default_rng(seed), crop_padding=padding, flip=flip)
    assert out.shape == x.shape and out.dtype == x.dtype
    p = padding
    for image, original in zip(out, x):
        candidates = [original, original[:, :, ::-1]] if flip else [original]
        windows = []
        for source in candidates:
            padded = np.pad(source, ((0, 0), (p, p), (p, p)))
            windows += [padded[:, t:t + side, s:s + side + 1]
                        for t in range(2 * p + 1) for s in range(2 * p + 1)]
        assert any(np.array_equal(image, w) for w in windows)


def test_brightness_shifts_each_image_by_one_bounded_offset():
    x = np.random.default_rng(0).normal(size=(6, 3, 4, 4)).astype(np.float32)
    out = augment_batch(x, np.random.default_rng(1), brightness=0.2)
    shift = (out - x).reshape(6, -1)
    np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], 1), atol=1e-6)
    assert np.all(np.abs(shift) <= 0.2 + 1e-6) and np.ptp(shift[:, 0]) > 0


def test_flat_inputs_and_no_augmentation_are_left_alone():
    x = np.ones((4, 10), np.float32)
    assert augment_batch(x, np.random.default_rng(0), crop_padding=2, flip=True) is x
    images = np.ones((4, 1, 3, 3), np.float32)
    assert augment_batch(images, np.random.default_rng(0)) is images


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, fragment", [
    ({"optimizer": "lamb"},
     "'optimizer' parameter must be one of 'ranger', 'adam', 'adamw', 'sgd'"),
    ({"epochs": 2.5}, "'epochs' parameter must be an int in [1, inf)"),
    ({"augment": 1}, "'augment' parameter must be a bool"),
    ({"seed": -1}, "'seed' parameter must be an int in [0, 9223372036854775807]"),
    ({"epochs": 0}, "'epochs' parameter must be an int in [1, inf)"),
    ({"learning_rate": -1.0}, "'learning_rate' parameter"),
    ({"crop_padding": -1}, "'crop_padding' parameter"),
])
def test_bad_options_are_one_line_errors(changes, fragment):
    with pytest.raises(BundleLabError) as error:
        TrainConfig(**changes)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_unknown_backend_names_the_known_ones(digits):
    with pytest.raises(BundleLabError, match="'keras', 'torch'"):
        get_backend("jax")


def test_data_of_another_shape_says_how_to_build_the_spec(digits):
    spec = conv_net(10, width_multiplier=0.125)  # (3, 32, 32) inputs
    with pytest.raises(BundleLabError, match=r"input_shape=\(1, 8, 8\)"):
        Training(spec, digits, config=small_config())


# -- the loop --------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_learns_and_reports_the_papers_figures(digits, tmp_path):
    spec = fully_connected(32, 2, input_shape=digits.input_shape)
    result = fit(spec, digits, config=small_config(epochs=6, augment=False,
                                                   learning_rate=3e-3, average_last=2),
                 directory=tmp_path)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.test_accuracy == pytest.approx(
        np.mean([r.test_accuracy for r in result.history[-2:]]))
    assert result.test_accuracy > 0.7  # ten classes: chance is 0.1
    assert result.parameters == parameter_count(spec)
    # weights-only checkpoint: float32 parameters plus a small container overhead
    assert 4 * result.parameters / 1e6 < result.checkpoint_mb < 4 * result.parameters / 1e6 + 0.05
    assert result.ms_per_step > 0
    assert result.tracker().steps == [1, 2, 3, 4, 5, 6]
    assert set(result.bundle_entropy) == {"dense1", "dense2"}
    summary = json.loads((tmp_path / "result.json").read_text())
    # results written atomically are as readable as any file the user writes
    umask = os.umask(0)
    os.umask(umask)
    for name in ("result.json", "run.json", "entropy.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    assert summary["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert (tmp_path / "entropy.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0006.pt"]


def test_measured_layers_are_reported_under_their_spec_ids(digits):
    spec = conv_net(blocks=[1, 1, 0, 0], width_multiplier=0.125, input_shape=digits.input_shape)
    run = Training(spec, digits, config=small_config(epochs=1))
    record = run.train_epoch()
    assert record.report.names == ["a1", "b1"]
    # the same type as BundleReport.first_conflicting: a LayerResult (or None), not a name
    assert record.first_conflicting is record.report.first_conflicting
    # the metric's alpha is the configured (peak) rate, not the schedule's rate of the
    # moment: H^l(t) stays comparable from epoch to epoch
    assert record.report.params["learning_rate"] == pytest.approx(run.config.learning_rate)
    assert record.report.params["batch_size"] == 64


def test_a_resumed_run_trains_exactly_as_an_uninterrupted_one(digits, tmp_path):
    spec = conv_net(blocks=[1, 1, 0, 0], width_multiplier=0.125, input_shape=digits.input_shape)
    config = small_config(epochs=4, optimizer="ranger")
    straight = fit(spec, digits, config=config)

    first = Training(spec, digits, config=config, directory=tmp_path)
    first.train_epoch()
    first.train_epoch()
    del first  # the process dies here
    resumed = Training(spec, digits, config=config, directory=tmp_path)
    assert resumed.epochs_done == 2
    result = resumed.run()
    assert [r.train_loss for r in result.history] == [r.train_loss for r in straight.history]
    assert [r.test_accuracy for r in result.history] == [r.test_accuracy for r in straight.history]


def test_a_crash_while_checkpointing_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch):
    spec = fully_connected(16, 2, input_shape=digits.input_shape)
    config = small_config(epochs=3)
    run = Training(spec, digits, config=config, directory=tmp_path)
    run.train_epoch()

    def dies_halfway(path, optimizer=True):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(run.trainee, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        run.train_epoch()
    run.close()  # the process dies here: the kernel drops its lock
    state = json.loads((tmp_path / "run.json").read_text())
    assert state["epochs_done"] == 1 and state["checkpoint"] == "checkpoint-0001.pt"
    resumed = Training(spec, digits, config=config, directory=tmp_path)
    assert resumed.epochs_done == 1
    assert resumed.run().history[-1].epoch == 3


@pytest.mark.parametrize("change, fragment", [
    ("spec", "holds a training run with other options (spec 'fc-2x16-relu', now 'fc-3x16-relu')"),
    ("config", "holds a training run with other options (learning_rate=0.01, now 0.02); a "
               "resume may change only epochs, search_epochs, device: use the same options"),
    ("shorter", "holds a training run that already ran 2 epochs, more than the 1 asked for"),
    ("version", "was written by bundlelab 0.0.1"),
    ("checkpoint", "names the checkpoint '../elsewhere.pt', not a file of its own folder"),
])
def test_resuming_a_folder_of_another_run_is_a_one_line_error(digits, tmp_path, change, fragment):
    spec = fully_connected(16, 2, input_shape=digits.input_shape)
    Training(spec, digits, config=small_config(), directory=tmp_path).train_epoch()
    config = small_config()
    if change == "spec":
        spec = fully_connected(16, 3, input_shape=digits.input_shape)
    elif change == "config":
        config = small_config(learning_rate=0.02)
    elif change == "shorter":  # two epochs ran: asking for one would shorten the run
        config = small_config(epochs=1)
        Training(spec, digits, config=small_config(), directory=tmp_path).train_epoch()
    elif change == "checkpoint":
        state = json.loads((tmp_path / "run.json").read_text())
        state["checkpoint"] = "../elsewhere.pt"
        (tmp_path / "run.json").write_text(json.dumps(state))
    else:
        state = json.loads((tmp_path / "run.json").read_text())
        state["bundlelab"] = "0.0.1"
        (tmp_path / "run.json").write_text(json.dumps(state))
    with pytest.raises(BundleLabError) as error:
        Training(spec, digits, config=config, directory=tmp_path)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_of_another_spec_is_refused(digits, tmp_path):
    config = small_config()
    one = get_backend("torch").build(fully_connected(16, 2, input_shape=(1, 8, 8)), config)
    one.save(str(tmp_path / "one.pt"))
    other = get_backend("torch").build(fully_connected(8, 2, input_shape=(1, 8, 8)), config)
    with pytest.raises(BundleLabError, match="written for another architecture"):
        other.load(str(tmp_path / "one.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BundleLabError, match="cannot read checkpoint"):
        other.load(str(tmp_path / "junk.pt"))


def test_lookahead_moves_slow_weights_halfway_every_six_steps():
    from bundlelab.adapters.torch._optim import Lookahead

    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    inner = torch.optim.SGD([weight], lr=0.1)
    optimizer = Lookahead(inner, k=6, alpha=0.5)
    start = weight.detach().clone()
    for _ in range(6):
        optimizer.zero_grad()
        (weight ** 2).sum().backward()
        optimizer.step()
    fast = start * 0.8 ** 6  # plain SGD on w^2 with lr 0.1 multiplies w by 0.8 per step
    torch.testing.assert_close(weight.detach(), start + 0.5 * (fast - start))


@pytest.mark.parametrize("shape, expected", [((3, 32, 32), 4), ((1, 28, 28), 3), ((1, 8, 8), 0),
                                             ((64,), 0)])
def test_default_crops_are_an_eighth_of_images_of_16_px_or_more(shape, expected):
    assert TrainConfig().crop_for(shape) == expected
    assert TrainConfig(crop_padding=2).crop_for(shape) == (2 if len(shape) == 3 else 0)
    assert TrainConfig(augment=False).crop_for(shape) == 0


# -- the resume policy, the lock and durable commits ----------------------------------------


def test_one_declared_list_says_what_a_resume_may_change():
    assert set(RESUMABLE_OPTIONS) == {"epochs", "search_epochs", "device"}


def test_a_resume_may_train_longer_on_another_device(digits, tmp_path):
    spec = fully_connected(16, 2, input_shape=digits.input_shape)
    # a constant rate: a cosine schedule is laid over the run's epochs, which then may not
    # change (tests/test_training_defaults.py)
    config = small_config(schedule="constant")
    fit(spec, digits, config=config.replace(epochs=1, device="cpu"), directory=tmp_path)
    longer = fit(spec, digits, config=config.replace(epochs=2, device="auto"), directory=tmp_path)
    assert [r.epoch for r in longer.history] == [1, 2]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["epochs"] == 2


HOLD_THE_LOCK = (
    "import sys; from bundlelab.training import FolderLock; "
    "lock = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"
)


@pytest.fixture
def other_process(tmp_path):
    """A second process holding ``tmp_path/run``'s lock until the test ends (or kills it)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(folder)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_a_second_process_on_a_run_folder_stops_naming_the_folder_and_the_other(
        digits, other_process):
    folder, holder = other_process
    spec = fully_connected(16, 2, input_shape=digits.input_shape)
    with pytest.raises(BundleLabError) as error:
        fit(spec, digits, config=small_config(epochs=1), directory=folder)
    message = str(error.value)
    assert str(folder) in message and f"pid {holder.pid} on {socket.gethostname()}" in message
    assert "\n" not in message
    assert not (folder / "run.json").exists()  # nothing was written beside the other process
    holder.kill()  # a killed holder leaves its lock file behind, but not its lock
    holder.wait()
    assert fit(spec, digits, config=small_config(epochs=1), directory=folder).history


def test_the_cli_refuses_a_folder_in_use_in_one_line(other_process, capsys):
    from bundlelab.cli import run as cli_run

    folder, holder = other_process
    code = cli_run(["train", "fc-2x16", "--epochs", "1", "--out", str(folder), "--n-train", "64",
                    "--n-test", "32", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert str(folder) in err and f"pid {holder.pid}" in err


def test_two_locks_of_one_folder_exclude_each_other_in_one_process_too(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(BundleLabError, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path).acquire()
    FolderLock(tmp_path).acquire().release()  # released at the end of the block


def test_the_checkpoint_is_synced_before_the_state_that_names_it(digits, tmp_path, monkeypatch):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name synced files")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("rename", os.path.basename(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = Training(fully_connected(16, 2, input_shape=digits.input_shape), digits,
                   config=small_config(epochs=2), directory=tmp_path)
    run.train_epoch()
    folder = tmp_path.name
    checkpoint = events.index(("sync", ".checkpoint-0001.pt.tmp"))
    assert events[checkpoint + 1:checkpoint + 3] == [("rename", "checkpoint-0001.pt"),
                                                     ("sync", folder)]
    state = events.index(("rename", "run.json"))
    assert checkpoint < state and events[state - 1][1].startswith(".run.json.")
    assert events[state + 1] == ("sync", folder)


def test_numpy_scalars_are_converted_so_the_run_folder_can_record_them(digits, tmp_path):
    config = TrainConfig(epochs=np.int64(1), optimizer="adamw", learning_rate=np.float32(1e-3),
                         n_samples=np.int64(64), seed=np.uint8(3), augment=np.bool_(False),
                         device="cpu")
    assert type(config.epochs) is int and type(config.learning_rate) is float
    fit(fully_connected(16, 2, input_shape=digits.input_shape), digits, config=config,
        directory=tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["config"]["seed"] == 3


@pytest.mark.parametrize("call, fragment", [
    (lambda spec, data: TrainConfig(measure_samples=64), "did you mean 'n_samples'?"),
    (lambda spec, data: Training(spec, data, confg=None), "did you mean 'config'?"),
    (lambda spec, data: fit(spec, data, directroy="x"), "did you mean 'directory'?"),
    (lambda spec, data: fit(spec), "missing a required argument: 'data'"),
])
def test_an_unknown_or_missing_keyword_is_one_line_at_the_call(digits, call, fragment):
    spec = fully_connected(16, 2, input_shape=digits.input_shape)
    with pytest.raises(BundleLabError) as error:
        call(spec, digits)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_finished_run_without_matplotlib_keeps_its_results(digits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    spec = fully_connected(16, 2, input_shape=digits.input_shape)
    with pytest.warns(UserWarning, match="entropy.png not drawn: plotting requires matplotlib"):
        result = fit(spec, digits, config=small_config(epochs=1), directory=tmp_path)
    assert result.history and (tmp_path / "result.json").exists()
    assert not (tmp_path / "entropy.png").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(spec, digits, config=small_config(epochs=1))  # no folder, no figure, no warning


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(precious)
    with pytest.raises(BundleLabError, match="cannot lock .*run: .lock: "):
        FolderLock(tmp_path / "run").acquire()
    assert precious.read_text() == "keep me"


# -- an epoch costs what a plain loop costs (issue 13), with the same results ------------------


def plain_torch_losses(spec, data, config, epochs):
    """The training loss of each epoch from a plain PyTorch loop over the same batches: the
    reference the run's loop must match bit for bit."""
    import torch.nn.functional as F

    from bundlelab.adapters.torch import build_model
    from bundlelab.adapters.torch._optim import make_optimizer
    from bundlelab.training import training_batches

    model = build_model(spec, seed=config.seed)
    optimizer = make_optimizer(config.optimizer, model.parameters(),
                               learning_rate=config.learning_rate,
                               weight_decay=config.weight_decay)
    steps = config.batches_per_epoch(len(data.y_train))
    losses = []
    for epoch in range(1, epochs + 1):
        model.train()
        total, seen = torch.zeros(()), 0
        for step, (x, y) in enumerate(training_batches(data, config, epoch)):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate_at(epoch, step, steps)
            optimizer.zero_grad(set_to_none=True)
            yt = torch.from_numpy(y.astype(np.int64))
            loss = F.cross_entropy(model(torch.from_numpy(x)), yt)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            seen += len(y)
        losses.append(float(total) / seen)
    return losses


@pytest.mark.parametrize("progress", [False, True])
def test_an_epoch_trains_exactly_as_a_plain_torch_loop_measured_or_not(digits, tmp_path,
                                                                       progress):
    spec = conv_net(blocks=[1, 1, 0, 0], width_multiplier=0.125, input_shape=digits.input_shape)
    config = small_config(epochs=3)
    measured = fit(spec, digits, config=config, directory=tmp_path / "m", progress=progress)
    with Training(spec, digits, config=config, progress=progress) as run:
        bare = [run.train_epoch(measure=False) for _ in range(3)]
    plain = plain_torch_losses(spec, digits, config, 3)
    assert [r.train_loss for r in measured.history] == plain
    # measuring (a no_grad forward in inference mode) leaves the training untouched
    assert [r.train_loss for r in bare] == plain
    assert [r.test_loss for r in bare] == [r.test_loss for r in measured.history]
    assert all(r.report is not None for r in measured.history)


def test_every_measurement_sees_the_runs_fixed_subset(digits, monkeypatch):
    spec = fully_connected(depth=2, width=16, input_shape=digits.input_shape)
    run = Training(spec, digits, config=small_config(epochs=2))
    seen = []
    original = run.trainee.measure_bundles

    def measure_bundles(x, y, **options):
        seen.append((x.copy(), y.copy()))
        return original(x, y, **options)

    monkeypatch.setattr(run.trainee, "measure_bundles", measure_bundles)
    run.train_epoch()
    run.train_epoch()
    assert len(seen) == 2
    for x, y in seen:
        np.testing.assert_array_equal(x, digits.x_train[run.measure_index])
        np.testing.assert_array_equal(y, digits.y_train[run.measure_index])


def test_the_progress_bar_redraws_from_the_loop_without_a_thread_of_its_own(monkeypatch):
    import threading

    from rich.progress import Progress

    from bundlelab.training._progress import batch_progress

    redraws = []
    monkeypatch.setattr(Progress, "refresh", lambda self: redraws.append(1))
    threads = []
    with batch_progress("epoch 1/1", 50, refresh_seconds=float("inf")) as advance:
        for _ in advance(range(50)):
            threads.append(threading.active_count())
        during = len(redraws)
    assert max(threads) == threading.active_count()  # no refresh thread while the steps run
    assert during == 1  # drawn when the epoch starts, then only when time has passed
    redraws.clear()
    with batch_progress("epoch 1/1", 50, refresh_seconds=0.0) as advance:
        assert list(advance(range(50))) == list(range(50))
        during = len(redraws)
    assert during == 51
    with batch_progress("epoch 1/1", 3, show=False) as advance:
        assert list(advance(iter([1, 2, 3]))) == [1, 2, 3]


@pytest.mark.parametrize("kind", ["training", "search"])
def test_a_run_with_progress_starts_no_refresh_thread(digits, kind):
    import threading

    from bundlelab.search import BudgetedSearch, SearchConfig, resnet_fabric

    counts = []
    if kind == "training":
        run = Training(fully_connected(depth=2, width=16, input_shape=digits.input_shape),
                       digits, config=small_config(epochs=1), progress=True)
    else:
        fabric = resnet_fabric(1, k=2, filters=(4, 8), input_shape=digits.input_shape)
        run = BudgetedSearch(fabric, digits, SearchConfig(budget=1e12, warmup_epochs=0,
                                                          search_epochs=1),
                             config=small_config(), progress=True)
    trainee = run.trainee
    step = trainee.train_step if kind == "search" else None
    if step is not None:
        def counted_step(*args, **kwargs):
            counts.append(threading.active_count())
            return step(*args, **kwargs)
        trainee.train_step = counted_step
        before = threading.active_count()
        run.train_epoch()
    else:
        from bundlelab.training import _run

        original = _run.training_batches

        def counted(*args, **kwargs):
            for batch in original(*args, **kwargs):
                counts.append(threading.active_count())
                yield batch
        before = threading.active_count()
        _run.training_batches, restore = counted, original
        try:
            run.train_epoch()
        finally:
            _run.training_batches = restore
    assert counts and max(counts) == before


def test_a_cli_run_with_stdout_redirected_leaves_only_its_results_there(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bundlelab", "train", "fc-2x16", "--data", "digits", "--epochs",
         "3", "--n-train", "256", "--n-test", "64", "--n-samples", "64", "--device", "cpu",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    # the table's title comes first: no blank line left by a progress bar per epoch
    assert lines and lines[0].strip(), done.stdout
    assert "" not in [line.strip() for line in lines], done.stdout
    assert "epoch 3/3" in done.stderr


@pytest.mark.parametrize("given, device, expected", [
    (["--threads", "2"], "cpu", 2),   # as given
    ([], "cpu", 1),                   # the default on a CPU: one thread, whatever the cores
])
def test_the_cli_trains_on_the_threads_it_is_given_and_restores_them(tmp_path, monkeypatch,
                                                                     given, device, expected):
    from bundlelab import training
    from bundlelab.cli import run as cli_run

    seen = []
    real_fit = training.fit

    def fit(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", fit)
    original = torch.get_num_threads()
    torch.set_num_threads(3)  # not what either case asks for
    try:
        cli_run(["train", "fc-2x16", "--data", "digits", "--epochs", "1", "--n-train", "128",
                 "--n-test", "32", "--n-samples", "32", "--device", device, *given,
                 "--out", str(tmp_path / "run")])
    except SystemExit as exc:
        assert not exc.code
    finally:
        after = torch.get_num_threads()
        torch.set_num_threads(original)
    assert seen == [expected]
    assert after == 3


def test_cli_threads_default_to_one_on_the_cpu_only(monkeypatch):
    from bundlelab.cli._executor import cli_threads

    assert cli_threads(None, "cpu") == 1
    assert cli_threads(4, "cpu") == 4
    assert cli_threads(None, "cuda") is None and cli_threads(None, "cuda:1") is None
    assert cli_threads(None, "cpu", "keras") is None  # keras keeps its own threads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli_threads(None, "auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_threads(None, "auto") == 1
