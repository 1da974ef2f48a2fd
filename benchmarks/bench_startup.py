"""The fixed cost of a ``bundlelab`` process: ``--help``, ``info`` and ``analyze`` in fresh
processes against a process that loads the same file and sums it, for every dump format and a
few sizes, side by side in one run; then where a small ``analyze``'s time goes
(``python -X importtime``, summed per top-level package).

Run:  python benchmarks/bench_startup.py               (layers of 4, 64 and 512 MiB)
      python benchmarks/bench_startup.py --quick       (4 and 32 MiB)
      python benchmarks/bench_startup.py --sizes 1,2048

Each figure is the best of ``--repeats`` fresh processes, run interleaved (floor, then each
command, format after format) so a busy machine slows all of them alike.  Byte code is cached
(``PYTHONPYCACHEPREFIX`` in a temporary folder, ``PYTHONDONTWRITEBYTECODE`` unset) as it is in
an installed package, and every command runs once before the clock so Numba's kernel cache is
warm.  The floor is ``bench_dumps.FLOOR``: a fresh ``python`` that imports numpy (and h5py /
safetensors for their formats), loads the layer the format's own way and sums it.  The target
of issue 13: ``analyze`` <= 1.3 x the floor; the run ends with one ``ROW`` line per format and
size (name | measured | target | met or not met).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rows import row  # noqa: E402
from bench_dumps import (  # noqa: E402
    FLOOR,
    N_FEATURES,
    TIME_TARGET,
    child_env,
    measured,
    write_dumps,
)

ANALYZE = ["-m", "bundlelab", "analyze", "{path}", "--weight-amplitude", "1", "--format", "json"]


def import_breakdown(path: Path) -> list[tuple[str, float]]:
    """Seconds of import per top-level package of a fresh ``analyze`` of ``path`` (self times
    of ``-X importtime``, so nothing is counted twice)."""
    import subprocess

    command = [sys.executable, "-X", "importtime", *[a.format(path=path) for a in ANALYZE]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    totals: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)", line)
        if found:
            totals[found.group(2).split(".")[0]] += int(found.group(1)) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 and 32 MiB layers")
    parser.add_argument("--sizes", default=None, help="layer sizes in MiB (default 4,64,512)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per figure (best of)")
    parser.add_argument("--formats", default=None,
                        help="comma-separated substrings of the formats to run (default all)")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("4,32" if args.quick else "4,64,512")).split(",")]

    folder = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    child_env(folder / "pycache")
    try:
        print(f"bench_startup: float32 layers of {N_FEATURES} features, best of {args.repeats}; "
              f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} "
              f"CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        python = [sys.executable]
        fixed = {"python + numpy": python + ["-c", "import numpy"],
                 "bundlelab --help": python + ["-m", "bundlelab", "--help"]}
        header = f"{'command':34} {'MiB':>5} {'floor s':>8} {'s':>7} {'x floor':>8}"
        rows = []
        row_lines = []
        for size in sizes:
            where = folder / f"{size}"
            where.mkdir()
            dumps, _ = write_dumps(where, size)
            if args.formats:
                wanted = [part.strip() for part in args.formats.split(",")]
                dumps = {k: v for k, v in dumps.items() if any(w in k for w in wanted)}
            runs = {}
            for name, (path, kind) in dumps.items():
                floor = f"import numpy as np; PATH = {str(path)!r}; {FLOOR[kind]}; float(a.sum())"
                runs[(name, "floor")] = python + ["-c", floor]
                runs[(name, "analyze")] = python + [a.format(path=path) for a in ANALYZE]
            first_npz = next(path for path, kind in dumps.values() if kind == "npz")
            runs[("npz", "info")] = python + ["-m", "bundlelab", "info", str(first_npz)]
            if size == sizes[0]:
                runs.update({(name, "fixed"): command for name, command in fixed.items()})
            for command in runs.values():  # warm: byte code, Numba's kernel cache, page cache
                measured(command, None)
            best = {key: float("inf") for key in runs}
            for _ in range(args.repeats):
                for key, command in runs.items():
                    best[key] = min(best[key], measured(command, None)[0])
            for name in dumps:
                floor = best[(name, "floor")]
                rows.append((f"analyze, {name}", size, floor, best[(name, "analyze")]))
                ratio = best[(name, "analyze")] / floor
                row_lines.append(row(f"analyze {name} {size} MiB / load+sum", f"{ratio:.2f}x",
                                     f"<= {TIME_TARGET}x", ratio <= TIME_TARGET))
            npz_floor = best[(next(iter(dumps)), "floor")]
            rows.append(("info (npz)", size, npz_floor, best[("npz", "info")]))
            for name in fixed:
                if (name, "fixed") in best:
                    rows.append((name, size, npz_floor, best[(name, "fixed")]))
        print(header)
        print("-" * len(header))
        for what, size, floor, seconds in rows:
            print(f"{what:34} {size:5d} {floor:8.3f} {seconds:7.3f} {seconds / floor:7.2f}x")
        print("(s: wall seconds of a fresh process; x floor: over the floor of the same file; "
              "info, --help and python + numpy are set against the first format's floor)")
        small = next(path for path, kind in write_dumps(folder / "breakdown", sizes[0])[0].values()
                     if kind == "npz")
        parts = import_breakdown(small)
        total = sum(seconds for _, seconds in parts)
        print(f"imports of a fresh analyze of {sizes[0]} MiB (npz): {total:.3f} s; by package: "
              + ", ".join(f"{name} {seconds:.3f}" for name, seconds in parts[:10]))
        for line in row_lines:
            print(line)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
