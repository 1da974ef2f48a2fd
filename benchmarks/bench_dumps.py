"""`bundlelab analyze DUMP` against a plain process that loads the same file and sums it, for
every dump format, side by side in one run: wall time and peak RSS, this tree against a baseline
tree (by default commit 02bff96, the last one whose readers copied, checked out into a
temporary worktree).

Run:  python benchmarks/bench_dumps.py            (a 512 MiB float32 layer, a few minutes)
      python benchmarks/bench_dumps.py --quick    (a 32 MiB layer, about a minute)
      python benchmarks/bench_dumps.py --baseline /path/to/other/checkout

Each figure is the best of ``--repeats`` fresh processes, run interleaved (floor, baseline,
this tree, format after format) so a busy machine slows all of them alike.  Byte code is cached
(``PYTHONPYCACHEPREFIX`` in a temporary folder, ``PYTHONDONTWRITEBYTECODE`` unset) as it is in
an installed package, whatever the calling shell sets, and every command runs once before the
clock.

* floor: a fresh ``python`` that imports numpy (and h5py / safetensors for their formats),
  loads the layer the format's own way (``np.load``, ``safetensors.numpy.load_file``,
  ``h5py ... [()]``) and sums it;
* analyze: ``python -m bundlelab analyze FILE --weight-amplitude 1 --format json`` (the JSON
  reports of both trees must be equal, or the run fails).

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``): resident pages of every kind, so the
pages of a memory-mapped file count once they are touched (a mapped layer costs its size in
RSS, as the page cache it shares, not a private copy).  ``time x floor`` is analyze's wall
time over the floor's; ``RSS x layer`` is peak RSS over the layer's size (the target of issue 13
is <= 1.3 and <= 1.2).  Note: bundlelab's import, its kernel cache load and the bundle
computation itself are inside analyze's time, so small layers are dominated by fixed costs.
The run ends with one ``ROW`` line per row of issue 13's table it measures (name | measured |
target | met or not met): analyze / floor per format, and the worst peak RSS / layer size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _rows import row

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 1024
LAYER = "layer"

FLOOR = {
    "npz": "a = np.load(PATH)['layer']",
    "npy": "a = np.load(PATH + '/layer.npy')",
    "safetensors": "import safetensors.numpy as s; a = s.load_file(PATH)['layer']",
    "hdf5": "import h5py; a = h5py.File(PATH, 'r')['layer'][()]",
}


#: the last commit whose dump readers copied
PREVIOUS = "02bff96"


def write_dumps(folder: Path, size_mib: int, seed: int = 0) -> dict[str, tuple[Path, str]]:
    """The same layer in every format: name -> (path, floor kind)."""
    sys.path.insert(0, str(ROOT))
    from bundlelab.io import save_dump

    n_samples = (size_mib << 20) // (4 * N_FEATURES)
    rng = np.random.default_rng(seed)
    # a quarter of the rows repeat another row: some bundles, mostly distinct rows
    layer = rng.standard_normal((n_samples, N_FEATURES), dtype=np.float32)
    layer[::4] = layer[1::4][: len(layer[::4])]
    labels = rng.integers(0, 10, n_samples)
    dumps = {
        "npz stored (save_dump)": (folder / "aligned.npz", "npz"),
        "npz stored (np.savez)": (folder / "savez.npz", "npz"),
        "npz compressed": (folder / "deflated.npz", "npz"),
        "npy folder": (folder / "npy", "npy"),
        "safetensors": (folder / "layer.safetensors", "safetensors"),
        "hdf5": (folder / "layer.h5", "hdf5"),
    }
    save_dump(dumps["npz stored (save_dump)"][0], {LAYER: layer}, labels)
    np.savez(dumps["npz stored (np.savez)"][0], **{LAYER: layer}, labels=labels)
    save_dump(dumps["npz compressed"][0], {LAYER: layer}, labels, compress=True)
    dumps["npy folder"][0].mkdir()
    np.save(dumps["npy folder"][0] / "layer.npy", layer)
    np.save(dumps["npy folder"][0] / "labels.npy", labels)
    save_dump(dumps["safetensors"][0], {LAYER: layer}, labels)
    save_dump(dumps["hdf5"][0], {LAYER: layer}, labels)
    return dumps, layer.nbytes


#: started in a small fresh interpreter, it runs the command and reports its wall time and
#: peak RSS: a child's ru_maxrss starts at its parent's RSS at the fork, so the parent is kept
#: small (this benchmark's own process holds the layer it wrote)
LAUNCHER = """
import os, sys, time, subprocess
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    out.write(f"{wall} {usage.ru_maxrss * 1024} {os.waitstatus_to_exitcode(status)}")
"""


def measured(command: list[str], pythonpath: str | None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one fresh process."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as figures:
        subprocess.run([sys.executable, "-c", LAUNCHER, figures.name, *command], stdout=out,
                       stderr=err, env=env, cwd=tempfile.gettempdir(), check=True)
        wall, rss, code = figures.read().split()
        out.seek(0)
        err.seek(0)
        if int(code):
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode()[-2000:]}")
        return float(wall), int(rss), out.read().decode()


def child_env(pycache: Path) -> None:
    """Byte code cached as in an installed package (``measured`` passes os.environ on): with
    ``PYTHONDONTWRITEBYTECODE`` set, every process would compile bundlelab from its sources
    (0.05-0.07 s on this machine), which no installed copy does."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(pycache)


#: issue 13's targets for analyze: time over the floor, peak RSS over the layer's size
TIME_TARGET = 1.3
RSS_TARGET = 1.2


def row_lines(best, dumps, size_mib: int, layer_bytes: int, fixed_rss: int) -> list[str]:
    """The ROW lines of this run: analyze over the floor per format, and the peak RSS over the
    layer's size (the worst format; the fixed RSS of a tiny analyze said beside it)."""
    lines = []
    for name in dumps:
        ratio = best[(name, "new")][0] / best[(name, "floor")][0]
        lines.append(row(f"analyze {name} {size_mib} MiB / load+sum", f"{ratio:.2f}x",
                         f"<= {TIME_TARGET}x", ratio <= TIME_TARGET))
    worst = max(dumps, key=lambda name: best[(name, "new")][1])
    rss = best[(worst, "new")][1] / layer_bytes
    above = (best[(worst, "new")][1] - fixed_rss) / layer_bytes
    lines.append(row(f"analyze peak RSS / layer size {size_mib} MiB",
                     f"{rss:.2f}x (worst: {worst}; {above:.2f}x above the fixed "
                     f"{fixed_rss / (1 << 20):.0f} MiB of a tiny analyze)",
                     f"<= {RSS_TARGET}x", rss <= RSS_TARGET))
    return lines


def baseline_tree(given: str | None) -> tuple[Path, Path | None]:
    """The baseline checkout, and the worktree to remove afterwards (None if given).

    A worktree made here gets its ``adapters/`` linked as ``bundlelab/adapters``, as the
    editable install maps it: otherwise ``bundlelab.adapters`` would resolve to this tree's
    adapters, whose backend registration the baseline's training code does not know."""
    if given:
        return Path(given).resolve(), None
    folder = Path(tempfile.mkdtemp(prefix="bench-dumps-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), PREVIOUS],
                   check=True, capture_output=True)
    (folder / "bundlelab" / "adapters").symlink_to(folder / "adapters", target_is_directory=True)
    return folder, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 32 MiB layer")
    parser.add_argument("--size-mib", type=int, default=None, help="layer size (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per figure (best of)")
    parser.add_argument("--baseline", default=None,
                        help="a bundlelab checkout to compare with (default: commit 02bff96, "
                             "the readers that copied)")
    parser.add_argument("--tree", default=str(ROOT),
                        help="the bundlelab checkout measured as 'new' (default: this one)")
    parser.add_argument("--formats", default=None,
                        help="comma-separated substrings of the formats to run (default all)")
    args = parser.parse_args()
    size_mib = args.size_mib or (32 if args.quick else 512)

    old_root, worktree = baseline_tree(args.baseline)
    folder = Path(tempfile.mkdtemp(prefix="bench-dumps-"))
    child_env(folder / "pycache")
    try:
        dumps, layer_bytes = write_dumps(folder, size_mib)
        if args.formats:
            wanted = [part.strip() for part in args.formats.split(",")]
            dumps = {k: v for k, v in dumps.items() if any(w in k for w in wanted)}
        print(f"bench_dumps: {size_mib} MiB float32 layer ({layer_bytes // (4 * N_FEATURES)} x "
              f"{N_FEATURES}), best of {args.repeats}; python {platform.python_version()}, "
              f"numpy {np.__version__}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"old: {old_root}  new: {args.tree}")
        trees = {"old": str(old_root), "new": str(Path(args.tree).resolve())}
        best: dict[tuple[str, str], list[float]] = {}
        for tree, root in trees.items():  # byte code written, kernel caches warm
            path = next(iter(dumps.values()))[0]
            measured([sys.executable, "-m", "bundlelab", "analyze", str(path),
                      "--weight-amplitude", "1", "--format", "json"], root)
        for _ in range(args.repeats):
            for name, (path, kind) in dumps.items():
                code = f"import numpy as np; PATH = {str(path)!r}; {FLOOR[kind]}; float(a.sum())"
                runs = {"floor": ([sys.executable, "-c", code], None)}
                for tree, root in trees.items():
                    runs[tree] = ([sys.executable, "-m", "bundlelab", "analyze", str(path),
                                   "--weight-amplitude", "1", "--format", "json"], root)
                reports = {}
                for what, (command, pythonpath) in runs.items():
                    wall, rss, out = measured(command, pythonpath)
                    if what != "floor":
                        reports[what] = json.loads(out)
                    times = best.setdefault((name, what), [float("inf"), float("inf")])
                    times[0], times[1] = min(times[0], wall), min(times[1], rss)
                if reports["old"] != reports["new"]:
                    raise SystemExit(f"{name}: the reports of the two trees differ")
        # the fixed RSS of each tree's analyze (interpreter, numpy, Numba, kernels): a tiny dump
        tiny = folder / "tiny.npz"
        np.savez(tiny, layer=np.ones((64, 8), np.float32), labels=np.arange(64) % 2)
        fixed = {tree: min(measured([sys.executable, "-m", "bundlelab", "analyze", str(tiny),
                                     "--weight-amplitude", "1", "--format", "json"], root)[:2]
                            for _ in range(args.repeats))
                 for tree, root in trees.items()}
        fixed_time = {tree: figures[0] for tree, figures in fixed.items()}
        fixed = {tree: figures[1] for tree, figures in fixed.items()}
        mib = layer_bytes / (1 << 20)
        header = (f"{'format':24} {'floor s':>8} {'old s':>7} {'new s':>7} {'old xfl':>8} "
                  f"{'new xfl':>8} {'floor RSS':>10} {'old RSS':>8} {'new RSS':>8} "
                  f"{'old +RSS':>9} {'new +RSS':>9}")
        print(header)
        print("-" * len(header))
        for name in dumps:
            floor, old, new = (best[(name, what)] for what in ("floor", "old", "new"))
            print(f"{name:24} {floor[0]:8.2f} {old[0]:7.2f} {new[0]:7.2f} "
                  f"{old[0] / floor[0]:7.2f}x {new[0] / floor[0]:7.2f}x "
                  f"{floor[1] / layer_bytes:9.2f}x {old[1] / layer_bytes:7.2f}x "
                  f"{new[1] / layer_bytes:7.2f}x {(old[1] - fixed['old']) / layer_bytes:8.2f}x "
                  f"{(new[1] - fixed['new']) / layer_bytes:8.2f}x")
        print(f"(s: wall seconds of a fresh process; xfl: analyze / floor; RSS: peak RSS / the "
              f"layer's {mib:.0f} MiB; +RSS: peak RSS less that of analyze on a tiny dump "
              f"(old {fixed['old'] / (1 << 20):.0f} MiB, {fixed_time['old']:.2f} s; new "
              f"{fixed['new'] / (1 << 20):.0f} MiB, {fixed_time['new']:.2f} s), "
              "over the layer's size; the JSON reports of old and new were equal)")
        for line in row_lines(best, dumps, size_mib, layer_bytes, fixed["new"]):
            print(line)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], capture_output=True)


if __name__ == "__main__":
    main()
