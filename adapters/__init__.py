"""Framework adapters: bring bundlelab's core to where models live.

Installed as ``bundlelab.adapters``.  Every framework-specific line of bundlelab lives in a
module of this package (one per framework), imported only when asked for, so the core stays
framework-free.

Writing an adapter
------------------
An adapter is any object with the three members of :class:`ActivationAdapter`; nothing needs
to subclass anything.  It tells which layers a model has (in execution order), yields their
outputs batch by batch, and reports the model's weight amplitude.  :func:`measure_bundles`
does the rest: it feeds each batch to one :class:`bundlelab.BundleStream` per layer, so memory
stays O(n_samples) per layer however deep the model is, and returns a
:class:`bundlelab.BundleReport`.  Register it under a name with :func:`register_adapter` so that
``get_adapter(name)`` (and the CLI) can find it::

    class MyFrameworkAdapter:
        name = "myframework"

        def layer_names(self, model, inputs=None):
            return [...]                      # hidden layers, execution order, never logits

        def iter_layer_outputs(self, model, inputs, *, layers, inference_batch_size):
            for batch_inputs, batch_labels in ...:
                yield {name: output_array for name in layers}, batch_labels

        def weight_amplitude(self, model):
            return max(abs(w).max() for w in ...)   # over all trainable weights

        def update_format(self, model):             # optional
            return "float32"                        # format of the trainable weights, or None

    register_adapter("myframework", MyFrameworkAdapter)

The optional ``update_format(model)`` names the format the model's trainable parameters are
updated in: ``"float32"`` for a float32 model trained under autocast/AMP or a Keras
``mixed_float16`` policy (its variables stay float32 even though its activations are float16),
``"float16"`` for a model whose parameters are float16 (``.half()``), ``"bfloat16"``,
``"float64"``; None when it cannot tell.  :func:`measure_bundles` uses it when the caller
passed no ``update_format`` (see ``docs/semantics.md``, "The update format").

Two more optional members let :func:`measure_bundles` split a measurement over an executor's
workers (``executor=``): ``split_inputs(inputs, n_slices, *, inference_batch_size)`` cuts the
inputs into consecutive slices (default: arrays or tensors, or a dict, list or tuple of them)
and ``worker_copy(model)`` says how the model reaches a task (default: the adapter and the
model pickled as they are); see :mod:`bundlelab.adapters._split`.

An adapter whose forward passes run on CPU threads may define ``forward_threads(model)``: how
many threads they keep busy (None: unknown).  When they take every core, the small outputs'
blocks are fingerprinted between layers instead of in a background thread (see
:class:`bundlelab.streaming.StreamBatcher`), which would stall the passes' own thread pool.

An adapter that can hand each layer's output over as the model produces it (from a forward
hook) may define ``feed_layer_outputs(model, inputs, *, layers, inference_batch_size, feed)``
(see :class:`LayerFeed`): :func:`measure_bundles` then prefers it to ``iter_layer_outputs``, and
no output needs to be copied or kept until the pass ends.  Either way, small outputs of the
layers are gathered into large blocks before they are fingerprinted
(:class:`bundlelab.streaming.StreamBatcher`); the report does not change.

Outputs may be numpy arrays, CuPy arrays or torch tensors (CUDA tensors stay on the GPU).
``inference_batch_size`` is the number of samples per forward pass (it only bounds memory);
``batch_size``, everywhere in bundlelab, is the training batch size |B| of the metric.

Frameworks
----------
Each framework's package offers the same entry points: ``audit`` (a seeded subset of the
training set in one call), its adapter class, ``build_model`` and its training backend (torch
and Keras), and a hook or callback that records ``H^l(t)`` during training.  This module
registers them by name: the adapters for :func:`get_adapter` and the training backends for
:func:`bundlelab.training.get_backend` (which imports this module on its first lookup), all as
``"module:attribute"`` strings, so importing it imports no framework.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .._errors import BundleLabError
from .._registry import Registry
from .._selection import select_layers
from .._validation import (
    check_bool,
    check_keywords,
    check_positive_float,
    check_positive_int,
    checked_keywords,
)
from ._split import split_plan


@runtime_checkable
class ActivationAdapter(Protocol):
    """What bundlelab needs from a framework to measure bundles inside its models.

    An adapter may also offer ``update_format(model) -> str | None``: the format of the
    model's trainable parameters (``"float32"`` for a float32 model under autocast/AMP or a
    ``mixed_float16`` policy, ``"float16"`` for ``.half()``, None when unknown), which
    :func:`measure_bundles` uses as the update format when the caller gives none.  It is
    optional, so it is not a member here (``isinstance`` checks only the three below).
    """

    name: str

    def layer_names(self, model: Any, inputs: Any = None) -> list[str]:
        """Names of the model's tappable hidden layers, in execution order (no output layer).

        ``inputs`` (the data later passed to :meth:`iter_layer_outputs`) may be used to run a
        tracing pass when the order can only be known by running the model."""

    def iter_layer_outputs(
        self, model: Any, inputs: Any, *, layers: Sequence[str], inference_batch_size: int
    ) -> Iterator[Mapping[str, Any] | tuple[Mapping[str, Any], Any]]:
        """Yield, per forward pass of at most ``inference_batch_size`` samples of ``inputs`` (in
        order; a data loader keeps its own batches), a mapping layer name -> layer output of
        shape (batch, ...), or a pair (mapping, batch labels) when the data carries its labels
        (a data loader).  Runs in inference mode without gradients and restores the model."""

    def weight_amplitude(self, model: Any) -> float:
        """``w``: the largest absolute value of any trainable weight of the model."""


#: name -> "module:attribute" (lazy) or a factory, for :func:`get_adapter`
_ADAPTERS = Registry("name")


@checked_keywords
def register_adapter(name: str, factory: str | Callable[[], ActivationAdapter]) -> None:
    """Make an adapter available under ``name``.

    Parameters
    ----------
    name : str
        The name :func:`get_adapter` accepts.
    factory : str or callable
        A zero-argument callable returning the adapter, or a ``"module:attribute"`` string
        imported on first use (so registering costs no import).
    """
    _ADAPTERS.register(name, factory)


@checked_keywords
def available_adapters() -> list[str]:
    """Names accepted by :func:`get_adapter`."""
    return _ADAPTERS.names()


@checked_keywords
def get_adapter(name: str) -> ActivationAdapter:
    """Build the adapter registered under ``name``.

    Parameters
    ----------
    name : str
        A name of :func:`available_adapters` (``"torch"``, ``"onnx"``, ``"keras"``, ...).

    Returns
    -------
    ActivationAdapter
    """
    adapter = _ADAPTERS.create(name)
    if not isinstance(adapter, ActivationAdapter):
        raise BundleLabError(
            f"adapter {name!r} lacks layer_names, iter_layer_outputs or weight_amplitude"
        )
    return adapter


@checked_keywords
def measure_bundles(
    adapter: ActivationAdapter,
    model: Any,
    inputs: Any,
    labels: Any = None,
    *,
    layers: Iterable[str] | None = None,
    inference_batch_size: int = 256,
    batch_size: int | None = None,
    weight_amplitude: float | Mapping[str, float] | None = None,
    update_format: str | None = None,
    sources: Mapping[str, str] | None = None,
    progress: bool | Callable[[int, dict[str, tuple]], None] = False,
    executor: Any = None,
    workers: int | None = None,
    **options,
):
    """Bundles of a model's layers over ``inputs``, streamed batch by batch.

    Parameters
    ----------
    adapter : ActivationAdapter
        The framework's adapter, e.g. ``get_adapter("onnx")`` or ``TorchAdapter()``.
    model : object
        The framework's model object (what ``adapter`` accepts).
    inputs : object
        What ``adapter.iter_layer_outputs`` accepts (arrays, a data loader, ...).
    labels : array-like of shape (n_samples,), optional
        Labels in the order the batches yield samples; omit it when the adapter yields each
        batch's labels with its outputs.
    layers : iterable of str, optional
        Layer names or glob patterns; default: every layer the adapter lists.
    inference_batch_size : int, default=256
        Samples per forward pass; it only bounds memory (a data loader keeps its batches).
    batch_size : int, optional
        The training batch size |B| of the metric (``batch_size`` of :func:`find_bundles`);
        default 64.
    weight_amplitude : float or mapping of layer name to float, optional
        ``w``; default: ``adapter.weight_amplitude(model)`` (resolution mode).  A mapping gives
        each layer its own ``w``; the report's params then say ``weight_amplitude='layer'`` and
        hold the mapping as ``layer_weight_amplitudes``.
    update_format : str, optional
        The format of the weight update (``update_format`` of :func:`find_bundles`); default:
        the adapter's optional ``update_format(model)`` (the format of the model's trainable
        parameters), else ``'auto'``.
    sources : mapping of str to str, optional
        Where ``learning_rate``, ``batch_size``, ``weight_amplitude`` and ``update_format``
        came from, as far as the caller knows (e.g. ``{"learning_rate": "optimizer",
        "batch_size": "train loader"}``).  The rest is filled in: ``"model parameters"`` for
        what was read from the model, ``"given"`` for a value passed here, ``"default"`` or
        ``"assumed (float16 activations)"`` otherwise.  The report holds them as
        ``params["sources"]``.
    progress : bool or callable, default=False
        True shows a progress bar over batches; a callable is called after each batch as
        ``progress(n_rows, shapes)`` with the batch's sample count and each layer's per-sample
        output shape (``{layer: shape}``).  With an executor, a callable is called once per
        slice, in slice order, when they are all done; True shows the executor's progress.
    executor : None, str or bundlelab.executors.Executor, optional
        None or ``"inprocess"`` (default): one pass in this process.  ``"processes"``,
        ``"ray"`` or an Executor: the inputs are cut into ``workers`` consecutive slices at
        forward-pass boundaries, each slice runs as one task (the adapter's forward passes,
        one :class:`bundlelab.BundleStream` per layer) and the streams come back and merge in
        slice order (:func:`bundlelab.merge_streams`), so the report equals the single pass's
        (resolution mode only: threshold mode cannot merge).  The layers, weight amplitudes
        and options are decided here, once.  The inputs must be arrays or tensors (or a dict,
        list or tuple of them) unless the adapter defines ``split_inputs``; the adapter and
        model travel pickled unless it defines ``worker_copy`` (see
        :mod:`bundlelab.adapters._split`).
    workers : int, optional
        Slices to cut the inputs into (fewer when there are fewer forward passes); default: the
        executor's worker count.  With ``executor="inprocess"`` the slices run one after
        another in this process (the same report; a check of the split).
    **options
        Other keywords of :func:`bundlelab.find_bundles` (mode, learning_rate, gamma, ...).

    Returns
    -------
    bundlelab.BundleReport
    """
    from .._provenance import check_sources, report_sources
    from ..bundles import BundleOptions
    from ..report import BundleReport
    from ..streaming import BundleStream

    check_keywords("measure_bundles()", options,
                   [f.name for f in dataclasses.fields(BundleOptions)
                    if f.name not in ("batch_size", "weight_amplitude", "update_format")])
    inference_batch_size = check_positive_int("inference_batch_size", inference_batch_size)
    caller_sources = check_sources(sources)
    given = [name for name in ("learning_rate",) if name in options]
    if batch_size is None:
        batch_size = 64
    else:
        batch_size = check_positive_int("batch_size", batch_size)
        given.append("batch_size")
    if not callable(progress):
        progress = check_bool("progress", progress)
    if update_format is None:
        update_format = _model_update_format(adapter, model)
        if update_format is not None:
            caller_sources.setdefault("update_format", "model parameters")
    else:
        given.append("update_format")
    if update_format is not None:
        options["update_format"] = update_format
    names = select_layers(adapter.layer_names(model, inputs), layers)
    if weight_amplitude is None:
        weight_amplitude = float(adapter.weight_amplitude(model))
        caller_sources.setdefault("weight_amplitude", "model parameters")
    else:
        given.append("weight_amplitude")
    per_layer = isinstance(weight_amplitude, Mapping)
    if per_layer:
        missing = [name for name in names if name not in weight_amplitude]
        if missing:
            raise BundleLabError(f"weight_amplitude has no value for layer {missing[0]!r}")
        weight_amplitude = {
            name: check_positive_float(f"weight_amplitude[{name!r}]", weight_amplitude[name],
                                       allow_zero=True)
            for name in names
        }
    else:
        weight_amplitude = check_positive_float("weight_amplitude", weight_amplitude,
                                                allow_zero=True)
    keywords = {
        name: dict(layer=name, batch_size=batch_size, **options,
                   weight_amplitude=weight_amplitude[name] if per_layer else weight_amplitude)
        for name in names
    }
    streams = {name: BundleStream(**keywords[name]) for name in names}  # checks the options
    if labels is not None:
        labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels)
    plan = split_plan(executor, workers, mode=streams[names[0]].options.mode,
                      progress=None if callable(progress) else progress)
    if plan.executor is None:
        wrap = _progress_bar if progress is True else None
        seen = _stream_batches(streams, adapter, model, inputs, labels, names,
                               inference_batch_size, progress if callable(progress) else None,
                               wrap)
    else:
        with plan:
            streams, seen = _measure_split(
                plan, adapter, model, inputs, labels, keywords, names, inference_batch_size,
                progress if callable(progress) else None,
            )
    if labels is not None and seen != labels.shape[0]:
        raise BundleLabError(f"got {labels.shape[0]} labels for {seen} samples")
    if not seen:
        raise BundleLabError("the data yielded no samples")
    results = [streams[name].result() for name in names]
    bundle_options = next(iter(streams.values())).options
    params = bundle_options.params()
    params["sources"] = report_sources(
        given, caller_sources,
        bundle_options.update_format if bundle_options.mode == "resolution" else None,
        [result.dtype for result in results],
    )
    if per_layer:
        params.update(
            weight_amplitude="layer",
            layer_weight_amplitudes={name: weight_amplitude[name] for name in names},
        )
    return BundleReport(results, params)


def _stream_batches(streams: Mapping[str, Any], adapter: Any, model: Any, inputs: Any,
                    labels: np.ndarray | None, names: Sequence[str], inference_batch_size: int,
                    progress: Callable | None, wrap: Callable | None = None) -> int:
    """Run the adapter's forward passes and feed each layer's outputs (and labels: the batch's
    own, else the next ones of ``labels``) to the layers' streams; the number of samples fed.

    An adapter with the optional ``feed_layer_outputs`` hands each output over as its layer
    produces it (see :class:`LayerFeed`), so no output outlives its use; otherwise each
    batch's outputs come from ``iter_layer_outputs``.  ``wrap`` wraps the per-pass iterator
    (a progress bar)."""
    from ..streaming import StreamBatcher

    batcher = StreamBatcher(streams, background=_core_to_spare(adapter, model))
    feed = LayerFeed(batcher, labels, names, progress)
    wrap = wrap or (lambda passes: passes)
    method = getattr(adapter, "feed_layer_outputs", None)
    passes = None
    try:
        if callable(method):
            passes = method(model, inputs, layers=list(names),
                            inference_batch_size=inference_batch_size, feed=feed)
            for _ in wrap(passes):
                feed.end()
        else:
            passes = batches = adapter.iter_layer_outputs(
                model, inputs, layers=names, inference_batch_size=inference_batch_size
            )
            for item in wrap(batches):
                outputs, batch_labels = item if isinstance(item, tuple) else (item, None)
                feed.begin(batch_labels)
                for name in names:
                    feed.take(name, outputs[name])
                feed.end()
        feed.flush()
    finally:
        # an adapter's passes may hold the model's state (hooks, eval mode) between passes:
        # closed now, also when this loop fails, not when a traceback lets the generator go
        close = getattr(passes, "close", None)
        try:
            if callable(close):
                close()
        finally:
            batcher.close()  # no background thread outlives the measurement, even on an error
    return feed.seen


def _core_to_spare(adapter: Any, model: Any) -> bool:
    """Whether a core is left beside the forward passes for the background fingerprints.

    An adapter's optional ``forward_threads(model)`` says how many CPU threads its forward
    passes keep busy (None: it cannot tell).  When they take every core the process may use,
    a background thread would take a core from the passes' own pool, whose threads wait for
    each other at the end of every operation; the blocks are then fingerprinted in the calling
    thread, between two layers, on one thread."""
    method = getattr(adapter, "forward_threads", None)
    threads = method(model) if callable(method) else None
    return threads is None or threads < _usable_cores()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _progress_bar(passes: Iterable) -> Iterable:
    from rich.progress import track

    return track(passes, description="measuring bundles", transient=True)


class LayerFeed:
    """Takes a measurement's layer outputs, pass by pass, into the layers' streams.

    An adapter's optional ``feed_layer_outputs(model, inputs, *, layers,
    inference_batch_size, feed)`` is a generator that, for each forward pass, calls
    ``feed.begin(labels)`` (the batch's own labels, or None when the caller passed them to
    :func:`measure_bundles`), then ``feed.take(name, output)`` for every layer of ``layers``
    as the pass produces it (from inside a forward hook, say), and yields once the pass is
    over.  It may keep the model's measuring state (hooks, eval mode, no gradients) from one
    pass to the next: its caller must ``close()`` it when it stops early (as
    :func:`measure_bundles` does, also on an error), and the generator restores that state
    then.  ``take`` reads the output before it returns (a small one is copied into a block
    fingerprinted later, see :class:`bundlelab.StreamBatcher`), so the adapter needs no copy
    of it: later in-place operations of the pass cannot change what was measured.

    Parameters
    ----------
    batcher : bundlelab.streaming.StreamBatcher
        Holds the layers' streams (and gathers small outputs into blocks).
    labels : ndarray of shape (n_samples,), optional
        The labels given to :func:`measure_bundles`, taken in order by the passes that carry
        none of their own.
    names : sequence of str
        The measured layers.
    progress : callable, optional
        Called after each pass as ``progress(n_rows, {layer: per-sample shape})``.

    Attributes
    ----------
    seen : int
        Samples of the passes ended so far.
    """

    def __init__(self, batcher: Any, labels: np.ndarray | None, names: Sequence[str],
                 progress: Callable | None):
        self._batcher = batcher
        self._all_labels = labels
        self._names = names
        self._progress = progress
        self.seen = 0  # samples of the passes ended so far
        self._own: Any = None  # the current pass's own labels
        self._labels: Any = None  # the current pass's labels once its size is known
        self._codes: tuple | None = None  # their encoding, made by the pass's first layer
        self._size: int | None = None
        self._shapes: dict[str, tuple] = {}

    def begin(self, labels: Any = None) -> None:
        """A forward pass starts; ``labels``: its own labels, if the data carries them."""
        self._own, self._labels, self._codes = labels, None, None
        self._size, self._shapes = None, {}

    def take(self, name: str, output: Any) -> None:
        """Layer ``name``'s output of the current pass, shape (batch, ...)."""
        if self._size is None:
            self._size = size = int(output.shape[0])
            self._labels = self._own if self._own is not None else self._next_labels(size)
        # the labels are encoded once per pass, not once per layer
        self._codes = self._batcher._update(name, output, self._labels, self._codes)
        self._shapes[name] = tuple(output.shape[1:])

    def end(self) -> None:
        """The current forward pass is over."""
        if self._size is None:
            return
        self.seen += self._size
        if self._progress is not None:
            self._progress(self._size, {name: self._shapes[name] for name in self._names
                                        if name in self._shapes})
        self._size = None

    def flush(self) -> None:
        """Fingerprint what waits in blocks (before the streams' results)."""
        self._batcher.flush()

    def _next_labels(self, size: int) -> np.ndarray:
        labels = self._all_labels
        if labels is None:
            raise BundleLabError(
                "no labels: pass labels=... or data that yields (inputs, labels)"
            )
        if self.seen + size > labels.shape[0]:
            raise BundleLabError(
                f"the model produced more samples than the {labels.shape[0]} labels given"
            )
        return labels[self.seen:self.seen + size]


def _measure_split(plan, adapter, model, inputs, labels, keywords, names,
                   inference_batch_size, progress) -> tuple[dict[str, Any], int]:
    """The layers' streams over every slice, merged in slice order, and the samples seen."""
    from ..streaming import merge_streams
    from ._split import AsIs, SliceTask, run_slices, split_arrays

    split = getattr(adapter, "split_inputs", None) or split_arrays
    slices = split(inputs, plan.n_slices, inference_batch_size=inference_batch_size)
    n_samples = slices[-1][2]
    if labels is not None and labels.shape[0] < n_samples:
        raise BundleLabError(
            f"the model produced more samples than the {labels.shape[0]} labels given"
        )
    copy = getattr(adapter, "worker_copy", None)
    worker = copy(model) if copy is not None else AsIs(adapter, model)
    tasks = [
        SliceTask(worker, part, None if labels is None else labels[start:stop], tuple(names),
                  keywords, inference_batch_size, index)
        for index, (part, start, stop) in enumerate(slices)
    ]
    results = run_slices(plan, tasks)
    if progress is not None:
        for result in results:
            progress(result.n_samples, result.shapes)
    merged = {
        name: merge_streams([result.streams[name] for result in results]) for name in names
    }
    return merged, sum(result.n_samples for result in results)


def _model_update_format(adapter: Any, model: Any) -> str | None:
    """The adapter's optional ``update_format(model)``: a format name, or None when the adapter
    has no such method or cannot tell."""
    from .._validation import UPDATE_FORMATS, check_choice

    method = getattr(adapter, "update_format", None)
    if not callable(method):
        return None
    found = method(model)
    if found is None:
        return None
    formats = tuple(name for name in UPDATE_FORMATS if name not in ("auto", "activations"))
    return check_choice(f"{type(adapter).__name__}.update_format(model)", found, formats)


__all__ = [
    "ActivationAdapter",
    "available_adapters",
    "get_adapter",
    "measure_bundles",
    "register_adapter",
    "select_layers",
]

# The frameworks bundlelab ships: adapters here, their training backends in the registry of
# bundlelab.training.  Strings, so registering imports no framework.
register_adapter("onnx", "bundlelab.adapters.onnx:OnnxAdapter")
register_adapter("torch", "bundlelab.adapters.torch:TorchAdapter")
register_adapter("keras", "bundlelab.adapters.keras:KerasAdapter")


def _register_backends(register: Callable[[str, str], None]) -> None:
    """Register bundlelab's training backends with ``register`` (called by
    :mod:`bundlelab.training` on its first backend lookup, so that importing this package, as
    every audit does, imports no training code)."""
    register("torch", "bundlelab.adapters.torch:TorchBackend")
    register("keras", "bundlelab.adapters.keras:KerasBackend")
