"""The tracing pass: which module calls of a forward pass can be tapped, and selecting them."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..._errors import BundleLabError
from ..._validation import checked_keywords
from .. import select_layers
from ._data import _as_data
from ._forward import (
    _call,
    _check_model,
    _describe,
    _device,
    _hooks,
    _inference,
    _shapes,
    _storage,
    _tensors,
    _to_device,
)

#: module types whose calls are the default taps
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.GLU,
    nn.Hardshrink, nn.Softshrink,
)

_TRACE_SAMPLES = 2


@dataclass(frozen=True)
class Tap:
    """One call of one module whose output is a float tensor.

    Attributes
    ----------
    name : str
        The tap's name: the module's, with ``:k`` for its k-th call (``"layer1.0.relu:2"``).
    module : str
        The module's name (``"layer1.0.relu"``).
    kind : type
        The module's class.
    shape : tuple of int
        The output shape per sample.
    is_output : bool
        The output shares storage with the model's output (the logits).
    source : str or None
        The module whose parameters give the per-layer weight amplitude.
    """

    name: str
    module: str
    kind: type
    shape: tuple[int, ...]
    is_output: bool
    source: str | None


@dataclass
class Trace:
    """Every tappable module call of one forward pass, in execution order.

    Attributes
    ----------
    taps : list of Tap
    untappable : dict of str to str
        Module name -> what it outputs instead of a float tensor.
    """

    taps: list[Tap]
    untappable: dict[str, str]

    @property
    def names(self) -> list[str]:
        return [tap.name for tap in self.taps]

    def default(self) -> list[Tap]:
        """Activation calls; else the top-level children but the last; never the output."""
        hidden = [t for t in self.taps if not t.is_output]
        taps = [t for t in hidden if issubclass(t.kind, ACTIVATION_TYPES)]
        if not taps:
            children = [t for t in self.taps if "." not in t.module]
            taps = [t for t in children[:-1] if not t.is_output]
        if not taps:
            raise BundleLabError(
                "the model has no tappable layer: no activation module (nn.ReLU, nn.GELU, ...) "
                "and no top-level child before its output layer; pass layers=[...] to name the "
                "modules to tap"
            )
        return taps

    def select(self, layers: Any) -> list[Tap]:
        """Taps matching names, glob patterns or module types, in execution order."""
        if layers is None:
            return self.default()
        items = [layers] if isinstance(layers, (str, type)) else list(layers)
        chosen: set[str] = set()
        for item in items:
            if isinstance(item, type) and issubclass(item, nn.Module):
                hits = [t.name for t in self.taps if issubclass(t.kind, item)]
                if not hits:
                    kinds = ", ".join(sorted({t.kind.__name__ for t in self.taps}))
                    raise BundleLabError(
                        f"no layer of type {item.__name__} in the model; its layers are of "
                        f"types {kinds}"
                    )
            elif isinstance(item, str):
                # an existing name is taken literally (a module name: all of its calls), even
                # when it holds glob characters, as select_layers does
                hits = [t.name for t in self.taps if item in (t.name, t.module)] or [
                    t.name for t in self.taps
                    if fnmatch.fnmatchcase(t.name, item) or fnmatch.fnmatchcase(t.module, item)
                ]
                if not hits and item in self.untappable:
                    raise BundleLabError(
                        f"module {item!r} outputs {self.untappable[item]}; a layer must output "
                        "one float tensor of shape (batch, ...)"
                    )
                if not hits:
                    select_layers(self.names, [item])  # one-line error naming close matches
            else:
                raise BundleLabError(
                    "The 'layers' parameter must hold module names, glob patterns or module "
                    f"types. Got {item!r} instead."
                )
            chosen.update(hits)
        return [t for t in self.taps if t.name in chosen]


Tap.__init__ = checked_keywords(Tap.__init__)  # type: ignore[method-assign]
Trace.__init__ = checked_keywords(Trace.__init__)  # type: ignore[method-assign]


@checked_keywords
def trace_model(model: nn.Module, inputs: Any, *, device: Any = None) -> Trace:
    """Run ``model`` on two samples of ``inputs`` and list its tappable module calls.

    Inputs that do not fit the model give a one-line :class:`BundleLabError` naming the module
    that rejected them, what it expects and what it got.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : tensor, array, (inputs, labels), Dataset or DataLoader
        Only the first two samples are run.
    device : torch.device or str, optional
        Where the inputs are sent; default: the device of the model's parameters.

    Returns
    -------
    Trace
    """
    _check_model(model)
    data = _as_data(inputs, model)
    x = _to_device(data.head(_TRACE_SAMPLES), _device(model, device))
    names = {module: name for name, module in model.named_modules() if name}
    own_params = {m for m in names if next(m.parameters(recurse=False), None) is not None}
    any_params = {m for m in names if next(m.parameters(), None) is not None}
    calls: dict[nn.Module, int] = {}
    running: list[tuple[nn.Module, str | None, tuple]] = []  # (module, last parametrised, shapes)
    last_parametrised: list[str | None] = [None]
    returned: list[tuple[str, int, nn.Module, Any, str | None]] = []

    def before(module, args):
        running.append((module, last_parametrised[0], _shapes(args)))

    def after(module, args, output):
        _, previous, _ = running.pop()
        calls[module] = call = calls.get(module, 0) + 1
        source = names[module] if module in any_params else previous
        returned.append((names[module], call, module, output, source))
        if module in own_params:
            last_parametrised[0] = names[module]

    with _hooks(names, before, after), _inference(model):
        try:
            result = _call(model, x)
        except (BundleLabError, torch.OutOfMemoryError):
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # the first forward pass: a failure here is almost always inputs of the wrong shape
            # or dtype; the user gets one line naming the module that rejected them
            raise _misfit(model, names, data, running, exc) from None

    outputs = {_storage(t) for t in _tensors(result)}
    n_traced = _tensors(x)[0].shape[0] if _tensors(x) else None
    taps, untappable = [], {}
    for name, call, module, output, source in returned:
        if not (isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim):
            untappable.setdefault(name, _describe(output))
            continue
        if n_traced is not None and output.shape[0] != n_traced:  # e.g. (seq, batch, ...)
            why = f"{_describe(output)} for {n_traced} samples (batch not first)"
            untappable.setdefault(name, why)
            continue
        taps.append(Tap(
            name=name if call == 1 else f"{name}:{call}",
            module=name,
            kind=type(module),
            shape=tuple(output.shape[1:]),
            is_output=_storage(output) in outputs,
            source=source,
        ))
    return Trace(taps, untappable)


def _misfit(model, names, data, running, exc) -> BundleLabError:
    """One line for inputs that the model rejects on the tracing pass."""
    given = ", ".join(str(shape[1:]) for shape in _shapes(data.head(_TRACE_SAMPLES))) or "?"
    per_sample = f"inputs with samples of shape {given}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if running:
        module, _, shapes = running[-1]
        expected = _expected_input(module)
        got = shapes[0] if len(shapes) == 1 else ", ".join(map(str, shapes))
        want = f"expects {expected}, " if expected else ""
        return BundleLabError(
            f"{per_sample} do not fit the model: layer {names[module]!r} "
            f"({type(module).__name__}) {want}got {got} ({reason})"
        )
    return BundleLabError(f"{per_sample} do not fit the model: {reason}")


def _expected_input(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return f"(..., {module.in_features})"
    spatial = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}
    for kind, dims in spatial.items():
        if isinstance(module, kind):
            return f"(batch, {module.in_channels}, {dims})"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return f"(batch, {module.num_features}, ...)"
    if isinstance(module, nn.LayerNorm):
        return "(..., " + ", ".join(map(str, module.normalized_shape)) + ")"
    if isinstance(module, nn.Embedding):
        return f"integer indices below {module.num_embeddings}"
    if isinstance(module, nn.RNNBase):
        return f"(..., {module.input_size})"
    return None
