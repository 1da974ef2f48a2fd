"""The core stays framework-free: no module of bundlelab/ imports a deep-learning framework."""

import ast
import subprocess
import sys
from pathlib import Path

import bundlelab

FRAMEWORKS = {"torch", "tensorflow", "keras", "onnx", "onnxruntime", "jax", "cupy"}
CORE = Path(bundlelab.__file__).parent


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_never_import_a_framework():
    core_files = [p for p in CORE.rglob("*.py") if "adapters" not in p.relative_to(CORE).parts]
    assert len(core_files) > 10
    offenders = {
        str(p.relative_to(CORE)): sorted(_imported_roots(p) & FRAMEWORKS)
        for p in core_files
        if _imported_roots(p) & FRAMEWORKS
    }
    # cupy is imported lazily in one place only: when the user already handed us a CuPy array.
    assert offenders == {"_arrays.py": ["cupy"]}


def test_running_the_core_loads_no_framework():
    code = (
        "import sys, numpy as np, bundlelab;"
        "bundlelab.find_bundles(np.zeros((4, 3), np.float32), [0, 1, 0, 1]);"
        "bundlelab.find_bundles(np.zeros((4, 3), np.float32), [0, 1, 0, 1], mode='threshold');"
        "import bundlelab.adapters;"
        f"print(sorted(m for m in {sorted(FRAMEWORKS)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_bundlelab_is_light():
    code = "import sys, bundlelab; print('numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
