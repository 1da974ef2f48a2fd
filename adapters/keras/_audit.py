"""audit: the bundles of a Keras model on a subset of its training data, in one call.

Split over workers (``executor=``), each task gets a consecutive slice of the measured subset
(whole forward passes) and the model as Keras pickles it (its ``.keras`` archive: custom
layers must be registered with ``keras.saving.register_keras_serializable`` in a module the
task imports, and the task's ``KERAS_BACKEND`` must be this process's).  On the torch backend a
task runs with this process's number of torch threads, so its forward passes compute as this
process's would.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..._selection import announce
from ..._validation import (
    check_bool,
    check_choice,
    check_keywords,
    check_optional_float,
    check_positive_float,
    check_positive_int,
    checked_keywords,
)
from ...bundles import BundleOptions
from ...report import BundleReport
from .. import measure_bundles
from .._split import split_plan
from ._adapter import KerasAdapter, optimizer_learning_rate
from ._data import training_subset

WEIGHT_AMPLITUDE_MODES = ("model", "layer")
#: keywords passed on to the core (see :func:`bundlelab.find_bundles`)
CORE_OPTIONS = ("gamma", "epsilon", "nonfinite", "update_format")
_DEFAULTS = BundleOptions()


@dataclass(frozen=True)
class Measurement:
    """How a model is measured: checked once (a callback fails at construction, not after an
    epoch), then applied to the model as it is at each :meth:`run`."""

    layers: Any
    learning_rate: float | None  # None: the compiled optimizer's rate, else the core's default
    batch_size: int
    batch_size_given: bool
    weight_amplitude: str | float
    inference_batch_size: int
    options: dict = field(default_factory=dict)  # mode and CORE_OPTIONS

    @classmethod
    def checked(
        cls, where: Callable, *, layers: Any, learning_rate: Any, batch_size: Any,
        weight_amplitude: Any, mode: Any, inference_batch_size: Any, options: dict,
    ) -> Measurement:
        """Validated settings; ``where`` is the public callable (its keywords name the valid
        ones in the message about an unknown keyword)."""
        named = [p for p in inspect.signature(where).parameters if p not in ("self", "options")]
        check_keywords(f"{where.__qualname__.replace('.__init__', '')}()", options,
                       [*named, *CORE_OPTIONS])
        learning_rate = check_optional_float("learning_rate", learning_rate, low=0.0,
                                             low_open=True)
        if isinstance(weight_amplitude, str):
            check_choice("weight_amplitude", weight_amplitude, WEIGHT_AMPLITUDE_MODES)
        else:
            weight_amplitude = check_positive_float("weight_amplitude", weight_amplitude,
                                                    allow_zero=True)
        # BundleOptions checks and converts mode, |B| and CORE_OPTIONS
        batch_size_given = batch_size is not None
        if not batch_size_given:
            batch_size = _DEFAULTS.batch_size
        core = BundleOptions(batch_size=batch_size, mode=mode, **options)
        return cls(
            layers=layers, learning_rate=learning_rate, batch_size=core.batch_size,
            batch_size_given=batch_size_given,
            weight_amplitude=weight_amplitude,
            inference_batch_size=check_positive_int("inference_batch_size", inference_batch_size),
            options={key: getattr(core, key) for key in ("mode", *options)},
        )

    def run(
        self, model: Any, inputs: list, labels: Any, *, progress: bool = False,
        announce_selection: bool = True, executor: Any = None, workers: int | None = None,
    ) -> BundleReport:
        """The report of ``model`` on all of ``(inputs, labels)``.

        The layer-selection summary is stored as ``report.params["selection"]``, and printed
        (once, on stderr) when the layers were the default and ``announce_selection``.
        ``executor`` and ``workers`` split the measurement (:func:`measure_bundles`).
        """
        learning_rate, lr_source = self.learning_rate, "given"
        if learning_rate is None:
            learning_rate, lr_source = optimizer_learning_rate(model), "optimizer"
        if learning_rate is None:
            learning_rate, lr_source = _DEFAULTS.learning_rate, "default"
        adapter = _SplittableAdapter(layers=self.layers)
        selection = adapter.selection(model, inputs)
        if announce_selection and self.layers is None:
            announce(selection.summary)
        weight_amplitude = self.weight_amplitude
        sources = {
            "learning_rate": lr_source,
            "batch_size": "given" if self.batch_size_given else "default",
        }
        if weight_amplitude == "layer":
            weight_amplitude = adapter.layer_weight_amplitudes(model, selection.taps)
            sources["weight_amplitude"] = "model parameters"
        elif weight_amplitude == "model":
            weight_amplitude = None  # measure_bundles asks the adapter
        report = measure_bundles(
            adapter, model, inputs, labels, layers=[tap.name for tap in selection.taps],
            inference_batch_size=self.inference_batch_size, batch_size=self.batch_size,
            learning_rate=learning_rate, weight_amplitude=weight_amplitude, sources=sources,
            progress=progress, executor=executor, workers=workers, **self.options,
        )
        report.params["selection"] = selection.summary
        return report


class _SplittableAdapter(KerasAdapter):
    """The Keras adapter, able to send the model to the tasks of a split measurement (its
    inputs, a list of arrays, split as any arrays do)."""

    def worker_copy(self, model: Any) -> _WorkerCopy:
        """What a task needs to run ``model`` as this adapter would (see the module
        docstring)."""
        return _WorkerCopy(KerasAdapter(layers=self.layers), model, _torch_threads())


def _torch_threads() -> int | None:
    """This process's torch threads on the torch backend, else None."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.get_num_threads()


@dataclass
class _WorkerCopy:
    """The adapter and the model for the tasks, pickled as they are (Keras pickles a model as
    its ``.keras`` archive), and this process's torch threads (None: another backend)."""

    adapter: KerasAdapter
    model: Any
    threads: int | None

    @contextlib.contextmanager
    def open(self, index: int):
        """``(adapter, model)`` for slice ``index``."""
        from ...executors import torch_threads

        with torch_threads(self.threads):
            yield self.adapter, self.model


@checked_keywords
def audit(
    model: Any,
    x: Any,
    y: Any,
    *,
    layers: Any = None,
    n_samples: int | None = 2048,
    seed: int = 0,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    weight_amplitude: str | float = "model",
    mode: str = "resolution",
    inference_batch_size: int = 256,
    progress: bool = False,
    executor: Any = None,
    workers: int | None = None,
    **options: Any,
) -> BundleReport:
    """Bundles of a Keras model's hidden layers on a seeded subset of its training data.

    Parameters
    ----------
    model : keras.Model
        A Sequential or Functional Keras 3 model, on any backend.
    x : array of shape (n_total, ...), or list of arrays (one per model input)
        The TRAINING inputs, as given to ``model.fit``.
    y : array-like of shape (n_total,) or (n_total, n_classes)
        Training labels: class ids, or one-hot rows (their argmax is the class).
    layers : str, layer class, or iterable of them, optional
        Layer names (every call), tap names (``"relu:2"``, ``"base/block_1_relu"`` inside the
        nested model ``base``), glob patterns or layer classes, or ``"all"`` / ``"blocks"``
        (see :class:`KerasAdapter`); default: every hidden call that ends in a non-linearity,
        nested models included, except gating branches (squeeze-excitation, attention
        weights), never the output layer.  What the default picked and left out is printed
        once (stderr); ``report.params["selection"]`` always says it.
    n_samples : int or None, default=2048
        Training samples measured (the paper's 2048), chosen with ``seed`` and kept in data
        order; None or more than there are: all.
    seed : int, default=0
    learning_rate : float, optional
        The training learning rate α; default: the compiled optimizer's current rate
        (``model.optimizer.learning_rate``), else 1e-3.
    batch_size : int, optional
        The training batch size |B| (``batch_size`` of ``model.fit``; Keras cannot tell it, so
        pass it); default 64, reported as a default in ``report.params["sources"]``.
    weight_amplitude : {'model', 'layer'} or float, default='model'
        ``w``: max |w| over ``model.trainable_weights`` (the authors' choice); ``'layer'``:
        each layer's own weights (a parameter-free layer: the nearest preceding layers with
        weights), with ``report.params['layer_weight_amplitudes']``; or a given float.
    mode : {'resolution', 'threshold'}, default='resolution'
    inference_batch_size : int, default=256
        Samples per forward pass; it only bounds memory.
    progress : bool, default=False
        Show a progress bar over forward passes.
    executor : None, str or bundlelab.executors.Executor, optional
        None or ``"inprocess"`` (default): one pass here.  ``"processes"``, ``"ray"`` or an
        Executor: the subset is cut into ``workers`` consecutive slices, each measured by a
        task on a copy of the model (see the module docstring), and the report equals the
        single pass's (resolution mode).  For GPUs on Ray, pass an Executor made with
        ``resources={"num_gpus": 1}``.
    workers : int, optional
        Slices; default: the executor's worker count.
    **options
        gamma, epsilon, nonfinite, update_format: see :func:`bundlelab.find_bundles`.  The
        update format defaults to the format of the model's trainable variables (float32 under
        a ``mixed_float16`` policy, whose activations are float16).

    Returns
    -------
    bundlelab.BundleReport
    """
    measurement = Measurement.checked(
        audit, layers=layers, learning_rate=learning_rate, batch_size=batch_size,
        weight_amplitude=weight_amplitude, mode=mode, inference_batch_size=inference_batch_size,
        options=options,
    )
    progress = check_bool("progress", progress)
    inputs, labels = training_subset(x, y, n_samples=n_samples, seed=seed)
    with split_plan(executor, workers, mode=measurement.options["mode"],
                    progress=progress) as plan:
        return measurement.run(model, inputs, labels, progress=progress,
                               executor=plan.executor, workers=plan.n_slices)
