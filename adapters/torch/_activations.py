"""What counts as an activation: module classes by what they compute, and functional calls."""

from __future__ import annotations

import re

from torch import nn

#: module types whose calls are the default taps (any class NAMED like an activation counts too)
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.GLU,
    nn.Hardshrink, nn.Softshrink,
)

#: module types whose output is attention weights (a gate, never a default tap)
ATTENTION_TYPES: tuple[type[nn.Module], ...] = (nn.Softmax, nn.Softmax2d)

# Words that name an activation inside a class name of any library: timm's GELU, QuickGELU,
# StarReLU, GELUTanh, HardSwishMe, Swish; Hugging Face's NewGELUActivation, SiLUActivation.
_ACTIVATION_WORDS = re.compile(
    r"relu|gelu|silu|swish|mish|sigmoid|tanh|elu|softplus|softsign|glu|shrink|threshold",
    re.IGNORECASE,
)
_ATTENTION_WORDS = re.compile(r"softmax", re.IGNORECASE)

# torch functions (by __name__, trailing "_" of in-place variants dropped) that compute an
# activation: F.relu, torch.relu, x.relu(), x.relu_(), F.gelu, F.silu, torch.sigmoid, ...
ACTIVATION_FUNCTIONS = frozenset({
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "hardswish", "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus", "softsign",
    "logsigmoid", "glu", "tanhshrink", "hardshrink", "softshrink", "threshold",
})
#: functions whose output is attention weights (gates): softmax over scores
ATTENTION_FUNCTIONS = frozenset({"softmax"})


def function_name(func) -> str | None:
    """The canonical name of a torch function that computes an activation or softmax, else None."""
    name = getattr(func, "__name__", None)
    if not isinstance(name, str):
        return None
    name = name.removesuffix("_")
    return name if name in ACTIVATION_FUNCTIONS or name in ATTENTION_FUNCTIONS else None


def _holds_layers(module: nn.Module) -> bool:
    """Whether a child holds weights: then the module is a layer (ConvBNReLU, SwiGLU's MLP)."""
    return any(next(child.parameters(), None) is not None for child in module.children())


def module_role(module: nn.Module) -> str | None:
    """'activation', 'attention' (softmax weights) or None for a module.

    A module is an activation when its class subclasses one of :data:`ACTIVATION_TYPES`, or
    when its class name names an activation (``GELU``, ``QuickGELU``, ``StarReLU``,
    ``HardSwishMe``, ``NewGELUActivation``, ...) and no child of it holds weights (a
    ``ConvBNReLU`` is a layer, not an activation; ``PReLU``/``StarReLU`` own scalars).
    """
    if isinstance(module, ATTENTION_TYPES):
        return "attention"
    if isinstance(module, ACTIVATION_TYPES):
        return "activation"
    name = type(module).__name__
    if _holds_layers(module) or isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return None
    if _names(_ATTENTION_WORDS, name):
        return "attention"
    if _names(_ACTIVATION_WORDS, name):
        return "activation"
    return None


def _names(words: re.Pattern, name: str) -> bool:
    """Whether ``name`` holds one of ``words`` as a word of its own: at the start, after one
    letter (``Hswish``, ``h_sigmoid``), after ``_``, or at a capital (``StarReLU``); so
    ``PixelUnshuffle`` does not name an ELU."""
    return any(
        m.start() <= 1 or name[m.start() - 1] == "_" or name[m.start()].isupper()
        for m in words.finditer(name)
    )
