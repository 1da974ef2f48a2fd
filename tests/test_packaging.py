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
