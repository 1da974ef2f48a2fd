"""OnnxAdapter: the adapter protocol of :mod:`bundlelab.adapters` for ONNX models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..._errors import BundleLabError
from ..._validation import check_bool, check_positive_int, checked_keywords, short_repr
from ._model import OnnxModel, load_model
from ._select import select_taps
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
    layers : str or list of str, optional
        What :meth:`layer_names` lists: None, every activation but squeeze-excitation gates
        and attention softmaxes; ``'all'``, those too; ``'blocks'``, the outputs of repeated
        blocks (from the torch module scopes a torch export records); else layer names or
        glob patterns, matched against the layer names, the tensor names (with or without
        their leading ``/``) and the torch module names.

    ``model`` in the methods is a path, an ``onnx.ModelProto`` or an :class:`OnnxModel`;
    ``inputs`` a numpy array (one-input models) or a dict input name -> array.  Given
    ``inputs``, :meth:`layer_names` runs two small probe batches and leaves out the tensors
    whose first axis is not the batch (:attr:`skipped`).

    Attributes
    ----------
    summary : str
        What the last :meth:`layer_names` picked and left out, in one line.
    skipped : list of (str, tuple)
        The layers it left out because their first axis is not the batch, with the shape
        they had for a probe batch.
    """

    name = "onnx"

    @checked_keywords
    def __init__(self, *, all_nodes: bool = False, providers: Any = None, layers: Any = None):
        self.all_nodes = check_bool("all_nodes", all_nodes)
        self.providers = providers
        if not (layers is None or isinstance(layers, str) or (
            isinstance(layers, (list, tuple)) and all(isinstance(p, str) for p in layers)
        )):
            raise BundleLabError(
                "The 'layers' parameter must be None, 'all', 'blocks', a layer name or glob, "
                f"or a list of them. Got {short_repr(layers)} instead."
            )
        self.selection = layers
        self.summary = ""
        self.skipped: list[tuple[str, tuple]] = []
        self._last: tuple[Any, OnnxModel, Any] | None = None  # (key, model, source)
        self._probed: tuple | None = None  # (key, inputs kept alive, skipped)

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
        """Every tappable tensor as a :class:`Tap` (layer name, tensor, node, op type, kind):
        the activations, gates and softmaxes (every node's outputs with ``all_nodes``), then
        the block outputs."""
        return self.model(model).layers(all_nodes=self.all_nodes, providers=self.providers)

    def selected(self, model: Any, inputs: Any = None) -> list[Tap]:
        """The taps ``layers=`` selects, in graph order; sets :attr:`summary` and
        :attr:`skipped` (see the class docstring)."""
        onnx_model = self.model(model)
        taps = self.layers(onnx_model)
        if inputs is None:
            self.skipped = []
        elif self._probed is None or self._probed[0] != (id(onnx_model), id(inputs)):
            # measure_bundles asks again with the same inputs that audit() probed with
            self.skipped = self._not_per_sample(onnx_model, taps, inputs)
            self._probed = ((id(onnx_model), id(inputs)), inputs, self.skipped)
        else:
            self.skipped = self._probed[2]
        if self.skipped:
            gone = {name for name, _ in self.skipped}
            taps = [tap for tap in taps if tap.layer not in gone]
        if self.all_nodes:  # those shape inference ruled out are named too
            self.skipped = onnx_model.unbatched.get(True, []) + self.skipped
        chosen, self.summary = select_taps(
            taps, self.selection, all_nodes=self.all_nodes, where=onnx_model.name,
            skipped=self.skipped,
        )
        return chosen

    def layer_names(self, model: Any, inputs: Any = None) -> list[str]:
        """Names of the selected layers (:meth:`selected`), in graph order."""
        return [tap.layer for tap in self.selected(model, inputs)]

    def iter_layer_outputs(
        self, model: Any, inputs: Any, *, layers: Sequence[str], inference_batch_size: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per forward pass of ``inference_batch_size`` samples (the model's own batch size
        when it was exported with a fixed one), the outputs of ``layers``."""
        inference_batch_size = check_positive_int("inference_batch_size", inference_batch_size)
        onnx_model = self.model(model)
        taps = self._by_name(onnx_model)
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
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            outputs = self._run(onnx_model, session, tensors, feeds, start, stop)
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

    def update_format(self, model: Any) -> str | None:
        """The float format of the weights that Conv, Gemm and MatMul nodes read (the widest
        where they differ) when it is float32 or float64; None for float16/bfloat16 weights.

        An ONNX file is an inference artifact: half-precision weights in it are nearly always
        a float32-trained (or mixed-precision) model converted for deployment, whose updates
        ran on float32 master weights.  None lets the audit fall back to ``'auto'`` (float32,
        reported as assumed); ``update_format='activations'`` measures the half format."""
        fmt = self.model(model).weight_format()
        return fmt if fmt in ("float32", "float64") else None

    def weight_note(self, model: Any) -> str | None:
        """Why the model's largest weight may not be the trained ``w`` (folded batch norm),
        or None."""
        return self.model(model).folded_batch_norm()

    # -- helpers --------------------------------------------------------------------------------
    def _by_name(self, onnx_model: OnnxModel) -> dict[str, Tap]:
        taps = self.layers(onnx_model)
        blocks = self.selection == "blocks"
        # a block and an activation may share a module name: the selection decides which
        return {tap.layer: tap for tap in taps if (tap.kind == "block") == blocks}

    def _run(self, onnx_model: OnnxModel, session: Any, tensors: list[str], feeds: dict,
             start: int, stop: int) -> list:
        fixed = onnx_model.fixed_batch_size
        dtypes = {i.name: i.dtype for i in onnx_model.inputs}
        batch = {name: _batch(array, start, stop, dtypes[name], fixed)
                 for name, array in feeds.items()}
        return onnx_model.run(session, tensors, batch)

    def _not_per_sample(self, onnx_model: OnnxModel, taps: Sequence[Tap],
                        inputs: Any) -> list[tuple[str, tuple]]:
        """(layer, shape) of the taps whose first axis is not the batch in probe batches of
        2 and 3 samples (one probe of the fixed size for a fixed-batch export): a tensor
        whose first axis merely equals one probe size cannot equal both.  Only the taps
        whose batch axis shape inference has not proven are probed; none, no probe runs."""
        feeds, n_samples = onnx_model.feeds(inputs)
        tensors = [tensor for tensor in dict.fromkeys(tap.tensor for tap in taps)
                   if not onnx_model.batch_first_known(tensor)]
        if not tensors:
            return []
        fixed = onnx_model.fixed_batch_size
        sizes = [fixed] if fixed else [2, 3]
        candidates = onnx_model.candidate_taps(all_nodes=self.all_nodes)
        session = onnx_model.session(candidates, self.providers)
        shapes: dict[str, tuple] = {}
        for size in sizes:
            rows = np.arange(size) % n_samples  # repeat samples when there are fewer
            probe = {name: np.asarray(array[: min(size, n_samples)])[rows % min(size, n_samples)]
                     for name, array in feeds.items()}
            outputs = self._run(onnx_model, session, tensors, probe, 0, size)
            for tensor, output in zip(tensors, outputs):
                if output.ndim == 0 or output.shape[0] != size:
                    shapes.setdefault(tensor, tuple(output.shape))
        return [(tap.layer, shapes[tap.tensor]) for tap in taps if tap.tensor in shapes]


def _batch(array: np.ndarray, start: int, stop: int, dtype: Any, size: int | None) -> np.ndarray:
    """Rows start:stop as a contiguous array of the model's type, padded to ``size`` rows."""
    rows = np.ascontiguousarray(array[start:stop], dtype=dtype)
    if size is not None and rows.shape[0] < size:
        pad = np.repeat(rows[-1:], size - rows.shape[0], axis=0)
        rows = np.concatenate([rows, pad])
    return rows
