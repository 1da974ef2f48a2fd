"""Specs as plain data: dicts, JSON and YAML (``yaml.safe_load`` only), written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._errors import BundleLabError, require
from .._validation import check_choice, checked_keywords
from ._graph import Node, Spec

FORMATS = ("yaml", "json")
_SPEC_KEYS = ("version", "name", "input_shape", "n_classes", "init", "nodes", "output")
_REQUIRED_SPEC_KEYS = ("version", "input_shape", "n_classes", "nodes", "output")
_NODE_KEYS = ("id", "op", "params", "inputs", "optional", "measured", "stage")
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


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
            f"Unknown key {unknown[0]!r}{where}; allowed keys are "
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
                f"nodes[{i}] must be a mapping with keys 'id', 'op', ...; got {raw!r}."
            )
        _unknown_key(raw, _NODE_KEYS, f" in nodes[{i}]")
        for key in ("id", "op"):
            if key not in raw:
                raise BundleLabError(f"nodes[{i}] lacks the required field {key!r}.")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise BundleLabError(
                f"The 'params' field of nodes[{i}] must be a mapping. Got {params!r} instead."
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

    Parameters
    ----------
    text : str
        The spec as :func:`dumps` writes it.
    format : {'yaml', 'json'}, default='yaml'
        The text format.

    Returns
    -------
    Spec
    """
    try:
        if _check_format(format) == "json":
            data = json.loads(text)
        else:
            yaml = _yaml()
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleLabError(f"The spec is not valid JSON: {exc}.") from None
    except Exception as exc:  # yaml.YAMLError; yaml may be absent so it cannot be named here
        if type(exc).__module__.startswith("yaml"):
            first = " ".join(str(exc).split())
            raise BundleLabError(f"The spec is not valid YAML: {first}.") from None
        raise
    return from_dict(data)


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

    Parameters
    ----------
    path : path-like
        A file ending in ``.yaml``, ``.yml`` or ``.json``.

    Returns
    -------
    Spec
    """
    path = Path(path)
    fmt = _format_of(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleLabError(f"Cannot read the spec {str(path)!r}: {exc.strerror}.") from None
    return loads(text, format=fmt)
