"""The "ray" executor on the session's local Ray (the ``ray_local`` fixture, 2 CPUs): the same
results as in process, a killed worker's task retried, and a killed trial resuming from its
run folder to end exactly as an uninterrupted run.

The tasks leave marker files in tmp_path (one machine: every Ray worker sees them) to decide
which attempt dies.  Few and small tests: CI has two cores.
"""

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from bundlelab import BundleLabError
from bundlelab.executors import TasksFailed, get_executor, torch_threads

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray(ray_local):
    # Ray workers do not share the driver's sys.path, so they could not import this test
    # module by name: send its functions by value instead
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_local


def attempt(folder, name) -> int:
    done = len(list(Path(folder).glob(f"{name}.attempt*")))
    Path(folder, f"{name}.attempt{done + 1}").touch()
    return done + 1


def flaky_square(task):
    """``value ** 2``, failing the first ``fails`` attempts."""
    folder, name, value, fails = task
    n = attempt(folder, name)
    if n <= fails:
        raise RuntimeError(f"attempt {n} of {name} fails")
    return value * value


def dies_once(task):
    """Kills its own worker on the first attempt; returns its pid."""
    folder, name, die = task
    if attempt(folder, name) == 1 and die:
        os.kill(os.getpid(), signal.SIGKILL)
    return name, os.getpid()


def trial(task):
    """A tiny resumable training run in ``folder``; with ``kill``, its first attempt kills its
    own process right after its first epoch was committed to the folder."""
    folder, seed, kill = task
    from bundlelab.datasets import load_dataset
    from bundlelab.spec import conv_net
    from bundlelab.training import TrainConfig, Training

    data = load_dataset("digits", n_train=256, n_test=100)
    # convolutions: their results differ between 1 and 2 threads (a fully connected network
    # this small does not), so this trial shows that the threads are set
    spec = conv_net(blocks=[1, 1, 0, 0], width_multiplier=0.125, input_shape=data.input_shape)
    config = TrainConfig(epochs=3, optimizer="adamw", n_samples=128, device="cpu", seed=seed)
    killed = Path(f"{folder}.killed")
    # one intra-op thread wherever the trial runs (Ray's workers, this process): torch's
    # reductions split by thread, and the results must be identical
    with torch_threads(1), Training(spec, data, config=config, directory=folder,
                                    progress=False) as run:
        resumed_from = run.epochs_done
        while not run.finished:
            run.train_epoch()
            if kill and not killed.exists():
                killed.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        result = run.result()
    return {"resumed_from": resumed_from,
            "history": [(r.train_loss, r.test_accuracy, r.report[-1].entropy)
                        for r in result.history]}


def test_results_equal_the_inprocess_executors(ray, tmp_path):
    tasks = [(tmp_path, f"t{i}", i - 3, i % 2) for i in range(6)]
    names = [t[1] for t in tasks]
    summary = tmp_path / "summary.json"
    with get_executor("ray", progress=False) as executor:
        assert executor.name == "ray" and not executor.in_process
        results = executor.map(flaky_square, tasks, names=names, summary=summary)
    (tmp_path / "here").mkdir()
    expected = get_executor(progress=False).map(
        flaky_square, [(tmp_path / "here", *t[1:]) for t in tasks])
    assert results == expected == [(i - 3) ** 2 for i in range(6)]
    data = json.loads(summary.read_text())
    assert [t["attempts"] for t in data["tasks"]] == [1, 2, 1, 2, 1, 2]
    assert data["done"] == 6
    assert ray.is_initialized()  # the fixture's Ray: reused, not shut down


def test_a_failing_task_is_one_line_after_the_others_finished(ray, tmp_path):
    tasks = [(tmp_path, "bad", 1, 9), (tmp_path, "good", 2, 0)]
    with pytest.raises(TasksFailed) as error:
        get_executor("ray", progress=False).map(flaky_square, tasks, names=["bad", "good"],
                                                retries=1, what="trials")
    assert str(error.value).startswith("of 2 trials, 'bad' failed after 2 attempts "
                                       "(RuntimeError: attempt 2 of bad fails)")
    assert error.value.results == [None, 4]
    assert ray.is_initialized()


def test_capacity_is_what_the_cluster_holds_and_impossible_tasks_are_refused(ray):
    assert get_executor("ray", progress=False).capacity() == 2  # the fixture's 2 CPUs
    assert get_executor("ray", progress=False, resources={"num_cpus": 0.5}).capacity() == 4
    assert get_executor("ray", progress=False, workers=3).capacity() == 3
    with pytest.raises(BundleLabError) as error:
        get_executor("ray", progress=False, resources={"num_gpus": 1}).map(abs, [1])
    assert str(error.value) == ("each task asks for num_gpus=1 but the Ray cluster holds 0 GPU: "
                                "start nodes that have it (ray start --num-gpus N, --resources) "
                                "or ask for less")
    assert ray.is_initialized()


def test_a_killed_worker_is_retried(ray, tmp_path):
    tasks = [(tmp_path, "dies", True), (tmp_path, "lives", False)]
    summary = tmp_path / "summary.json"
    results = get_executor("ray", progress=False, workers=2).map(
        dies_once, tasks, names=["dies", "lives"], summary=summary)
    assert [name for name, _ in results] == ["dies", "lives"]
    assert os.getpid() not in {pid for _, pid in results}
    data = json.loads(summary.read_text())
    assert [t["attempts"] for t in data["tasks"]] == [2, 1]
    assert data["tasks"][0]["last_error"].startswith("WorkerDied: its Ray worker died")


def test_a_killed_trial_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_run(
        ray, tmp_path):
    pytest.importorskip("torch")
    names = ["killed", "whole"]
    tasks = [(str(tmp_path / "ray" / "killed"), 1, True),
             (str(tmp_path / "ray" / "whole"), 2, False)]
    on_ray = get_executor("ray", progress=False).map(trial, tasks, names=names)
    here = get_executor(progress=False).map(
        trial, [(str(tmp_path / "here" / name), seed, False) for name, (_, seed, _) in
                zip(names, tasks)])
    # the killed trial's retry found its first epoch in its run folder and went on from there
    assert [r["resumed_from"] for r in on_ray] == [1, 0]
    assert (tmp_path / "ray" / "killed.killed").exists()
    assert [r["resumed_from"] for r in here] == [0, 0]
    # identical to the uninterrupted in-process runs, to the last bit
    assert [r["history"] for r in on_ray] == [r["history"] for r in here]
    state = json.loads((tmp_path / "ray" / "killed" / "run.json").read_text())
    assert state["epochs_done"] == 3
