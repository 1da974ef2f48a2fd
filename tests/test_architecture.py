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
    # Two lazy imports only: cupy when the user already handed us a CuPy array, and torch's
    # loader when the user asks to read a .pt dump (a file format, like h5py for HDF5).
    assert offenders == {"_arrays.py": ["cupy"], "io/torch_dump.py": ["torch"]}


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


# -- import structure ---------------------------------------------------------------------------

ADAPTERS = Path(bundlelab.__file__).resolve().parents[1] / "adapters"


def _package_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (adapters/ installs as bundlelab.adapters)."""
    import bundlelab.adapters

    roots = {"bundlelab": CORE, "bundlelab.adapters": Path(bundlelab.adapters.__file__).parent}
    modules = {}
    for prefix, root in roots.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if prefix == "bundlelab" and parts[0] == "adapters":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def _module_level_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports when it is imported (not inside functions;
    an import of one of its own parent packages is no edge: Python imports those first)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and not isinstance(node, ast.Import):
                    visit(inner)

    visit(tree.body)
    return {m for m in found if m in modules and not name.startswith(m + ".") and m != name}


def test_no_import_cycle_between_modules_of_the_package():
    modules = _package_modules()
    graph = {name: _module_level_imports(name, path, modules) for name, path in modules.items()}
    cycles, state = [], {}

    def walk(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [])
    assert cycles == []
