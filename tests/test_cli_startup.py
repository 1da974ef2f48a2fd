"""A CLI process pays only for what its command uses: which modules a fresh process imports
(a behaviour, not a timing; ``benchmarks/bench_startup.py`` measures the time)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlelab.io import save_dump

#: never needed by --help, info, or analyze of a small dump
HEAVY = ("numba", "llvmlite", "scipy", "torch", "keras", "tensorflow", "jax", "onnx",
         "onnxruntime", "ray", "matplotlib", "pandas", "sklearn", "h5py", "safetensors")
#: typer >= 0.2x converts options through pydantic; bundlelab converts plain values itself
PYDANTIC = ("pydantic", "pydantic_core", "annotated_types")
#: the code of other commands
OTHER_COMMANDS = ("bundlelab.training", "bundlelab.search", "bundlelab.spec", "bundlelab.adapters",
                  "bundlelab.cli._train", "bundlelab.cli._search", "bundlelab.cli._audit")

SCRIPT = r"""
import contextlib, io, json, sys
import bundlelab.cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    status = bundlelab.cli.run(json.loads(sys.argv[1]))
print(json.dumps({"status": status, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def run_fresh(argv) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([str(a) for a in argv])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def imported(modules: list[str], names) -> list[str]:
    return [name for name in names
            if any(m == name or m.startswith(name + ".") for m in modules)]


@pytest.fixture(scope="module")
def small_dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("startup") / "small.npz"
    rng = np.random.default_rng(0)
    layer = rng.standard_normal((200, 16)).astype(np.float32)
    layer[100:] = layer[:100]
    save_dump(path, {"hidden": layer, "out": layer[:, :3].copy()}, np.arange(200) % 2)
    return path


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["analyze", "--help"]])
def test_help_imports_no_framework_and_no_jit(argv):
    out = run_fresh(argv)
    assert out["status"] == 0
    assert imported(out["modules"], HEAVY + PYDANTIC) == []


def test_info_imports_neither_the_jit_nor_other_commands(small_dump):
    out = run_fresh(["info", small_dump])
    assert out["status"] == 0 and "hidden" in out["out"] and "2 classes" in out["out"]
    assert imported(out["modules"], HEAVY + PYDANTIC + ("numpy.ma",)) == []
    assert imported(out["modules"], OTHER_COMMANDS) == []


def test_analyze_of_a_small_dump_does_not_load_numba(small_dump):
    """A small native-format dump is hashed by the numpy path (kernels/host.py): no Numba, no
    SciPy, and the same report as the compiled kernels give in this process."""
    out = run_fresh(["analyze", small_dump, "--weight-amplitude", "1", "--format", "json"])
    assert out["status"] == 0
    assert imported(out["modules"], HEAVY + PYDANTIC + ("numpy.ma",)) == []
    assert imported(out["modules"], OTHER_COMMANDS) == []

    import bundlelab.kernels.cpu  # noqa: F401 - this process: the compiled kernels
    from bundlelab.cli import run

    with pytest.MonkeyPatch.context() as patch:
        buffer = __import__("io").StringIO()
        patch.setattr(sys, "stdout", buffer)
        assert run(["analyze", str(small_dump), "--weight-amplitude", "1", "--format",
                    "json"]) == 0
    assert json.loads(out["out"]) == json.loads(buffer.getvalue())


def test_every_command_is_registered_by_the_module_load_commands_names():
    """``_app.COMMAND_MODULES`` names, for every command, the module that defines it (a
    command missing there would be found only by the root help)."""
    import typer

    from bundlelab.cli import _app, app

    commands = typer.main.get_command(app).commands
    assert list(commands) == list(_app.COMMAND_MODULES)
    for name, command in commands.items():
        assert command.callback.__module__ == f"bundlelab.cli.{_app.COMMAND_MODULES[name]}"


def test_analyze_with_every_kind_of_option_imports_no_pydantic(small_dump, tmp_path):
    """Paths, ints with a minimum, floats, choices and a repeated option, all given: each is
    converted without pydantic, and the report is the one of the defaults' equivalents."""
    out = run_fresh(["analyze", small_dump, "--weight-amplitude", "1.0", "--lr", "1e-3",
                     "--batch-size", "64", "--mode", "resolution", "--gamma", "1e-8",
                     "--epsilon", "0", "-l", "hidden", "--layers", "out", "--chunk-rows", "64",
                     "--update-format", "auto", "--nonfinite", "raise", "--device", "cpu",
                     "--format", "json", "--output-dir", tmp_path, "--labels", "labels"])
    assert out["status"] == 0
    assert imported(out["modules"], PYDANTIC) == []
    report = json.loads(out["out"])
    assert [layer["layer"] for layer in report["layers"]] == ["hidden", "out"]
    assert report["params"]["learning_rate"] == 1e-3 and report["params"]["batch_size"] == 64


# -- plain option values, converted without pydantic, equal what typer's pydantic path gives ---

NUMBER_TEXT = st.one_of(
    st.text(alphabet="0123456789-+._eE xinfaIN", max_size=12),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(width=32).map(lambda x: f"{x:.6e}"),
)
PATH_TEXT = st.text(alphabet="ab./~ -_\x00\u00e9", max_size=8)


def _parameters():
    """Every option of every command (typer parameters with their runtime descriptors)."""
    import typer

    from bundlelab.cli import app

    group = typer.main.get_command(app)
    return [(name, param) for name, command in group.commands.items()
            for param in command.params if hasattr(param, "type_descriptor")]


def _context():
    """A context of the analyze command, as typer hands it to a parameter's conversion."""
    import typer
    from typer._click import Context

    from bundlelab.cli import app

    return Context(typer.main.get_command(app).commands["analyze"])


def _both_ways(param, value):
    """(bundlelab's conversion or None when it leaves the value to typer, typer's pydantic
    conversion or the message it fails with)."""
    from typer._coercion import build_runtime_param

    from bundlelab.cli import _values

    context = _context()
    descriptor = param.type_descriptor
    plain = _values._PlainRuntimeParam(parameter_info=descriptor.parameter_info,
                                       annotation=descriptor.annotation, descriptor=descriptor)
    annotation = descriptor.annotation
    if getattr(annotation, "__origin__", None) is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        fast = [_values._plain_value(annotation.__args__[0], descriptor.parameter_info, item,
                                     context, param) for item in items]
        fast = None if _values._SLOW in fast else fast
    else:
        fast = _values._plain_value(annotation, descriptor.parameter_info, value, context, param)
        fast = None if fast is _values._SLOW else fast
    try:
        slow = build_runtime_param(descriptor)._coerce_value(value, param=param, ctx=context)
    except Exception as exc:  # noqa: BLE001 - the message is what is compared
        slow = ("error", type(exc).__name__, str(exc))
    try:
        through = plain._coerce_value(value, param=param, ctx=context)
    except Exception as exc:  # noqa: BLE001
        through = ("error", type(exc).__name__, str(exc))
    return fast, slow, through


def _same(left, right) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return (left == right or (left != left and right != right)) \
            and repr(left) == repr(right)  # -0.0 stays -0.0
    return type(left) is type(right) and left == right


@pytest.mark.parametrize("annotation", ["int", "float"])
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_plain_numbers_equal_typers_pydantic_conversion(annotation, data):
    parameters = [(name, param) for name, param in _parameters()
                  if param.type_descriptor.annotation.__name__ == annotation]
    assert parameters, annotation
    _, param = data.draw(st.sampled_from(parameters))
    text = data.draw(NUMBER_TEXT)
    fast, slow, through = _both_ways(param, text)
    if fast is not None:
        assert _same(fast, slow), (text, fast, slow)
    assert _same(through, slow), (text, through, slow)


@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_plain_paths_strings_and_choices_equal_typers_pydantic_conversion(data):
    from enum import Enum
    from pathlib import Path

    parameters = [(name, param) for name, param in _parameters()
                  if param.type_descriptor.annotation not in (int, float, bool)]
    name, param = data.draw(st.sampled_from(parameters))
    annotation = param.type_descriptor.annotation
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        value = data.draw(st.sampled_from([m.value for m in annotation] + ["nope", ""]))
    else:
        value = data.draw(PATH_TEXT)
    fast, slow, through = _both_ways(param, value)
    if fast is not None:
        assert _same(fast, slow), (name, param.name, value, fast, slow)
        if isinstance(annotation, type) and issubclass(annotation, Path):
            assert isinstance(fast, annotation)
    assert _same(through, slow), (name, param.name, value, through, slow)


@pytest.mark.parametrize("text", ["-0", "-0.0", "0.", ".5", "5.", "1e5", "1E+05", "00012",
                                  "1e-400", "4.9e-324", "2.4703282292062328e-324", "1e400",
                                  "123456789012345678", "1234567890123456789", "-", "."])
def test_tricky_number_spellings_equal_typers_pydantic_conversion(text):
    for name, param in _parameters():
        if param.type_descriptor.annotation in (int, float):
            fast, slow, through = _both_ways(param, text)
            if fast is not None:
                assert _same(fast, slow), (name, param.name, text, fast, slow)
            assert _same(through, slow), (name, param.name, text, through, slow)


def test_common_spellings_take_the_plain_path():
    """The values people type are the ones converted without pydantic (else the speed-up
    would silently vanish): numbers, choices, paths, repeated options."""
    params = {(name, param.name): param for name, param in _parameters()}
    for key, value in [(("analyze", "lr"), "1e-3"), (("analyze", "lr"), "0.001"),
                       (("analyze", "batch_size"), "128"), (("analyze", "chunk_rows"), "4096"),
                       (("analyze", "mode"), "threshold"), (("analyze", "dump"), "acts.npz"),
                       (("analyze", "labels"), "y"), (("analyze", "layers"), ("a", "b*"))]:
        fast, slow, _ = _both_ways(params[key], value)
        assert fast is not None and _same(fast, slow), (key, value, fast, slow)
    for key, value in [(("analyze", "chunk_rows"), "0"), (("analyze", "lr"), "+1"),
                       (("analyze", "mode"), "nope"), (("analyze", "lr"), "nan")]:
        fast, slow, _ = _both_ways(params[key], value)
        assert fast is None, (key, value)  # typer's own path, and its own message
