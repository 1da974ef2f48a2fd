"""The torch module that wrote each node of a torch export, from the names the exporter left.

The legacy exporter (``torch.onnx.export(..., dynamo=False)``) names nodes after the module
scopes: ``/layer1/layer1.0/relu_1/Relu`` is the second call of ``layer1.0.relu`` (each scope
is the module's name with the parent's atoms left out except before a number, and a scope met
again in the same parent gets ``_1``, ``_2``, ...).  The dynamo exporter stores the scopes in
the node's ``pkg.torch.onnx.name_scopes`` metadata: ``['', 'layer1', 'layer1.0',
'layer1.0.relu', 'relu_1']`` (qualified module names, then the FX node).  Either way the module
path is what the torch adapter calls the layer; other producers' graphs carry none.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Sequence

_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_REPEAT = re.compile(r"^(.+)_(\d+)$")


def module_paths(proto: Any, nodes: Sequence[Any]) -> list[tuple[str, ...] | None]:
    """Per node, the atoms of the torch module that wrote it (``('layer1', '0', 'relu')``;
    ``()`` for the root module), or None where the graph does not say."""
    scoped = [_dynamo_scope(node) for node in nodes]
    if any(path is not None for path in scoped):
        return scoped
    if proto.producer_name != "pytorch":
        return [None] * len(nodes)
    raw = [_legacy_components(node.name) for node in nodes]
    known = {components[:i] for components in raw if components for i in
             range(1, len(components) + 1)}
    return [None if components is None else _qualified(components, known)
            for components in raw]


def _dynamo_scope(node: Any) -> tuple[str, ...] | None:
    for prop in node.metadata_props:
        if prop.key == _NAME_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if not isinstance(scopes, list) or len(scopes) < 2:
                return None
            module = str(scopes[-2])  # the last entry is the FX node, not a module
            return tuple(module.split(".")) if module else ()
    return None


def _legacy_components(name: str) -> tuple[str, ...] | None:
    if not name.startswith("/"):
        return None
    return tuple(name.split("/")[1:-1])  # the last part is the node ('Relu', 'Mul_1')


def _qualified(components: tuple[str, ...], known: set) -> tuple[str, ...]:
    atoms: list[str] = []
    for depth, component in enumerate(components):
        match = _REPEAT.match(component)
        # 'relu_1' is the second call of 'relu' when the same parent also holds 'relu'
        if match and components[:depth] + (match.group(1),) in known:
            component = match.group(1)
        pieces = component.split(".")
        if len(pieces) > 1 and pieces[0] in atoms and all(p.isdigit() for p in pieces[1:]):
            # 'layer1.0' inside 'layer1': the exporter keeps the parent's atom before a number
            cut = len(atoms) - 1 - atoms[::-1].index(pieces[0])
            atoms = atoms[:cut] + pieces
        else:
            atoms += pieces
    return tuple(atoms)


def module_name(path: tuple[str, ...] | None) -> str | None:
    """``'layer1.0.relu'`` for a path; None for the root module or an unknown one."""
    return ".".join(path) if path else None


#: ONNX op (or recognised activation) -> the torch function the torch adapter names a
#: functional call after (``'layer1.0:relu'``)
TORCH_FUNCTIONS = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Sigmoid": "sigmoid",
    "HardSigmoid": "hardsigmoid", "Tanh": "tanh", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Gelu": "gelu", "Softplus": "softplus", "Softsign": "softsign",
    "HardSwish": "hardswish", "Mish": "mish", "SiLU": "silu", "Softmax": "softmax",
}
#: nodes a torch activation module may write besides its activation
MODULE_EXTRAS = frozenset({"Constant", "Identity", "Cast"})


def module_owners(nodes: Sequence[Any], paths: Sequence[tuple | None]) -> dict:
    """module path -> [(node index, op) written directly in it, whether it has children]."""
    owners: dict[tuple, list] = {}
    for i, path in enumerate(paths):
        if path is None:
            continue
        owners.setdefault(path, [[], False])[0].append((i, nodes[i].op_type))
        for k in range(len(path)):
            owners.setdefault(path[:k], [[], False])[1] = True
    return owners


def torch_layer_name(path: tuple | None, function: str, activation_nodes: frozenset,
                     owners: dict) -> str | None:
    """The torch adapter's name for a tap: the activation module (``layer1.0.relu``) when the
    module holds nothing but activations, else the function call attributed to the module
    that made it (``layer1.0:relu``, ``forward:silu`` in the model's own forward); None when
    the graph records no module.  A module called twice writes two activations: both its."""
    if path is None:
        return None
    direct, has_children = owners.get(path, [[], False])
    alone = all(i in activation_nodes or kind in MODULE_EXTRAS for i, kind in direct)
    if path and alone and not has_children:
        return ".".join(path)
    return f"{'.'.join(path) or 'forward'}:{function}"
