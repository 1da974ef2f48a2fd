"""Choosing the tapped tensors: activation outputs (or every node's), never the logits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..._errors import BundleLabError
from ._graph import FLOAT_TYPES
from ._runtime import resolve_providers

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
    """One tapped tensor: its layer name in reports and where it comes from in the graph."""

    layer: str
    tensor: str
    node: str
    op_type: str


class TapsMixin:
    """OnnxModel's methods that choose its layers (the state they read: OnnxModel.__init__)."""

    def candidate_taps(self, *, all_nodes: bool = False) -> list[Tap]:
        """Tensors that can be layers, in topological order, before onnxruntime has typed them."""
        if all_nodes not in self._candidates:
            self._candidates[all_nodes] = self._find_taps(all_nodes)
        return self._candidates[all_nodes]

    def _find_taps(self, all_nodes: bool) -> list[Tap]:
        outputs = _output_aliases(self.proto.graph, self._nodes)
        dependent = {i.name for i in self.inputs}
        consumers: dict[str, list] = {}
        for node in self._nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
            if any(name in dependent for name in node.input) or _has_subgraph(node):
                dependent.update(name for name in node.output if name)
        batch = self.inputs[0].dims[0] if self.inputs[0].dims else None
        taps, used = [], set()
        for node in self._nodes:
            if all_nodes:
                picked = [(name, node, node.op_type) for name in node.output]
            else:
                picked = self._activation_output(node, consumers)
            for tensor, producer, op_type in picked:
                if tensor and tensor in dependent and tensor not in outputs and (
                    self._may_be_per_sample(tensor, batch)
                ):
                    layer = _layer_name(tensor, producer, used)
                    used.add(layer)
                    taps.append(Tap(layer, tensor, producer.name, op_type))
        return taps

    def _activation_output(self, node: Any, consumers: dict) -> list[tuple[str, Any, str]]:
        if node.domain not in _ACTIVATION_DOMAINS or not node.output:
            return []
        if node.op_type == "Clip":
            return [(node.output[0], node, "Clip")] if self._clip_min(node) == 0 else []
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

    def _clip_min(self, node: Any) -> float | None:
        for attribute in node.attribute:  # opset < 11
            if attribute.name == "min":
                return attribute.f
        if len(node.input) > 1 and node.input[1] in self._constants:
            value = self._array(self._constants[node.input[1]])
            if value.size == 1:
                return float(value.reshape(-1)[0])
        return None

    def _may_be_per_sample(self, tensor: str, batch: int | str | None) -> bool:
        """False when shape inference proves the tensor has no batch axis first."""
        elem_type, dims = self._types.get(tensor, (None, None))
        if elem_type is not None and elem_type not in FLOAT_TYPES:
            return False
        if dims is None:
            return True
        if not dims:
            return False  # a scalar
        first = dims[0]
        return not isinstance(first, int) or first == batch

    def layers(self, *, all_nodes: bool = False, providers: Any = None) -> list[Tap]:
        """The model's layers: candidate taps that onnxruntime reports as float tensors."""
        key = (all_nodes, tuple(resolve_providers(providers)))
        if key not in self._layers:
            candidates = self.candidate_taps(all_nodes=all_nodes)
            if not candidates:
                raise BundleLabError(self._no_layer_message(all_nodes))
            session = self.session(candidates, providers)
            types = {output.name: output.type for output in session.get_outputs()}
            layers = [tap for tap in candidates if types.get(tap.tensor) in _ORT_FLOAT_TYPES]
            if not layers:
                raise BundleLabError(self._no_layer_message(all_nodes))
            self._layers[key] = layers
        return self._layers[key]

    def _no_layer_message(self, all_nodes: bool) -> str:
        if all_nodes:
            return (
                f"{self.name} has no tappable layer: no node outputs a float tensor of "
                "per-sample values before the graph outputs"
            )
        return (
            f"{self.name} has no tappable layer: no activation node (Relu, Sigmoid, Tanh, Gelu, "
            "...) outputs a hidden tensor; tap every node's outputs with all_nodes=True "
            "(CLI: --all-nodes)"
        )

    def sample_bytes(self, taps: Sequence[Tap]) -> int | None:
        """Bytes the tapped outputs of one sample take, or None where a shape is not known."""
        total = 0
        for tap in taps:
            elem_type, dims = self._types.get(tap.tensor, (None, None))
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


def _layer_name(tensor: str, node: Any, used: set[str]) -> str:
    name = tensor
    if tensor.isdigit():  # '12' says nothing; 'Relu_3:12' does
        name = f"{node.name or node.op_type}:{tensor}"
    while name in used:
        name = f"{name}'"
    return name
