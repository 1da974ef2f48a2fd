"""H^l(t): bundle entropy per layer recorded at several training steps."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Mapping

import numpy as np

from ._atomic import atomic_write_text
from ._errors import BundleLabError
from ._validation import check_int, check_optional_int, checked_keywords
from ._provenance import check_sources
from .bundles import BundleOptions, analyze_layers, layer_items
from .report import BundleReport


class BundleTracker:
    """Record bundle entropy and bundle counts per layer over training.

    The paper's *bundle entropy* ``H^l`` of a layer is the average of ``H^l(t)`` over the
    recorded steps (:meth:`time_averaged`).

    Parameters
    ----------
    n_classes : int, optional
        ``N_c`` for every step; inferred from each step's labels when omitted.
    sources : mapping of str to str, optional
        Where ``learning_rate``, ``batch_size``, ``weight_amplitude`` and ``update_format``
        came from (e.g. ``{"learning_rate": "optimizer", "batch_size": "train loader"}``), for
        every step's ``params["sources"]`` (see :func:`bundlelab.analyze_layers`).
    **options
        Keywords of :func:`bundlelab.find_bundles` used for every step (mode, learning_rate,
        batch_size, ...); checked here, so a misspelt one fails at construction.

    Examples
    --------
    >>> import numpy as np
    >>> tracker = BundleTracker()
    >>> labels = [0, 1, 0, 1]
    >>> tracker.record(0, {"fc1": np.zeros((4, 3), np.float32)}, labels)
    BundleReport(1 layers, first conflicting layer: fc1)
    >>> _ = tracker.record(1, {"fc1": np.eye(4, dtype=np.float32)}, labels)
    >>> round(tracker.time_averaged()["fc1"], 4)  # (ln 2 + 0) / 2
    0.3466
    """

    @checked_keywords
    def __init__(
        self, *, n_classes: int | None = None, sources: Mapping[str, str] | None = None,
        **options,
    ):
        # validated now: a misspelt or bad option fails here, not at the first record()
        checked = BundleOptions.from_keywords(
            "BundleTracker()", options, also=("n_classes", "sources")
        )
        self.options: dict[str, Any] = {name: getattr(checked, name) for name in options}
        if n_classes is not None:
            self.options["n_classes"] = check_optional_int("n_classes", n_classes, low=1)
        if sources is not None:
            self.options["sources"] = check_sources(sources)
        self.steps: list[int] = []
        self.reports: list[BundleReport] = []

    @checked_keywords
    def record(
        self, step: int, layers: Mapping[str, Any] | BundleReport, labels=None
    ) -> BundleReport:
        """Add the bundles of every layer at training ``step``.

        Parameters
        ----------
        step : int
            The training step ``t`` of ``H^l(t)`` (bundlelab's loops use epochs completed).
        layers : BundleReport, mapping of str -> array, or sequence of (name, array) pairs
            A finished report, or layer name -> activations of shape (n_samples, ...).
        labels : array-like of shape (n_samples,), optional
            Class label per sample; required when ``layers`` holds activations.

        Returns
        -------
        BundleReport
            The step's report.
        """
        step = check_int("step", step)
        if isinstance(layers, BundleReport):
            report = layers
        else:
            layers = layer_items(layers)  # a BundleReport, a mapping or pairs; else one line
            if labels is None:
                raise BundleLabError("record() needs labels when given activations")
            report = analyze_layers(layers, labels, **self.options)
        if self.reports and report.names != self.reports[0].names:
            raise BundleLabError(
                f"step {step} has layers {report.names}, earlier steps had {self.reports[0].names}"
            )
        self.steps.append(step)
        self.reports.append(report)
        return report

    @property
    def layer_names(self) -> list[str]:
        """Names of the tracked layers."""
        return self.reports[0].names if self.reports else []

    def _matrix(self, attribute: str) -> np.ndarray:
        return np.array([[getattr(r, attribute) for r in report] for report in self.reports], dtype=float)

    def entropy_over_time(self) -> np.ndarray:
        """Array of shape (n_steps, n_layers): ``H^l(t)``."""
        return self._matrix("entropy")

    def bundles_over_time(self) -> np.ndarray:
        """Array of shape (n_steps, n_layers): number of bundles."""
        return self._matrix("n_bundles")

    def time_averaged(self) -> dict[str, float]:
        """The bundle entropy ``H^l``: ``H^l(t)`` averaged over the recorded steps."""
        if not self.reports:
            raise BundleLabError("no step was recorded yet")
        means = self.entropy_over_time().mean(axis=0)
        return dict(zip(self.layer_names, means.tolist()))

    def to_records(self) -> list[dict[str, Any]]:
        """One record per (step, layer) with the report fields."""
        return [
            {"step": step, **result.to_record()}
            for step, report in zip(self.steps, self.reports)
            for result in report
        ]

    @checked_keywords
    def to_json(self, path=None) -> str:
        """History as JSON (schema ``bundlelab.tracker/1``).

        Parameters
        ----------
        path : path-like, optional
            Also write the text there, atomically.

        Returns
        -------
        str
        """
        text = json.dumps(
            {
                "schema": "bundlelab.tracker/1",
                "params": self.reports[0].params if self.reports else {},
                "steps": self.steps,
                "layers": self.layer_names,
                "time_averaged_entropy": self.time_averaged() if self.reports else {},
                "records": self.to_records(),
            },
            indent=2,
        ) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @checked_keywords
    def to_csv(self, path=None) -> str:
        """History as CSV, one row per (step, layer).

        Parameters
        ----------
        path : path-like, optional
            Also write the text there, atomically.

        Returns
        -------
        str
        """
        records = self.to_records()
        buffer = io.StringIO()
        if records:
            writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    @checked_keywords
    def plot(self, path=None, *, ax=None):
        """Heatmap of ``H^l(t)``: layers on the y axis, steps on the x axis (needs matplotlib:
        ``pip install 'bundlelab[plot]'``).

        Parameters
        ----------
        path : path-like, optional
            Also save the figure there as PNG, atomically.
        ax : matplotlib Axes, optional
            Draw into these axes instead of a new figure.

        Returns
        -------
        matplotlib Axes
        """
        from .plotting import plot_tracker

        return plot_tracker(self, path=path, ax=ax)
