"""A description of a data set that a worker loads itself, instead of its arrays travelling."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from .._validation import checked_keywords


@dataclass(frozen=True)
class DatasetSource:
    """How to load a data set (:func:`load_dataset`'s arguments), sent to
    trials instead of its arrays: each process loads it once, from its own files (``digits``
    is embedded; other data sets must be readable under the same path on every machine).

    Parameters
    ----------
    name : str
        What :func:`load_dataset` takes (``"digits"``, ``"cifar10:/data/cifar"``, ...); a
        relative folder is made absolute here, since workers do not share this process's
        working directory.
    n_train, n_test : int, optional
        Samples kept from each split.
    image_size : int, optional
        Images resized to this side.
    seed : int, default=0
        Seed of the subsampling.

    >>> from bundlelab.datasets import DatasetSource
    >>> source = DatasetSource("digits", n_train=64, n_test=32)
    >>> source.load() is source.load()       # once per process
    True
    """

    name: str
    n_train: int | None = None
    n_test: int | None = None
    image_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # "cifar10:data/cifar" names a folder relative to this process's working directory,
        # which a worker does not share
        key, colon, root = self.name.partition(":")
        if colon and root:
            object.__setattr__(self, "name", f"{key}:{os.path.abspath(root)}")

    def load(self) -> Any:
        """The :class:`bundlelab.datasets.Dataset` (loaded on the first call in a process)."""
        return _load(self)


DatasetSource.__init__ = checked_keywords(DatasetSource.__init__)  # type: ignore[method-assign]


@functools.lru_cache(maxsize=2)
def _load(source: DatasetSource) -> Any:
    from ._load import load_dataset

    return load_dataset(source.name, n_train=source.n_train, n_test=source.n_test,
                        image_size=source.image_size, seed=source.seed)
