"""The op vocabulary: each op's parameters, number of inputs, output shape and trainable weights.

Shapes are channels-first and exclude the batch axis: ``(features,)`` for flat tensors and
``(channels, height, width)`` for images.  Every spatial op pads "same", so a stride ``s`` maps a
side ``n`` to ``ceil(n / s)`` (PyTorch: ``padding=k // 2``; Keras: ``padding="same"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu", "linear")

_REQUIRED = object()

Shape = tuple  # tuple[int, ...]


class ShapeError(Exception):
    """An op cannot take the shape it is given; the graph adds the node's name to the message."""


@dataclass(frozen=True)
class Param:
    """One parameter of an op: ``kind`` is "int" (>= 1), "bool" or "choice"."""

    kind: str
    default: Any = _REQUIRED
    choices: tuple = ()

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def accepts(self, value: Any) -> bool:
        if self.kind == "int":
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if self.kind == "bool":
            return isinstance(value, bool)
        return isinstance(value, str) and value in self.choices

    def expected(self) -> str:
        if self.kind == "int":
            return "an int in [1, inf)"
        if self.kind == "bool":
            return "a bool (true or false)"
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class OpDef:
    """An op of the vocabulary: its parameters, arity, shape rule and weight count."""

    name: str
    params: dict = field(default_factory=dict)
    min_inputs: int = 1
    max_inputs: int | None = 1
    shape: Callable[[dict, list], Shape] = lambda p, s: s[0]
    weights: Callable[[dict, list], int] = lambda p, s: 0
    doc: str = ""


def _image(shape: Shape, op: str) -> Shape:
    if len(shape) != 3:
        raise ShapeError(
            f"{op!r} needs an image input (channels, height, width); got shape {shape}"
        )
    return shape


def _strided(shape: Shape, filters: int, stride: int, op: str) -> Shape:
    _, h, w = _image(shape, op)
    return (filters, math.ceil(h / stride), math.ceil(w / stride))


def _flat(shape: Shape, op: str) -> Shape:
    if len(shape) != 1:
        raise ShapeError(
            f"{op!r} needs a flat input (features,); got shape {shape}: insert a 'flatten' or "
            "'global_avg_pool' node before it"
        )
    return shape


def _same_shapes(params: dict, shapes: list) -> Shape:
    if any(s != shapes[0] for s in shapes):
        raise ShapeError(f"'add' needs inputs of one shape; got shapes {list(shapes)}")
    return shapes[0]


def _basic_block_weights(p: dict, shapes: list) -> int:
    c_in, f = shapes[0][0], p["filters"]
    main = 9 * c_in * f + 2 * f + 9 * f * f + 2 * f
    projects = p["residual"] and (p["stride"] != 1 or c_in != f)
    return main + (c_in * f + 2 * f if projects else 0)


def _batchnorm_shape(p: dict, shapes: list) -> Shape:
    if len(shapes[0]) not in (1, 3):
        raise ShapeError(f"'batchnorm' needs a flat or image input; got shape {shapes[0]}")
    return shapes[0]


OPS: dict[str, OpDef] = {
    op.name: op
    for op in (
        OpDef(
            "input", min_inputs=0, max_inputs=0, doc="the network's input; shape from input_shape"
        ),
        OpDef(
            "flatten",
            shape=lambda p, s: (math.prod(s[0]),),
            doc="reshape to (features,)",
        ),
        OpDef(
            "dense",
            {
                "units": Param("int"),
                "activation": Param("choice", "linear", ACTIVATIONS),
                "use_bias": Param("bool", True),
            },
            shape=lambda p, s: (_flat(s[0], "dense"), (p["units"],))[1],
            weights=lambda p, s: s[0][0] * p["units"] + (p["units"] if p["use_bias"] else 0),
            doc="fully connected layer, its activation applied after it",
        ),
        OpDef(
            "conv",
            {
                "filters": Param("int"),
                "kernel_size": Param("int", 3),
                "stride": Param("int", 1),
                "use_bias": Param("bool", False),
            },
            shape=lambda p, s: _strided(s[0], p["filters"], p["stride"], "conv"),
            weights=lambda p, s: (
                p["kernel_size"] ** 2 * s[0][0] * p["filters"]
                + (p["filters"] if p["use_bias"] else 0)
            ),
            doc="2-D convolution, square kernel, 'same' padding",
        ),
        OpDef(
            "batchnorm",
            shape=_batchnorm_shape,
            weights=lambda p, s: 2 * s[0][0],
            doc="batch normalisation over channels (scale and offset are trainable)",
        ),
        OpDef(
            "activation",
            {"function": Param("choice", choices=ACTIVATIONS)},
            doc="element-wise activation",
        ),
        OpDef(
            "maxpool",
            {"pool_size": Param("int", 3), "stride": Param("int", 2)},
            shape=lambda p, s: _strided(s[0], _image(s[0], "maxpool")[0], p["stride"], "maxpool"),
            doc="max-pooling, 'same' padding",
        ),
        OpDef(
            "global_avg_pool",
            shape=lambda p, s: (_image(s[0], "global_avg_pool")[0],),
            doc="mean over height and width",
        ),
        OpDef(
            "add",
            min_inputs=1,
            max_inputs=None,
            shape=_same_shapes,
            doc="element-wise sum; the only op whose inputs may be optional (stochastic) edges",
        ),
        OpDef(
            "basic_block",
            {
                "filters": Param("int"),
                "stride": Param("int", 1),
                "residual": Param("bool", False),
            },
            shape=lambda p, s: _strided(s[0], p["filters"], p["stride"], "basic_block"),
            weights=_basic_block_weights,
            doc=(
                "He et al.'s basic block: 3x3 conv (stride), BN, ReLU, 3x3 conv, BN, [+ shortcut], "
                "ReLU; the shortcut is the identity, or a 1x1 conv (stride) with BN where the "
                "shape changes; convs have no bias"
            ),
        ),
    )
}
