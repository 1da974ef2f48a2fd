"""Speed and memory of bundlelab's core against its baselines, side by side in one process.

Run:  python benchmarks/bench_bundles.py            (full sizes of the issue, about 2 minutes)
      python benchmarks/bench_bundles.py --quick    (smaller sizes, seconds)

Baselines (all measured here, now, on the same arrays):
* the authors' algorithm, ported to plain numpy: one full pass over all rows per bundle
  (O(N * bundles * D)); run on a size where it finishes in seconds and extrapolated linearly
  in D to the full size only when --no-authors-full is given;
* ``np.unique(t, axis=0)`` over the transformed rows;
* the one-pass floor: ``a.sum()``, a single read of the array;
* ``scipy.spatial.distance.cdist(a, a, 'chebyshev')`` for threshold mode.

Ratios are printed as baseline time / bundlelab time (higher is better for bundlelab), except
"x floor" = bundlelab time / one-pass time (lower is better; the target is <= 3).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def authors_algorithm(a, lr=1e-3, batch_size=64, w=1.0):
    """The released algorithm, ported to numpy: one full pass over all rows per bundle."""
    t = (np.float32(w) - a * np.float32(lr) * np.float32(1.0 / batch_size)).reshape(len(a), -1)
    ids = np.zeros(len(a), dtype=np.int64)  # 0 = not assigned yet; ids start at 1 as theirs
    next_id = 1
    for i in range(len(a)):
        if ids[i]:
            continue
        same = np.all(t == t[i], axis=1) & (ids == 0)
        ids[same] = next_id
        next_id += 1
    return ids - 1


def unique_rows(a, lr=1e-3, batch_size=64, w=1.0):
    t = np.float32(w) - a * np.float32(lr) * np.float32(1.0 / batch_size)
    return np.unique(t + np.float32(0), axis=0, return_inverse=True)[1]


def first_occurrence(ids):
    """Renumber arbitrary bundle ids by first occurrence, to compare partitions."""
    _, first_index, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty_like(first_index)
    rank[np.argsort(first_index)] = np.arange(first_index.size)
    return rank[inverse.reshape(-1)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}, Python {platform.python_version()}"


def first_call_seconds() -> tuple[float, float]:
    """Wall time of `import bundlelab; find_bundles(tiny)` in two fresh processes."""
    code = (
        "import time; s=time.perf_counter(); import numpy as np, bundlelab;"
        "bundlelab.find_bundles(np.zeros((3, 4), np.float32), [0, 1, 0]);"
        "bundlelab.find_bundles(np.zeros((3, 4), np.float32), [0, 1, 0], mode='threshold');"
        "print(time.perf_counter()-s)"
    )
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(2)]
    return runs[0], runs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args()

    import bundlelab
    from bundlelab import BundleStream, find_bundles

    rng = np.random.default_rng(0)
    n = 2048
    d_full = 4096 if args.quick else 65536
    d_authors = 1024 if args.quick else 4096
    print(f"machine: {machine()}")
    cold, warm = first_call_seconds()
    print(f"import + first call in a fresh process: {cold:.2f} s, then {warm:.2f} s (Numba cache)\n")

    labels = rng.integers(0, 10, n)
    rows = []

    # -- resolution mode, full size: bundlelab vs one pass and np.unique -----------------------
    a = rng.random((n, d_full), dtype=np.float32)
    a[n // 2:] = a[: n // 2]  # half of the rows duplicate the other half: 1024 real bundles
    find_bundles(a[:8], labels[:8])
    t_floor = best_of(lambda: a.sum())
    t_ours = best_of(lambda: find_bundles(a, labels))
    t_unique = best_of(lambda: unique_rows(a), repeat=1)
    assert np.array_equal(first_occurrence(unique_rows(a)), find_bundles(a, labels).bundle_ids)
    rows.append(("resolution", f"{n}x{d_full} f32", "one pass (a.sum)", t_floor, t_ours))
    rows.append(("resolution", f"{n}x{d_full} f32", "np.unique(axis=0)", t_unique, t_ours))

    # -- resolution mode vs the authors' algorithm, on a size where it finishes ----------------
    b = np.ascontiguousarray(a[:, :d_authors])
    find_bundles(b[:8], labels[:8])
    t_ours_b = best_of(lambda: find_bundles(b, labels))
    t_authors = best_of(lambda: authors_algorithm(b), repeat=1)
    assert np.array_equal(authors_algorithm(b), find_bundles(b, labels).bundle_ids)
    rows.append(("resolution", f"{n}x{d_authors} f32", "authors' algorithm", t_authors, t_ours_b))
    authors_full = t_authors * d_full / d_authors  # O(N * bundles * D): linear in D
    rows.append(("resolution", f"{n}x{d_full} f32", "authors' (extrapolated in D)", authors_full, t_ours))

    # -- threshold mode vs scipy's pairwise Chebyshev -------------------------------------------
    from scipy.spatial.distance import cdist

    c = rng.random((n, 4096), dtype=np.float32)
    c[n // 2:] = c[: n // 2] + np.float32(1e-7)  # planted near-duplicates within gamma
    find_bundles(c[:8], labels[:8], mode="threshold")
    t_thr = best_of(lambda: find_bundles(c, labels, mode="threshold"))
    t_cdist = best_of(lambda: cdist(c, c, "chebyshev"), repeat=1)
    rows.append(("threshold", f"{n}x4096 f32", "scipy cdist chebyshev", t_cdist, t_thr))

    print(f"{'mode':<11}{'shape':<16}{'baseline':<31}{'baseline s':>11}{'bundlelab s':>13}{'speed-up':>11}")
    for mode, shape, name, t_base, t_new in rows:
        print(f"{mode:<11}{shape:<16}{name:<31}{t_base:>11.4f}{t_new:>13.4f}{t_base / t_new:>10.1f}x")
    print(f"\nresolution mode at {n}x{d_full}: {t_ours / t_floor:.2f} x the one-pass floor (target <= 3)")

    # -- streaming memory: batches generated on the fly, never the whole layer ------------------
    batch = 64
    d_stream = d_full
    tracemalloc.start()
    stream = BundleStream(layer="conv")
    batch_rng = np.random.default_rng(1)
    for start in range(0, n, batch):
        stream.update(batch_rng.random((batch, d_stream), dtype=np.float32), labels[start:start + batch])
    result = stream.result()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full = n * d_stream * 4
    print(
        f"streaming {n}x{d_stream} f32 in batches of {batch}: peak traced memory "
        f"{peak / 2**20:.1f} MiB (one batch is {batch * d_stream * 4 / 2**20:.1f} MiB) vs "
        f"{full / 2**20:.0f} MiB for the whole layer; {result.n_bundles} bundles"
    )
    gpu_bandwidth(n, d_full, quick=args.quick)
    print(f"bundlelab {bundlelab.__version__}")


def gpu_bandwidth(n: int, d: int, *, quick: bool) -> None:
    """Achieved memory bandwidth of the CUDA fingerprint kernel against a device copy."""
    from numba import config, cuda

    if config.ENABLE_CUDASIM or not cuda.is_available():
        print("GPU: no CUDA device here; the CUDA kernels were not timed")
        return
    from bundlelab.kernels import Transform, get_kernel_backend
    from bundlelab.kernels._formats import FORMATS

    backend = get_kernel_backend("cuda")
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    rows = cuda.to_device(np.random.default_rng(2).random((n, d), dtype=np.float32))
    copy = cuda.device_array_like(rows)

    def timed(fn, repeat=20):
        fn()
        cuda.synchronize()
        start, stop = cuda.event(), cuda.event()
        times = []
        for _ in range(repeat):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cuda.event_elapsed_time(start, stop) / 1e3)
        return float(np.median(times))

    t_copy = timed(lambda: copy.copy_to_device(rows))
    t_fp = timed(lambda: backend.fingerprints(rows, fmt, transform))
    nbytes = rows.size * 4
    copy_bw = 2 * nbytes / t_copy  # a copy reads and writes every byte
    fp_bw = nbytes / t_fp
    print(
        f"GPU {cuda.get_current_device().name.decode() if isinstance(cuda.get_current_device().name, bytes) else cuda.get_current_device().name}: "
        f"fingerprints {n}x{d} f32 {t_fp * 1e3:.2f} ms = {fp_bw / 1e9:.0f} GB/s; device copy "
        f"{copy_bw / 1e9:.0f} GB/s; fraction of copy bandwidth {fp_bw / copy_bw:.2f}"
    )


if __name__ == "__main__":
    main()
