"""Keras 3 adapter: bundles of the hidden layers of Sequential and Functional models.

Works on every Keras backend (TensorFlow, JAX, PyTorch).  The layers are tapped by a *side
model* ``keras.Model(model.inputs, [outputs of the chosen layers])`` that shares the model's
layers and weights, run batch by batch with ``training=False`` (dropout off, batch norm on its
moving statistics).  Subclassed models have no graph to tap: build them with the Functional API
or compute the layer outputs yourself and pass them to :func:`bundlelab.analyze_layers`.

>>> from bundlelab.adapters.keras import audit                      # doctest: +SKIP
>>> report = audit(model, x_train, y_train, train_batch_size=64)    # doctest: +SKIP
>>> report.first_conflicting                                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .._errors import BundleLabError
from ._keras_import import import_keras
from .._validation import check_choice, check_positive_int
from ..bundles import BundleOptions
from ..report import BundleReport
from ..tracker import BundleTracker
from . import measure_bundles, select_layers

keras = import_keras("the Keras adapter")

#: the batch size ``model.fit`` trains with when none is given: the default ``|B|`` here
FIT_BATCH_SIZE = 32
WEIGHT_AMPLITUDE_MODES = ("model", "layer")

_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
)


@dataclass(frozen=True)
class _Tap:
    """One call of a layer (or of a ``keras.ops`` function) inside the model's graph."""

    name: str
    node: Any  # keras Node: the call, its inputs (``parent_nodes``) and its output
    tensor: Any  # the call's output KerasTensor
    nonlinear: bool  # it ends in a non-linearity: a default layer to measure

    @property
    def operation(self):
        return self.node.operation


# -- the model's graph -------------------------------------------------------------------------


def _graph(model, inputs=None):
    """The Functional graph behind ``model`` (a Sequential model is built on ``inputs`` first)."""
    if isinstance(model, keras.Sequential):
        if getattr(model, "_functional", None) is None and inputs is not None:
            first = _input_list(inputs, 1)[0]
            model.build((None, *tuple(first.shape)[1:]))  # what its first call would do anyway
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise BundleLabError(
                f"Sequential model {model.name!r} has no input shape yet: start it with "
                "keras.Input(shape=...), call it on a batch once, or pass inputs"
            )
        return graph
    if not isinstance(model, keras.Model):
        raise BundleLabError(f"expected a Keras 3 model, got {type(model).__name__}")
    if getattr(model, "_nodes_by_depth", None) is None:
        raise BundleLabError(
            f"{type(model).__name__} is a subclassed keras.Model whose layer outputs cannot be "
            "tapped: build it with the Functional API (keras.Model(inputs, outputs)) or "
            "keras.Sequential, or compute the layer outputs yourself and pass them to "
            "bundlelab.analyze_layers"
        )
    return model


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _is_activation_function(name: str) -> bool:
    try:
        function = keras.activations.get(name)
    except (ValueError, TypeError):
        return False
    return function is not keras.activations.linear


def _ends_in_nonlinearity(operation) -> bool:
    """Dense/Conv/... with a non-linear ``activation``, activation layers, ``keras.ops.relu``..."""
    if isinstance(operation, _ACTIVATION_LAYERS):
        return True
    activation = getattr(operation, "activation", None)
    if callable(activation):  # Dense, Conv*, Activation, recurrent layers
        return activation is not keras.activations.linear
    if not isinstance(operation, keras.layers.Layer):  # a keras.ops call in a Functional graph
        return _is_activation_function(_snake_case(type(operation).__name__))
    return False


def _nodes_in_execution_order(graph) -> list:
    # Keras runs a Functional graph depth by depth, deepest (nearest the inputs) first.  The
    # node order is only exposed privately (``_nodes_by_depth``, stable since Keras 3.0).
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _hidden_taps(graph) -> list[_Tap]:
    """Every hidden call with one floating-point output, in execution order.

    A layer called several times (a shared layer) is tapped at every call, as ``name:0``,
    ``name:1``, ... in execution order.  Input layers, the model's outputs (the logits) and
    calls with several or non-float outputs are not tapped.
    """
    outputs = {id(tensor) for tensor in graph.outputs}
    nodes = [
        node for node in _nodes_in_execution_order(graph)
        if not node.is_input
        and len(node.outputs) == 1
        and id(node.outputs[0]) not in outputs
        and keras.backend.is_float_dtype(node.outputs[0].dtype)
    ]
    calls = Counter(id(node.operation) for node in nodes)
    seen: Counter = Counter()
    taps = []
    for node in nodes:
        operation = node.operation
        name = operation.name
        if calls[id(operation)] > 1:
            name = f"{name}:{seen[id(operation)]}"
            seen[id(operation)] += 1
        taps.append(_Tap(name, node, node.outputs[0], _ends_in_nonlinearity(operation)))
    return taps


def _select(taps: Sequence[_Tap], layers, model_name: str) -> list[_Tap]:
    """The taps named by ``layers`` (names, glob patterns, layer classes), in model order."""
    if layers is None:
        chosen = [tap for tap in taps if tap.nonlinear]
        if not chosen:
            raise BundleLabError(
                f"model {model_name!r} has no hidden layer that ends in a non-linearity; name the "
                "layers to measure with layers=[...]"
            )
        return chosen
    if isinstance(layers, (str, type)):
        layers = [layers]
    layers = list(layers)
    patterns = [item for item in layers if isinstance(item, str)]
    classes = [item for item in layers if isinstance(item, type)]
    if len(patterns) + len(classes) != len(layers):
        odd = next(item for item in layers if not isinstance(item, (str, type)))
        raise BundleLabError(
            f"layers must be names, glob patterns or layer classes; got {odd!r}"
        )
    names = set(select_layers([tap.name for tap in taps], patterns)) if patterns else set()
    for cls in classes:
        hits = [tap.name for tap in taps if isinstance(tap.operation, cls)]
        if not hits:
            raise BundleLabError(f"model {model_name!r} has no hidden {cls.__name__} layer")
        names.update(hits)
    return [tap for tap in taps if tap.name in names]


# -- data --------------------------------------------------------------------------------------


def _input_list(inputs, n_expected: int | None = None) -> list:
    """The model's input arrays as a list (one per model input)."""
    if isinstance(inputs, (list, tuple)) and inputs and all(hasattr(a, "shape") for a in inputs):
        arrays = list(inputs)
    else:
        arrays = [inputs if hasattr(inputs, "shape") else np.asarray(inputs)]
    if n_expected is not None and len(arrays) != n_expected:
        raise BundleLabError(
            f"the model takes {n_expected} input(s), got {len(arrays)}: pass one array per "
            "model input, as a list in model.inputs order"
        )
    sizes = {int(a.shape[0]) if len(a.shape) else 0 for a in arrays}
    if len(sizes) != 1:
        raise BundleLabError(f"the input arrays have different sample counts: {sorted(sizes)}")
    return arrays


def _checked_inputs(graph, inputs) -> list:
    """Input arrays whose shapes fit the model's inputs, or a one-line error."""
    arrays = _input_list(inputs, len(graph.inputs))
    for array, expected in zip(arrays, graph.inputs):
        want, got = tuple(expected.shape), tuple(array.shape)
        fits = len(want) == len(got) and all(w in (None, g) for w, g in zip(want[1:], got[1:]))
        if not fits:
            raise BundleLabError(
                f"model {graph.name!r} expects inputs of shape {want} (None: any size), got an "
                f"array of shape {got}"
            )
    return arrays


def _labels_as_classes(y, n_samples: int) -> np.ndarray:
    """Labels as ``fit`` takes them (class ids, or one-hot rows) -> one class per sample."""
    if isinstance(y, np.ndarray) or not hasattr(y, "shape"):
        labels = np.asarray(y)
    else:  # a backend tensor
        labels = keras.ops.convert_to_numpy(y)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot or probabilities
        labels = labels.argmax(axis=1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != n_samples:
        raise BundleLabError(
            f"got labels of shape {labels.shape} for {n_samples} input samples: pass one label "
            "(class id or one-hot row) per sample, in the order of x"
        )
    return labels


def _training_subset(x, y, n_samples: int, seed: int) -> tuple[list, np.ndarray]:
    """A seeded subset of the training data (all of it when smaller), in data order."""
    n_samples = check_positive_int("n_samples", n_samples)
    arrays = _input_list(x)
    n_total = int(arrays[0].shape[0])
    labels = _labels_as_classes(y, n_total)
    if n_total <= n_samples:
        return arrays, labels
    # sorted: the subset keeps the data order, so bundle ids follow the training set's order
    index = np.sort(np.random.default_rng(seed).choice(n_total, n_samples, replace=False))
    return [_take(a, index) for a in arrays], labels[index]


def _take(array, index: np.ndarray):
    try:
        return array[index]  # numpy arrays, torch tensors
    except (TypeError, IndexError, KeyError):
        return np.asarray(array)[index]


def _inference_context():
    if keras.backend.backend() == "torch":  # eager torch would record a graph for autograd
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _to_array(tensor):
    """A layer output bundlelab can read: torch tensors as they are (zero copy on the CPU, and
    CUDA tensors stay on the GPU), other backends' tensors as numpy arrays."""
    if type(tensor).__module__.split(".")[0] == "torch":
        return tensor.detach()
    return keras.ops.convert_to_numpy(tensor)


# -- optimizer and weights ---------------------------------------------------------------------


def _max_abs(variables) -> float | None:
    """Max |w| over ``variables`` (computed where they live), or None when there are none."""
    with _inference_context():
        values = [float(keras.ops.max(keras.ops.abs(v))) for v in variables if np.prod(v.shape)]
    return max(values) if values else None


def optimizer_learning_rate(model) -> float | None:
    """The compiled optimizer's current learning rate (schedules evaluated), or None.

    A float32 rate is returned as the shortest decimal that rounds to it (0.01, not
    0.009999999776482582): the same number in the float32 transform, and readable in reports.
    """
    optimizer = getattr(model, "optimizer", None)  # torch-backend models raise AttributeError
    if optimizer is None:
        return None
    rate = optimizer.learning_rate
    with _inference_context():
        value = float(rate)
    if keras.backend.standardize_dtype(getattr(rate, "dtype", "float64")) == "float32":
        return float(str(np.float32(value)))
    return value


def _layer_weight_amplitudes(taps: Sequence[_Tap], model_amplitude: float) -> dict[str, float]:
    """Per tap: max |w| of its own layer, else of the nearest ancestors with weights.

    A parameter-free call (ReLU, Add, keras.ops.relu) takes the largest amplitude among the
    layers with weights nearest to it in the graph (breadth first through its inputs); the
    model's amplitude when no layer with weights precedes it.
    """
    amplitudes = {}
    for tap in taps:
        frontier, visited, found = [tap.node], set(), None
        while frontier and found is None:
            values = [_max_abs(getattr(n.operation, "trainable_weights", [])) for n in frontier]
            values = [v for v in values if v is not None]
            if values:
                found = max(values)
                break
            visited.update(id(n) for n in frontier)
            frontier = [p for n in frontier for p in n.parent_nodes if id(p) not in visited]
        amplitudes[tap.name] = model_amplitude if found is None else found
    return amplitudes


# -- the adapter -------------------------------------------------------------------------------


class KerasAdapter:
    """:class:`bundlelab.adapters.ActivationAdapter` for Keras 3 Sequential and Functional models.

    Parameters
    ----------
    layers : str, layer class, or iterable of them, optional
        Which hidden layers :meth:`layer_names` lists: names (``"dense_1"``, or ``"relu:1"`` for
        the second call of a shared layer), glob patterns (``"block*_relu"``) or layer classes
        (``keras.layers.ReLU``), matched against every hidden layer.  Default: each hidden
        layer that ends in a non-linearity (a non-linear ``activation``, activation layers,
        ``keras.ops`` activations), never the model's output layers.
    """

    name = "keras"

    def __init__(self, layers: Any = None):
        self.layers = layers

    def layer_names(self, model, inputs=None) -> list[str]:
        """The chosen hidden layers, in execution order."""
        graph = _graph(model, inputs)
        return [tap.name for tap in _select(_hidden_taps(graph), self.layers, graph.name)]

    def iter_layer_outputs(
        self, model, inputs, *, layers: Sequence[str], batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """Outputs of ``layers`` per batch of ``inputs`` (an array, or a list of arrays for a
        model with several inputs), computed with ``training=False`` and without gradients."""
        batch_size = check_positive_int("batch_size", batch_size)
        graph = _graph(model, inputs)
        taps = {tap.name: tap for tap in _hidden_taps(graph)}
        layers = select_layers(list(taps), layers)
        arrays = _checked_inputs(graph, inputs)
        symbolic_inputs = graph.inputs[0] if len(graph.inputs) == 1 else list(graph.inputs)
        side_model = keras.Model(symbolic_inputs, [taps[name].tensor for name in layers])
        n_samples = int(arrays[0].shape[0])
        for start in range(0, n_samples, batch_size):
            batch = [
                keras.ops.convert_to_tensor(a[start:start + batch_size], dtype=t.dtype)
                for a, t in zip(arrays, graph.inputs)
            ]
            with _inference_context():
                outputs = side_model(batch[0] if len(batch) == 1 else batch, training=False)
            if len(layers) == 1:
                outputs = [outputs]
            yield {name: _to_array(output) for name, output in zip(layers, outputs)}

    def weight_amplitude(self, model) -> float:
        """Max |w| over ``model.trainable_weights``."""
        amplitude = _max_abs(model.trainable_weights)
        if amplitude is None:
            raise BundleLabError(
                f"model {model.name!r} has no trainable weights to take the weight amplitude "
                "from: pass weight_amplitude=<float>"
            )
        return amplitude


# -- measuring ---------------------------------------------------------------------------------


def _check_settings(learning_rate, train_batch_size, weight_amplitude, options) -> None:
    """Fail on a bad setting at once (a callback would otherwise fail after an epoch)."""
    if isinstance(weight_amplitude, str):
        check_choice("weight_amplitude", weight_amplitude, WEIGHT_AMPLITUDE_MODES)
        weight_amplitude = 1.0
    BundleOptions(
        learning_rate=1e-3 if learning_rate is None else learning_rate,
        batch_size=FIT_BATCH_SIZE if train_batch_size is None else train_batch_size,
        weight_amplitude=weight_amplitude,
        **options,
    )


def _measure(
    adapter: KerasAdapter,
    model,
    inputs,
    labels,
    *,
    learning_rate,
    train_batch_size,
    weight_amplitude,
    batch_size,
    progress,
    options,
) -> BundleReport:
    if learning_rate is None:
        learning_rate = optimizer_learning_rate(model)
    if learning_rate is not None:
        options = {**options, "learning_rate": learning_rate}
    train_batch_size = FIT_BATCH_SIZE if train_batch_size is None else train_batch_size
    if weight_amplitude == "layer":
        graph = _graph(model, inputs)
        taps = _select(_hidden_taps(graph), adapter.layers, graph.name)
        weight_amplitude = _layer_weight_amplitudes(taps, adapter.weight_amplitude(model))
    return measure_bundles(
        adapter, model, inputs, labels,
        batch_size=batch_size, train_batch_size=train_batch_size, progress=progress,
        weight_amplitude=None if weight_amplitude == "model" else weight_amplitude,
        **options,
    )


def audit(
    model,
    x,
    y,
    *,
    layers: Any = None,
    n_samples: int = 2048,
    seed: int = 0,
    learning_rate: float | None = None,
    train_batch_size: int | None = None,
    weight_amplitude: str | float = "model",
    batch_size: int = 256,
    progress: bool = False,
    **options,
) -> BundleReport:
    """Bundles of a Keras model's hidden layers on a seeded subset of its training data.

    Parameters
    ----------
    model : keras.Model
        A Sequential or Functional Keras 3 model, on any backend.
    x : array of shape (n_total, ...), or list of arrays (one per model input)
        Training inputs, as given to ``model.fit``.
    y : array-like of shape (n_total,) or (n_total, n_classes)
        Training labels: class ids, or one-hot rows (their argmax is the class).
    layers : str, layer class, or iterable of them, optional
        Names, glob patterns or layer classes (see :class:`KerasAdapter`); default: every
        hidden layer that ends in a non-linearity, never the output layer.
    n_samples : int, default=2048
        Size of the subset of the training data (the paper's 2048); all of it when smaller.
    seed : int, default=0
        Seed of the subset; the subset keeps the data order.
    learning_rate : float, optional
        The training learning rate alpha; default: the compiled optimizer's current rate
        (``model.optimizer.learning_rate``), else 1e-3.
    train_batch_size : int, optional
        The training batch size |B| (``batch_size`` of ``model.fit``); default 32, fit's
        default.
    weight_amplitude : {'model', 'layer'} or float, default='model'
        ``w``: max |w| over ``model.trainable_weights`` (the authors' choice); ``'layer'``:
        each layer's own weights (a parameter-free layer: the nearest preceding layers with
        weights); or a given float.
    batch_size : int, default=256
        Samples per forward pass; it only bounds memory.
    progress : bool, default=False
        Show a progress bar over batches.
    **options
        Other keywords of :func:`bundlelab.find_bundles` (mode, gamma, epsilon, nonfinite...).

    Returns
    -------
    bundlelab.BundleReport
    """
    _check_settings(learning_rate, train_batch_size, weight_amplitude, options)
    inputs, labels = _training_subset(x, y, n_samples, seed)
    return _measure(
        KerasAdapter(layers), model, inputs, labels,
        learning_rate=learning_rate, train_batch_size=train_batch_size,
        weight_amplitude=weight_amplitude, batch_size=batch_size, progress=progress,
        options=options,
    )


class BundleCallback(keras.callbacks.Callback):
    """Record ``H^l(t)`` per layer during ``model.fit`` into a :class:`bundlelab.BundleTracker`.

    Every ``every`` epochs the hidden layers are measured on a fixed seeded subset of the
    training data, with the optimizer's learning rate of that moment.  The history is in
    :attr:`tracker` (step = epochs completed); with ``path`` it is also written as JSON
    (atomically) after each measurement and at the end of training.

    Parameters
    ----------
    x, y : training inputs and labels, as for :func:`audit`
    layers, n_samples, seed, learning_rate, train_batch_size, weight_amplitude, batch_size
        As for :func:`audit`; pass ``train_batch_size`` = the ``batch_size`` given to fit.
    every : int, default=1
        Measure after every ``every``-th epoch.
    path : str or path-like, optional
        Where to write the tracker's JSON (``bundlelab.tracker/1``).
    **options
        Other keywords of :func:`bundlelab.find_bundles`.

    Examples
    --------
    >>> callback = BundleCallback(x_train, y_train, train_batch_size=64)  # doctest: +SKIP
    >>> model.fit(x_train, y_train, batch_size=64, epochs=5, callbacks=[callback])  # doctest: +SKIP
    >>> callback.tracker.time_averaged()  # doctest: +SKIP
    """

    def __init__(
        self,
        x,
        y,
        *,
        layers: Any = None,
        n_samples: int = 2048,
        seed: int = 0,
        every: int = 1,
        learning_rate: float | None = None,
        train_batch_size: int | None = None,
        weight_amplitude: str | float = "model",
        batch_size: int = 256,
        path=None,
        **options,
    ):
        super().__init__()
        _check_settings(learning_rate, train_batch_size, weight_amplitude, options)
        self.every = check_positive_int("every", every)
        self.path = path
        self.tracker = BundleTracker(**options)
        self._adapter = KerasAdapter(layers)
        self._inputs, self._labels = _training_subset(x, y, n_samples, seed)
        self._settings = dict(
            learning_rate=learning_rate, train_batch_size=train_batch_size,
            weight_amplitude=weight_amplitude, batch_size=batch_size, progress=False,
            options=options,
        )

    def on_train_begin(self, logs=None):
        # fail before the first epoch, not after it: bad shapes, unknown layer names
        _checked_inputs(_graph(self.model, self._inputs), self._inputs)
        self._adapter.layer_names(self.model, self._inputs)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        report = _measure(self._adapter, self.model, self._inputs, self._labels, **self._settings)
        self.tracker.record(epoch + 1, report)
        if self.path is not None:
            self.tracker.to_json(self.path)

    def on_train_end(self, logs=None):
        if self.path is not None:
            self.tracker.to_json(self.path)


__all__ = ["BundleCallback", "KerasAdapter", "audit", "optimizer_learning_rate"]
