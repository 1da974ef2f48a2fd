"""Validation at the boundary: one message template for parameters, one for labels."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

from ._errors import BundleLabError

MODES = ("resolution", "threshold")
NONFINITE_POLICIES = ("raise", "exclude", "keep")
DEVICES = ("auto", "cpu", "cuda")


def _invalid(name: str, expected: str, value: Any) -> BundleLabError:
    return BundleLabError(
        f"The {name!r} parameter must be {expected}. Got {short_repr(value)} instead."
    )


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (Python or numpy, not a bool) in ``[low, high]``, returned as a Python int."""
    expected = f"an int in {_interval(low, high, False, False)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise _invalid(name, expected, value)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _invalid(name, expected, value)
    return value


def check_optional_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None
) -> int | None:
    """None, or what :func:`check_int` accepts."""
    return None if value is None else check_int(name, value, low=low, high=high)


def check_positive_int(name: str, value: Any) -> int:
    """An integer >= 1."""
    return check_int(name, value, low=1)


#: seeds are stored as signed 64-bit integers (numpy, torch and JSON all take them)
SEED_MAX = 2**63 - 1


def check_seed(name: str, value: Any) -> int:
    """A random seed: an int in ``[0, 2**63 - 1]``."""
    return check_int(name, value, low=0, high=SEED_MAX)


def check_float(
    name: str, value: Any, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """A finite real number (Python or numpy, not a bool) in the interval, as a Python float.

    ``low_open``/``high_open`` exclude the bound itself: ``check_float("lr", x, low=0,
    low_open=True)`` is a float in ``(0, inf)``.
    """
    expected = f"a float in {_interval(low, high, low_open, high_open)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise _invalid(name, expected, value)
    value = float(value)
    if not math.isfinite(value):
        raise _invalid(name, expected, value)
    if low is not None and (value < low or (low_open and value == low)):
        raise _invalid(name, expected, value)
    if high is not None and (value > high or (high_open and value == high)):
        raise _invalid(name, expected, value)
    return value


def check_optional_float(name: str, value: Any, **bounds: Any) -> float | None:
    """None, or what :func:`check_float` accepts."""
    return None if value is None else check_float(name, value, **bounds)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0 with ``allow_zero``)."""
    return check_float(name, value, low=0, low_open=not allow_zero)


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (a numpy bool too); not 0/1 or a string."""
    if not isinstance(value, (bool, np.bool_)):
        raise _invalid(name, "a bool", value)
    return bool(value)


def check_instance(name: str, value: Any, cls: type | tuple[type, ...], expected: str) -> Any:
    """An instance of ``cls``; ``expected`` names it in the message ("a TrainConfig")."""
    if not isinstance(value, cls):
        raise BundleLabError(
            f"The {name!r} parameter must be {expected}. Got {type(value).__name__} instead."
        )
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of a fixed vocabulary."""
    try:
        valid = value in choices
    except TypeError:  # unhashable or uncomparable
        valid = False
    if not valid:
        raise _invalid(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_keywords(where: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse keywords outside ``allowed`` in one line, suggesting the closest valid one."""
    allowed = list(allowed)
    unknown = [key for key in given if key not in allowed]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise BundleLabError(
        f"{where} got an unexpected keyword argument {key!r}{hint} "
        f"(valid: {', '.join(sorted(allowed))})"
    )


F = TypeVar("F", bound=Callable[..., Any])


def checked_keywords(function: F) -> F:
    """Decorate a public callable (or a class's ``__init__``) so that an unknown or missing
    argument is a one-line :class:`BundleLabError` naming the valid keywords, not a TypeError.

    Binding costs a few microseconds per call, nothing next to the work of any public entry
    point.
    """
    signature = inspect.signature(function)
    where = function.__qualname__.replace(".__init__", "")

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            names = [p.name for p in signature.parameters.values()
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
            if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                check_keywords(f"{where}()", kwargs, names)
            raise BundleLabError(f"{where}(): {exc}") from None
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
