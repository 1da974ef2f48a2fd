"""A CLI process pays only for what its command uses: which modules a fresh process imports
(a behaviour, not a timing; ``benchmarks/bench_startup.py`` measures the time)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bundlelab.io import save_dump

#: never needed by --help, info, or analyze of a small dump
HEAVY = ("numba", "llvmlite", "scipy", "torch", "keras", "tensorflow", "jax", "onnx",
         "onnxruntime", "ray", "matplotlib", "pandas", "sklearn", "h5py", "safetensors")
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
    assert imported(out["modules"], HEAVY) == []


def test_info_imports_neither_the_jit_nor_other_commands(small_dump):
    out = run_fresh(["info", small_dump])
    assert out["status"] == 0 and "hidden" in out["out"]
    assert imported(out["modules"], HEAVY) == []
    assert imported(out["modules"], OTHER_COMMANDS) == []


def test_analyze_of_a_small_dump_does_not_load_numba(small_dump):
    """A small native-format dump is hashed by the numpy path (kernels/host.py): no Numba, no
    SciPy, and the same report as the compiled kernels give in this process."""
    out = run_fresh(["analyze", small_dump, "--weight-amplitude", "1", "--format", "json"])
    assert out["status"] == 0
    assert imported(out["modules"], HEAVY) == []
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
