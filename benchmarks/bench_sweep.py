"""Speed-up of a 4-trial sweep with 2 workers against 1 (ideal: 2x), per executor.

Each trial is a small resumable training run (bundlelab.training.Training in a fresh run
folder: a fully connected network on the embedded digits, a few epochs, bundles measured every
epoch), run with one torch intra-op thread (``torch_threads(1)``), so that a worker uses one
core and two workers can use two.  The same four trials run through the "processes" executor
(and "ray" when Ray is installed) with 1 worker and with 2, interleaved in this one process,
best of ``--repeat`` rounds; the workers are started and warmed up (imports, Numba's kernels)
before the timing, so the ratio is the sweep's own, not the start-up's.  Start-up is printed
apart.  The cores the trials kept busy (their CPU seconds over the wall time) are printed too:
on a machine that other jobs load, the sweep gets a share of the cores whatever its number of
workers, and the ratio falls short of the ideal; that column says when.

    python benchmarks/bench_sweep.py [--epochs 4] [--repeat 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import tempfile
import time

from bundlelab.executors import get_executor, torch_threads

TRIALS = 4


def trial(task: tuple) -> float:
    """One training run in ``folder``; returns the CPU seconds its process spent on it."""
    folder, seed, epochs = task
    from bundlelab.datasets import load_dataset
    from bundlelab.spec import fully_connected
    from bundlelab.training import TrainConfig, Training

    data = load_dataset("digits", n_train=1024, n_test=256)
    spec = fully_connected(512, 3, input_shape=data.input_shape)
    config = TrainConfig(epochs=epochs, optimizer="adamw", n_samples=256, device="cpu",
                         seed=seed, augment=False)
    cpu = time.process_time()
    with torch_threads(1), Training(spec, data, config=config, directory=folder,
                                    progress=False) as run:
        run.run()
    return time.process_time() - cpu


def sweep_seconds(executor, epochs: int) -> tuple[float, float]:
    """Wall time of the 4 trials in fresh run folders (else they would resume, finished), and
    the CPU seconds they took in all."""
    with tempfile.TemporaryDirectory() as root:
        tasks = [(os.path.join(root, f"trial-{i}"), i, epochs) for i in range(TRIALS)]
        start = time.perf_counter()
        cpu = executor.map(trial, tasks, names=[f"trial-{i}" for i in range(TRIALS)],
                           retries=0, what="trials")
        return time.perf_counter() - start, sum(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="Leave Ray out.")
    args = parser.parse_args()
    kinds = ["processes"]
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        kinds.append("ray")
    elif not args.no_ray:
        print("ray is not installed: processes only (pip install 'bundlelab[ray]')")
    print(f"{TRIALS} trials of {args.epochs} epochs, 1 torch intra-op thread per trial; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; best of "
          f"{args.repeat}, interleaved")
    if "ray" in kinds:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with contextlib.ExitStack() as stack:  # each executor keeps its workers between rounds
        _compare(kinds, args, stack)


def _compare(kinds: list[str], args, stack: contextlib.ExitStack) -> None:
    executors = {}
    for kind in kinds:
        for workers in (1, 2):
            executor = stack.enter_context(get_executor(kind, workers=workers, progress=False))
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as root:  # start and warm each worker
                executor.map(trial, [(os.path.join(root, str(i)), i, 1) for i in range(workers)])
            print(f"{kind}, {workers} worker{'s' if workers > 1 else ''}: started and warmed "
                  f"up in {time.perf_counter() - start:.1f} s")
            executors[kind, workers] = executor
    best = {key: (float("inf"), 0.0) for key in executors}
    for _ in range(args.repeat):
        for key, executor in executors.items():
            best[key] = min(best[key], sweep_seconds(executor, args.epochs))
    # cores busy = the trials' CPU seconds / the wall time: ~1 and ~2 on an idle machine; a
    # loaded one gives the sweep less, whatever the number of workers
    print(f"{'executor':<10} {'1 worker':>9} {'2 workers':>10} {'speed-up':>9}  (ideal 2.00x)"
          "   cores busy, 1 / 2 workers")
    for kind in kinds:
        (one, cpu_one), (two, cpu_two) = best[kind, 1], best[kind, 2]
        print(f"{kind:<10} {one:>8.2f}s {two:>9.2f}s {one / two:>8.2f}x   "
              f"{cpu_one / one:>14.2f} / {cpu_two / two:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
