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
