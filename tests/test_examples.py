"""The example scripts run (on their smallest settings)."""

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_numpy_training_tracker_example(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "track_numpy_training.py"), "--epochs", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert "narrow-deep" in done.stdout
    history = json.loads((tmp_path / "narrow-deep-history.json").read_text())
    assert history["steps"] == [0, 1]
    # the deep narrow net is conflicting, the wide shallow one is not
    assert history["time_averaged_entropy"]["dense12"] > 1.0
    wide = json.loads((tmp_path / "wide-shallow-history.json").read_text())
    assert max(wide["time_averaged_entropy"].values()) == 0.0
    assert (tmp_path / "narrow-deep-entropy.png").read_bytes()[:4] == b"\x89PNG"


def test_torch_training_hook_example(tmp_path):
    import pytest

    pytest.importorskip("torch")
    subprocess.run(
        [sys.executable, str(EXAMPLES / "torch_training_hook.py"), "--epochs", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    deep = json.loads((tmp_path / "torch-narrow-deep-history.json").read_text())
    wide = json.loads((tmp_path / "torch-wide-shallow-history.json").read_text())
    assert max(deep["time_averaged_entropy"].values()) > 1.0
    assert max(wide["time_averaged_entropy"].values()) == 0.0


def test_sklearn_onnx_audit_example(tmp_path):
    import pytest

    pytest.importorskip("skl2onnx")
    pytest.importorskip("onnxruntime")
    subprocess.run(
        [sys.executable, str(EXAMPLES / "audit_sklearn_onnx.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    report = json.loads((tmp_path / "digits-mlp-report.json").read_text())
    assert report["schema"] == "bundlelab.report/1"
    assert len(report["layers"]) == 5  # one per hidden layer, never the logits
    assert (tmp_path / "digits-mlp-entropy.png").read_bytes()[:4] == b"\x89PNG"
