"""The tracing pass: which module calls of a forward pass can be tapped, and selecting them."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..._errors import BundleLabError
from ..._validation import checked_keywords
from ...spec import measured_layers
from .. import select_layers
from ._activations import ACTIVATION_TYPES, module_role  # noqa: F401  (re-exported)
from ._blocks import find_blocks
from ._build import SpecModule
from ._data import _as_data
from ._functional import ROOT, TracingMode, module_stack
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

_TRACE_SAMPLES = 2
# A functional call's tap has the kind of the matching activation module, so that
# layers=[nn.ReLU] selects F.relu calls too.
_FUNCTION_KINDS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU,
    "rrelu": nn.RReLU, "elu": nn.ELU, "selu": nn.SELU, "celu": nn.CELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "mish": nn.Mish, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
    "hardtanh": nn.Hardtanh, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus,
    "softsign": nn.Softsign, "logsigmoid": nn.LogSigmoid, "glu": nn.GLU,
    "tanhshrink": nn.Tanhshrink, "hardshrink": nn.Hardshrink, "softshrink": nn.Softshrink,
    "threshold": nn.Threshold, "softmax": nn.Softmax,
}
_GATE_KINDS = ("squeeze-excitation gate", "broadcast gate", "attention weights")


@dataclass(frozen=True)
class Tap:
    """One call of one module, or of an activation function, whose output is a float tensor.

    Attributes
    ----------
    name : str
        The tap's name: the module's, with ``:k`` for its k-th call (``"layer1.0.relu:2"``);
        for a functional call, ``"<module>:<function>"`` (``"block1:relu"``, ``"forward:gelu"``
        in the top-level model's own forward), with ``:k`` for its k-th call.
    module : str
        The module's name (``"layer1.0.relu"``); for a functional call, the module that made
        it (``""`` for the top-level model).
    kind : type
        The module's class; for a functional call, the matching activation module class
        (``F.relu`` -> ``nn.ReLU``), so that selecting by type finds both.
    shape : tuple of int
        The output shape per sample.
    is_output : bool
        The output shares storage with the model's output (the logits).
    source : str or None
        The module whose parameters give the per-layer weight amplitude.
    function : str or None
        The activation function of a functional call (``"relu"``); None for a module call.
    role : str or None
        ``"activation"``, ``"attention"`` (softmax weights) or None (any other module).
    gate : str or None
        Why a default selection leaves it out: ``"squeeze-excitation gate"`` (an activation
        on a squeezed branch multiplied back into the main path), ``"broadcast gate"`` (any
        other activation broadcast-multiplied into a larger tensor), ``"attention weights"``
        (softmax); None for a main-path layer.
    """

    name: str
    module: str
    kind: type
    shape: tuple[int, ...]
    is_output: bool
    source: str | None
    function: str | None = None
    role: str | None = None
    gate: str | None = None


@dataclass
class Trace:
    """Every tappable module or activation-function call of one forward pass, in execution
    order.

    Attributes
    ----------
    taps : list of Tap
    untappable : dict of str to str
        Module name -> what it outputs instead of a float tensor.
    blocks : list of str
        The model's repeated blocks (module names; see ``layers="blocks"``).
    spec_layers : list of str or None
        For a model built by :func:`build_model`, the taps of the spec's measured layers.
    """

    taps: list[Tap]
    untappable: dict[str, str]
    blocks: list[str] = field(default_factory=list)
    spec_layers: list[str] | None = None

    @property
    def names(self) -> list[str]:
        return [tap.name for tap in self.taps]

    def default(self) -> list[Tap]:
        """Activation calls, gates left out; else the top-level children but the last; never
        the output."""
        hidden = [t for t in self.taps if not t.is_output]
        if self.spec_layers is not None:
            # a model built from a spec: its activation modules are exactly its measured nodes
            # (every other activation is a function call), as they always were
            taps = [t for t in hidden if t.role == "activation" and t.function is None]
        else:
            taps = [t for t in hidden if t.role == "activation" and t.gate is None]
        if not taps:
            children = [t for t in self.taps if "." not in t.module and t.function is None]
            taps = [t for t in children[:-1] if not t.is_output and t.module]
        if not taps:
            raise BundleLabError(
                "the model has no tappable layer: no activation (nn.ReLU, F.gelu, ...) and no "
                "top-level child before its output layer; pass layers=[...] to name the "
                "modules to tap"
            )
        return taps

    def every_activation(self) -> list[Tap]:
        """``layers="all"``: every activation call, gates and attention weights included."""
        taps = [t for t in self.taps if t.role is not None and not t.is_output]
        if not taps:
            raise BundleLabError(
                "the model has no activation (nn.ReLU, F.gelu, softmax, ...) before its "
                "output; pass layers=[...] to name the modules to tap"
            )
        return taps

    def block_outputs(self) -> list[Tap]:
        """``layers="blocks"``: the output of every call of the model's repeated blocks."""
        if self.spec_layers is not None:
            names = set(self.spec_layers)
            return [t for t in self.taps if t.name in names]
        blocks = set(self.blocks)
        taps = [t for t in self.taps if t.module in blocks and t.function is None
                and not t.is_output]
        if not taps:
            why = (f"its blocks ({self.blocks[0]!r}, ...) output {self.untappable[self.blocks[0]]}"
                   if self.blocks and self.blocks[0] in self.untappable
                   else "no module class holding two layers with weights occurs twice")
            raise BundleLabError(
                f"layers='blocks' found no repeated blocks in the model ({why}); pass "
                "layers=[...] with module names or glob patterns"
            )
        return taps

    def select(self, layers: Any) -> list[Tap]:
        """Taps matching names, glob patterns or module types, in execution order; None is the
        default selection, ``"all"`` every activation, ``"blocks"`` the blocks' outputs."""
        if layers is None:
            return self.default()
        if isinstance(layers, str) and layers in ("all", "blocks"):
            return self.every_activation() if layers == "all" else self.block_outputs()
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
                hits = [t.name for t in self.taps
                        if item == t.name or (item == t.module and t.function is None)] or [
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
                    "The 'layers' parameter must hold module names, glob patterns, module "
                    f"types, 'all' or 'blocks'. Got {item!r} instead."
                )
            chosen.update(hits)
        return [t for t in self.taps if t.name in chosen]

    def summary(self, layers: Any, chosen: list[Tap]) -> str:
        """One line: what the selection picked, and what the default left out and why."""
        functional = sum(1 for t in chosen if t.function is not None)
        how = ""
        if functional:
            how = ", " + ("1 of them a functional call" if functional == 1
                          else f"{functional} of them functional calls")
        if isinstance(layers, str) and layers == "blocks":
            kinds = ", ".join(sorted({t.kind.__name__ for t in chosen}))
            return f"{_count(len(chosen), 'block output')} tapped ({kinds}; layers='blocks')"
        if isinstance(layers, str) and layers == "all":
            gates = _count_gates(chosen)
            kept = f", {gates} included" if gates else ""
            return f"{_count(len(chosen), 'activation')} tapped{how} (layers='all'{kept})"
        if layers is not None:
            return f"{_count(len(chosen), 'layer')} tapped (layers={_short(layers)})"
        if self.spec_layers is not None:
            return (f"{_count(len(chosen), 'activation')} tapped (the measured layers of the "
                    "spec)")
        if all(t.role is None for t in chosen):
            return (f"{_count(len(chosen), 'top-level child', 'top-level children')} tapped "
                    "(the model calls no activation); pass layers=[...] to choose others")
        left = [t for t in self.taps if t.gate is not None and not t.is_output]
        said = f"{_count(len(chosen), 'activation')} tapped{how}"
        if left:
            said += f"; {_count_gates(left)} left out (layers='all' keeps them)"
        return said


def _count(n: int, what: str, plural: str | None = None) -> str:
    return f"{n} {what if n == 1 else plural or what + 's'}"


def _count_gates(taps: list[Tap]) -> str:
    counts = [(sum(1 for t in taps if t.gate == kind), kind) for kind in _GATE_KINDS]
    parts = [_count(n, kind, kind if kind == "attention weights" else None)
             for n, kind in counts if n]
    return " and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _short(layers: Any) -> str:
    items = [layers] if isinstance(layers, (str, type)) else list(layers)
    shown = [i.__name__ if isinstance(i, type) else repr(i) for i in items[:3]]
    return "[" + ", ".join(shown) + (", ..." if len(items) > 3 else "") + "]"


Tap.__init__ = checked_keywords(Tap.__init__)  # type: ignore[method-assign]
Trace.__init__ = checked_keywords(Trace.__init__)  # type: ignore[method-assign]


@checked_keywords
def trace_model(model: nn.Module, inputs: Any, *, device: Any = None) -> Trace:
    """Run ``model`` on two samples of ``inputs`` and list its tappable calls.

    Module calls are found with forward hooks; calls of activation functions (``F.relu``,
    ``x.sigmoid()``, ...) and the gates (squeeze-excitation scales, softmax weights) with a
    ``torch.overrides.TorchFunctionMode`` (see :mod:`._functional`).  Inputs that do not fit
    the model give a one-line :class:`BundleLabError` naming the module that rejected them,
    what it expects and what it got.

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
    roles = {name: module_role(module) for module, name in names.items()}
    layer_modules = {name for name, role in roles.items() if role is not None}
    own_params = {m for m in names if next(m.parameters(recurse=False), None) is not None}
    any_params = {m for m in names if next(m.parameters(), None) is not None}
    calls: dict[Any, int] = {}
    running: list[tuple[nn.Module, str | None, tuple]] = []  # (module, last parametrised, shapes)
    last_parametrised: list[str | None] = [None]
    # (tap name, module name, function or None, kind, output, source)
    returned: list[tuple[str, str, str | None, type, Any, str | None]] = []
    mode: TracingMode

    def before(module, args):
        running.append((module, last_parametrised[0], _shapes(args)))

    def after(module, args, output):
        _, previous, _ = running.pop()
        calls[module] = call = calls.get(module, 0) + 1
        name = names[module]
        source = name if module in any_params else previous
        tap = name if call == 1 else f"{name}:{call}"
        returned.append((tap, name, None, type(module), output, source))
        if roles[name] is not None and isinstance(output, torch.Tensor):
            mode.mark(output, tap)
        if module in own_params:
            last_parametrised[0] = name

    def functional(owner: str, function: str, output: Any) -> str | None:
        key = (owner, function)
        calls[key] = call = calls.get(key, 0) + 1
        tap = f"{owner}:{function}" + ("" if call == 1 else f":{call}")
        module = "" if owner == ROOT else owner
        returned.append((tap, module, function, _FUNCTION_KINDS[function], output,
                         last_parametrised[0]))
        return tap

    with module_stack(names) as stack, _hooks(names, before, after), _inference(model):
        mode = TracingMode(stack, layer_modules, functional)
        mode.watch(_tensors(x))  # the inputs: the first product's operands must be traced
        try:
            with mode:
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
    for tap, module, function, kind, output, source in returned:
        if not (isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim):
            untappable.setdefault(module, _describe(output))
            continue
        if n_traced is not None and output.shape[0] != n_traced:  # e.g. (seq, batch, ...)
            why = f"{_describe(output)} for {n_traced} samples (batch not first)"
            untappable.setdefault(module if function is None else tap, why)
            continue
        role = "attention" if function == "softmax" else (
            "activation" if function is not None else roles[module])
        taps.append(Tap(
            name=tap, module=module, kind=kind, shape=tuple(output.shape[1:]),
            is_output=_storage(output) in outputs, source=source, function=function,
            role=role, gate=_gate(role, tap, mode.gates),
        ))
    spec_layers = None
    if isinstance(model, SpecModule):
        spec_layers = [model.layer_names[node] for node in measured_layers(model.spec)]
    return Trace(taps, untappable, blocks=find_blocks(model), spec_layers=spec_layers)


def _gate(role: str | None, tap: str, gates: dict[str, bool]) -> str | None:
    if role == "attention":
        return "attention weights"
    if role is None or tap not in gates:
        return None
    return "squeeze-excitation gate" if gates[tap] else "broadcast gate"


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
