"""Chain presets on top of the graph: fully connected nets and the paper's conv family."""

from __future__ import annotations

import math
import re
from typing import Any

from .._errors import BundleLabError
from .._validation import (
    check_bool,
    check_choice,
    check_int,
    check_positive_float,
    check_positive_int,
    checked_keywords,
    short_repr,
)
from ._graph import Node, Spec, check_spec_size
from ._ops import ACTIVATIONS

STAGES = ("a", "b", "c", "d")
STAGE_FILTERS = (64, 128, 256, 512)
STEM_FILTERS = 64
MAXPOOL_MIN_WIDTH = 51  # the stem max-pools only inputs wider than 50 px

#: Blocks per stage (a, b, c, d) for the paper's total depths (supplementary, table of depths).
PRESETS: dict[int, tuple[int, int, int, int]] = {
    4: (1, 0, 0, 0),
    10: (1, 1, 1, 1),
    20: (2, 2, 3, 2),
    30: (3, 3, 5, 3),
    50: (3, 6, 12, 3),
    76: (3, 6, 25, 3),
    100: (3, 12, 31, 3),
    120: (3, 12, 41, 3),
}


def _shape(value: Any, *, n_axes: int | None = None) -> tuple[int, ...]:
    """``input_shape`` as a tuple of Python ints >= 1 (of ``n_axes`` axes when given)."""
    expected = "(channels, height, width)" if n_axes == 3 else "a tuple of ints >= 1"
    try:
        if not isinstance(value, (list, tuple)) or (n_axes and len(value) != n_axes):
            raise BundleLabError(expected)
        return tuple(check_int("input_shape", d, low=1) for d in value)
    except BundleLabError:
        raise BundleLabError(
            f"The 'input_shape' parameter must be {expected}. Got {short_repr(value)} instead."
        ) from None


def _name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BundleLabError(
            f"The 'name' parameter must be None or a str. Got {short_repr(value)} instead."
        )
    return value


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


@checked_keywords
def fully_connected(
    width: int,
    depth: int,
    *,
    activation: str = "relu",
    input_shape: tuple = (784,),
    n_classes: int = 10,
    name: str | None = None,
) -> Spec:
    """A fully connected net: ``depth`` hidden dense layers of ``width`` units and a linear head.

    Hidden layers are ``dense1 .. dense{depth}`` in stage ``"hidden"``, each measured after its
    activation; inputs with more than one axis are flattened first.

    Parameters
    ----------
    width : int
        Units of every hidden layer.
    depth : int
        Number of hidden layers.
    activation : str, default='relu'
        One of :data:`ACTIVATIONS`.
    input_shape : tuple of int, default=(784,)
        Per-sample input shape, channels-first.
    n_classes : int, default=10
        Units of the linear head.
    name : str, optional
        The spec's name (default ``fc-{depth}x{width}-{activation}``).

    Returns
    -------
    Spec

    Examples
    --------
    >>> spec = fully_connected(32, 3, input_shape=(1, 8, 8))
    >>> from bundlelab.spec import measured_layers, layer_count
    >>> measured_layers(spec), layer_count(spec)
    (['dense1', 'dense2', 'dense3'], 4)
    """
    width = check_positive_int("width", width)
    depth = check_positive_int("depth", depth)
    activation = check_choice("activation", activation, ACTIVATIONS)
    input_shape = _shape(input_shape)
    n_classes = check_positive_int("n_classes", n_classes)
    name = _name(name)
    features = math.prod(input_shape)
    check_spec_size(
        depth + 2 + (len(input_shape) > 1),
        parameters=(features + 1) * width + (depth - 1) * (width + 1) * width
        + (width + 1) * n_classes,
        what=f"fully_connected(width={width}, depth={depth})",
    )
    nodes = [Node("input", "input")]
    if len(input_shape) > 1:
        nodes.append(Node("flatten", "flatten", inputs=("input",)))
    for k in range(1, depth + 1):
        params = {"units": width, "activation": activation}
        nodes.append(
            Node(f"dense{k}", "dense", params, (nodes[-1].id,), measured=True, stage="hidden")
        )
    nodes.append(Node("head", "dense", {"units": n_classes}, (nodes[-1].id,)))
    default = f"fc-{depth}x{width}-{activation}"
    return Spec(tuple(nodes), "head", input_shape, n_classes, name=name or default)


@checked_keywords
def conv_net(
    depth: int | None = None,
    *,
    blocks: tuple | list | None = None,
    residual: bool = False,
    width_multiplier: float = 1.0,
    input_shape: tuple = (3, 32, 32),
    n_classes: int = 10,
    name: str | None = None,
) -> Spec:
    """The paper's conv family after He et al.; give a preset ``depth`` or ``blocks``.

    Stem: 7x7 conv (64 filters, stride 2), batch norm, ReLU, and a 3x3/2 max-pool only for
    inputs wider than 50 px.  Stages a, b, c, d of basic blocks with 64/128/256/512 filters
    (times ``width_multiplier``, rounded, at least 1); the first block of stages b-d has
    stride 2.  Then global average pooling and a linear head; He-normal initialisation.
    Blocks are nodes ``a1, a2, ..., d3``, each measured.

    Parameters
    ----------
    depth : {4, 10, 20, 30, 50, 76, 100, 120}, optional
        A preset of :data:`PRESETS`: the number of weighted layers, ``2 * blocks + 2``.
    blocks : sequence of 4 ints, optional
        Blocks per stage instead of a preset.  Only trailing stages may be empty (as in the
        4-layer preset); to remove an inner stage use :func:`set_stage_depth`.
    residual : bool, default False
        Identity (or projection) shortcuts in every block.
    width_multiplier : float, default 1.0
        Scales every filter count, so the family runs small on a CPU.
    input_shape : (channels, height, width), default (3, 32, 32)
        Per-sample input shape.
    n_classes : int, default 10
        Units of the linear head.
    name : str, optional
        The spec's name (default ``plain-{depth}`` or ``resnet-{depth}``, with ``-x{multiplier}``).

    Returns
    -------
    Spec

    Examples
    --------
    >>> from bundlelab.spec import layer_count
    >>> layer_count(conv_net(50)), layer_count(conv_net(blocks=[2, 1, 0, 0]))
    (50, 8)
    """
    blocks = _blocks(depth, blocks)
    check_spec_size(sum(blocks) + 7, what=f"conv_net(blocks={short_repr(list(blocks))})")
    residual = check_bool("residual", residual)
    width_multiplier = check_positive_float("width_multiplier", width_multiplier)
    input_shape = _shape(input_shape, n_axes=3)
    n_classes = check_positive_int("n_classes", n_classes)
    name = _name(name)

    nodes = [
        Node("input", "input"),
        Node(
            "stem_conv",
            "conv",
            {"filters": _scaled(STEM_FILTERS, width_multiplier), "kernel_size": 7, "stride": 2},
            ("input",),
        ),
        Node("stem_bn", "batchnorm", inputs=("stem_conv",)),
        Node("stem_relu", "activation", {"function": "relu"}, ("stem_bn",)),
    ]
    if input_shape[2] >= MAXPOOL_MIN_WIDTH:
        nodes.append(Node("stem_pool", "maxpool", {"pool_size": 3, "stride": 2}, ("stem_relu",)))
    for s, (stage, count) in enumerate(zip(STAGES, blocks)):
        for k in range(1, count + 1):
            params = {
                "filters": _scaled(STAGE_FILTERS[s], width_multiplier),
                "stride": 2 if (s > 0 and k == 1) else 1,
                "residual": residual,
            }
            nodes.append(
                Node(
                    f"{stage}{k}",
                    "basic_block",
                    params,
                    (nodes[-1].id,),
                    measured=True,
                    stage=stage,
                )
            )
    nodes.append(Node("pool", "global_avg_pool", inputs=(nodes[-1].id,)))
    nodes.append(Node("head", "dense", {"units": n_classes}, ("pool",)))
    kind = "resnet" if residual else "plain"
    default = f"{kind}-{2 * sum(blocks) + 2}" + (
        f"-x{width_multiplier:g}" if width_multiplier != 1 else ""
    )
    return Spec(tuple(nodes), "head", input_shape, n_classes, name=name or default)


def _blocks(depth: Any, blocks: Any) -> tuple[int, ...]:
    if (depth is None) == (blocks is None):
        raise BundleLabError(
            "conv_net needs exactly one of 'depth' (a preset) or 'blocks' (per stage); "
            f"got depth={short_repr(depth)}, blocks={short_repr(blocks)}."
        )
    if depth is not None:
        try:
            depth = check_int("depth", depth)
        except BundleLabError:
            pass  # the choice below names the presets
        return PRESETS[check_choice("depth", depth, tuple(PRESETS))]
    if not isinstance(blocks, (list, tuple)) or len(blocks) != len(STAGES):
        raise BundleLabError(
            f"The 'blocks' parameter must be a list of {len(STAGES)} ints (blocks per stage a, "
            f"b, c, d). Got {short_repr(blocks)} instead."
        )
    counts = []
    for s, count in enumerate(blocks):
        try:
            counts.append(check_int("blocks", count, low=0))
        except BundleLabError:
            raise BundleLabError(
                f"The 'blocks' field of stages[{s}] (stage {STAGES[s]!r}) must be an int in "
                f"[0, inf). Got {short_repr(count)} instead."
            ) from None
    blocks = counts
    for s, count in enumerate(blocks):
        if count == 0 and any(blocks[s + 1 :]):
            raise BundleLabError(
                f"The 'blocks' field of stages[{s}] (stage {STAGES[s]!r}) must be an int in "
                "[1, inf) because a later stage has blocks (only trailing stages may be empty). "
                f"Got 0 instead."
            )
    if not blocks[0]:
        raise BundleLabError(
            "The 'blocks' field of stages[0] (stage 'a') must be an int in [1, inf). Got 0 instead."
        )
    return tuple(blocks)


_NAMED = re.compile(r"^(?:(plain|resnet)-(\d+)|fc-(\d+)x(\d+))$")


@checked_keywords
def preset(name: str, *, input_shape: tuple, n_classes: int, width_multiplier: float = 1.0) -> Spec:
    """A preset by name, for data of ``input_shape`` and ``n_classes``: the CLI's spec names.

    ``"plain-N"`` and ``"resnet-N"`` are :func:`conv_net` of depth ``N`` (a key of
    :data:`PRESETS`) without and with residual connections; ``"fc-DxW"`` is
    :func:`fully_connected` with ``D`` hidden layers of ``W`` units (times the multiplier), named
    like the specs it makes.

    Parameters
    ----------
    name : str
        ``"plain-N"``, ``"resnet-N"`` or ``"fc-DEPTHxWIDTH"``.
    input_shape : tuple of int
        Per-sample input shape of the data, channels-first.
    n_classes : int
        Number of classes of the data.
    width_multiplier : float, default=1.0
        Scales every filter count (conv) or the width (fully connected).

    Returns
    -------
    Spec

    Examples
    --------
    >>> preset("plain-20", input_shape=(1, 8, 8), n_classes=10, width_multiplier=0.25).name
    'plain-20-x0.25'
    >>> preset("fc-3x16", input_shape=(1, 8, 8), n_classes=10).name
    'fc-3x16-relu'
    """
    match = _NAMED.match(name) if isinstance(name, str) else None
    if match is None:
        raise BundleLabError(
            f"unknown preset {short_repr(name)}: use plain-N or resnet-N (N in "
            f"{', '.join(map(str, PRESETS))}) or fc-DEPTHxWIDTH, or give a spec file (.yaml, .json)"
        )
    kind, conv_depth, fc_depth, width = (
        None if digits is None else _number(digits) for digits in match.groups()
    )
    width_multiplier = check_positive_float("width_multiplier", width_multiplier)
    if kind:
        return conv_net(conv_depth, residual=kind == "resnet",
                        width_multiplier=width_multiplier, input_shape=input_shape,
                        n_classes=n_classes)
    if width == 0 or fc_depth == 0:
        raise BundleLabError(
            f"The preset {short_repr(name)} has {'a width' if width == 0 else 'a depth'} of 0: use "
            "fc-DEPTHxWIDTH with DEPTH and WIDTH >= 1."
        )
    return fully_connected(_scaled(width, width_multiplier), fc_depth,
                           input_shape=input_shape, n_classes=n_classes)


def _number(text: str) -> Any:
    """A preset's number as an int (a kind name stays text); refused past 9 digits, which no
    spec bundlelab builds needs (and int() of thousands of digits would itself fail)."""
    if not text.isdigit():
        return text
    if len(text) > 9:
        raise BundleLabError(
            f"The preset's number {short_repr(text, 24)} is too large: no spec bundlelab builds "
            "has a billion layers or units."
        )
    return int(text)
