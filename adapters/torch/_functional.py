"""Functional activations (``F.relu``, ``x.sigmoid()``, ...) and gates, seen through
``torch.overrides.TorchFunctionMode``.

Taps of functional calls
    A call of an activation function (:data:`ACTIVATION_FUNCTIONS`, in-place variants
    included) or of softmax is attributed to the innermost module running when it is made, and
    named ``"<module>:<function>"`` (``"block1.conv_path:relu"``; ``"forward:relu"`` in the
    top-level model's own ``forward``, a name no child module can take), with ``":k"`` for its
    k-th call in one forward pass (``"block1:relu:2"``).  A call made by an activation module
    itself (``nn.ReLU`` calls ``F.relu``, timm's ``GELU`` calls ``F.gelu``) is that module's
    tap, not a second one.
Gates
    The tracing pass follows, for every tensor, which activations it derives from since the
    last reduction (a ``mean``, a global pooling, or any op whose output is at least 4x smaller
    than its largest traced input): the squeezed branch of a squeeze-excitation block starts
    there.  When a multiplication broadcasts a tensor into one at least twice its size (or a
    squeezed tensor into an unsqueezed one; ``expand_as`` and ``broadcast_to`` keep a tensor's
    size as it was before expanding), the activations of the small operand's branch are gates:
    the SE block's sigmoid AND its inner reduce activation (a ReLU on 8 values per sample), a
    spatial attention map, any per-channel multiplier computed from activations.  Softmax
    outputs are attention weights.  Neither kind is a default tap; ``layers="all"`` keeps them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._activations import function_name

ROOT = "forward"  # the owner name of calls in the top-level model's own forward
_SQUEEZE_RATIO = 4  # an op at least this much smaller than its input starts a squeezed branch
_GATE_RATIO = 2  # a multiplier at least this much smaller than what it scales is a gate
_REDUCTIONS = frozenset({
    "mean", "sum", "amax", "max", "logsumexp", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
})
_EXPANSIONS = frozenset({"expand", "expand_as", "broadcast_to"})
_PRODUCTS = frozenset({"mul", "multiply", "__mul__", "__rmul__", "mul_", "__imul__"})


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flat(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat(item)]
    return []


@contextlib.contextmanager
def module_stack(modules: dict[nn.Module, str]):
    """The names of the modules running now, innermost last (hooks on every module)."""
    stack: list[str] = []
    handles = []

    def push(module, args):
        stack.append(modules[module])

    def pop(module, args, output):
        if stack:
            stack.pop()

    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop))
        yield stack
    finally:
        for handle in handles:
            handle.remove()


class TracingMode(TorchFunctionMode):
    """Records functional activation calls and the gate lineage of every tensor (tracing pass).

    Parameters
    ----------
    stack : list of str
        The running modules' names (:func:`module_stack`).
    layer_modules : set of str
        Modules whose own calls of activation functions are not separate taps (activation
        modules).
    on_call : callable
        ``on_call(owner, function, output)`` for each functional tap call.
    """

    def __init__(self, stack: list[str], layer_modules: set[str], on_call: Callable) -> None:
        super().__init__()
        self.stack = stack
        self.layer_modules = layer_modules
        self.on_call = on_call
        # id(tensor) -> (activation taps on its branch, effective size, squeezed)
        self.lineage: dict[int, tuple[frozenset, int, bool]] = {}
        self.gates: dict[str, bool] = {}  # tap -> its branch was squeezed (squeeze-excitation)
        self._alive: list[torch.Tensor] = []  # ids stay unique while the pass runs

    def mark(self, tensor: torch.Tensor, tap: str) -> None:
        """``tensor`` is the output of the activation tap ``tap``."""
        taps, size, squeezed = self.lineage.get(id(tensor), (frozenset(), tensor.numel(), False))
        self._keep(tensor, (taps | {tap}, size, squeezed))

    def watch(self, tensors: list[torch.Tensor]) -> None:
        """Trace ``tensors`` (the model's inputs) from here on."""
        for tensor in tensors:
            self._keep(tensor, (frozenset(), tensor.numel(), False))

    def _keep(self, tensor: torch.Tensor, entry: tuple) -> None:
        self.lineage[id(tensor)] = entry
        self._alive.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        outputs = _flat(output)
        if not outputs:
            return output
        name = getattr(func, "__name__", "")
        inputs = [t for t in _flat(args) + _flat(kwargs) if isinstance(t, torch.Tensor)]
        traced = [(t, self.lineage[id(t)]) for t in inputs if id(t) in self.lineage]
        try:
            entry = self._lineage(name, outputs[0], traced)
        except (RuntimeError, TypeError, ValueError):  # a tensor without numel (nested, ...)
            entry = (frozenset(), 0, False)
        activation = function_name(func)
        owner = self.stack[-1] if self.stack else ROOT
        if activation is not None and owner not in self.layer_modules:
            tap = self.on_call(owner, activation, outputs[0])
            if tap is not None:
                entry = (entry[0] | {tap}, entry[1], entry[2])
        for tensor in outputs:
            self._keep(tensor, entry)
        return output

    def _lineage(self, name: str, output: torch.Tensor, traced: list) -> tuple:
        if not traced:
            return frozenset(), output.numel(), False
        if name in _EXPANSIONS:
            return traced[0][1]
        if name in _PRODUCTS and len(traced) == 2:
            (a, (taps_a, size_a, sq_a)), (b, (taps_b, size_b, sq_b)) = traced
            for small, big in (((taps_a, size_a, sq_a), (taps_b, size_b, sq_b)),
                               ((taps_b, size_b, sq_b), (taps_a, size_a, sq_a))):
                if small[1] * _GATE_RATIO <= big[1] or (small[2] and not big[2]
                                                        and small[1] <= big[1]):
                    for tap in small[0]:
                        self.gates[tap] = self.gates.get(tap, False) or small[2]
                    return big
        largest = max(t.numel() for t, _ in traced)
        squeezed = any(e[2] for _, e in traced)
        if name.removesuffix("_") in _REDUCTIONS:
            return frozenset(), output.numel(), True
        if output.numel() * _SQUEEZE_RATIO <= largest:  # a squeezing conv, a strided one, ...
            return frozenset(), output.numel(), squeezed
        return frozenset().union(*(e[0] for _, e in traced)), output.numel(), squeezed


class CapturingMode(TorchFunctionMode):
    """Clones the outputs of the chosen functional taps during a measuring pass.

    Parameters
    ----------
    stack : list of str
        The running modules' names (:func:`module_stack`).
    layer_modules : set of str
        As for :class:`TracingMode`, so that calls are numbered the same way.
    wanted : dict
        ``(owner, function) -> {call number: tap name}``.
    outputs : dict
        Filled with tap name -> detached clone.
    """

    def __init__(self, stack, layer_modules, wanted, outputs) -> None:
        super().__init__()
        self.stack, self.layer_modules = stack, layer_modules
        self.wanted, self.outputs = wanted, outputs
        self.calls: dict[tuple[str, str], int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        activation = function_name(func)
        if activation is None:
            return output
        owner = self.stack[-1] if self.stack else ROOT
        if owner in self.layer_modules:
            return output
        key = (owner, activation)
        self.calls[key] = call = self.calls.get(key, 0) + 1
        tap = self.wanted.get(key, {}).get(call)
        if tap is not None and isinstance(output, torch.Tensor):
            # a clone: later in-place ops of the forward pass must not change what we measure
            self.outputs[tap] = output.detach().clone(memory_format=torch.contiguous_format)
        return output
