"""OnnxAdapter: the adapter protocol of :mod:`bundlelab.adapters` for ONNX models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..._errors import BundleLabError
from ..._validation import check_bool, check_positive_int, checked_keywords
from ._model import OnnxModel, load_model
from ._taps import Tap


class OnnxAdapter:
    """Measure bundles inside ONNX models, run by onnxruntime (see the module docstring).

    Parameters
    ----------
    all_nodes : bool, default=False
        Tap every node's float outputs instead of the activation nodes' only.
    providers : str or list of str, optional
        ``'cpu'`` (default), ``'cuda'``, or onnxruntime provider names; the CPU provider is
        always added last for the nodes an accelerator cannot run.

    ``model`` in the methods is a path, an ``onnx.ModelProto`` or an :class:`OnnxModel`;
    ``inputs`` a numpy array (one-input models) or a dict input name -> array.
    """

    name = "onnx"

    @checked_keywords
    def __init__(self, *, all_nodes: bool = False, providers: Any = None):
        self.all_nodes = check_bool("all_nodes", all_nodes)
        self.providers = providers
        self._last: tuple[Any, OnnxModel, Any] | None = None  # (key, model, source)

    def model(self, model: Any) -> OnnxModel:
        """``model`` as an :class:`OnnxModel` (the last one is cached)."""
        if isinstance(model, OnnxModel):
            return model
        if isinstance(model, (str, Path)):
            path = Path(model)
            stat = path.stat() if path.is_file() else None
            key = ("path", str(path.resolve()), stat and (stat.st_mtime_ns, stat.st_size))
        else:
            key = ("proto", id(model))
        if self._last is None or self._last[0] != key:
            if key[0] == "path":
                loaded = load_model(model)
            elif hasattr(model, "graph"):
                loaded = OnnxModel(model)
            else:
                raise BundleLabError(
                    f"the ONNX adapter takes a path, an onnx.ModelProto or an OnnxModel, not "
                    f"{type(model).__name__}"
                )
            self._last = (key, loaded, model)  # keep model alive: its id is the key
        return self._last[1]

    def layers(self, model: Any) -> list[Tap]:
        """The layers as :class:`Tap` records (layer name, tensor, node, op type)."""
        return self.model(model).layers(all_nodes=self.all_nodes, providers=self.providers)

    def layer_names(self, model: Any, inputs: Any = None) -> list[str]:
        return [tap.layer for tap in self.layers(model)]

    def iter_layer_outputs(
        self, model: Any, inputs: Any, *, layers: Sequence[str], inference_batch_size: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per forward pass of ``inference_batch_size`` samples (the model's own batch size
        when it was exported with a fixed one), the outputs of ``layers``."""
        inference_batch_size = check_positive_int("inference_batch_size", inference_batch_size)
        onnx_model = self.model(model)
        taps = {tap.layer: tap for tap in self.layers(model)}
        unknown = [layer for layer in layers if layer not in taps]
        if unknown:
            raise BundleLabError(f"{onnx_model.name} has no layer {unknown[0]!r}")
        # the session layers() built (every candidate is an output): cached, not rebuilt
        candidates = onnx_model.candidate_taps(all_nodes=self.all_nodes)
        session = onnx_model.session(candidates, self.providers)
        tensors = [taps[layer].tensor for layer in layers]
        feeds, n_samples = onnx_model.feeds(inputs)
        fixed = onnx_model.fixed_batch_size
        step = fixed or inference_batch_size
        dtypes = {i.name: i.dtype for i in onnx_model.inputs}
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            batch = {
                name: _batch(array, start, stop, dtypes[name], fixed)
                for name, array in feeds.items()
            }
            outputs = onnx_model.run(session, tensors, batch)
            expected = fixed or stop - start
            result = {}
            for layer, output in zip(layers, outputs):
                if output.ndim == 0 or output.shape[0] != expected:
                    raise BundleLabError(
                        f"{onnx_model.name}: layer {layer!r} outputs shape {output.shape} for a "
                        f"batch of {expected} samples: its first axis is not the batch; leave "
                        "it out (layers=..., CLI: --layers)"
                    )
                result[layer] = output[: stop - start]
            yield result

    def weight_amplitude(self, model: Any) -> float:
        return self.model(model).weight_amplitude()


def _batch(array: np.ndarray, start: int, stop: int, dtype: Any, size: int | None) -> np.ndarray:
    """Rows start:stop as a contiguous array of the model's type, padded to ``size`` rows."""
    rows = np.ascontiguousarray(array[start:stop], dtype=dtype)
    if size is not None and rows.shape[0] < size:
        pad = np.repeat(rows[-1:], size - rows.shape[0], axis=0)
        rows = np.concatenate([rows, pad])
    return rows
