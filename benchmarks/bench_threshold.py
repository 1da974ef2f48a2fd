"""Threshold mode: the grid index and block-parallel greedy against the previous kernel, side by
side, with a scaling table over N and D.

Run:  python benchmarks/bench_threshold.py            (N 2k ... 128k, D 256 and 4096; long: the
                                                       previous kernel is quadratic)
      python benchmarks/bench_threshold.py --quick    (N 2k ... 16k, D 256; a minute)
      python benchmarks/bench_threshold.py --baseline REV   (compare with another revision)

The previous kernel is git revision ``--baseline`` (default ``02bff96``, the last commit
with the bucket index) of ``bundlelab/``,
exported to a temporary folder and run in a second process; both processes hold the same rows
(same seed) and are timed in turn, cell by cell, best of ``--repeat`` runs each, so a load on
the machine hits both alike.  Every cell checks that both give the same bundle ids.  Timed:
``find_bundles(a, labels, mode="threshold")`` at the defaults (gamma 1e-8, lr 1e-3, |B| 64:
a reach of 6.4e-4 per column).

Row regimes (float32):
* distinct: ReLU of standard normal values (activations of a hidden layer; every row its own
  bundle);
* half duplicated: the second half repeats rows of the first half;
* 10 bundles: ten centres, every row a centre plus noise below 0.4 of the reach;
* sparse distinct: ReLU(x - 1.6), x standard normal (about 5% of the values non-zero, as in
  sparse deep layers): one key spreads such rows over few buckets, the case that made the
  previous index quadratic.

A previous-kernel cell is skipped (``-``) once that kernel's time, extrapolated quadratically
from the cell before, would pass ``--old-limit`` seconds.

The run ends with the issue-13 table's row for threshold mode (``ROW name | figure | target |
met/not met``): the speed-up on distinct rows at 128k x 256 (measured in every mode, ``--quick``
included), and the new kernel's time growth per 4x rows on distinct rows at D 256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _rows import row

REGIMES = ("distinct", "half duplicated", "10 bundles", "sparse distinct")
REACH = 1e-8 / (1e-3 / 64)
#: the issue-13 table row this script measures, and its target speed-up
ROW_NAME = "threshold 128k x 256 all distinct, speed-up vs 02bff96"
ROW_TARGET = 20.0
#: time growth per 4x rows that counts as near-linear (4 is linear; quadratic is 16)
GROWTH_TARGET = 5.0


#: the last commit before the grid index and the block-parallel greedy
PREVIOUS = "02bff96"


def make_rows(regime: str, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(n * 7919 + d)
    if regime == "distinct":
        return np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
    if regime == "sparse distinct":
        return np.maximum(rng.standard_normal((n, d), dtype=np.float32) - np.float32(1.6), 0)
    if regime == "half duplicated":
        a = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0)
        a[n // 2:] = a[rng.integers(0, n // 2, n - n // 2)]
        return a
    centres = rng.standard_normal((10, d), dtype=np.float32)
    a = centres[rng.integers(0, 10, n)]
    a += rng.random((n, d), dtype=np.float32) * np.float32(0.4 * REACH)
    return a


def worker() -> None:
    """Answer ``regime|n|d|repeat`` lines with ``seconds digest`` (bundlelab from sys.path)."""
    import bundlelab

    bundlelab.find_bundles(make_rows("distinct", 64, 8), np.zeros(64), mode="threshold")
    for line in sys.stdin:
        regime, n, d, repeat = line.rstrip("\n").split("|")
        a = make_rows(regime, int(n), int(d))
        labels = np.arange(a.shape[0]) % 10
        best = float("inf")
        for _ in range(int(repeat)):
            start = time.perf_counter()
            ids = bundlelab.find_bundles(a, labels, mode="threshold").bundle_ids
            best = min(best, time.perf_counter() - start)
        digest = hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()
        print(f"{best:.6f} {digest[:16]} {int(ids.max()) + 1}", flush=True)


class Worker:
    def __init__(self, source: str):
        env = dict(os.environ, PYTHONPATH=source)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"], env=env, cwd=source,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def run(self, regime: str, n: int, d: int, repeat: int) -> tuple[float, str, int]:
        self.process.stdin.write(f"{regime}|{n}|{d}|{repeat}\n")
        self.process.stdin.flush()
        seconds, digest, n_bundles = self.process.stdout.readline().split()
        return float(seconds), digest, int(n_bundles)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", default=PREVIOUS, help="git revision of the previous kernel")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--old-limit", type=float, default=120.0)
    parser.add_argument("--sizes", help="comma-separated N (default: by --quick)")
    parser.add_argument("--widths", help="comma-separated D (default: by --quick)")
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sizes = [2048, 4096, 8192, 16384] if args.quick else [2048, 8192, 32768, 131072]
    widths = [256] if args.quick else [256, 4096]
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else sizes
    widths = [int(d) for d in args.widths.split(",")] if args.widths else widths
    with tempfile.TemporaryDirectory() as old_source:
        archive = subprocess.run(["git", "-C", repo, "archive", args.baseline, "bundlelab"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old_source], input=archive, check=True)
        old, new = Worker(old_source), Worker(repo)
        print(f"machine: {os.cpu_count()} cores; previous kernel: {args.baseline}; "
              f"best of {args.repeat}")
        print(f"{'regime':<17}{'N':>8}{'D':>6}{'bundles':>9}{'previous s':>12}{'new s':>10}"
              f"{'speed-up':>10}{'new x per 4N':>14}")
        cells = {}  # (regime, n, d) -> (new seconds, ratio or None)
        try:
            for regime in args.regimes.split(","):
                for d in widths:
                    last_old = last_new = last_n = None
                    for n in sizes:
                        t_new, digest_new, n_bundles = new.run(regime, n, d, args.repeat)
                        guess = (last_old * (n / last_n) ** 2) if last_n else 0.0
                        if last_old is not None and guess <= args.old_limit or last_n is None:
                            t_old, digest_old, _ = old.run(regime, n, d, max(1, args.repeat
                                                           if guess < 10 else 1))
                            assert digest_old == digest_new, f"different bundles: {regime} {n}x{d}"
                            last_old = t_old
                            old_text, ratio = f"{t_old:.3f}", f"{t_old / t_new:.1f}x"
                        else:
                            last_old, old_text, ratio = None, "-", "-"
                        per_4n = np.log(4) / np.log(n / last_n) if last_n else 0.0
                        growth = "" if last_new is None else f"{(t_new / last_new) ** per_4n:.1f}"
                        print(f"{regime:<17}{n:>8}{d:>6}{n_bundles:>9}{old_text:>12}"
                              f"{t_new:>10.3f}{ratio:>10}{growth:>14}", flush=True)
                        cells[regime, n, d] = (t_new, t_old / t_new if old_text != "-" else None)
                        last_new, last_n = t_new, n
            target_cell = ("distinct", 131072, 256)
            if target_cell not in cells:  # --quick and narrower runs: measure the row's cell
                t_new, digest_new, _ = new.run(*target_cell, args.repeat)
                t_old, digest_old, _ = old.run(*target_cell, args.repeat)  # best of as many
                assert digest_old == digest_new, "different bundles: distinct 131072x256"
                cells[target_cell] = (t_new, t_old / t_new)
                print(f"{'distinct':<17}{131072:>8}{256:>6}{'':>9}{t_old:>12.3f}{t_new:>10.3f}"
                      f"{t_old / t_new:>9.1f}x", flush=True)
        finally:
            old.close()
            new.close()
    print_rows(cells, args.baseline)


def print_rows(cells: dict, baseline: str) -> None:
    """The issue-13 table rows, as ``ROW name | figure | target | met/not met``."""
    _, ratio = cells["distinct", 131072, 256]
    name = ROW_NAME if baseline == PREVIOUS else ROW_NAME.replace(PREVIOUS, baseline)
    print(row(name, f"{ratio:.1f}x", f">= {ROW_TARGET:.0f}x", ratio >= ROW_TARGET))
    sizes = sorted(n for regime, n, d in cells if regime == "distinct" and d == 256)
    if len(sizes) >= 2:
        first, last = sizes[-2], sizes[-1]
        per_4n = (cells["distinct", last, 256][0] / cells["distinct", first, 256][0]) ** (
            np.log(4) / np.log(last / first))
        print(row(f"threshold all distinct, time growth per 4x N ({first}..{last} x 256)",
                  f"{per_4n:.1f}x", f"<= {GROWTH_TARGET:.0f}x (near-linear)",
                  per_4n <= GROWTH_TARGET))


if __name__ == "__main__":
    main()
