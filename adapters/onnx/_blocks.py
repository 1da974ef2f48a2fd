"""``layers='blocks'``: the outputs of a torch export's repeated blocks, from its module scopes."""

from __future__ import annotations

import re
from typing import Any, Sequence

from ._names import MODULE_EXTRAS


def block_outputs(nodes: Sequence[Any], paths: Sequence[tuple | None], consumers: dict,
                  constants: Any = ()) -> dict[tuple, tuple[int, str]]:
    """Repeated blocks -> (node index, tensor) of their output, in order.

    The torch adapter's rule, with module classes guessed from the scopes: a block is a module
    numbered among its siblings (``layer1.0``, ``blocks.3``, ``encoder_layer_2``), that is not
    a container (a ``Sequential`` has only numbered children) and holds at least two layers
    with weights; the outermost such modules are the blocks, except that a "stage" (a block
    holding a container of two blocks or more) is opened.  A block's output is the last tensor
    it writes that a node outside it reads (or that leaves the graph)."""
    children: dict[tuple, set] = {}
    direct: dict[tuple, int] = {}
    weighted: dict[tuple, int] = {}
    for node, path in zip(nodes, paths):
        if path is None:
            continue
        if node.op_type not in MODULE_EXTRAS:
            direct[path] = direct.get(path, 0) + 1
        layer = node.op_type in _WEIGHT_OPS and any(name in constants for name in node.input)
        for k in range(len(path) + 1):
            if k < len(path):
                children.setdefault(path[:k], set()).add(path[k])
            weighted[path[:k]] = weighted.get(path[:k], 0) + layer

    def numbered(path: tuple) -> bool:
        match = _NUMBERED.match(path[-1])
        if match is None:
            return False
        stem = match.group(1)
        return sum(bool(_NUMBERED.match(a)) and _NUMBERED.match(a).group(1) == stem
                   for a in children.get(path[:-1], ())) >= 2

    def container(path: tuple) -> bool:
        kids = children.get(path, set())
        return bool(kids) and not direct.get(path) and all(a.isdigit() for a in kids)

    def candidate(path: tuple) -> bool:
        return bool(path) and numbered(path) and not container(path) and (
            weighted.get(path, 0) >= 2)

    def stage(path: tuple) -> bool:
        inner = [p for p in children if len(p) > len(path) and p[: len(path)] == path]
        return any(container(p) and sum(candidate(p + (a,)) for a in children[p]) >= 2
                   for p in inner)

    chosen: set[tuple] = set()

    def visit(path: tuple) -> None:
        for atom in sorted(children.get(path, ()), key=_natural):
            child = path + (atom,)
            if candidate(child) and not stage(child):
                chosen.add(child)
            else:
                visit(child)

    visit(())

    def block_of(path: tuple | None) -> tuple | None:
        for k in range(1, len(path or ()) + 1):
            if path[:k] in chosen:
                return path[:k]
        return None

    index = {id(node): i for i, node in enumerate(nodes)}
    owner = [block_of(path) for path in paths]
    found: dict[tuple, tuple[int, str]] = {}
    for i, node in enumerate(nodes):
        if owner[i] is None:
            continue
        for tensor in node.output:
            users = consumers.get(tensor, [])
            if tensor and (not users or any(owner[index[id(u)]] != owner[i] for u in users)):
                found[owner[i]] = (i, tensor)
    return found


#: nodes that are layers with weights (a block holds at least two)
_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
                         "LayerNormalization", "InstanceNormalization", "GroupNormalization"})
#: a module name numbered among its siblings: '3', 'encoder_layer_2', 'denselayer4'
_NUMBERED = re.compile(r"^(\D*?)_?(\d+)$")


def _natural(atom: str) -> tuple:
    match = _NUMBERED.match(atom)
    return (match.group(1), int(match.group(2))) if match else (atom, -1)
