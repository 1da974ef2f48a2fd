"""The op vocabulary: each op's parameters, number of inputs, output shape and trainable weights.

Shapes are channels-first and exclude the batch axis: ``(features,)`` for flat tensors and
``(channels, height, width)`` for images.  Every spatial op pads "same", so a stride ``s`` maps a
side ``n`` to ``ceil(n / s)``; both builders pad an odd kernel ``k // 2`` on every side (as
PyTorch does; Keras's own "same" would pad a strided conv on an even side only at the bottom
and right, so the Keras builder pads explicitly there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._validation import check_bool, check_choice, check_int

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

    def convert(self, name: str, value: Any) -> Any:
        """``value`` as a plain Python value (a numpy int becomes an int), or a
        :class:`bundlelab.BundleLabError` when this parameter does not accept it."""
        if self.kind == "int":
            return check_int(name, value, low=1)
        if self.kind == "bool":
            return check_bool(name, value)
        return check_choice(name, value if isinstance(value, str) else repr(value), self.choices)

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
    #: multiply-accumulates of one sample: (params, input shapes, output shape) -> int
    macs: Callable[[dict, list, Shape], int] = lambda p, s, out: 0


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


def _conv_macs(c_in: int, out: Shape, kernel: int) -> int:
    """A convolution's multiply-accumulates, counted at its output resolution (so a strided conv
    costs a quarter, and a conv after a x2 upsampling four times, of the same conv at stride 1
    on its input)."""
    filters, height, width = out
    return c_in * filters * height * width * kernel * kernel


def _conv_bn_shape(p: dict, shapes: list) -> Shape:
    c, h, w = _image(shapes[0], "conv_bn")
    up = p["upsample"]
    return _strided((c, h * up, w * up), p["filters"], p["stride"], "conv_bn")


def _branch_macs(p: dict, shapes: list, out: Shape) -> int:
    return _conv_macs(shapes[0][0], out, 3) + _conv_macs(out[0], out, 3)


def _basic_block_macs(p: dict, shapes: list, out: Shape) -> int:
    c_in, f = shapes[0][0], p["filters"]
    projects = p["residual"] and (p["stride"] != 1 or c_in != f)
    add = math.prod(out) if p["residual"] else 0
    return _branch_macs(p, shapes, out) + (_conv_macs(c_in, out, 1) if projects else 0) + add


def _classifier_shape(p: dict, shapes: list) -> Shape:
    if len(shapes[0]) not in (1, 3):
        raise ShapeError(f"'classifier' needs a flat or image input; got shape {shapes[0]}")
    return (p["units"],)


def _batchnorm_shape(p: dict, shapes: list) -> Shape:
    if len(shapes[0]) not in (1, 3):
        raise ShapeError(f"'batchnorm' needs a flat or image input; got shape {shapes[0]}")
    return shapes[0]


OPS: dict[str, OpDef] = {
    op.name: op
    for op in (
        # the network's input; shape from input_shape
        OpDef("input", min_inputs=0, max_inputs=0),
        # reshape to (features,)
        OpDef(
            "flatten",
            shape=lambda p, s: (math.prod(s[0]),),
        ),
        # fully connected layer, its activation applied after it
        OpDef(
            "dense",
            {
                "units": Param("int"),
                "activation": Param("choice", "linear", ACTIVATIONS),
                "use_bias": Param("bool", True),
            },
            shape=lambda p, s: (_flat(s[0], "dense"), (p["units"],))[1],
            weights=lambda p, s: s[0][0] * p["units"] + (p["units"] if p["use_bias"] else 0),
            macs=lambda p, s, out: s[0][0] * p["units"],
        ),
        # 2-D convolution, square kernel, 'same' padding
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
            macs=lambda p, s, out: _conv_macs(s[0][0], out, p["kernel_size"]),
        ),
        # batch normalisation over channels (scale and offset are trainable)
        OpDef(
            "batchnorm",
            shape=_batchnorm_shape,
            weights=lambda p, s: 2 * s[0][0],
        ),
        # element-wise activation
        OpDef(
            "activation",
            {"function": Param("choice", choices=ACTIVATIONS)},
        ),
        # max-pooling, 'same' padding
        OpDef(
            "maxpool",
            {"pool_size": Param("int", 3), "stride": Param("int", 2)},
            shape=lambda p, s: _strided(s[0], _image(s[0], "maxpool")[0], p["stride"], "maxpool"),
        ),
        # mean over height and width
        OpDef(
            "global_avg_pool",
            shape=lambda p, s: (_image(s[0], "global_avg_pool")[0],),
        ),
        # element-wise sum, then its activation (a fabric's aggregation: ReLU of the sum); the only
        # op whose inputs may be optional (stochastic) edges
        OpDef(
            "add",
            {"activation": Param("choice", "linear", ACTIVATIONS)},
            min_inputs=1,
            max_inputs=None,
            shape=_same_shapes,
            macs=lambda p, s, out: math.prod(out) * (len(s) - 1),
        ),
        # [nearest-neighbour x upsample,] conv without bias ('same' padding, stride), batch norm,
        # then its activation: a fabric's transformation, a projection shortcut
        OpDef(
            "conv_bn",
            {
                "filters": Param("int"),
                "kernel_size": Param("int", 3),
                "stride": Param("int", 1),
                "upsample": Param("int", 1),
                "activation": Param("choice", "linear", ACTIVATIONS),
            },
            shape=_conv_bn_shape,
            weights=lambda p, s: p["kernel_size"] ** 2 * s[0][0] * p["filters"] + 2 * p["filters"],
            macs=lambda p, s, out: _conv_macs(s[0][0], out, p["kernel_size"]),
        ),
        # the residual branch of a basic block: 3x3 conv (stride), BN, ReLU, 3x3 conv, BN; no
        # shortcut and no final activation (an 'add' joins it to its shortcut)
        OpDef(
            "branch",
            {"filters": Param("int"), "stride": Param("int", 1)},
            shape=lambda p, s: _strided(s[0], p["filters"], p["stride"], "branch"),
            weights=lambda p, s: (
                9 * s[0][0] * p["filters"] + 9 * p["filters"] ** 2 + 4 * p["filters"]
            ),
            macs=_branch_macs,
        ),
        # global average pooling (of an image input) and a dense layer with bias: logits
        OpDef(
            "classifier",
            {"units": Param("int")},
            shape=_classifier_shape,
            weights=lambda p, s: s[0][0] * p["units"] + p["units"],
            macs=lambda p, s, out: s[0][0] * p["units"],
        ),
        # He et al.'s basic block: 3x3 conv (stride), BN, ReLU, 3x3 conv, BN, [+ shortcut], ReLU;
        # the shortcut is the identity, or a 1x1 conv (stride) with BN where the shape changes;
        # convs have no bias
        OpDef(
            "basic_block",
            {
                "filters": Param("int"),
                "stride": Param("int", 1),
                "residual": Param("bool", False),
            },
            shape=lambda p, s: _strided(s[0], p["filters"], p["stride"], "basic_block"),
            weights=_basic_block_weights,
            macs=_basic_block_macs,
        ),
    )
}
