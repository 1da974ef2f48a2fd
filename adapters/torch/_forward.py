"""Forward passes: eval mode without gradients, temporary hooks, tapped outputs."""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..._errors import BundleLabError
from ._activations import ACTIVATION_FUNCTIONS, ATTENTION_FUNCTIONS, module_role
from ._functional import ROOT, CapturingMode, module_stack


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise BundleLabError(f"expected a torch.nn.Module, got {type(model).__name__}")


def _device(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError):
            raise BundleLabError(
                f"The 'device' parameter must be a torch device such as 'cpu' or 'cuda:0'. "
                f"Got {device!r} instead."
            ) from None
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {key: _to_device(value, device) for key, value in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(value, device) for value in x)
    return x


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


@contextlib.contextmanager
def _inference(model: nn.Module):
    """Eval mode and no gradients for one forward pass; every module's own flag restored."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def _hooks(modules: dict, before: Callable | None, after: Callable):
    handles = []
    try:
        for module in modules:
            if before is not None:
                handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Plan:
    """What a measuring pass taps: module calls, and functional calls (see :mod:`._functional`)."""

    modules: dict[nn.Module, tuple[str, dict[int, str]]]  # module -> (name, {call: tap})
    functions: dict[tuple[str, str], dict[int, str]]  # (owner, function) -> {call: tap}


def _plan(model: nn.Module, layers: Sequence[str]) -> _Plan:
    """The hooks of a measuring pass: which call of which module or function is which tap."""
    modules = dict(model.named_modules())
    plan = _Plan({}, {})
    for tap in layers:
        name, call = tap, 1
        if tap not in modules:
            prefix, _, suffix = tap.rpartition(":")
            if suffix.isdigit() and prefix in modules:
                name, call = prefix, int(suffix)
            else:
                function = _functional_tap(tap, modules)
                if function is None:
                    close = difflib.get_close_matches(tap, [n for n in modules if n], n=3)
                    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise BundleLabError(f"the model has no module call named {tap!r}{hint}")
                owner, function_name, call = function
                plan.functions.setdefault((owner, function_name), {})[call] = tap
                continue
        plan.modules.setdefault(modules[name], (name, {}))[1][call] = tap
    return plan


def _functional_tap(tap: str, modules: dict) -> tuple[str, str, int] | None:
    """(owner, function, call) of a functional tap name (``"block1:relu:2"``), else None."""
    head, _, suffix = tap.rpartition(":")
    call = 1
    if suffix.isdigit():
        call, (head, _, suffix) = int(suffix), head.rpartition(":")
    if suffix not in ACTIVATION_FUNCTIONS | ATTENTION_FUNCTIONS:
        return None
    if head != ROOT and head not in modules:
        return None
    return head, suffix, call


def _tap_outputs(model: nn.Module, x: Any, plan: _Plan,
                 take: Callable[[str, torch.Tensor], None] | None = None) -> dict:
    """One forward pass's tapped outputs: tap name -> a clone of the output; or, with
    ``take``, each output handed to ``take(tap, output)`` inside its hook, as it is produced,
    and tap name -> None (the taps that were called).

    ``take`` must read the output before it returns: later in-place operations of the pass
    may change it (a shared ``ReLU(inplace=True)``, ``out += identity``)."""
    with _tapping(model, plan, take) as run:
        return run(x)


@contextlib.contextmanager
def _tapping(model: nn.Module, plan: _Plan,
             take: Callable[[str, torch.Tensor], None] | None = None):
    """``run(x)``: :func:`_tap_outputs` of one pass, for as many passes as the caller makes.

    The hooks and eval mode without gradients are set up once for all the passes (each
    module's own training flag restored at the end), not once per pass; a pass that taps a
    functional call enters its capturing mode for that pass only, so no torch call between
    passes goes through it."""
    calls: dict[nn.Module, int] = {}
    outputs: dict = {}

    def after(module, args, output):
        calls[module] = call = calls.get(module, 0) + 1
        tap = plan.modules[module][1].get(call)
        if tap is None:
            return
        if not isinstance(output, torch.Tensor):
            raise BundleLabError(f"layer {tap!r} outputs {_describe(output)}, not a tensor")
        if take is not None:
            _synchronize(output)
            outputs[tap] = output.detach()
            return
        # a clone: later in-place ops of the forward pass must not change what we measure
        outputs[tap] = output.detach().clone(memory_format=torch.contiguous_format)

    def run(x: Any) -> dict:
        nonlocal outputs
        calls.clear()
        outputs = {} if take is None else _Taken(take)
        with contextlib.ExitStack() as stack:
            if plan.functions:
                # only when a functional call is tapped: the mode sees every torch call
                names = {module: name for name, module in model.named_modules() if name}
                running = stack.enter_context(module_stack(names))
                layer_modules = {n for m, n in names.items() if module_role(m) is not None}
                # with take, the mode's clone of a functional tap is consumed at once (_Taken)
                stack.enter_context(
                    CapturingMode(running, layer_modules, plan.functions, outputs))
            _call(model, x)
        return outputs

    with _hooks(plan.modules, None, after), _inference(model):
        yield run


class _Taken(dict):
    """The outputs of a pass whose taps are consumed as they come: setting a tap hands its
    output to ``take`` and keeps only the tap's name (as a key, with the value None)."""

    def __init__(self, take: Callable[[str, torch.Tensor], None]):
        super().__init__()
        self._take = take

    def __setitem__(self, tap: str, output: torch.Tensor) -> None:
        self._take(tap, output)
        super().__setitem__(tap, None)


def _synchronize(output: torch.Tensor) -> None:
    """Wait for a CUDA output produced on a side stream: the fingerprint kernels run on the
    default stream, which would not wait for it (the default stream needs no wait)."""
    if output.is_cuda:
        stream = torch.cuda.current_stream(output.device)
        if stream != torch.cuda.default_stream(output.device):
            stream.synchronize()


def _shapes(value: Any) -> tuple:
    return tuple(tuple(t.shape) for t in _tensors(value))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _storage(tensor: torch.Tensor) -> tuple[int, str]:
    return tensor.untyped_storage().data_ptr(), str(tensor.device)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
