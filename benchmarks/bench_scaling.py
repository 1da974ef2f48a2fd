"""The scaling table of issue 13: ``find_bundles`` over N x D, both modes, three row regimes,
every cell next to its floor (one ``a.sum()`` of the same array, measured beside it).

Run:  python benchmarks/bench_scaling.py            (N 2k, 8k, 32k, 128k x D 256, 4096)
      python benchmarks/bench_scaling.py --quick    (N 2k, 8k x D 256, 4096; a minute)
      python benchmarks/bench_scaling.py --sizes 2048,131072 --widths 256 --modes threshold

Row regimes (float32; ``bench_threshold.make_rows`` for threshold mode):
* distinct: ReLU of standard normal values, every row its own bundle;
* half duplicated: the second half repeats rows of the first half;
* 10 bundles: ten centres; in resolution mode every row is a copy of one, in threshold mode a
  centre plus noise below 0.4 of the reach (so the rows are distinct but bundle).

Timed: ``find_bundles(a, labels, mode=..., weight_amplitude=1.0)`` at the other defaults, and
``a.sum()``, in turn, best of ``--repeat`` (one run once a cell takes over ``--long`` seconds).
``x floor`` is bundlelab's time over the floor's (lower is better).  Numba's kernels are
loaded before the clock.  A threshold cell is skipped (printed as skipped, with the estimate)
when its time, extrapolated from the cell with a quarter of the rows by that cell's growth,
would pass ``--limit`` seconds; ``--limit 0`` runs everything.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from _rows import row

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_threshold import make_rows as threshold_rows  # noqa: E402

REGIMES = ("distinct", "half duplicated", "10 bundles")
MODES = ("resolution", "threshold")


def resolution_rows(regime: str, n: int, d: int) -> np.ndarray:
    if regime != "10 bundles":
        return threshold_rows(regime, n, d)
    rng = np.random.default_rng(n * 7919 + d)
    centres = np.maximum(rng.standard_normal((10, d), dtype=np.float32), 0)
    return centres[rng.integers(0, 10, n)]


def timed(fn, repeat: int, long: float) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if best > long:
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N 2k, 8k")
    parser.add_argument("--sizes", help="comma-separated N (default 2048,8192,32768,131072)")
    parser.add_argument("--widths", default="256,4096", help="comma-separated D")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--long", type=float, default=5.0,
                        help="a cell slower than this many seconds runs once")
    parser.add_argument("--limit", type=float, default=60.0,
                        help="skip threshold cells estimated slower than this (0: none)")
    args = parser.parse_args()
    sizes = [int(n) for n in (args.sizes or ("2048,8192" if args.quick
                                             else "2048,8192,32768,131072")).split(",")]
    widths = [int(d) for d in args.widths.split(",")]

    import bundlelab
    from bundlelab.kernels.cpu import CpuBackend  # noqa: F401 - the compiled kernels, loaded now

    warnings.simplefilter("ignore")
    for mode in MODES:  # compile-cache loads outside the clock
        bundlelab.find_bundles(resolution_rows("distinct", 64, 8), np.arange(64) % 2, mode=mode,
                               weight_amplitude=1.0)
    print(f"bench_scaling: python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; best of {args.repeat}")
    header = (f"{'mode':<11}{'regime':<17}{'N':>8}{'D':>6}{'bundles':>9}{'floor s':>10}"
              f"{'bundlelab s':>13}{'x floor':>9}")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    skipped = []
    ratios = {}  # (mode, regime, n, d) -> x floor
    for mode in args.modes.split(","):
        for regime in args.regimes.split(","):
            for d in widths:
                previous = None  # (n, seconds) of the cell before, for the estimate
                growth = None
                for n in sizes:
                    estimate = None
                    if mode == "threshold" and previous is not None and args.limit:
                        per_step = growth if growth is not None else 16.0  # quadratic if unknown
                        estimate = previous[1] * per_step ** (np.log(n / previous[0]) / np.log(4))
                    if estimate is not None and estimate > args.limit:
                        skipped.append(f"{mode} {regime} {n}x{d} (estimated {estimate:.0f} s)")
                        print(f"{mode:<11}{regime:<17}{n:>8}{d:>6}{'skipped':>9}"
                              f"{'':>10}{f'~{estimate:.0f}':>13}", flush=True)
                        continue
                    make = resolution_rows if mode == "resolution" else threshold_rows
                    a = make(regime, n, d)
                    labels = np.arange(n) % 10
                    result = {}

                    def run():
                        result["r"] = bundlelab.find_bundles(a, labels, mode=mode,
                                                             weight_amplitude=1.0)

                    floor = timed(lambda: a.sum(), args.repeat, args.long)
                    seconds = timed(run, args.repeat, args.long)
                    floor = min(floor, timed(lambda: a.sum(), args.repeat, args.long))
                    if previous is not None:
                        growth = (seconds / previous[1]) ** (np.log(4) / np.log(n / previous[0]))
                    previous = (n, seconds)
                    ratios[mode, regime, n, d] = seconds / floor
                    print(f"{mode:<11}{regime:<17}{n:>8}{d:>6}{result['r'].n_bundles:>9}"
                          f"{floor:>10.4f}{seconds:>13.4f}{seconds / floor:>8.1f}x", flush=True)
                    a = None  # free the rows before the next cell is built
    print(f"(x floor: find_bundles / a.sum() of the same array; the table took "
          f"{time.perf_counter() - started:.0f} s)")
    if skipped:
        print("skipped (over --limit): " + "; ".join(skipped))
    for line in table_rows(ratios):
        print(line)


def table_rows(ratios: dict) -> list[str]:
    """The ROW line of issue 13's table this script measures: resolution mode at D = 256 and
    the largest N run (128k in a full run), worst regime against the target of 2x the floor."""
    cells = {key: value for key, value in ratios.items()
             if key[0] == "resolution" and key[3] == 256}
    if not cells:
        return []
    n = max(key[2] for key in cells)
    measured = {key[1]: value for key, value in cells.items() if key[2] == n}
    worst = max(measured.values())
    figures = ", ".join(f"{regime} {value:.1f}x" for regime, value in measured.items())
    return [row(f"scaling resolution {n // 1024}k x 256", figures, "<= 2x the floor",
                worst <= 2.0)]


if __name__ == "__main__":
    main()
