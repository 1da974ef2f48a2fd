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
class Scope:
    """One call of a nested model (a Sequential or Functional model used as a layer).

    Attributes
    ----------
    name : str
        The call's tap-name prefix: the nested model's name (``"name:k"`` for its k-th call),
        joined with ``"/"`` to the names of the models around it.
    node : keras Node
        The call, in the graph of the model around it.
    graph : keras Functional
        The nested model's own graph (a Sequential's ``_functional``).
    """

    name: str
    node: Any
    graph: Any


@dataclass(frozen=True)
class Tap:
    """One call of a layer (or of a ``keras.ops`` function) inside the model's graph.

    Attributes
    ----------
    name : str
        The tap's name: the layer's name, ``"name:k"`` for its k-th call (k >= 2); inside a
        nested model, prefixed with the nested model's name and ``"/"`` (``"base/block_1_relu"``,
        deeper nesting joins every level with ``"/"``).
    node : keras Node
        The call: its operation, its inputs (``parent_nodes``) and its output.
    tensor : KerasTensor
        The call's output, in the graph of the model that holds the call (``scopes[-1]``).
    nonlinear : bool
        Whether the call ends in a non-linearity.
    scopes : tuple of Scope
        The nested-model calls around this one, outermost first (empty at the top level).
    """

    name: str
    node: Any
    tensor: Any
    nonlinear: bool
    scopes: tuple = ()

    @property
    def operation(self) -> Any:
        return self.node.operation

    @property
    def layer(self) -> str:
        """The name of the layer called (every call of it shares this name), prefixed with the
        nested models that hold it (``"base/block_1_relu"``)."""
        prefix = self.scopes[-1].name + "/" if self.scopes else ""
        return prefix + self.node.operation.name


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


def _named_like_an_activation(operation: Any) -> bool:
    """A class named like a Keras activation (``Gelu``, ``GELU``, ``HardSwish``, ``Mish``):
    activations are recognised by what they compute, not by what they inherit from, so a
    custom ``class GELU(keras.layers.Layer)`` counts as ``keras.layers.ReLU`` does."""
    name = type(operation).__name__
    return any(_is_activation_function(n) for n in {_snake_case(name), name.lower()})


def is_composite(operation: Any) -> bool:
    """A layer made of other layers (a nested model, a custom block layer)."""
    return bool(getattr(operation, "_layers", None))


def ends_in_nonlinearity(operation: Any) -> bool:
    """Dense/Conv/... with a non-linear ``activation``, activation layers, ``keras.ops.relu``,
    and layers or ops whose class is named like an activation."""
    if isinstance(operation, _ACTIVATION_LAYERS):
        return True
    activation = getattr(operation, "activation", None)
    if callable(activation):  # Dense, Conv*, Activation, recurrent layers
        return activation is not keras.activations.linear
    if is_composite(operation) or getattr(operation, "weights", None):
        return False  # a block or a layer with weights computes more than an activation
    return _named_like_an_activation(operation)


def nodes_in_execution_order(graph: Any) -> list:
    """The graph's calls in the order Keras runs them."""
    # Keras runs a Functional graph depth by depth, deepest (nearest the inputs) first.  The
    # node order is only exposed privately (``_nodes_by_depth``, stable since Keras 3.0).
    by_depth = graph._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def nested_graph(operation: Any) -> Any:
    """The graph of a nested Sequential or Functional model, else None (a plain layer, or a
    subclassed model, which has no graph to look into)."""
    if isinstance(operation, keras.Sequential):
        return getattr(operation, "_functional", None)
    if isinstance(operation, keras.Model) and getattr(operation, "_nodes_by_depth", None):
        return operation
    return None


def hidden_taps(graph: Any) -> list[Tap]:
    """Every hidden call with one floating-point output, in execution order, nested models
    included.

    A layer called k times (a shared layer) is tapped at every call, as ``name``, ``name:2``,
    ..., ``name:k`` in execution order (the torch adapter's rule).  The calls inside a nested
    model come right before the nested model's own call, named ``"outer/inner"``; an output of
    the nested model is a hidden tap unless it is an output of the whole model.  Input layers,
    the model's outputs (the logits) and calls with several or non-float outputs are not
    tapped.
    """
    return _taps_of(graph, (), {id(tensor) for tensor in graph.outputs})


def _taps_of(graph: Any, scopes: tuple, excluded: set) -> list[Tap]:
    prefix = scopes[-1].name + "/" if scopes else ""
    calls: Counter = Counter()
    nested_calls: Counter = Counter()
    taps = []
    for node in nodes_in_execution_order(graph):
        if node.is_input:
            continue
        operation = node.operation
        inner = nested_graph(operation)
        if inner is not None:
            nested_calls[id(operation)] += 1
            count = nested_calls[id(operation)]
            scope = Scope(
                prefix + (operation.name if count == 1 else f"{operation.name}:{count}"),
                node, inner,
            )
            # an output of the nested model is the model's output only where this call's is
            inner_excluded = {
                id(a) for a, b in zip(inner.outputs, node.outputs) if id(b) in excluded
            }
            taps.extend(_taps_of(inner, (*scopes, scope), inner_excluded))
        if (
            len(node.outputs) != 1
            or id(node.outputs[0]) in excluded
            or not keras.backend.is_float_dtype(node.outputs[0].dtype)
        ):
            continue
        calls[id(operation)] += 1
        count = calls[id(operation)]
        name = operation.name if count == 1 else f"{operation.name}:{count}"
        taps.append(Tap(prefix + name, node, node.outputs[0], ends_in_nonlinearity(operation),
                        scopes))
    return taps


def tap_tensors(taps: Sequence[Tap], level: int = 0) -> list:
    """The taps' outputs as tensors of the top-level graph, for a side model.

    A tap inside a nested model is an output of a new model built on the nested model's own
    graph (``keras.Model(inner.inputs, [inner tensors])``), called where the nested model is
    called: it shares the nested layers and weights, and calling it on symbolic tensors adds
    no node to the user's layers (Keras only computes output specs through the inner graph).
    """
    tensors: list = [None] * len(taps)
    groups: dict[int, list[int]] = {}
    for i, tap in enumerate(taps):
        if len(tap.scopes) == level:
            tensors[i] = tap.tensor
        else:
            groups.setdefault(id(tap.scopes[level].node), []).append(i)
    for indices in groups.values():
        scope = taps[indices[0]].scopes[level]
        inner = tap_tensors([taps[i] for i in indices], level + 1)
        inputs = scope.graph.inputs
        sub_model = keras.Model(inputs[0] if len(inputs) == 1 else list(inputs), inner)
        outputs = sub_model(*scope.node.arguments.args, **scope.node.arguments.kwargs)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for i, output in zip(indices, outputs):
            tensors[i] = output
    return tensors


def match_taps(taps: Sequence[Tap], layers: Any, model_name: str) -> list[Tap]:
    """The taps named by ``layers`` (a name, glob pattern or layer class, or an iterable of
    them), in execution order.

    A layer's name selects every call of it; a tap name (``"relu:2"``) selects that call
    only; a glob matches tap names and layer names (``"base/*"``: everything inside the
    nested model ``base``).
    """
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
                "The 'layers' parameter must hold layer names, glob patterns, layer classes, "
                f"or be 'all' or 'blocks'. Got {item!r} instead."
            )
        names.update(hits)
    return [tap for tap in taps if tap.name in names]
