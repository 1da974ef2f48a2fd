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

The "cpu" column is the calling thread's CPU time, audit over forward (best of each): the
audit's critical path when a spare core takes the background fingerprints, and a figure that
another busy process on the machine changes less than the wall-clock ratio.  The breakdown
after the table says where the audit's time goes: the tracing pass, the tapped bytes, and the
floor of fingerprinting them on one thread (what the audit must add to a forward pass that
already takes every core).
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
from bundlelab._arrays import as_rows
from bundlelab.adapters.torch import TorchAdapter, audit, trace_model
from bundlelab.bundles import resolution_transform, update_format_of
from bundlelab.streaming import BLOCK_BYTES, BundleStream, StreamBatcher, _fingerprint_rows

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
    update = StreamBatcher._update
    del TorchAdapter.feed_layer_outputs
    StreamBatcher._update = lambda self, name, output, labels, codes: self.streams[name].update(
        output, labels)
    try:
        yield
    finally:
        TorchAdapter.feed_layer_outputs = feed
        StreamBatcher._update = update


def seconds(fn) -> tuple[float, float]:
    """(wall-clock, this thread's CPU) seconds of ``fn()``."""
    start, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - start, time.thread_time() - cpu


def measure(model: nn.Module, x: torch.Tensor, y: np.ndarray, repeat: int) -> dict:
    model.eval()

    def forward():
        with torch.no_grad():
            for start in range(0, N_SAMPLES, BATCH):
                model(x[start:start + BATCH])

    def run_audit():
        with contextlib.redirect_stderr(io.StringIO()):  # the selection's one line
            return audit(model, x, y, n_samples=N_SAMPLES, inference_batch_size=BATCH)

    def run_before():
        with previous_path():
            run_audit()

    run_audit(), run_before(), forward()  # warm-up: kernels loaded, thread pools started
    best = {name: np.inf for name in ("forward", "audit", "before", "forward cpu", "audit cpu")}
    for _ in range(repeat):  # interleaved, so a load change hits all three alike
        for name, fn in (("forward", forward), ("audit", run_audit), ("before", run_before)):
            wall, cpu = seconds(fn)
            best[name] = min(best[name], wall)
            if name != "before":
                best[f"{name} cpu"] = min(best[f"{name} cpu"], cpu)
    return best


def breakdown(model: nn.Module, x: torch.Tensor, repeat: int) -> dict:
    """The tracing pass's time, the tapped bytes, and the time one thread takes to fingerprint
    them (the kernel on blocks as the audit gathers them), each best of ``repeat``."""
    with contextlib.redirect_stderr(io.StringIO()):
        report = audit(model, x[:BATCH], np.zeros(BATCH, np.int64), inference_batch_size=BATCH)
    tapped = sum(N_SAMPLES * result.n_features * 4 for result in report)
    tracing = min(seconds(lambda: trace_model(model, x))[0] for _ in range(repeat * 5))
    stream = BundleStream(layer="floor")
    block = np.abs(np.random.default_rng(0).standard_normal(
        (BLOCK_BYTES // (4 * report[0].n_features), report[0].n_features), dtype=np.float32))
    rows = as_rows(block, device="cpu")
    fmt = update_format_of(rows.fmt, stream.options)
    transform = resolution_transform(fmt, stream.options)
    hash_block = min(seconds(lambda: _fingerprint_rows(rows, fmt, transform, one_thread=True))[0]
                     for _ in range(repeat * 5))
    return {"tracing": tracing, "tapped": tapped, "hash": hash_block * tapped / block.nbytes}


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
    print(f"{'model':<20}{'threads':>8}{'forward':>10}{'audit':>10}{'ratio':>8}{'cpu':>8}"
          f"{'before':>10}{'ratio':>8}")
    worst, floors = 0.0, []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (model, x) in models.items():
            best = measure(model, x, y, repeat)
            ratio, before = best["audit"] / best["forward"], best["before"] / best["forward"]
            cpu = best["audit cpu"] / best["forward cpu"]
            worst = max(worst, ratio)
            print(f"{name:<20}{threads:>8}{best['forward']:>9.3f}s{best['audit']:>9.3f}s"
                  f"{ratio:>7.2f}x{cpu:>7.2f}x{best['before']:>9.3f}s{before:>7.2f}x")
            floors.append((name, threads, best["forward"]))
    print("where the time goes (cpu: the calling thread's CPU, audit / forward):")
    for name, (model, x) in models.items():
        parts = breakdown(model, x, repeat)
        for model_name, threads, forward in floors:
            if model_name != name:
                continue
            print(f"  {name}, {threads} thread(s): tracing pass {parts['tracing'] * 1e3:.1f} ms;"
                  f" {parts['tapped'] / 2**20:.0f} MiB tapped, fingerprinted on one thread in "
                  f"{parts['hash'] * 1e3:.1f} ms = {parts['hash'] / forward:.2f} x the forward "
                  f"({forward * 1e3:.0f} ms)")
    print(row(f"torch audit / no_grad forward, {N_SAMPLES} samples",
              f"{worst:.2f}x (worst of MLP and conv net, 1 and 2 threads)", f"<= {TARGET}x",
              worst <= TARGET))


if __name__ == "__main__":
    main()
