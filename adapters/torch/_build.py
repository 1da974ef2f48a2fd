"""Build a PyTorch module from a :class:`bundlelab.spec.Spec`.

The module runs the spec's DAG in node order, channels-first.  Each node's computation lives
in ``model.nodes`` (an ``nn.ModuleDict``; ``model.node_keys`` maps node id -> key, since a key
may not hold ``"."`` nor shadow a ``ModuleDict`` attribute).  The output of each measured node
comes out of a dedicated top-level module named by the node id: the node's final activation
as a module (``nn.ReLU`` after a basic block or a ReLU dense layer) or ``nn.Identity`` where
the node ends linearly.  Every other activation is a function call, so the activation modules
are exactly the measured nodes, and ``audit(model, x, y)`` reports the layers of
:func:`bundlelab.spec.measured_layers` under their node ids, in that order.  A measured node
that ends linearly (a ``"linear"`` dense layer, a conv, an add) is tapped by an
``nn.Identity``, which the default selection leaves out; ``layers=measured_layers(spec)``
selects every measured node.  ``model.layer_names`` maps each measured node id to its tap's
module name: the id itself, unless the id holds ``"."`` or shadows an attribute of the model
(``"train"``, ``"nodes"``), where it is sanitised like the keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..._errors import BundleLabError
from ..._validation import check_seed, checked_keywords
from ...spec import Spec, measured_layers

_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "gelu": F.gelu,  # exact (erf) form, as keras.activations.gelu by default
    "linear": lambda x: x,
}
_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}
# Keras's HeNormal draws from a normal truncated at two standard deviations, widened by this
# factor so that the truncated distribution keeps the variance 2 / fan_in.
_TRUNCATION_STD = 0.87962566103423978


@checked_keywords
def build_model(spec: Spec, *, seed: int | None = None) -> nn.Module:
    """A ``torch.nn.Module`` that computes ``spec``: input ``(batch, *spec.input_shape)``.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    seed : int, optional
        Seeds the weight initialisation (the global RNG is left as it was); two builds with
        one seed have equal weights.  None: draw from the global RNG.

    Returns
    -------
    SpecModule
        In training mode; its output is the logits, shape ``(batch, spec.n_classes)``.

    Notes
    -----
    ``init="he_normal"``: conv and dense kernels from Keras's ``HeNormal`` (a normal truncated
    at two standard deviations, variance ``2 / fan_in``, ``fan_in = in_channels * k * k`` or
    ``in_features``; ``kaiming_normal_(mode="fan_in")`` has the same variance without the
    truncation), biases zero.  ``init="framework_default"``: PyTorch's own initialisation.
    Batch norm has weight 1 and bias 0 either way (PyTorch's eps and momentum).  Spatial ops pad
    "same": odd kernels ``k // 2`` on each side, even ones as Keras does (the extra row and
    column at the bottom and right).  Optional edges of ``add`` nodes are all used; gating
    them comes with the budgeted search.
    """
    if not isinstance(spec, Spec):
        raise BundleLabError(
            f"The 'spec' parameter must be a bundlelab.spec.Spec. Got {type(spec).__name__} "
            "instead."
        )
    seed = None if seed is None else check_seed("seed", seed)
    if seed is None:
        return SpecModule(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SpecModule(spec)


class SpecModule(nn.Module):
    """The module :func:`build_model` returns; see the module docstring for its attributes."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self.nodes = nn.ModuleDict()
        self.node_keys: dict[str, str] = {}
        self.layer_names: dict[str, str] = {}
        measured = set(measured_layers(spec))
        for node in spec.nodes:
            in_shapes = [spec.shape_of(s) for s in node.inputs]
            final = _final_activation(node)
            module = _MAKERS[node.op](dict(node.params), in_shapes, node.id not in measured)
            key = _free_name(self.nodes, node.id, self.node_keys.values())
            self.nodes[key] = module
            self.node_keys[node.id] = key
            if node.id in measured:
                name = _free_name(self, node.id, self.layer_names.values())
                self.add_module(name, _ACTIVATION_MODULES[final]())
                self.layer_names[node.id] = name
        if spec.init == "he_normal":
            _he_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node_outputs(x)[self.spec.output]

    def node_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's output (a measured node's after its tap), by node id."""
        outputs: dict[str, torch.Tensor] = {}
        for node in self.spec.nodes:
            args = [outputs[s] for s in node.inputs] if node.inputs else [x]
            out = self.nodes[self.node_keys[node.id]](*args)
            if node.id in self.layer_names:
                out = getattr(self, self.layer_names[node.id])(out)
            outputs[node.id] = out
        return outputs

    def extra_repr(self) -> str:
        return f"spec={self.spec.name!r}"


def _free_name(owner: nn.Module, wanted: str, taken) -> str:
    """``wanted`` if it can name a child of ``owner``, else a sanitised variant."""
    name = wanted.replace(".", "_")
    base, k = name, 1
    while name in taken or (hasattr(owner, name) and name not in owner._modules):
        k += 1
        name = f"{base}_{k}"
    return name


def _final_activation(node) -> str:
    """The activation that ends a node's computation; a measured node's tap applies it."""
    if node.op == "dense":
        return node.params["activation"]
    if node.op == "activation":
        return node.params["function"]
    if node.op in ("add", "conv_bn"):
        return node.params["activation"]
    if node.op == "basic_block":
        return "relu"
    return "linear"


def _same_padding(n: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) so that a side ``n`` maps to ``ceil(n / stride)``."""
    if kernel % 2:
        return kernel // 2, kernel // 2
    total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


class _Conv(nn.Module):
    def __init__(self, c_in, filters, kernel, stride, bias, hw) -> None:
        super().__init__()
        (top, bottom), (left, right) = (_same_padding(n, kernel, stride) for n in hw)
        symmetric = top == bottom and left == right
        self.pad = None if symmetric else (left, right, top, bottom)
        padding = (top, left) if symmetric else 0
        self.conv = nn.Conv2d(c_in, filters, kernel, stride, padding=padding, bias=bias)

    def forward(self, x):
        return self.conv(x if self.pad is None else F.pad(x, self.pad))


class _MaxPool(nn.Module):
    def __init__(self, pool, stride, hw) -> None:
        super().__init__()
        (top, bottom), (left, right) = (_same_padding(n, pool, stride) for n in hw)
        self.pad = (left, right, top, bottom)
        self.pool = nn.MaxPool2d(pool, stride)

    def forward(self, x):
        return self.pool(F.pad(x, self.pad, value=-math.inf) if any(self.pad) else x)


class _Dense(nn.Module):
    def __init__(self, n_in, units, bias, activation) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, units, bias=bias)
        self.activation = _ACTIVATION_FUNCTIONS[activation]

    def forward(self, x):
        return self.activation(self.linear(x))


class _Activation(nn.Module):
    """An activation as a function call: not an activation module, so never a default tap."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):
        return _ACTIVATION_FUNCTIONS[self.function](x)

    def extra_repr(self) -> str:
        return self.function


class _Add(nn.Module):
    def __init__(self, activation: str = "linear") -> None:
        super().__init__()
        self.activation = _ACTIVATION_FUNCTIONS[activation]

    def forward(self, *xs):
        return self.activation(sum(xs[1:], xs[0]))


class _ConvBN(nn.Module):
    """[Nearest x``upsample``,] conv without bias, batch norm, activation."""

    def __init__(self, c_in, filters, kernel, stride, upsample, activation, hw) -> None:
        super().__init__()
        self.upsample = upsample
        hw = tuple(n * upsample for n in hw)
        self.conv = _Conv(c_in, filters, kernel, stride, False, hw)
        self.bn = nn.BatchNorm2d(filters)
        self.activation = _ACTIVATION_FUNCTIONS[activation]

    def forward(self, x):
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.activation(self.bn(self.conv(x)))


class _Classifier(nn.Module):
    """Global average pooling of an image input, then a dense layer with bias."""

    def __init__(self, n_in, units) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, units)

    def forward(self, x):
        return self.linear(x.mean(dim=(2, 3)) if x.dim() == 4 else x)


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class _BasicBlock(nn.Module):
    """3x3 conv (stride), BN, ReLU, 3x3 conv, BN, [+ shortcut], [ReLU]; convs without bias."""

    def __init__(self, c_in, filters, stride, residual, hw, final_relu) -> None:
        super().__init__()
        out_hw = tuple(math.ceil(n / stride) for n in hw)
        self.conv1 = _Conv(c_in, filters, 3, stride, False, hw)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = _Conv(filters, filters, 3, 1, False, out_hw)
        self.bn2 = nn.BatchNorm2d(filters)
        self.residual = residual
        self.shortcut = None
        if residual and (stride != 1 or c_in != filters):  # as parameter_count counts it
            self.shortcut = nn.Sequential(
                _Conv(c_in, filters, 1, stride, False, hw), nn.BatchNorm2d(filters)
            )
        self.final_relu = final_relu

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out) if self.final_relu else out


def _batchnorm(p, s, final):
    return nn.BatchNorm1d(s[0][0]) if len(s[0]) == 1 else nn.BatchNorm2d(s[0][0])


# op -> (params, input shapes, whether the module applies its final activation itself) ->
# module; a measured node leaves its final activation to its tap.
_MAKERS: dict[str, Callable[[dict, list, bool], nn.Module]] = {
    "input": lambda p, s, final: nn.Identity(),
    "flatten": lambda p, s, final: nn.Flatten(),
    "dense": lambda p, s, final: _Dense(
        s[0][0], p["units"], p["use_bias"], p["activation"] if final else "linear"
    ),
    "conv": lambda p, s, final: _Conv(
        s[0][0], p["filters"], p["kernel_size"], p["stride"], p["use_bias"], s[0][1:]
    ),
    "batchnorm": _batchnorm,
    "activation": lambda p, s, final: _Activation(p["function"] if final else "linear"),
    "maxpool": lambda p, s, final: _MaxPool(p["pool_size"], p["stride"], s[0][1:]),
    "global_avg_pool": lambda p, s, final: _GlobalAvgPool(),
    "add": lambda p, s, final: _Add(p["activation"] if final else "linear"),
    "conv_bn": lambda p, s, final: _ConvBN(
        s[0][0], p["filters"], p["kernel_size"], p["stride"], p["upsample"],
        p["activation"] if final else "linear", s[0][1:],
    ),
    "branch": lambda p, s, final: _BasicBlock(s[0][0], p["filters"], p["stride"], False,
                                              s[0][1:], final_relu=False),
    "classifier": lambda p, s, final: _Classifier(s[0][0], p["units"]),
    "basic_block": lambda p, s, final: _BasicBlock(
        s[0][0], p["filters"], p["stride"], p["residual"], s[0][1:], final
    ),
}


@torch.no_grad()
def _he_normal(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            std = math.sqrt(2.0 / fan_in) / _TRUNCATION_STD
            nn.init.trunc_normal_(module.weight, 0.0, std, -2 * std, 2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
