"""KerasAdapter: the ActivationAdapter for Keras 3 models, and their weight amplitudes."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from ..._errors import BundleLabError
from ..._selection import select_layers
from ..._validation import check_positive_int, checked_keywords
from ._data import checked_inputs
from ._forward import inference_context, to_array
from ._import import keras
from ._choice import Selection, choose_taps
from ._taps import Tap, hidden_taps, model_graph, tap_tensors

#: formats an update can be evaluated in, narrowest first (a model's variables in several
#: formats update in the widest: that is where mixed-precision training keeps its master copy)
_UPDATE_FORMATS = ("bfloat16", "float16", "float32", "float64")


class KerasAdapter:
    """The :class:`bundlelab.adapters.ActivationAdapter` for Keras 3 Sequential and Functional
    models.

    Parameters
    ----------
    layers : str, layer class, or iterable of them, optional
        Which hidden layers :meth:`layer_names` lists: layer names (every call of the layer),
        tap names (``"relu:2"``: the second call of a shared layer; ``"base/block_1_relu"``:
        a layer inside the nested model ``base``), glob patterns (``"block*_relu"``,
        ``"base/*"``) or layer classes (``keras.layers.ReLU``); ``"all"``: every hidden call
        that ends in a non-linearity; ``"blocks"``: the outputs of the repeated blocks.
        Default: each hidden call that ends in a non-linearity (a non-linear ``activation``,
        activation layers, ``keras.ops`` activations, layers named like an activation), inside
        nested models too, except those of gating branches (squeeze-excitation, attention
        softmax weights); never the model's output layers.

    Examples
    --------
    >>> from bundlelab.adapters import get_adapter, measure_bundles
    >>> report = measure_bundles(get_adapter("keras"), model, x, labels)  # doctest: +SKIP
    """

    name = "keras"

    @checked_keywords
    def __init__(self, *, layers: Any = None):
        self.layers = layers

    def selection(self, model: Any, inputs: Any = None) -> Selection:
        """The selected taps, in execution order, with a one-line summary of the choice."""
        return choose_taps(model_graph(model, inputs), self.layers)

    def taps(self, model: Any, inputs: Any = None) -> list[Tap]:
        """The selected taps, in execution order."""
        return self.selection(model, inputs).taps

    def layer_names(self, model: Any, inputs: Any = None) -> list[str]:
        """Names of the selected taps, in execution order."""
        return [tap.name for tap in self.taps(model, inputs)]

    def iter_layer_outputs(
        self, model: Any, inputs: Any, *, layers: Sequence[str], inference_batch_size: int
    ) -> Iterator[dict[str, Any]]:
        """Outputs of the taps ``layers`` per forward pass of ``inference_batch_size`` samples
        of ``inputs`` (an array, or a list of arrays for a model with several inputs), computed
        with ``training=False`` and without gradients."""
        inference_batch_size = check_positive_int("inference_batch_size", inference_batch_size)
        graph = model_graph(model, inputs)
        taps = {tap.name: tap for tap in hidden_taps(graph)}
        layers = select_layers(list(taps), layers, where=f"model {graph.name!r}")
        arrays = checked_inputs(graph, inputs)
        symbolic_inputs = graph.inputs[0] if len(graph.inputs) == 1 else list(graph.inputs)
        side_model = keras.Model(symbolic_inputs, tap_tensors([taps[name] for name in layers]))
        n_samples = int(arrays[0].shape[0])
        for start in range(0, n_samples, inference_batch_size):
            batch = [
                keras.ops.convert_to_tensor(a[start:start + inference_batch_size], dtype=t.dtype)
                for a, t in zip(arrays, graph.inputs)
            ]
            with inference_context():
                outputs = side_model(batch[0] if len(batch) == 1 else batch, training=False)
            if len(layers) == 1:
                outputs = [outputs]
            yield {name: to_array(output) for name, output in zip(layers, outputs)}

    def weight_amplitude(self, model: Any) -> float:
        """``w``: max |w| over ``model.trainable_weights``."""
        amplitude = max_abs(model.trainable_weights)
        if amplitude is None:
            raise BundleLabError(
                f"model {model.name!r} has no trainable weights to take the weight amplitude "
                "from: pass weight_amplitude=<float>"
            )
        return amplitude

    def update_format(self, model: Any) -> str | None:
        """The format of the model's trainable variables: where a weight update is computed.

        Under a mixed-precision policy (``mixed_float16``, ``mixed_bfloat16``) layers compute
        and output float16/bfloat16 but keep float32 variables, so this is ``"float32"``.
        Variables in several formats give the widest; None when there are no trainable
        floating-point variables.
        """
        formats = {keras.backend.standardize_dtype(v.dtype) for v in model.trainable_weights}
        known = [f for f in _UPDATE_FORMATS if f in formats]
        return known[-1] if known else None

    def layer_weight_amplitudes(self, model: Any, taps: Sequence[Tap]) -> dict[str, float]:
        """Per tap: max |w| of its own layer, else of the nearest ancestors with weights.

        A parameter-free call (ReLU, Add, keras.ops.relu) takes the largest amplitude among
        the layers with weights nearest to it in the graph (breadth first through its
        inputs, out of a nested model through the inputs of its call); the model's amplitude
        when no layer with weights precedes it.
        """
        model_amplitude = None
        amplitudes = {}
        for tap in taps:
            frontier, visited, found = [tap.node], set(), None
            scopes = list(tap.scopes)
            while frontier and found is None:
                values = [max_abs(getattr(n.operation, "trainable_weights", [])) for n in frontier]
                values = [v for v in values if v is not None]
                if values:
                    found = max(values)
                    break
                visited.update(id(n) for n in frontier)
                frontier = [p for n in frontier for p in n.parent_nodes if id(p) not in visited]
                if not frontier and scopes:  # the nested model's inputs: go on outside it
                    frontier = scopes.pop().node.parent_nodes
            if found is None:
                if model_amplitude is None:
                    model_amplitude = self.weight_amplitude(model)
                found = model_amplitude
            amplitudes[tap.name] = found
        return amplitudes


def max_abs(variables: Any) -> float | None:
    """Max |w| over ``variables`` (computed where they live), or None when there are none."""
    with inference_context():
        values = [float(keras.ops.max(keras.ops.abs(v))) for v in variables if np.prod(v.shape)]
    return max(values) if values else None


@checked_keywords
def optimizer_learning_rate(model: Any) -> float | None:
    """The compiled optimizer's current learning rate (schedules evaluated), or None.

    Parameters
    ----------
    model : keras.Model
        A compiled model (None is returned for one without an optimizer).

    Returns
    -------
    float or None
        A float32 rate as the shortest decimal that rounds to it (0.01, not
        0.009999999776482582): the same number in the float32 transform, and readable in
        reports.
    """
    optimizer = getattr(model, "optimizer", None)  # torch-backend models raise AttributeError
    if optimizer is None:
        return None
    rate = optimizer.learning_rate
    with inference_context():
        value = float(rate)
    if keras.backend.standardize_dtype(getattr(rate, "dtype", "float64")) == "float32":
        return float(str(np.float32(value)))
    return value
