"""Reports and trackers: what users export, reload and plot."""

import csv
import io
import json

import numpy as np
import pytest

from bundlelab import BundleReport, BundleTracker, analyze_layers
from bundlelab.report import PARAM_COLUMNS, RECORD_FIELDS


@pytest.fixture
def report(rng):
    labels = np.repeat([0, 1, 2, 3], 25)
    healthy = rng.normal(size=(100, 6)).astype(np.float32)
    collapsed = np.zeros((100, 3), np.float32)
    half = np.repeat(rng.normal(size=(50, 2)), 2, axis=0).astype(np.float32)  # pairs of samples
    return analyze_layers({"fc1": healthy, "fc2": half, "fc3": collapsed}, labels)


def test_first_conflicting_layer_and_values(report):
    assert report.names == ["fc1", "fc2", "fc3"]
    assert report.first_conflicting.layer == "fc2"
    assert report["fc1"].entropy == 0.0 and report["fc1"].n_bundles == 100
    # pairs (2k, 2k+1) share a bundle; with labels in runs of 25, pair 12 = samples (24, 25)
    # and pair 37 = (74, 75) straddle two classes: 2 conflicting bundles of 2, entropy ln2 each
    assert report["fc2"].n_conflicting == 2
    assert report["fc2"].entropy == pytest.approx(2 * 2 * np.log(2) / 100)
    assert report["fc3"].fully_conflicting and report["fc3"].entropy == pytest.approx(np.log(4))
    assert report["fc3"].max_entropy == pytest.approx(np.log(4))


def test_json_round_trip_and_schema(report, tmp_path):
    path = tmp_path / "out" / "report.json"
    text = report.to_json(path, include_ids=True)
    assert path.read_text() == text
    data = json.loads(text)
    assert data["schema"] == "bundlelab.report/1"
    assert data["first_conflicting_layer"] == "fc2"
    assert list(data["layers"][0])[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    again = BundleReport.from_dict(data)
    assert again.names == report.names
    assert np.array_equal(again["fc2"].bundle_ids, report["fc2"].bundle_ids)
    assert again.params == report.params


def test_csv_and_dataframe(report):
    reader = csv.DictReader(io.StringIO(report.to_csv()))
    rows = list(reader)
    # each row states its update format, w, alpha, |B| and where each came from
    assert reader.fieldnames == list(RECORD_FIELDS + PARAM_COLUMNS)
    assert rows[0]["update_format"] == "float32" and rows[0]["weight_amplitude"] == "1.0"
    assert rows[0]["learning_rate_source"] == "default"
    assert [row["layer"] for row in rows] == report.names
    assert float(rows[2]["entropy"]) == pytest.approx(report["fc3"].entropy)
    frame = report.to_dataframe()
    assert list(frame.columns) == list(RECORD_FIELDS)
    assert frame.loc[frame.layer == "fc3", "fully_conflicting"].item()


def test_atomic_write_keeps_old_file_on_failure(report, tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("old")
    monkeypatch.setattr("bundlelab._atomic.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        report.to_json(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_plot_writes_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "entropy.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tracker_time_average_and_heatmap(tmp_path):
    labels = [0, 1, 0, 1]
    tracker = BundleTracker()
    tracker.record(0, {"a": np.zeros((4, 2), np.float32), "b": np.zeros((4, 2), np.float32)}, labels)
    tracker.record(10, {"a": np.eye(4, dtype=np.float32), "b": np.zeros((4, 2), np.float32)}, labels)
    assert tracker.entropy_over_time().shape == (2, 2)
    averaged = tracker.time_averaged()
    assert averaged["a"] == pytest.approx(np.log(2) / 2)
    assert averaged["b"] == pytest.approx(np.log(2))
    data = json.loads(tracker.to_json(tmp_path / "history.json"))
    assert data["steps"] == [0, 10] and len(data["records"]) == 4
    assert tracker.to_csv().splitlines()[0].startswith("step,layer,")
    pytest.importorskip("matplotlib")
    tracker.plot(tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
