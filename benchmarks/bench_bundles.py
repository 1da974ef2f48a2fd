"""Speed and memory of bundlelab's core against its baselines, side by side in one process.

Run:  python benchmarks/bench_bundles.py            (full sizes of the issue, about 2 minutes)
      python benchmarks/bench_bundles.py --quick    (smaller sizes, seconds)

Baselines (all measured here, now, on the same arrays):
* the authors' algorithm, ported to plain numpy: one full pass over all rows per bundle
  (O(N * bundles * D)); run on a size where it finishes in seconds and extrapolated linearly
  in D to the full size only when --no-authors-full is given;
* ``np.unique(t, axis=0)`` over the transformed rows;
* the one-pass floor: ``a.sum()``, a single read of the array;
* ``scipy.spatial.distance.cdist(a, a, 'chebyshev')`` for threshold mode;
* the fingerprint pass against the floor on 1 and 2 Numba threads, next to the kernel it
  replaced (two splitmix64 mixes per word, kept below as ``previous_fingerprints``);
* the peer: hash each row in a per-row Python loop (xxhash's xxh3_64 when importable, else
  hashlib's blake2b, 8-byte digest; the line says which), then ``np.unique`` on the hashes;
  over N = 2k .. 128k rows and D = 256, 4096 (--quick: N = 2k, 8k).

Ratios are printed as baseline time / bundlelab time (higher is better for bundlelab), except
"x floor" = bundlelab time / one-pass time (lower is better).  The run ends with one ``ROW``
line per row of issue 13's table it measures (name | measured | target | met or not met).
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

from _rows import row


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


def interleaved(fns: dict, repeat=5) -> dict:
    """Best time of each function, the functions run in turn ``repeat`` times (so a load that
    comes and goes on the machine hits them all alike)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


# -- the fingerprint kernel before issue 13, kept to measure against --------------------------

_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN, _SEED_B = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03)
_ODD_B = np.uint64(0xAEF17502108EF2D9)
_S30, _S27, _S31, _ONE = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(1)


def _previous_kernel():
    import numba

    @numba.njit(nogil=True)
    def hash_tile(words, first_word, n_words, lane_a, lane_b):
        for k in range(n_words):
            x = words[k]
            pos = np.uint64(first_word + k)
            z = x ^ (pos * _GOLDEN)
            z = (z ^ (z >> _S30)) * _MIX_1
            z = (z ^ (z >> _S27)) * _MIX_2
            lane_a += z ^ (z >> _S31)
            z = x + (pos + _ONE) * _SEED_B
            z = (z ^ (z >> _S30)) * _MIX_1
            z = (z ^ (z >> _S27)) * _MIX_2
            lane_b += (z ^ (z >> _S31)) * _ODD_B
        return lane_a, lane_b

    @numba.njit(parallel=True, nogil=True)
    def fingerprints(rows, w, alpha, invb, out):
        n_samples, n_features = rows.shape
        work = type(w)
        zero = work(0)
        for i in numba.prange(n_samples):
            buf = np.zeros(1024, dtype=work)
            per_word = 8 // buf.itemsize
            words = buf.view(np.uint64)
            lane_a = np.uint64(0)
            lane_b = np.uint64(0)
            row = rows[i]
            for start in range(0, n_features, 1024):
                count = min(1024, n_features - start)
                src = row[start:start + count]
                for k in range(count):
                    buf[k] = w - (work(src[k]) * alpha) * invb + zero
                if count % per_word:
                    buf[count] = zero
                lane_a, lane_b = hash_tile(
                    words, start // per_word, (count + per_word - 1) // per_word, lane_a, lane_b
                )
            out[i, 0] = lane_a
            out[i, 1] = lane_b

    return fingerprints


def fingerprint_floor(n: int, d: int) -> list[str]:
    """find_bundles and the fingerprint kernel (new and previous) / a.sum(), 1 and 2 threads;
    the ROW lines of the table (all-distinct and half-duplicated rows, each thread count)."""
    import numba

    from bundlelab import find_bundles
    from bundlelab.kernels.cpu import fingerprint_keys, fingerprints_native

    distinct = np.random.default_rng(5).random((n, d), dtype=np.float32)
    a = distinct.copy()
    a[n // 2:] = a[: n // 2]  # half duplicated: confirming the pairs reads them all once more
    labels = np.arange(n) % 10
    w, alpha, invb = np.float32(1.0), np.float32(1e-3), np.float32(1 / 64)
    out = np.empty((n, 2), np.uint64)
    nonfinite = np.empty(n, np.bool_)
    from bundlelab.kernels._formats import FORMATS

    keys = fingerprint_keys(d, FORMATS["float32"])
    previous = _previous_kernel()
    previous(a[:4], w, alpha, invb, out[:4])
    fingerprints_native(a[:4], w, alpha, invb, keys, out[:4], nonfinite[:4])
    find_bundles(a[:8], labels[:8])
    threads = numba.get_num_threads()
    rows = []
    print(f"\nfingerprint pass, {n}x{d} f32 ({a.nbytes / 2**20:.0f} MiB), x a.sum() "
          "(best of 7, interleaved; lower is better, target <= 1.5):")
    print(f"{'threads':<9}{'a.sum s':>9}{'find_bundles distinct':>23}{'half duplicated':>17}"
          f"{'kernel':>9}{'previous kernel':>17}")
    for n_threads in (1, 2):
        numba.set_num_threads(min(n_threads, threads))
        best = interleaved({
            "floor": lambda: a.sum(),
            "distinct": lambda: find_bundles(distinct, labels),
            "find_bundles": lambda: find_bundles(a, labels),
            "kernel": lambda: fingerprints_native(a, w, alpha, invb, keys, out, nonfinite),
            "previous": lambda: previous(a, w, alpha, invb, out),
        }, repeat=7)
        floor = best["floor"]
        print(f"{n_threads:<9}{floor:>9.4f}{best['distinct'] / floor:>22.2f}x"
              f"{best['find_bundles'] / floor:>16.2f}x"
              f"{best['kernel'] / floor:>8.2f}x{best['previous'] / floor:>16.2f}x")
        plural = "thread" if n_threads == 1 else "threads"
        for regime, key in (("", "distinct"), (" half duplicated", "find_bundles")):
            ratio = best[key] / floor
            rows.append(row(
                f"find_bundles resolution {n}x{d} f32{regime} / a.sum() ({n_threads} {plural})",
                f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5))
    numba.set_num_threads(threads)
    return rows


def _row_hasher():
    try:
        import xxhash

        return "xxhash.xxh3_64", lambda row: xxhash.xxh3_64_intdigest(row)
    except ImportError:
        import hashlib

        return "hashlib.blake2b (xxhash is not installed)", lambda row: int.from_bytes(
            hashlib.blake2b(row, digest_size=8).digest(), "little")


def peer_scaling(quick: bool) -> list[str]:
    """find_bundles (resolution) vs hashing every row in a Python loop, then np.unique; the
    ROW line: the smallest speed-up over the cells (the target: bundlelab faster in all)."""
    from bundlelab import find_bundles

    name, hash_row = _row_hasher()

    def peer(a):
        hashes = np.fromiter((hash_row(row) for row in a), dtype=np.uint64, count=len(a))
        return np.unique(hashes, return_inverse=True)[1]

    sizes = [2048, 8192] if quick else [2048, 8192, 32768, 131072]
    print(f"\npeer: per-row {name} in a Python loop + np.unique (raw rows, 64-bit, not "
          "confirmed)\nvs find_bundles (resolution, exact); half the rows duplicated; best of 3, "
          "interleaved; speed-up = peer / bundlelab:")
    print(f"{'N x D':<16}{'peer s':>9}{'bundlelab s':>13}{'speed-up':>10}")
    slowest = None  # (speed-up, cell)
    for d in (256, 4096):
        for n in sizes:
            a = np.random.default_rng(n + d).random((n, d), dtype=np.float32)
            a[n // 2:] = a[: n // 2]
            labels = np.arange(n) % 10
            find_bundles(a[:8], labels[:8])
            best = interleaved({"peer": lambda: peer(a), "ours": lambda: find_bundles(a, labels)},
                               repeat=3)
            speed_up = best["peer"] / best["ours"]
            print(f"{f'{n}x{d}':<16}{best['peer']:>9.4f}{best['ours']:>13.4f}{speed_up:>9.1f}x")
            if slowest is None or speed_up < slowest[0]:
                slowest = (speed_up, f"{n}x{d}")
            del a
    return [row("peer (per-row hash in a Python loop + np.unique) / find_bundles, every cell",
                     f"{slowest[0]:.1f}x at worst ({slowest[1]}; {name.split(' ')[0]})",
                     "> 1x in every cell", slowest[0] > 1.0)]


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
    parser.add_argument("--fingerprint-only", action="store_true",
                        help="only the fingerprint pass against the floor and the peer")
    args = parser.parse_args()
    # The compiled kernels throughout: a fresh process would hash its first 512 MiB in numpy
    # (kernels/host.py), which bench_startup.py measures.
    import bundlelab.kernels.cpu  # noqa: F401
    if args.fingerprint_only:
        print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}")
        table = fingerprint_floor(2048, 4096 if args.quick else 65536)
        table += peer_scaling(args.quick)
        print("\n".join(table))
        return

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
    table = fingerprint_floor(n, d_full)
    table += peer_scaling(args.quick)
    gpu_bandwidth(n, d_full, quick=args.quick)
    print(f"bundlelab {bundlelab.__version__}; load average {os.getloadavg()[0]:.1f}")
    print("\n".join(table))


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
