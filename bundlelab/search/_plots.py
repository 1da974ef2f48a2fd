"""Figures of a search: gate probabilities on the graph, the search log, the Pareto front."""

from __future__ import annotations

import numpy as np

from ..plotting import _pyplot, save_figure
from ._graph import GatedGraph


def _finish(figure, path):
    """Save to ``path`` and release the figure (searches draw many); without a path, return it."""
    if path is None:
        return figure
    save_figure(figure, path)
    _pyplot().close(figure)
    return None


def _layout(graph: GatedGraph) -> np.ndarray:
    """(x, y) per node: x the longest-path depth from the input, y the rank within a depth."""
    depth = np.zeros(graph.n_nodes, dtype=int)
    for v in range(graph.n_nodes):
        for e in graph.in_edges[v]:
            depth[v] = max(depth[v], depth[graph.sources[e]] + 1)
    position = np.zeros((graph.n_nodes, 2))
    for d in np.unique(depth):
        members = np.flatnonzero(depth == d)
        position[members, 0] = d
        position[members, 1] = np.arange(len(members)) - (len(members) - 1) / 2
    return position


def plot_gates(graph: GatedGraph, probabilities: np.ndarray, path=None):
    """The super-network with each gated edge coloured by its probability ``sigmoid(gamma)``
    (always-on edges grey, dashed when a gate below 0.5 drops them from the architecture)."""
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    position = _layout(graph)
    width = max(6.0, 0.35 * position[:, 0].max())
    height = max(3.0, 0.5 * (np.ptp(position[:, 1]) + 1))
    figure, ax = plt.subplots(figsize=(min(width, 30), min(height, 12)))
    segments = np.stack([position[graph.sources], position[graph.targets]], axis=1)
    gated = graph.edge_gate >= 0
    ax.add_collection(LineCollection(segments[~gated], colors="0.75", linewidths=0.8, zorder=1))
    edge_p = np.asarray(probabilities)[graph.edge_gate[gated]]
    lines = LineCollection(segments[gated], cmap="viridis", linewidths=1.6, zorder=2)
    lines.set_array(edge_p)
    lines.set_clim(0, 1)
    lines.set_linestyles(["solid" if p > 0.5 else "dotted" for p in edge_p])
    ax.add_collection(lines)
    ax.scatter(position[:, 0], position[:, 1], s=12, c="black", zorder=3)
    figure.colorbar(lines, ax=ax, label="gate probability σ(γ) (dotted: off, p ≤ 0.5)")
    ax.set_title(f"{graph.spec.name}: {int((np.asarray(probabilities) > 0.5).sum())} of "
                 f"{graph.n_gates} gates on")
    ax.set_xlabel("depth (longest path from the input)")
    ax.set_yticks([])
    ax.autoscale()
    figure.tight_layout()
    return _finish(figure, path)


def plot_search_log(history: list, search, path=None):
    """Validation accuracy, the deterministic architecture's cost and the budget per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    top.plot(epochs, [r["validation_accuracy"] for r in history], label="validation accuracy")
    top.plot(epochs, [r["train_accuracy"] for r in history], label="training accuracy", alpha=0.6)
    top.set_ylabel("accuracy")
    top.legend()
    costs = [np.nan if r["cost"] is None else r["cost"] for r in history]
    bottom.plot(epochs, costs, label="deterministic architecture")
    sampled = [np.nan if r["sampled_cost_mean"] is None else r["sampled_cost_mean"] for r in history]
    bottom.plot(epochs, sampled, label="sampled (mean)", alpha=0.6)
    bottom.axhline(search.budget, color="red", linestyle="--", label="budget")
    if search.warmup_epochs:
        for ax in (top, bottom):
            ax.axvspan(0.5, search.warmup_epochs + 0.5, color="0.92", zorder=0)
    bottom.set_ylabel(search.cost)
    bottom.set_xlabel("epoch (grey: warm-up)")
    bottom.legend()
    figure.tight_layout()
    return _finish(figure, path)


def plot_front(points: list, family: list, *, cost: str, path=None):
    """Test accuracy against cost: every searched architecture, its Pareto front (chosen on
    validation accuracy) and the plain family it was drawn from."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 4.5))
    if family:
        fam = sorted(family, key=lambda r: r["cost"])
        ax.plot([r["cost"] for r in fam], [100 * r["test_accuracy"] for r in fam], "s--",
                color="tab:grey", label="plain family")
        for r in fam:
            ax.annotate(r["name"], (r["cost"], 100 * r["test_accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    ax.scatter([r["cost"] for r in points], [100 * r["test_accuracy"] for r in points],
               color="tab:blue", alpha=0.5, label="searched")
    front = sorted((r for r in points if r.get("pareto")), key=lambda r: r["cost"])
    ax.plot([r["cost"] for r in front], [100 * r["test_accuracy"] for r in front], "o-",
            color="tab:blue", label="Pareto front (validation)")
    ax.set_xlabel(cost)
    ax.set_ylabel("test accuracy [%]")
    ax.legend()
    figure.tight_layout()
    return _finish(figure, path)
