"""The Keras 3 training backend: a spec built by :func:`build_model`, trained one batch at a time
(the :class:`bundlelab.training.Trainee` protocol).

The framework-free loop (:mod:`bundlelab.training`) hands this backend numpy batches it has
already shuffled and augmented; everything here is what needs Keras: the optimizer step
(:func:`make_optimizer`), the inference passes, the checkpoint file and the layer taps.

Checkpoints are Keras' own ``.weights.h5`` files (``model.load_weights`` reads them) with the
spec and the optimizer's name stored as HDF5 attributes, so that a checkpoint of another
architecture is refused before any weight is touched.

Written for and tested on the torch backend.  ``config.device`` is honoured with
:func:`keras.device` around every call (``"auto"``: Keras' own choice, the GPU when there is
one).  The same config and batches train bit for bit alike on the CPU; on a GPU, cuDNN's
convolution kernels are not deterministic by default, so runs agree to rounding only (torch's
global determinism switches are left to the caller).

>>> from bundlelab.training import TrainConfig                          # doctest: +SKIP
>>> from bundlelab.adapters.keras import KerasBackend                   # doctest: +SKIP
>>> trainee = KerasBackend().build(spec, TrainConfig(optimizer="ranger"))  # doctest: +SKIP
>>> trainee.train_epoch([(x_batch, y_batch)])                           # doctest: +SKIP
{'loss': 2.31, 'accuracy': 0.09}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..._errors import BundleLabError
from ..._validation import checked_keywords
from ...report import BundleReport
from ...spec import Spec, dumps, loads, measured_layers
from ._audit import audit
from ._build import build_model
from ._forward import inference_context
from ._import import keras
from ._optim import make_optimizer

#: Keras refuses other suffixes in ``save_weights`` / ``load_weights``
CHECKPOINT_SUFFIX = ".weights.h5"
TIMED_RUNS = 5
# HDF5 attributes of a checkpoint
_SPEC_ATTRIBUTE = "bundlelab_spec"
_OPTIMIZER_ATTRIBUTE = "bundlelab_optimizer"  # "" when the optimizer state was not saved


# -- devices and timing ------------------------------------------------------------------------


def _keras_device(device: str) -> str | None:
    """``config.device`` as :func:`keras.device` takes it (None: Keras' own choice)."""
    if device == "auto":
        return None
    if device.startswith("cuda"):
        if keras.backend.backend() == "torch":
            import torch

            if not torch.cuda.is_available():
                raise BundleLabError(
                    f"device {device!r} was asked for, but torch sees no CUDA device; "
                    "use device='cpu' or 'auto'"
                )
        # Keras' device names say "gpu" on every backend (torch maps it back to "cuda")
        index = device.partition(":")[2] or "0"
        return f"gpu:{index}"
    return device


def _wait_for(output) -> None:
    """Block until ``output`` is computed: GPU work is asynchronous."""
    if keras.backend.backend() == "torch":
        if output.is_cuda:
            import torch

            torch.cuda.synchronize(output.device)
    else:  # a copy to the host waits for the result on every backend
        keras.ops.convert_to_numpy(output)


@contextlib.contextmanager
def _quiet_keras_io():
    # Keras' own saving calls np.array() on torch tensors, which numpy 2 warns about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation",
                                category=DeprecationWarning)
        yield


# -- the trainee -------------------------------------------------------------------------------


class KerasTrainee:
    """A Keras model of a spec with its optimizer: the :class:`bundlelab.training.Trainee`
    of :class:`KerasBackend`.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    config : bundlelab.training.TrainConfig
        ``seed`` seeds the weights, ``optimizer``, ``learning_rate`` and ``weight_decay`` make
        the optimizer (:func:`make_optimizer`), ``device`` places variables and batches
        (``"auto"``: where Keras puts them, the GPU when there is one); ``learning_rate`` and
        ``batch_size`` are also the metric's in :meth:`measure_bundles`.

    Attributes
    ----------
    model : keras.Model
        Compiled with the optimizer, sparse cross-entropy from logits and accuracy.
    """

    @checked_keywords
    def __init__(self, spec: Spec, config: Any) -> None:
        self.spec, self.config = spec, config
        self._device = _keras_device(config.device)
        with self._on_device():
            self.model = build_model(spec, seed=config.seed)
            self._compile()

    def _on_device(self):
        return contextlib.nullcontext() if self._device is None else keras.device(self._device)

    def _compile(self) -> None:
        """A fresh optimizer, built now: a checkpoint then loads into a trainee that has not
        trained yet, and Lookahead's slow weights start at the current weights."""
        self.model.compile(
            optimizer=make_optimizer(
                self.config.optimizer, learning_rate=self.config.learning_rate,
                weight_decay=self.config.weight_decay,
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        self.model.optimizer.build(self.model.trainable_variables)

    def set_learning_rate(self, learning_rate: float) -> None:
        """The learning rate of the next steps (the schedule of the run sets it per step);
        Lookahead hands it to its inner optimizer."""
        self.model.optimizer.learning_rate = float(learning_rate)

    def largest_values(self) -> dict[str, float]:
        """Largest ``|value|`` of each layer's weights and batch-norm statistics, by layer name
        (``inf`` where one is not finite): what the run watches for divergence."""
        largest: dict[str, float] = {}
        for layer in self.model.layers:
            values = [np.abs(np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float64))
                      for w in layer.weights if "float" in str(w.dtype)]
            values = [v for v in values if v.size]
            if values:
                top = max(float(np.nan_to_num(v, nan=np.inf).max()) for v in values)
                largest[layer.name] = top
        return largest

    def train_epoch(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """One optimizer step per ``(inputs, labels)`` batch, in training mode.

        Returns
        -------
        dict
            ``{"loss", "accuracy"}``: means over the epoch's samples (each batch's values,
            computed before its step, weighted by its size).
        """
        loss = correct = 0.0
        n_samples = 0
        with self._on_device():
            for x, y in batches:
                logs = self.model.train_on_batch(x, y, return_dict=True)
                size = len(x)
                loss += logs["loss"] * size
                correct += logs["accuracy"] * size
                n_samples += size
        if not n_samples:
            raise BundleLabError("train_epoch got no batches: pass at least one (x, y) batch")
        return {"loss": loss / n_samples, "accuracy": correct / n_samples}

    def evaluate(self, x: np.ndarray, y: np.ndarray, *,
                 inference_batch_size: int) -> dict[str, float]:
        """``{"loss", "accuracy"}`` over ``(x, y)`` in inference mode,
        ``inference_batch_size`` samples at a time."""
        with self._on_device():
            logs = self.model.evaluate(x, y, batch_size=inference_batch_size, verbose=0, return_dict=True)
        return {"loss": float(logs["loss"]), "accuracy": float(logs["accuracy"])}

    def measure_bundles(self, x: np.ndarray, y: np.ndarray, **options: Any):
        """Bundles of the spec's measured layers on all of ``(x, y)``.

        Parameters
        ----------
        x, y : arrays of shape (n_samples, ...) and (n_samples,)
            The measurement subset (used whole).
        **options
            Keywords of :func:`audit` (``mode``, ``inference_batch_size``, ``gamma``, ...);
            ``learning_rate`` and ``batch_size`` (the training batch size |B|) default to the
            config's.

        Returns
        -------
        bundlelab.BundleReport
            One layer per :func:`bundlelab.spec.measured_layers` node, in that order.
        """
        options.setdefault("learning_rate", self.config.learning_rate)
        options.setdefault("batch_size", self.config.batch_size)
        layers = measured_layers(self.spec)
        with self._on_device():
            report = audit(self.model, x, y, layers=layers, n_samples=None, **options)
        # Keras lists a DAG's layers in its own topological order; reports follow the spec's,
        # the numbering that rewrites (and "the first conflicting layer") use.
        return BundleReport([report[name] for name in layers], report.params)

    def save(self, path: str, *, optimizer: bool = True) -> None:
        """Write the weights (and with ``optimizer`` the optimizer's state) to ``path``.

        The file is Keras' ``.weights.h5`` format whatever ``path`` ends in, with the spec and
        the optimizer's name as attributes of its root.
        """
        import h5py

        with tempfile.TemporaryDirectory() as folder:
            staged = os.path.join(folder, "checkpoint" + CHECKPOINT_SUFFIX)
            with self._on_device(), _quiet_keras_io():
                self.model.save_weights(staged)
            # copied group by group: deleting the optimizer's group would not shrink the file
            with h5py.File(staged, "r") as source, h5py.File(path, "w") as target:
                for key in source:
                    if optimizer or key != "optimizer":
                        source.copy(source[key], target, key)
                target.attrs.update(source.attrs)
                target.attrs[_SPEC_ATTRIBUTE] = dumps(self.spec, format="json")
                target.attrs[_OPTIMIZER_ATTRIBUTE] = self.config.optimizer if optimizer else ""

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote.  Without saved optimizer state the optimizer
        starts afresh from the loaded weights.

        Raises
        ------
        BundleLabError
            The file is not such a checkpoint, was written for another spec, or holds the
            state of another optimizer.
        """
        saved_spec, saved_optimizer = _checkpoint_attributes(path)
        if saved_spec != self.spec:
            raise BundleLabError(
                f"checkpoint {os.fspath(path)!r} was written for another architecture "
                f"(spec {saved_spec.name!r}), not for this trainee's spec {self.spec.name!r}"
            )
        if saved_optimizer and saved_optimizer != self.config.optimizer:
            raise BundleLabError(
                f"checkpoint {os.fspath(path)!r} holds the state of optimizer "
                f"{saved_optimizer!r}, but this trainee trains with {self.config.optimizer!r}"
            )
        with tempfile.TemporaryDirectory() as folder:
            readable = os.fspath(path)
            if not readable.endswith(CHECKPOINT_SUFFIX):
                readable = shutil.copy(readable, os.path.join(folder, "c" + CHECKPOINT_SUFFIX))
            with self._on_device(), _quiet_keras_io(), warnings.catch_warnings():
                # without optimizer state Keras warns that it skips the optimizer: intended
                warnings.filterwarnings("ignore", message="Skipping variable loading")
                self.model.load_weights(readable)
                if not saved_optimizer:
                    self._compile()

    def inference_seconds(self, x: np.ndarray) -> float:
        """Median wall time of one forward pass of the batch ``x`` (``training=False``) over
        5 runs after a warm-up, synchronised on GPUs."""
        with self._on_device(), inference_context():
            inputs = keras.ops.convert_to_tensor(np.asarray(x, dtype=np.float32))
            _wait_for(self.model(inputs, training=False))
            seconds = []
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                _wait_for(self.model(inputs, training=False))
                seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))


def _checkpoint_attributes(path) -> tuple[Any, str]:
    """The spec and optimizer name a checkpoint was written with, or a one-line error."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            spec_text = file.attrs.get(_SPEC_ATTRIBUTE)
            saved_optimizer = file.attrs.get(_OPTIMIZER_ATTRIBUTE, "")
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BundleLabError(f"cannot read checkpoint {os.fspath(path)!r}: {reason}") from None
    if spec_text is None:
        raise BundleLabError(
            f"{os.fspath(path)!r} is not a bundlelab Keras checkpoint (it holds no spec); "
            "write checkpoints with KerasTrainee.save"
        )
    return loads(str(spec_text), format="json"), str(saved_optimizer)


class KerasBackend:
    """The ``"keras"`` :class:`bundlelab.training.Backend`: Keras 3 models of specs.

    It takes no parameters: :meth:`build` gets the spec and the config.
    """

    name = "keras"
    checkpoint_suffix = CHECKPOINT_SUFFIX

    @checked_keywords
    def __init__(self) -> None:
        pass

    def build(self, spec: Spec, config: Any) -> KerasTrainee:
        """A freshly initialised :class:`KerasTrainee` of ``spec`` (weights seeded by
        ``config.seed``) with the optimizer ``config`` names, on ``config.device``."""
        return KerasTrainee(spec, config)


