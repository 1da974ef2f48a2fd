"""`adapters/` ships as `bundlelab.adapters`, never as a top-level `adapters` package."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import bundlelab
import bundlelab.adapters

REPO = Path(__file__).resolve().parents[1]


def test_tests_import_the_installed_package_and_the_mapped_adapters():
    # Installed (editable or not): the adapters subpackage resolves to a file named
    # .../adapters/__init__.py that belongs to the bundlelab distribution.
    assert Path(bundlelab.adapters.__file__).parent.name == "adapters"
    assert bundlelab.adapters.__name__ == "bundlelab.adapters"
    from importlib.metadata import distribution

    assert distribution("bundlelab").version == bundlelab.__version__
    # What the distribution ships (no top-level `adapters`) is checked on the built wheel below;
    # an editable install's metadata lists source files, not installed ones.

@pytest.mark.slow
def test_built_wheel_maps_adapters_into_bundlelab(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed: {result.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("bundlelab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bundlelab/adapters/__init__.py" in names
    assert "bundlelab/kernels/cpu.py" in names
    assert not any(name.startswith("adapters/") for name in names)
    # every module of the source tree ships (a subpackage missing from pyproject's list would not)
    from test_architecture import _package_modules

    shipped = {name[: -len(".py")].replace("/", ".").removesuffix(".__init__")
               for name in names if name.endswith(".py")}
    assert set(_package_modules()) - shipped == set()
    # The wheel is importable on its own (zip import), adapters included, from a neutral cwd.
    code = (
        "import bundlelab, bundlelab.adapters, sys;"
        "print(bundlelab.adapters.__file__);"
        "import importlib.util; print(importlib.util.find_spec('adapters'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(wheel)}, check=True,
    )
    first, second = out.stdout.strip().splitlines()
    assert first.startswith(str(wheel)) and first.endswith("bundlelab/adapters/__init__.py")
    assert second == "None"


# -- every module imports, every command has help: with every extra and with the core only -------

#: optional dependencies; "core only" hides them all, as an install without extras lacks them
OPTIONAL = ("torch", "keras", "tensorflow", "jax", "onnx", "onnxruntime", "onnxscript", "skl2onnx",
            "h5py", "safetensors", "ml_dtypes", "matplotlib", "pandas", "lightning",
            "pytorch_lightning", "tensorboard", "cupy", "ray", "PIL")
#: prepended to a fresh interpreter's code to make it behave like a core-only install: an
#: import of a blocked module fails and importlib.util.find_spec finds nothing, as when absent
CORE_ONLY = f"import sys\nsys.modules.update(dict.fromkeys({OPTIONAL!r}))\n"
#: modules that need an optional dependency; without it, importing them says how to install it
NEEDS_EXTRA = ("bundlelab.adapters.torch", "bundlelab.adapters.keras", "bundlelab.adapters.onnx")
#: third-party modules the driver imports once before forking (importing them in every child
#: would take minutes); bundlelab's own modules are imported fresh in each child
PRELOAD = ("numpy", "numba", "sklearn.datasets", "typer", "rich", "yaml", "torch", "onnx",
           "onnxruntime", "keras", "h5py", "safetensors", "matplotlib")
IMPORT_EACH = """
import importlib, os, sys, traceback
for name in PRELOAD:
    try:
        importlib.import_module(name)
    except Exception:
        pass
assert not [m for m in sys.modules if m.startswith("bundlelab")]
for module in MODULES:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            status = 0
        except BaseException as exc:
            os.write(write, f"{type(exc).__module__}.{type(exc).__name__}: {exc}".encode())
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        print(f"{module}\t{error.splitlines()[-1] if error else 'exit status ' + str(status)}")
"""


def _all_modules() -> list[str]:
    from test_architecture import _package_modules

    return sorted(name for name in _package_modules() if not name.endswith("__main__"))


def _import_each(modules: list[str], prelude: str = "") -> dict[str, str]:
    """Import each module alone, in a child forked from an interpreter that has imported the
    third-party libraries but nothing of bundlelab (so import cycles between bundlelab's
    modules show as in a fresh interpreter), from a neutral folder so that the installed
    package is what is imported; the one-line error of each module that fails."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    code = (prelude + f"PRELOAD = {PRELOAD!r}\nMODULES = {modules!r}\n" + IMPORT_EACH)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(sys.executable).parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = _all_modules()
    assert "bundlelab.cli" in modules and "bundlelab.adapters.torch" in modules
    assert _import_each(modules) == {}


@pytest.mark.slow
def test_core_only_install_imports_every_core_module_and_hints_the_extra_for_the_rest():
    failures = _import_each(_all_modules(), prelude=CORE_ONLY)
    core_failures = {m: e for m, e in failures.items() if not m.startswith(NEEDS_EXTRA)}
    assert core_failures == {}
    for module, error in failures.items():
        assert error.startswith("bundlelab._errors.MissingDependencyError"), (module, error)
        assert "pip install" in error, (module, error)


def _command_paths() -> list[list[str]]:
    import typer.main

    from bundlelab.cli import app

    paths = [[]]

    def walk(command, prefix):
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("prelude", ["", CORE_ONLY], ids=["all-extras", "core-only"])
def test_every_command_has_help(prelude):
    paths = _command_paths()
    assert {"analyze", "info", "audit", "train", "autotune", "search"} <= {p[0] for p in paths if p}
    code = prelude + (
        "import sys\nfrom bundlelab.cli import run\n"
        "for path in {paths!r}:\n"
        "    status = run([*path, '--help'])\n"
        "    assert status == 0, (path, status)\n"
        "print('ok', len({paths!r}))\n"
    ).format(paths=paths)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(sys.executable).parent, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"ok {len(paths)}"
    assert "Usage: bundlelab train" in done.stdout


# -- Numba's cache ------------------------------------------------------------------------------


def _cache_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")}


@pytest.mark.slow
def test_kernel_cache_is_written_to_the_user_cache_never_into_the_package(tmp_path):
    # A cache written into site-packages/bundlelab survives `pip uninstall` (pip did not record
    # it) and the bare folder then shadows the package as an empty namespace package.
    package = Path(bundlelab.__file__).resolve().parent
    before = {(p, p.stat().st_mtime_ns) for p in _cache_files(package)}
    code = (
        "import numpy as np, bundlelab\n"
        "bundlelab.find_bundles(np.zeros((8, 3), np.float32), [0, 1] * 4)\n"
        "bundlelab.find_bundles(np.zeros((8, 3), np.float32), [0, 1] * 4, mode='threshold')\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=300)
    assert {(p, p.stat().st_mtime_ns) for p in _cache_files(package)} == before
    written = _cache_files(tmp_path / "bundlelab" / "numba" / bundlelab.__version__)
    assert any(p.suffix == ".nbi" for p in written)


def test_kernel_cache_stamp_covers_the_modules_the_kernels_inline(tmp_path):
    """A cached kernel is recompiled when a sibling module it inlines changes (the fingerprint
    lives in _hashing.py, not in cpu.py): Numba alone stamps it with its own file only."""
    import numba.core.caching as caching

    from bundlelab.kernels import _cache, cpu

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    locator = next(cls for cls in impl._locator_classes
                   if cls.__name__ == "BundlelabCacheLocator")
    function = cpu.fingerprints_native.py_func
    stamp = locator.from_function(function, cpu.__file__).get_source_stamp()
    assert stamp[1] == _cache.folder_stamp(Path(cpu.__file__).parent)
    assert "_hashing.py" in {name for name, *_ in stamp[1]}
    module = tmp_path / "sibling.py"
    module.write_text("X = 1\n")
    before = _cache.folder_stamp.__wrapped__(tmp_path)
    module.write_text("X = 2\n")  # same size
    assert _cache.folder_stamp.__wrapped__(tmp_path) != before
