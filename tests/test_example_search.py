"""The budgeted-search example runs end to end on its smallest settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_budgeted_search_example(tmp_path):
    pytest.importorskip("torch")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "budgeted_search_digits.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert "best ResNet within budget" in done.stdout
    result = json.loads((tmp_path / "budgeted-search.json").read_text())
    budgets = result["summary"]["budgets"]
    assert [b["budget"] for b in budgets] == [6e4, 1.2e5]
    for row in budgets:
        # a met budget means a cost within it, per seed
        assert all(met == (row["cost_mean"] <= row["budget"]) for met in row["met_budget"])
    assert result["summary"]["family"][0]["name"].startswith("resnet-8")
    assert (tmp_path / "budgeted-search.png").read_bytes()[:4] == b"\x89PNG"
