"""Every example script runs on its smallest setting and writes what it promises.

Each test starts the script in a fresh interpreter, as a user does, so all carry the ``slow``
marker. Only facts that hold for any training run are asserted for the paper-reproduction
scripts (shapes, ranges, consistency between the tables); the paper's claims need the
full-size runs (docs/results.md).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LN10 = math.log(10)

pytestmark = pytest.mark.slow


def run_example(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``examples/script`` with ``args``; a failure shows the script's stderr."""
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_quick(script: str, out: Path) -> subprocess.CompletedProcess:
    return run_example(script, "--quick", "--out", str(out))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:4] == b"\x89PNG"


def needs(*modules: str) -> None:
    for module in modules:
        pytest.importorskip(module)


# -- tracking and auditing ----------------------------------------------------------------------


def test_numpy_training_tracker_example(tmp_path):
    done = run_example("track_numpy_training.py", "--epochs", "2", "--out", str(tmp_path))
    assert "narrow-deep" in done.stdout
    history = json.loads((tmp_path / "narrow-deep-history.json").read_text())
    assert history["steps"] == [0, 1]
    # the deep narrow net is conflicting, the wide shallow one is not
    assert history["time_averaged_entropy"]["dense12"] > 1.0
    wide = json.loads((tmp_path / "wide-shallow-history.json").read_text())
    assert max(wide["time_averaged_entropy"].values()) == 0.0
    assert_png(tmp_path / "narrow-deep-entropy.png")


def test_torch_training_hook_example(tmp_path):
    needs("torch")
    run_example("torch_training_hook.py", "--epochs", "1", "--out", str(tmp_path))
    deep = json.loads((tmp_path / "torch-narrow-deep-history.json").read_text())
    wide = json.loads((tmp_path / "torch-wide-shallow-history.json").read_text())
    assert max(deep["time_averaged_entropy"].values()) > 1.0
    assert max(wide["time_averaged_entropy"].values()) == 0.0


def test_sklearn_onnx_audit_example(tmp_path):
    needs("skl2onnx", "onnxruntime")
    run_example("audit_sklearn_onnx.py", "--out", str(tmp_path))
    report = json.loads((tmp_path / "digits-mlp-report.json").read_text())
    assert report["schema"] == "bundlelab.report/1"
    assert len(report["layers"]) == 5  # one per hidden layer, never the logits
    assert_png(tmp_path / "digits-mlp-entropy.png")


# -- section 3.2: the toy conflicting bundle ------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    needs("torch")
    out = tmp_path_factory.mktemp("toy")
    # the no-conflict run stays >= 0.95 from epoch 32 on (seed 0; 13-33 over seeds 0-7)
    run_example("toy_conflicting_bundle.py", "--epochs", "40", "--seed", "0", "--out", str(out),
                timeout=120)
    return out, json.loads((out / "toy-results.json").read_text())["runs"]


def test_no_conflict_run_solves_the_task(toy_run):
    run = toy_run[1]["no-conflict balanced"]
    assert run["start"]["n_conflicting"] == 0
    assert run["final_train_acc"] >= 0.95


@pytest.mark.parametrize("name, prior",
                         [("conflicting balanced", 0.5), ("conflicting imbalanced", 0.66)])
def test_fully_conflicting_runs_output_the_class_prior(toy_run, name, prior):
    run = toy_run[1][name]
    assert run["start"]["n_bundles"] == 1 and run["start"]["fully_conflicting"]
    assert run["end"]["n_bundles"] == 1  # dead ReLUs: the bundle never splits
    assert run["final_mean_outputs"] == pytest.approx([prior, 1 - prior], abs=0.05)


def test_gradient_amplitudes_are_similar_at_the_start(toy_run):
    runs = toy_run[1]
    reference = runs["no-conflict balanced"]["first_epoch_grad_norm"]
    for name in ("conflicting balanced", "conflicting imbalanced"):
        assert 0.1 <= runs[name]["first_epoch_grad_norm"] / reference <= 10


def test_plot_is_written(toy_run):
    assert_png(toy_run[0] / "toy-training.png")


# -- the paper's experiments (quick settings) -------------------------------------------------


def test_fc_grid_quick(tmp_path):
    needs("torch", "matplotlib", "scipy")
    run_quick("fc_grid.py", tmp_path)
    doc = json.loads((tmp_path / "fc-grid.json").read_text())
    assert_png(tmp_path / "fc-grid.png")
    widths, depths = doc["widths"], doc["depths"]
    assert (widths, depths, doc["seeds"]) == ([3, 32], [1, 4], [0])
    grid = doc["grid"]
    assert grid["axes"] == ["depth", "width"]
    for key in ("test_accuracy", "bundle_entropy", "conflicting"):
        assert [len(row) for row in grid[key]] == [len(widths)] * len(depths)
    assert len(doc["runs"]) == len(widths) * len(depths)
    for run in doc["runs"]:
        assert 0 <= run["test_accuracy"] <= 1
        assert 0 <= run["bundle_entropy"] <= LN10 + 1e-9
        assert len(run["entropy_per_layer"]) == len(run["entropy_per_layer_epoch1"]) == run["depth"]
        assert run["bundle_entropy"] == run["entropy_per_layer"][-1]
    for i, row in enumerate(grid["bundle_entropy"]):
        assert grid["conflicting"][i] == [h > 0 for h in row]
    assert set(doc["spearman"]) == {"rho", "p_value", "n"} and doc["spearman"]["n"] == 4
    assert doc["spearman"]["rho"] is None or -1 <= doc["spearman"]["rho"] <= 1
    checks = doc["deepest_net_check"]
    assert [c["width"] for c in checks] == widths
    for c in checks:
        assert c["deepest_depth"] == max(depths)
        assert 0 <= c["agreement"] <= 1 and 0 <= c["agreement_epoch1"] <= 1
        k = c["first_conflicting_layer"]
        assert k is None or 1 <= k <= max(depths)
        assert c["agreement"] == 1 - len(c["mismatched_depths"]) / len(depths)


def test_vgg_vs_resnet_depth_quick(tmp_path):
    needs("torch", "matplotlib")
    run_quick("vgg_vs_resnet_depth.py", tmp_path)
    doc = json.loads((tmp_path / "vgg-vs-resnet.json").read_text())
    assert_png(tmp_path / "vgg-vs-resnet.png")
    assert doc["depths"] == [4, 10] and doc["config"]["crop_padding"] == 0
    assert doc["config"]["image_size"] == 16 and doc["data"]["input_shape"] == [1, 16, 16]
    for family in ("plain", "resnet"):
        rows = doc["table"][family]
        assert [r["depth"] for r in rows] == [4, 10]
        for r in rows:
            assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["bundle_entropy"] <= LN10 + 1e-9
    assert len(doc["runs"]) == 4
    for run in doc["runs"]:
        assert run["layers"] == run["depth"]
        assert len(run["entropy_over_time"]) == doc["config"]["epochs"] == 2
        assert run["bundle_entropy"] == pytest.approx(sum(run["entropy_over_time"]) / 2)
        assert run["last_layer"] == ("a1" if run["depth"] == 4 else "d1")


def test_autotune_vs_resnet_quick(tmp_path):
    needs("torch", "matplotlib")
    run_quick("autotune_vs_resnet.py", tmp_path)
    doc = json.loads((tmp_path / "autotune-vs-resnet.json").read_text())
    assert_png(tmp_path / "autotune-vs-resnet.png")
    assert doc["start"] == "plain-20" and doc["resnets"] == ["resnet-10"]
    assert doc["data"]["input_shape"] == [1, 16, 16]  # digits resized by --image-size
    assert doc["watch"] == [1, "all"] and doc["best_resnet"] == "resnet-10"
    tuned_names = ["auto-tune (epoch 1)", "auto-tune (all epochs)"]
    for name in tuned_names + ["resnet-10"]:
        summary = doc["summary"][name]
        for key in ("layers", "test_accuracy", "checkpoint_mb", "ms_per_step"):
            assert summary[f"{key}_std"] == 0.0  # one seed
        assert summary["checkpoint_mb"] > 0 and summary["ms_per_step"] > 0
    for name, watch in zip(tuned_names, doc["watch"]):
        tuned = next(r for r in doc["runs"] if r["name"] == name)
        assert tuned["watch"] == watch
        evolution = doc["evolution"][name]["0"]
        assert evolution[0]["epoch"] == "start" and evolution[0]["layers"] == 20
        assert [evolution[0][s] for s in "abcd"] == [2, 2, 3, 2]
        assert evolution[-1]["layers"] == tuned["layers"] <= 20
        assert len(evolution) == tuned["restarts"] + 1 == len(tuned["pruned_after_epochs"]) + 1
        assert 2 * sum(tuned["blocks"].values()) + 2 == tuned["layers"]
        assert tuned["epochs_total"] == sum(tuned["pruned_after_epochs"]) + doc["config"]["epochs"]
        if watch == 1:
            assert set(tuned["pruned_after_epochs"]) <= {1}
        else:  # watching every epoch: the final run shows no conflict in any epoch
            assert tuned["conflicting_layers"] == 0 and tuned["bundle_entropy_last"] == 0
        goal = doc["goal"][name]
        assert goal["within_one_point"] == (goal["accuracy_gap_points"] >= -1.0 - 1e-9)
        assert goal["fewer_layers"] == (tuned["layers"] < 10)


# -- the grids' trials through an executor ------------------------------------------------------

#: what differs between two runs of the same trials: wall-clock times
TIMINGS = {"seconds", "ms_per_step", "ms_per_step_std", "less_time_per_step"}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("script, result", [("fc_grid.py", "fc-grid.json"),
                                            ("vgg_vs_resnet_depth.py", "vgg-vs-resnet.json")])
def test_grid_on_worker_processes_equals_the_in_process_grid(tmp_path, script, result):
    """Trials in 2 spawned workers (other default threads, their own data loading) give
    the same numbers, in the same order, as the default in-process loop."""
    needs("torch", "matplotlib", "scipy")
    run_quick(script, tmp_path / "inprocess")
    assert not (tmp_path / "inprocess" / "progress.json").exists()
    run_example(script, "--quick", "--executor", "processes", "--workers", "2",
                "--resume", "--out", str(tmp_path / "processes"))
    expected = json.loads((tmp_path / "inprocess" / result).read_text())
    got = json.loads((tmp_path / "processes" / result).read_text())
    assert without_timings(got) == without_timings(expected)
    assert_png(tmp_path / "processes" / result.replace(".json", ".png"))
    progress = json.loads((tmp_path / "processes" / "progress.json").read_text())
    assert progress["done"] == progress["total"] == len(expected["runs"])
    assert progress["failed"] == progress["running"] == 0
    names = [task["name"] for task in progress["tasks"]]
    # one resumable run folder per trial, named as before
    folders = sorted(path.name for path in (tmp_path / "processes" / "runs").iterdir())
    assert folders == sorted(names)


def test_grid_refuses_a_bad_worker_count(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "fc_grid.py"), "--quick", "--workers",
                           "0", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--workers: must be at least 1; got 0" in done.stderr


# -- budgeted super networks ----------------------------------------------------------------------


def test_budgeted_search_example(tmp_path):
    needs("torch")
    done = run_quick("budgeted_search_digits.py", tmp_path)
    assert "best ResNet within budget" in done.stdout
    result = json.loads((tmp_path / "budgeted-search.json").read_text())
    budgets = result["summary"]["budgets"]
    assert [b["budget"] for b in budgets] == [6e4, 1.2e5]
    for row in budgets:
        # a met budget means a cost within it, per seed
        assert all(met == (row["cost_mean"] <= row["budget"]) for met in row["met_budget"])
    assert result["summary"]["family"][0]["name"].startswith("resnet-8")
    assert_png(tmp_path / "budgeted-search.png")
