"""Build a Keras 3 Functional model from an architecture spec (:mod:`bundlelab.spec`).

Every node becomes one layer named by the node's id, so the Keras adapter reports a measured
node under its id, its output taken after the node's final activation as the torch builder
taps it: a ``basic_block`` (:class:`BasicBlock`) after its final ReLU, a ``conv_bn``
(:class:`ConvBN`) or an ``add`` (:class:`Sum`) after its ``activation``.  Keras on the torch
backend cannot name a layer with weights by an id holding ``"."`` (the fabrics'
``"g2b1.branch"``): such a node's layer is named with ``"_"`` instead, unless it is measured.
The model runs channels-first, as the spec describes it: inputs are ``(batch, C, H, W)`` and
the image layers are built with ``data_format="channels_first"`` (PyTorch's native layout, so
the torch backend runs them without transposing).  Convolutions and max-pooling pad "same" as
the torch builder does (an odd window ``k // 2`` on every side, also with a stride, where Keras'
own "same" pads the bottom and right), so on equal weights both frameworks compute the same
logits.

>>> from bundlelab.spec import conv_net, measured_layers
>>> from bundlelab.adapters.keras import audit, build_model          # doctest: +SKIP
>>> spec = conv_net(10, residual=True, width_multiplier=0.125)
>>> model = build_model(spec, seed=0)                                 # doctest: +SKIP
>>> report = audit(model, x, y, layers=measured_layers(spec))         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..._errors import BundleLabError
from ..._validation import check_seed, checked_keywords
from ...spec import Spec
from ._import import keras

IMAGE_FORMAT = "channels_first"
# PyTorch's batch-norm defaults (Keras': momentum 0.99, epsilon 1e-3), so that one spec trains
# alike in both frameworks; Keras' momentum weighs the old statistic (torch's 0.1 -> 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _initializer_name(init: str) -> str:
    # spec.init "he_normal" is Keras' HeNormal: truncated normal, stddev sqrt(2 / fan_in)
    # after the truncation correction, so the variance of torch's kaiming_normal_.
    return "he_normal" if init == "he_normal" else "glorot_uniform"  # Keras' own default


def _seeded(initializer: Any, seed: int | None):
    """``initializer`` (a name, config or object) as a fresh object with ``seed``."""
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if seed is not None and "seed" in config:
        config["seed"] = seed
    return type(initializer).from_config(config)


class _Init:
    """Kernel initializers for one model: ``spec.init``, each layer seeded from one ``seed``."""

    def __init__(self, init: str, seed: int | None) -> None:
        self.name = _initializer_name(init)
        self._rng = None if seed is None else np.random.default_rng(seed)

    def seed(self) -> int | None:
        """A fresh seed per layer (None: Keras' global seeding)."""
        return None if self._rng is None else int(self._rng.integers(2**31 - 8))

    def __call__(self):
        return _seeded(self.name, self.seed())


def _torch_padding(window, strides) -> int:
    """The padding on every side of an image where the torch builder's "same" is not Keras'.

    The torch builder pads an odd window ``k // 2`` on every side; Keras' "same" differs from
    that only with a stride, where it pads the bottom and right (a 3x3 window with stride 2 on
    8x8: 0 rows above, 1 below).  There the layer pads ``k // 2`` itself and runs "valid"
    (0 elsewhere: Keras' "same", which matches the torch builder's for even windows).
    """
    k = window if isinstance(window, int) else window[0]
    stride = strides if isinstance(strides, int) else strides[0]
    return k // 2 if k % 2 and stride > 1 else 0


def _padded_shape(shape, pad: int):
    return (*shape[:2], *(None if n is None else n + 2 * pad for n in shape[2:]))


def _pad_image(x, pad: int, value: float = 0.0):
    return keras.ops.pad(x, [[0, 0], [0, 0], [pad, pad], [pad, pad]], constant_values=value)


@keras.saving.register_keras_serializable(package="bundlelab")
class SameConv2D(keras.layers.Conv2D):
    """A channels-first ``Conv2D`` that pads "same" as the torch builder does."""

    def __init__(self, filters, kernel_size, strides=1, **kwargs) -> None:
        kwargs.pop("padding", None)  # a saved config holds the padding this rule chose
        self._pad = _torch_padding(kernel_size, strides)
        padding = "valid" if self._pad else "same"
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)

    def call(self, inputs):
        return super().call(_pad_image(inputs, self._pad) if self._pad else inputs)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded_shape(input_shape, self._pad))


@keras.saving.register_keras_serializable(package="bundlelab")
class SameMaxPooling2D(keras.layers.MaxPooling2D):
    """A channels-first ``MaxPooling2D`` that pads "same" (with -inf) as the torch builder does."""

    def __init__(self, pool_size, strides=None, **kwargs) -> None:
        kwargs.pop("padding", None)
        self._pad = _torch_padding(pool_size, pool_size if strides is None else strides)
        padding = "valid" if self._pad else "same"
        super().__init__(pool_size, strides, padding=padding, **kwargs)

    def call(self, inputs):
        return super().call(_pad_image(inputs, self._pad, -float("inf")) if self._pad else inputs)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded_shape(input_shape, self._pad))


def _conv(filters, kernel_size, stride, use_bias, initializer, name):
    return SameConv2D(
        filters,
        kernel_size,
        strides=stride,
        use_bias=use_bias,
        data_format=IMAGE_FORMAT,
        kernel_initializer=initializer,
        bias_initializer="zeros",
        name=name,
    )


def _batchnorm(name):
    # axis 1 is the channels of an image (N, C, H, W) and the features of a flat (N, F) tensor
    return keras.layers.BatchNormalization(
        axis=1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def _activation(function: str):
    # Keras' activations.gelu defaults to the exact erf form, as torch's nn.GELU does.
    return keras.activations.get(function)


@keras.saving.register_keras_serializable(package="bundlelab")
class BasicBlock(keras.layers.Layer):
    """He et al.'s basic block, channels-first, as :func:`bundlelab.spec.parameter_count` counts it.

    3x3 conv (``stride``), BN, ReLU, 3x3 conv, BN, [+ shortcut], [ReLU]; convs have no bias.
    With ``residual`` the shortcut is the identity, or a 1x1 conv (``stride``, no bias) with BN
    where the shape changes.  ``activation`` is the final ReLU (linear without ``final_relu``:
    a ``branch``), so the Keras adapter's default selection treats the block as a layer that
    ends in a non-linearity exactly when it does.
    """

    def __init__(
        self,
        filters: int,
        stride: int = 1,
        residual: bool = False,
        kernel_initializer: Any = "he_normal",
        seed: int | None = None,
        final_relu: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.stride, self.residual = filters, stride, residual
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.final_relu = final_relu
        self.activation = _activation("relu" if final_relu else "linear")
        self.conv1 = _conv(filters, 3, stride, False, self._initializer(0), "conv1")
        self.bn1 = _batchnorm("bn1")
        self.conv2 = _conv(filters, 3, 1, False, self._initializer(1), "conv2")
        self.bn2 = _batchnorm("bn2")
        self.projection = None

    def _initializer(self, k: int):
        # A seeded initializer returns the same values at every call: one seed per conv.
        return _seeded(self.kernel_initializer, None if self.seed is None else self.seed + k)

    def build(self, input_shape) -> None:
        channels = input_shape[1]
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(shape)
        self.conv2.build(shape)
        self.bn2.build(shape)
        if self.residual and (self.stride != 1 or channels != self.filters):
            self.projection = (
                _conv(self.filters, 1, self.stride, False, self._initializer(2), "proj_conv"),
                _batchnorm("proj_bn"),
            )
            self.projection[0].build(input_shape)
            self.projection[1].build(shape)

    def call(self, inputs, training=None):
        x = keras.activations.relu(self.bn1(self.conv1(inputs), training=training))
        x = self.bn2(self.conv2(x), training=training)
        if self.residual:
            shortcut = inputs
            if self.projection is not None:
                conv, bn = self.projection
                shortcut = bn(conv(inputs), training=training)
            x = x + shortcut
        return self.activation(x)

    def compute_output_shape(self, input_shape):
        return self.conv1.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "filters": self.filters,
            "stride": self.stride,
            "residual": self.residual,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "seed": self.seed,
            "final_relu": self.final_relu,
        }


@keras.saving.register_keras_serializable(package="bundlelab")
class ConvBN(keras.layers.Layer):
    """[Nearest-neighbour x ``upsample``,] conv without bias (``stride``), BN, ``activation``.

    The conv pads "same" at the upsampled resolution, as the torch builder's ``conv_bn``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        stride: int = 1,
        upsample: int = 1,
        activation: str = "linear",
        kernel_initializer: Any = "he_normal",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.stride = filters, kernel_size, stride
        self.upsample = upsample
        self.activation = _activation(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.upsampling = None
        if upsample > 1:
            self.upsampling = keras.layers.UpSampling2D(
                upsample, data_format=IMAGE_FORMAT, interpolation="nearest", name="upsample"
            )
        self.conv = _conv(filters, kernel_size, stride, False, self.kernel_initializer, "conv")
        self.bn = _batchnorm("bn")

    def build(self, input_shape) -> None:
        if self.upsampling is not None:
            input_shape = self.upsampling.compute_output_shape(input_shape)
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = inputs if self.upsampling is None else self.upsampling(inputs)
        return self.activation(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        if self.upsampling is not None:
            input_shape = self.upsampling.compute_output_shape(input_shape)
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "upsample": self.upsample,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="bundlelab")
class Sum(keras.layers.Add):
    """The element-wise sum of its inputs (one or more), then ``activation``: an ``add`` node."""

    def __init__(self, activation: str = "linear", **kwargs) -> None:
        super().__init__(**kwargs)
        self.activation = _activation(activation)

    def _merge_function(self, inputs):
        return self.activation(super()._merge_function(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(),
                "activation": keras.activations.serialize(self.activation)}


@keras.saving.register_keras_serializable(package="bundlelab")
class Classifier(keras.layers.Layer):
    """Global average pooling of an image input (a flat one as it is), then dense with bias."""

    def __init__(self, units: int, kernel_initializer: Any = "he_normal", **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.dense = keras.layers.Dense(
            units, kernel_initializer=self.kernel_initializer, bias_initializer="zeros",
            name="dense",
        )

    def build(self, input_shape) -> None:
        self.dense.build((input_shape[0], input_shape[1]))

    def call(self, inputs):
        pooled = keras.ops.mean(inputs, axis=(2, 3)) if len(inputs.shape) == 4 else inputs
        return self.dense(pooled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


# -- one builder per op: (node params, input tensors, node id, Init) -> output tensor -----------


def _dense(p, inputs, name, init):
    layer = keras.layers.Dense(
        p["units"],
        activation=_activation(p["activation"]),
        use_bias=p["use_bias"],
        kernel_initializer=init(),
        bias_initializer="zeros",
        name=name,
    )
    return layer(inputs[0])


def _conv_node(p, inputs, name, init):
    layer = _conv(p["filters"], p["kernel_size"], p["stride"], p["use_bias"], init(), name)
    return layer(inputs[0])


def _basic_block(p, inputs, name, init):
    block = BasicBlock(
        p["filters"], p["stride"], p["residual"],
        kernel_initializer=init.name, seed=init.seed(), name=name,
    )
    return block(inputs[0])


def _branch(p, inputs, name, init):
    block = BasicBlock(
        p["filters"], p["stride"], residual=False, final_relu=False,
        kernel_initializer=init.name, seed=init.seed(), name=name,
    )
    return block(inputs[0])


def _conv_bn(p, inputs, name, init):
    layer = ConvBN(
        p["filters"], p["kernel_size"], p["stride"], p["upsample"], p["activation"],
        kernel_initializer=init(), name=name,
    )
    return layer(inputs[0])


_BUILDERS: dict[str, Callable] = {
    # "channels_last": flatten the tensor as it is, (C, H, W) order like torch.flatten;
    # "channels_first" would move the channels last before flattening.
    "flatten": lambda p, x, name, init: keras.layers.Flatten(
        data_format="channels_last", name=name
    )(x[0]),
    "dense": _dense,
    "conv": _conv_node,
    "batchnorm": lambda p, x, name, init: _batchnorm(name)(x[0]),
    "activation": lambda p, x, name, init: keras.layers.Activation(
        _activation(p["function"]), name=name
    )(x[0]),
    "maxpool": lambda p, x, name, init: SameMaxPooling2D(
        p["pool_size"], p["stride"], data_format=IMAGE_FORMAT, name=name
    )(x[0]),
    "global_avg_pool": lambda p, x, name, init: keras.layers.GlobalAveragePooling2D(
        data_format=IMAGE_FORMAT, name=name
    )(x[0]),
    # Optional (stochastic) edges are summed like the others for now: the model is the
    # super-network with every edge on.
    "add": lambda p, x, name, init: Sum(p["activation"], name=name)(list(x)),
    "conv_bn": _conv_bn,
    "branch": _branch,
    "classifier": lambda p, x, name, init: Classifier(
        p["units"], kernel_initializer=init(), name=name
    )(x[0]),
    "basic_block": _basic_block,
}


# ops whose layers have weights: Keras on torch cannot name them with a "."
_WEIGHTED_OPS = ("dense", "conv", "batchnorm", "basic_block", "conv_bn", "branch", "classifier")


def _layer_names(spec) -> dict[str, str]:
    """Node id -> layer name: the id, except on the torch backend for a node with weights whose
    id holds ``"."``: there ``"."`` -> ``"_"`` (suffixed ``_2``, ``_3``... if another node has
    that id), as the torch builder names such a node's module."""
    names = {node.id: node.id for node in spec.nodes}
    if keras.backend.backend() != "torch":
        return names
    taken = set(names)
    for node in spec.nodes:
        if node.op not in _WEIGHTED_OPS or "." not in node.id:
            continue
        if node.measured:
            raise BundleLabError(
                f"node {node.id!r} is measured and has weights and a '.' in its id, which Keras "
                "on the torch backend cannot use as a layer name, so the Keras adapter could "
                "not report it under its id; rename the node (e.g. with '_' or '-')"
            )
        base = name = node.id.replace(".", "_")
        k = 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        names[node.id] = name
    return names


@checked_keywords
def build_model(spec: Spec, *, seed: int | None = None) -> keras.Model:
    """A Keras Functional model that executes ``spec``, each node a layer named by its id.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    seed : int, optional
        Seeds every kernel initializer (each layer gets its own seed drawn from it), so equal
        seeds give equal weights; default: Keras' global seeding.

    Returns
    -------
    keras.Model
        Inputs of shape ``(batch, *spec.input_shape)`` (channels-first), outputs the logits of
        shape ``(batch, spec.n_classes)``.  Conv and dense kernels use ``spec.init``
        (``"he_normal"``: Keras' HeNormal; ``"framework_default"``: Glorot uniform), biases are
        zero, every spatial op pads ``"same"`` as the torch builder does, batch norm uses
        PyTorch's momentum and epsilon: on equal weights, the logits of
        :func:`bundlelab.adapters.torch.build_model`.  Trainable weights number
        :func:`bundlelab.spec.parameter_count`.  On the torch backend, a layer with weights whose
        node id holds ``"."`` is named with ``"_"`` instead (a measured one is an error).
    """
    if not isinstance(spec, Spec):
        raise BundleLabError(f"expected a bundlelab.spec.Spec, got {type(spec).__name__}")
    seed = None if seed is None else check_seed("seed", seed)
    names = _layer_names(spec)
    init = _Init(spec.init, seed)
    tensors: dict[str, Any] = {}
    model_input = None
    for node in spec.nodes:
        if node.op == "input":
            model_input = keras.Input(shape=spec.input_shape, name=node.id)
            tensors[node.id] = model_input
            continue
        inputs = [tensors[source] for source in node.inputs]
        tensors[node.id] = _BUILDERS[node.op](dict(node.params), inputs, names[node.id], init)
    return keras.Model(model_input, tensors[spec.output], name=spec.name)


__all__ = [
    "BasicBlock", "Classifier", "ConvBN", "SameConv2D", "SameMaxPooling2D", "Sum", "build_model",
]
