"""TorchAdapter: the ActivationAdapter for ``torch.nn.Module`` models, and weight amplitudes."""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..._errors import BundleLabError
from ..._validation import check_positive_int, checked_keywords
from ._data import _as_data, _DictKeys
from ._forward import _check_model, _device, _plan, _tap_outputs, _tapping, _to_device
from ._tracing import Tap, Trace, trace_model


class TorchAdapter:
    """The :class:`bundlelab.adapters.ActivationAdapter` for ``torch.nn.Module`` models.

    Parameters
    ----------
    layers : list of str or nn.Module types, 'all' or 'blocks', optional
        Module or tap names, glob patterns or module types to tap; ``"all"``: every
        activation, gates included; ``"blocks"``: the repeated blocks' outputs; default: every
        activation call (module or function) but the gates.
    device : torch.device or str, optional
        Where the inputs are sent; default: the device of the model's parameters.
    input_key : str, optional
        For dict batches (``{"pixel_values": x, "labels": y}``): the key of the input, passed
        to the model positionally; default: every key but ``label_key``, passed as keywords
        (``model(**inputs)``, the Hugging Face convention).
    label_key : str, default='labels'
        For dict batches: the key of the labels.

    Examples
    --------
    >>> from bundlelab.adapters import get_adapter, measure_bundles
    >>> report = measure_bundles(get_adapter("torch"), model, x, labels)  # doctest: +SKIP
    """

    name = "torch"

    @checked_keywords
    def __init__(self, *, layers: Any = None, device: Any = None, input_key: str | None = None,
                 label_key: str = "labels"):
        self.layers = layers
        self.device = device
        self.keys = _DictKeys(input_key, label_key)
        self._remembered: tuple | None = None

    def _remember(self, model: nn.Module, inputs: Any, trace: Trace) -> None:
        """Reuse ``trace`` for these very ``model`` and ``inputs`` (one tracing pass, not two)."""
        self._remembered = (model, inputs, trace)

    def trace(self, model: nn.Module, inputs: Any) -> Trace:
        """The tracing pass (see :func:`trace_model`)."""
        if self._remembered and self._remembered[0] is model and self._remembered[1] is inputs:
            return self._remembered[2]
        return trace_model(model, _as_data(inputs, model, self.keys), device=self.device)

    def layer_names(self, model: nn.Module, inputs: Any = None) -> list[str]:
        """Names of the selected taps, in execution order (a tracing pass on ``inputs``)."""
        if inputs is None:
            raise BundleLabError(
                "the torch adapter finds a model's layers by running it: pass inputs (two "
                "samples are enough)"
            )
        return [tap.name for tap in self.trace(model, inputs).select(self.layers)]

    def iter_layer_outputs(
        self, model: nn.Module, inputs: Any, *, layers: Sequence[str], inference_batch_size: int
    ) -> Iterator[dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], np.ndarray]]:
        """Per forward pass, the tapped outputs (and the batch's labels when the data carries
        them).

        A ``DataLoader`` is iterated as it is (``inference_batch_size`` does not apply to it).
        """
        _check_model(model)
        data = _as_data(inputs, model, self.keys)
        device = _device(model, self.device)
        plan = _plan(model, layers)
        for x, y in data.batches(check_positive_int("inference_batch_size", inference_batch_size)):
            outputs = _tap_outputs(model, _to_device(x, device), plan)
            _check_called(layers, outputs)
            outputs = {name: outputs[name] for name in layers}
            yield outputs if y is None else (outputs, y)

    def feed_layer_outputs(
        self, model: nn.Module, inputs: Any, *, layers: Sequence[str], inference_batch_size: int,
        feed: Any,
    ) -> Iterator[None]:
        """Per forward pass, hand each tapped output to ``feed`` from inside its hook, as the
        pass produces it (see :class:`bundlelab.adapters.LayerFeed`): no output is cloned or
        kept after its use.  Yields once per pass; the passes are those of
        :meth:`iter_layer_outputs`."""
        _check_model(model)
        data = _as_data(inputs, model, self.keys)
        device = _device(model, self.device)
        plan = _plan(model, layers)
        batches = data.batches(check_positive_int("inference_batch_size", inference_batch_size))
        # hooks and eval mode once for every pass (they stay while the caller takes a pass)
        with _tapping(model, plan, feed.take) as run:
            for x, y in batches:
                feed.begin(y)
                _check_called(layers, run(_to_device(x, device)))
                yield

    def forward_threads(self, model: nn.Module) -> int:
        """CPU threads a forward pass keeps busy: torch's intra-op threads on the CPU, one (the
        launching thread) on a GPU."""
        _check_model(model)
        return 1 if _device(model, self.device).type == "cuda" else torch.get_num_threads()

    def weight_amplitude(self, model: nn.Module) -> float:
        """``w``: max ``|w|`` over the model's trainable parameters (all if none is trainable)."""
        _check_model(model)
        return _amplitude(model.parameters(), "the model")

    def update_format(self, model: nn.Module) -> str | None:
        """The format of the weight update: the dtype of the model's trainable parameters.

        ``"float32"`` for a float32 model, also when it runs under ``torch.autocast`` (its
        parameters, which the optimiser updates, stay float32); ``"float16"`` after
        ``.half()``; ``"bfloat16"`` after ``.bfloat16()``.  With parameters of several
        formats, the one holding most elements; None when no parameter is a float.
        """
        _check_model(model)
        parameters = [p for p in model.parameters() if p.is_floating_point()]
        chosen = [p for p in parameters if p.requires_grad] or parameters
        sizes: dict[torch.dtype, int] = {}
        for p in chosen:
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
        if not sizes:
            return None
        dtype = max(sizes, key=sizes.get)
        return str(dtype).removeprefix("torch.")

    def layer_weight_amplitudes(self, model: nn.Module, taps: Sequence[Tap]) -> dict[str, float]:
        """Per-layer ``w`` of each tap (see the module docstring)."""
        modules = dict(model.named_modules())
        model_w = None
        amplitudes = {}
        for tap in taps:
            if tap.source is None:
                model_w = self.weight_amplitude(model) if model_w is None else model_w
                amplitudes[tap.name] = model_w
            else:
                parameters = modules[tap.source].parameters()
                amplitudes[tap.name] = _amplitude(parameters, repr(tap.source))
        return amplitudes


def _check_called(layers: Sequence[str], called: Any) -> None:
    """Refuse a pass that did not call every tap (``called``: the taps it called)."""
    missing = [name for name in layers if name not in called]
    if missing:
        raise BundleLabError(
            f"layer {missing[0]!r} was not called on a batch although the tracing pass "
            "called it (input-dependent control flow); choose layers=[...] every "
            "batch reaches"
        )


def _amplitude(parameters: Any, owner: str) -> float:
    """max |w| over the trainable parameters (all of them if none is trainable); 0 if none."""
    parameters = [p for p in parameters if p.is_floating_point() and p.numel()]
    chosen = [p for p in parameters if p.requires_grad] or parameters
    if not chosen:
        return 0.0
    value = max(float(p.detach().abs().max()) for p in chosen)
    if not math.isfinite(value):
        raise BundleLabError(
            f"{owner} has NaN or Inf weights (did training diverge?), so w is undefined; pass "
            "weight_amplitude=<float>"
        )
    return value
