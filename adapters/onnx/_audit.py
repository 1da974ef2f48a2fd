"""audit: the bundles of an ONNX model on a seeded subset of its training data, in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..._errors import BundleLabError
from ..._selection import select_layers
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
from ._adapter import OnnxAdapter
from ._data import load_data

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
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    weight_amplitude: float | None = None,
    progress: Callable[[int, dict[str, tuple]], None] | None = None,
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
        Layer names or glob patterns; default: every activation output but the logits.
    all_nodes : bool, default=False
        Tap every node's float outputs instead of the activation nodes' only.
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
    learning_rate : float, default=1e-3
        The training learning rate α of the metric.
    batch_size : int, default=64
        The training batch size |B| of the metric.
    weight_amplitude : float, optional
        ``w``; default: the largest ``|value|`` of the model's float weights.
    progress : callable, optional
        Called after each forward pass as ``progress(n_rows, shapes)``: the pass's sample count
        and each layer's per-sample output shape (``{layer: shape}``).
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
    learning_rate = check_positive_float("learning_rate", learning_rate)
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
    adapter = OnnxAdapter(all_nodes=all_nodes, providers=providers)
    onnx_model = adapter.model(model)
    names = _selected_layers(adapter, onnx_model, layers, all_nodes)
    inputs, targets = _training_data(onnx_model, data, labels, labels_key)
    n_total = targets.shape[0]
    if n_samples is not None and n_samples < n_total:
        chosen = np.sort(np.random.default_rng(seed).choice(n_total, n_samples, replace=False))
        inputs = {name: array[chosen] for name, array in inputs.items()}
        targets = targets[chosen]
    onnx_model.feeds(inputs)  # a shape or type that does not fit fails before the first batch
    if inference_batch_size is None:
        taps = {tap.layer: tap for tap in adapter.layers(onnx_model)}
        inference_batch_size = onnx_model.fixed_batch_size or automatic_batch_size(
            onnx_model.sample_bytes([taps[name] for name in names])
        )
    return measure_bundles(
        adapter, onnx_model, inputs, targets, layers=names,
        inference_batch_size=inference_batch_size, batch_size=batch_size,
        learning_rate=learning_rate, weight_amplitude=weight_amplitude,
        progress=False if progress is None else progress, **options,
    )


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


def _selected_layers(adapter: OnnxAdapter, onnx_model: Any, layers: Any,
                     all_nodes: bool) -> list[str]:
    available = adapter.layer_names(onnx_model)
    patterns = [layers] if isinstance(layers, str) else layers
    try:
        return select_layers(available, patterns, where=onnx_model.name)
    except BundleLabError as exc:
        if all_nodes:
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
