"""The data model: a spec is an immutable DAG of nodes, validated when it is built."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import BundleLabError
from .._validation import check_bool, check_int, checked_keywords, short_repr
from ._ops import OPS, ShapeError

SPEC_VERSION = 1
VERSIONS = (SPEC_VERSION,)
INITS = ("he_normal", "framework_default")
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

#: The largest spec bundlelab builds: more nodes, trainable parameters or activation values of
#: one sample than this is refused when the spec is validated, before a model is built.
MAX_NODES = 100_000
MAX_PARAMETERS = 2**32  # 17.2 GB of float32 weights, before gradients and optimiser state
MAX_SAMPLE_VALUES = 2**31  # activation values of one sample over all nodes: 8.6 GB as float32


def _size(n: int) -> str:
    """``n`` float32 values in bytes: B/kB/MB/GB/TB/PB (decimal), or a power of ten beyond."""
    if n * 4 >= 10**18:
        return f"about 10^{int(math.log10(n * 4))} bytes"
    value = n * 4.0
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} PB"


def _count(n: int) -> str:
    """An exact count with thousands separators, or its power of ten when enormous."""
    return f"{n:,}" if n < 10**15 else f"about 10^{int(math.log10(n))}"


def check_spec_size(n_nodes: int, *, parameters: int | None = None,
                    sample_values: int | None = None, what: str = "The spec",
                    at_least: bool = False) -> None:
    """Refuse a spec larger than :data:`MAX_NODES` nodes, :data:`MAX_PARAMETERS` trainable
    parameters or :data:`MAX_SAMPLE_VALUES` activation values per sample, in one line that
    says the size it would take.  Builders call it before they make the nodes (with
    ``at_least`` when ``n_nodes`` is a lower bound)."""
    sizes = []
    if parameters is not None:
        sizes.append(f"{_count(parameters)} trainable parameters ({_size(parameters)} as float32)")
    if n_nodes > MAX_NODES:
        sizes.insert(0, f"{'at least ' if at_least else ''}{_count(n_nodes)} nodes")
        limit = f"at most {MAX_NODES:,} nodes"
    elif parameters is not None and parameters > MAX_PARAMETERS:
        limit = f"at most {MAX_PARAMETERS:,} parameters ({_size(MAX_PARAMETERS)})"
    elif sample_values is not None and sample_values > MAX_SAMPLE_VALUES:
        sizes.append(f"{_count(sample_values)} activation values per sample "
                     f"({_size(sample_values)} as float32)")
        limit = f"at most {MAX_SAMPLE_VALUES:,} activation values per sample"
    else:
        return
    raise BundleLabError(
        f"{what} would have {', '.join(sizes)}: bundlelab builds specs of {limit}; make it "
        "smaller (fewer layers, a smaller width or input)."
    )


class Params(Mapping):
    """A read-only, hashable mapping of an op's parameters (compares equal to a plain dict)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | None = None) -> None:
        # keys of mixed types (a YAML ``{1: 2, a: 3}``) sort by type name, then text, so that
        # validation can name the bad key instead of failing to sort
        self._items = dict(
            sorted(dict(items or {}).items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))
        )

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._items == dict(other)

    def __repr__(self) -> str:
        return repr(self._items)


@dataclass(frozen=True)
class Node:
    """One module of the network.

    Parameters
    ----------
    id : str
        Unique name; it is also the layer name that adapters report bundles under.
    op : str
        One of :data:`bundlelab.spec.OPS` ("dense", "conv", "basic_block", "add", ...).
    params : mapping
        The op's parameters; defaults are filled in when the node joins a :class:`Spec`.
    inputs : tuple of str
        Ids of the nodes that feed this one, each defined earlier in ``Spec.nodes``.
    optional : tuple of str
        The subset of ``inputs`` that are optional (stochastic) edges, as in super-networks;
        only an ``add`` node may have them.
    measured : bool
        Whether the conflicting-bundle metric is computed on this node's output.
    stage : str or None
        The stage this node belongs to; depth rewrites work on stages.
    """

    id: str
    op: str
    params: Mapping = field(default_factory=Params)
    inputs: tuple = ()
    optional: tuple = ()
    measured: bool = False
    stage: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", Params(self.params))
        for name in ("inputs", "optional"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))

    def replace(self, **changes: Any) -> Node:
        """A copy with ``changes``; ``params`` given here are merged into the current ones."""
        if "params" in changes:
            changes["params"] = {**self.params, **changes["params"]}
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return Node(**{**fields, **changes})


@dataclass(frozen=True)
class Spec:
    """A network: an ordered DAG of :class:`Node` objects, from one ``input`` node to ``output``.

    Validated on construction; raises :class:`bundlelab.BundleLabError` with one line that names
    the field (``nodes[3].params.units``) and the allowed values.  Equality is by value.

    Parameters
    ----------
    nodes : tuple of Node
        In an order where every node comes after its inputs.
    output : str
        Id of the node that produces the logits, shape ``(n_classes,)``.
    input_shape : tuple of int
        Per-sample input shape, channels-first: ``(features,)`` or ``(channels, height, width)``.
    n_classes : int
    name : str
    init : {"he_normal", "framework_default"}
        Weight initialisation the backends apply to conv and dense kernels.
    version : int
        Spec-language version; only 1 exists.
    """

    nodes: tuple
    output: str
    input_shape: tuple
    n_classes: int
    name: str = "network"
    init: str = "he_normal"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if isinstance(self.input_shape, list):
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        _convert_header(self)
        nodes, shapes = _validate(self)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "_shapes", shapes)

    def __getitem__(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def shape_of(self, node_id: str) -> tuple:
        """The per-sample output shape of a node (channels-first)."""
        return self._shapes[node_id]

    def replace(self, **changes: Any) -> Spec:
        """A validated copy with ``changes`` (e.g. ``nodes=...``)."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return Spec(**{**fields, **changes})


# a one-line BundleLabError for an unknown keyword, at the call (the dataclasses write __init__)
Node.__init__ = checked_keywords(Node.__init__)  # type: ignore[method-assign]
Spec.__init__ = checked_keywords(Spec.__init__)  # type: ignore[method-assign]


def _fail(what: str, where: str, expected: str, got: Any) -> BundleLabError:
    return BundleLabError(
        f"The {what!r} field{where} must be {expected}. Got {short_repr(got)} instead."
    )


def _convert_header(spec: Spec) -> None:
    """Check the spec's own fields, storing ints as Python ints (numpy ints from a data
    pipeline would otherwise reach the JSON and YAML writers)."""
    shape = spec.input_shape
    try:
        if not (isinstance(shape, tuple) and len(shape) in (1, 3)):
            raise BundleLabError("input_shape")
        shape = tuple(check_int("input_shape", d, low=1) for d in shape)
    except BundleLabError:
        raise _fail(
            "input_shape", "", "(features,) or (channels, height, width) of ints >= 1", shape
        ) from None
    try:
        n_classes = check_int("n_classes", spec.n_classes, low=1)
    except BundleLabError:
        raise _fail("n_classes", "", "an int in [1, inf)", spec.n_classes) from None
    object.__setattr__(spec, "input_shape", shape)
    object.__setattr__(spec, "n_classes", n_classes)


def _validate(spec: Spec) -> tuple[tuple, dict]:
    if spec.version not in VERSIONS:
        raise _fail("version", "", "one of " + ", ".join(map(str, VERSIONS)), spec.version)
    if not isinstance(spec.name, str):
        raise _fail("name", "", "a str", spec.name)
    if spec.init not in INITS:
        raise _fail("init", "", "one of " + ", ".join(map(repr, INITS)), spec.init)
    if not spec.nodes:
        raise _fail("nodes", "", "a non-empty list of nodes", [])
    check_spec_size(len(spec.nodes))

    index: dict[str, int] = {}
    nodes, shapes = [], {}
    parameters = sample_values = 0
    for i, node in enumerate(spec.nodes):
        node = _validate_node(node, i, index, spec)
        index[node.id] = i
        op = OPS[node.op]
        try:
            if node.op == "input":
                shapes[node.id] = spec.input_shape
            else:
                params = dict(node.params)
                in_shapes = [shapes[s] for s in node.inputs]
                shapes[node.id] = tuple(op.shape(params, in_shapes))
                parameters += op.weights(params, in_shapes)
        except ShapeError as exc:
            raise BundleLabError(f"nodes[{i}] ({short_repr(node.id)}): {exc}.") from None
        except OverflowError:  # a side of 10**400 pixels divided by a stride
            raise BundleLabError(
                f"nodes[{i}] ({short_repr(node.id)}): its output shape is too large to "
                "compute; the spec's sizes are absurd."
            ) from None
        sample_values += math.prod(shapes[node.id])
        nodes.append(node)
    check_spec_size(len(nodes), parameters=parameters, sample_values=sample_values)

    entries = [n for n in nodes if n.op == "input"]
    if len(entries) != 1:
        raise BundleLabError(
            f"A spec needs exactly one node with op 'input'; got {len(entries)}: "
            f"{short_repr([n.id for n in entries])}."
        )
    if not isinstance(spec.output, str) or spec.output not in index:
        raise _fail("output", "", "the id of a node (" + _choices(index) + ")", spec.output)
    expected = (spec.n_classes,)
    if shapes[spec.output] != expected:
        raise BundleLabError(
            f"The output node {short_repr(spec.output)} must produce shape {expected} for "
            f"n_classes={spec.n_classes}; got {shapes[spec.output]}."
        )
    feeding = _ancestors(nodes, index, spec.output)
    for i, node in enumerate(nodes):
        if node.id not in feeding:
            raise BundleLabError(
                f"nodes[{i}] ({short_repr(node.id)}) does not feed the output "
                f"{short_repr(spec.output)}; remove it or connect it."
            )
    return tuple(nodes), shapes


def _choices(index: Mapping, limit: int = 8) -> str:
    names = [short_repr(k, 40) for k in list(index)[: limit + 1]]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _validate_node(node: Any, i: int, index: dict, spec: Spec) -> Node:
    if not isinstance(node, Node):
        raise _fail(f"nodes[{i}]", "", "a Node", type(node).__name__)
    if not isinstance(node.id, str) or not _ID.match(node.id):
        raise _fail("id", f" of nodes[{i}]", "a name of letters, digits, '_', '.', '-'", node.id)
    where = f" of nodes[{i}] ({short_repr(node.id)})"
    if node.id in index:
        raise BundleLabError(
            f"The 'id' field{where} must be unique; nodes[{index[node.id]}] already uses it."
        )
    if not isinstance(node.op, str) or node.op not in OPS:
        raise _fail("op", where, "one of " + ", ".join(map(repr, OPS)), node.op)
    op = OPS[node.op]
    unknown = [key for key in node.params if key not in op.params]
    if unknown:
        allowed = ", ".join(map(repr, op.params)) or "none"
        raise BundleLabError(
            f"The 'params' field{where} has unknown key {short_repr(unknown[0])}; {node.op!r} "
            f"allows {allowed}."
        )
    params = {}
    for key, param in op.params.items():
        if key not in node.params and param.required:
            raise BundleLabError(
                f"The 'params.{key}' field{where} is required for {node.op!r}: {param.expected()}."
            )
        value = node.params.get(key, param.default)
        try:
            params[key] = param.convert(key, value)
        except BundleLabError:
            raise _fail(f"params.{key}", where, param.expected(), value) from None

    inputs = node.inputs
    if not isinstance(inputs, tuple) or not all(isinstance(s, str) for s in inputs):
        raise _fail("inputs", where, "a list of node ids", inputs)
    arity = (
        f"exactly {op.min_inputs}"
        if op.min_inputs == op.max_inputs
        else f"at least {op.min_inputs}"
    )
    if len(inputs) < op.min_inputs or (op.max_inputs is not None and len(inputs) > op.max_inputs):
        raise _fail("inputs", where, f"a list of {arity} node id(s) for {node.op!r}", list(inputs))
    if len(set(inputs)) != len(inputs):
        raise _fail("inputs", where, "a list of distinct node ids", list(inputs))
    for source in inputs:
        if source in index:
            continue
        later = [n.id for n in spec.nodes[i:] if isinstance(n, Node)]
        if source in later:
            cycle = _find_cycle(spec.nodes, node.id)
            if cycle:
                raise BundleLabError(
                    f"The 'inputs' field{where} closes a cycle: {' -> '.join(cycle)}; a spec "
                    "must be acyclic."
                )
            raise BundleLabError(
                f"The 'inputs' field{where} names {short_repr(source)}, which comes later in "
                "'nodes'; list every node after its inputs."
            )
        raise _fail("inputs", where, "ids of earlier nodes (" + _choices(index) + ")", source)
    if not isinstance(node.optional, tuple) or not all(
        isinstance(s, str) for s in node.optional
    ) or not set(node.optional) <= set(inputs):
        raise _fail(
            "optional", where, "a subset of its inputs " + short_repr(list(inputs)), node.optional
        )
    if node.optional and node.op != "add":
        raise _fail(
            "optional",
            where,
            "empty for op " + repr(node.op) + " (only 'add' has optional edges)",
            list(node.optional),
        )
    try:
        measured = check_bool("measured", node.measured)
    except BundleLabError:
        raise _fail("measured", where, "a bool (true or false)", node.measured) from None
    if node.stage is not None and not (isinstance(node.stage, str) and _ID.match(node.stage)):
        raise _fail("stage", where, "None or a name of letters, digits, '_', '.', '-'", node.stage)
    # Canonical order of optional edges follows inputs, so equal graphs compare equal.
    optional = tuple(s for s in inputs if s in node.optional)
    return Node(node.id, node.op, params, inputs, optional, measured, node.stage)


def _find_cycle(nodes: tuple, start: str, *, shown: int = 12) -> list[str] | None:
    """A path start -> ... -> start following input edges backwards, or None.

    Iterative (a cycle through thousands of nodes must not exhaust Python's recursion), and
    shortened to its first and last ``shown // 2`` nodes around a "..." so the message stays
    one readable line.
    """
    inputs = {
        n.id: [s for s in n.inputs if isinstance(s, str)]
        for n in nodes
        if isinstance(n, Node) and isinstance(n.id, str) and isinstance(n.inputs, tuple)
    }
    if start not in inputs:
        return None
    path, on_path, done = [start], {start}, set()
    stack = [iter(inputs[start])]
    cycle = None
    while stack:
        source = next(stack[-1], None)
        if source is None:
            stack.pop()
            done.add(path[-1])
            on_path.discard(path.pop())
        elif source in on_path:
            cycle = path[path.index(source):] + [source]
            break
        elif source not in done and source in inputs:
            path.append(source)
            on_path.add(source)
            stack.append(iter(inputs[source]))
    if cycle is None:
        return None
    # Edges point from consumer to input; show them in data-flow order.
    cycle.reverse()
    if len(cycle) > shown:
        cycle = cycle[: shown // 2] + [f"... ({len(cycle) - shown} more)"] + cycle[-shown // 2:]
    return cycle


def _ancestors(nodes: list, index: dict, target: str) -> set[str]:
    seen, stack = set(), [target]
    while stack:
        node_id = stack.pop()
        if node_id not in seen:
            seen.add(node_id)
            stack.extend(nodes[index[node_id]].inputs)
    return seen


@checked_keywords
def measured_layers(spec: Spec) -> list[str]:
    """The measured layer names, in order: the numbering that reports and rewrites share.

    For the presets: every hidden ``dense`` node of a fully connected net (output after its
    activation), every ``basic_block`` of a conv net (output after its final ReLU); never the
    stem or the classifier.  Position ``k`` in this list is layer index ``k``.

    Parameters
    ----------
    spec : Spec
        The network.

    Returns
    -------
    list of str
    """
    return [node.id for node in spec.nodes if node.measured]


@checked_keywords
def stage_nodes(spec: Spec) -> dict[str, list[str]]:
    """The node ids of each stage, stages in order of first appearance.

    Parameters
    ----------
    spec : Spec
        The network.

    Returns
    -------
    dict of str -> list of str
    """
    stages: dict[str, list[str]] = {}
    for node in spec.nodes:
        if node.stage is not None:
            stages.setdefault(node.stage, []).append(node.id)
    return stages


@checked_keywords
def stage_depths(spec: Spec, *, stages: tuple = ()) -> dict[str, int]:
    """Nodes per stage; stages named in ``stages`` but absent from the spec count 0.

    Parameters
    ----------
    spec : Spec
        The network.
    stages : tuple of str, default=()
        Stages to list first (with 0 when the spec has none of their nodes).

    Returns
    -------
    dict of str -> int

    Examples
    --------
    >>> from bundlelab.spec import conv_net
    >>> stage_depths(conv_net(4), stages=("a", "b", "c", "d"))
    {'a': 1, 'b': 0, 'c': 0, 'd': 0}
    """
    found = {name: len(ids) for name, ids in stage_nodes(spec).items()}
    return {**{name: found.get(name, 0) for name in stages}, **found}


@checked_keywords
def layer_count(spec: Spec) -> int:
    """Weighted layers on the main path, as the paper counts them.

    Each ``conv``, ``dense`` and ``classifier`` node counts 1, each ``basic_block`` and
    ``branch`` 2, and a ``conv_bn`` 1 unless it is a 1x1 shortcut projection (projections are
    not counted, as in He et al.), so a conv preset has ``2 * blocks + 2`` layers (stem conv and
    classifier), a fully connected net ``depth + 1``, and the ResNet fabric without its extra
    connections ``6n + 2``.

    Parameters
    ----------
    spec : Spec
        The network.

    Returns
    -------
    int
    """
    weights = {"conv": 1, "dense": 1, "classifier": 1, "basic_block": 2, "branch": 2}

    def weight(node: Node) -> int:
        if node.op == "conv_bn":
            return int(node.params["kernel_size"] > 1)
        return weights.get(node.op, 0)

    return sum(weight(node) for node in spec.nodes)


@checked_keywords
def parameter_count(spec: Spec) -> int:
    """Trainable parameters: what ``sum(p.numel() for p in model.parameters())`` gives in PyTorch.

    Counts conv kernels and biases (convs have no bias unless ``use_bias``), dense kernels and
    biases, batch-norm scale and offset (2 per channel), and the basic block's projection
    shortcut (1x1 conv without bias, and batch norm) where a residual block changes the shape.
    Batch-norm running statistics are buffers (Keras: non-trainable weights) and not counted.

    Parameters
    ----------
    spec : Spec
        The network.

    Returns
    -------
    int
    """
    total = 0
    for node in spec.nodes:
        if node.op != "input":
            in_shapes = [spec.shape_of(s) for s in node.inputs]
            total += OPS[node.op].weights(dict(node.params), in_shapes)
    return total
