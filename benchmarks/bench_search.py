"""Speed of the search's per-batch bookkeeping, against plain per-example baselines.

Every step of a budgeted search computes, for each example of the batch, its real
architecture (nodes on an input-to-output path of on edges) and its cost.  bundlelab does it
with two vectorised sweeps over the edges for the whole batch (O(edges) numpy operations);
the baseline walks each example's graph with Python sets, one example at a time, as a
straightforward implementation would.  Both are run here side by side, on the paper's two
super-networks, and checked to agree.

    python benchmarks/bench_search.py [--batch 128] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bundlelab.search import GatedGraph, conv_fabric, get_cost, resnet_fabric


def per_example_baseline(graph: GatedGraph, gates: np.ndarray) -> np.ndarray:
    """Reachability with Python sets, one example at a time."""
    alive = np.zeros((len(gates), graph.n_nodes), dtype=bool)
    edges = list(zip(graph.sources.tolist(), graph.targets.tolist(), graph.edge_gate.tolist()))
    for b, row in enumerate(gates):
        on = [(u, v) for u, v, g in edges if g < 0 or row[g]]
        forward, backward = {graph.input}, {graph.output}
        for u, v in on:  # edges are in topological order of their targets
            if u in forward:
                forward.add(v)
        for u, v in reversed(on):
            if v in backward:
                backward.add(u)
        alive[b, sorted(forward & backward)] = True
    return alive


def seconds(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, median of {args.repeat}")
    print(f"{'super-network':<28} {'nodes':>5} {'edges':>5} {'baseline':>10} {'bundlelab':>10} "
          f"{'speed-up':>8}   (+ flops cost, parallel:4 cost)")
    for spec in (resnet_fabric(18), conv_fabric(8, channels=128)):
        graph = GatedGraph(spec)
        gates = rng.random((args.batch, graph.n_gates)) < 0.9
        ours, _ = graph.real_architecture(gates)
        assert np.array_equal(ours, per_example_baseline(graph, gates))
        base = seconds(lambda: per_example_baseline(graph, gates), args.repeat)
        fast = seconds(lambda: graph.real_architecture(gates), args.repeat)
        alive, live = graph.real_architecture(gates)
        flops = seconds(lambda: get_cost("flops")(graph, alive, live), args.repeat)
        rounds = seconds(lambda: get_cost("parallel:4")(graph, alive, live), 1)
        print(f"{spec.name:<28} {graph.n_nodes:>5} {graph.n_edges:>5} {base * 1e3:>8.2f}ms "
              f"{fast * 1e3:>8.2f}ms {base / fast:>7.1f}x   (+ {flops * 1e3:.3f} ms, "
              f"{rounds * 1e3:.1f} ms first time)")


if __name__ == "__main__":
    main()
