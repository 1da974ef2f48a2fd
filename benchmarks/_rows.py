"""The ``ROW`` line every benchmark script ends with, one per row of issue 13's table, and its
reader in ``bench_all.py``: the one place the format is written and read::

    ROW <what> | <measured> | <target> | <met or not met>
"""

from __future__ import annotations


def row(what: str, measured: str, target: str, met: bool) -> str:
    """One table row as its script prints it."""
    return f"ROW {what} | {measured} | {target} | {'met' if met else 'not met'}"


def rows_of(output: str) -> list[list[str]]:
    """The rows a script printed, each as its four fields."""
    rows = []
    for line in output.splitlines():
        if line.startswith("ROW "):
            fields = [field.strip() for field in line[4:].split("|")]
            rows.append((fields + [""] * 4)[:4])
    return rows
