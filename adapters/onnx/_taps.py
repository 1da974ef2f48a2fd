"""Choosing the tapped tensors: activation outputs (or every node's), never the logits.

Functions of an :class:`OnnxModel`'s public, read-only description (its nodes, inputs,
constants and inferred types); the model caches what they find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..._validation import checked_keywords
from ._graph import FLOAT_TYPES

if TYPE_CHECKING:
    from ._model import OnnxModel

#: activation ops whose outputs are the default layers (domains "", "ai.onnx", "com.microsoft")
ACTIVATION_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu",
    "Selu", "Celu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softplus", "Softsign",
    "HardSwish", "Mish", "Swish",
})
_ACTIVATION_DOMAINS = ("", "ai.onnx", "com.microsoft")

#: the same types as onnxruntime names them: only tensors of these types are layers
_ORT_FLOAT_TYPES = {"tensor(float)", "tensor(double)", "tensor(float16)"}


@dataclass(frozen=True)
class Tap:
    """One tapped tensor: its layer name in reports and where it comes from in the graph.

    Attributes
    ----------
    layer : str
        The name in reports (the tensor's, see the package docstring).
    tensor : str
        The graph tensor.
    node : str
        The node that outputs it.
    op_type : str
        That node's op (``"SiLU"`` for an ``x * Sigmoid(x)`` product).
    """

    layer: str
    tensor: str
    node: str
    op_type: str


Tap.__init__ = checked_keywords(Tap.__init__)  # type: ignore[method-assign]


def find_taps(model: OnnxModel, *, all_nodes: bool) -> list[Tap]:
    """Tensors of ``model`` that can be layers, in topological order, before onnxruntime has
    typed them: activation outputs (every node's outputs with ``all_nodes``) that depend on
    the inputs, are not graph outputs and may hold one row per sample."""
    outputs = _output_aliases(model.proto.graph, model.nodes)
    dependent = {i.name for i in model.inputs}
    consumers: dict[str, list] = {}
    for node in model.nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        if any(name in dependent for name in node.input) or _has_subgraph(node):
            dependent.update(name for name in node.output if name)
    batch = model.inputs[0].dims[0] if model.inputs[0].dims else None
    taps, counts = [], {}
    for node in model.nodes:
        if all_nodes:
            picked = [(name, node, node.op_type) for name in node.output]
        else:
            picked = _activation_output(model, node, consumers)
        for tensor, producer, op_type in picked:
            if tensor and tensor in dependent and tensor not in outputs and (
                _may_be_per_sample(model.types, tensor, batch)
            ):
                layer = _layer_name(tensor, producer, counts)
                taps.append(Tap(layer, tensor, producer.name, op_type))
    return taps


def _activation_output(model: OnnxModel, node: Any, consumers: dict) -> list[tuple[str, Any, str]]:
    if node.domain not in _ACTIVATION_DOMAINS or not node.output:
        return []
    if node.op_type == "Clip":
        return [(node.output[0], node, "Clip")] if _clip_min(model, node) == 0 else []
    if node.op_type not in ACTIVATION_OPS:
        return []
    if node.op_type == "Sigmoid":
        # x * Sigmoid(x) is how exporters write SiLU: the product is the activation.
        for user in consumers.get(node.output[0], []):
            if user.op_type == "Mul" and sorted(user.input) == sorted(
                [node.input[0], node.output[0]]
            ):
                return [(user.output[0], user, "SiLU")]
    return [(node.output[0], node, node.op_type)]


def _clip_min(model: OnnxModel, node: Any) -> float | None:
    for attribute in node.attribute:  # opset < 11
        if attribute.name == "min":
            return attribute.f
    if len(node.input) > 1 and node.input[1] in model.constants:
        value = model.array(model.constants[node.input[1]])
        if value.size == 1:
            return float(value.reshape(-1)[0])
    return None


def _may_be_per_sample(types: dict, tensor: str, batch: int | str | None) -> bool:
    """False when shape inference proves the tensor has no batch axis first."""
    elem_type, dims = types.get(tensor, (None, None))
    if elem_type is not None and elem_type not in FLOAT_TYPES:
        return False
    if dims is None:
        return True
    if not dims:
        return False  # a scalar
    first = dims[0]
    return not isinstance(first, int) or first == batch


def float_layers(candidates: Sequence[Tap], session: Any) -> list[Tap]:
    """The candidates that onnxruntime's ``session`` (which outputs them all) types as float."""
    types = {output.name: output.type for output in session.get_outputs()}
    return [tap for tap in candidates if types.get(tap.tensor) in _ORT_FLOAT_TYPES]


def no_layer_message(where: str, all_nodes: bool) -> str:
    if all_nodes:
        return (
            f"{where} has no tappable layer: no node outputs a float tensor of "
            "per-sample values before the graph outputs"
        )
    return (
        f"{where} has no tappable layer: no activation node (Relu, Sigmoid, Tanh, Gelu, "
        "...) outputs a hidden tensor; tap every node's outputs with all_nodes=True"
    )


def sample_bytes(types: dict, taps: Sequence[Tap]) -> int | None:
    """Bytes the tapped outputs of one sample take, or None where a shape is not known."""
    total = 0
    for tap in taps:
        elem_type, dims = types.get(tap.tensor, (None, None))
        if elem_type not in FLOAT_TYPES or not dims or not all(
            isinstance(d, int) for d in dims[1:]
        ):
            return None
        total += math.prod(dims[1:]) * np.dtype(FLOAT_TYPES[elem_type]).itemsize
    return total


def _has_subgraph(node: Any) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def _output_aliases(graph: Any, nodes: list) -> set[str]:
    """Graph outputs and the tensors they merely copy (Identity chains)."""
    producers = {name: node for node in nodes for name in node.output}
    aliases, todo = set(), [value.name for value in graph.output]
    while todo:
        name = todo.pop()
        if name in aliases:
            continue
        aliases.add(name)
        node = producers.get(name)
        if node is not None and node.op_type == "Identity" and node.input:
            todo.append(node.input[0])
    return aliases


def _layer_name(tensor: str, node: Any, counts: dict[str, int]) -> str:
    """The tensor's name (``Relu_3:12`` for a bare number); a name seen before gets the suffix
    ``:2``, ``:3``, ... as a module called several times does in the torch adapter."""
    name = f"{node.name or node.op_type}:{tensor}" if tensor.isdigit() else tensor
    counts[name] = counts.get(name, 0) + 1
    if counts[name] == 1:
        return name
    suffixed = f"{name}:{counts[name]}"
    while suffixed in counts:
        counts[name] += 1
        suffixed = f"{name}:{counts[name]}"
    counts[suffixed] = 1
    return suffixed
