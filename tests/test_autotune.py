"""The auto-tune: a deep narrow net that conflicts is really pruned, resumes, and the CLI."""

import json
import shutil

import pytest

from bundlelab import BundleLabError
from bundlelab.autotune import autotune
from bundlelab.cli import run as cli_run
from bundlelab.datasets import load_dataset
from bundlelab.spec import fully_connected, layer_count, measured_layers, stage_depths
from bundlelab.training import RunFolder, TrainConfig, Training

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=512, n_test=200)


# a constant 1e-3: the runs these tests prune and resume (a resume lengthens the final run,
# which a cosine schedule would refuse)
CONFIG = TrainConfig(epochs=2, optimizer="adamw", learning_rate=1e-3, schedule="constant",
                     n_samples=256, device="cpu")
# 40 ReLU layers of 8 units on the digits: the deep end collapses samples of different digits
# into one output (found after the first epoch with every seed tried), the shallow end does not.
DEEP_NARROW = dict(width=8, depth=40)


def deep_narrow(data):
    return fully_connected(DEEP_NARROW["width"], DEEP_NARROW["depth"], input_shape=data.input_shape)


@pytest.fixture(scope="module")
def tuned(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("autotune")
    # the paper's rule: check after the first epoch of every run only
    return autotune(deep_narrow(digits), digits, config=CONFIG, directory=folder,
                    check_epochs=1), folder


def test_a_deep_narrow_net_is_pruned_until_no_layer_conflicts(tuned):
    result, _ = tuned
    restarts = result.restarts
    assert len(restarts) >= 2, "the deep narrow net should have been pruned"
    for before, after in zip(restarts, restarts[1:]):
        # the pruned layer and everything after it in its stage are gone, nothing else
        cut = measured_layers(before.spec).index(before.pruned_layer)
        assert measured_layers(after.spec) == measured_layers(before.spec)[:cut]
        assert before.epochs == 1 and before.entropy > 0
    final = result.training
    assert result.spec == restarts[-1].spec and restarts[-1].pruned_layer is None
    assert layer_count(result.spec) < DEEP_NARROW["depth"] + 1
    assert len(final.history) == CONFIG.epochs
    assert final.history[0].first_conflicting is None  # its check passed


def test_the_folder_holds_the_evolution_and_the_final_spec(tuned):
    result, folder = tuned
    rows = (folder / "evolution.csv").read_text().splitlines()
    assert rows[0] == "epoch,hidden,layers,pruned_layer,entropy"
    assert rows[1].startswith(f"start,{DEEP_NARROW['depth']},")
    assert len(rows) == len(result.restarts) + 1
    from bundlelab.spec import load

    assert load(folder / "final-spec.yaml") == result.spec
    summary = json.loads((folder / "result.json").read_text())
    assert summary["restarts"] == len(result.restarts) - 1
    assert stage_depths(result.spec)["hidden"] == summary["evolution"][-1]["hidden"]


def crash_on_the_third_epoch(monkeypatch):
    """Make the third ``Training.train_epoch`` call raise KeyboardInterrupt (a crash); return
    the original method, to put back."""
    calls = {"n": 0}
    original = Training.train_epoch

    def crashes_on_the_third_epoch(self, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, **kwargs)

    monkeypatch.setattr(Training, "train_epoch", crashes_on_the_third_epoch)
    return original


def test_an_interrupted_autotune_resumes_where_it_stopped(digits, tuned, tmp_path, monkeypatch):
    expected, _ = tuned
    original = crash_on_the_third_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        autotune(deep_narrow(digits), digits, config=CONFIG, directory=tmp_path, check_epochs=1)
    monkeypatch.setattr(Training, "train_epoch", original)
    state = json.loads((tmp_path / "autotune.json").read_text())
    assert len(state["restarts"]) >= 2  # two epochs: at least one pruning was saved
    resumed = autotune(deep_narrow(digits), digits, config=CONFIG, directory=tmp_path,
                       check_epochs=1)
    assert resumed.spec == expected.spec
    assert [r.pruned_layer for r in resumed.restarts] == [r.pruned_layer for r in expected.restarts]


@pytest.mark.parametrize("spec, config, check_epochs, fragment", [
    (fully_connected(8, 4, input_shape=(1, 8, 8)), CONFIG, 1,
     "holds an auto-tune with other options (spec 'fc-40x8-relu', now 'fc-4x8-relu')"),
    (None, CONFIG.replace(learning_rate=0.01), 1,
     "holds an auto-tune with other options (learning_rate=0.001, now 0.01); a resume may change "
     "only epochs, search_epochs, device: use the same options or another folder"),
    (None, CONFIG, 2, "(check_epochs=1, now 2)"),
])
def test_resuming_with_options_that_change_results_is_refused_as_for_training(
        digits, tuned, spec, config, check_epochs, fragment):
    _, folder = tuned
    with pytest.raises(BundleLabError) as error:
        autotune(spec or deep_narrow(digits), digits, config=config, check_epochs=check_epochs,
                 directory=folder)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_an_autotune_resumed_with_more_epochs_trains_its_final_run_longer(digits, tuned, tmp_path):
    expected, folder = tuned
    copy = shutil.copytree(folder, tmp_path / "copy")
    longer = autotune(deep_narrow(digits), digits, config=CONFIG.replace(epochs=3, device="auto"),
                      directory=copy, check_epochs=1)
    assert [r.pruned_layer for r in longer.restarts] == [r.pruned_layer for r in expected.restarts]
    assert len(longer.training.history) == 3
    assert json.loads((copy / "autotune.json").read_text())["config"]["epochs"] == 3
    with pytest.raises(BundleLabError, match="already ran 3 epochs, more than the 2 asked for"):
        autotune(deep_narrow(digits), digits, config=CONFIG, directory=copy, check_epochs=1)


def cli(capsys, *argv):
    code = cli_run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_command_writes_a_resumable_run(tmp_path, capsys):
    args = ["train", "fc-2x16", "--epochs", "2", "--optimizer", "adam", "--out", tmp_path,
            "--n-train", "256", "--n-test", "100", "--device", "cpu"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "fc-2x16-relu" in out
    assert json.loads((tmp_path / "result.json").read_text())["epochs"] == 2
    code, out, err = cli(capsys, *args)  # nothing left to train: the result is reported again
    assert code == 0, err


def test_autotune_command_prints_the_comparison_table(tmp_path, capsys):
    code, out, err = cli(capsys, "autotune", "fc-40x8", "--epochs", "1", "--optimizer", "adam",
                         "--out", tmp_path, "--n-train", "256", "--n-test", "100",
                         "--compare", "fc-2x8", "--n-samples", "256", "--device", "cpu")
    assert code == 0, err
    assert "auto-tune" in out and "fc-2x8" in out
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["name"] for r in rows] == ["auto-tune", "fc-2x8"]
    assert (tmp_path / "seed-0" / "final-spec.yaml").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["train", "plain-7"], "must be one of 4, 10, 20, 30, 50, 76, 100, 120"),
    (["train", "vgg-16"], "unknown preset 'vgg-16'"),
    (["train", "fc-2x16", "--data", "cifar10"], "cifar10"),
    (["train", "fc-2x16", "--optimizer", "lamb"], "'ranger', 'adam', 'adamw', 'sgd'"),
    (["autotune", "nope.yaml"], "nope.yaml"),
])
def test_bad_input_is_one_line_with_status_2(tmp_path, capsys, argv, fragment):
    code, out, err = cli(capsys, *argv, "--out", tmp_path / "run")
    assert code == 2
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_a_crash_between_the_run_and_the_autotune_state_loses_no_pruning(digits, tuned, tmp_path,
                                                                       monkeypatch):
    expected, _ = tuned
    original = RunFolder.write

    def dies_when_recording_the_first_pruning(self, state):
        if len(state.get("restarts", ())) == 2:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(RunFolder, "write", dies_when_recording_the_first_pruning)
    with pytest.raises(KeyboardInterrupt):
        autotune(deep_narrow(digits), digits, config=CONFIG, directory=tmp_path, check_epochs=1)
    monkeypatch.setattr(RunFolder, "write", original)
    resumed = autotune(deep_narrow(digits), digits, config=CONFIG, directory=tmp_path,
                       check_epochs=1)
    assert resumed.spec == expected.spec
    assert [r.pruned_layer for r in resumed.restarts] == [r.pruned_layer for r in expected.restarts]
    # the epochs of the restart whose pruning was lost are those of a run that never crashed
    assert [(r.epochs, r.epoch) for r in resumed.restarts] == \
        [(r.epochs, r.epoch) for r in expected.restarts]
    assert (tmp_path / "evolution.csv").read_text() == expected.evolution_csv()


# -- the conflict watch: check_epochs="all" ------------------------------------------------------

# 24 ReLU layers of 12 units, seed 1, 4 epochs: the first epoch conflicts at dense10; the
# 9-layer net left passes its first epoch but conflicts at dense5 in its second, which the
# paper's first-epoch rule never sees (the final run of check_epochs=1 conflicts).
LATE = dict(width=12, depth=24)
LATE_CONFIG = CONFIG.replace(epochs=4, seed=1)


def late_conflicting(data):
    return fully_connected(LATE["width"], LATE["depth"], input_shape=data.input_shape)


@pytest.fixture(scope="module")
def watched(digits):
    return {rule: autotune(late_conflicting(digits), digits, config=LATE_CONFIG,
                           check_epochs=rule, progress=False)
            for rule in (1, "all")}


def conflicts(history):
    return [record.epoch for record in history if record.first_conflicting is not None]


def test_the_first_epoch_rule_keeps_a_net_that_conflicts_later(watched):
    first_epoch = watched[1]
    assert all(r.epochs == 1 for r in first_epoch.restarts[:-1])
    assert first_epoch.training.history[0].first_conflicting is None
    assert conflicts(first_epoch.training.history), "the final run should conflict after epoch 1"


def test_watching_all_epochs_prunes_a_late_conflict_and_ends_free_of_conflicts(watched):
    result = watched["all"]
    # pruned later than the first epoch at least once, and every epoch of the final run was
    # measured and showed no conflicting layer
    assert any(r.epochs > 1 for r in result.restarts[:-1])
    history = result.training.history
    assert len(history) == LATE_CONFIG.epochs and all(r.report for r in history)
    assert conflicts(history) == []
    assert layer_count(result.spec) < layer_count(watched[1].spec)
    for before, after in zip(result.restarts, result.restarts[1:]):
        cut = measured_layers(before.spec).index(before.pruned_layer)
        assert measured_layers(after.spec) == measured_layers(before.spec)[:cut]
        assert before.entropy > 0


def test_an_interrupted_autotune_watching_all_epochs_resumes_to_the_same_result(
        digits, watched, tmp_path, monkeypatch):
    expected = watched["all"]
    original = crash_on_the_third_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        autotune(late_conflicting(digits), digits, config=LATE_CONFIG, check_epochs="all",
                 directory=tmp_path, progress=False)
    monkeypatch.setattr(Training, "train_epoch", original)
    # without check_epochs: the default is "all", else the folder would refuse the resume
    resumed = autotune(late_conflicting(digits), digits, config=LATE_CONFIG,
                       directory=tmp_path, progress=False)
    assert resumed.spec == expected.spec
    assert [(r.pruned_layer, r.epochs) for r in resumed.restarts] == \
        [(r.pruned_layer, r.epochs) for r in expected.restarts]
    with pytest.raises(BundleLabError, match=r"check_epochs='all', now 1"):
        autotune(late_conflicting(digits), digits, config=LATE_CONFIG, check_epochs=1,
                 directory=tmp_path, progress=False)


@pytest.mark.parametrize("value, fragment", [
    ("every", "check_epochs must be a positive int or 'all'; got 'every'"),
    (0, "check_epochs"),
    (1.5, "check_epochs"),
])
def test_a_bad_check_epochs_is_one_line(digits, value, fragment):
    with pytest.raises(BundleLabError) as error:
        autotune(deep_narrow(digits), digits, config=CONFIG, check_epochs=value)
    assert fragment in str(error.value) and "\n" not in str(error.value)
