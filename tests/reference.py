"""A slow, plain reference implementation of bundles and bundle entropy, for tests only.

Written from the specification (the conflicting-bundles paper, section 2.3, and the facts of the
authors' released code), not from the library.  Everything is done with Python loops over
samples so that each step can be read and checked by hand; it is meant for N of a few dozen.

resolution mode
    t_i = fl(w - fl(fl(a_i * alpha) * fl(1 / |B|))) in the update format: by default
    ("auto") the activation's own format, float32 for float16/bfloat16 activations; each
    activation is first converted to the update format (one rounding, ties to even, when it
    narrows).  i and j are bundled iff t_i == t_j in every component (IEEE equality:
    +0 == -0, NaN != anything).
    float64, float32 and float16 use numpy arithmetic in that dtype (numpy rounds every float16
    operation correctly).  bfloat16 is computed exactly with :class:`fractions.Fraction` and
    rounded to bfloat16 (8 significand bits, ties to even) by :func:`round_fraction` after every
    operation, so it does not depend on how ml_dtypes implements its arithmetic.
threshold mode
    i ~ j iff (alpha / |B|) * max_k |a_ik - a_jk| <= gamma, all in float64; a NaN difference is
    never within.  Greedy in sample order: the first unassigned sample opens a bundle and takes
    every unassigned sample within gamma of *it*.

Bundle ids are numbered by first occurrence; samples excluded for non-finite values get -1.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    ml_dtypes = None
    BFLOAT16 = None

#: (significand bits including the implicit one, minimum normal exponent, largest finite value)
FORMAT_PARAMS = {
    "float64": (53, -1022, float.fromhex("0x1.fffffffffffffp+1023")),
    "float32": (24, -126, float.fromhex("0x1.fffffep+127")),
    "float16": (11, -14, 65504.0),
    "bfloat16": (8, -126, float.fromhex("0x1.fep+127")),
}


def dtype_name(array) -> str:
    if BFLOAT16 is not None and array.dtype == BFLOAT16:
        return "bfloat16"
    return array.dtype.name


# --------------------------------------------------------------------------------------------
# exact rounding of a rational number to a binary floating-point format
# --------------------------------------------------------------------------------------------
def round_fraction(x: Fraction, fmt: str) -> float:
    """Round the exact rational ``x`` to ``fmt`` (round to nearest, ties to even)."""
    precision, emin, max_finite = FORMAT_PARAMS[fmt]
    if x == 0:
        return 0.0
    sign = -1.0 if x < 0 else 1.0
    ax = abs(x)
    # exponent E of the leading bit: 2**E <= ax < 2**(E+1)
    e = ax.numerator.bit_length() - ax.denominator.bit_length()
    if Fraction(2) ** e > ax:
        e -= 1
    while Fraction(2) ** (e + 1) <= ax:
        e += 1
    quantum_exp = max(e, emin) - (precision - 1)
    scaled = ax / Fraction(2) ** quantum_exp
    n = scaled.numerator // scaled.denominator
    remainder = scaled - n
    if remainder > Fraction(1, 2) or (remainder == Fraction(1, 2) and n % 2 == 1):
        n += 1
    result = Fraction(n) * Fraction(2) ** quantum_exp
    if result > Fraction(max_finite):
        return sign * math.inf
    return sign * float(result)  # exact: result is representable in the format


def _mul(x: float, y: float, fmt: str) -> float:
    """fl(x * y) in ``fmt`` for x, y already in ``fmt``."""
    if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
        return x * y  # float64 special-value arithmetic is the same in every format
    return round_fraction(Fraction(x) * Fraction(y), fmt)


def _sub(x: float, y: float, fmt: str) -> float:
    """fl(x - y) in ``fmt`` for x, y already in ``fmt``."""
    if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
        return x - y
    return round_fraction(Fraction(x) - Fraction(y), fmt)


# --------------------------------------------------------------------------------------------
# the transform of resolution mode
# --------------------------------------------------------------------------------------------
def reference_update_format(update_format: str, activations_dtype: str) -> str:
    """The format the update is computed in (the library's rule, written out here)."""
    if update_format == "activations":
        return activations_dtype
    if update_format == "auto":
        return "float32" if activations_dtype in ("float16", "bfloat16") else activations_dtype
    return update_format


def transformed_rows(rows: np.ndarray, fmt: str, learning_rate: float, batch_size: int,
                     weight_amplitude: float) -> list[list[float]]:
    """t = fl(w - fl(fl(a * alpha) * fl(1/|B|))) per value in ``fmt``, as lists of Python
    floats; each activation is first converted to ``fmt`` (a numpy cast from its exact float64
    value, or :func:`round_fraction` for bfloat16)."""
    n, d = rows.shape
    out = []
    if fmt in ("float64", "float32", "float16"):
        dt = np.dtype(fmt)
        alpha = np.array(learning_rate, dtype=np.float64).astype(dt)
        inv_b = np.array(1.0 / batch_size, dtype=np.float64).astype(dt)
        w = np.array(weight_amplitude, dtype=np.float64).astype(dt)
        with np.errstate(all="ignore"):
            for i in range(n):
                row = []
                for k in range(d):
                    # float() is exact for every activation format; the cast rounds once
                    a = np.array(float(rows[i, k]), dtype=np.float64).astype(dt)
                    step1 = (a * alpha).astype(dt)
                    step2 = (step1 * inv_b).astype(dt)
                    t = (w - step2).astype(dt)
                    assert t.dtype == dt
                    row.append(float(t))
                out.append(row)
        return out
    if fmt == "bfloat16":
        alpha = round_fraction(Fraction(1.0 * learning_rate), fmt)
        inv_b = round_fraction(Fraction(1, batch_size), fmt)
        w = round_fraction(Fraction(1.0 * weight_amplitude), fmt)
        for i in range(n):
            row = []
            for k in range(d):
                a = float(rows[i, k])  # exact for every activation format
                if math.isfinite(a):
                    a = round_fraction(Fraction(a), fmt)  # a no-op for bfloat16 activations
                t = _sub(w, _mul(_mul(a, alpha, fmt), inv_b, fmt), fmt)
                row.append(t)
            out.append(row)
        return out
    raise ValueError(f"reference: unsupported dtype {fmt}")


def _equal_rows(x: list[float], y: list[float]) -> bool:
    for a, b in zip(x, y):
        if not (a == b):  # IEEE: -0.0 == 0.0, NaN == nothing
            return False
    return True


def _within(x: list[float], y: list[float], scale: float, gamma: float) -> bool:
    largest = 0.0
    for a, b in zip(x, y):
        diff = abs(a - b)
        if math.isnan(diff):
            return False
        if diff > largest:
            largest = diff
    return scale * largest <= gamma


# --------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------
def bundle_label_entropy(bundle_labels: list, epsilon: float = 0.0) -> float:
    """H(D) of one bundle's labels: -sum p ln p (epsilon=0) or max(0, -sum p ln(p + eps))."""
    size = len(bundle_labels)
    counts: dict = {}
    for label in bundle_labels:
        counts[label] = counts.get(label, 0) + 1
    total = 0.0
    for count in counts.values():
        p = count / size
        if epsilon == 0.0:
            total -= p * math.log(p)  # p > 0 always: 0 ln 0 terms never occur
        else:
            total -= p * math.log(p + epsilon)
    if epsilon != 0.0:
        total = max(0.0, total)
    return total


def reference_entropy(ids: list[int], labels: list, epsilon: float = 0.0) -> float:
    """(1/N) sum_D |D| H(D) over the samples with id >= 0."""
    members: dict = {}
    for bundle_id, label in zip(ids, labels):
        if bundle_id < 0:
            continue
        members.setdefault(bundle_id, []).append(label)
    n = sum(len(m) for m in members.values())
    if n == 0:
        return 0.0
    return sum(len(m) * bundle_label_entropy(m, epsilon) for m in members.values()) / n


# --------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------
def reference_bundles(
    a,
    labels,
    *,
    mode: str = "resolution",
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    weight_amplitude: float = 1.0,
    gamma: float = 1e-8,
    epsilon: float = 0.0,
    nonfinite: str = "keep",
    n_classes: int | None = None,
    update_format: str = "auto",
) -> dict:
    """Bundles and per-layer numbers of activations ``a`` (shape (N, ...)) with ``labels``.

    ``nonfinite`` is 'keep' (IEEE semantics) or 'exclude' (such samples get id -1 and are left
    out of every number); the reference never raises.
    """
    a = np.asarray(a)
    fmt = dtype_name(a)
    n = a.shape[0]
    rows = a.reshape(n, -1)
    labels = list(labels)
    assert len(labels) == n

    finite = []
    for i in range(n):
        ok = True
        for k in range(rows.shape[1]):
            if not math.isfinite(float(rows[i, k])):
                ok = False
        finite.append(ok)
    active = [i for i in range(n) if finite[i] or nonfinite == "keep"]

    if mode == "resolution":
        values = transformed_rows(rows, reference_update_format(update_format, fmt),
                                  learning_rate, batch_size, weight_amplitude)
        same = lambda i, j: _equal_rows(values[i], values[j])  # noqa: E731
    elif mode == "threshold":
        values = [[float(rows[i, k]) for k in range(rows.shape[1])] for i in range(n)]
        scale = float(learning_rate) / float(batch_size)
        same = lambda i, j: _within(values[i], values[j], scale, float(gamma))  # noqa: E731
    else:
        raise ValueError(mode)

    # the authors' algorithm: each unassigned sample opens the next bundle and scans all others
    ids = [-1] * n
    next_id = 0
    for i in active:
        if ids[i] != -1:
            continue
        ids[i] = next_id
        for j in active:
            if j != i and ids[j] == -1 and same(i, j):
                ids[j] = next_id
        next_id += 1

    members: dict = {}
    for i in active:
        members.setdefault(ids[i], []).append(labels[i])
    n_active = len(active)
    present = len(set(labels[i] for i in active))
    if n_classes is None:
        n_classes = present
    sizes = sorted((len(m) for m in members.values()), reverse=True)
    n_conflicting = sum(1 for m in members.values() if len(set(m)) >= 2)
    return {
        "bundle_ids": ids,
        "n_samples": n_active,
        "n_excluded": n - n_active,
        "n_bundles": next_id,
        "n_conflicting": n_conflicting,
        "largest_bundle": sizes[0] if sizes else 0,
        "fully_conflicting": next_id == 1 and n_conflicting == 1,
        "entropy": reference_entropy(ids, labels, epsilon),
        "n_classes": n_classes,
        "max_entropy": math.log(n_classes) if n_classes > 0 else 0.0,
        "bundle_sizes": sizes,
        "n_features": rows.shape[1],
        "dtype": fmt,
    }
