"""Split measurement: consecutive slices of the inputs, measured by an executor's workers.

:func:`bundlelab.adapters.measure_bundles` with an executor cuts the inputs into consecutive
slices, runs one task per slice (:func:`measure_slice`: the adapter's forward passes on the
slice, fed into one :class:`bundlelab.BundleStream` per layer) and merges the streams it gets
back in slice order (:func:`bundlelab.merge_streams`).  Merging is exact, so the report equals
the one of a single pass.  Two more things keep it equal:

* Slices are cut at forward-pass boundaries (multiples of ``inference_batch_size``, or whole
  ready-made batches), so every forward pass sees the very samples it sees in one process:
  a model whose outputs depend on the batch's size or composition still gives the same rows.
* What a task needs from the driver is decided once there: the layers, each layer's weight
  amplitude and the options (as ``BundleStream`` keywords); a task only runs the model.

What travels to a worker, and how the model is rebuilt there, is the adapter's business: an
adapter may define ``split_inputs(inputs, n_slices, *, inference_batch_size)`` (a list of
``(inputs, start, stop)``: each slice's inputs with its sample range) and
``worker_copy(model)`` (an object whose ``open(index)`` is a context manager yielding
``(adapter, model)`` where the task runs).  Without them, the inputs must be arrays or tensors
(or a dict, list or tuple of them, sliced alike) and the adapter and model travel pickled as
they are (:class:`AsIs`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .._errors import BundleLabError
from .._validation import check_positive_int


def slice_bounds(n_items: int, n_slices: int) -> list[tuple[int, int]]:
    """``min(n_slices, n_items)`` consecutive ranges covering ``0..n_items``, as even as
    possible (the first ones one item longer)."""
    n_slices = min(n_slices, n_items)
    size, extra = divmod(n_items, n_slices)
    bounds, start = [], 0
    for i in range(n_slices):
        stop = start + size + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def batch_aligned_bounds(n_samples: int, n_slices: int,
                         inference_batch_size: int) -> list[tuple[int, int]]:
    """Sample ranges of consecutive slices whose boundaries are multiples of
    ``inference_batch_size``: whole forward passes per slice, at most one slice per pass."""
    n_batches = -(-n_samples // inference_batch_size)
    return [
        (start * inference_batch_size, min(stop * inference_batch_size, n_samples))
        for start, stop in slice_bounds(n_batches, n_slices)
    ]


def split_arrays(inputs: Any, n_slices: int, *,
                 inference_batch_size: int) -> list[tuple[Any, int, int]]:
    """The default ``split_inputs``: arrays or tensors of shape (n_samples, ...), or a dict,
    list or tuple of them, each sliced alike along its first axis."""
    n_samples = _n_samples(inputs)
    if n_samples == 0:
        raise BundleLabError("the data yielded no samples")
    return [
        (_rows(inputs, start, stop), start, stop)
        for start, stop in batch_aligned_bounds(n_samples, n_slices, inference_batch_size)
    ]


def _n_samples(inputs: Any) -> int:
    if isinstance(inputs, Mapping):
        parts = list(inputs.values())
    elif isinstance(inputs, (list, tuple)):
        parts = list(inputs)
    else:
        parts = [inputs]
    lengths = {_length(part) for part in parts}
    if len(lengths) != 1:
        raise BundleLabError(
            f"cannot split inputs whose parts hold different numbers of samples "
            f"({sorted(lengths)}) over workers; pass parts of equal length"
        )
    return lengths.pop()


def _length(part: Any) -> int:
    shape = getattr(part, "shape", None)
    if shape is None or not len(shape) or not hasattr(part, "__getitem__"):
        raise BundleLabError(
            f"cannot split a {type(part).__name__} over workers: pass arrays or tensors of "
            "shape (n_samples, ...) (or a dict, list or tuple of them), or executor='inprocess'"
        )
    return int(shape[0])


def _rows(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Mapping):
        return {key: value[start:stop] for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(value[start:stop] for value in inputs)
    return inputs[start:stop]


@dataclass
class AsIs:
    """The default ``worker_copy``: the adapter and the model, pickled as they are."""

    adapter: Any
    model: Any

    @contextlib.contextmanager
    def open(self, index: int):
        yield self.adapter, self.model


@dataclass
class SliceTask:
    """One slice's measurement: what :func:`measure_slice` needs, all of it picklable."""

    worker: Any  # an adapter's worker_copy(model), or AsIs
    inputs: Any
    labels: np.ndarray | None  # this slice's labels, or None when the inputs carry them
    layers: tuple[str, ...]
    streams: dict[str, dict]  # BundleStream keywords per layer, decided on the driver
    inference_batch_size: int
    index: int


@dataclass
class SliceResult:
    """What a slice sends back: one stream per layer (compact pickles), its sample count and
    each layer's per-sample output shape."""

    streams: dict[str, Any]
    n_samples: int
    shapes: dict[str, tuple] = field(default_factory=dict)


def measure_slice(task: SliceTask) -> SliceResult:
    """Run the model on one slice and stream its layer outputs (an executor's task)."""
    from ..streaming import BundleStream
    from . import _stream_batches

    shapes: dict[str, tuple] = {}

    def record(n_rows: int, batch_shapes: dict[str, tuple]) -> None:
        for layer, shape in batch_shapes.items():
            shapes.setdefault(layer, shape)

    streams = {name: BundleStream(**task.streams[name]) for name in task.layers}
    with task.worker.open(task.index) as (adapter, model):
        seen = _stream_batches(streams, adapter, model, task.inputs, task.labels, task.layers,
                               task.inference_batch_size, record)
    return SliceResult(streams, seen, shapes)


@dataclass
class SplitPlan:
    """How a measurement is split: the executor (None: one pass in this process, as without
    a split) and the number of slices.  A context manager: it closes an executor it made."""

    executor: Any
    n_slices: int
    owned: bool = False

    def __enter__(self) -> SplitPlan:
        if self.owned:
            self.executor.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.owned:
            self.executor.__exit__(*exc_info)


def split_plan(executor: Any, workers: Any, *, mode: str = "resolution", gpus: int = 0,
               on_gpu: bool | None = None, progress: bool | None = None) -> SplitPlan:
    """Resolve the ``executor`` and ``workers`` of a measurement.

    Parameters
    ----------
    executor : None, str or Executor
        None or ``"inprocess"``: this process; ``"processes"``, ``"ray"``: made here with
        ``workers`` (and closed by the plan); an Executor: used as it is (its owner closes
        it).
    workers : int, optional
        Slices; default: ``gpus`` when the model runs on CUDA and there are GPUs, else the
        executor's worker count.
    mode : str, default='resolution'
        The bundle mode: threshold mode cannot be split (its streams do not merge).
    gpus : int, default=0
        GPUs the model can spread over: one slice per GPU by default.
    on_gpu : bool, optional
        Whether the model runs on a GPU, so that each Ray task asks for one; default
        ``gpus > 0``.
    progress : bool or None, optional
        The progress of an executor made here (done / running / failed slices on stderr);
        None: when stderr is a terminal.
    """
    if workers is not None:
        workers = check_positive_int("workers", workers)
    if (executor is None or executor == "inprocess") and workers in (None, 1):
        return SplitPlan(None, 1)
    if mode == "threshold":
        raise BundleLabError(
            "a split measurement needs mode='resolution': in threshold mode the bundles of a "
            "slice depend on every sample before it; use executor='inprocess'"
        )
    from ..executors import Executor, get_executor

    if isinstance(executor, Executor):
        return SplitPlan(executor, workers or executor.capacity())
    name = executor or "inprocess"
    if name == "inprocess":  # one task at a time, whatever the number of slices
        return SplitPlan(get_executor(name, progress=progress), workers, owned=True)
    on_gpu = gpus > 0 if on_gpu is None else on_gpu
    resources = {"num_gpus": 1} if on_gpu and name == "ray" else None
    # a local pool: one worker per GPU here; Ray counts the cluster's GPUs itself
    workers = workers or (gpus if name != "ray" else None) or None
    made = get_executor(name, workers=workers, resources=resources, progress=progress)
    return SplitPlan(made, workers or made.capacity(), owned=True)


def run_slices(plan: SplitPlan, tasks: Sequence[SliceTask]) -> list[SliceResult]:
    """The tasks' results in slice order, from the plan's executor."""
    names = [f"slice {task.index + 1} of {len(tasks)}" for task in tasks]
    return plan.executor.map(measure_slice, tasks, names=names, what="slices")
