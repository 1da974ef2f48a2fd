"""Figures: bundle entropy per layer, and H^l(t) over training as a heatmap (matplotlib, lazy)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._atomic import give_default_mode
from ._errors import BundleLabError, require


def _pyplot():
    """matplotlib's pyplot (headless when there is no display), or a MissingDependencyError
    naming ``pip install 'bundlelab[plot]'``."""
    matplotlib = require("matplotlib", purpose="plotting", extra="plot")
    if not os.environ.get("DISPLAY") and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    return require("matplotlib.pyplot", purpose="plotting", extra="plot")


def save_figure(figure, path) -> None:
    """Save a figure as PNG atomically (temp file beside ``path``, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    give_default_mode(tmp)
    try:
        figure.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_report(report, path=None, ax=None):
    """Bar chart of bundle entropy per layer; ln(N_c) dashed; first conflicting layer in red."""
    plt = _pyplot()
    if ax is None:
        width = max(6.0, 0.35 * len(report) + 2.0)
        _, ax = plt.subplots(figsize=(width, 3.6))
    names = report.names
    entropies = [result.entropy for result in report]
    first = report.first_conflicting
    colors = ["#c0392b" if r.is_conflicting else "#2e86c1" for r in report]
    ax.bar(range(len(names)), entropies, color=colors)
    if len(report):
        ceiling = max(result.max_entropy for result in report)
        ax.axhline(ceiling, linestyle="--", color="grey", linewidth=1)
        ax.text(len(names) - 0.5, ceiling, " ln(N_c)", va="bottom", ha="right", color="grey")
    if first is not None:
        index = names.index(first.layer)
        ax.axvline(index - 0.5, color="#c0392b", linewidth=1, linestyle=":")
        ax.set_title(f"Bundle entropy per layer (first conflicting layer: {first.layer})")
    else:
        ax.set_title("Bundle entropy per layer (no conflicting layer)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("bundle entropy $H^l$ (nats)")
    ax.set_xlabel("layer")
    if path is not None:
        save_figure(ax.figure, path)
    return ax


def plot_tracker(tracker, path=None, ax=None):
    """Heatmap of ``H^l(t)``: one row per layer, one column per recorded step."""
    plt = _pyplot()
    if not tracker.reports:
        raise BundleLabError("nothing to plot: the tracker has no recorded step")
    matrix = tracker.entropy_over_time().T  # layers x steps
    names = tracker.layer_names
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.3 * matrix.shape[1] + 3), max(3.0, 0.3 * len(names) + 1)))
    ceiling = max(result.max_entropy for result in tracker.reports[0]) or 1.0
    image = ax.imshow(matrix, aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=ceiling,
                      interpolation="nearest")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    step_ticks = range(0, len(tracker.steps), max(1, len(tracker.steps) // 10))
    ax.set_xticks(list(step_ticks))
    ax.set_xticklabels([str(tracker.steps[i]) for i in step_ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel("layer")
    ax.set_title("Bundle entropy $H^l(t)$")
    ax.figure.colorbar(image, ax=ax, label="nats")
    if path is not None:
        save_figure(ax.figure, path)
    return ax
