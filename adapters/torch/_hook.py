"""BundleHook: record the bundles during a plain training loop, optionally to TensorBoard."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..._errors import BundleLabError, require
from ..._validation import check_int, check_keywords, check_positive_int, checked_keywords
from ...bundles import BundleOptions
from ...report import BundleReport
from ...tracker import BundleTracker
from ._audit import CORE_OPTIONS, _measure
from ._data import _DictKeys, _training_subset
from ._forward import _check_model


class BundleHook:
    """Record ``H^l(t)`` and the number of bundles per layer during a plain PyTorch loop.

    Call it at the end of every epoch: ``hook()`` counts the epochs itself (t = 1, 2, ...),
    ``hook(t)`` takes t, the number of epochs completed, explicitly (and goes on counting from
    there).  It measures when t is a multiple of ``every`` (``every=2``: t = 2, 4, ...), as
    :func:`bundlelab.training.fit` and the Keras callback do, always on the same training
    samples (chosen once, at construction).  ``hook.step(global_step)`` measures per
    optimisation step instead: t is then the step, a different unit (do not mix the two in one
    hook).  The learning rate is read from ``optimizer`` at every measurement, so schedules are
    followed.

    Parameters
    ----------
    model : torch.nn.Module
    data : tensor, array, (inputs, labels), Dataset or DataLoader
        The TRAINING set, as for :func:`audit`; the samples are drawn once, here.
    labels : array-like of shape (N,), optional
        As for :func:`audit`.
    every : int, default=1
        Measure when t is a multiple of ``every``.
    layers, n_samples, seed, optimizer, train_loader, learning_rate, batch_size,
    weight_amplitude, mode, inference_batch_size, device, input_key, label_key
        As for :func:`audit` (the default selection is announced once, at the first
        measurement).
    tensorboard : SummaryWriter or path, optional
        Also write the scalars ``{tag}/entropy/{layer}`` and ``{tag}/n_bundles/{layer}``
        (``:`` in a layer name becomes ``_``) under step t: to a writer (any object with
        ``add_scalar``), or to a new ``torch.utils.tensorboard.SummaryWriter`` on this log
        directory (needs tensorboard).
    tag : str, default='bundles'
    **options
        gamma, epsilon, nonfinite, update_format: see :func:`bundlelab.find_bundles`.

    Attributes
    ----------
    tracker : bundlelab.BundleTracker
        The history: ``time_averaged()`` is the paper's ``H^l``; ``to_json``/``to_csv`` export.
    epochs : int
        The last t (epochs completed) the hook was called with, 0 before the first call.

    Examples
    --------
    >>> hook = BundleHook(model, x, y, optimizer=opt, train_loader=loader)  # doctest: +SKIP
    >>> for epoch in range(epochs):                                      # doctest: +SKIP
    ...     train_one_epoch(model, loader, opt)
    ...     hook()                                  # t = epoch + 1
    >>> hook.tracker.time_averaged()                                     # doctest: +SKIP
    """

    @checked_keywords
    def __init__(
        self,
        model: nn.Module,
        data: Any,
        labels: Any = None,
        *,
        every: int = 1,
        layers: Any = None,
        n_samples: int | None = 2048,
        seed: int = 0,
        optimizer: Any = None,
        train_loader: Any = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        weight_amplitude: str | float = "model",
        mode: str = "resolution",
        inference_batch_size: int = 256,
        device: Any = None,
        tensorboard: Any = None,
        tag: str = "bundles",
        input_key: str | None = None,
        label_key: str = "labels",
        **options,
    ):
        check_keywords("BundleHook()", options, CORE_OPTIONS)
        _check_model(model)
        BundleOptions(mode=mode, **options)  # bad options fail here, not epochs later
        self.model = model
        self.every = check_positive_int("every", every)
        self.tag = str(tag)
        self.epochs = 0
        self._measure_options = dict(
            layers=layers, optimizer=optimizer, train_loader=train_loader,
            learning_rate=learning_rate, batch_size=batch_size,
            weight_amplitude=weight_amplitude, mode=mode,
            inference_batch_size=check_positive_int("inference_batch_size", inference_batch_size),
            device=device, progress=False, options=options,
        )
        keys = _DictKeys(input_key, label_key)
        self._measure_options.update(keys=keys, announce_selection=layers is None)
        self._subset = _training_subset(data, labels, n_samples=n_samples, seed=seed, model=model,
                                        keys=keys)
        self.tracker = BundleTracker()
        self._writer, self._owns_writer = _summary_writer(tensorboard)

    def __call__(self, t: int | None = None) -> BundleReport | None:
        """End of an epoch: measure when t (the epochs completed; default: one more than the
        last call's) is a multiple of ``every``; the report, or None."""
        self.epochs = self.epochs + 1 if t is None else check_int("t", t, low=0)
        return self.step(self.epochs)

    def step(self, global_step: int) -> BundleReport | None:
        """Measure at ``global_step`` when it is a multiple of ``every``; the report or None."""
        global_step = check_int("global_step", global_step, low=0)
        if global_step % self.every:
            return None
        return self.record(global_step)

    def record(self, step: int) -> BundleReport:
        """Measure now and record the report under ``step``."""
        step = check_int("step", step, low=0)
        report = _measure(self.model, self._subset, **self._measure_options)
        self._measure_options["announce_selection"] = False  # once per hook, not per epoch
        self.tracker.record(step, report)
        if self._writer is not None:
            for tag, value in _scalars(report, self.tag).items():
                self._writer.add_scalar(tag, value, step)
            if hasattr(self._writer, "flush"):
                self._writer.flush()
        return report

    def close(self) -> None:
        """Close the TensorBoard writer this hook opened (not one it was given)."""
        if self._owns_writer and self._writer is not None:
            self._writer.close()
            self._writer = None


def _scalars(report: BundleReport, tag: str) -> dict[str, float]:
    """TensorBoard/logger scalars of one step (``:`` is not allowed in a tag)."""
    scalars = {}
    for result in report:
        layer = result.layer.replace(":", "_")
        scalars[f"{tag}/entropy/{layer}"] = result.entropy
        scalars[f"{tag}/n_bundles/{layer}"] = result.n_bundles
    return scalars


def _summary_writer(tensorboard: Any) -> tuple[Any, bool]:
    """(writer, whether this module opened it)."""
    if tensorboard is None:
        return None, False
    if hasattr(tensorboard, "add_scalar"):
        return tensorboard, False
    if not isinstance(tensorboard, (str, os.PathLike)):
        raise BundleLabError(
            "The 'tensorboard' parameter must be a SummaryWriter or a log directory. "
            f"Got {type(tensorboard).__name__} instead."
        )
    require("tensorboard", purpose="BundleHook(tensorboard=...)")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=os.fspath(tensorboard)), True
