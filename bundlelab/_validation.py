"""Validation at the boundary: one message template for parameters, one for labels."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._errors import BundleLabError

MODES = ("resolution", "threshold")
NONFINITE_POLICIES = ("raise", "exclude", "keep")
DEVICES = ("auto", "cpu", "cuda")


def _invalid(name: str, expected: str, value: Any) -> BundleLabError:
    return BundleLabError(f"The {name!r} parameter must be {expected}. Got {value!r} instead.")


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0 with ``allow_zero``)."""
    interval = "[0, inf)" if allow_zero else "(0, inf)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(name, f"a float in {interval}", value)
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise _invalid(name, f"a float in {interval}", value)
    return value


def check_positive_int(name: str, value: Any) -> int:
    """An integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _invalid(name, "an int in [1, inf)", value)
    return int(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of a fixed vocabulary."""
    if value not in choices:
        raise _invalid(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def encode_labels(labels: Any, n_samples: int, *, layer: str | None = None) -> tuple[np.ndarray, list]:
    """Integer codes 0..k-1 for any hashable labels (ints, strings, ...), and the k classes.

    Codes follow sorted class order when the labels sort (ints, strings), else first occurrence.
    """
    from ._arrays import to_host

    where = f"layer {layer!r}: " if layer else ""
    values = to_host(labels) if hasattr(labels, "shape") else np.asarray(labels, dtype=object)
    values = np.asarray(values)
    if values.ndim != 1:
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        else:
            raise BundleLabError(
                f"{where}labels must be a 1-D sequence of class labels, got shape {values.shape}; "
                "for one-hot labels pass labels.argmax(axis=1)"
            )
    if values.shape[0] != n_samples:
        raise BundleLabError(
            f"{where}got {values.shape[0]} labels for {n_samples} samples: pass one label per "
            "sample, in the same order as the activations"
        )
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise BundleLabError(f"{where}labels contain NaN or Inf")
    try:
        classes, codes = np.unique(values, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), list(classes.tolist())
    except TypeError:  # labels of mixed types that do not sort
        lookup: dict = {}
        codes = np.fromiter(
            (lookup.setdefault(v, len(lookup)) for v in values.tolist()), np.int64, n_samples
        )
        return codes, list(lookup)


def saved_label_vector(labels: np.ndarray, *, where: str, key: str) -> np.ndarray:
    """Labels read from a file as one label per sample: a (n, 1) column is accepted."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise BundleLabError(
            f"{where}: labels {key!r} have shape {labels.shape}, expected one label per sample "
            "(for one-hot labels save labels.argmax(axis=1))"
        )
    return labels


def check_n_classes(n_classes: Any, n_present: int) -> int:
    """The class count N_c: at least the number of distinct labels present."""
    if n_classes is None:
        return n_present
    n_classes = check_positive_int("n_classes", n_classes)
    if n_classes < n_present:
        raise BundleLabError(
            f"n_classes={n_classes} but the labels hold {n_present} distinct classes: pass "
            f"n_classes >= {n_present} or leave it out to infer it"
        )
    return n_classes
