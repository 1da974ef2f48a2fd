"""Every row of issue 13's speed table in one run: each benchmark script runs in turn (its own
process, so that no thread pool or import of one changes another) and its ``ROW`` lines are
collected into one table.

Run:  python benchmarks/bench_all.py            (each script at its default size; an hour or more)
      python benchmarks/bench_all.py --quick    (each script's ``--quick``; about ten minutes)
      python benchmarks/bench_all.py --only bench_threshold,bench_dumps

Every script measures its own baseline beside bundlelab in the same run (see each one's
docstring) and prints, last, one line per table row::

    ROW <what> | <measured> | <target> | <met or not met>

This script adds nothing to the measurements: it runs the scripts, prints their output as it
comes (so a long run shows progress) and then the rows together, with the machine they ran on
and its load before and after, since a loaded machine makes every ratio an upper bound.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _rows import rows_of

HERE = Path(__file__).resolve().parent
# the table's order: core kernels, dumps and start-up, audits, training; each is one script
SCRIPTS = ("bench_bundles", "bench_scaling", "bench_threshold", "bench_dumps", "bench_startup",
           "bench_audit", "bench_onnx_audit", "bench_epoch")


def run(script: str, quick: bool) -> tuple[list[list[str]], float, int]:
    """Run one script, echo its output, and return its rows, seconds and exit status."""
    command = [sys.executable, str(HERE / f"{script}.py")] + (["--quick"] if quick else [])
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    status = process.wait()
    return rows_of("".join(lines)), time.perf_counter() - start, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's --quick")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated scripts (default: all of {', '.join(SCRIPTS)})")
    args = parser.parse_args()
    scripts = SCRIPTS if args.only is None else tuple(args.only.split(","))
    unknown = [s for s in scripts if not (HERE / f"{s}.py").is_file()]
    if unknown:
        parser.error(f"no script benchmarks/{unknown[0]}.py; choose from {', '.join(SCRIPTS)}")
    load_before = os.getloadavg()
    table, failed = [], []
    for script in scripts:
        rows, seconds, status = run(script, args.quick)
        if status != 0:
            failed.append(script)
        table += [[script] + row for row in rows]
        print(f"=== {script}: {len(rows)} rows in {seconds:.0f} s (exit {status})", flush=True)
    load_after = os.getloadavg()
    print(f"\n## Issue 13's table ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after"
          f"{'; --quick sizes' if args.quick else ''})\n")
    print("| script | what | measured | target | met |")
    print("| --- | --- | ---: | --- | --- |")
    for row in table:
        print("| " + " | ".join(row) + " |")
    if failed:
        print(f"\nfailed (see their output above): {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
