"""Model inputs and labels from an ``.npz`` file or a folder of ``.npy`` files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..._errors import BundleLabError
from ..._validation import checked_keywords, saved_label_vector, short_repr
from ._messages import shorten


@checked_keywords
def load_data(
    path: str | Path, input_names: Sequence[str], *, labels_key: str = "labels"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model inputs and labels from an ``.npz`` file or a folder of ``.npy`` files.

    Each input is stored under its name, or as ``x`` when the model has a single input; the
    labels under ``labels_key``.  Nothing is unpickled (``allow_pickle=False``); ``.npy`` files
    are memory-mapped, so a subset can be taken without reading them whole.

    Parameters
    ----------
    path : path-like
        An ``.npz`` file or a folder of ``.npy`` files.
    input_names : sequence of str
        The model's input names (``[i.name for i in model.inputs]``).
    labels_key : str, default='labels'
        The array that holds the labels.

    Returns
    -------
    inputs : dict of str -> numpy.ndarray of shape (n_samples, ...)
    labels : numpy.ndarray of shape (n_samples,)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BundleLabError(
            f"The 'path' parameter must be a path to an .npz file or a folder of .npy files. "
            f"Got {short_repr(path)} instead."
        )
    what, stored, read, close = _open_arrays(Path(path))
    try:
        inputs = {}
        for name in input_names:
            key = name if name in stored else ("x" if len(input_names) == 1 else None)
            if key not in stored:
                fallback = " or 'x'" if len(input_names) == 1 else ""
                raise BundleLabError(
                    f"{what} has no array {name!r}{fallback} for the model input {name!r}; it "
                    f"holds {', '.join(map(repr, stored)) or 'nothing'}"
                )
            inputs[name] = _read_array(read, key, what)
        if labels_key not in stored:
            raise BundleLabError(
                f"{what} has no labels array {labels_key!r}; it holds "
                f"{', '.join(map(repr, stored))}: name the array of class labels (CLI: --labels)"
            )
        labels = np.asarray(_read_array(read, labels_key, what))
    finally:
        close()
    labels = saved_label_vector(labels, where=what, key=labels_key)
    for name, array in inputs.items():
        if array.ndim == 0 or array.shape[0] != labels.shape[0]:
            count = array.shape[0] if array.ndim else "no"
            raise BundleLabError(
                f"{what}: {labels.shape[0]} labels for {count} samples of input {name!r}: store "
                "one label per sample, in the same order"
            )
    return inputs, labels


def _open_arrays(path: Path):
    """(description, stored names, read(name), close()) for an .npz file or a .npy folder."""
    if not path.exists():
        raise BundleLabError(f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        files = {file.stem: file for file in path.glob("*.npy") if file.is_file()}
        read = lambda key: np.load(files[key], mmap_mode="r", allow_pickle=False)  # noqa: E731
        return f"{path.name}/ (*.npy)", list(files), read, lambda: None
    if path.suffix.lower() != ".npz":
        raise BundleLabError(
            f"unknown data format {path.suffix or path.name!r}: pass an .npz file (np.savez(path, "
            "x=inputs, labels=labels)) or a folder of .npy files (x.npy and labels.npy)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile and numpy raise various errors
        raise BundleLabError(
            f"{path.name} is not a readable .npz archive ({shorten(str(exc), 120)})"
        ) from None
    return path.name, list(archive.files), archive.__getitem__, archive.close


def _read_array(read, key: str, what: str) -> np.ndarray:
    try:
        return read(key)
    except Exception as exc:  # noqa: BLE001 - truncated zip members, bad headers, pickles
        if "allow_pickle" in str(exc):
            raise BundleLabError(
                f"{what}: array {key!r} holds Python objects (pickled), which bundlelab never "
                "loads: save numeric arrays"
            ) from None
        raise BundleLabError(
            f"{what}: cannot read array {key!r}, the file looks truncated or corrupt "
            f"({shorten(str(exc), 120)})"
        ) from None
