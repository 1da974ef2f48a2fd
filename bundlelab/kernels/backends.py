"""The kernel-backend protocol and its CPU implementation (Numba)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .._formats import FloatFormat


@dataclass(frozen=True)
class Transform:
    """Constants of ``t = w - (a * alpha) * invb``, already rounded to the working format."""

    weight_amplitude: float
    learning_rate: float
    inverse_batch_size: float

    @classmethod
    def for_format(
        cls, fmt: FloatFormat, weight_amplitude: float, learning_rate: float, batch_size: int
    ) -> "Transform":
        return cls(
            fmt.round(weight_amplitude), fmt.round(learning_rate), fmt.round(1.0 / batch_size)
        )


class KernelBackend(Protocol):
    """What a device must provide.  All index and result arrays are host numpy arrays.

    ``rows`` is the device-side 2-D float32/float64 array produced by
    :func:`bundlelab._arrays.as_rows`; for a narrow ``fmt`` (float16/bfloat16) it holds the exact
    float32 values and every operation must be rounded to ``fmt``.
    """

    name: str

    def fingerprints(
        self, rows: Any, fmt: FloatFormat, transform: Transform
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) uint64 fingerprints of the transformed rows (see ``_hashing.py``), and a
        bool (n,) flag of rows whose activations are not all finite."""

    def pairs_equal(
        self, rows: Any, first: np.ndarray, second: np.ndarray, fmt: FloatFormat,
        transform: Transform,
    ) -> np.ndarray:
        """bool (p,): transformed rows first[k] and second[k] are IEEE-equal in every value."""

    def row_means(self, rows: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float64 row means, their rounding-error bounds, and a non-finite flag per row."""

    def threshold_assign(
        self, rows: Any, means: np.ndarray, tolerances: np.ndarray, first_new: int,
        leaders: np.ndarray, n_leaders: int, scale: float, gamma: float,
    ) -> tuple[np.ndarray, int]:
        """Greedy threshold assignment of rows[first_new:] (see ``cpu.greedy_threshold``);
        ``leaders`` (capacity >= len(rows)) is updated in place.  Returns (assign, n_leaders)."""


class CpuBackend:
    """Numba kernels on the host; the reference every other backend must match bit for bit."""

    name = "cpu"

    def __init__(self) -> None:
        from . import cpu

        self._k = cpu

    def fingerprints(self, rows, fmt, transform):
        n = rows.shape[0]
        out = np.empty((n, 2), dtype=np.uint64)
        nonfinite = np.empty(n, dtype=np.bool_)
        if fmt.native:
            cast = rows.dtype.type
            self._k.fingerprints_native(
                rows, cast(transform.weight_amplitude), cast(transform.learning_rate),
                cast(transform.inverse_batch_size), out, nonfinite,
            )
        else:
            self._k.fingerprints_emulated(
                rows, transform.weight_amplitude, transform.learning_rate,
                transform.inverse_batch_size, fmt.precision, fmt.emin, fmt.max_finite,
                out, nonfinite,
            )
        return out, nonfinite

    def pairs_equal(self, rows, first, second, fmt, transform):
        out = np.empty(first.shape[0], dtype=np.bool_)
        first = np.ascontiguousarray(first, dtype=np.int64)
        second = np.ascontiguousarray(second, dtype=np.int64)
        if fmt.native:
            cast = rows.dtype.type
            self._k.pairs_equal_native(
                rows, first, second, cast(transform.weight_amplitude),
                cast(transform.learning_rate), cast(transform.inverse_batch_size), out,
            )
        else:
            self._k.pairs_equal_emulated(
                rows, first, second, transform.weight_amplitude, transform.learning_rate,
                transform.inverse_batch_size, fmt.precision, fmt.emin, fmt.max_finite, out,
            )
        return out

    def row_means(self, rows):
        n = rows.shape[0]
        means = np.empty(n)
        tolerances = np.empty(n)
        nonfinite = np.empty(n, dtype=np.bool_)
        self._k.row_means(rows, means, tolerances, nonfinite)
        return means, tolerances, nonfinite

    def threshold_assign(self, rows, means, tolerances, first_new, leaders, n_leaders, scale, gamma):
        assign = np.empty(rows.shape[0] - first_new, dtype=np.int64)
        n_leaders = self._k.greedy_threshold(
            rows, means, tolerances, self._k.probe_columns(rows), first_new, leaders, n_leaders,
            assign, scale, gamma,
        )
        return assign, int(n_leaders)
