"""Rewrites: pure functions from spec to spec, used by the auto-tune and the budgeted search.

Node ids survive every rewrite, so a layer named in a report before a rewrite keeps its name
after it; only removed layers disappear.  A stage is a chain of single-input nodes that share a
``stage`` tag; a stage with no nodes does not exist, so removing a stage's last node drops the
stage and wires the next node to the stage's input.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from .._errors import BundleLabError
from .._validation import check_bool, check_int, check_positive_float, checked_keywords, short_repr
from ._graph import Spec, check_spec_size, measured_layers, stage_nodes
from ._ops import OPS

#: the parameters that set a node's width, in the order looked up
WIDTH_PARAMS = ("filters", "units")


def _stage_chain(spec: Spec, stage: Any) -> list[str]:
    stages = stage_nodes(spec)
    if not isinstance(stage, str) or stage not in stages:
        allowed = ", ".join(map(repr, stages)) or "none (the spec has no stages)"
        raise BundleLabError(
            f"The 'stage' parameter must be one of {allowed}. Got {short_repr(stage)} instead."
        )
    chain = stages[stage]
    for previous, current in itertools.pairwise(chain):
        if spec[current].inputs != (previous,):
            raise BundleLabError(
                f"Stage {stage!r} is not a chain: {current!r} must take exactly the input "
                f"{previous!r} for depth rewrites."
            )
    if len(spec[chain[0]].inputs) != 1:
        raise BundleLabError(
            f"Stage {stage!r} must start with a single-input node; {chain[0]!r} is not."
        )
    return chain


def _remove(spec: Spec, removed: list[str], replacement: str) -> Spec:
    """Drop the chain tail ``removed``; its consumers read ``replacement`` instead."""
    gone, last = set(removed), removed[-1]
    nodes = []
    for node in spec.nodes:
        if node.id in gone:
            continue
        if last in node.inputs:
            swap = lambda ids: tuple(replacement if s == last else s for s in ids)
            node = node.replace(inputs=swap(node.inputs), optional=swap(node.optional))
        nodes.append(node)
    output = replacement if spec.output == last else spec.output
    return spec.replace(nodes=tuple(nodes), output=output)


@checked_keywords
def truncate_stage_from(spec: Spec, layer: str | int) -> Spec:
    """Remove ``layer`` and every later node of its stage (the paper's auto-tune rewrite).

    If the stage becomes empty it is dropped and its consumer is wired to the stage's input.

    Parameters
    ----------
    spec : Spec
        The network to rewrite.
    layer : str or int
        A measured layer name, or its index in :func:`measured_layers` (the report's numbering).

    Returns
    -------
    Spec
    """
    names = measured_layers(spec)
    if not isinstance(layer, str):
        try:
            index = check_int("layer", layer, low=-len(names), high=len(names) - 1)
        except BundleLabError:
            raise BundleLabError(
                f"The 'layer' parameter must be an int in [0, {len(names) - 1}] (an index of "
                f"measured_layers) or a measured layer name. Got {short_repr(layer)} instead."
            ) from None
        layer = names[index]
    if layer not in names:
        shown = ", ".join(map(repr, names[:6])) + (", ..." if len(names) > 6 else "")
        raise BundleLabError(
            f"The 'layer' parameter must be a measured layer ({shown}). Got "
            f"{short_repr(layer)} instead."
        )
    stage = spec[layer].stage
    if stage is None:
        raise BundleLabError(
            f"Layer {layer!r} belongs to no stage; only stage layers can be truncated."
        )
    chain = _stage_chain(spec, stage)
    cut = chain.index(layer)
    return set_stage_depth(spec, stage, cut)


@checked_keywords
def set_stage_depth(spec: Spec, stage: str, depth: int) -> Spec:
    """Give ``stage`` exactly ``depth`` nodes.

    Shrinking keeps the first ``depth`` nodes (``depth=0`` drops the stage).  Growing appends
    copies of the stage's last node with stride 1, numbered on from its id (``b3`` -> ``b4``,
    ``dense2`` -> ``dense3``; ``{stage}{k}`` if the id ends in no number).

    Parameters
    ----------
    spec : Spec
        The network to rewrite.
    stage : str
        A stage of the spec (see :func:`stage_nodes`).
    depth : int
        The stage's new number of nodes (0 removes it).

    Returns
    -------
    Spec
    """
    depth = check_int("depth", depth, low=0)
    chain = _stage_chain(spec, stage)
    if depth < len(chain):
        replacement = chain[depth - 1] if depth else spec[chain[0]].inputs[0]
        return _remove(spec, chain[depth:], replacement)
    if depth == len(chain):
        return spec
    check_spec_size(len(spec.nodes) + depth - len(chain),
                    what=f"set_stage_depth(stage={stage!r}, depth={depth})")
    last = spec[chain[-1]]
    taken = {node.id for node in spec.nodes}
    added, previous = [], last.id
    numbered = re.match(r"^(.*?)(\d+)$", last.id)
    prefix, start = (numbered[1], int(numbered[2])) if numbered else (f"{stage}", len(chain))
    for k in range(start + 1, start + 1 + depth - len(chain)):
        new_id = f"{prefix}{k}"
        if new_id in taken:
            raise BundleLabError(
                f"Cannot grow stage {stage!r}: the new node id {new_id!r} is already used."
            )
        params = {"stride": 1} if "stride" in last.params else {}
        added.append(last.replace(id=new_id, inputs=(previous,), params=params))
        previous = new_id
    nodes = []
    for node in spec.nodes:
        if last.id in node.inputs:
            swap = lambda ids: tuple(previous if s == last.id else s for s in ids)
            node = node.replace(inputs=swap(node.inputs), optional=swap(node.optional))
        nodes.append(node)
        if node.id == last.id:
            nodes.extend(added)
    output = previous if spec.output == last.id else spec.output
    return spec.replace(nodes=tuple(nodes), output=output)


@checked_keywords
def set_residual(spec: Spec, residual: bool, *, stage: str | None = None) -> Spec:
    """Turn the shortcut of every ``basic_block`` (of one ``stage``, if given) on or off.

    Parameters
    ----------
    spec : Spec
        The network to rewrite.
    residual : bool
        Whether the blocks get their shortcut.
    stage : str, optional
        Only the blocks of this stage; every block when omitted.

    Returns
    -------
    Spec
    """
    residual = check_bool("residual", residual)
    if stage is not None:
        _stage_chain(spec, stage)
    nodes = tuple(
        node.replace(params={"residual": residual})
        if node.op == "basic_block" and (stage is None or node.stage == stage)
        else node
        for node in spec.nodes
    )
    return spec.replace(nodes=nodes)


@checked_keywords
def scale_width(spec: Spec, factor: float) -> Spec:
    """Multiply the width of every node by ``factor``: the ``filters`` of every op that has them
    (conv, conv_bn, branch, basic_block) and the ``units`` of dense layers.

    Counts are rounded and at least 1; equal widths stay equal, so the inputs of an ``add``
    keep one shape.  The output node keeps its ``n_classes`` units.

    Parameters
    ----------
    spec : Spec
        The network to rewrite.
    factor : float
        The width multiplier, in (0, inf).

    Returns
    -------
    Spec
    """
    factor = check_positive_float("factor", factor)
    nodes = []
    for node in spec.nodes:
        key = next((k for k in WIDTH_PARAMS if k in OPS[node.op].params), None)
        if key is not None and node.id != spec.output:
            node = node.replace(params={key: max(1, round(node.params[key] * factor))})
        nodes.append(node)
    return spec.replace(nodes=tuple(nodes))
