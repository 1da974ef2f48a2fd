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
from ._blocks import block_outputs
from ._graph import FLOAT_TYPES
from ._names import (
    TORCH_FUNCTIONS,
    module_name,
    module_owners,
    module_paths,
    torch_layer_name,
)
from ._patterns import decomposed_activations, feeds_gate, is_gate

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
        The name in reports: the torch module's (``layer1.0.relu``, ``:2`` for its second
        call) when the graph records it, else the tensor's (see the package docstring).
    tensor : str
        The graph tensor.
    node : str
        The node that outputs it.
    op_type : str
        That node's op, or the activation a group of nodes computes (``"Gelu"``, ``"SiLU"``,
        ``"HardSwish"``, ``"Mish"``).
    kind : str, default='activation'
        ``'activation'``; ``'gate'`` (a squeeze-excitation scale or an activation inside its
        branch); ``'attention'`` (softmax weights); ``'node'`` (``all_nodes``); ``'block'``
        (the output of a repeated block).
    module : str or None, default=None
        The torch module that wrote the node, when the graph records it.
    """

    layer: str
    tensor: str
    node: str
    op_type: str
    kind: str = "activation"
    module: str | None = None

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names a pattern may match: the tensor (with and without its leading ``/``)
        and the module."""
        names = (self.tensor, self.tensor.lstrip("/"), self.module or "")
        return tuple(name for name in dict.fromkeys(names) if name and name != self.layer)


Tap.__init__ = checked_keywords(Tap.__init__)  # type: ignore[method-assign]


def find_taps(model: OnnxModel, *, all_nodes: bool,
              unbatched: list | None = None) -> list[Tap]:
    """Tensors of ``model`` that can be layers, in topological order, before onnxruntime has
    typed them: activation outputs (every node's outputs with ``all_nodes``), gates and
    attention weights, then the outputs of repeated blocks, that depend on the inputs, are
    not graph outputs and may hold one row per sample.  Those that shape inference proves
    have another first axis are appended to ``unbatched`` as (tensor, shape)."""
    outputs = _output_aliases(model.proto.graph, model.nodes)
    dependent = {i.name for i in model.inputs}
    consumers: dict[str, list] = {}
    producers: dict[str, Any] = {}
    for node in model.nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node
        if any(name in dependent for name in node.input) or _has_subgraph(node):
            dependent.update(name for name in node.output if name)
    batch = model.inputs[0].dims[0] if model.inputs[0].dims else None
    paths = module_paths(model.proto, model.nodes)

    def usable(tensor: str) -> bool:
        if not tensor or tensor not in dependent or tensor in outputs:
            return False
        if _may_be_per_sample(model.types, tensor, batch):
            return True
        dims = model.types.get(tensor, (None, None))[1]
        if unbatched is not None and dims and model.types[tensor][0] in FLOAT_TYPES:
            unbatched.append((tensor, tuple(dims)))
        return False

    if all_nodes:
        picked = [(i, name, node.op_type, "node", frozenset()) for i, node in
                  enumerate(model.nodes) for name in node.output]
    else:
        picked = _activation_outputs(model, producers, consumers)
    owners = module_owners(model.nodes, paths)
    activation_nodes = frozenset().union(*(entry[4] for entry in picked))
    taps, counts = [], {}
    for i, tensor, op_type, kind, members in picked:
        if usable(tensor):
            node = model.nodes[i]
            module = module_name(paths[i])
            name = None if kind == "node" else torch_layer_name(
                paths[i], _function(model, node, op_type), activation_nodes, owners)
            layer = _layer_name(tensor, node, counts, name=name)
            taps.append(Tap(layer, tensor, node.name, op_type, kind=kind, module=module))
    blocks = block_outputs(model.nodes, paths, consumers, model.constants)
    taps += [Tap(".".join(path), tensor, model.nodes[i].name, model.nodes[i].op_type,
                 kind="block", module=".".join(path))
             for path, (i, tensor) in blocks.items() if usable(tensor)]
    return taps


def _activation_outputs(model: OnnxModel, producers: dict, consumers: dict) -> list[tuple]:
    """(node index, tensor, op, kind) of every activation, gate and softmax, in order."""
    index = {id(node): i for i, node in enumerate(model.nodes)}
    decomposed = {d.final: d for d in decomposed_activations(model, producers, consumers)}
    inside = set().union(*(d.members for d in decomposed.values())) - set(decomposed)
    picked = []
    for i, node in enumerate(model.nodes):
        if i in decomposed:
            picked.append([i, node.output[0], decomposed[i].kind, "activation",
                           decomposed[i].members])
        elif i not in inside and node.output:
            op_type = _activation_op(model, node)
            if op_type == "Softmax":
                if _weighs_values(node, consumers):
                    picked.append([i, node.output[0], op_type, "attention", frozenset({i})])
            elif op_type is not None:
                kind = "gate" if is_gate(model, node, producers, consumers) else "activation"
                picked.append([i, node.output[0], op_type, kind, frozenset({i})])
    gate_nodes = {entry[0] for entry in picked if entry[3] == "gate"}
    for entry in picked:  # the activation between a squeeze-excitation branch's convolutions
        if entry[3] == "activation" and feeds_gate(model.nodes[entry[0]], gate_nodes,
                                                   consumers, index):
            entry[3] = "gate"
    return [tuple(entry) for entry in picked]


#: ops between attention weights and the product with the values
_ATTENTION_PASS = frozenset({"Dropout", "Cast", "Reshape", "Identity", "Where"})


def _weighs_values(node: Any, consumers: dict) -> bool:
    """Whether a softmax's output is multiplied into values (attention weights), not a
    classifier's probabilities."""
    tensors = [node.output[0]]
    for _ in range(3):
        users = [user for tensor in tensors for user in consumers.get(tensor, [])]
        if any(user.op_type in ("MatMul", "Einsum") for user in users):
            return True
        tensors = [user.output[0] for user in users
                   if user.op_type in _ATTENTION_PASS and user.output]
    return False


def _function(model: OnnxModel, node: Any, op_type: str) -> str:
    """The torch function a functional call of this activation is named after."""
    if op_type == "Clip":
        return "relu6" if _clip_max(model, node) == 6 else "hardtanh"
    return TORCH_FUNCTIONS.get(op_type, op_type.lower())


def _activation_op(model: OnnxModel, node: Any) -> str | None:
    if node.domain not in _ACTIVATION_DOMAINS:
        return None
    if node.op_type == "Clip":
        return "Clip" if _clip_min(model, node) == 0 else None
    if node.op_type in ACTIVATION_OPS or node.op_type == "Softmax":
        return node.op_type
    return None


def _clip_bound(model: OnnxModel, node: Any, name: str, index: int) -> float | None:
    """A Clip node's ``name`` bound ("min" or "max"): an attribute below opset 11, else the
    constant input at ``index``; None when it is not a known scalar."""
    for attribute in node.attribute:  # opset < 11
        if attribute.name == name:
            return attribute.f
    if len(node.input) > index and node.input[index] in model.constants:
        value = model.array(model.constants[node.input[index]])
        if value.size == 1:
            return float(value.reshape(-1)[0])
    return None


def _clip_min(model: OnnxModel, node: Any) -> float | None:
    return _clip_bound(model, node, "min", 1)


def _clip_max(model: OnnxModel, node: Any) -> float | None:
    return _clip_bound(model, node, "max", 2)


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


def batch_first_known(types: dict, tensor: str, batch: set) -> bool:
    """True when shape inference proves the tensor's first axis is the batch: its first
    dimension is one of ``batch``, the symbols (or the fixed size) the model's inputs have
    first, each fed the same number of samples."""
    dims = types.get(tensor, (None, None))[1]
    return bool(dims) and dims[0] in batch


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
        f"{where} has no tappable layer: no activation (Relu, Sigmoid, Tanh, Gelu, ..., or "
        "GELU, SiLU, HardSwish, Mish written as arithmetic) outputs a hidden tensor; tap "
        "every node's outputs with all_nodes=True"
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


def _layer_name(tensor: str, node: Any, counts: dict[str, int], *, name: str | None = None
                ) -> str:
    """``name`` (the torch module), else the tensor's name (``Relu_3:12`` for a bare number);
    a name seen before gets the suffix ``:2``, ``:3``, ... as a module called several times
    does in the torch adapter."""
    if name is None:
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
