"""Every Python block of the README runs as written, in a fresh interpreter, as a reader would
paste it (each block is self-contained: its imports and its small data are in the block)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: optional modules a block may need; the block is skipped (with the reason) when one is missing
OPTIONAL = ("torch", "keras", "onnx", "onnxruntime", "skl2onnx", "matplotlib", "pandas")


def python_blocks() -> list[tuple[str, str]]:
    """(id, code) of every ```python block, the id naming the section and the block's line."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        sections = re.findall(r"^## (.+)$", text[: match.start()], flags=re.M)
        slug = re.sub(r"\W+", "-", sections[-1].lower()).strip("-") if sections else "top"
        blocks.append((f"{slug}-line{line}", match.group(1)))
    return blocks


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("code", [code for _, code in python_blocks()],
                         ids=[name for name, _ in python_blocks()])
def test_readme_block_runs_as_written(code, tmp_path):
    imported = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", code, flags=re.M))
    imported |= {m.group(1) for m in re.finditer(r"bundlelab\.adapters\.(\w+)", code)}
    for module in sorted(OPTIONAL):
        if any(name == module or name.startswith(module + ".") or name.endswith("." + module)
               for name in imported):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"needs {module}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
