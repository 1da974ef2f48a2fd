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
    code, out, err = cli(capsys, "analyze", path, "--format", "json", "--lr", "0.01", "--bundle-ids",
                         "--weight-amplitude", "1")
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
    code, out, err = cli(capsys, "analyze", path, "--weight-amplitude", "1")
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
    # the demo knows its networks: w is their largest weight, not an unannounced 1.0
    params = json.loads(out)["params"]
    from bundlelab.io.demo import demo_weight_amplitude

    assert params["weight_amplitude"] == demo_weight_amplitude() > 1.0
    assert params["sources"]["weight_amplitude"] == "the demo networks' weights"
    assert "w was not given" not in err

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
    (["analyze", "{tmp}/acts.npz", "--lr", "-1"], "The '--lr' option must be a float in (0"),
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


COMMANDS = ["analyze", "info", "audit", "train", "autotune", "search"]


def test_importing_the_cli_and_showing_help_imports_nothing_heavy():
    heavy = ("numba", "h5py", "safetensors", "sklearn", "matplotlib", "scipy", "torch", "keras",
             "tensorflow", "onnx", "onnxruntime")
    code = (
        "import sys, io, contextlib\n"
        "import bundlelab.cli\n"
        f"heavy = {heavy!r}\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        f"for argv in [['--help']] + [[name, '--help'] for name in {COMMANDS!r}]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert bundlelab.cli.run(argv) == 0\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[name, "--help"] for name in COMMANDS])
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
    monkeypatch.setattr("bundlelab.cli._app.LONG_RUN_S", -1.0)
    path, _, _ = dump
    code, out, err = cli(capsys, "analyze", path, "-f", "json", "--weight-amplitude", "1")
    assert code == 0 and json.loads(out)["schema"] == "bundlelab.report/1"
    assert err.splitlines() == [
        line for line in err.splitlines() if line.startswith("bundlelab: layer ")
    ] and "layer 3/3 head" in err


# -- the package: no import cycle, light modules --------------------------------------------------

CLI_MODULES = ["bundlelab.cli", "bundlelab.cli._app", "bundlelab.cli._analyze", "bundlelab.cli._audit",
               "bundlelab.cli._train", "bundlelab.cli._search", "bundlelab.cli.__main__", "bundlelab.__main__"]


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_cli_module_imports_alone_in_a_fresh_interpreter(module):
    result = python("-c", f"import {module}")
    assert result.returncode == 0, result.stderr


def test_no_cli_module_imports_the_package_back():
    """Command modules import from ._app (and the shared executor options of ._executor, and
    _app its option conversion in ._values) only; nothing imports bundlelab.cli itself."""
    import ast
    import pathlib

    import bundlelab.cli

    folder = pathlib.Path(bundlelab.cli.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and path.name != "__init__.py":
                allowed = ("_app", "_executor") + (("_values",) if path.name == "_app.py" else ())
                assert node.module in allowed, f"{path.name}: from .{node.module or ''} import ..."
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [
                node.module or "" if isinstance(node, ast.ImportFrom) and node.level == 0 else ""]
            assert not any(name == "bundlelab.cli" or name.startswith("bundlelab.cli.") for name in names), path
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module != "cli" and "cli" not in [a.name for a in node.names], path


# -- help ------------------------------------------------------------------------------------------


def help_text(capsys, monkeypatch, *argv):
    monkeypatch.setenv("COLUMNS", "200")
    code = run([*argv, "--help"])
    out = capsys.readouterr().out
    assert code == 0
    return out


@pytest.mark.parametrize("command", [[]] + [[name] for name in COMMANDS])
def test_help_shows_usage_like_click_and_no_bool_type(capsys, monkeypatch, command):
    out = help_text(capsys, monkeypatch, *command)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage and "[[" not in usage, usage
    assert "<bool>" not in out


def test_usage_names_required_and_optional_arguments(capsys, monkeypatch):
    assert "bundlelab analyze [OPTIONS] [DUMP]" in help_text(capsys, monkeypatch, "analyze")
    assert "bundlelab info [OPTIONS] DUMP" in help_text(capsys, monkeypatch, "info")
    assert "bundlelab audit [OPTIONS] MODEL" in help_text(capsys, monkeypatch, "audit")
    assert "bundlelab train [OPTIONS] SPEC" in help_text(capsys, monkeypatch, "train")
    assert "bundlelab autotune [OPTIONS] [SPEC]" in help_text(capsys, monkeypatch, "autotune")
    assert "bundlelab search [OPTIONS] SUPERNET" in help_text(capsys, monkeypatch, "search")


def test_help_lists_the_choices_of_the_python_vocabularies(capsys, monkeypatch):
    from bundlelab._validation import DEVICES, MODES, NONFINITE_POLICIES
    from bundlelab.training import OPTIMIZERS, available_backends

    for command in ("train", "autotune", "search"):
        out = help_text(capsys, monkeypatch, command)
        assert f"<{'|'.join(OPTIMIZERS)}>" in out
        if command != "search":
            assert f"<{'|'.join(available_backends())}>" in out
    assert "<hinge|abs>" in help_text(capsys, monkeypatch, "search")
    for command in ("analyze", "audit"):
        out = help_text(capsys, monkeypatch, command)
        for vocabulary in (MODES, NONFINITE_POLICIES, ("table", "json", "csv")):
            assert f"<{'|'.join(vocabulary)}>" in out
    assert f"<{'|'.join(DEVICES)}>" in help_text(capsys, monkeypatch, "analyze")
    assert "<cpu|cuda>" in help_text(capsys, monkeypatch, "audit")


def cli_params(command: str) -> dict:
    import typer

    from bundlelab.cli import app

    return {param.name: param for param in typer.main.get_command(app).commands[command].params}


def test_train_help_describes_epochs_in_training_terms():
    train, autotune = cli_params("train")["epochs"].help, cli_params("autotune")["epochs"].help
    assert "auto-tune" not in train.lower() and "final run" not in train and "Training epochs" in train
    assert "final run" in autotune


def test_choice_options_reject_other_values_before_any_work(capsys, tmp_path):
    code, out, err = cli(capsys, "train", "fc-2x16", "--optimizer", "lamb", "--out", tmp_path)
    assert code == 2 and out == "" and "'lamb' is not one of" in err and "'adamw'" in err
    code, _, err = cli(capsys, "train", "fc-2x16", "--backend", "jax", "--out", tmp_path)
    assert code == 2 and "'jax' is not one of" in err
    code, _, err = cli(capsys, "search", "resnet-fabric-8", "--budget", "1", "--penalty", "square")
    assert code == 2 and "'square' is not one of" in err
    assert not list(tmp_path.iterdir())


# -- defaults: the Python defaults, or the help says why not ---------------------------------------


def _value(default):
    return getattr(default, "value", default)


def test_analyze_and_audit_defaults_are_find_bundles_defaults():
    import inspect

    python_defaults = {name: p.default for name, p in inspect.signature(bundlelab.find_bundles).parameters.items()}
    flags = {"lr": "learning_rate"}
    for command in ("analyze", "audit"):
        params = cli_params(command)
        for name in ("lr", "batch_size", "mode", "gamma", "epsilon", "nonfinite", "device", "weight_amplitude",
                     "update_format"):
            if name not in params or (command == "audit" and name in ("weight_amplitude", "update_format")):
                continue
            if command == "analyze" and name == "weight_amplitude":
                # None: the Python default w=1.0, with a warning and "default (not given)" in the report
                assert params[name].default is None and "1.0 with a warning" in params[name].help
                continue
            assert _value(params[name].default) == python_defaults[flags.get(name, name)], (command, name)


def test_audit_defaults_are_the_python_audit_defaults():
    import inspect

    onnx = pytest.importorskip("bundlelab.adapters.onnx")
    if not hasattr(onnx, "audit"):
        pytest.skip("bundlelab.adapters.onnx.audit is not there yet")
    python_defaults = {name: p.default for name, p in inspect.signature(onnx.audit).parameters.items()}
    params = cli_params("audit")
    pairs = {"labels": "labels_key", "n_samples": "n_samples", "seed": "seed", "all_nodes": "all_nodes",
             "lr": "learning_rate", "batch_size": "batch_size", "weight_amplitude": "weight_amplitude",
             "providers": "providers", "inference_batch_size": "inference_batch_size", "layers": "layers"}
    core_defaults = bundlelab.BundleOptions()
    for cli_name, name in pairs.items():
        expected = python_defaults[name]
        if expected is None and name in ("learning_rate", "batch_size"):
            # None in Python means "not given": the core default, reported as "default"
            expected = getattr(core_defaults, name)
        assert _value(params[cli_name].default) == expected, cli_name


def test_training_defaults_are_the_python_defaults_or_the_help_says_why():
    import dataclasses
    import inspect

    from bundlelab.autotune import autotune
    from bundlelab.search import SearchConfig, sweep
    from bundlelab.training import TrainConfig

    def defaults(fields):
        return {name: value for name, value in fields if value is not dataclasses.MISSING
                and value is not inspect.Parameter.empty}

    train = defaults((f.name, f.default) for f in dataclasses.fields(TrainConfig))
    search = defaults((f.name, f.default) for f in dataclasses.fields(SearchConfig))
    search.update(defaults((n, p.default) for n, p in inspect.signature(sweep).parameters.items()))
    tune = defaults((n, p.default) for n, p in inspect.signature(autotune).parameters.items())
    python_names = {"lr": "learning_rate", "gate_lr": "gate_learning_rate", "lam": None, "family": None}
    checked = set()
    for command, python in (("train", train), ("autotune", {**train, **tune}),
                            ("search", {**train, **search})):
        for name, param in cli_params(command).items():
            python_name = python_names.get(name, name)
            if python_name not in python:
                continue
            checked.add((command, name))
            default = python[python_name]
            if _value(param.default) != default:
                text = f"{default:g}" if isinstance(default, float) else str(default)
                assert text in param.help, (command, name, param.help)
    assert {("train", "epochs"), ("train", "n_samples"), ("autotune", "check_epochs"),
            ("search", "warmup_epochs"), ("search", "optimizer"), ("search", "retrain_epochs")} <= checked


# -- --plot without matplotlib --------------------------------------------------------------------


def test_plot_without_matplotlib_fails_before_the_work(dump, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr("bundlelab.io.analyze_dump", lambda *a, **k: pytest.fail("analysed"))
    path, _, _ = dump
    code, out, err = cli(capsys, "analyze", path, "-o", tmp_path / "r.json", "--plot", tmp_path / "p.png")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == "error: --plot requires matplotlib. You can install it with `pip install 'bundlelab[plot]'`\n"
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "p.png").exists()
    code, out, err = cli(capsys, "audit", tmp_path / "model.onnx", "--data", tmp_path / "d.npz",
                         "--plot", tmp_path / "p.png")
    assert code == 2 and out == "" and "--plot requires matplotlib" in err


# -- renamed options ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, old", [
    (["audit", "m.onnx", "--data", "d.npz", "--run-batch-size", "8"], "--run-batch-size"),
    (["audit", "m.onnx", "--data", "d.npz", "--samples", "8"], "--samples"),
    (["train", "fc-2x16", "--measure-samples", "8"], "--measure-samples"),
    (["autotune", "--measure-samples", "8"], "--measure-samples"),
])
def test_old_option_names_are_gone(capsys, argv, old):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and f"No such option: {old}" in err


@pytest.mark.parametrize("argv, flag", [
    (["audit", "m.onnx", "--data", "d.npz", "--inference-batch-size", "0"], "'--inference-batch-size'"),
    (["audit", "m.onnx", "--data", "d.npz", "-n", "0"], "'--n-samples'"),
    (["train", "fc-2x16", "--n-samples", "0"], "'--n-samples'"),
    (["autotune", "-n", "0"], "'--n-samples'"),
    (["train", "fc-2x16", "--lr", "-1"], "The '--lr' option must be a float in (0"),
    (["search", "resnet-fabric-8", "--budget", "1", "--lambda", "0"], "The '--lambda' option"),
])
def test_renamed_options_are_checked_in_cli_terms(capsys, tmp_path, argv, flag):
    code, out, err = cli(capsys, *argv, *([] if argv[0] == "audit" else ["--out", tmp_path / "run"]))
    assert code == 2 and out == "" and err.count("\n") == 1 and flag in err, err
    assert not (tmp_path / "run").exists()


def test_audit_is_a_thin_call_to_the_python_audit(dump, capsys, monkeypatch, tmp_path):
    """Every option reaches bundlelab.adapters.onnx.audit; the table shows the shapes it reports."""
    onnx = pytest.importorskip("bundlelab.adapters.onnx")
    _, layers, labels = dump
    calls = []

    def fake_audit(model, data, labels=None, *, progress=None, weight_amplitude=None, **options):
        calls.append({"model": model, "data": data, "weight_amplitude": weight_amplitude, **options})
        progress(24, {name: value.shape[1:] for name, value in layers.items()})
        progress(16, {name: value.shape[1:] for name, value in layers.items()})
        keep = {k: v for k, v in options.items() if k in ("learning_rate", "batch_size", "mode", "gamma",
                                                           "epsilon", "nonfinite")}
        return bundlelab.analyze_layers(layers, labels_array, weight_amplitude=weight_amplitude or 1.0, **keep)

    labels_array = labels
    monkeypatch.setattr(onnx, "audit", fake_audit, raising=False)
    code, out, err = cli(capsys, "audit", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "-n", "40",
                         "--inference-batch-size", "24", "--batch-size", "32", "--lr", "0.01", "--seed", "3",
                         "--layers", "block*", "--all-nodes", "--labels", "y")
    assert code == 0, err
    (call,) = calls
    assert call == {"model": tmp_path / "m.onnx", "data": tmp_path / "d.npz", "weight_amplitude": None,
                    "labels_key": "y", "layers": ["block*"], "all_nodes": True, "n_samples": 40, "seed": 3,
                    "inference_batch_size": 24, "providers": "cpu", "learning_rate": 0.01, "batch_size": 32,
                    "mode": "resolution", "gamma": 1e-8, "epsilon": 0.0, "nonfinite": "raise",
                    "update_format": None, "executor": None, "workers": None}
    assert "m.onnx on 40 samples of d.npz" in " ".join(out.split()) and "2x3" in out


# -- behaviour kept from the single-module CLI ----------------------------------------------------


def test_a_closed_pipe_ends_quietly(dump):
    path, _, _ = dump
    process = subprocess.Popen([sys.executable, "-m", "bundlelab.cli", "analyze", str(path), "-f", "csv",
                                "--weight-amplitude", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `bundlelab analyze ... | head -0`
    assert process.stderr.read() == b"" and process.wait(timeout=60) == 1


def test_a_bug_is_one_line_unless_debugging(dump, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("bundlelab.io.analyze_dump", boom)
    path, _, _ = dump
    monkeypatch.delenv("BUNDLELAB_DEBUG", raising=False)
    code, out, err = cli(capsys, "analyze", path)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: internal error (RuntimeError: boom); rerun with BUNDLELAB_DEBUG=1")
    monkeypatch.setenv("BUNDLELAB_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        run(["analyze", str(path)])
