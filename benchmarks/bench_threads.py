"""Thread pools that do not fight: a torch epoch that measures bundles, per threading choice.

Run:  python benchmarks/bench_threads.py            (about 1 minute on 2 cores)
      python benchmarks/bench_threads.py --rounds 9

A small conv net (two 16-channel conv + batch-norm + ReLU layers) trains one epoch on
1347 digits-sized images (8x8, batches of 64) with Adam, and after the epoch measures the
bundles of a 2048 x 256 float32 layer three times, as a training run with ``measure_every=1``
does.  Each configuration runs in a fresh interpreter (a thread pool is chosen once per
process), interleaved, best of ``--rounds`` epochs, twice: on a quiet machine and beside a
busy process (one Python loop spinning on a core).  Rows:

* ``plain torch``: the same epoch without bundlelab (the floor);
* ``bundlelab now``: bundlelab's choice (Numba's workqueue layer, no process-wide setting);
* ``before (PASSIVE)``: what the CLI did before, ``OMP_WAIT_POLICY=PASSIVE`` for every pool;
* ``numba omp, no policy``: Numba's default OpenMP layer and no wait policy;
* ``numpy path (first 512 MiB)``: a process's first 512 MiB of rows, which bundlelab hashes in
  numpy without loading Numba (``kernels/host.py``); the rows above load Numba's kernels first,
  as a run does once it has measured that much.

Ratios are epoch time / plain torch's on the same load (lower is better; the measurement
itself costs a few percent, so 1.0 is out of reach).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

EPOCH = textwrap.dedent(
    """
    import sys, time
    mode, rounds = sys.argv[1], int(sys.argv[2])
    if mode == "omp":
        import numba
        numba.config.THREADING_LAYER = "omp"
    import numpy as np, torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.randn(1347, 1, 8, 8), torch.randint(0, 10, (1347,))
    layer = np.random.default_rng(0).random((2048, 256), dtype=np.float32)
    labels = np.arange(2048) % 10
    measure = mode != "plain"
    if measure:
        from bundlelab import find_bundles
    if mode in ("bundlelab", "omp"):
        import bundlelab.kernels.cpu  # Numba's kernels, as a run reaches after its first 512 MiB

    def epoch():
        for start in range(0, 1347, 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[start:start + 64]), y[start:start + 64])
            loss.backward()
            optimizer.step()
        if measure:
            for _ in range(3):
                find_bundles(layer, labels)

    epoch()  # warm-up: kernels loaded, pools started
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        epoch()
        best = min(best, time.perf_counter() - started)
    print(best)
    """
)

#: row label -> (script mode, extra environment)
CONFIGS = {
    "plain torch": ("plain", {}),
    "bundlelab now": ("bundlelab", {}),
    "before (PASSIVE)": ("bundlelab", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "numba omp, no policy": ("omp", {}),
    "numpy path (first 512 MiB)": ("numpy", {}),
}


def epoch_time(mode: str, env: dict[str, str], rounds: int) -> float:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", EPOCH, mode, str(rounds)], env=environment,
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def measure(rounds: int, repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in CONFIGS}
    for _ in range(repeats):  # interleaved, so a slow moment hits every row alike
        for name, (mode, env) in CONFIGS.items():
            best[name] = min(best[name], epoch_time(mode, env, rounds))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="epochs per process (best of)")
    parser.add_argument("--repeats", type=int, default=2, help="processes per configuration")
    args = parser.parse_args()

    print(f"{os.cpu_count()} cores; epoch = 22 Adam steps + 3 find_bundles(2048 x 256)")
    print(f"{'':28s}{'quiet ms':>10s}{'ratio':>8s}{'busy ms':>10s}{'ratio':>8s}")
    quiet = measure(args.rounds, args.repeats)
    busy_process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = measure(args.rounds, args.repeats)
    finally:
        busy_process.kill()
        busy_process.wait()
    for name in CONFIGS:
        print(f"{name:28s}{quiet[name] * 1e3:10.1f}{quiet[name] / quiet['plain torch']:8.2f}"
              f"{busy[name] * 1e3:10.1f}{busy[name] / busy['plain torch']:8.2f}")


if __name__ == "__main__":
    main()
