"""Time of a torch audit against a plain ``torch.no_grad()`` forward pass, side by side.

Run:  python benchmarks/bench_audit.py            (about 2-3 minutes on 2 cores)
      python benchmarks/bench_audit.py --quick    (under a minute)

Two models are audited over 2048 samples in forward batches of 256 (``audit``'s defaults): a
30-hidden-layer ReLU MLP of width 256 (small outputs: 256 KiB per layer and pass) and a small
conv net on 3 x 32 x 32 inputs (large outputs: 2-8 MiB per layer and pass).  The baseline is
the same model's forward passes over the same 2048 samples in the same batches, under
``torch.no_grad()`` in eval mode, with nothing measured.  The two are run alternately, best of
``--repeat`` each, with 1 and with 2 torch threads (Numba keeps its own threads); the audit's
figure includes everything it does (the tracing pass, the weight amplitude, the report).

The "before" column is the same audit on the path this replaced, patched in here: every tapped
output cloned, then one ``BundleStream.update`` per layer and pass (one fingerprint kernel call
per 256-sample output).  Numba's kernels are loaded first (a long-running process's steady
state: a fresh process fingerprints its first 512 MiB in numpy, see ``kernels/host.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np

from _rows import row
import torch
from torch import nn

import bundlelab.kernels.cpu  # noqa: F401  (the Numba kernels, as in a long-running process)
from bundlelab.adapters.torch import TorchAdapter, audit
from bundlelab.streaming import StreamBatcher

N_SAMPLES, BATCH, TARGET = 2048, 256, 1.2


def mlp(depth: int = 30, width: int = 256) -> nn.Module:
    layers = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


@contextlib.contextmanager
def previous_path():
    """The audit as it was: cloned taps, one stream update per layer and pass."""
    feed = TorchAdapter.feed_layer_outputs
    update = StreamBatcher.update
    del TorchAdapter.feed_layer_outputs
    StreamBatcher.update = lambda self, name, output, labels: self.streams[name].update(
        output, labels)
    try:
        yield
    finally:
        TorchAdapter.feed_layer_outputs = feed
        StreamBatcher.update = update


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: nn.Module, x: torch.Tensor, y: np.ndarray, repeat: int) -> dict:
    model.eval()

    def forward():
        with torch.no_grad():
            for start in range(0, N_SAMPLES, BATCH):
                model(x[start:start + BATCH])

    def run_audit():
        with contextlib.redirect_stderr(io.StringIO()):  # the selection's one line
            audit(model, x, y, n_samples=N_SAMPLES, inference_batch_size=BATCH)

    def run_before():
        with previous_path():
            run_audit()

    run_audit(), run_before(), forward()  # warm-up: kernels loaded, thread pools started
    best = {"forward": np.inf, "audit": np.inf, "before": np.inf}
    for _ in range(repeat):  # interleaved, so a load change hits all three alike
        for name, fn in (("forward", forward), ("audit", run_audit), ("before", run_before)):
            best[name] = min(best[name], seconds(fn))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, MLP depth 20")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = {
        f"MLP {20 if args.quick else 30} x 256": (
            mlp(20 if args.quick else 30), torch.randn(N_SAMPLES, 64)),
        "conv net 3x32x32": (conv_net(), torch.randn(N_SAMPLES, 3, 32, 32)),
    }
    y = rng.integers(0, 10, N_SAMPLES)
    print(f"torch audit / plain no_grad forward, {N_SAMPLES} samples, batches of {BATCH}, "
          f"best of {repeat} interleaved")
    print(f"{'model':<20}{'threads':>8}{'forward':>10}{'audit':>10}{'ratio':>8}"
          f"{'before':>10}{'ratio':>8}")
    worst = 0.0
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (model, x) in models.items():
            best = measure(model, x, y, repeat)
            ratio, before = best["audit"] / best["forward"], best["before"] / best["forward"]
            worst = max(worst, ratio)
            print(f"{name:<20}{threads:>8}{best['forward']:>9.3f}s{best['audit']:>9.3f}s"
                  f"{ratio:>7.2f}x{best['before']:>9.3f}s{before:>7.2f}x")
    print(row(f"torch audit / no_grad forward, {N_SAMPLES} samples",
              f"{worst:.2f}x (worst of MLP and conv net, 1 and 2 threads)", f"<= {TARGET}x",
              worst <= TARGET))


if __name__ == "__main__":
    main()
