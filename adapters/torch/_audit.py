"""audit: the bundles of a model on a subset of its training set, in one call.

Split over workers (``executor=``), each task gets a consecutive slice of the measured subset
(whole forward passes) and a copy of the model: the module pickled by ``torch.save`` (its
classes must be importable where the task runs), loaded on the CPU there and moved to a GPU of
that machine when the model runs on CUDA here (slice ``i`` on GPU ``i % device_count()``; under
Ray, which shows each task the one GPU it asked for, that GPU).  A CPU task runs with this
process's number of intra-op threads, so its forward passes compute as this process's would.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from ..._errors import BundleLabError
from ...executors import torch_threads
from ..._validation import (
    check_bool,
    check_keywords,
    check_positive_float,
    check_positive_int,
    checked_keywords,
)
from ..._selection import announce
from ...bundles import BundleOptions
from ...report import BundleReport
from .. import measure_bundles
from .._split import batch_aligned_bounds, slice_bounds, split_plan
from ._adapter import TorchAdapter
from ._data import _BatchData, _DictKeys, _ItemData, _slice, _TensorData, _training_subset
from ._forward import _check_model, _device, _to_device

_DEFAULTS = BundleOptions()


@checked_keywords
def audit(
    model: nn.Module,
    data: Any,
    labels: Any = None,
    *,
    layers: Any = None,
    n_samples: int | None = 2048,
    seed: int = 0,
    optimizer: Any = None,
    train_loader: Any = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    weight_amplitude: str | float = "model",
    mode: str = "resolution",
    inference_batch_size: int = 256,
    device: Any = None,
    progress: bool = False,
    input_key: str | None = None,
    label_key: str = "labels",
    executor: Any = None,
    workers: int | None = None,
    **options,
) -> BundleReport:
    """Conflicting bundles of a PyTorch model's hidden layers on a subset of its training set.

    Parameters
    ----------
    model : torch.nn.Module
        Left as it was: eval mode and no gradients during the measurement, each module's
        training flag restored afterwards.
    data : tensor, array, (inputs, labels), Dataset or DataLoader
        The TRAINING set (see the module docstring).
    labels : array-like of shape (n_samples,), optional
        Labels for a tensor or array ``data``; datasets and loaders carry their own.
    layers : list of str or nn.Module types, 'all' or 'blocks', optional
        Default (None): the output of every activation call (an activation module of any
        library, or ``F.relu``/``x.sigmoid()``/... in a ``forward``), in execution order,
        leaving out the gates (squeeze-excitation scales, broadcast multipliers, softmax
        attention weights) and the logits; it prints once (stderr) what it picked and left
        out.  ``"all"``: every activation, gates included.  ``"blocks"``: the output of every
        repeated block (basic blocks, inverted residuals, transformer blocks).  Or module or
        tap names (a module name: every call of it), glob patterns, or module types.
        ``report.params["selection"]`` says what was picked, in one line.
    n_samples : int or None, default=2048
        Training samples measured (chosen with ``seed``); None or more than there are: all.
    seed : int, default=0
    optimizer : torch.optim.Optimizer, optional
        The training optimizer; its ``param_groups[0]["lr"]`` is the learning rate α.
    train_loader : DataLoader, optional
        The training loader; its ``batch_size`` is |B|.
    learning_rate : float, optional
        The training learning rate α (wins over ``optimizer``); default 1e-3.
    batch_size : int, optional
        The training batch size |B| (wins over ``train_loader``); default 64.
    weight_amplitude : 'model', 'layer' or float, default='model'
        ``w`` (see the module docstring).  With 'layer', ``report.params`` holds
        ``weight_amplitude='layer'`` and ``layer_weight_amplitudes`` (name -> w), as the Keras
        adapter writes them.
    mode : {'resolution', 'threshold'}, default='resolution'
    inference_batch_size : int, default=256
        Samples per forward pass; it only bounds memory (a DataLoader keeps its own batches).
    device : torch.device or str, optional
        Where the inputs are sent; default: the device of the model's parameters.
    progress : bool, default=False
        Show a progress bar over batches.
    input_key : str, optional
        For data yielding dict batches (``{"pixel_values": x, "labels": y}``): the key of the
        input, passed to the model positionally; default: every key but ``label_key``, passed
        as keywords (``model(**inputs)``, the Hugging Face convention).
    label_key : str, default='labels'
        For dict batches: the key of the labels.
    executor : None, str or bundlelab.executors.Executor, optional
        None or ``"inprocess"`` (default): one pass here.  ``"processes"``, ``"ray"`` or an
        Executor: the subset is cut into ``workers`` consecutive slices, each measured by a
        task on a copy of the model (see the module docstring), and the report equals the
        single pass's (resolution mode).  Every kind of ``data`` above can be split.
    workers : int, optional
        Slices; default: one per GPU when the model runs on CUDA, else the executor's worker
        count (with ``"ray"`` on CUDA each task asks Ray for one GPU).
    **options
        gamma, epsilon, nonfinite, update_format: see :func:`bundlelab.find_bundles`
        (``update_format`` defaults to the dtype of the model's trainable parameters: float32
        for a float32 model, also under ``torch.autocast``; float16 after ``.half()``).

    Returns
    -------
    bundlelab.BundleReport
    """
    check_keywords("audit()", options, CORE_OPTIONS)
    _check_model(model)
    keys = _DictKeys(input_key, label_key)
    progress = check_bool("progress", progress)
    subset = _training_subset(data, labels, n_samples=n_samples, seed=seed, model=model,
                              keys=keys)
    gpus = torch.cuda.device_count() if _device(model, device).type == "cuda" else 0
    with split_plan(executor, workers, mode=mode, gpus=gpus, progress=progress) as plan:
        return _measure(
            model, subset, layers=layers, optimizer=optimizer, train_loader=train_loader,
            learning_rate=learning_rate, batch_size=batch_size,
            weight_amplitude=weight_amplitude, mode=mode,
            inference_batch_size=inference_batch_size, device=device, progress=progress,
            options=options, announce_selection=layers is None, keys=keys,
            executor=plan.executor, workers=plan.n_slices,
        )


def _measure(
    model, subset, *, layers, optimizer, train_loader, learning_rate, batch_size,
    weight_amplitude, mode, inference_batch_size, device, progress, options,
    announce_selection=False, keys=None, executor=None, workers=None,
) -> BundleReport:
    (learning_rate, batch_size), sources = _training_hyperparameters(
        optimizer, train_loader, learning_rate, batch_size
    )
    inference_batch_size = check_positive_int("inference_batch_size", inference_batch_size)
    adapter = _SplittableAdapter(layers=layers, device=device, **_keywords(keys))
    options = dict(options, mode=mode, learning_rate=learning_rate)
    trace = adapter.trace(model, subset)
    taps = trace.select(layers)
    adapter._remember(model, subset, trace)  # measure_bundles asks for the layers again
    selection = trace.summary(layers, taps)
    if announce_selection:
        announce(selection)
    sources["weight_amplitude"] = "model parameters"
    if weight_amplitude == "layer":
        w = adapter.layer_weight_amplitudes(model, taps)
    elif weight_amplitude == "model":
        w = adapter.weight_amplitude(model)
    elif isinstance(weight_amplitude, str):
        raise BundleLabError(
            "The 'weight_amplitude' parameter must be 'model', 'layer' or a float in [0, inf). "
            f"Got {weight_amplitude!r} instead."
        )
    else:
        w = check_positive_float("weight_amplitude", weight_amplitude, allow_zero=True)
        sources["weight_amplitude"] = "given"
    report = measure_bundles(
        adapter, model, subset, inference_batch_size=inference_batch_size,
        batch_size=batch_size, weight_amplitude=w, progress=progress, sources=sources,
        executor=executor, workers=workers, **options,
    )
    report.params["selection"] = selection
    return report


class _SplittableAdapter(TorchAdapter):
    """The torch adapter, able to cut an audit's subset into slices and to send the model to
    the tasks that measure them (see :mod:`bundlelab.adapters._split`)."""

    def split_inputs(self, inputs: Any, n_slices: int, *,
                     inference_batch_size: int) -> list[tuple[Any, int, int]]:
        """Consecutive slices of a measured subset (tensors, a dataset's items or ready-made
        batches), each with its labels and its sample range; tensors go to the CPU, so they
        unpickle on any machine."""
        cpu = torch.device("cpu")
        if isinstance(inputs, _TensorData):
            n = int(inputs.y.shape[0])
            return [
                (_TensorData(_to_device(_slice(inputs.x, stop, start), cpu), inputs.y[start:stop]),
                 start, stop)
                for start, stop in batch_aligned_bounds(n, n_slices, inference_batch_size)
            ]
        if isinstance(inputs, _ItemData):
            dataset = inputs.dataset
            base, index = (dataset.dataset, list(dataset.indices)) if isinstance(
                dataset, Subset) else (dataset, list(range(len(dataset))))
            return [
                (_ItemData(Subset(base, index[start:stop]), inputs.collate_fn, inputs.keys),
                 start, stop)
                for start, stop in batch_aligned_bounds(len(index), n_slices,
                                                        inference_batch_size)
            ]
        if isinstance(inputs, _BatchData) and isinstance(inputs.batches_, list):
            sizes = [int(y.shape[0]) for _, y in inputs.batches_]
            ends = [0, *np.cumsum(sizes).tolist()]
            return [
                (_BatchData([(_to_device(x, cpu), y) for x, y in inputs.batches_[first:last]],
                            inputs.keys), ends[first], ends[last])
                for first, last in slice_bounds(len(sizes), n_slices)
            ]
        raise BundleLabError(
            f"cannot split {type(inputs).__name__} data over workers: it can only be read in "
            "order; pass tensors, arrays, a Dataset or a DataLoader over one, or "
            "executor='inprocess'"
        )

    def worker_copy(self, model: nn.Module) -> _WorkerCopy:
        """What a task needs to run ``model`` as this adapter would (see the module
        docstring)."""
        keywords = dict(layers=self.layers, device=self.device, **_keywords(self.keys))
        return _WorkerCopy(keywords, model, torch.get_num_threads())


class _WorkerCopy:
    """The model and the adapter's settings for the tasks: the model itself in this process,
    its ``torch.save`` bytes once pickled (made once, shared by every task)."""

    def __init__(self, keywords: dict, model: nn.Module, threads: int):
        self.keywords = keywords
        self.model: nn.Module | None = model
        self.cuda = _device(model, None).type == "cuda"
        self.threads = threads
        self._bytes: bytes | None = None

    def __getstate__(self) -> dict:
        if self._bytes is None:
            buffer = io.BytesIO()
            try:
                torch.save(self.model, buffer)
            except Exception as exc:  # noqa: BLE001 - pickle's errors vary by what is missing
                raise BundleLabError(
                    f"cannot send the model to the workers ({type(exc).__name__}: {exc}); its "
                    "classes must be importable (defined at module level) where the tasks run, "
                    "or use executor='inprocess'"
                ) from None
            self._bytes = buffer.getvalue()
        return dict(self.__dict__, model=None)

    @contextlib.contextmanager
    def open(self, index: int):
        """``(adapter, model)`` for slice ``index``, with this process's thread count."""
        model, keywords = self.model, self.keywords
        if model is None:  # unpickled where the task runs: our own bytes, from the driver
            model = torch.load(io.BytesIO(self._bytes), map_location="cpu", weights_only=False)
            if self.cuda:
                if not torch.cuda.is_available():
                    raise BundleLabError(
                        "the model runs on CUDA but a worker sees no GPU; give the workers "
                        "GPUs (Ray: resources={'num_gpus': 1}) or move the model to the CPU"
                    )
                model.to(torch.device("cuda", index % torch.cuda.device_count()))
                keywords = dict(keywords, device=None)  # the GPU it was moved to
        # on CUDA the result does not depend on the CPU's threads
        with torch_threads(None if self.cuda else self.threads):
            yield TorchAdapter(**keywords), model


def _keywords(keys) -> dict:
    return {} if keys is None else {"input_key": keys.input_key, "label_key": keys.label_key}


#: keywords passed on to the core (see :func:`bundlelab.find_bundles`)
CORE_OPTIONS = ("gamma", "epsilon", "nonfinite", "update_format")


def _training_hyperparameters(optimizer, train_loader, learning_rate, batch_size):
    """(α, |B|): given, else read from the optimizer and the loader, else the defaults; and
    where each came from (``report.params["sources"]``)."""
    sources = {
        "learning_rate": "given" if learning_rate is not None else (
            "optimizer" if optimizer is not None else "default"),
        "batch_size": "given" if batch_size is not None else (
            "train loader" if train_loader is not None else "default"),
    }
    if learning_rate is None and optimizer is not None:
        groups = getattr(optimizer, "param_groups", None)
        if not groups or "lr" not in groups[0]:
            raise BundleLabError(
                f"cannot read the learning rate of {type(optimizer).__name__} (no "
                "param_groups[0]['lr']); pass learning_rate=..."
            )
        learning_rate = float(groups[0]["lr"])
    if batch_size is None and train_loader is not None:
        batch_size = getattr(train_loader, "batch_size", None)
        if batch_size is None:
            sampler = getattr(train_loader, "batch_sampler", None)
            batch_size = getattr(sampler, "batch_size", None)
        if batch_size is None:
            raise BundleLabError(
                f"cannot read the training batch size of {type(train_loader).__name__} (no "
                "batch_size, e.g. a custom batch_sampler); pass batch_size=..."
            )
    learning_rate = _DEFAULTS.learning_rate if learning_rate is None else learning_rate
    batch_size = _DEFAULTS.batch_size if batch_size is None else batch_size
    return (
        check_positive_float("learning_rate", learning_rate),
        check_positive_int("batch_size", batch_size),
    ), sources
