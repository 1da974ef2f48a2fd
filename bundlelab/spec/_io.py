"""Specs as plain data: dicts, JSON and YAML (a bounded ``yaml.SafeLoader``), written atomically.

Reading is bounded before it is paid for: a spec file is at most :data:`MAX_SPEC_BYTES`, UTF-8,
nested at most :data:`MAX_NESTING` levels deep, and YAML aliases may stand for at most
:data:`MAX_ALIAS_NODES` nodes in all (a few hundred bytes of nested aliases otherwise expand to
gigabytes: the "billion laughs").  A spec never needs aliases, but a repeated ``params``
mapping written once with ``&p`` and reused with ``*p`` stays well within the bound.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._errors import BundleLabError, require
from .._validation import check_choice, checked_keywords, short_repr
from ._graph import Node, Spec

FORMATS = ("yaml", "json")
_SPEC_KEYS = ("version", "name", "input_shape", "n_classes", "init", "nodes", "output")
_REQUIRED_SPEC_KEYS = ("version", "input_shape", "n_classes", "nodes", "output")
_NODE_KEYS = ("id", "op", "params", "inputs", "optional", "measured", "stage")
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}

#: a spec of 100,000 nodes (the most :class:`Spec` takes) is about 15 MB of YAML
MAX_SPEC_BYTES = 32 * 2**20
#: lists and mappings inside each other; a spec needs 4 (spec, nodes, node, params)
MAX_NESTING = 32
#: YAML nodes that aliases (``*name``) may stand for, counted as if expanded
MAX_ALIAS_NODES = 10_000


@checked_keywords
def to_dict(spec: Spec) -> dict:
    """Plain data (dicts, lists, str, int, bool) that :func:`from_dict` turns back into ``spec``.

    Node fields at their defaults (no optional edges, not measured, no stage) are left out.

    Parameters
    ----------
    spec : Spec
        The network.

    Returns
    -------
    dict
    """
    nodes = []
    for node in spec.nodes:
        entry: dict[str, Any] = {"id": node.id, "op": node.op}
        if node.params:
            entry["params"] = dict(node.params)
        if node.inputs:
            entry["inputs"] = list(node.inputs)
        if node.optional:
            entry["optional"] = list(node.optional)
        if node.measured:
            entry["measured"] = True
        if node.stage is not None:
            entry["stage"] = node.stage
        nodes.append(entry)
    return {
        "version": spec.version,
        "name": spec.name,
        "input_shape": list(spec.input_shape),
        "n_classes": spec.n_classes,
        "init": spec.init,
        "nodes": nodes,
        "output": spec.output,
    }


def _unknown_key(data: dict, allowed: tuple, where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise BundleLabError(
            f"Unknown key {short_repr(unknown[0])}{where}; allowed keys are "
            + ", ".join(map(repr, allowed))
            + "."
        )


@checked_keywords
def from_dict(data: Any) -> Spec:
    """Build and validate a :class:`Spec` from plain data (the output of :func:`to_dict`).

    Parameters
    ----------
    data : dict
        The spec's fields; unknown keys are refused.

    Returns
    -------
    Spec
    """
    if not isinstance(data, dict):
        raise BundleLabError(
            f"A spec must be a mapping of {', '.join(_SPEC_KEYS)}; got {type(data).__name__}."
        )
    _unknown_key(data, _SPEC_KEYS, " in the spec")
    for key in _REQUIRED_SPEC_KEYS:
        if key not in data:
            raise BundleLabError(f"The spec lacks the required field {key!r}.")
    raw_nodes = data["nodes"]
    if not isinstance(raw_nodes, list):
        raise BundleLabError(
            f"The 'nodes' field must be a list of mappings. Got {type(raw_nodes).__name__} instead."
        )
    nodes = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise BundleLabError(
                f"nodes[{i}] must be a mapping with keys 'id', 'op', ...; got {short_repr(raw)}."
            )
        _unknown_key(raw, _NODE_KEYS, f" in nodes[{i}]")
        for key in ("id", "op"):
            if key not in raw:
                raise BundleLabError(f"nodes[{i}] lacks the required field {key!r}.")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise BundleLabError(
                f"The 'params' field of nodes[{i}] must be a mapping. Got {short_repr(params)} "
                "instead."
            )
        fields = {}
        for key in ("inputs", "optional"):
            value = raw.get(key, [])
            fields[key] = tuple(value) if isinstance(value, list) else value
        nodes.append(
            Node(
                raw["id"],
                raw["op"],
                params,
                fields["inputs"],
                fields["optional"],
                raw.get("measured", False),
                raw.get("stage"),
            )
        )
    shape = data["input_shape"]
    return Spec(
        tuple(nodes),
        data["output"],
        tuple(shape) if isinstance(shape, list) else shape,
        data["n_classes"],
        name=data.get("name", "network"),
        init=data.get("init", "he_normal"),
        version=data["version"],
    )


def _yaml():
    return require("yaml", purpose="reading and writing YAML specs (or use JSON)",
                   package="pyyaml")


_LOADER = None


def _bounded_loader():
    """A ``yaml.SafeLoader`` that refuses nesting deeper than :data:`MAX_NESTING`, recursive
    aliases, and aliases standing for more than :data:`MAX_ALIAS_NODES` nodes in all.

    PyYAML composes an alias as the anchored node itself (so loading stays cheap), but every
    walk of the loaded data (validation, an error message's repr) pays for the expansion:
    nine levels of nine aliases are 9**9 nodes.  The composer is where both are known, so the
    count happens there, with each node's expanded size computed once from its children's.
    """
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    yaml = _yaml()

    class BoundedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0
            self._expanded: dict[int, int] = {}  # id(node) -> nodes it stands for
            self._alias_nodes = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                node = super().compose_node(parent, index)
                size = self._expanded.get(id(node))
                if size is None:  # the anchor's own node is still being composed
                    raise BundleLabError(
                        f"The spec is not valid: a YAML alias refers to a node that contains "
                        f"it (line {mark.line + 1}); a spec cannot be recursive."
                    )
                self._alias_nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise BundleLabError(
                        f"The spec's YAML aliases ('*name') stand for more than "
                        f"{MAX_ALIAS_NODES:,} nodes once expanded (line {mark.line + 1}); a "
                        "spec needs no aliases: write it out (bundlelab.spec.dump does)."
                    )
                return node
            self._depth += 1
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise _too_deep(f" (line {mark.line + 1})")
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = ()
            self._expanded[id(node)] = 1 + sum(self._expanded.get(id(c), 1) for c in children)
            return node

    _LOADER = BoundedSafeLoader
    return _LOADER


def _too_deep(where: str) -> BundleLabError:
    return BundleLabError(
        f"The spec nests lists and mappings more than {MAX_NESTING} levels deep{where}; a spec "
        "needs 4."
    )


def _check_nesting(data: Any) -> None:
    """Refuse data nested deeper than :data:`MAX_NESTING` (iteratively: deep data must not
    exhaust Python's recursion here either)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_NESTING:
            raise _too_deep("")
        stack.extend((child, depth + 1) for child in children)


def _check_format(fmt: str) -> str:
    return check_choice("format", fmt, FORMATS)


@checked_keywords
def dumps(spec: Spec, *, format: str = "yaml") -> str:
    """The spec as YAML or JSON text.

    Parameters
    ----------
    spec : Spec
        The network.
    format : {'yaml', 'json'}, default='yaml'
        The text format.

    Returns
    -------
    str
    """
    data = to_dict(spec)
    if _check_format(format) == "json":
        return json.dumps(data, indent=2) + "\n"
    return _yaml().safe_dump(data, sort_keys=False, default_flow_style=None)


@checked_keywords
def loads(text: str, *, format: str = "yaml") -> Spec:
    """A validated spec from YAML or JSON text.

    YAML is read by a bounded ``yaml.SafeLoader`` (no Python objects; aliases standing for at
    most :data:`MAX_ALIAS_NODES` nodes in all, no recursive ones); either format is nested at
    most :data:`MAX_NESTING` levels deep and holds at most :data:`MAX_SPEC_BYTES` characters.

    Parameters
    ----------
    text : str or bytes
        The spec as :func:`dumps` writes it (bytes must be UTF-8).
    format : {'yaml', 'json'}, default='yaml'
        The text format.

    Returns
    -------
    Spec

    Raises
    ------
    BundleLabError
        In one line, for text that is not valid YAML/JSON, breaks a bound above, or is not a
        valid spec (including one larger than :data:`bundlelab.spec.MAX_NODES` nodes,
        :data:`~bundlelab.spec.MAX_PARAMETERS` parameters or
        :data:`~bundlelab.spec.MAX_SAMPLE_VALUES` activation values per sample).
    """
    fmt = _check_format(format)
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), "The spec")
    if not isinstance(text, str):
        raise BundleLabError(
            f"The 'text' parameter must be a str (the spec as YAML or JSON). Got "
            f"{type(text).__name__} instead."
        )
    if len(text) > MAX_SPEC_BYTES:
        raise BundleLabError(
            f"The spec is {len(text):,} characters long; bundlelab reads specs of at most "
            f"{MAX_SPEC_BYTES:,} (a spec of 100,000 nodes is about 15 MB)."
        )
    try:
        if fmt == "json":
            try:
                data = json.loads(text)
            except RecursionError:  # deeper than the C decoder goes: far past the bound
                raise _too_deep("") from None
            _check_nesting(data)
        else:
            loader = _bounded_loader()(text)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except BundleLabError:
        raise
    except json.JSONDecodeError as exc:
        raise BundleLabError(f"The spec is not valid JSON: {exc}.") from None
    except ValueError as exc:  # an int of more digits than Python converts, from either format
        detail = (
            f"a number of more than {sys.get_int_max_str_digits()} digits"
            if "integer string conversion" in str(exc) else short_repr(str(exc), 160)
        )
        raise BundleLabError(f"The spec is not valid {fmt.upper()}: {detail}.") from None
    except Exception as exc:  # yaml.YAMLError; yaml may be absent so it cannot be named here
        if fmt != "yaml":
            raise
        first = " ".join(str(exc).split())
        if not type(exc).__module__.startswith("yaml"):  # PyYAML's own slip on odd input, e.g.
            first = f"PyYAML fails on it ({type(exc).__name__}: {first})"  # a bad !!timestamp
        raise BundleLabError(f"The spec is not valid YAML: {short_repr(first, 300)}.") from None
    return from_dict(data)


def _decode(raw: bytes, where: str) -> str:
    """UTF-8 text (a byte-order mark is dropped), or one line saying where it is not."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BundleLabError(
            f"{where} is not UTF-8 text: byte {raw[exc.start]:#04x} at offset {exc.start} "
            "cannot be decoded; save it as UTF-8."
        ) from None


def _format_of(path: Path) -> str:
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise BundleLabError(
            f"Cannot tell the spec format of {str(path)!r}: use a '.yaml', '.yml' or '.json' suffix."
        )
    return fmt


@checked_keywords
def dump(spec: Spec, path: str | os.PathLike) -> None:
    """Write the spec atomically; the suffix (.yaml, .yml, .json) picks the format.

    Parameters
    ----------
    spec : Spec
        The network.
    path : path-like
        The file to write, ending in ``.yaml``, ``.yml`` or ``.json``.
    """
    path = Path(path)
    atomic_write_text(path, dumps(spec, format=_format_of(path)))


@checked_keywords
def load(path: str | os.PathLike) -> Spec:
    """Read and validate a spec; the suffix (.yaml, .yml, .json) picks the format.

    The file must be UTF-8 (a byte-order mark is fine) and at most :data:`MAX_SPEC_BYTES`
    bytes; it is read as :func:`loads` reads text.

    Parameters
    ----------
    path : path-like
        A file ending in ``.yaml``, ``.yml`` or ``.json``.

    Returns
    -------
    Spec

    Raises
    ------
    BundleLabError
        In one line, for a file that cannot be read or is refused by :func:`loads`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BundleLabError(
            f"The 'path' parameter must be the path of a spec file. Got {short_repr(path)} "
            "instead."
        )
    path = Path(path)
    fmt = _format_of(path)
    try:
        if path.exists() and not path.is_file():  # a folder, or a FIFO that would block forever
            raise BundleLabError(f"The spec {str(path)!r} is not a regular file.")
        with open(path, "rb") as stream:
            raw = stream.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise BundleLabError(
            f"Cannot read the spec {str(path)!r}: {exc.strerror or exc}."
        ) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise BundleLabError(
            f"The spec {str(path)!r} is larger than {MAX_SPEC_BYTES:,} bytes, the most bundlelab "
            "reads (a spec of 100,000 nodes is about 15 MB)."
        )
    return loads(_decode(raw, f"The spec {str(path)!r}"), format=fmt)
