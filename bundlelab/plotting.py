"""Figures: bundle entropy per layer, and H^l(t) over training as a heatmap (matplotlib, lazy).

A figure's size is capped (:data:`MAX_FIGURE_INCHES`) whatever the number of layers or steps:
every layer is still drawn, but past :data:`MAX_LABELS` only every k-th is labelled (and the
first conflicting layer), and the figure says so.  A figure made here to be saved is closed
after saving, so plotting in a loop does not accumulate open figures.
"""

from __future__ import annotations

import os

from ._atomic import atomic_path
from ._errors import BundleLabError, require

#: the largest figure drawn (width, height), in inches at 150 dpi
MAX_FIGURE_INCHES = (24.0, 16.0)
#: layer (or step) labels on an axis; beyond it every k-th is labelled
MAX_LABELS = 60


def _pyplot():
    """matplotlib's pyplot (headless when there is no display), or a MissingDependencyError
    naming ``pip install 'bundlelab[plot]'``."""
    matplotlib = require("matplotlib", purpose="plotting", extra="plot")
    if not os.environ.get("DISPLAY") and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    return require("matplotlib.pyplot", purpose="plotting", extra="plot")


def save_figure(figure, path) -> None:
    """Save a figure as PNG atomically (temp file beside ``path``, then rename; a link's
    target is replaced, a pipe or device written through: :func:`bundlelab._atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=150, bbox_inches="tight", format="png")


def _text(name) -> str:
    """A name as literal figure text: ``$`` would start matplotlib's math mode (and an unbalanced
    one fails the drawing), control characters are shown escaped, long names are cut."""
    text = str(name)
    if len(text) > 60:
        text = text[:57] + "..."
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text.replace("$", r"\$")


def _labelled(n: int, keep: int | None = None) -> list[int]:
    """Positions to label out of ``n``: all up to :data:`MAX_LABELS`, else every k-th (and
    ``keep``)."""
    step = max(1, -(-n // MAX_LABELS))
    positions = set(range(0, n, step))
    if keep is not None:
        positions.add(keep)
    return sorted(positions)


def _finish(ax, path, created: bool):
    if path is not None:
        save_figure(ax.figure, path)
        if created:  # nobody else holds it: an open figure per call would leak in a loop
            _pyplot().close(ax.figure)
    return ax


def plot_report(report, path=None, ax=None):
    """Bar chart of bundle entropy per layer; ln(N_c) dashed; first conflicting layer in red.

    Every layer gets a bar; past :data:`MAX_LABELS` layers only every k-th (and the first
    conflicting one) is labelled, and the figure keeps at most :data:`MAX_FIGURE_INCHES`.
    A figure created here (``ax`` not given) is closed once saved to ``path``.
    """
    plt = _pyplot()
    created = ax is None
    if created:
        width = min(MAX_FIGURE_INCHES[0], max(6.0, 0.35 * len(report) + 2.0))
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
    index = None
    if first is not None:
        index = names.index(first.layer)
        ax.axvline(index - 0.5, color="#c0392b", linewidth=1, linestyle=":")
        ax.set_title(f"Bundle entropy per layer (first conflicting layer: {_text(first.layer)})")
    else:
        ax.set_title("Bundle entropy per layer (no conflicting layer)")
    ticks = _labelled(len(names), index)
    ax.set_xticks(ticks)
    ax.set_xticklabels([_text(names[i]) for i in ticks], rotation=60 if len(ticks) > 6 else 0,
                       ha="right" if len(ticks) > 6 else "center")
    ax.set_ylabel("bundle entropy $H^l$ (nats)")
    ax.set_xlabel("layer" if len(ticks) == len(names) else
                  f"layer ({len(names)} layers, {len(ticks)} labelled)")
    return _finish(ax, path, created)


def plot_tracker(tracker, path=None, ax=None):
    """Heatmap of ``H^l(t)``: one row per layer, one column per recorded step.

    Past :data:`MAX_LABELS` layers only every k-th is labelled, and the figure keeps at most
    :data:`MAX_FIGURE_INCHES`.  A figure created here (``ax`` not given) is closed once saved
    to ``path``.
    """
    plt = _pyplot()
    if not tracker.reports:
        raise BundleLabError("nothing to plot: the tracker has no recorded step")
    matrix = tracker.entropy_over_time().T  # layers x steps
    names = tracker.layer_names
    created = ax is None
    if created:
        size = (min(MAX_FIGURE_INCHES[0], max(6.0, 0.3 * matrix.shape[1] + 3)),
                min(MAX_FIGURE_INCHES[1], max(3.0, 0.3 * len(names) + 1)))
        _, ax = plt.subplots(figsize=size)
    ceiling = max(result.max_entropy for result in tracker.reports[0]) or 1.0
    image = ax.imshow(matrix, aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=ceiling,
                      interpolation="nearest")
    rows = _labelled(len(names))
    ax.set_yticks(rows)
    ax.set_yticklabels([_text(names[i]) for i in rows])
    step_ticks = range(0, len(tracker.steps), max(1, len(tracker.steps) // 10))
    ax.set_xticks(list(step_ticks))
    ax.set_xticklabels([str(tracker.steps[i]) for i in step_ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel("layer" if len(rows) == len(names) else
                  f"layer ({len(names)} layers, {len(rows)} labelled)")
    ax.set_title("Bundle entropy $H^l(t)$")
    ax.figure.colorbar(image, ax=ax, label="nats")
    return _finish(ax, path, created)
