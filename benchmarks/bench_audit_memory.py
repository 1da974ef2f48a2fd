"""Peak memory of a torch audit against keeping every activation, side by side in one run.

Run:  python benchmarks/bench_audit_memory.py           (2048 samples, about 30 s)
      python benchmarks/bench_audit_memory.py --n-samples 8192

A 50-hidden-layer MLP (width 256) is audited over N samples in forward batches of 128; the
baseline is what a naive audit keeps: every activation of every sample.  Each figure is the
growth of the process's peak RSS (Linux: VmHWM, reset through /proc/self/clear_refs), measured
in a fresh interpreter, once with glibc's default allocator settings and once with a fixed mmap
threshold (``MALLOC_MMAP_THRESHOLD_=131072``), which returns every freed batch tensor to the OS
so that RSS shows only what is kept.  (This was a test before; memory is measured here, not
asserted, because RSS under glibc's default varies from run to run.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, time
    import numpy as np, torch
    from torch import nn
    from bundlelab.adapters.torch import audit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    DEPTH, WIDTH, N, BATCH = 50, 256, int(sys.argv[1]), 128

    def mlp(depth):
        layers = [nn.Linear(32, WIDTH), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(WIDTH, 10))

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    def peak_rss_growth(fn):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        base = status("VmRSS:")
        start = time.perf_counter()
        out = fn()
        return status("VmHWM:") - base, time.perf_counter() - start, out

    def store_all():  # what a naive audit keeps: every activation of every sample
        kept = []
        with torch.no_grad():
            for start in range(0, N, BATCH):
                h = x[start:start + BATCH]
                for layer in model:
                    h = layer(h)
                    if isinstance(layer, nn.ReLU):
                        kept.append(h.clone())
        return sum(t.numel() * t.element_size() for t in kept)

    model = mlp(DEPTH)
    x, y = torch.randn(N, 32), np.arange(N) % 10
    options = dict(n_samples=N, inference_batch_size=BATCH)
    audit(mlp(1), x, y, **options)  # warm-up: kernels compiled, thread pool started
    audit_peak, audit_s, report = peak_rss_growth(lambda: audit(model, x, y, **options))
    naive_peak, naive_s, nbytes = peak_rss_growth(store_all)
    print(json.dumps({
        "layers": len(report), "all_activations": nbytes,
        "audit_peak_growth": audit_peak, "store_all_peak_growth": naive_peak,
        "audit_s": round(audit_s, 2),
    }))
    """
)


def measure(n_samples: int, mmap_threshold: str | None) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = mmap_threshold
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(n_samples)], capture_output=True,
                          text=True, env=env, timeout=900)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2048)
    args = parser.parse_args()
    if not os.access("/proc/self/clear_refs", os.W_OK):
        sys.exit("needs Linux /proc/self/clear_refs (peak RSS reset)")
    mb = 1e6
    print(f"50 x 256 ReLU MLP, {args.n_samples} samples, forward batches of 128 (peak RSS growth)")
    print(f"{'allocator':<26}{'activations':>12}{'keep all':>11}{'audit':>9}{'audit/all':>11}")
    for label, threshold in (("glibc default", None), ("mmap threshold 131072", "131072")):
        f = measure(args.n_samples, threshold)
        print(f"{label:<26}{f['all_activations'] / mb:>10.1f}MB{f['store_all_peak_growth'] / mb:>9.1f}MB"
              f"{f['audit_peak_growth'] / mb:>7.1f}MB{f['audit_peak_growth'] / f['all_activations']:>10.2f}x")


if __name__ == "__main__":
    main()
