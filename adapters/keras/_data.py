"""The data a Keras model is fed: input arrays, labels, and the measured training subset."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import BundleLabError
from ..._validation import check_optional_int, check_seed
from ._import import keras


def input_list(inputs: Any, n_expected: int | None = None) -> list:
    """The model's input arrays as a list (one per model input)."""
    if isinstance(inputs, (list, tuple)) and inputs and all(hasattr(a, "shape") for a in inputs):
        arrays = list(inputs)
    else:
        arrays = [inputs if hasattr(inputs, "shape") else np.asarray(inputs)]
    if n_expected is not None and len(arrays) != n_expected:
        raise BundleLabError(
            f"the model takes {n_expected} input(s), got {len(arrays)}: pass one array per "
            "model input, as a list in model.inputs order"
        )
    sizes = {int(a.shape[0]) if len(a.shape) else 0 for a in arrays}
    if len(sizes) != 1:
        raise BundleLabError(f"the input arrays have different sample counts: {sorted(sizes)}")
    return arrays


def checked_inputs(graph: Any, inputs: Any) -> list:
    """Input arrays whose shapes fit the model's inputs, or a one-line error."""
    arrays = input_list(inputs, len(graph.inputs))
    for array, expected in zip(arrays, graph.inputs):
        want, got = tuple(expected.shape), tuple(array.shape)
        fits = len(want) == len(got) and all(w in (None, g) for w, g in zip(want[1:], got[1:]))
        if not fits:
            raise BundleLabError(
                f"model {graph.name!r} expects inputs of shape {want} (None: any size), got an "
                f"array of shape {got}"
            )
    return arrays


def labels_as_classes(y: Any, n_samples: int) -> np.ndarray:
    """Labels as ``fit`` takes them (class ids, or one-hot rows) -> one class per sample."""
    if isinstance(y, np.ndarray) or not hasattr(y, "shape"):
        labels = np.asarray(y)
    else:  # a backend tensor
        labels = keras.ops.convert_to_numpy(y)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot or probabilities
        labels = labels.argmax(axis=1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != n_samples:
        raise BundleLabError(
            f"got labels of shape {labels.shape} for {n_samples} input samples: pass one label "
            "(class id or one-hot row) per sample, in the order of x"
        )
    return labels


def training_subset(x: Any, y: Any, *, n_samples: int | None, seed: int) -> tuple[list, np.ndarray]:
    """``n_samples`` of the training data chosen with ``seed`` (all of it when None or fewer),
    in data order: the sorted indices ``default_rng(seed).choice(N, n_samples, replace=False)``."""
    n_samples = check_optional_int("n_samples", n_samples, low=1)
    seed = check_seed("seed", seed)
    arrays = input_list(x)
    n_total = int(arrays[0].shape[0])
    labels = labels_as_classes(y, n_total)
    if n_samples is None or n_total <= n_samples:
        return arrays, labels
    # sorted: the subset keeps the data order, so bundle ids follow the training set's order
    index = np.sort(np.random.default_rng(seed).choice(n_total, n_samples, replace=False))
    return [_take(a, index) for a in arrays], labels[index]


def _take(array: Any, index: np.ndarray) -> Any:
    try:
        return array[index]  # numpy arrays, torch tensors
    except (TypeError, IndexError, KeyError):
        return np.asarray(array)[index]
