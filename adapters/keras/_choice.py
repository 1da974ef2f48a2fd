"""Which taps an audit measures: the activations an expert would pick, or the block outputs.

Default (``layers=None``)
    Every hidden call that ends in a non-linearity, nested models included, except the
    activations of gating branches: a squeeze-excitation branch (anything between the point
    where a branch leaves the main path and the ``Multiply`` that broadcasts it back into it,
    e.g. ``GlobalAveragePooling2D -> Conv 1x1 -> ReLU -> Conv 1x1 -> hard sigmoid``), and a
    softmax whose output weights a product (attention weights feeding a matmul, einsum or
    ``Dot``).  Such tensors hold a few values per sample that scale the main path; they are not
    the representation the paper measures.  ``layers="all"`` keeps them.  An activation
    written as a product (``x * sigmoid(x)``) is one tap, at the product.
``layers="blocks"``
    The outputs of the network's repeated blocks: a nested model or a layer made of other
    layers whose class appears at least twice (each one's output), else layer names numbered
    like ``block_3_expand``, ``conv2_block1_out`` or ``block2a_add`` (the last layer of each
    block, or the residual sum right after it).  Looked for at the top level and inside
    nested models.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from ..._errors import BundleLabError
from ._import import keras
from ._taps import (
    Tap,
    ends_in_nonlinearity,
    hidden_taps,
    is_composite,
    match_taps,
    nested_graph,
    nodes_in_execution_order,
)

#: the keyword values of ``layers`` (any other string is a layer name or pattern)
KEYWORDS = ("all", "blocks")
# products that combine two tensors: a softmax feeding one of these is attention weights
_PRODUCTS = ("Matmul", "Einsum", "Dot", "Tensordot", "Multiply")
_NUMBERED = re.compile(r"\d+[a-z]?")


@dataclass(frozen=True)
class Selection:
    """The taps an audit measures, and a one-line account of how they were chosen.

    Attributes
    ----------
    taps : list of Tap
        In execution order.
    summary : str
        What was picked and what was left out, e.g. ``"52 activations tapped (52 inside
        nested models); 18 squeeze-excitation gate activations left out (layers='all' keeps
        them)"``.
    """

    taps: list
    summary: str


def choose_taps(graph: Any, layers: Any) -> Selection:
    """The taps ``layers`` asks for in ``graph``: None (the expert default), ``"all"``,
    ``"blocks"``, or names, glob patterns and layer classes (see :func:`match_taps`)."""
    taps = hidden_taps(graph)
    if layers is None or (isinstance(layers, str) and layers == "all"):
        products, parts = decomposed_activations(graph)
        chosen = [
            tap for tap in taps
            if (tap.nonlinear or id(tap.node) in products) and id(tap.node) not in parts
        ]
        left_out = {} if layers == "all" else gating_taps(graph, chosen)
        chosen = [tap for tap in chosen if tap.name not in left_out]
        if not chosen:
            raise BundleLabError(
                f"model {graph.name!r} has no hidden layer that ends in a non-linearity; name the "
                "layers to measure with layers=[...]"
            )
        return Selection(chosen, _activations_summary(chosen, left_out, layers == "all"))
    if isinstance(layers, str) and layers == "blocks":
        chosen, how = block_taps(graph, taps)
        return Selection(chosen, f"{_count(len(chosen), 'block output')} tapped ({how})")
    chosen = match_taps(taps, layers, graph.name)
    return Selection(chosen, f"{_count(len(chosen), 'layer')} tapped, as named by layers=")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _activations_summary(chosen: Sequence[Tap], left_out: dict, keep_all: bool) -> str:
    nested = sum(1 for tap in chosen if tap.scopes)
    text = _count(len(chosen), "activation") + " tapped"
    if nested:
        text += f" ({nested} inside nested models)"
    if keep_all:
        return text + ", gating branches included (layers='all')"
    kinds: dict[str, int] = defaultdict(int)
    for kind in left_out.values():
        kinds[kind] += 1
    if kinds:
        text += "; " + " and ".join(_count(n, kind) for kind, n in kinds.items())
        text += " left out (layers='all' keeps them)"
    return text


# -- activations written out as products ------------------------------------------------------


def _is_multiply(operation: Any) -> bool:
    return isinstance(operation, keras.layers.Multiply) or type(operation).__name__ == "Multiply"


def decomposed_activations(graph: Any) -> tuple[set[int], set[int]]:
    """Activations written as ``x * f(x)`` (swish as ``x * sigmoid(x)``, hard swish as
    ``x * relu6(x + 3) / 6``): the ids of the products, which are the activations' outputs,
    and of the calls inside ``f``, which are parts of them, not activations of their own.

    ``f`` is a chain of at most four single-input calls without weights, at least one of them
    a non-linearity, from ``x`` to the product.
    """
    products: set[int] = set()
    parts: set[int] = set()
    for current in _graphs(graph):
        for node in nodes_in_execution_order(current):
            inputs = node.input_tensors
            if not _is_multiply(node.operation) or len(inputs) != 2:
                continue
            if tuple(inputs[0].shape) != tuple(inputs[1].shape):
                continue
            for x, gate in (inputs, inputs[::-1]):
                chain = _elementwise_chain(_producer(gate), _producer(x))
                if chain and any(ends_in_nonlinearity(n.operation) for n in chain):
                    products.add(id(node))
                    parts.update(id(n) for n in chain)
    return products, parts


def _elementwise_chain(node: Any, start: Any, limit: int = 4) -> list:
    """The calls from ``start`` (excluded) to ``node`` (included) when they form a chain of
    single-input calls without weights, else an empty list."""
    chain = []
    while len(chain) < limit:
        if len(node.input_tensors) != 1 or getattr(node.operation, "weights", None):
            return []
        chain.append(node)
        parent = _producer(node.input_tensors[0])
        if parent is start:
            return chain
        node = parent
    return []


# -- gating branches ---------------------------------------------------------------------------


def _graphs(graph: Any) -> list:
    """``graph`` and the graphs of the models nested in it, each once."""
    found, pending = {}, [graph]
    while pending:
        current = pending.pop()
        if id(current) in found:
            continue
        found[id(current)] = current
        pending.extend(
            inner for node in nodes_in_execution_order(current)
            if (inner := nested_graph(node.operation)) is not None
        )
    return list(found.values())


def _ancestors(nodes: Sequence[Any]) -> set[int]:
    """Ids of ``nodes`` and of every node they depend on."""
    seen: set[int] = set()
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if id(node) not in seen:
            seen.add(id(node))
            pending.extend(node.parent_nodes)
    return seen


def _broadcast(shape: Sequence, into: Sequence) -> bool:
    """Whether a tensor of per-sample ``shape`` is stretched to ``into`` by broadcasting (a
    per-channel scale of shape (1, 1, C) into (H, W, C), or a lower rank)."""
    if len(shape) < len(into):
        return True
    return any(a == 1 and b != 1 for a, b in zip(reversed(shape), reversed(into)))


def _producer(tensor: Any) -> Any:
    history = tensor._keras_history
    return history.operation._inbound_nodes[history.node_index]


def _is_softmax(operation: Any) -> bool:
    if isinstance(operation, keras.layers.Softmax) or type(operation).__name__ == "Softmax":
        return True
    return getattr(operation, "activation", None) is keras.activations.softmax


def _feeds_a_product(node: Any, consumers: dict) -> bool:
    """Whether ``node``'s output reaches a product, directly or through single-input calls
    without weights (dropout, reshape, transpose): attention weights."""
    pending, seen = list(consumers[id(node)]), set()
    while pending:
        consumer = pending.pop()
        if id(consumer) in seen:
            continue
        seen.add(id(consumer))
        operation = consumer.operation
        if isinstance(operation, keras.layers.Dot) or type(operation).__name__ in _PRODUCTS:
            return True
        if len(consumer.input_tensors) == 1 and not getattr(operation, "weights", None):
            pending.extend(consumers[id(consumer)])
    return False


def gating_taps(graph: Any, taps: Sequence[Tap]) -> dict[str, str]:
    """Tap name -> why it is a gate, for the ``taps`` that lie in a gating branch."""
    kinds: dict[int, str] = {}
    for current in _graphs(graph):
        nodes = nodes_in_execution_order(current)
        consumers: dict[int, list] = defaultdict(list)
        for node in nodes:
            for parent in node.parent_nodes:
                consumers[id(parent)].append(node)
        for node in nodes:
            operation = node.operation
            if _is_softmax(operation) and _feeds_a_product(node, consumers):
                kinds[id(node)] = "attention softmax weight"
            if not _is_multiply(operation):
                continue
            for branch in _gating_branches(node):
                for branch_node in branch:
                    kinds.setdefault(branch_node, "squeeze-excitation gate activation")
    return {tap.name: kinds[id(tap.node)] for tap in taps if id(tap.node) in kinds}


def _is_global_pool(node: Any) -> bool:
    name = type(node.operation).__name__
    return name.startswith(("GlobalAveragePooling", "GlobalMaxPooling"))


def _gating_branches(node: Any) -> list[set[int]]:
    """For a product, the node ids of each operand's branch that gates the others: a branch
    (the nodes after it left the other operands' path) broadcast into the product, or one
    that squeezes the tensor with a global pooling (a squeeze-excitation gate whose spatial
    size happens to be 1x1 broadcasts nothing)."""
    inputs = node.input_tensors
    into = tuple(node.outputs[0].shape[1:])
    branches, main = [], []
    for i, tensor in enumerate(inputs):
        others = _ancestors([_producer(t) for j, t in enumerate(inputs) if j != i])
        branch = _branch(_producer(tensor), others)
        gate = bool(branch and others) and (
            _broadcast(tuple(tensor.shape[1:]), into)
            or any(map(_is_global_pool, branch.values()))
        )
        (branches if gate else main).append(set(branch))
    return branches if main else []  # every operand a gate: a product of equals (a GLU)


def _branch(start: Any, main_path: set[int]) -> dict[int, Any]:
    """The nodes (by id) that compute ``start`` after its branch left the main path."""
    seen: dict[int, Any] = {}
    pending = [start]
    while pending:
        node = pending.pop()
        if id(node) in seen or id(node) in main_path:
            continue
        seen[id(node)] = node
        pending.extend(node.parent_nodes)
    return seen


# -- blocks ------------------------------------------------------------------------------------


def block_taps(graph: Any, taps: Sequence[Tap]) -> tuple[list[Tap], str]:
    """The outputs of the repeated blocks, in execution order, and how they were found."""
    levels: dict[tuple, list[Tap]] = defaultdict(list)
    for tap in taps:
        levels[tuple(scope.name for scope in tap.scopes)].append(tap)
    chosen: set[str] = set()
    how: list[str] = []
    inside_blocks: list[str] = []  # the nested models that are blocks: not looked into
    for level, level_taps in sorted(levels.items(), key=lambda item: len(item[0])):
        if any(scope in inside_blocks for scope in level):
            continue
        where = f" in {level[-1]!r}" if level else ""
        composite = _repeated_composites(level_taps)
        named, template = _numbered_blocks(level_taps)
        # both: the finer division (ConvNeXt's 3 repeated downsampling Sequentials are not
        # its 18 blocks, which only their names tell)
        if composite and len(composite) >= len(named):
            chosen.update(tap.name for tap in composite)
            inside_blocks.extend(tap.name for tap in composite if nested_graph(tap.operation))
            classes = sorted({type(tap.operation).__name__ for tap in composite})
            how.append(f"repeated {', '.join(classes)} layers{where}")
        elif named:
            chosen.update(tap.name for tap in named)
            how.append(f"the last layer of each {template + '_*'!r} group{where}")
    if not chosen:
        raise BundleLabError(
            f"model {graph.name!r} has no repeated blocks (no nested model or layer made of other "
            "layers used twice, no layer names numbered like 'block_3_...'): name the layers to "
            "measure with layers=[...]"
        )
    return [tap for tap in taps if tap.name in chosen], "; ".join(how)


def _repeated_composites(taps: Sequence[Tap]) -> list[Tap]:
    by_class: dict[type, list[Tap]] = defaultdict(list)
    for tap in taps:
        if is_composite(tap.operation):
            by_class[type(tap.operation)].append(tap)
    return [tap for group in by_class.values() if len(group) >= 2 for tap in group]


def _block_keys(name: str) -> list[tuple[str, str]]:
    """(template, key) per numbered prefix of a layer name: ``conv2_block1_out`` ->
    ``[("conv#", "conv2"), ("conv#_block#", "conv2_block1")]``."""
    tokens = name.split("_")
    keys = []
    for end, token in enumerate(tokens, start=1):
        if any(c.isdigit() for c in token):
            key = "_".join(tokens[:end])
            keys.append((_NUMBERED.sub("#", key), key))
    return keys


def _is_merge(node: Any) -> bool:
    """A residual sum or a concatenation (two or more inputs, not a product)."""
    operation = node.operation
    if isinstance(operation, keras.layers.Dot) or type(operation).__name__ in _PRODUCTS:
        return False
    return len(node.input_tensors) >= 2


def _numbered_blocks(taps: Sequence[Tap]) -> tuple[list[Tap], str]:
    """The block outputs found from numbered layer names at one level, and their template.

    A template (the name up to a numbered token, numbers as ``#``) qualifies when at least two
    numbered groups follow it, they hold two layers each on average, and they do not
    interleave (Keras' automatic names, ``conv2d_3``, ``re_lu_7``, give groups of one).  Of
    the templates whose groups contain a residual sum or a concatenation, the deepest is the
    block (``conv#_block#``, not the stage ``conv#`` nor the sub-unit ``conv#_block#_#``);
    when none does, the deepest qualifying template.
    """
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, tap in enumerate(taps):
        for template, key in _block_keys(tap.node.operation.name):
            groups[template][key].append(i)
    qualified = []
    for template, keyed in groups.items():
        members = sorted(keyed.values(), key=lambda m: m[0])
        if len(members) < 2 or sum(map(len, members)) < 2 * len(members):
            continue
        if any(a[-1] > b[0] for a, b in zip(members, members[1:])):
            continue
        merges = any(_is_merge(taps[i].node) for m in members for i in m)
        qualified.append((merges, template.count("_"), len(members), template, members))
    if not qualified:
        return [], ""
    _, _, _, template, members = max(qualified, key=lambda q: q[:3])
    grouped = {i for m in members for i in m}
    by_node = {id(tap.node): i for i, tap in enumerate(taps)}
    consumers: dict[int, list] = defaultdict(list)
    for tap in taps:
        for parent in tap.node.parent_nodes:
            consumers[id(parent)].append(tap.node)
    outputs = []
    for m in members:
        last = taps[m[-1]]
        after = consumers[id(last.node)]
        # a residual sum right after the block but outside its names (``x + block(x)``)
        if len(after) == 1 and _is_merge(after[0]) and id(after[0]) in by_node:
            if by_node[id(after[0])] not in grouped:
                last = taps[by_node[id(after[0])]]
        outputs.append(last)
    return outputs, template
