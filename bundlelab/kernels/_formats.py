"""Floating-point formats the kernels work in, and correct rounding into the narrow ones.

``resolution`` mode evaluates ``t = fl(w - fl(fl(a * alpha) * fl(1 / batch_size)))`` in the
*update format* (by default the activation's own format; float32 for float16/bfloat16
activations).  float32 and float64 are computed natively.  float16 and bfloat16 are
*emulated*: each operation is done in float64 and rounded to the narrow format with
:func:`round_to_format`.  That equals native narrow arithmetic because float64 carries more than
``2p + 2`` significand bits for every narrow ``p`` here, so the double rounding is innocuous
(Figueroa, "When is double rounding innocuous?", 1995).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-style binary format: significand bits (with the implicit one), exponent range."""

    name: str
    precision: int
    emin: int
    max_finite: float
    native: bool

    def round(self, x: float) -> float:
        """Round the Python float ``x`` to this format (ties to even); returns a Python float."""
        if self.name == "float64":
            return float(x)
        if self.name == "float32":
            return float(_np().float32(x))
        return round_to_format(float(x), self.precision, self.emin, self.max_finite)


    def holds(self, other: "FloatFormat") -> bool:
        """Whether every value of the format ``other`` is a value of this one (so converting
        ``other`` to this format is exact)."""
        return (other.precision <= self.precision and other.emin >= self.emin
                and other.max_finite <= self.max_finite)


def needs_rounding(source: "FloatFormat | None", fmt: FloatFormat) -> bool:
    """Whether activations of format ``source`` must be rounded to ``fmt`` before the
    transform (they do not all fit in it); ``None`` (unknown) is rounded, which is always
    correct and only slower."""
    return source is None or not fmt.holds(source)


def _np():
    import numpy

    return numpy


FORMATS = {
    "float64": FloatFormat("float64", 53, -1022, 1.7976931348623157e308, True),
    "float32": FloatFormat("float32", 24, -126, 3.4028234663852886e38, True),
    "float16": FloatFormat("float16", 11, -14, 65504.0, False),
    "bfloat16": FloatFormat("bfloat16", 8, -126, 3.3895313892515355e38, False),
}


def round_to_format(x, precision, emin, max_finite):
    """Round the float64 ``x`` to a binary format with ``precision`` significand bits.

    Handles subnormals (quantum fixed below ``2**emin``), overflow to infinity, signed zeros,
    infinities and NaN like IEEE 754 round-to-nearest-even.  Plain Python: the CPU kernels
    compile it with ``numba.njit`` and the CUDA kernels with ``numba.cuda.jit(device=True)``,
    so it calls no other Python function.
    """
    if x == 0.0 or x != x or math.isinf(x):
        return x
    exponent = math.frexp(x)[1] - 1  # x = m * 2**exponent with 1 <= |m| < 2
    if exponent < emin:
        exponent = emin
    quantum = math.ldexp(1.0, exponent - precision + 1)
    # x / quantum is exact (a power-of-two scaling); round it to an integer, ties to even.
    scaled = x / quantum
    whole = math.floor(scaled)
    frac = scaled - whole
    if frac > 0.5 or (frac == 0.5 and whole - 2.0 * math.floor(whole * 0.5) != 0.0):
        whole += 1.0
    rounded = whole * quantum
    if abs(rounded) > max_finite:
        return math.copysign(math.inf, x)
    if rounded == 0.0:
        return math.copysign(0.0, x)
    return rounded


def threshold_reach(scale, gamma):
    """A float ``W`` with ``|x - y| <= W`` (exactly) for every pair of float64 values that the
    threshold test accepts, ``fl(fl(|x - y|) * scale) <= gamma``; ``inf`` when it overflows.

    Round to nearest gives ``fl(p) >= p - max(u p, 2**-1075)``, so an accepted difference obeys
    ``|x - y| <= (gamma + 2**-1074) / scale * (1 + 4u)``; the factor ``1 + 2**-40`` and the
    final ``2**-1074`` absorb that and the rounding of this very expression (also for a
    subnormal or zero ``gamma``, where ``gamma / scale`` alone is too small).  Plain Python,
    compiled by the CPU kernels; the CUDA backend calls it on the host.
    """
    return (gamma + 2.0**-1074) / scale * (1.0 + 2.0**-40) + 2.0**-1074
