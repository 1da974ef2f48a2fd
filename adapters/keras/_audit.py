"""audit: the bundles of a Keras model on a subset of its training data, in one call."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

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
from ._adapter import KerasAdapter, optimizer_learning_rate
from ._data import training_subset

WEIGHT_AMPLITUDE_MODES = ("model", "layer")
#: keywords passed on to the core (see :func:`bundlelab.find_bundles`)
CORE_OPTIONS = ("gamma", "epsilon", "nonfinite")
_DEFAULTS = BundleOptions()


@dataclass(frozen=True)
class Measurement:
    """How a model is measured: checked once (a callback fails at construction, not after an
    epoch), then applied to the model as it is at each :meth:`run`."""

    layers: Any
    learning_rate: float | None  # None: the compiled optimizer's rate, else the core's default
    batch_size: int
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
        core = BundleOptions(batch_size=batch_size, mode=mode, **options)
        return cls(
            layers=layers, learning_rate=learning_rate, batch_size=core.batch_size,
            weight_amplitude=weight_amplitude,
            inference_batch_size=check_positive_int("inference_batch_size", inference_batch_size),
            options={key: getattr(core, key) for key in ("mode", *options)},
        )

    def run(self, model: Any, inputs: list, labels: Any, *, progress: bool = False) -> BundleReport:
        """The report of ``model`` on all of ``(inputs, labels)``."""
        learning_rate = self.learning_rate
        if learning_rate is None:
            learning_rate = optimizer_learning_rate(model)
        if learning_rate is None:
            learning_rate = _DEFAULTS.learning_rate
        adapter = KerasAdapter(layers=self.layers)
        weight_amplitude = self.weight_amplitude
        if weight_amplitude == "layer":
            weight_amplitude = adapter.layer_weight_amplitudes(model, adapter.taps(model, inputs))
        elif weight_amplitude == "model":
            weight_amplitude = None  # measure_bundles asks the adapter
        return measure_bundles(
            adapter, model, inputs, labels,
            inference_batch_size=self.inference_batch_size, batch_size=self.batch_size,
            learning_rate=learning_rate, weight_amplitude=weight_amplitude, progress=progress,
            **self.options,
        )


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
    batch_size: int = 64,
    weight_amplitude: str | float = "model",
    mode: str = "resolution",
    inference_batch_size: int = 256,
    progress: bool = False,
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
        Layer names (every call), tap names (``"relu:2"``), glob patterns or layer classes
        (see :class:`KerasAdapter`); default: every hidden layer call that ends in a
        non-linearity, never the output layer.
    n_samples : int or None, default=2048
        Training samples measured (the paper's 2048), chosen with ``seed`` and kept in data
        order; None or more than there are: all.
    seed : int, default=0
    learning_rate : float, optional
        The training learning rate α; default: the compiled optimizer's current rate
        (``model.optimizer.learning_rate``), else 1e-3.
    batch_size : int, default=64
        The training batch size |B| (``batch_size`` of ``model.fit``; Keras cannot tell it, so
        pass it).
    weight_amplitude : {'model', 'layer'} or float, default='model'
        ``w``: max |w| over ``model.trainable_weights`` (the authors' choice); ``'layer'``:
        each layer's own weights (a parameter-free layer: the nearest preceding layers with
        weights), with ``report.params['layer_weight_amplitudes']``; or a given float.
    mode : {'resolution', 'threshold'}, default='resolution'
    inference_batch_size : int, default=256
        Samples per forward pass; it only bounds memory.
    progress : bool, default=False
        Show a progress bar over forward passes.
    **options
        gamma, epsilon, nonfinite: see :func:`bundlelab.find_bundles`.

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
    return measurement.run(model, inputs, labels, progress=progress)
