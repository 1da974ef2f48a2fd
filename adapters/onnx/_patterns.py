"""Activations that exporters write as several nodes, and the gating branches of a graph.

Below opset 20 (GELU) or 14 (HardSwish), and for SiLU and Mish at any opset, exporters write an
activation ``f(x) = x * g(x)`` as arithmetic: a ``Mul`` of ``x`` by a branch of elementwise
nodes and scalar constants that starts again from ``x``::

    GELU       x * 0.5 * (1 + Erf(x / sqrt(2)))          (the 0.5 before or after the product)
    GELU tanh  x * 0.5 * (1 + Tanh(c * (x + 0.044715 x^3)))
    SiLU       x * Sigmoid(x)            (Swish: x * Sigmoid(b * x))
    HardSwish  x * HardSigmoid(x)        or  x * Clip(x + 3, 0, 6) / 6
    Mish       x * Tanh(Softplus(x))

The activation's output is the product (after the trailing ``* 0.5`` of a GELU); the nodes of
the branch are not layers of their own.  A gate multiplies a LARGER tensor by broadcast
(squeeze-excitation: ``x * Sigmoid(fc(pool(x)))``), so its values are a per-channel scale, not
a representation: :func:`gates` finds them and the activations inside their branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._model import OnnxModel

_DOMAINS = ("", "ai.onnx")
#: ops a decomposed activation's branch may hold
_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "Softplus",
    "Clip", "Relu", "Neg", "Sqrt", "Exp", "Cast",
})
#: the op that makes a branch non-linear -> the activation it computes (first match wins)
_CORES = (("Erf", "Gelu"), ("Softplus", "Mish"), ("Tanh", "Gelu"),
          ("HardSigmoid", "HardSwish"), ("Clip", "HardSwish"), ("Relu", "HardSwish"),
          ("Sigmoid", "SiLU"))
_MAX_BRANCH = 12  # GELU's tanh form has 7 nodes; more is not one activation
#: reductions a squeeze-excitation branch starts with
_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
                    "ReduceSum", "AveragePool"})
#: ops between a gate and its product that only reshape or rescale it
_PASS_THROUGH = frozenset({"Reshape", "Unsqueeze", "Flatten", "Squeeze", "Expand", "Cast",
                           "Identity", "Div", "Mul", "Add"})
#: ops between a squeeze-excitation branch's inner activation and its gate
_BRANCH_OPS = frozenset({"Conv", "Gemm", "MatMul", "Add", "Reshape", "Unsqueeze", "Flatten",
                         "Squeeze", "BatchNormalization", "Identity"})


@dataclass(frozen=True)
class Decomposed:
    """A decomposed activation: its kind in ONNX's spelling (``'Gelu'``; ``'SiLU'``), its final
    node, and every node index in it."""

    kind: str
    final: int
    members: frozenset


def decomposed_activations(model: OnnxModel, producers: dict, consumers: dict) -> list[Decomposed]:
    """Every ``x * g(x)`` activation of ``model`` (module docstring), by final node."""
    index = {id(node): i for i, node in enumerate(model.nodes)}
    found, used = [], set()
    for i, node in enumerate(model.nodes):
        if node.op_type != "Mul" or node.domain not in _DOMAINS or len(node.input) != 2:
            continue
        match = _product(model, node, producers, index)
        if match is None:
            continue
        kind, members = match
        final = i
        if kind == "Gelu":  # x * (1 + erf) first, then * 0.5
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type in ("Mul", "Div") and any(
                _is_scalar(model, name) for name in users[0].input
            ):
                final = index[id(users[0])]
        members = frozenset(members | {i, final})
        if members & used:
            continue  # a product inside another one's branch
        used |= members
        found.append(Decomposed(kind, final, members))
    return found


def _product(model: OnnxModel, node: Any, producers: dict, index: dict):
    a, b = node.input
    for x_side, g_side in ((a, b), (b, a)):
        if x_side in model.constants:
            continue
        sources = [x_side]
        scaled = producers.get(x_side)  # (0.5 * x) * (1 + erf(x / sqrt 2))
        if scaled is not None and scaled.op_type == "Mul" and len(scaled.input) == 2:
            sources += [n for n in scaled.input if not _is_scalar(model, n)][:1] if any(
                _is_scalar(model, n) for n in scaled.input) else []
        for x in sources:
            branch = _branch(model, g_side, x, producers)
            if not branch:
                continue
            ops = {node.op_type for node in branch}
            for core, kind in _CORES:
                if core in ops:
                    members = {index[id(n)] for n in branch}
                    if x != x_side:
                        members.add(index[id(producers[x_side])])
                    return kind, members
    return None


def _branch(model: OnnxModel, start: str, x: str, producers: dict) -> list | None:
    """The elementwise nodes that compute ``start`` from ``x`` and scalar constants, or None."""
    nodes, seen, todo, reached = {}, set(), [start], False
    while todo:
        name = todo.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name == x:
            reached = True
            continue
        if _is_scalar(model, name):
            continue
        node = producers.get(name)
        if node is None or node.op_type not in _ELEMENTWISE or node.domain not in _DOMAINS:
            return None
        nodes[id(node)] = node
        if len(nodes) > _MAX_BRANCH:
            return None
        todo.extend(node.input)
    return list(nodes.values()) if reached else None


def _is_scalar(model: OnnxModel, name: str) -> bool:
    tensor = model.constants.get(name)
    return tensor is not None and math.prod(tensor.dims) == 1


def is_gate(model: OnnxModel, node: Any, producers: dict, consumers: dict) -> bool:
    """Whether ``node``'s output scales a larger tensor by broadcast (a squeeze-excitation gate):
    a ``Mul`` of it (after reshapes or scalar rescaling) by a tensor it broadcasts into, or
    when its own branch starts from a global pooling a few nodes up."""
    tensor, steps = node.output[0], 0
    while steps < 3:
        for user in consumers.get(tensor, []):
            if user.op_type == "Mul" and len(user.input) == 2:
                other = user.input[1] if user.input[0] == tensor else user.input[0]
                if other in model.constants:
                    continue
                # a branch from a global pooling is a gate even where the map is 1x1 already
                if _broadcast_smaller(model, tensor, other) or _pooled(node, producers):
                    return True
        users = consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in _PASS_THROUGH or not users[0].output:
            return False
        tensor, steps = users[0].output[0], steps + 1
    return False


def _broadcast_smaller(model: OnnxModel, small: str, large: str) -> bool | None:
    """Whether ``small`` has a 1 where ``large`` has more; None when shapes are not known."""
    small_dims = model.types.get(small, (None, None))[1]
    large_dims = model.types.get(large, (None, None))[1]
    if not small_dims or not large_dims or len(small_dims) != len(large_dims):
        return None
    pairs = list(zip(small_dims[1:], large_dims[1:]))
    if any(not isinstance(s, int) for s, _ in pairs):
        return None
    return any(s == 1 and (not isinstance(g, int) or g > 1) for s, g in pairs)


def _pooled(node: Any, producers: dict, depth: int = 6) -> bool:
    todo, seen = [(name, 0) for name in node.input], set()
    while todo:
        name, level = todo.pop()
        producer = producers.get(name)
        if producer is None or level >= depth or name in seen:
            continue
        seen.add(name)
        if producer.op_type in _POOLS:
            return True
        todo.extend((n, level + 1) for n in producer.input)
    return False


def feeds_gate(node: Any, gate_nodes: set, consumers: dict, index: dict) -> bool:
    """Whether ``node``'s output reaches a gate through a few branch ops with one consumer each
    (the activation between a squeeze-excitation branch's two convolutions)."""
    tensor = node.output[0]
    for _ in range(4):
        users = consumers.get(tensor, [])
        if len(users) != 1 or not users[0].output:
            return False
        if index[id(users[0])] in gate_nodes:
            return True
        if users[0].op_type not in _BRANCH_OPS:
            return False
        tensor = users[0].output[0]
    return False
