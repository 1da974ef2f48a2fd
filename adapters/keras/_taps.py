"""Taps: the calls of layers inside a Keras model's graph whose outputs can be measured."""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from ..._errors import BundleLabError
from ..._selection import select_layers
from ..._validation import checked_keywords
from ._data import input_list
from ._import import keras

_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
)


@dataclass(frozen=True)
class Tap:
    """One call of a layer (or of a ``keras.ops`` function) inside the model's graph.

    Attributes
    ----------
    name : str
        The tap's name: the layer's name, ``"name:k"`` for its k-th call (k >= 2).
    node : keras Node
        The call: its operation, its inputs (``parent_nodes``) and its output.
    tensor : KerasTensor
        The call's output.
    nonlinear : bool
        Whether the call ends in a non-linearity (a tap measured by default).
    """

    name: str
    node: Any
    tensor: Any
    nonlinear: bool

    @property
    def operation(self) -> Any:
        return self.node.operation

    @property
    def layer(self) -> str:
        """The name of the layer called (every call of it shares this name)."""
        return self.node.operation.name


Tap.__init__ = checked_keywords(Tap.__init__)  # type: ignore[method-assign]


def model_graph(model: Any, inputs: Any = None) -> Any:
    """The Functional graph behind ``model`` (a Sequential model is built on ``inputs`` first)."""
    if isinstance(model, keras.Sequential):
        if getattr(model, "_functional", None) is None and inputs is not None:
            first = input_list(inputs, 1)[0]
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


def _ends_in_nonlinearity(operation: Any) -> bool:
    """Dense/Conv/... with a non-linear ``activation``, activation layers, ``keras.ops.relu``..."""
    if isinstance(operation, _ACTIVATION_LAYERS):
        return True
    activation = getattr(operation, "activation", None)
    if callable(activation):  # Dense, Conv*, Activation, recurrent layers
        return activation is not keras.activations.linear
    if not isinstance(operation, keras.layers.Layer):  # a keras.ops call in a Functional graph
        return _is_activation_function(_snake_case(type(operation).__name__))
    return False


def _nodes_in_execution_order(graph: Any) -> list:
    # Keras runs a Functional graph depth by depth, deepest (nearest the inputs) first.  The
    # node order is only exposed privately (``_nodes_by_depth``, stable since Keras 3.0).
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def hidden_taps(graph: Any) -> list[Tap]:
    """Every hidden call with one floating-point output, in execution order.

    A layer called k times (a shared layer) is tapped at every call, as ``name``, ``name:2``,
    ..., ``name:k`` in execution order (the torch adapter's rule).  Input layers, the model's
    outputs (the logits) and calls with several or non-float outputs are not tapped.
    """
    outputs = {id(tensor) for tensor in graph.outputs}
    nodes = [
        node for node in _nodes_in_execution_order(graph)
        if not node.is_input
        and len(node.outputs) == 1
        and id(node.outputs[0]) not in outputs
        and keras.backend.is_float_dtype(node.outputs[0].dtype)
    ]
    calls: Counter = Counter()
    taps = []
    for node in nodes:
        operation = node.operation
        calls[id(operation)] += 1
        count = calls[id(operation)]
        name = operation.name if count == 1 else f"{operation.name}:{count}"
        taps.append(Tap(name, node, node.outputs[0], _ends_in_nonlinearity(operation)))
    return taps


def select_taps(taps: Sequence[Tap], layers: Any, model_name: str) -> list[Tap]:
    """The taps named by ``layers``, in execution order.

    ``layers``: None (every tap that ends in a non-linearity), or a name, glob pattern or layer
    class, or an iterable of them.  A layer's name selects every call of it; a tap name
    (``"relu:2"``) selects that call only; a glob matches tap names and layer names.
    """
    if layers is None:
        chosen = [tap for tap in taps if tap.nonlinear]
        if not chosen:
            raise BundleLabError(
                f"model {model_name!r} has no hidden layer that ends in a non-linearity; name the "
                "layers to measure with layers=[...]"
            )
        return chosen
    items = [layers] if isinstance(layers, (str, type)) else list(layers)
    names: set[str] = set()
    for item in items:
        if isinstance(item, type):
            hits = [tap.name for tap in taps if isinstance(tap.operation, item)]
            if not hits:
                raise BundleLabError(f"model {model_name!r} has no hidden {item.__name__} layer")
        elif isinstance(item, str):
            # an existing name is taken literally, even when it holds glob characters
            hits = [tap.name for tap in taps if item in (tap.name, tap.layer)] or [
                tap.name for tap in taps
                if fnmatch.fnmatchcase(tap.name, item) or fnmatch.fnmatchcase(tap.layer, item)
            ]
            if not hits:  # a comma-separated list of tap names, else a one-line error
                hits = select_layers(
                    [tap.name for tap in taps], [item], where=f"model {model_name!r}"
                )
        else:
            raise BundleLabError(
                "The 'layers' parameter must hold layer names, glob patterns or layer classes. "
                f"Got {item!r} instead."
            )
        names.update(hits)
    return [tap for tap in taps if tap.name in names]
