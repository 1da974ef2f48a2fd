"""One training run of a spec: epochs, evaluation, H^l(t), checkpoints and resuming.

A run lives in a folder (``directory``)::

    run.json                  state: format, bundlelab version, backend, spec, config,
                              epochs done, the checkpoint's file name, the history per epoch
    spec.yaml                 the spec, for people and for `bundlelab audit`
    checkpoint-0007.pt        weights and optimizer state after the last finished epoch
    result.json, entropy.png  written when the run ends
    .lock                     held by the process working in the folder

Each epoch writes its checkpoint under a new name, then replaces ``run.json`` atomically, and
only then removes the previous checkpoint (:class:`RunFolder`): a crash at any point leaves
``run.json`` naming a complete checkpoint of the epochs it lists, so a restart loses at most
the epoch in progress; the next run of the folder removes what a killed one left half-written.
A folder that cannot be written is refused before the first epoch, except that a finished run
in it is still read and reported.  The shuffling and augmentation of epoch ``e`` are seeded by
``(seed, e)``, so a resumed run trains on exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from .._errors import BundleLabError
from .._validation import check_bool, check_instance, checked_keywords
from ..report import BundleReport, LayerResult
from ..spec import Spec, dumps, layer_count, measured_layers, parameter_count, to_dict
from ..tracker import BundleTracker
from ._augment import augment_batch
from ._backend import Backend, get_backend
from ._config import TrainConfig
from ._folder import HoldsRunFolder, RunFolder, draw_optional
from ._progress import batch_progress, resolve_progress

RUN_FORMAT = "bundlelab.run/1"


class TrainingDiverged(BundleLabError):
    """A run stopped because it diverged (``TrainConfig.on_divergence="stop"``); the message
    names the epoch and the layer."""


class DivergenceWarning(UserWarning):
    """A run diverged and trains on (``TrainConfig.on_divergence="warn"``)."""
RUN_FILE = "run.json"


@dataclass
class EpochRecord:
    """What one epoch gave.

    Attributes
    ----------
    epoch : int
        1-based.
    train_loss, train_accuracy : float
        Over the epoch's batches, in training mode, as they were seen.
    test_loss, test_accuracy : float
        On the test set after the epoch.
    seconds : float
        Wall time of the epoch (training, evaluation, measurement).
    report : BundleReport or None
        The bundles of every measured layer, or None when the epoch was not measured (see
        ``TrainConfig.measure_every``).
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    report: BundleReport | None = None

    @property
    def first_conflicting(self) -> LayerResult | None:
        """The first measured layer with a conflicting bundle (its ``.layer`` is the name), or
        None (also when the epoch was not measured)."""
        return None if self.report is None else self.report.first_conflicting

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in
                ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")}
        data["report"] = None if self.report is None else self.report.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        report = data.get("report")
        return cls(**{**data, "report": None if report is None else BundleReport.from_dict(report)})


@dataclass
class TrainingResult:
    """A finished run, with the figures of the paper's Table 1.

    Attributes
    ----------
    spec : Spec
    config : TrainConfig
    history : list of EpochRecord
    test_accuracy : float
        Mean test accuracy over the last ``config.average_last`` epochs (the paper: 5).
    layers : int
        Weighted layers, as the paper counts them (:func:`bundlelab.spec.layer_count`).
    parameters : int
    checkpoint_mb : float
        Size of the weights-only checkpoint file, in MB (10^6 bytes), the paper's memory.
    ms_per_step : float
        Inference time of one batch of ``config.batch_size`` test samples, in milliseconds.
    directory : str or None
        The run folder.
    """

    spec: Spec
    config: TrainConfig
    history: list
    test_accuracy: float
    layers: int
    parameters: int
    checkpoint_mb: float
    ms_per_step: float
    directory: str | None = None

    @property
    def bundle_entropy(self) -> dict[str, float]:
        """Time-averaged bundle entropy ``H^l`` of each measured layer over the run."""
        tracker = self.tracker()
        # a net without measured layers (an auto-tune that pruned them all) has none
        return tracker.time_averaged() if tracker.steps else {}

    @property
    def final_entropy(self) -> float:
        """``H^L(t)`` of the last measured layer at the last measurement (0.0 if none)."""
        reports = [r.report for r in self.history if r.report is not None and len(r.report)]
        return float(reports[-1][-1].entropy) if reports else 0.0

    def tracker(self) -> BundleTracker:
        """The measured epochs as a :class:`bundlelab.BundleTracker` (``H^l(t)``)."""
        tracker = BundleTracker()
        for record in self.history:
            if record.report is not None and len(record.report):
                tracker.record(record.epoch, record.report)
        return tracker

    def summary(self) -> dict[str, Any]:
        """The headline figures as plain JSON-ready data."""
        return {
            "spec": self.spec.name, "layers": self.layers, "parameters": self.parameters,
            "test_accuracy": self.test_accuracy, "checkpoint_mb": self.checkpoint_mb,
            "ms_per_step": self.ms_per_step, "epochs": len(self.history),
            "final_train_accuracy": self.history[-1].train_accuracy if self.history else None,
            "final_entropy": self.final_entropy,
            "bundle_entropy": self.bundle_entropy,
        }


EpochRecord.__init__ = checked_keywords(EpochRecord.__init__)  # type: ignore[method-assign]
TrainingResult.__init__ = checked_keywords(TrainingResult.__init__)  # type: ignore[method-assign]


@checked_keywords
def training_batches(data: Any, config: TrainConfig,
                     epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The shuffled, augmented batches ``(x, y)`` of ``data``'s training set in ``epoch``.

    Seeded by ``(config.seed, epoch)``: the same epoch always gives the same batches, so a
    resumed run sees exactly what an uninterrupted one would have.

    Parameters
    ----------
    data : bundlelab.datasets.Dataset
    config : TrainConfig
        Its ``seed``, ``batch_size`` and augmentation options count.
    epoch : int
        1-based.

    Yields
    ------
    (ndarray, ndarray)
        A batch of inputs (float32) and of labels.
    """
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(data.y_train))
    crop = config.crop_for(tuple(data.x_train.shape[1:]))
    flip = config.augment and (data.flip if config.flip is None else config.flip)
    brightness = config.brightness if config.augment else 0.0
    # an incomplete last batch is dropped when asked: a handful of samples through
    # batch-norm (3 of them on the digits at 64 per batch) gives statistics and gradients
    # that undo the epoch (see TrainConfig.drop_last)
    stop = len(order)
    if config.drop_last and stop >= config.batch_size:
        stop -= stop % config.batch_size
    for start in range(0, stop, config.batch_size):
        index = np.sort(order[start:start + config.batch_size])
        x = augment_batch(data.x_train[index], rng, crop_padding=crop, flip=flip,
                          brightness=brightness)
        yield x, data.y_train[index]


@checked_keywords
def check_data(spec: Spec, data: Any) -> None:
    """Raise a one-line error when ``data`` cannot train ``spec`` (shapes, classes).

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    data : bundlelab.datasets.Dataset
    """
    for name in ("x_train", "y_train", "x_test", "y_test"):
        if not hasattr(data, name):
            raise BundleLabError(
                "The 'data' parameter must be a bundlelab.datasets.Dataset (x_train, y_train, "
                f"x_test, y_test); got {type(data).__name__} without {name!r}"
            )
    shape = tuple(data.x_train.shape[1:])
    if shape != tuple(spec.input_shape):
        raise BundleLabError(
            f"spec {spec.name!r} takes inputs of shape {tuple(spec.input_shape)} but the data has "
            f"{shape}; build the spec with input_shape={shape} (presets in the CLI take the "
            "data's shape)"
        )
    top = int(max(data.y_train.max(initial=0), data.y_test.max(initial=0)))
    if top >= spec.n_classes:
        raise BundleLabError(
            f"spec {spec.name!r} has n_classes={spec.n_classes} but the data has label {top}; "
            f"build the spec with n_classes={top + 1}"
        )


class Training(HoldsRunFolder):
    """A resumable training run of ``spec`` on ``data`` through a backend.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    data : bundlelab.datasets.Dataset
        Standardised ``x_train, y_train, x_test, y_test``; ``data.flip`` says whether flips
        are a valid augmentation.
    backend : str or Backend, default="torch"
    config : TrainConfig, optional
    directory : path, optional
        The run folder.  If it holds a run of the same spec, config and backend, training
        resumes after its last finished epoch; only the options of
        :data:`bundlelab.training.RESUMABLE_OPTIONS` may differ (``epochs`` may grow,
        ``device`` may change), anything else is an error.  The folder is locked from here
        until :meth:`close` (or the end of a ``with`` block, or of the process): another
        process on it stops with an error naming this one.  None: nothing is written and
        nothing can resume.
    progress : bool or None, default=None
        Progress bars and a line per epoch on stderr; None: when stderr is a terminal.

    Examples
    --------
    >>> with Training(spec, data, config=TrainConfig(epochs=3), directory="runs/a") as run:  # doctest: +SKIP
    ...     result = run.run()                                                          # doctest: +SKIP
    """

    @checked_keywords
    def __init__(self, spec: Spec, data: Any, *, backend: str | Backend = "torch",
                 config: TrainConfig | None = None, directory: str | os.PathLike | None = None,
                 progress: bool | None = None) -> None:
        check_instance("spec", spec, Spec, "a bundlelab.spec.Spec")
        config = TrainConfig() if config is None else config
        check_instance("config", config, TrainConfig, "a TrainConfig")
        check_data(spec, data)
        self.spec, self.data, self.config = spec, data, config
        self.progress = resolve_progress(progress)
        self.backend = get_backend(backend)
        self.directory = None if directory is None else Path(directory)
        self.history: list[EpochRecord] = []
        self._warned = False  # diverged under on_divergence="warn": said once, not measured
        n = len(data.y_train)
        self.measure_index = np.sort(
            np.random.default_rng(config.seed).choice(n, min(n, config.n_samples), replace=False)
        )
        self._measured_samples: tuple[np.ndarray, np.ndarray] | None = None
        self._folder = None
        if directory is not None:
            self._folder = RunFolder(directory, RUN_FILE, RUN_FORMAT,
                                     kind="training run").lock(read_only=True)
        try:
            self.trainee = self.backend.build(spec, config)
            if config.schedule != "constant" and not hasattr(self.trainee, "set_learning_rate"):
                raise BundleLabError(
                    f"the {self.backend.name!r} backend cannot change the learning rate during "
                    f"a run (its trainee has no set_learning_rate), which schedule="
                    f"{config.schedule!r} needs; use schedule='constant'"
                )
            self._resume()
            if not self.writable and not self.finished:
                raise BundleLabError(
                    f"cannot write in {self.directory}, whose run has trained "
                    f"{self.epochs_done} of its {config.epochs} epochs; make the folder "
                    "writable or use another one"
                )
        except BaseException:
            self.close()
            raise

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def writable(self) -> bool:
        """False when the run folder cannot be written (a finished run is still reported)."""
        return self._folder is None or self._folder.writable

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.config.epochs

    # -- one epoch ------------------------------------------------------------------------

    def batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The shuffled, augmented training batches of ``epoch`` (1-based), seeded."""
        return training_batches(self.data, self.config, epoch)

    def train_epoch(self, *, measure: bool | None = None) -> EpochRecord:
        """Train one more epoch, evaluate, measure bundles, checkpoint; return its record.

        ``measure`` forces (True) or skips (False) the bundle measurement; None follows
        ``config.measure_every`` (and always measures the last epoch).
        """
        if self.finished:
            raise BundleLabError(
                f"the run already trained its {self.config.epochs} epochs; raise epochs to go on"
            )
        measure = None if measure is None else check_bool("measure", measure)
        epoch = self.epochs_done + 1
        start = time.perf_counter()
        batches = self._scheduled(epoch, self.batches(epoch))
        with self._progress_bar(epoch) as advance:
            train = self.trainee.train_epoch(advance(batches))
        self._check_divergence(epoch, train["loss"])
        test = self.trainee.evaluate(self.data.x_test, self.data.y_test,
                                     inference_batch_size=max(256, self.config.batch_size))
        if measure is None:
            measure = epoch % self.config.measure_every == 0 or epoch == self.config.epochs
        # a diverged run (on_divergence="warn") has no bundles to measure: its weights may
        # be NaN, which leaves the metric's w undefined
        report = self.measure() if measure and not self._warned else None
        record = EpochRecord(epoch, train["loss"], train["accuracy"], test["loss"],
                             test["accuracy"], time.perf_counter() - start, report)
        self.history.append(record)
        self._save()
        if self.progress:
            self._print_epoch(record)
        return record

    def _scheduled(self, epoch: int, batches: Iterator) -> Iterator:
        """``batches``, each handed out after its step's learning rate was set."""
        if self.config.schedule == "constant":
            yield from batches
            return
        steps = self.config.batches_per_epoch(len(self.data.y_train))
        for step, batch in enumerate(batches):
            self.trainee.set_learning_rate(self.config.learning_rate_at(epoch, step, steps))
            yield batch

    def _check_divergence(self, epoch: int, loss: float) -> None:
        """Stop (or warn once) when the epoch's loss is not finite or a weight or batch-norm
        statistic is not finite or above ``config.divergence_threshold``.

        Checked after the epoch's steps and before its checkpoint, so a stopped run's folder
        keeps the last sound epoch.
        """
        if self._warned:
            return
        largest = getattr(self.trainee, "largest_values", None)
        values = largest() if largest is not None else {}
        limit = self.config.divergence_threshold
        bad = next(((name, v) for name, v in values.items() if not v <= limit), None)
        if math.isfinite(loss) and bad is None:
            return
        where = ("" if bad is None else
                 f"; {'non-finite' if not math.isfinite(bad[1]) else f'{bad[1]:.3g}'} values in "
                 f"layer {bad[0]}")
        line = (f"{self.spec.name} diverged in epoch {epoch}: training loss {loss:.4g}{where} "
                f"(limit {limit:.3g}); lower learning_rate (now {self.config.learning_rate:g}) "
                "or use another optimizer")
        if self.config.on_divergence == "stop":
            raise TrainingDiverged(line)
        self._warned = True
        warnings.warn(line, DivergenceWarning, stacklevel=2)

    def measure(self) -> BundleReport:
        """Bundles of every measured layer on the run's fixed training subset, now."""
        if not measured_layers(self.spec):  # e.g. an auto-tune that pruned every layer
            return BundleReport([], {})
        if self._measured_samples is None:
            # gathered once: the subset is fixed for the run, and a copy of 2048 CIFAR images
            # (25 MB) every epoch is work a plain loop does not do
            index = self.measure_index
            self._measured_samples = (np.ascontiguousarray(self.data.x_train[index]),
                                      self.data.y_train[index])
        x, y = self._measured_samples
        return self.trainee.measure_bundles(
            x, y, learning_rate=self.config.learning_rate, batch_size=self.config.batch_size,
        )

    def run(self) -> TrainingResult:
        """Train the remaining epochs and return the result (also written to the folder)."""
        while not self.finished:
            self.train_epoch()
        return self.result()

    # -- results --------------------------------------------------------------------------

    def result(self) -> TrainingResult:
        """The figures of the run so far: averaged test accuracy, size, speed, entropy."""
        last = self.history[-self.config.average_last:]
        accuracy = statistics.fmean(r.test_accuracy for r in last) if last else float("nan")
        probe = self.data.x_test[: self.config.batch_size]
        seconds = self.trainee.inference_seconds(probe) if len(probe) else float("nan")
        result = TrainingResult(
            spec=self.spec, config=self.config, history=list(self.history),
            test_accuracy=accuracy, layers=layer_count(self.spec),
            parameters=parameter_count(self.spec), checkpoint_mb=self._weights_mb(),
            ms_per_step=seconds * 1e3,
            directory=None if self.directory is None else str(self.directory),
        )
        if self.directory is not None and self.finished and self.writable:
            atomic_write_text(self.directory / "result.json",
                              json.dumps(result.summary(), indent=2) + "\n")
            tracker = result.tracker()
            if tracker.steps:
                draw_optional(lambda: tracker.plot(self.directory / "entropy.png"),
                              f"{self.directory / 'entropy.png'}")
        return result

    def _weights_mb(self) -> float:
        # a hidden name of the folder's own, so a leftover of a killed run is recognisable
        # (and removed by the next run); a folder that cannot be written: the temporary folder
        fd, tmp = tempfile.mkstemp(prefix=".weights-", suffix=self.backend.checkpoint_suffix,
                                   dir=self.directory if self.writable else None)
        os.close(fd)
        try:
            self.trainee.save(tmp, optimizer=False)
            return os.path.getsize(tmp) / 1e6
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- the run folder -------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        """What makes the run, as its folder records it (see :meth:`RunFolder.resume`)."""
        return {"backend": self.backend.name, "spec": to_dict(self.spec),
                "config": self.config.to_dict()}

    def _state(self) -> dict[str, Any]:
        return {**self._options(), "epochs_done": self.epochs_done,
                "history": [r.to_dict() for r in self.history]}

    def _save(self) -> None:
        if self._folder is None:
            return
        self._folder.commit(self.epochs_done, self.backend.checkpoint_suffix, self.trainee.save,
                            self._state())
        self._write_spec()

    def _write_spec(self) -> None:
        """``spec.yaml`` beside the first checkpoint (or on a resume, when a crash lost it)."""
        if self.writable and not (self.directory / "spec.yaml").exists():
            atomic_write_text(self.directory / "spec.yaml", dumps(self.spec, format="yaml"))

    def _resume(self) -> None:
        state = None if self._folder is None else self._folder.resume(
            self._options(), length=self.config.epochs)
        if state is None:
            return
        planned = state["config"].get("epochs") if isinstance(state.get("config"), dict) else None
        if self.config.schedule != "constant" and planned != self.config.epochs:
            # the schedule of the epochs done was laid over the planned length: another
            # length would train on from a learning rate the run never had
            raise BundleLabError(
                f"{self.directory} holds a run whose {self.config.schedule} learning-rate "
                f"schedule was laid over {planned} epochs; resume it with epochs={planned}, or "
                "train with schedule='constant' to be able to lengthen a run"
            )
        history = [_epoch_record(self._folder, i, r) for i, r in enumerate(state["history"])]
        if self._folder.checkpoint_path():
            self.trainee.load(self._folder.checkpoint_path())
        self.history = history
        if history:
            self._write_spec()

    # -- progress -------------------------------------------------------------------------

    def _progress_bar(self, epoch: int):
        total = self.config.batches_per_epoch(len(self.data.y_train))
        return batch_progress(f"{self.spec.name} epoch {epoch}/{self.config.epochs}", total,
                              show=self.progress)

    def _print_epoch(self, record: EpochRecord) -> None:
        from rich.console import Console

        line = (f"{self.spec.name} epoch {record.epoch}/{self.config.epochs}: "
                f"loss {record.train_loss:.4f}, train {record.train_accuracy:.2%}, "
                f"test {record.test_accuracy:.2%}")
        if record.report is not None and len(record.report):
            line += f", H^L {record.report[-1].entropy:.3f}"
            if record.first_conflicting is not None:
                line += f", first conflicting layer {record.first_conflicting.layer}"
        line += f" ({record.seconds:.1f} s)"
        Console(stderr=True, highlight=False).print(line)


_RECORD_NUMBERS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")


def _epoch_record(folder: RunFolder, i: int, data: dict[str, Any]) -> EpochRecord:
    """Epoch ``i + 1``'s record of a run folder's history, each field checked (the folder has
    checked that it is a dict of that epoch)."""
    expected = {"epoch", *_RECORD_NUMBERS, "report"}
    if set(data) != expected:
        raise folder.state_error(f"history[{i}]", "a record of the fields "
                                 + ", ".join(sorted(expected)), sorted(data))
    for name in _RECORD_NUMBERS:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise folder.state_error(f"history[{i}].{name}", "a number", value)
    report = data["report"]
    if report is not None:
        try:
            report = BundleReport.from_dict(report)
        except (BundleLabError, TypeError, ValueError, KeyError, AttributeError, IndexError):
            raise folder.state_error(f"history[{i}].report", "a bundle report or null",
                                     report) from None
    return EpochRecord(**{**data, "report": report})


@checked_keywords
def fit(spec: Spec, data: Any, *, backend: str | Backend = "torch",
        config: TrainConfig | None = None, directory: str | os.PathLike | None = None,
        progress: bool | None = None) -> TrainingResult:
    """Train ``spec`` on ``data`` (resuming from ``directory`` if it holds the same run).

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    data : bundlelab.datasets.Dataset
    backend : str or Backend, default="torch"
    config : TrainConfig, optional
    directory : path, optional
        The run folder, locked while the run trains (see :class:`Training`).
    progress : bool or None, default=None
        Progress bars and a line per epoch on stderr; None: when stderr is a terminal.

    Returns
    -------
    TrainingResult
    """
    with Training(spec, data, backend=backend, config=config, directory=directory,
                  progress=progress) as run:
        return run.run()
