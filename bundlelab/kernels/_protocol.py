"""What every kernel backend provides (:class:`KernelBackend`), and the transform constants
it is given (:class:`Transform`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .._validation import checked_keywords
from ._formats import FloatFormat


@dataclass(frozen=True)
class Transform:
    """Constants of ``t = w - (a * alpha) * invb``, already rounded to the working format.

    Parameters
    ----------
    weight_amplitude : float
        ``w``, the largest absolute weight.
    learning_rate : float
        ``alpha``.
    inverse_batch_size : float
        ``invb = 1 / |B|``.
    """

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


# a one-line BundleLabError for an unknown keyword, at the call (the dataclass writes __init__)
Transform.__init__ = checked_keywords(Transform.__init__)  # type: ignore[method-assign]


class KernelBackend(Protocol):
    """What a device must provide.  All index and result arrays are host numpy arrays.

    ``rows`` is the device-side 2-D float32/float64 array produced by
    :func:`bundlelab._arrays.as_rows` (float16/bfloat16 activations held as exact float32).
    ``fmt`` is the *update format* the transform is computed in (``docs/semantics.md``): each
    activation is first converted to it (exact when it widens, rounded to nearest-even when it
    narrows) and every operation is rounded to it.  ``source`` is the activations' own format:
    when ``fmt`` holds it, the conversion is exact and may be skipped; ``None`` (unknown) makes
    the backend round, which is always correct.  Fingerprints depend only on the values of
    ``t`` in ``fmt``, never on how the rows are stored.
    """

    name: str

    def fingerprints(
        self, rows: Any, fmt: FloatFormat, transform: Transform,
        source: FloatFormat | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) uint64 fingerprints of the transformed rows (see ``_hashing.py``), and a
        bool (n,) flag of rows whose activations are not all finite."""

    def pairs_equal(
        self, rows: Any, first: np.ndarray, second: np.ndarray, fmt: FloatFormat,
        transform: Transform, source: FloatFormat | None = None,
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
