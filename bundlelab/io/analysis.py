"""Bundles of the layers of a dump: each layer read whole, or streamed in row chunks.

Chunk policy
------------
With ``chunk_rows`` given, every layer is streamed through :class:`bundlelab.BundleStream` in
chunks of that many samples.  Otherwise a layer is read whole when its in-memory size (the
stored array plus the float32 copy made for float16/bfloat16) fits ``memory_budget`` (default:
a quarter of the physical memory, at most 4 GiB), and streamed in chunks of about
``min(256 MiB, memory_budget / 4)`` when it does not.  Whole layers get the exact, confirmed
bundles of :func:`bundlelab.find_bundles`; streamed layers trust 128-bit row fingerprints
(see :mod:`bundlelab.streaming` for the collision bound), so both give the same numbers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable

from .._arrays import check_float_dtype
from .._errors import BundleLabError
from .._validation import check_optional_int, checked_keywords, short_repr
from ..bundles import BundleOptions, find_bundles
from ..report import BundleReport
from ..streaming import BundleStream
from .._selection import select_layers
from .dumps import Dump, LayerInfo, check_readable, open_dump, physical_memory

GIB = 1 << 30
MAX_CHUNK_BYTES = 256 << 20


@checked_keywords
def default_memory_budget() -> int:
    """Bytes one layer may take in memory before it is streamed: RAM / 4, at most 4 GiB."""
    return int(max(64 << 20, min(physical_memory() // 4, 4 * GIB)))


def plan_chunk_rows(info: LayerInfo, *, chunk_rows: int | None, memory_budget: int) -> int | None:
    """Samples per chunk for a layer, or None to read it whole (see the module docstring)."""
    if chunk_rows is not None:
        return chunk_rows
    row_bytes = info.n_features * (info.itemsize + (4 if info.itemsize < 4 else 0))
    if info.n_samples * row_bytes <= memory_budget:
        return None
    return max(1, min(MAX_CHUNK_BYTES, memory_budget // 4) // max(row_bytes, 1))


@checked_keywords
def analyze_dump(
    dump: Dump | str | os.PathLike,
    *,
    layers: Iterable[str] | None = None,
    labels_key: str = "labels",
    chunk_rows: int | None = None,
    memory_budget: int | None = None,
    n_classes: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    **options,
) -> BundleReport:
    """Bundles of the layers of an activation dump, in the dump's layer order.

    Parameters
    ----------
    dump : Dump or path-like
        An opened dump, or a path for :func:`open_dump` (closed again afterwards).
    layers : iterable of str, optional
        Layer names or glob patterns to analyse; all layers when omitted.
    labels_key : str, default='labels'
        Name of the labels array when ``dump`` is a path.
    chunk_rows : int, optional
        Stream every layer in chunks of this many samples; by default only layers larger than
        ``memory_budget`` are streamed.
    memory_budget : int, optional
        Bytes a layer may take in memory before it is streamed (default
        :func:`default_memory_budget`).
    n_classes : int, optional
        ``N_c``; inferred from the labels when omitted.
    progress : callable(layer, n_rows), optional
        Called with ``n_rows=0`` when a layer starts, then with the number of samples just
        processed after each chunk (once, with all of them, for a layer read whole).
    **options
        Keywords of :func:`bundlelab.find_bundles` (mode, learning_rate, batch_size, ...).

    Returns
    -------
    BundleReport
    """
    own = ("layers", "labels_key", "chunk_rows", "memory_budget", "n_classes", "progress")
    bundle_options = BundleOptions.from_keywords("analyze_dump()", options, also=own)
    chunk_rows = check_optional_int("chunk_rows", chunk_rows, low=1)
    memory_budget = check_optional_int("memory_budget", memory_budget, low=1)
    n_classes = check_optional_int("n_classes", n_classes, low=1)
    layers = _check_patterns(layers)
    if progress is not None and not callable(progress):
        raise BundleLabError(
            "The 'progress' parameter must be None or a callable(layer, n_rows). Got "
            f"{short_repr(progress)} instead."
        )
    if not isinstance(dump, Dump):
        with open_dump(dump, labels_key=labels_key) as opened:
            return analyze_dump(
                opened, layers=layers, chunk_rows=chunk_rows, memory_budget=memory_budget,
                n_classes=n_classes, progress=progress, **options,
            )
    budget = default_memory_budget() if memory_budget is None else memory_budget
    names = select_layers(dump.layer_names, layers, where=dump.path.name)
    labels = dump.labels
    plans = {}
    for name in names:  # check every layer before the first long computation
        info = dump.info(name)
        _check_layer(dump, info, len(labels))
        plans[name] = plan_chunk_rows(info, chunk_rows=chunk_rows, memory_budget=budget)

    keywords = dataclasses.asdict(bundle_options)
    results = []
    for name in names:
        if progress:
            progress(name, 0)
        rows = plans[name]
        if rows is None:
            result = find_bundles(
                dump.load(name), labels, n_classes=n_classes, layer=name, **keywords
            )
            if progress:
                progress(name, result.n_samples + result.n_excluded)
        else:
            stream = BundleStream(layer=name, **keywords)
            for chunk in dump.iter_chunks(name, rows):
                start = stream.n_samples
                stream.update(chunk, labels[start:start + chunk.shape[0]])
                if progress:
                    progress(name, chunk.shape[0])
            result = stream.result(n_classes=n_classes)
        results.append(result)
    return BundleReport(results, bundle_options.params())


def _check_patterns(layers) -> list[str] | None:
    """None, one name or pattern, or an iterable of them, as a list of str."""
    if layers is None or isinstance(layers, str):
        return None if layers is None else [layers]
    expected = "None, a layer name or glob pattern, or an iterable of them"
    if isinstance(layers, (bytes, dict)) or not isinstance(layers, Iterable):
        raise BundleLabError(
            f"The 'layers' parameter must be {expected}. Got {short_repr(layers)} instead."
        )
    patterns = list(layers)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise BundleLabError(
                f"The 'layers' parameter must be {expected}: it holds {short_repr(pattern)}."
            )
    return patterns


def _check_layer(dump: Dump, info: LayerInfo, n_labels: int) -> None:
    where = dump.path.name
    check_readable(info, where)
    try:
        check_float_dtype(info.dtype, info.name)
    except BundleLabError as exc:
        raise BundleLabError(f"{where}: {exc}") from None
    if info.n_samples != n_labels:
        raise BundleLabError(
            f"{where}: layer {info.name!r} has {info.n_samples} samples but the labels "
            f"{dump.labels_key!r} have {n_labels}: store one label per sample, in the same order "
            "(or pick the layers that match with --layers)"
        )
    if info.n_features == 0:
        raise BundleLabError(
            f"{where}: layer {info.name!r} has 0 values per sample (shape {info.shape})"
        )
