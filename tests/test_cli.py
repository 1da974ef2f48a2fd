"""The ``bundlelab`` command line: reports, layer selection, the demo, one-line errors, light imports."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import bundlelab
from bundlelab.cli import run
from bundlelab.io import save_dump

N = 40


@pytest.fixture
def dump(tmp_path, rng):
    layers = {
        "block1/conv": rng.integers(0, 4, (N, 2, 3)).astype(np.float32),
        "block2/conv": rng.integers(0, 2, (N, 2)).astype(np.float32),
        "head": np.zeros((N, 3), np.float32),
    }
    labels = np.arange(N) % 3
    save_dump(tmp_path / "acts.npz", layers, labels)
    return tmp_path / "acts.npz", layers, labels


def cli(capsys, *argv):
    """Run the CLI in-process: (exit status, stdout, stderr)."""
    code = run([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_report_matches_find_bundles(dump, capsys):
    path, layers, labels = dump
    code, out, err = cli(capsys, "analyze", path, "--format", "json", "--lr", "0.01", "--bundle-ids")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["schema"] == "bundlelab.report/1" and data["params"]["learning_rate"] == 0.01
    assert [record["layer"] for record in data["layers"]] == list(layers)
    for record in data["layers"]:
        expected = bundlelab.find_bundles(layers[record["layer"]], labels, learning_rate=0.01,
                                          layer=record["layer"])
        assert record == json.loads(json.dumps(expected.to_record(include_ids=True)))
    assert data["first_conflicting_layer"] == "block2/conv"


def test_chunked_streaming_gives_the_same_report(dump, capsys):
    path, _, _ = dump
    _, whole, _ = cli(capsys, "analyze", path, "-f", "json", "--bundle-ids")
    code, chunked, _ = cli(capsys, "analyze", path, "-f", "json", "--bundle-ids", "--chunk-rows", "7")
    assert code == 0 and json.loads(chunked) == json.loads(whole)


def test_csv_and_output_file_with_format_from_suffix(dump, capsys, tmp_path):
    path, layers, _ = dump
    code, out, _ = cli(capsys, "analyze", path, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [row["layer"] for row in rows] == list(layers)
    code, out, err = cli(capsys, "analyze", path, "--output", tmp_path / "report.json")
    assert code == 0 and out == "" and "report.json" in err
    assert json.loads((tmp_path / "report.json").read_text())["schema"] == "bundlelab.report/1"
    code, out, _ = cli(capsys, "analyze", path, "-o", tmp_path / "report.txt")
    assert code == 0 and out == "" and "first conflicting layer" in (tmp_path / "report.txt").read_text()


def test_table_marks_the_first_conflicting_layer(dump, capsys):
    path, _, _ = dump
    code, out, err = cli(capsys, "analyze", path)
    assert code == 0 and err == ""
    lines = out.splitlines()
    marked = [line for line in lines if "block2/conv" in line][0]
    assert marked.lstrip("│| ").startswith(("\u25b6", ">"))
    for column in ("layer", "shape", "bundles", "conflicting", "bundle entropy", "ln(Nc)", "largest bundle"):
        assert column in out
    assert "2x3" in out  # per-sample shape of block1/conv
    assert "the first conflicting layer is block2/conv (layer 2 of 3)" in " ".join(out.split())


def test_layer_selection_and_close_match_error(dump, capsys):
    path, _, _ = dump
    code, out, _ = cli(capsys, "analyze", path, "-f", "json", "--layers", "block*", "--layers", "head")
    assert [r["layer"] for r in json.loads(out)["layers"]] == ["block1/conv", "block2/conv", "head"]
    code, out, _ = cli(capsys, "analyze", path, "-f", "json", "--layers", "head,block1/conv")
    assert [r["layer"] for r in json.loads(out)["layers"]] == ["block1/conv", "head"]
    code, out, err = cli(capsys, "analyze", path, "--layers", "blok2/conv")
    assert code == 2 and out == ""
    assert err == "error: acts.npz has no layer 'blok2/conv': did you mean 'block2/conv' or 'block1/conv'?\n"


def test_nonfinite_policy(tmp_path, capsys):
    values = np.zeros((N, 2), np.float32)
    values[3] = np.nan
    save_dump(tmp_path / "nan.npz", {"layer": values}, np.arange(N) % 2)
    code, _, err = cli(capsys, "analyze", tmp_path / "nan.npz")
    assert code == 2 and "--nonfinite exclude" in err and err.count("\n") == 1
    code, out, _ = cli(capsys, "analyze", tmp_path / "nan.npz", "--nonfinite", "exclude", "-f", "json")
    assert code == 0 and json.loads(out)["layers"][0]["n_excluded"] == 1


def test_plot_is_saved(dump, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path, _, _ = dump
    code, _, err = cli(capsys, "analyze", path, "-f", "csv", "--plot", tmp_path / "entropy.png")
    assert code == 0 and "entropy.png" in err
    assert (tmp_path / "entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_lists_layers(dump, capsys):
    path, _, _ = dump
    code, out, _ = cli(capsys, "info", path)
    assert code == 0
    for fragment in ("block1/conv", "2x3", "float32", "3 layers", f"{N} samples, 3 classes"):
        assert fragment in out


def test_demo_reports_the_deep_narrow_net_as_conflicting(tmp_path, capsys):
    code, out, err = cli(capsys, "analyze", "--demo", "--output-dir", tmp_path, "-f", "json")
    assert code == 0
    assert (tmp_path / "bundlelab-demo.npz").exists()
    layers = json.loads(out)["layers"]
    healthy = [r for r in layers if r["layer"].startswith("healthy/")]
    narrow = [r for r in layers if r["layer"].startswith("narrow/")]
    assert len(healthy) == 4 and len(narrow) == 12
    assert not any(r["n_conflicting"] for r in healthy)
    assert narrow[-1]["fully_conflicting"] and narrow[-1]["n_samples"] == 1797
    assert "Demo:" in err  # notes go to stderr when stdout carries JSON

    code, out, _ = cli(capsys, "analyze", "--demo", "--output-dir", tmp_path)
    text = " ".join(out.split())
    assert code == 0
    assert "healthy: no conflicting layer" in text
    assert "narrow: the first conflicting layer is narrow/dense" in text
    assert "every sample is in one single bundle" in text


BAD_INPUTS = [
    (["analyze"], "missing DUMP"),
    (["analyze", "{tmp}/acts.npz", "--demo"], "not both"),
    (["analyze", "{tmp}/missing.npz"], "no such file or directory"),
    (["analyze", "{tmp}/notes.txt"], "unknown dump format"),
    (["analyze", "{tmp}/acts.npz", "--mode", "fast"], "'fast' is not one of"),
    (["analyze", "{tmp}/acts.npz", "--lr", "-1"], "The '--lr' option must be a float in (0, inf)"),
    (["analyze", "{tmp}/acts.npz", "--batch-size", "0"], "'--batch-size'"),
    (["analyze", "{tmp}/acts.npz", "--chunk-rows", "0"], "--chunk-rows"),
    (["analyze", "{tmp}/acts.npz", "--lrr", "1"], "No such option: --lrr"),
    (["analyze", "{tmp}/acts.npz", "--labels", "y"], "has no labels array 'y'"),
    (["analyze", "{tmp}/acts.npz", "--layers", "conv*"], "matches no layer"),
    (["analyze", "{tmp}/broken.npz"], "truncated or corrupt"),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize("argv, fragment", BAD_INPUTS, ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_on_stderr_with_status_2(dump, capsys, tmp_path, argv, fragment):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    code, out, err = cli(capsys, *[arg.format(tmp=tmp_path) for arg in argv])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err


# -- in a fresh interpreter -----------------------------------------------------------------------


def python(*args, cwd=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_importing_the_cli_and_showing_help_imports_nothing_heavy():
    heavy = ("numba", "h5py", "safetensors", "sklearn", "matplotlib", "scipy")
    code = (
        "import sys, io, contextlib\n"
        "import bundlelab.cli\n"
        f"heavy = {heavy!r}\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "for argv in (['--help'], ['analyze', '--help'], ['info', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert bundlelab.cli.run(argv) == 0\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["analyze", "--help"], ["info", "--help"], ["--version"]])
def test_help_runs_as_a_program(argv):
    result = python("-m", "bundlelab.cli", *argv)
    assert result.returncode == 0 and result.stderr == ""
    assert ("Usage: bundlelab" in result.stdout) or result.stdout.startswith("bundlelab ")


def test_errors_as_a_program_have_no_traceback(tmp_path):
    result = python("-m", "bundlelab.cli", "analyze", str(tmp_path / "nope.npz"), "--format", "json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: no such file or directory") and result.stderr.count("\n") == 1


def test_layer_names_are_shown_literally(tmp_path, capsys):
    save_dump(tmp_path / "torch.npz", {"features[3]": np.zeros((N, 2), np.float32)}, np.arange(N) % 2)
    code, out, _ = cli(capsys, "analyze", tmp_path / "torch.npz")
    assert code == 0 and "features[3]" in out
    code, out, _ = cli(capsys, "info", tmp_path / "torch.npz")
    assert code == 0 and "features[3]" in out


def test_long_runs_off_a_terminal_report_progress_on_stderr_only(dump, capsys, monkeypatch):
    monkeypatch.setattr("bundlelab.cli.LONG_RUN_S", -1.0)
    path, _, _ = dump
    code, out, err = cli(capsys, "analyze", path, "-f", "json")
    assert code == 0 and json.loads(out)["schema"] == "bundlelab.report/1"
    assert err.splitlines() == [
        line for line in err.splitlines() if line.startswith("bundlelab: layer ")
    ] and "layer 3/3 head" in err
