"""Build a Keras 3 Functional model from an architecture spec (:mod:`bundlelab.spec`).

Every node becomes one layer named by the node's id, so the Keras adapter reports a measured
node under its id; a ``basic_block`` is one composite :class:`BasicBlock` layer whose output is
taken after its final ReLU.  The model runs channels-first, as the spec describes it: inputs
are ``(batch, C, H, W)`` and the image layers are built with ``data_format="channels_first"``
(PyTorch's native layout, so the torch backend runs them without transposing).

>>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")      # doctest: +SKIP
>>> from bundlelab.spec import conv_net, measured_layers
>>> from bundlelab.adapters.keras_build import build_model           # doctest: +SKIP
>>> spec = conv_net(10, residual=True, width_multiplier=0.125)
>>> model = build_model(spec, seed=0)                                 # doctest: +SKIP
>>> from bundlelab.adapters.keras import audit                        # doctest: +SKIP
>>> report = audit(model, x, y, layers=measured_layers(spec))         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import BundleLabError

try:
    import keras
except ImportError:  # pragma: no cover - depends on the environment
    raise BundleLabError(
        "building a spec in Keras requires Keras 3. You can install it with "
        "`pip install 'bundlelab[keras]'`"
    ) from None

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


def _conv(filters, kernel_size, stride, use_bias, initializer, name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="same",
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

    3x3 conv (``stride``), BN, ReLU, 3x3 conv, BN, [+ shortcut], ReLU; convs have no bias.  With
    ``residual`` the shortcut is the identity, or a 1x1 conv (``stride``, no bias) with BN where
    the shape changes.  ``activation`` is the final ReLU, so the Keras adapter's default
    selection treats the block as a layer that ends in a non-linearity.
    """

    def __init__(
        self,
        filters: int,
        stride: int = 1,
        residual: bool = False,
        kernel_initializer: Any = "he_normal",
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.stride, self.residual = filters, stride, residual
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.activation = _activation("relu")
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
        x = self.activation(self.bn1(self.conv1(inputs), training=training))
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
    "maxpool": lambda p, x, name, init: keras.layers.MaxPooling2D(
        p["pool_size"], p["stride"], padding="same", data_format=IMAGE_FORMAT, name=name
    )(x[0]),
    "global_avg_pool": lambda p, x, name, init: keras.layers.GlobalAveragePooling2D(
        data_format=IMAGE_FORMAT, name=name
    )(x[0]),
    # Optional (stochastic) edges are summed like the others for now: the model is the
    # super-network with every edge on.
    "add": lambda p, x, name, init: keras.layers.Add(name=name)(list(x)),
    "basic_block": _basic_block,
}


def _check_names(spec) -> None:
    if keras.backend.backend() != "torch":
        return
    weighted = [n.id for n in spec.nodes if n.op in ("dense", "conv", "batchnorm", "basic_block")]
    dotted = [name for name in weighted if "." in name]
    if dotted:
        raise BundleLabError(
            f"node {dotted[0]!r} has weights and a '.' in its id, which Keras on the torch "
            "backend cannot use as a layer name; rename the node (e.g. with '_' or '-')"
        )


def build_model(spec, *, seed: int | None = None) -> keras.Model:
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
        zero, every spatial op pads ``"same"``, batch norm uses PyTorch's momentum and epsilon.
        Trainable weights number :func:`bundlelab.spec.parameter_count`.
    """
    from ..spec import Spec

    if not isinstance(spec, Spec):
        raise BundleLabError(f"expected a bundlelab.spec.Spec, got {type(spec).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BundleLabError(f"The 'seed' parameter must be an int or None. Got {seed!r} instead.")
    _check_names(spec)
    init = _Init(spec.init, seed)
    tensors: dict[str, Any] = {}
    model_input = None
    for node in spec.nodes:
        if node.op == "input":
            model_input = keras.Input(shape=spec.input_shape, name=node.id)
            tensors[node.id] = model_input
            continue
        inputs = [tensors[source] for source in node.inputs]
        tensors[node.id] = _BUILDERS[node.op](dict(node.params), inputs, node.id, init)
    return keras.Model(model_input, tensors[spec.output], name=spec.name)


__all__ = ["BasicBlock", "build_model"]
