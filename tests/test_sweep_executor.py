"""A sweep's trials through the executors: the same numbers in-process and in worker
processes, a half-done sweep that resumes, the summary file, the threads of each trial.

Tiny on purpose (CI has 2 cores): one budget x 2 seeds and one family member x 2 seeds, so 4
trials of a 2-epoch search and a 1-epoch retraining on 96 digits.  The super-network's convs
are just wide enough (16 and 32 filters) that torch splits them over threads: its search
losses differ in their last bits between 1 and 2 threads, so the equality of every epoch's
losses and gate probabilities shows that the trials fix their threads.
"""

import json
import math
import os
from pathlib import Path

import pytest

from bundlelab import BundleLabError
from bundlelab.datasets import DatasetSource
from bundlelab.datasets import load_dataset
from bundlelab.search import (
    BudgetedSearch,
    GatedGraph,
    cheapest_architecture,
    get_cost,
    resnet_fabric,
    sweep,
)
from bundlelab.search import _sweep as sweeps
from bundlelab.spec import to_dict
from bundlelab.training import TrainConfig

torch = pytest.importorskip("torch")
from bundlelab.adapters.torch._backend import TorchBackend  # noqa: E402

CONFIG = TrainConfig(optimizer="adamw", learning_rate=1e-3, n_samples=32, batch_size=32,
                     device="cpu", augment=False)
SEARCH = {"warmup_epochs": 0, "search_epochs": 2}
#: the trials of the sweep below, in task order
TRIALS = ["flops-{b:g}-lam0.001-seed0", "flops-{b:g}-lam0.001-seed1", "family-{f}-seed0",
          "family-{f}-seed1"]
#: timed, so never equal between two runs
TIMED = ("ms_per_step", "ms_per_step_std")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=96, n_test=48)


@pytest.fixture(scope="module")
def fabric(digits):
    return resnet_fabric(1, k=2, filters=(16, 32), input_shape=digits.input_shape)


@pytest.fixture(scope="module")
def member(digits):
    return resnet_fabric(1, k=2, filters=(4, 8), extra=False, input_shape=digits.input_shape)


@pytest.fixture(scope="module")
def budget(fabric):
    return 2 * cheapest_architecture(GatedGraph(fabric), get_cost("flops"))[1]


def run(fabric, member, digits, budget, folder, **options):
    return sweep(fabric, digits, budgets=[budget], lambdas=[1e-3], search=SEARCH,
                 config=CONFIG, retrain_epochs=1, family=[member], seeds=2,
                 directory=folder, progress=False, **options)


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("inprocess")


@pytest.fixture(scope="module")
def reference(fabric, member, digits, budget, reference_folder):
    """The in-process sweep (the default executor)."""
    return run(fabric, member, digits, budget, reference_folder)


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


def histories(folder):
    """Every epoch of every trial's runs (losses, accuracies, gate probabilities, bundles),
    the timings aside."""
    runs = sorted(folder.glob("*/search.json")) + sorted(folder.glob("**/run.json"))
    return {str(path.relative_to(folder)): [
        {k: v for k, v in record.items() if k != "seconds"}
        for record in json.loads(path.read_text())["history"]] for path in runs}


def assert_same(result, reference, folder, reference_folder):
    """Every number of every trial, mean and check equal (the timings aside), and every
    epoch of every run in the trials' folders."""
    for field in ("points", "family", "means", "family_means"):
        assert untimed(getattr(result, field)) == untimed(getattr(reference, field)), field
    assert result.checks == reference.checks
    assert result.seeds == reference.seeds == [0, 1]
    expected = histories(reference_folder)
    assert len(expected) == 6  # 2 searches, their 2 retrainings, 2 family runs
    assert histories(folder) == expected


def trial_names(budget, member):
    return [name.format(b=budget, f=member.name) for name in TRIALS]


def progress_file(folder):
    return json.loads((folder / "sweep-progress.json").read_text())


# -- the results ------------------------------------------------------------------------------


def test_a_sweep_lists_every_trial_and_their_means_over_the_seeds(reference, budget, member):
    points, family = reference.points, reference.family
    assert [p["name"] for p in points + family] == [
        n if not n.startswith("family") else member.name for n in trial_names(budget, member)]
    assert [p["seed"] for p in points + family] == [0, 1, 0, 1]
    # an independent mean and sample standard deviation of each number
    (mean,), (family_mean,) = reference.means, reference.family_means
    for rows, averaged in ((points, mean), (family, family_mean)):
        for key in ("validation_accuracy", "test_accuracy", "cost", "final_entropy"):
            a, b = (float(r[key]) for r in rows)
            assert averaged[key] == pytest.approx((a + b) / 2, abs=1e-12)
            assert averaged[f"{key}_std"] == pytest.approx(abs(a - b) / math.sqrt(2), abs=1e-12)
    assert mean["name"] == f"flops-{budget:g}-lam0.001" and mean["seeds"] == 2
    assert mean["met_budget"] == all(p["met_budget"] for p in points)
    assert reference.checks[0]["architecture"] == mean["name"]
    assert reference.checks[0]["test_accuracy"] == mean["test_accuracy"]


def test_the_folder_holds_every_trial_the_means_and_the_summary(reference, reference_folder,
                                                                budget, member):
    folder = reference_folder
    saved = json.loads((folder / "sweep.json").read_text())
    assert saved["seeds"] == [0, 1] and len(saved["points"]) == 2 and len(saved["means"]) == 1
    lines = (folder / "sweep.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["name", "budget", "lam"] and "seed" in header
    assert "test_accuracy_std" in header
    seeds = [line.split(",")[header.index("seed")] for line in lines[1:]]
    assert seeds == ["0", "1", "mean", "0", "1", "mean"]
    summary = progress_file(folder)
    counts = (summary["total"], summary["done"], summary["failed"], summary["running"])
    assert counts == (4, 4, 0, 0)
    assert [t["name"] for t in summary["tasks"]] == trial_names(budget, member)
    assert all(t["state"] == "done" and t["attempts"] == 1 for t in summary["tasks"])
    for name in (t["name"] for t in summary["tasks"]):
        assert (folder / name).is_dir()  # one resumable folder per trial


def test_one_seed_keeps_the_folder_names_and_numbers_of_before(fabric, digits, budget,
                                                               tmp_path):
    result = sweep(fabric, digits, budgets=[budget], lambdas=[1e-3],
                   search={"warmup_epochs": 0, "search_epochs": 1}, config=CONFIG,
                   retrain_epochs=1, directory=tmp_path, progress=False)
    name = f"flops-{budget:g}-lam0.001"
    assert [p["name"] for p in result.points] == [name] and result.seeds == [0]
    assert (tmp_path / name / "search.json").is_file()
    assert (tmp_path / name / "retrain" / "run.json").is_file()
    # the means of one seed are its numbers, without a spread
    (mean,) = result.means
    point = result.points[0]
    assert all(mean[k] == point[k] for k in ("cost", "test_accuracy", "validation_accuracy"))
    assert mean["test_accuracy_std"] is None and mean["pareto"] == point["pareto"]
    assert "mean" not in (tmp_path / "sweep.csv").read_text()


# -- other executors --------------------------------------------------------------------------


class DiesOnce(TorchBackend):
    """The torch backend, whose worker process dies (``os._exit``) at the first step of a
    search's second epoch, once in the whole sweep: the first trial to get there takes the
    marker file.  Loading a checkpoint (a resume) leaves a file in ``resumed``."""

    def __init__(self, marker, resumed):
        self.marker, self.resumed = str(marker), str(resumed)

    def build_supernet(self, spec, config, **options):
        trainee = super().build_supernet(spec, config, **options)
        step, load, steps = trainee.train_step, trainee.load, []

        def train_step(*args, **kwargs):
            steps.append(1)
            if len(steps) == STEPS_PER_EPOCH + 1:
                try:
                    os.rename(self.marker, self.marker + ".taken")
                except FileNotFoundError:
                    pass  # another trial died already
                else:
                    os._exit(1)
            return step(*args, **kwargs)

        def resumed(path):
            steps.extend([1] * STEPS_PER_EPOCH)  # the epochs done count as stepped
            Path(self.resumed, str(os.getpid())).write_text(path)
            return load(path)

        trainee.train_step, trainee.load = train_step, resumed
        return trainee


#: a search's steps per epoch: 96 samples less the validation tenth, in batches of 32
STEPS_PER_EPOCH = (96 - 10) // 32


@pytest.mark.slow
def test_worker_processes_give_the_numbers_of_the_in_process_sweep_a_killed_one_too(
        reference, reference_folder, fabric, member, digits, budget, tmp_path):
    # the workers start with 1 thread each (2 cores, 2 workers), this process has more: the
    # trials pin theirs to this process's count, so the numbers match bit for bit.  One
    # worker dies in its search's second epoch; its trial is retried and resumes from the
    # first epoch's checkpoint.
    marker, resumed = tmp_path / "kill-once", tmp_path / "resumed"
    marker.touch()
    resumed.mkdir()
    folder = tmp_path / "sweep"
    # the workers load the digits themselves (a DatasetSource), the reference got the arrays
    source = DatasetSource("digits", n_train=96, n_test=48)
    result = run(fabric, member, source, budget, folder, executor="processes", workers=2,
                 backend=DiesOnce(marker, resumed))
    assert_same(result, reference, folder, reference_folder)
    assert not marker.exists() and len(list(resumed.iterdir())) == 1
    (checkpoint,) = (p.read_text() for p in resumed.iterdir())
    assert Path(checkpoint).name == "checkpoint-0001.pt"
    summary = progress_file(folder)
    assert (summary["done"], summary["failed"]) == (4, 0)
    assert [t["name"] for t in summary["tasks"]] == trial_names(budget, member)
    assert sorted(t["attempts"] for t in summary["tasks"]) == [1, 1, 1, 2]
    victim = next(t for t in summary["tasks"] if t["attempts"] == 2)
    assert victim["name"] in trial_names(budget, member)[:2]  # a search died
    assert Path(checkpoint).parent.name == victim["name"]


@pytest.mark.slow
def test_a_half_done_sweep_resumes_where_it_stopped(reference, reference_folder, fabric, member,
                                                    digits, budget, tmp_path, monkeypatch):
    names = trial_names(budget, member)
    victim = names[1]
    original = BudgetedSearch.train_epoch

    def dies_in_the_second_epoch(self):
        if self.directory.name == victim and self.epochs_done == 1:
            raise RuntimeError("worker lost")
        return original(self)

    monkeypatch.setattr(BudgetedSearch, "train_epoch", dies_in_the_second_epoch)
    with pytest.raises(BundleLabError) as error:
        run(fabric, member, digits, budget, tmp_path, retries=0)
    message = str(error.value)
    assert victim in message and "worker lost" in message and "\n" not in message
    summary = progress_file(tmp_path)
    assert (summary["done"], summary["failed"], summary["total"]) == (3, 1, 4)
    failed = {t["name"]: t for t in summary["tasks"] if t["state"] == "failed"}
    assert list(failed) == [victim] and "worker lost" in failed[victim]["last_error"]
    assert not (tmp_path / "sweep.json").exists()
    # the finished trials and the victim's first epoch stay
    state = {name: (tmp_path / name / ("search.json" if "lam" in name else "run.json"))
             for name in names}
    assert len(json.loads(state[victim].read_text())["history"]) == 1
    stamps = {name: path.stat().st_mtime_ns for name, path in state.items() if name != victim}

    monkeypatch.setattr(BudgetedSearch, "train_epoch", original)
    resumed = BudgetedSearch.__init__

    def counts(self, *args, **kwargs):
        resumed(self, *args, **kwargs)
        if self.directory is not None and self.directory.name == victim:
            assert self.epochs_done == 1  # resumed from its last finished epoch
    monkeypatch.setattr(BudgetedSearch, "__init__", counts)
    result = run(fabric, member, digits, budget, tmp_path)
    assert_same(result, reference, tmp_path, reference_folder)
    # the finished trials were read back, not trained again
    assert {n: state[n].stat().st_mtime_ns for n in stamps} == stamps
    assert progress_file(tmp_path)["done"] == 4


# -- threads ----------------------------------------------------------------------------------


def test_a_trial_computes_with_the_threads_it_is_given_and_restores_them(monkeypatch):
    from bundlelab import _trials

    seen = []
    monkeypatch.setattr(sweeps, "_trial", lambda trial, spec: seen.append(
        torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    trial = sweeps.SweepTrial(name="t", spec=to_dict(resnet_fabric(1, k=2, filters=(4, 8))),
                              data=None, config=CONFIG, retrain_epochs=1, cost="flops",
                              backend="torch", directory=None, threads=target)
    sweeps.run_sweep_trial(trial)
    assert seen == [target] and torch.get_num_threads() == before
    # by default every trial takes this process's count; another backend keeps its own
    assert _trials.trial_threads(None, "torch") == before
    assert _trials.trial_threads(3, "torch") == 3
    with pytest.raises(BundleLabError, match="'threads' parameter"):
        _trials.trial_threads(0, "torch")


@pytest.mark.parametrize("options, fragment", [
    ({"seeds": 0}, "The 'seeds' parameter must be an int in [1, inf)"),
    ({"seeds": [1, 1]}, "a list of distinct seeds"),
    ({"seeds": "2"}, "'seeds' parameter"),
    ({"executor": "cluster"}, "'executor' parameter must be one of"),
    ({"retries": -1}, "'retries' parameter"),
    ({"threads": 0}, "'threads' parameter"),
    ({"budgets": [1.0]}, "below the cheapest architecture"),
])
def test_bad_sweep_options_are_one_line_before_any_trial(fabric, digits, budget, tmp_path,
                                                         monkeypatch, options, fragment):
    monkeypatch.setattr(sweeps, "run_sweep_trial", lambda trial: pytest.fail("a trial ran"))
    options = {"budgets": [budget], **options}
    with pytest.raises(BundleLabError) as error:
        sweep(fabric, digits, config=CONFIG, directory=tmp_path, progress=False, **options)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_dataset_source_loads_once_per_process_and_names_absolute_folders(tmp_path,
                                                                            monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    assert DatasetSource("cifar10:data/c").name == f"cifar10:{tmp_path / 'data' / 'c'}"
    assert DatasetSource("digits").name == "digits"
    source = DatasetSource("digits", n_train=16, n_test=8)
    assert source.load() is source.load() and len(source.load().y_train) == 16
    assert pickle.loads(pickle.dumps(source)) == source
