"""The paper-reproduction scripts run on their ``--quick`` setting and write what they promise.

Only facts that hold for any training run are asserted (shapes, ranges, consistency between
the tables); the paper's claims need the full-size runs (docs/results.md).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LN10 = math.log(10)


def run_quick(script: str, out: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out)],
                   capture_output=True, text=True, check=True, timeout=120)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_fc_grid_quick(tmp_path):
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
    run_quick("vgg_vs_resnet_depth.py", tmp_path)
    doc = json.loads((tmp_path / "vgg-vs-resnet.json").read_text())
    assert_png(tmp_path / "vgg-vs-resnet.png")
    assert doc["depths"] == [4, 10] and doc["config"]["crop_padding"] == 0
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
    run_quick("autotune_vs_resnet.py", tmp_path)
    doc = json.loads((tmp_path / "autotune-vs-resnet.json").read_text())
    assert_png(tmp_path / "autotune-vs-resnet.png")
    assert doc["start"] == "plain-20" and doc["resnets"] == ["resnet-10"]
    assert doc["best_resnet"] == "resnet-10"
    for name in ("auto-tune", "resnet-10"):
        summary = doc["summary"][name]
        for key in ("layers", "test_accuracy", "checkpoint_mb", "ms_per_step"):
            assert summary[f"{key}_std"] == 0.0  # one seed
        assert summary["checkpoint_mb"] > 0 and summary["ms_per_step"] > 0
    tuned = next(r for r in doc["runs"] if r["name"] == "auto-tune")
    evolution = doc["evolution"]["0"]
    assert evolution[0]["epoch"] == "start" and evolution[0]["layers"] == 20
    assert [evolution[0][s] for s in "abcd"] == [2, 2, 3, 2]
    assert evolution[-1]["layers"] == tuned["layers"] <= 20
    assert len(evolution) == tuned["restarts"] + 1
    assert 2 * sum(tuned["blocks"].values()) + 2 == tuned["layers"]
    assert tuned["epochs_total"] == tuned["restarts"] * 1 + doc["config"]["epochs"]
