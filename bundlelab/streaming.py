"""Bundles of a layer whose outputs arrive batch by batch (e.g. from a training loop).

Memory stays O(n_samples) per layer in ``resolution`` mode: only the 128-bit fingerprint, a
non-finite flag and the label of each sample are kept, never the activations.

Exactness guarantee
-------------------
The in-memory path (:func:`bundlelab.find_bundles`) confirms every candidate bundle by comparing
the rows value by value, so its result is exact.  The streaming path cannot (the rows are gone),
so it trusts the fingerprints: two different rows are merged only if both 64-bit lanes collide.
Each lane is an NH sum (UMAC's universal hash, see ``kernels/_hashing.py``), which for random
keys makes two different rows of equal length collide in both lanes with probability at most
``2**-64``; over N rows the chance of any false merge is then below ``N**2 / 2**65`` (about
3e-8 for N = 1e6, 3e-14 for N = 1e3).  The keys are fixed pseudo-random constants, so the bound
holds for rows that are not constructed against them, as a layer's activations are not; use
:func:`bundlelab.find_bundles` when the answer must be exact whatever the input.  Rows that are
equal are always merged (no false splits).  ``threshold`` mode keeps the rows of the
bundle leaders (O(n_bundles * n_features)) and is exact.

Merging streams (sharded data)
------------------------------
In ``resolution`` mode the state of a stream is one fingerprint, one non-finite flag and one
label per sample, so the streams of consecutive shards of the samples merge exactly
(:meth:`BundleStream.merge`, :func:`merge_streams`): the state of samples ``0..k-1`` merged
with the state of samples ``k..N-1`` *is* the state one stream would hold after seeing samples
``0..N-1`` in order, so any split into consecutive shards, merged in any grouping, gives the
same :meth:`BundleStream.result` (bundle ids, counts, entropy, every :class:`LayerResult`
field), bit for bit.  The merged result carries the same guarantee as streaming (above), no
weaker: rows that are equal are always merged, two different rows only on a 128-bit collision.
Merging is cheap (no activation is read again) and a stream pickles compactly (numpy arrays of
O(n_samples) only), so shards can be fingerprinted where they live and only the streams travel.
``threshold`` mode cannot merge: its greedy assigns each sample to the first earlier leader
within ``gamma``, so the bundles of a shard depend on every row before it; feed its samples to
one stream in order.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from ._arrays import Rows, as_rows, framework_of, is_gpu_array, to_host
from ._errors import BundleLabError
from ._validation import check_n_classes, checked_keywords, label_codes, merge_label_codes
from .bundles import (
    BundleOptions,
    _check_nonfinite,
    _layer_result,
    group_fingerprints,
    mark_nan_rows,
    nan_row_positions,
    resolution_transform,
    update_format_of,
)
from .kernels import _hashing, get_kernel_backend
from .kernels._formats import FORMATS
from .report import LayerResult


#: options that may differ between merged streams: they change where, not what, is computed
_MERGE_IGNORES = ("device",)

_THRESHOLD_MERGE = (
    "threshold mode cannot merge streams: its greedy assigns each sample to the first earlier "
    "leader within gamma, so a shard's bundles depend on every row before it; feed the samples "
    "to one stream in order, or use mode='resolution', whose fingerprints merge exactly"
)


class BundleStream:
    """Accumulate one layer's bundles over batches; call :meth:`result` at the end.

    In resolution mode, streams of consecutive shards of the samples merge exactly
    (:meth:`merge`, :func:`merge_streams`), and a stream pickles compactly (numpy arrays only),
    so shards can be fingerprinted in other processes or on other machines.

    Parameters
    ----------
    layer : str, default='layer'
        Layer name for the result and errors.
    **options
        Keywords of :func:`bundlelab.find_bundles` (mode, learning_rate, batch_size,
        weight_amplitude, gamma, epsilon, nonfinite, device, update_format).

    Examples
    --------
    >>> import numpy as np
    >>> stream = BundleStream(layer="block1")
    >>> stream.update(np.zeros((2, 4), np.float32), [0, 1])
    >>> stream.update(np.ones((1, 4), np.float32), [1])
    >>> stream.result().n_bundles
    2
    >>> first, second = BundleStream(layer="block1"), BundleStream(layer="block1")
    >>> first.update(np.zeros((2, 4), np.float32), [0, 1])
    >>> second.update(np.ones((1, 4), np.float32), [1])
    >>> first.merge(second).result().bundle_ids.tolist()
    [0, 0, 1]
    """

    @checked_keywords
    def __init__(self, *, layer: str = "layer", **options):
        self.layer = str(layer)
        self.options = BundleOptions.from_keywords("BundleStream()", options, also=("layer",))
        self._labels: list[tuple[np.ndarray, list]] = []  # (codes, classes) per batch
        self._nonfinite: list[np.ndarray] = []
        self._fingerprints: list[np.ndarray] = []  # NaN rows not yet marked (see result())
        self._nan_rows: list[np.ndarray] = []  # sample indices of rows whose t holds NaN
        self._roots: list[np.ndarray] = []
        self._leader_rows = None  # threshold mode: rows of the bundle leaders so far
        self._leader_means = np.empty(0)
        self._leader_tolerances = np.empty(0)
        self._leader_index = np.empty(0, dtype=np.int64)  # sample index of each leader
        self._n_samples = 0
        self._n_features: int | None = None
        self._fmt = None
        self._device: str | None = None
        self._pending = 0  # batches a StreamBatcher has taken but not fingerprinted yet

    @property
    def n_samples(self) -> int:
        """Samples seen so far."""
        return self._n_samples

    @checked_keywords
    def update(self, activations: Any, labels: Any) -> None:
        """Add a batch.

        Parameters
        ----------
        activations : array of shape (batch, ...)
            The layer's outputs for this batch (numpy, CuPy or torch; see
            :func:`bundlelab.find_bundles`); every batch has the same values per sample.
        labels : array-like of shape (batch,)
            One class label per sample of the batch.
        """
        rows, codes, _ = self._accept(activations, labels)
        self._add_batch(rows, codes)

    def _add_batch(self, rows, codes: tuple) -> None:
        """Fingerprint (or assign, in threshold mode) an accepted batch now."""
        backend = get_kernel_backend(self._device)
        if self.options.mode == "resolution":
            fmt = update_format_of(rows.fmt, self.options)
            transform = resolution_transform(fmt, self.options)
            fingerprints, nonfinite = backend.fingerprints(rows.data, fmt, transform, rows.fmt)
            # NaN equals nothing: each row whose t holds NaN gets a fingerprint of its own, made
            # of its sample index; kept apart until result() so that merge() can shift it
            nan_rows = nan_row_positions(backend, rows, fmt, transform, nonfinite)
            self._fingerprints.append(fingerprints)
            self._nan_rows.append(nan_rows + self._n_samples)
        else:
            roots, nonfinite = self._threshold_update(rows, backend)
            self._roots.append(roots)
        self._nonfinite.append(nonfinite)
        self._labels.append(codes)
        self._n_samples += rows.n_samples

    def _accept(self, activations: Any, labels: Any, codes: tuple | None = None):
        """``(rows, label codes, device)`` of a batch, checked against the earlier batches;
        the first batch fixes the layer's width, format and device.  ``codes``: the labels
        already encoded (by :func:`label_codes`) for a batch of that many samples."""
        device = self._device or self.options.device_for(activations)
        rows = as_rows(activations, device=device, layer=self.layer)
        if self._n_features is not None and (
            rows.n_features != self._n_features or rows.fmt != self._fmt
        ):
            raise BundleLabError(
                f"layer {self.layer!r}: batch has {rows.n_features} {rows.fmt.name} values per "
                f"sample, earlier batches had {self._n_features} {self._fmt.name}"
            )
        # the batch's labels, encoded as find_bundles encodes them; result() merges the batches
        # (classes compared as Python values, so any split into batches gives the same classes).
        # Checked before any state changes: a refused batch leaves the stream as it was.
        if codes is None or codes[0].shape[0] != rows.n_samples:
            codes = label_codes(labels, rows.n_samples, layer=self.layer)
        if self._n_features is None:
            self._n_features, self._fmt, self._device = rows.n_features, rows.fmt, device
        return rows, codes, device

    def _threshold_update(self, rows, backend) -> tuple[np.ndarray, np.ndarray]:
        means, tolerances, nonfinite = backend.row_means(rows.data)
        n_old = self._leader_index.shape[0]
        if n_old:
            combined = _concat_rows(self._leader_rows, rows.data, self._device)
            means = np.concatenate([self._leader_means, means])
            tolerances = np.concatenate([self._leader_tolerances, tolerances])
        else:
            combined = rows.data
        leaders = np.empty(combined.shape[0], dtype=np.int64)
        leaders[:n_old] = np.arange(n_old)
        assign, n_leaders = backend.threshold_assign(
            combined, means, tolerances, n_old, leaders, n_old,
            self.options.threshold_scale, self.options.gamma,
        )
        new = leaders[n_old:n_leaders]
        self._leader_rows = _take_rows(combined, leaders[:n_leaders], self._device)
        self._leader_means = means[leaders[:n_leaders]]
        self._leader_tolerances = tolerances[leaders[:n_leaders]]
        self._leader_index = np.concatenate([self._leader_index, new - n_old + self._n_samples])
        return self._leader_index[assign], nonfinite

    @checked_keywords
    def result(self, *, n_classes: int | None = None) -> LayerResult:
        """The layer's bundles over every sample seen so far.

        Parameters
        ----------
        n_classes : int, optional
            ``N_c``; inferred from the labels seen when omitted.

        Returns
        -------
        LayerResult
        """
        if not self._n_samples:
            raise BundleLabError(f"layer {self.layer!r}: no batch was added before result()")
        self._consolidate()
        keep = _check_nonfinite(self._nonfinite[0], self.options.nonfinite, self.layer)
        if self.options.mode == "resolution":
            fingerprints, nan_rows = self._fingerprints[0], self._nan_rows[0]
            if nan_rows.size:  # marked in a copy: the stored state stays mergeable
                fingerprints = mark_nan_rows(fingerprints.copy(), nan_rows)
            roots = group_fingerprints(fingerprints)
        else:
            roots = self._roots[0]
        codes, classes = self._labels[0]
        return _layer_result(
            roots, keep, codes, check_n_classes(n_classes, len(classes)), self.options,
            layer=self.layer, n_features=self._n_features, dtype=self._fmt.name,
            update_format=update_format_of(self._fmt, self.options).name,
        )


    @checked_keywords
    def merge(self, other: "BundleStream") -> "BundleStream":
        """A new stream holding this stream's samples followed by ``other``'s.

        Exact and associative (resolution mode): whatever consecutive shards the samples were
        cut into and however their streams are merged, :meth:`result` equals the one of a
        single stream fed every sample in order (see the module docstring).  Neither stream
        changes; the new one shares their arrays, so merging costs no copy of the per-sample
        state.

        Parameters
        ----------
        other : BundleStream
            The stream of the samples that follow this stream's: same layer, same options
            (``device`` may differ), same values per sample and activation format.

        Returns
        -------
        BundleStream

        Raises
        ------
        BundleLabError
            In threshold mode, or when the layer, an option, or the rows' shape or format
            differ.
        """
        return _merged([self, other])

    def _consolidate(self) -> None:
        """One array per field instead of one per batch (result(), pickling)."""
        if self._pending:
            raise BundleLabError(
                f"layer {self.layer!r}: {self._pending} batch(es) still wait in a StreamBatcher; "
                "call its flush() before result(), merge() or pickling"
            )
        if self.options.mode == "resolution":
            self._fingerprints = [_joined(self._fingerprints, (0, 2), np.uint64)]
            self._nan_rows = [_joined(self._nan_rows, (0,), np.int64)]
        else:
            self._roots = [_joined(self._roots, (0,), np.int64)]
        self._nonfinite = [_joined(self._nonfinite, (0,), np.bool_)]
        if len(self._labels) != 1:
            self._labels = [merge_label_codes(self._labels)]

    def __getstate__(self) -> dict:
        # compact: one numpy array per field (no per-batch lists, no device arrays), the
        # format by name, and the leader rows of threshold mode copied to the host
        self._consolidate()
        codes, classes = self._labels[0]
        state = {
            "layer": self.layer,
            "options": self.options,
            "n_samples": self._n_samples,
            "n_features": self._n_features,
            "fmt": None if self._fmt is None else self._fmt.name,
            "device": self._device,
            "nonfinite": self._nonfinite[0],
            # the narrowest integer holding every code (one byte for up to 256 classes)
            "label_codes": codes.astype(np.min_scalar_type(max(len(classes) - 1, 0))),
            "label_classes": classes,
        }
        if self.options.mode == "resolution":
            state["fingerprints"] = self._fingerprints[0]
            state["nan_rows"] = self._nan_rows[0]
            state["fingerprint_version"] = _hashing.VERSION
        else:
            leader_rows = self._leader_rows
            if leader_rows is not None and not isinstance(leader_rows, np.ndarray):
                leader_rows = leader_rows.copy_to_host()
            state.update(
                roots=self._roots[0], leader_rows=leader_rows, leader_means=self._leader_means,
                leader_tolerances=self._leader_tolerances, leader_index=self._leader_index,
            )
        return state

    def __setstate__(self, state: dict) -> None:
        # states pickled before the definition was recorded hold definition 1
        version = state.get("fingerprint_version", 1)
        if state["options"].mode == "resolution" and state["n_samples"] and (
            version != _hashing.VERSION
        ):
            raise BundleLabError(
                f"layer {state['layer']!r}: this stream's state holds fingerprints of definition "
                f"{version}, this bundlelab computes definition {_hashing.VERSION}; they would "
                "not meet when merged: fingerprint these samples again with this bundlelab"
            )
        self.__init__(layer=state["layer"])  # every field at its start value, then the state's
        self.options = state["options"]
        self._n_samples = state["n_samples"]
        self._n_features = state["n_features"]
        self._fmt = None if state["fmt"] is None else FORMATS[state["fmt"]]
        self._device = state["device"]
        self._nonfinite = [state["nonfinite"]]
        self._labels = [(state["label_codes"].astype(np.int64), list(state["label_classes"]))]
        if self.options.mode == "resolution":
            self._fingerprints, self._nan_rows = [state["fingerprints"]], [state["nan_rows"]]
        else:
            self._roots, self._leader_rows = [state["roots"]], state["leader_rows"]
            self._leader_means = state["leader_means"]
            self._leader_tolerances = state["leader_tolerances"]
            self._leader_index = state["leader_index"]
        if self._leader_rows is not None and self._device not in (None, "cpu"):
            from numba import cuda  # the leaders live where the stream computes

            self._leader_rows = cuda.to_device(self._leader_rows)


@checked_keywords
def merge_streams(streams: Sequence[BundleStream]) -> BundleStream:
    """One stream holding the samples of ``streams``, in list order.

    The streams hold consecutive shards of one layer's samples (e.g. one per file of a sharded
    dump, or one per worker); the result equals the one of a single stream fed every sample in
    order (resolution mode, see :meth:`BundleStream.merge`).  No stream changes.

    Parameters
    ----------
    streams : sequence of BundleStream
        At least one stream; same layer and options (``device`` may differ), same values per
        sample and activation format.

    Returns
    -------
    BundleStream

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0.0], [1.0], [0.0], [2.0]], np.float32)
    >>> shards = [BundleStream(layer="fc") for _ in range(2)]
    >>> shards[0].update(a[:2], ["cat", "dog"])
    >>> shards[1].update(a[2:], ["dog", "cat"])
    >>> merge_streams(shards).result().bundle_ids.tolist()
    [0, 1, 0, 2]
    """
    if isinstance(streams, BundleStream) or not isinstance(streams, Sequence):
        raise BundleLabError(
            "merge_streams() takes a sequence of BundleStream (one per shard, in sample order); "
            f"got {type(streams).__name__}: pass a list, e.g. merge_streams([first, second])"
        )
    if not streams:
        raise BundleLabError("merge_streams() got no stream: pass at least one BundleStream")
    return _merged(list(streams))


#: a CPU batch of at least this many bytes is fingerprinted where it is (no copy)
DIRECT_BYTES = 1 << 20
#: the size of a block that gathers smaller batches (one kernel call per block)
BLOCK_BYTES = 4 << 20
#: the most memory a StreamBatcher's blocks hold together
BUDGET_BYTES = 16 << 20


class StreamBatcher:
    """Feed several layers' streams, running the fingerprint kernel on large blocks.

    Each fingerprint kernel call has a fixed cost (a parallel launch, tens to hundreds of
    microseconds) that dominates for a small batch, such as 256 samples x 256 features.  In
    resolution mode on the CPU, a batch smaller than ``direct_bytes`` is copied into a block
    shared by every layer whose rows have the same length, dtype and transform constants: a
    row's fingerprint depends on nothing but the row and those, so one kernel call over a block
    holding rows of several layers and batches gives each row the fingerprint its own
    :meth:`BundleStream.update` would.  The block is fingerprinted when full, when the blocks
    would exceed ``budget_bytes`` (the least recently used one first), and at :meth:`flush`;
    each batch keeps its place in its stream, so the results equal plain updates bit for bit.
    With ``background`` (default), a full block is fingerprinted in a background thread while
    the caller goes on filling the next one (the kernel releases the GIL); at most one block
    is in flight.  Without it, the caller fingerprints a full block itself, on one Numba
    thread (for a caller whose other cores are busy, e.g. a forward pass on every core).
    Larger batches, GPU batches, threshold mode and narrow formats go to
    :meth:`BundleStream.update` at once.

    The activations are read (or copied) before :meth:`update` returns, so the caller may
    reuse or overwrite them at once, e.g. inside a forward hook.  Call :meth:`flush` before
    :meth:`BundleStream.result`, merging or pickling the streams.

    Parameters
    ----------
    streams : mapping of str to BundleStream
        Layer name -> its stream.
    direct_bytes, block_bytes, budget_bytes : int
        Batches of ``direct_bytes`` or more are fingerprinted as they are; smaller ones are
        gathered into blocks of about ``block_bytes`` (at least one batch); the blocks being
        filled hold at most ``max(budget_bytes, block_bytes)`` together, plus one block in
        flight (whose memory the next block reuses once it is fingerprinted).
    background : bool, default=True
        Fingerprint full blocks in a background thread (one Numba thread) meanwhile; False:
        in the calling thread (one Numba thread).

    Examples
    --------
    >>> import numpy as np
    >>> streams = {"fc1": BundleStream(layer="fc1"), "fc2": BundleStream(layer="fc2")}
    >>> batcher = StreamBatcher(streams)
    >>> batcher.update("fc1", np.zeros((2, 4), np.float32), [0, 1])
    >>> batcher.update("fc2", np.eye(2, 4, dtype=np.float32), [0, 1])
    >>> batcher.flush()
    >>> streams["fc1"].result().n_bundles, streams["fc2"].result().n_bundles
    (1, 2)
    """

    def __init__(self, streams, *, direct_bytes: int = DIRECT_BYTES,
                 block_bytes: int = BLOCK_BYTES, budget_bytes: int = BUDGET_BYTES,
                 background: bool = True):
        self.streams = streams
        self.direct_bytes = int(direct_bytes)
        self.block_bytes = int(block_bytes)
        self.budget_bytes = max(int(budget_bytes), self.block_bytes)
        self._blocks: dict[tuple, _Block] = {}  # insertion order: least recently used first
        self._held = 0  # bytes of the blocks' buffers
        self._labels: tuple[Any, tuple] | None = None  # (labels object, its codes)
        self._constants: dict[tuple, tuple] = {}  # (layer, format) -> (fmt, transform)
        self.background = bool(background)
        self._worker: ThreadPoolExecutor | None = None
        self._in_flight: deque = deque()  # (future, block) of the blocks being fingerprinted
        self._lanes: dict[str, _Lane] = {}  # layer -> what its last gathered batch was
        # one fingerprinted block's memory, kept for the next block: a fresh buffer costs a
        # page fault per 4 KiB on its first fill, about as much as the copy itself
        self._spare: np.ndarray | None = None

    def update(self, name: str, activations: Any, labels: Any) -> None:
        """Add a batch of layer ``name`` (see :meth:`BundleStream.update`); its fingerprints
        may be computed later, in a block."""
        self._update(name, activations, labels, None)

    def _update(self, name: str, activations: Any, labels: Any,
                codes: tuple | None) -> tuple | None:
        """:meth:`update`; ``codes``: the labels already encoded by :func:`label_codes` (a
        forward pass's layers share one labels array), or None.  Returns the codes it used
        (None when the batch went to :meth:`BundleStream.update`), for the pass's next layer."""
        lane = self._lanes.get(name)
        data = None if lane is None else lane.rows(activations, self.direct_bytes)
        if data is None:
            return self._update_checked(name, activations, labels, codes)
        # the layer's earlier batch was checked and had the same kind, width and format: only
        # the labels are new
        if codes is None or codes[0].shape[0] != data.shape[0]:
            codes = self._codes(labels)
            if codes is None or codes[0].shape[0] != data.shape[0]:
                codes = label_codes(labels, data.shape[0], layer=lane.stream.layer)
                self._remember_labels(labels, codes)
        self._gather(lane, data, codes)
        return codes

    def _update_checked(self, name: str, activations: Any, labels: Any,
                        codes: tuple | None) -> tuple | None:
        """A batch whose layer has no lane yet (or that does not fit it): every check of
        :meth:`BundleStream.update`; a batch gathered into a block opens the layer's lane."""
        self._lanes.pop(name, None)
        stream = self.streams[name]
        if stream.options.mode != "resolution" or framework_of(activations) == "other" or (
            is_gpu_array(activations) or stream.options.device_for(activations) != "cpu"
        ):
            stream.update(activations, labels)
            return None
        if codes is None:
            codes = self._codes(labels)
        rows, codes, _ = stream._accept(activations, labels, codes)
        self._remember_labels(labels, codes)
        if not rows.fmt.native or rows.data.nbytes >= self.direct_bytes:
            stream._add_batch(rows, codes)
            return codes
        fmt, transform = self._constants_of(stream, rows.fmt)
        lane = _Lane(stream, (rows.n_features, rows.data.dtype.str, fmt.name, transform), fmt,
                     transform, rows.fmt, type(activations), activations.dtype,
                     tuple(activations.shape[1:]), rows.n_features)
        self._lanes[name] = lane
        self._gather(lane, rows.data, codes)
        return codes

    def _remember_labels(self, labels: Any, codes: tuple) -> None:
        if isinstance(labels, np.ndarray) and labels.dtype.kind in "biufUS":
            # a copy: a caller may refill its labels array in place for the next batch
            self._labels = (labels.copy(), codes)

    def _gather(self, lane: "_Lane", data: np.ndarray, codes: tuple) -> None:
        """Copy a checked batch's rows (n_samples, n_features) into its block and give the
        batch its place in its stream."""
        stream, key, n_samples = lane.stream, lane.key, data.shape[0]
        block = self._blocks.pop(key, None)
        if block is not None and block.used + n_samples > block.buffer.shape[0]:
            self._fingerprint(block)  # its buffer now belongs to that job: a new block below
            self._held -= block.buffer.nbytes
            block = None
        if block is None:
            itemsize, n_features = data.itemsize, lane.n_features
            capacity = max(self.block_bytes // (itemsize * n_features), n_samples)
            nbytes = capacity * n_features * itemsize
            while self._blocks and self._held + nbytes > self.budget_bytes:
                self._retire(next(iter(self._blocks)))
            block = _Block(self._buffer(nbytes).view(data.dtype).reshape(capacity, n_features),
                           lane.fmt, lane.transform, lane.source)
            self._held += nbytes
        self._blocks[key] = block  # now the most recently used
        stop = block.used + n_samples
        block.buffer[block.used:stop] = data
        block.parts.append((stream, len(stream._fingerprints), stream._n_samples, block.used,
                            stop))
        block.used = stop
        # the batch's place in the stream, filled in when its block is fingerprinted
        stream._fingerprints.append(None)
        stream._nan_rows.append(None)
        stream._nonfinite.append(None)
        stream._labels.append(codes)
        stream._n_samples += n_samples
        stream._pending += 1

    def flush(self) -> None:
        """Fingerprint every waiting batch, fill in its place in its stream, free the blocks
        (and stop the background thread)."""
        try:
            for key in list(self._blocks):
                self._retire(key)
            self._collect(wait=0)
            self._merge_labels()
        finally:
            self.close()

    def _merge_labels(self) -> None:
        """Merge each stream's per-batch label codes once for all the streams that hold the
        same batches' codes (the layers of one forward pass share them), instead of once per
        stream in its result()."""
        merged: dict[tuple, tuple] = {}
        for stream in self.streams.values():
            parts = stream._labels
            if len(parts) < 2 or stream._pending:
                continue
            key = tuple(map(id, parts))  # the parts stay alive during the loop: ids are unique
            if key not in merged:
                merged[key] = merge_label_codes(parts)
            stream._labels = [merged[key]]

    def close(self) -> None:
        """Stop the background thread (waiting for its job); batches not yet filled in stay
        pending (after an error: the streams are not to be used)."""
        self._labels = None
        self._lanes.clear()
        self._spare = None
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    def _codes(self, labels: Any) -> tuple | None:
        """The codes of the previous batch's labels when ``labels`` holds the same values (a
        forward pass's layers share one labels array); None otherwise."""
        if self._labels is None or not isinstance(labels, np.ndarray):
            return None
        previous, codes = self._labels
        if previous.shape == labels.shape and previous.dtype == labels.dtype and (
            np.array_equal(previous, labels)
        ):
            return codes
        return None

    def _constants_of(self, stream: BundleStream, source) -> tuple:
        key = (id(stream), source.name)
        if key not in self._constants:
            fmt = update_format_of(source, stream.options)
            self._constants[key] = (fmt, resolution_transform(fmt, stream.options))
        return self._constants[key]

    def _retire(self, key: tuple) -> None:
        block = self._blocks.pop(key)
        self._fingerprint(block)
        self._held -= block.buffer.nbytes

    def _fingerprint(self, block: "_Block") -> None:
        """Fingerprint a block's rows: in the background thread, where the caller goes on
        (e.g. with the forward pass) meanwhile; at most one block at a time is in flight."""
        if not block.used:
            return
        rows = Rows(block.buffer[:block.used], block.source, "cpu")
        job = (rows, block.fmt, block.transform)
        if not self.background:
            self._fill(block.parts, _fingerprint_rows(*job, one_thread=True))
            self._recycle(block.buffer)
            return
        # the previous block must be done before this one goes: one block in flight at most
        # (the caller fills the next block meanwhile)
        self._collect(wait=0)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="bundlelab-fingerprints")
        future = self._worker.submit(_fingerprint_rows, *job, one_thread=True)
        self._in_flight.append((future, block))

    def _collect(self, wait: int) -> None:
        """Fill in the finished jobs' batches; wait until at most ``wait`` jobs are left."""
        while self._in_flight and (len(self._in_flight) > wait or self._in_flight[0][0].done()):
            future, block = self._in_flight.popleft()
            self._fill(block.parts, future.result())  # a job's error is raised here
            self._recycle(block.buffer)

    def _buffer(self, nbytes: int) -> np.ndarray:
        """``nbytes`` of memory for a new block: the spare buffer when it is large enough."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.nbytes >= nbytes:
            return spare[:nbytes]
        return np.empty(nbytes, np.uint8)

    def _recycle(self, buffer: np.ndarray) -> None:
        """Keep a fingerprinted block's memory (the largest seen) as the spare buffer."""
        while buffer.base is not None:
            buffer = buffer.base
        if self._spare is None or buffer.nbytes > self._spare.nbytes:
            self._spare = buffer

    def _fill(self, parts: list, computed: tuple) -> None:
        fingerprints, nonfinite, nan_rows = computed
        for stream, slot, first_sample, start, stop in parts:
            mine = nan_rows[(nan_rows >= start) & (nan_rows < stop)]
            stream._fingerprints[slot] = fingerprints[start:stop]
            stream._nan_rows[slot] = mine - start + first_sample
            stream._nonfinite[slot] = nonfinite[start:stop]
            stream._pending -= 1


def _fingerprint_rows(rows: Rows, fmt, transform, one_thread: bool = False) -> tuple:
    """``(fingerprints, nonfinite, nan row positions)`` of a block's rows.

    ``one_thread``: Numba's kernels run on one thread, so the other cores stay with whatever
    runs beside (the forward pass filling the blocks, or, called between two of its layers,
    the pass's own thread pool, whose idle threads still hold their cores)."""
    # before bundlelab's Numba kernels are loaded (a young process hashes in numpy) Numba's
    # threads must not start: they would start on Numba's default layer
    if not one_thread or "bundlelab.kernels.cpu" not in sys.modules:
        return _fingerprinted(rows, fmt, transform)
    # the module may still be importing in another thread, before it chose the threading
    # layer: this import waits for it to finish
    import numba

    from .kernels import cpu  # noqa: F401

    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # thread-local: only this thread's launches
    try:
        return _fingerprinted(rows, fmt, transform)
    finally:
        numba.set_num_threads(threads)


def _fingerprinted(rows: Rows, fmt, transform) -> tuple:
    backend = get_kernel_backend("cpu")
    fingerprints, nonfinite = backend.fingerprints(rows.data, fmt, transform, rows.fmt)
    return fingerprints, nonfinite, nan_row_positions(backend, rows, fmt, transform, nonfinite)


@dataclasses.dataclass
class _Lane:
    """A layer's last gathered batch, checked in full: a later batch of the same array type,
    dtype and per-sample shape, on the CPU and small enough, goes into the same blocks without
    the checks (they would pass and give the same rows, format and transform)."""

    stream: BundleStream
    key: tuple  # the blocks it goes to
    fmt: Any  # the update format
    transform: Any
    source: Any  # the activations' format
    kind: type  # the activations' array type
    dtype: Any  # the activations' own dtype object (numpy or torch)
    shape: tuple  # per sample
    n_features: int

    def rows(self, activations: Any, direct_bytes: int) -> np.ndarray | None:
        """The batch as host rows (n_samples, n_features), or None when it does not fit."""
        if type(activations) is not self.kind or activations.dtype != self.dtype or (
            tuple(activations.shape[1:]) != self.shape or is_gpu_array(activations)
        ):
            return None
        data = to_host(activations)
        n_samples = data.shape[0]
        if not n_samples or n_samples * self.n_features * data.itemsize >= direct_bytes:
            return None
        # a view when contiguous; the block copy reads it once either way
        return data.reshape(n_samples, self.n_features)


@dataclasses.dataclass
class _Block:
    """Rows of small batches waiting for one fingerprint kernel call."""

    buffer: np.ndarray
    fmt: Any  # the update format
    transform: Any
    source: Any  # the activations' format
    used: int = 0
    parts: list = dataclasses.field(default_factory=list)  # (stream, slot, first, start, stop)


def _joined(parts: list[np.ndarray], empty_shape: tuple, dtype) -> np.ndarray:
    """The concatenation of ``parts``; the part itself when there is one (no copy)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(empty_shape, dtype=dtype)


def _merged(streams: list[BundleStream]) -> BundleStream:
    """The concatenation of ``streams`` (checked), sharing their arrays."""
    first = streams[0]
    for position, stream in enumerate(streams):
        if not isinstance(stream, BundleStream):
            raise BundleLabError(
                f"can only merge BundleStream objects; stream {position} is a "
                f"{type(stream).__name__}"
            )
        _check_mergeable(first, stream)
    merged = BundleStream(layer=first.layer)
    merged.options = first.options
    for stream in streams:
        if not stream._n_samples:
            continue  # the empty stream is the identity of merge
        if merged._n_features is None:
            merged._n_features, merged._fmt = stream._n_features, stream._fmt
            merged._device = stream._device
        elif (stream._n_features, stream._fmt) != (merged._n_features, merged._fmt):
            raise BundleLabError(
                f"cannot merge the streams of layer {first.layer!r}: one has "
                f"{merged._n_features} {merged._fmt.name} values per sample, another "
                f"{stream._n_features} {stream._fmt.name}; every shard must hold the same layer"
            )
        # a stream's sample i is sample i + offset of the whole: shift the sample indices it
        # holds (the NaN rows, whose fingerprint is made of them); every other field is per
        # sample and does not depend on where the shard starts
        offset = merged._n_samples
        stream._consolidate()  # also refuses a stream whose batches still wait in a batcher
        merged._fingerprints.extend(stream._fingerprints)
        merged._nan_rows.extend(rows + offset for rows in stream._nan_rows)
        merged._nonfinite.extend(stream._nonfinite)
        merged._labels.extend(stream._labels)  # classes merged as Python values in result()
        merged._n_samples += stream._n_samples
    return merged


def _check_mergeable(first: BundleStream, other: BundleStream) -> None:
    where = f"cannot merge the streams of layer {first.layer!r}"
    if other.layer != first.layer:
        raise BundleLabError(
            f"cannot merge a stream of layer {other.layer!r} into one of layer {first.layer!r}: "
            "merge the streams of one layer (the shards of its samples)"
        )
    if first.options.mode != "resolution" or other.options.mode != "resolution":
        raise BundleLabError(f"{where}: {_THRESHOLD_MERGE}")
    for field in dataclasses.fields(first.options):
        mine, theirs = getattr(first.options, field.name), getattr(other.options, field.name)
        if field.name not in _MERGE_IGNORES and mine != theirs:
            raise BundleLabError(
                f"{where}: {field.name} differs ({mine!r} vs {theirs!r}); create every shard's "
                "stream with the same options"
            )


def _concat_rows(first, second, device):
    if device == "cpu":
        return np.concatenate([first, second])
    from numba import cuda

    out = cuda.device_array((first.shape[0] + second.shape[0], first.shape[1]), dtype=first.dtype)
    out[: first.shape[0]] = first
    out[first.shape[0]:] = second
    return out


def _take_rows(rows, index: np.ndarray, device):
    if device == "cpu":
        return rows[index]
    from numba import cuda

    host = rows.copy_to_host()[index]  # leaders are few; a host round trip keeps this simple
    return cuda.to_device(np.ascontiguousarray(host))
