"""The cost of merging sharded bundle state against one streaming pass, side by side.

Run:  python benchmarks/bench_merge.py            (128k samples x 50 layers, a few minutes)
      python benchmarks/bench_merge.py --quick    (16k samples x 5 layers, seconds)

For each layer (64 float32 values per sample, values repeating so that bundles form), the
samples are fed in batches of 4096 to

* one stream in sample order, then ``result()``: the single pass (the baseline);
* one stream per shard (``--shards``, consecutive slices), each pickled and unpickled (what
  travels from a worker to the driver), then ``merge_streams`` and ``result()``.

Printed per run (best of ``--repeats``, the two interleaved in one process): the single
pass, the time the shards' fingerprinting takes in total (the same work as the pass, spread
over workers), and the driver's cost: pickling round trip, merge, result, and their sum as a
ratio of the single pass.  The results are checked equal.
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np

from bundlelab import BundleStream, merge_streams

BATCH = 4096
N_FEATURES = 64


def layer_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    # few distinct values per feature: rows repeat, as in a saturated layer
    return rng.integers(0, 4, size=(n, N_FEATURES)).astype(np.float32)


def feed(rows: np.ndarray, labels: np.ndarray, lo: int, hi: int) -> BundleStream:
    stream = BundleStream(layer="layer", weight_amplitude=1.0)
    for start in range(lo, hi, BATCH):
        stop = min(start + BATCH, hi)
        stream.update(rows[start:stop], labels[start:stop])
    return stream


def one_layer(rows: np.ndarray, labels: np.ndarray, n_shards: int, repeats: int) -> dict:
    n = rows.shape[0]
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    best: dict[str, float] = {}

    def keep(key: str, seconds: float) -> None:
        best[key] = min(best.get(key, np.inf), seconds)

    for _ in range(repeats):  # interleaved: the pass, then the shards, on the same load
        start = time.perf_counter()
        stream = feed(rows, labels, 0, n)
        middle = time.perf_counter()
        single = stream.result()
        keep("pass", time.perf_counter() - start)
        keep("pass_result", time.perf_counter() - middle)

        start = time.perf_counter()
        shards = [feed(rows, labels, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        keep("shards", time.perf_counter() - start)
        start = time.perf_counter()
        travelled = [pickle.loads(pickle.dumps(stream)) for stream in shards]
        keep("pickle", time.perf_counter() - start)
        start = time.perf_counter()
        merged = merge_streams(travelled)
        keep("merge", time.perf_counter() - start)
        start = time.perf_counter()
        result = merged.result()
        keep("result", time.perf_counter() - start)
        assert np.array_equal(result.bundle_ids, single.bundle_ids)
        assert result.entropy == single.entropy and result.n_bundles == single.n_bundles
    best["bytes"] = sum(len(pickle.dumps(stream)) for stream in shards)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16k samples x 5 layers")
    parser.add_argument("--n-samples", type=int, default=128 * 1024)
    parser.add_argument("--n-layers", type=int, default=50)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, n_layers = (16 * 1024, 5) if args.quick else (args.n_samples, args.n_layers)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    feed(layer_rows(rng, 2 * BATCH), labels, 0, 2 * BATCH).result()  # compile the kernels

    totals: dict[str, float] = {}
    for _ in range(n_layers):
        rows = layer_rows(rng, n)  # one layer at a time: memory stays one layer
        for key, value in one_layer(rows, labels, args.shards, args.repeats).items():
            totals[key] = totals.get(key, 0.0) + value

    driver = totals["pickle"] + totals["merge"] + totals["result"]
    print(f"{n} samples x {n_layers} layers x {N_FEATURES} float32, {args.shards} shards, "
          f"best of {args.repeats} per layer (sums over layers)")
    print(f"  one streaming pass (update + result)   {totals['pass']:8.3f} s   1.00x")
    print(f"    of which result()                    {totals['pass_result']:8.3f} s   "
          f"{totals['pass_result'] / totals['pass']:.3f}x")
    print(f"  shards fingerprinted (all, serially)   {totals['shards']:8.3f} s   "
          f"{totals['shards'] / totals['pass']:.2f}x  (spread over the workers)")
    print(f"  driver: pickle round trip              {totals['pickle']:8.3f} s   "
          f"{totals['pickle'] / totals['pass']:.3f}x")
    print(f"  driver: merge_streams                  {totals['merge']:8.3f} s   "
          f"{totals['merge'] / totals['pass']:.4f}x")
    print(f"  driver: result() of the merged stream  {totals['result']:8.3f} s   "
          f"{totals['result'] / totals['pass']:.3f}x")
    print(f"  driver total                           {driver:8.3f} s   "
          f"{driver / totals['pass']:.3f}x of the pass")
    extra = driver - totals["pass_result"]
    print(f"  merge overhead (driver total - the pass's own result()) "
          f"{extra:8.3f} s   {extra / totals['pass']:.3f}x of the pass")
    print(f"  state that travels: {totals['bytes'] / 2**20:.1f} MiB "
          f"({totals['bytes'] / (n * n_layers):.1f} B per sample and layer; the activations: "
          f"{N_FEATURES * 4} B)")


if __name__ == "__main__":
    main()
