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

Sharded dumps
-------------
``dump`` may also be a set of shards holding disjoint samples of the same layers: a folder of
dump files, a glob pattern, or a list of paths (:mod:`bundlelab.io.shards` says which files
are the shards and in which order: sorted by name, in natural order).  Each shard is read and
fingerprinted in its own task (``executor``), and the driver merges the per-sample state of
each layer in shard order; the report equals the one of the concatenated dump.

A layer stored uncompressed is memory-mapped, not copied (:mod:`bundlelab.io.dumps`): read
whole, it costs its size in RSS once (the page cache it maps); streamed, each chunk's pages are
released once the chunk is fingerprinted (:func:`bundlelab.io.dumps.release_pages`), so the
layer streams in about one chunk of RSS.

What the report says about the dump
-----------------------------------
``params["layer_order"]``: where the layer order came from ("stored in the file", "sorted by
name (the file stores no order)", "given", ...; see :mod:`bundlelab.io.dumps`).
``params["skipped"]``: arrays left out because they are not float activations (image ids,
indices), name -> dtype; they are skipped with a note on stderr unless named in ``layers``,
where they stay an error.  ``params["sources"]``: where ``w``, ``alpha``, ``|B|`` and the update
format came from; a dump carries no weights, so ``w`` not given is ``"default (not given)"``
and a warning (counts change by orders of magnitude with ``w``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from .._arrays import check_float_dtype
from .._errors import BundleLabError
from .._provenance import check_sources, report_sources
from .._selection import announce, select_layers
from .._validation import check_optional_int, checked_keywords, short_repr
from ..bundles import BundleOptions, find_bundles
from ..report import BundleReport
from ..streaming import BundleStream
from .dumps import (
    FLOAT_DTYPES,
    ORDER_GIVEN,
    Dump,
    LayerInfo,
    check_readable,
    open_dump,
    physical_memory,
    release_pages,
)
from .shards import check_shard_layers, merged_results, shard_paths, shard_streams

GIB = 1 << 30
MAX_CHUNK_BYTES = 256 << 20

#: the one-line warning when a dump is analysed without w (a dump carries no weights)
W_NOT_GIVEN = (
    "w was not given: using w=1.0; counts change by orders of magnitude with w (pass "
    "--weight-amplitude, the largest |weight| of the model)"
)
#: the source of w when it was not given
W_DEFAULT_SOURCE = "default (not given)"
#: ``order=`` value that means "the order of the ``layers`` list"
ORDER_OF_LAYERS = "layers"
ORDER_NEEDS_LAYERS = (
    "order='layers' (--order layers) takes the order of the layers list, but no layers were "
    "given: pass layers=[...] (--layers) in network order, or an order file"
)


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
    order: Any = None,
    sources: Mapping[str, str] | None = None,
    executor: Any = None,
    **options,
) -> BundleReport:
    """Bundles of the layers of an activation dump, in the dump's layer order.

    Arrays that are not float activations (image ids, indices) are skipped with a note
    (``params["skipped"]``) unless named in ``layers``; ``weight_amplitude`` not given warns
    once (:data:`W_NOT_GIVEN`).

    Parameters
    ----------
    dump : Dump, path-like, glob pattern or sequence of path-like
        An opened dump, or a path for :func:`open_dump` (closed again afterwards); or the
        shards of a dump (disjoint samples of the same layers, any format): a folder of dump
        files, a glob pattern or a list of paths, sorted by name in natural order
        (:mod:`bundlelab.io.shards`).  The report of the shards equals the one of their
        concatenation (resolution mode).
    layers : iterable of str, optional
        Layer names or glob patterns to analyse; all float layers when omitted.  A name given
        exactly must be a float layer (an integer array named here is an error).
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
        processed after each chunk (once, with all of them, for a layer read whole).  For
        shards: once per layer when its shards are merged (the executor shows the shards).
    order : sequence of str, path-like or 'layers', optional
        The layer order, instead of the one stored in the dump: layer names in network order,
        a text file of them (one per line, ``#`` comments), or ``'layers'`` for the order of
        the ``layers`` list (a glob expands in the dump's order where it stands).  The report's
        ``params["layer_order"]`` says "given", else the dump's own :attr:`Dump.order`.
    sources : mapping of str to str, optional
        Where learning_rate, batch_size, weight_amplitude and update_format came from, for the
        report (``params["sources"]``); by default "given" for the keywords passed, "default"
        for the others, ``"default (not given)"`` for ``w``.
    executor : {"inprocess", "processes", "ray"} or Executor, optional
        Where the shards are read and fingerprinted (:func:`bundlelab.executors.get_executor`);
        default "inprocess", one shard after another.  A single dump is analysed in this
        process whatever the executor.
    **options
        Keywords of :func:`bundlelab.find_bundles` (mode, learning_rate, batch_size,
        weight_amplitude, update_format, ...).

    Returns
    -------
    BundleReport
    """
    own = ("layers", "labels_key", "chunk_rows", "memory_budget", "n_classes", "progress",
           "order", "sources", "executor")
    bundle_options = BundleOptions.from_keywords("analyze_dump()", options, also=own)
    chunk_rows = check_optional_int("chunk_rows", chunk_rows, low=1)
    memory_budget = check_optional_int("memory_budget", memory_budget, low=1)
    n_classes = check_optional_int("n_classes", n_classes, low=1)
    layers = _check_patterns(layers)
    caller_sources = check_sources(sources)
    if isinstance(order, str) and order == ORDER_OF_LAYERS and not layers:
        raise BundleLabError(ORDER_NEEDS_LAYERS)
    if progress is not None and not callable(progress):
        raise BundleLabError(
            "The 'progress' parameter must be None or a callable(layer, n_rows). Got "
            f"{short_repr(progress)} instead."
        )
    shards = None if isinstance(dump, Dump) else shard_paths(dump)
    if shards is not None:
        return _analyze_shards(
            shards, layers=layers, labels_key=labels_key, chunk_rows=chunk_rows,
            memory_budget=memory_budget, n_classes=n_classes, progress=progress, order=order,
            caller_sources=caller_sources, executor=executor, options=options,
            bundle_options=bundle_options,
        )
    if not isinstance(dump, Dump):
        with open_dump(dump, labels_key=labels_key) as opened:
            return analyze_dump(
                opened, layers=layers, chunk_rows=chunk_rows, memory_budget=memory_budget,
                n_classes=n_classes, progress=progress, order=order, sources=sources,
                **options,
            )
    budget = default_memory_budget() if memory_budget is None else memory_budget
    names, order_text = ordered_selection(dump, layers, order)
    labels = dump.labels  # a missing labels array is the first thing to say
    names, skipped, skip_note = _skip_non_float(dump, names, layers)
    plans = {}
    for name in names:  # check every layer before the first long computation
        info = dump.info(name)
        _check_layer(dump, info, len(labels))
        plans[name] = plan_chunk_rows(info, chunk_rows=chunk_rows, memory_budget=budget)
    if skip_note:  # once every layer passed its checks: an error stays the only line
        announce(skip_note)

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
                release_pages(chunk)  # a mapped layer streams in about one chunk of RSS
                if progress:
                    progress(name, chunk.shape[0])
            result = stream.result(n_classes=n_classes)
        results.append(result)
    return _dump_report(results, bundle_options, options, caller_sources, order_text, skipped)


def _dump_report(results, bundle_options, options, caller_sources, order_text, skipped):
    params = bundle_options.params()
    if "weight_amplitude" not in options and bundle_options.mode == "resolution":
        caller_sources.setdefault("weight_amplitude", W_DEFAULT_SOURCE)
        warnings.warn(W_NOT_GIVEN, UserWarning, stacklevel=4)
    params["sources"] = report_sources(
        options, caller_sources,
        bundle_options.update_format if bundle_options.mode == "resolution" else None,
        [result.dtype for result in results],
    )
    params["layer_order"] = order_text
    params["skipped"] = skipped
    return BundleReport(results, params)


#: why threshold mode cannot analyse shards, and what to do
THRESHOLD_SHARDS = (
    "threshold mode cannot analyse a sharded dump ({n} shards): its greedy assigns each sample "
    "to the first earlier leader within gamma, so a shard's bundles depend on every sample "
    "before it; concatenate the shards into one dump, or use mode='resolution' (--mode "
    "resolution)"
)


def _analyze_shards(
    paths, *, layers, labels_key, chunk_rows, memory_budget, n_classes, progress, order,
    caller_sources, executor, options, bundle_options,
) -> BundleReport:
    """The report of the concatenation of the shards ``paths`` (see the module docstring)."""
    if bundle_options.mode != "resolution":
        raise BundleLabError(THRESHOLD_SHARDS.format(n=len(paths)))
    first = paths[0]
    # every shard's listing is checked before the first long computation: a missing or
    # different layer is one line naming the shard and the layer, not a failed task later
    with open_dump(first, labels_key=labels_key) as dump:
        names, order_text = ordered_selection(dump, layers, order)
        labels = dump.labels
        names, skipped, skip_note = _skip_non_float(dump, names, layers)
        infos = {name: dump.info(name) for name in names}
        for name in names:
            _check_layer(dump, infos[name], len(labels))
    for path in paths[1:]:
        with open_dump(path, labels_key=labels_key) as dump:
            labels = dump.labels
            check_shard_layers(path, names, first, infos, dump)
            for name in names:
                _check_layer(dump, dump.info(name), len(labels))
            try:
                theirs, _ = ordered_selection(dump, layers, order)
                theirs, _, _ = _skip_non_float(dump, theirs, layers)
            except BundleLabError as exc:
                raise BundleLabError(f"shard {path.name!r}: {exc}") from None
            extra = [name for name in theirs if name not in infos]
            if extra:
                raise BundleLabError(
                    f"shard {path.name!r} has the layer {extra[0]!r}, which shard "
                    f"{first.name!r} lacks: every shard must hold the same layers (pick common "
                    "ones with --layers)"
                )
    if skip_note:
        announce(skip_note)
    from ..executors import executor_in_use

    with executor_in_use(executor) as running:
        task_options = {
            "names": names, "labels_key": labels_key, "chunk_rows": chunk_rows,
            "memory_budget": memory_budget, "keywords": dataclasses.asdict(bundle_options),
            # the default budget is shared by the tasks that may run at once on a worker's
            # machine
            "tasks_per_machine": 1 if running.in_process else None,
        }
        # absolute paths: a worker's working folder may not be the driver's (shared storage)
        tasks = [(os.path.abspath(path), task_options) for path in paths]
        per_shard = running.map(shard_streams, tasks, names=[str(path) for path in paths],
                                what="shards")
    results = merged_results(per_shard, names, n_classes=n_classes)
    if progress:
        for result in results:
            progress(result.layer, 0)
            progress(result.layer, result.n_samples + result.n_excluded)
    return _dump_report(results, bundle_options, options, caller_sources, order_text, skipped)


@checked_keywords
def ordered_selection(
    dump: Dump, layers: Iterable[str] | None, order: Any = None
) -> tuple[list[str], str]:
    """The layers of ``dump`` to analyse, in order, and where that order came from.

    Parameters
    ----------
    dump : Dump
    layers : iterable of str, optional
        Names or glob patterns (:func:`bundlelab.io.select_layers`); every layer when None.
    order : sequence of str, path-like or 'layers', optional
        See :func:`analyze_dump`.

    Returns
    -------
    names : list of str
    order : str
        "given", or the dump's :attr:`Dump.order`.
    """
    patterns = _check_patterns(layers)
    if order is None:
        return select_layers(dump.layer_names, patterns, where=dump.path.name), dump.order
    if isinstance(order, str) and order == ORDER_OF_LAYERS:
        if not patterns:
            raise BundleLabError(ORDER_NEEDS_LAYERS)
        selected = set(select_layers(dump.layer_names, patterns, where=dump.path.name))
        names: list[str] = []
        for item in patterns:
            parts = [item] if item in selected else [p.strip() for p in item.split(",")]
            for part in parts:
                matched = [part] if part in selected else [
                    name for name in dump.layer_names if fnmatch.fnmatchcase(name, part)
                ]
                names.extend(name for name in matched if name not in names)
        return names, ORDER_GIVEN
    base = dump.ordered(order)
    return select_layers(base, patterns, where=dump.path.name), ORDER_GIVEN


def _explicit_names(names: list[str], layers: list[str] | None) -> set[str]:
    """The layers named exactly (not through a glob) in ``layers``."""
    explicit: set[str] = set()
    for item in layers or ():
        parts = [item] if item in names else [p.strip() for p in item.split(",")]
        explicit.update(part for part in parts if part in names)
    return explicit


def _skip_non_float(
    dump: Dump, names: list[str], layers: list[str] | None
) -> tuple[list[str], dict[str, str], str | None]:
    """Leave out arrays that are not float activations unless named exactly: the layers kept,
    the arrays skipped (name -> dtype) and the note that says so (None when none was)."""
    explicit = _explicit_names(names, layers)
    skipped = {
        name: dump.info(name).dtype for name in names
        if name not in explicit and dump.info(name).dtype not in FLOAT_DTYPES
    }
    kept = [name for name in names if name not in skipped]
    listed = ", ".join(f"{name!r} ({dtype})" for name, dtype in list(skipped.items())[:6])
    more = f", ... ({len(skipped) - 6} more)" if len(skipped) > 6 else ""
    if skipped and not kept:  # nothing to analyse: say why the first array cannot be
        first = dump.info(next(iter(skipped)))
        check_readable(first, dump.path.name)
        try:
            check_float_dtype(first.dtype, first.name)
        except BundleLabError as exc:
            raise BundleLabError(f"{dump.path.name} has no float layer: {exc}") from None
    note = (
        f"skipped {len(skipped)} array{'s' if len(skipped) > 1 else ''} that "
        f"{'are' if len(skipped) > 1 else 'is'} not float activations: {listed}{more} "
        "(ids or indices, not layers)"
    ) if skipped else None
    return kept, skipped, note


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
