"""audit: the bundles of an ONNX model on a seeded subset of its training data, in one call.

Split over workers (``executor=``), each task gets a consecutive slice of the measured subset
(whole forward passes) and the model: its file's path when it was given as one (the file, and
its external data, must then be where every worker can read them: a shared path), else the
serialized ``ModelProto`` (external data read from its ``base_dir``, which every worker must
reach too).  A task builds its own onnxruntime session.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..._errors import BundleLabError
from ..._selection import announce
from ..._validation import (
    check_int,
    check_keywords,
    check_optional_int,
    check_positive_float,
    check_positive_int,
    check_seed,
    checked_keywords,
    saved_label_vector,
    short_repr,
)
from ...report import BundleReport
from .. import measure_bundles
from .._split import split_plan
from ._adapter import OnnxAdapter
from ._data import load_data
from ._model import OnnxModel, load_model
from ._runtime import resolve_providers

#: keywords passed on to the core (see :func:`bundlelab.find_bundles`)
CORE_OPTIONS = ("mode", "gamma", "epsilon", "nonfinite", "device")
#: bytes of tapped layer outputs one forward pass may produce when the batch is automatic
AUDIT_BATCH_BYTES = 256 << 20
#: the most samples per forward pass the automatic batch takes
MAX_INFERENCE_BATCH = 256
#: samples per forward pass when the tapped shapes are not known before running
UNKNOWN_SHAPE_BATCH = 64


@checked_keywords
def audit(
    model: Any,
    data: Any,
    labels: Any = None,
    *,
    labels_key: str = "labels",
    layers: Any = None,
    all_nodes: bool = False,
    n_samples: int | None = 2048,
    seed: int = 0,
    inference_batch_size: int | None = None,
    providers: Any = "cpu",
    learning_rate: float | None = None,
    batch_size: int | None = None,
    weight_amplitude: float | None = None,
    update_format: str | None = None,
    progress: Callable[[int, dict[str, tuple]], None] | None = None,
    executor: Any = None,
    workers: int | None = None,
    **options: Any,
) -> BundleReport:
    """Conflicting bundles of an ONNX model's hidden layers on a subset of its training set.

    What ``bundlelab audit MODEL --data DATA`` runs.

    Parameters
    ----------
    model : path-like, onnx.ModelProto or OnnxModel
        The model; a path is read by :func:`load_model` (external data stays in its folder).
    data : path-like, array or dict of str to array
        The TRAINING set: an ``.npz`` file or a folder of ``.npy`` files (each input under its
        name, or ``x`` for a one-input model; the labels under ``labels_key``), or the inputs
        as an array (one-input models) or a dict input name -> array, with ``labels``.
    labels : array-like of shape (N,), optional
        The labels of array ``data``; a file or folder holds its own.
    labels_key : str, default='labels'
        The array of the file or folder that holds the labels.
    layers : str or list of str, optional
        None (default): every activation output but the logits, the squeeze-excitation gates
        (a sigmoid that scales a larger tensor by broadcast, and the activation inside its
        branch) and attention softmaxes; ``'all'``: those too; ``'blocks'``: the outputs of
        the repeated blocks (``layer1.0``, ``blocks.3``: from the module scopes of a torch
        export); else layer names or glob patterns, matched against the layer names, the
        tensor names (``'layer4*'`` matches ``/layer4/...``) and the torch module names.
        The default prints what it picked and left out once on stderr
        (:func:`bundlelab._selection.announce`); every report holds that line in
        ``params["selection"]``.
    all_nodes : bool, default=False
        Tap every node's float outputs instead of the activation nodes' only; the tensors
        whose first axis is not the batch (found on two probe batches) are left out and
        named in the summary.
    n_samples : int or None, default=2048
        Training samples measured: the sorted indices
        ``np.random.default_rng(seed).choice(N, n_samples, replace=False)``; None or at least
        N: all of them.
    seed : int, default=0
    inference_batch_size : int, optional
        Samples per forward pass (only bounds memory).  Default: the model's own batch size
        when it was exported with a fixed one, else as many samples as keep one pass's tapped
        outputs near :data:`AUDIT_BATCH_BYTES` (256 MiB), at most 256.
    providers : str or list of str, default='cpu'
        ``'cpu'``, ``'cuda'`` or onnxruntime provider names.
    learning_rate : float, optional
        The training learning rate α of the metric; default 1e-3 (the report's
        ``params["sources"]`` says "default").
    batch_size : int, optional
        The training batch size |B| of the metric; default 64.
    weight_amplitude : float, optional
        ``w``; default: the largest ``|value|`` of the model's float weights.  Where a torch
        exporter folded batch norm into the convolutions, those are not the trained weights:
        ``params["sources"]["weight_amplitude"]`` then says so; pass the torch model's value.
    update_format : str, optional
        The format of the weight update (see :func:`bundlelab.find_bundles`); default: the
        format of the weights that Conv, Gemm and MatMul nodes read when it is float32 or
        float64 (:meth:`OnnxAdapter.update_format`), else ``'auto'`` (float32 master weights
        assumed for a half-precision file, and said so in the report).
    progress : callable, optional
        Called after each forward pass as ``progress(n_rows, shapes)``: the pass's sample count
        and each layer's per-sample output shape (``{layer: shape}``).  Split over workers:
        once per slice, in slice order, when all are done.
    executor : None, str or bundlelab.executors.Executor, optional
        None or ``"inprocess"`` (default): one pass here.  ``"processes"``, ``"ray"`` or an
        Executor: the subset is cut into ``workers`` consecutive slices, each measured by a
        task (see the module docstring), and the report equals the single pass's (resolution
        mode).  With ``providers='cuda'`` each Ray task asks for one GPU.
    workers : int, optional
        Slices; default: the executor's worker count.
    **options
        mode, gamma, epsilon, nonfinite, device: see :func:`bundlelab.find_bundles`
        (:data:`CORE_OPTIONS`).

    Returns
    -------
    bundlelab.BundleReport
    """
    check_keywords("audit()", options, CORE_OPTIONS)
    n_samples = check_optional_int("n_samples", n_samples, low=1)
    seed = check_seed("seed", seed)
    inference_batch_size = check_optional_int("inference_batch_size", inference_batch_size, low=1)
    if learning_rate is not None:
        options["learning_rate"] = check_positive_float("learning_rate", learning_rate)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if not isinstance(labels_key, str):
        raise BundleLabError(
            f"The 'labels_key' parameter must be a str. Got {short_repr(labels_key)} instead."
        )
    if progress is not None and not callable(progress):
        raise BundleLabError(
            "The 'progress' parameter must be None or a callable progress(n_rows, shapes). Got "
            f"{short_repr(progress)} instead."
        )
    adapter = _SplittableAdapter(all_nodes=all_nodes, providers=providers, layers=layers)
    adapter.source = model
    onnx_model = adapter.model(model)
    inputs, targets = _training_data(onnx_model, data, labels, labels_key)
    n_total = targets.shape[0]
    if n_samples is not None and n_samples < n_total:
        chosen = np.sort(np.random.default_rng(seed).choice(n_total, n_samples, replace=False))
        inputs = {name: array[chosen] for name, array in inputs.items()}
        targets = targets[chosen]
    onnx_model.feeds(inputs)  # a shape or type that does not fit fails before the first batch
    taps = _selected_taps(adapter, onnx_model, inputs, all_nodes)
    if layers is None:
        announce(adapter.summary)
    if inference_batch_size is None:
        inference_batch_size = onnx_model.fixed_batch_size or automatic_batch_size(
            onnx_model.sample_bytes(taps)
        )
    sources = {}
    note = adapter.weight_note(onnx_model)
    if weight_amplitude is None and note:
        sources["weight_amplitude"] = note
    on_gpu = "CUDAExecutionProvider" in resolve_providers(providers)
    with split_plan(executor, workers, mode=options.get("mode", "resolution"),
                    on_gpu=on_gpu, progress=None if progress else False) as plan:
        report = measure_bundles(
            adapter, onnx_model, inputs, targets, layers=[tap.layer for tap in taps],
            inference_batch_size=inference_batch_size, batch_size=batch_size,
            weight_amplitude=weight_amplitude,
            update_format=update_format, sources=sources,
            progress=False if progress is None else progress,
            executor=plan.executor, workers=plan.n_slices, **options,
        )
    report.params["selection"] = adapter.summary
    return report


class _SplittableAdapter(OnnxAdapter):
    """The ONNX adapter, able to send the model to the tasks of a split audit (its inputs, a
    dict of arrays, split as any arrays do); ``source`` is the model as the audit got it."""

    source: Any = None

    def worker_copy(self, model: OnnxModel) -> _WorkerCopy:
        """What a task needs to run ``model`` as this adapter would (see the module
        docstring)."""
        keywords = dict(all_nodes=self.all_nodes, providers=self.providers,
                        layers=self.selection)
        path = self.source if isinstance(self.source, (str, Path)) else None
        return _WorkerCopy(keywords, model, self, None if path is None else str(
            Path(path).resolve()))


class _WorkerCopy:
    """The model for the tasks: the audit's own adapter and model in this process; pickled,
    the model file's path, or the serialized proto with its name and external-data folder."""

    def __init__(self, keywords: dict, model: OnnxModel, adapter: OnnxAdapter,
                 path: str | None):
        self.keywords = keywords
        self.model: OnnxModel | None = model
        self.adapter: OnnxAdapter | None = adapter
        self.path = path
        self._proto: tuple | None = None  # (bytes, name, base_dir), made once when pickled

    def __getstate__(self) -> dict:
        if self.path is None and self._proto is None:
            model = self.model
            base_dir = None if model.base_dir is None else str(model.base_dir.resolve())
            self._proto = (model.proto.SerializeToString(), model.name, base_dir)
        return dict(self.__dict__, model=None, adapter=None)

    @contextlib.contextmanager
    def open(self, index: int):
        """``(adapter, model)`` for slice ``index``."""
        if self.model is not None:
            yield self.adapter, self.model
            return
        if self.path is not None:
            model = load_model(self.path)
        else:
            import onnx

            data, name, base_dir = self._proto
            model = OnnxModel(onnx.load_from_string(data), name=name, base_dir=base_dir)
        yield OnnxAdapter(**self.keywords), model


@checked_keywords
def automatic_batch_size(sample_bytes: int | None) -> int:
    """Samples per forward pass whose tapped outputs take about :data:`AUDIT_BATCH_BYTES`.

    Parameters
    ----------
    sample_bytes : int or None
        Bytes the tapped outputs of one sample take (:meth:`OnnxModel.sample_bytes`); None
        when a shape is not known before running.

    Returns
    -------
    int
        At most :data:`MAX_INFERENCE_BATCH`; :data:`UNKNOWN_SHAPE_BATCH` for None.
    """
    if sample_bytes is None:
        return UNKNOWN_SHAPE_BATCH
    sample_bytes = check_int("sample_bytes", sample_bytes, low=0)
    return int(max(1, min(MAX_INFERENCE_BATCH, AUDIT_BATCH_BYTES // max(sample_bytes, 1))))


def _selected_taps(adapter: OnnxAdapter, onnx_model: Any, inputs: Any,
                   all_nodes: bool) -> list:
    try:
        return adapter.selected(onnx_model, inputs)
    except BundleLabError as exc:
        if all_nodes or "all_nodes=True" in str(exc) or adapter.selection in ("all", "blocks"):
            raise
        raise BundleLabError(
            f"{exc} (only activation outputs are layers; all_nodes=True taps every node)"
        ) from None


def _training_data(onnx_model: Any, data: Any, labels: Any,
                   labels_key: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(input name -> array, labels) from a file, a folder or arrays; counts checked."""
    if isinstance(data, (str, Path)):
        if labels is not None:
            raise BundleLabError(
                f"labels were given with the data file {Path(data).name!r}, which holds its "
                f"own ({labels_key!r}); drop labels=... or pass the inputs as arrays"
            )
        return load_data(data, [i.name for i in onnx_model.inputs], labels_key=labels_key)
    if labels is None:
        raise BundleLabError(
            "no labels: pass labels=... with input arrays, or a data file (.npz or a folder of "
            ".npy) that holds them"
        )
    if isinstance(data, Mapping):
        inputs = dict(data)
    elif len(onnx_model.inputs) == 1:
        inputs = {onnx_model.inputs[0].name: data}
    else:
        inputs = data  # feeds() says which inputs the model takes
    arrays, n = onnx_model.feeds(inputs)
    targets = saved_label_vector(np.asarray(labels), where="labels", key="labels")
    if targets.shape[0] != n:
        raise BundleLabError(
            f"got {targets.shape[0]} labels for {n} samples: pass one label per sample, in the "
            "order of the inputs"
        )
    return arrays, targets
