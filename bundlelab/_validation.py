"""Validation at the boundary: one message template for parameters, one for labels."""

from __future__ import annotations

import cmath
import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

import numpy as np

from ._errors import BundleLabError

MODES = ("resolution", "threshold")
NONFINITE_POLICIES = ("raise", "exclude", "keep")
DEVICES = ("auto", "cpu", "cuda")
#: the format the weight update ``t = w - a * alpha / |B|`` is computed in (docs/semantics.md)
UPDATE_FORMATS = ("auto", "activations", "float16", "bfloat16", "float32", "float64")


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

    The arguments are bound against the signature only when the call raises a TypeError: a
    call whose arguments do not fit fails before the body runs, and its binding then fails
    too (the one-line error); a TypeError the body raised binds and goes on as it was.  So a
    call that fits costs nothing (binding every call cost 10-25 us, and an audit makes about
    190 such calls inside bundlelab).
    """
    signature = inspect.signature(function)
    where = function.__qualname__.replace(".__init__", "")

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except TypeError:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                names = [p.name for p in signature.parameters.values()
                         if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                         and p.name != "self"]
                if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                    check_keywords(f"{where}()", kwargs, names)
                raise BundleLabError(f"{where}(): {exc}") from None
            raise

    return wrapper  # type: ignore[return-value]


# -- labels ----------------------------------------------------------------------------------
# One label encoding for every entry point (find_bundles, analyze_layers, BundleStream over any
# split into batches, bundle_entropy; see docs/semantics.md, "Labels"): two labels are one
# class iff they are equal as Python values, as in a ``set`` (numpy scalars compare as the Python
# scalars they hold).  So 1, 1.0, True, np.int64(1) are one class; 1 and "1" are two; b"a" and
# "a" are two.  NaN, +-Inf and None name no class (a missing label) and are refused, as are
# unhashable values (lists, dicts).

#: dtype kinds numpy compares exactly as Python compares the values of ``tolist()``
_NUMPY_LABEL_KINDS = "biufUS"


def _not_a_class(value: Any) -> bool:
    """NaN of any type, +-Inf and None: values that name no class."""
    if value is None:
        return True
    try:
        if bool(value != value):  # NaN: float, numpy, complex, Decimal, NaT
            return True
    except Exception:  # noqa: BLE001 - pd.NA and the like: a missing value, not a class
        return True
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        return False
    if not isinstance(value, numbers.Number):
        return False
    try:
        return not cmath.isfinite(complex(value))
    except (ArithmeticError, TypeError, ValueError):  # too large for a float: finite
        return False


def _missing_label(where: str, what: str, value: Any, position: int) -> BundleLabError:
    return BundleLabError(
        f"{where}{what} hold {short_repr(value)} at position {position}: NaN, Inf and None are "
        "not class labels (a missing label is not a class); drop those samples or label them"
    )


def _label_vector(labels: Any, n_samples: int | None, where: str, what: str) -> np.ndarray | list:
    """The labels as a 1-D numpy array (arrays, tensors) or a list (any other sequence),
    checked for shape and length (any length for ``n_samples=None``)."""
    if labels is None:
        raise BundleLabError(
            f"{where}{what} are missing (got None): pass one class label per sample"
        )
    if isinstance(labels, (str, bytes, bytearray, Mapping, AbstractSet)):
        raise BundleLabError(
            f"{where}{what} must be an ordered sequence with one class label per sample (a list, "
            f"tuple or array), got a {type(labels).__name__}"
        )
    if hasattr(labels, "shape") or hasattr(labels, "__array__"):
        from ._arrays import to_host

        values = np.asarray(to_host(labels))
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise BundleLabError(
                f"{where}{what} must be a 1-D sequence of class labels, got shape {values.shape}; "
                "for one-hot labels pass labels.argmax(axis=1)"
            )
        length = values.shape[0]
    else:
        try:
            values = list(labels)
        except TypeError:
            raise BundleLabError(
                f"{where}{what} must be a sequence with one class label per sample (a list, "
                f"tuple or array), got {type(labels).__name__}"
            ) from None
        length = len(values)
    if n_samples is not None and length != n_samples:
        raise BundleLabError(
            f"{where}got {length} {what} for {n_samples} samples: pass one label per "
            "sample, in the same order as the activations"
        )
    return values


def _unhashable(where: str, what: str, items: list, exc: Exception) -> BundleLabError:
    for position, value in enumerate(items):
        try:
            hash(value)
        except Exception:  # noqa: BLE001 - any failure makes it unusable as a class
            hint = (" (for one-hot labels pass labels.argmax(axis=1))"
                    if what == "labels" and isinstance(value, (list, np.ndarray)) else "")
            return BundleLabError(
                f"{where}{what} must be hashable values (ints, strings, ...): position "
                f"{position} holds {short_repr(value, 40)} of type {type(value).__name__}{hint}"
            )
    return BundleLabError(
        f"{where}{what} cannot be compared as class labels "
        f"({type(exc).__name__}: {short_repr(str(exc), 60)})"
    )


#: integer labels spanning at most this many values per label (plus 1024) are coded through a
#: table over their range, in O(n); wider ones are sorted (np.unique)
RANGE_PER_LABEL = 4


def _small_range_codes(values: np.ndarray) -> tuple[np.ndarray, list] | None:
    """:func:`label_codes` of a 1-D integer or bool array whose values span a small range,
    without a sort (``np.unique`` was most of a 128k-sample layer's label bookkeeping), or
    None when the range is too wide for a table."""
    if values.size == 0:
        return None
    numbers = values.view(np.uint8) if values.dtype.kind == "b" else values
    low, high = numbers.min(), numbers.max()
    span = int(high) - int(low) + 1
    if span > RANGE_PER_LABEL * values.size + 1024:
        return None
    # offsets from the smallest value: unsigned ones in their own type (high >= low), signed
    # ones in int64 (an int8's 127 - -128 would wrap in int8; the span bounds them here)
    if numbers.dtype.kind == "u":
        offsets = (numbers - low).astype(np.intp)
    else:
        offsets = numbers.astype(np.intp) - int(low)
    first = np.full(span, values.size, dtype=np.intp)
    np.minimum.at(first, offsets, np.arange(values.size))
    present = np.flatnonzero(first < values.size)
    order = present[np.argsort(first[present], kind="stable")]  # by first occurrence
    rank = np.empty(span, dtype=np.int64)
    rank[order] = np.arange(order.size)
    # the classes as the labels hold them (np.unique's values), in the same order
    return rank[offsets], values[first[order]].tolist()


def label_codes(
    labels: Any, n_samples: int | None, *, layer: str | None = None, what: str = "labels"
) -> tuple[np.ndarray, list]:
    """Integer codes 0..k-1 (one per sample) and the k classes of any hashable labels.

    ``n_samples`` is the number of labels expected (None: any); ``what`` names them in errors.

    The one label encoding of bundlelab (see the comment above and ``docs/semantics.md``).
    Classes are numbered by first occurrence on every path, and :func:`merge_label_codes`
    numbers the batches of a stream the same way: a stream and the whole list get equal codes,
    hence bit-identical entropies.
    """
    where = f"layer {layer!r}: " if layer else ""
    values = _label_vector(labels, n_samples, where, what)
    if isinstance(values, np.ndarray) and values.dtype.kind in _NUMPY_LABEL_KINDS:
        if values.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise _missing_label(where, what, values[bad[0]].item(), int(bad[0]))
        if values.dtype.kind in "biu":
            found = _small_range_codes(values.reshape(-1))
            if found is not None:
                return found
        classes, first, codes = np.unique(values, return_index=True, return_inverse=True)
        # renumber by first occurrence, as the other paths number: equal codes, equal entropy
        order = np.argsort(first, kind="stable")
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        return rank[codes.reshape(-1)], classes[order].tolist()
    items = values.tolist() if isinstance(values, np.ndarray) else values
    lookup: dict = {}
    try:
        codes = np.fromiter(
            (lookup.setdefault(v, len(lookup)) for v in items), np.int64, len(items)
        )
    except Exception as exc:  # noqa: BLE001 - unhashable, or a hash/eq that raises
        if items and all(isinstance(v, (list, np.ndarray)) and len(v) == 1 for v in items):
            # a column of one-element rows, like a (n, 1) array
            return label_codes([v[0] for v in items], n_samples, layer=layer, what=what)
        raise _unhashable(where, what, items, exc) from None
    for key in lookup:
        if _not_a_class(key):
            position = next(i for i, v in enumerate(items) if v is key)
            raise _missing_label(where, what, key, position)
    return codes, list(lookup)


def merge_label_codes(parts: Iterable[tuple[np.ndarray, list]]) -> tuple[np.ndarray, list]:
    """Codes and classes of the concatenated labels from the :func:`label_codes` of each part:
    equal to ``label_codes`` of the concatenation (classes compared as Python values)."""
    lookup: dict = {}
    merged = []
    for codes, classes in parts:
        mapping = np.fromiter(
            (lookup.setdefault(c, len(lookup)) for c in classes), np.int64, len(classes)
        )
        merged.append(mapping[codes])
    return (np.concatenate(merged) if merged else np.empty(0, np.int64)), list(lookup)


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
