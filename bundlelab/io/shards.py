"""Dumps written as shards: disjoint samples of the same layers in several files.

Each data-parallel worker of a training or an inference job often dumps its own slice of the
samples.  :func:`bundlelab.io.analyze_dump` takes such a set of shards (a folder, a glob, or a
list of paths) and gives the report of the concatenated dump, without concatenating anything:

1. the driver lists the shards in order and opens each one for its listing only (names,
   shapes, formats, labels), so a shard that lacks a layer, or holds it with another shape or
   format, is a one-line error before any long computation;
2. each shard is read and fingerprinted inside its task (:func:`shard_streams`, run by an
   executor of :mod:`bundlelab.executors`: in this process, in local processes or on Ray), and
   only its per-sample state travels back (one :class:`bundlelab.BundleStream` per layer: a
   16-byte fingerprint, a label code and a flag per sample, never the activations);
3. the driver merges the streams of each layer in shard order
   (:func:`bundlelab.merge_streams`), which is exact: the report equals the one of the
   concatenated dump, with the guarantee of streaming (:mod:`bundlelab.streaming`).

Which files are the shards
--------------------------
* a glob pattern (``"acts/part-*.npz"``; quote it in a shell): the files and folders it
  matches;
* a folder holding dump files (``.npz``, ``.safetensors``, ``.h5``/``.hdf5``, ``.pt``) and no
  ``.npy`` file: those files (a folder with ``.npy`` files is one dump, as before; shards that
  are folders of ``.npy`` files are given by a glob);
* a list of paths: those, in that order.

Shards are sorted by name in natural order (``part-2`` before ``part-10``; by the whole path
for a glob), and that order is the sample order.  Formats may differ between shards; the
layers, their values per sample and their dtypes may not.  Resolution mode only: threshold
mode's greedy depends on every earlier sample, so its shards cannot be merged.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from .._errors import BundleLabError
from .._validation import short_repr
from ..streaming import BundleStream, merge_streams
from .dumps import READERS, natural_key, open_dump, release_pages

#: characters that make a path a glob pattern
GLOB_CHARS = "*?["
#: suffixes of the dump files a folder of shards holds
SHARD_SUFFIXES = tuple(sorted(kind for kind in READERS if kind.startswith(".")))


def shard_paths(source: Any) -> list[Path] | None:
    """The shards of ``source`` in sample order, or None when it is a single dump.

    Parameters
    ----------
    source : path-like, glob pattern or sequence of path-like
        See the module docstring.

    Returns
    -------
    list of Path or None
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise BundleLabError("no shard given: pass at least one dump path")
        paths = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise BundleLabError(
                    f"shards must be paths; got {short_repr(item, 40)} of type "
                    f"{type(item).__name__}"
                )
            paths.append(Path(item))
        return paths
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    text = os.fspath(source)
    if not path.exists() and any(char in text for char in GLOB_CHARS):
        matches = sorted(glob.glob(text), key=natural_key)
        if not matches:
            raise BundleLabError(
                f"no such file or directory: {text!r}, and no file matches it as a pattern of "
                "shards: check the folder and the pattern (quote it in a shell, so that "
                "bundlelab expands it)"
            )
        return [Path(match) for match in matches]
    if path.is_dir() and not any(path.glob("*.npy")):
        files = [entry for entry in path.iterdir()
                 if entry.is_file() and not entry.name.startswith(".")
                 and entry.suffix.lower() in SHARD_SUFFIXES]
        if files:
            return sorted(files, key=lambda entry: natural_key(entry.name))
    return None


def shard_streams(task: tuple[str, dict]) -> dict[str, BundleStream]:
    """Fingerprint the layers of one shard: the task each worker runs.

    Parameters
    ----------
    task : (path, options)
        The shard's path and a dict with ``names`` (the layers, in order), ``labels_key``,
        ``chunk_rows`` and ``memory_budget`` (see :func:`bundlelab.io.analyze_dump`),
        ``tasks_per_machine`` (how many tasks share the default memory budget of the machine
        the task runs on; None: one per CPU) and ``keywords`` (the options of
        :class:`bundlelab.BundleStream`).

    Returns
    -------
    dict of str to BundleStream
        One stream per layer, holding the shard's samples (compact when pickled).
    """
    from .analysis import default_memory_budget, plan_chunk_rows  # analysis imports us

    path, options = task
    budget = options["memory_budget"]
    if budget is None:  # this machine's, shared with the tasks running beside this one
        budget = max(1, default_memory_budget() // (options["tasks_per_machine"]
                                                    or os.cpu_count() or 1))
    streams = {}
    with open_dump(path, labels_key=options["labels_key"]) as dump:
        labels = dump.labels
        for name in options["names"]:
            stream = BundleStream(layer=name, **options["keywords"])
            # a shard always streams (its rows go no further than this task), so the chunk
            # size changes the memory and the speed, never the result
            rows = plan_chunk_rows(dump.info(name), chunk_rows=options["chunk_rows"],
                                   memory_budget=budget)
            if rows is None:
                stream.update(dump.load(name), labels)
            else:
                for chunk in dump.iter_chunks(name, rows):
                    start = stream.n_samples
                    stream.update(chunk, labels[start:start + chunk.shape[0]])
                    release_pages(chunk)  # a mapped layer streams in about one chunk of RSS
            streams[name] = stream
    return streams


def check_shard_layers(
    shard: Path, names: list[str], first: Path, infos: dict, dump
) -> None:
    """One line naming the shard and the layer when ``dump`` does not hold the layers of the
    first shard (``infos``: name -> LayerInfo there) with the same values and dtype."""
    for name in names:
        if name not in dump.layer_names:
            raise BundleLabError(
                f"shard {shard.name!r} has no layer {name!r} (shard {first.name!r} has it): "
                "every shard must hold the same layers (pick common ones with --layers)"
            )
        mine, theirs = dump.info(name), infos[name]
        if (mine.n_features, mine.dtype) != (theirs.n_features, theirs.dtype):
            raise BundleLabError(
                f"shard {shard.name!r}: layer {name!r} has {mine.n_features} {mine.dtype} "
                f"values per sample (shape {mine.shape}), shard {first.name!r} has "
                f"{theirs.n_features} {theirs.dtype} (shape {theirs.shape}): every shard must "
                "hold the same layers"
            )


def merged_results(per_shard: list[dict[str, BundleStream]], names: list[str], *,
                   n_classes: int | None) -> list:
    """The result of each layer over every shard, the streams merged in shard order."""
    return [
        merge_streams([streams[name] for streams in per_shard]).result(n_classes=n_classes)
        for name in names
    ]
