"""Bundles of a layer whose outputs arrive batch by batch (e.g. from a training loop).

Memory stays O(n_samples) per layer in ``resolution`` mode: only the 128-bit fingerprint, a
non-finite flag and the label of each sample are kept, never the activations.

Exactness guarantee
-------------------
The in-memory path (:func:`bundlelab.find_bundles`) confirms every candidate bundle by comparing
the rows value by value, so its result is exact.  The streaming path cannot (the rows are gone),
so it trusts the fingerprints: two different rows are merged only if both 64-bit lanes collide.
Each lane is an NH sum (UMAC's universal hash, see ``kernels/_hashing.py``), which for random
keys makes two different rows of equal length collide in both lanes with probability at most
``2**-64``; over N rows the chance of any false merge is then below ``N**2 / 2**65`` (about
3e-8 for N = 1e6, 3e-14 for N = 1e3).  The keys are fixed pseudo-random constants, so the bound
holds for rows that are not constructed against them, as a layer's activations are not; use
:func:`bundlelab.find_bundles` when the answer must be exact whatever the input.  Rows that are
equal are always merged (no false splits).  ``threshold`` mode keeps the rows of the
bundle leaders (O(n_bundles * n_features)) and is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import as_rows
from ._errors import BundleLabError
from ._validation import check_n_classes, checked_keywords, label_codes, merge_label_codes
from .bundles import (
    BundleOptions,
    _check_nonfinite,
    _layer_result,
    distinct_nan_fingerprints,
    group_fingerprints,
    resolution_transform,
    update_format_of,
)
from .kernels import get_kernel_backend
from .report import LayerResult


class BundleStream:
    """Accumulate one layer's bundles over batches; call :meth:`result` at the end.

    Parameters
    ----------
    layer : str, default='layer'
        Layer name for the result and errors.
    **options
        Keywords of :func:`bundlelab.find_bundles` (mode, learning_rate, batch_size,
        weight_amplitude, gamma, epsilon, nonfinite, device, update_format).

    Examples
    --------
    >>> import numpy as np
    >>> stream = BundleStream(layer="block1")
    >>> stream.update(np.zeros((2, 4), np.float32), [0, 1])
    >>> stream.update(np.ones((1, 4), np.float32), [1])
    >>> stream.result().n_bundles
    2
    """

    @checked_keywords
    def __init__(self, *, layer: str = "layer", **options):
        self.layer = str(layer)
        self.options = BundleOptions.from_keywords("BundleStream()", options, also=("layer",))
        self._labels: list[tuple[np.ndarray, list]] = []  # (codes, classes) per batch
        self._nonfinite: list[np.ndarray] = []
        self._fingerprints: list[np.ndarray] = []
        self._roots: list[np.ndarray] = []
        self._leader_rows = None  # threshold mode: rows of the bundle leaders so far
        self._leader_means = np.empty(0)
        self._leader_tolerances = np.empty(0)
        self._leader_index = np.empty(0, dtype=np.int64)  # sample index of each leader
        self._n_samples = 0
        self._n_features: int | None = None
        self._fmt = None
        self._device: str | None = None

    @property
    def n_samples(self) -> int:
        """Samples seen so far."""
        return self._n_samples

    @checked_keywords
    def update(self, activations: Any, labels: Any) -> None:
        """Add a batch.

        Parameters
        ----------
        activations : array of shape (batch, ...)
            The layer's outputs for this batch (numpy, CuPy or torch; see
            :func:`bundlelab.find_bundles`); every batch has the same values per sample.
        labels : array-like of shape (batch,)
            One class label per sample of the batch.
        """
        device = self._device or self.options.device_for(activations)
        rows = as_rows(activations, device=device, layer=self.layer)
        if self._n_features is not None and (
            rows.n_features != self._n_features or rows.fmt != self._fmt
        ):
            raise BundleLabError(
                f"layer {self.layer!r}: batch has {rows.n_features} {rows.fmt.name} values per "
                f"sample, earlier batches had {self._n_features} {self._fmt.name}"
            )
        # the batch's labels, encoded as find_bundles encodes them; result() merges the batches
        # (classes compared as Python values, so any split into batches gives the same classes).
        # Checked before any state changes: a refused batch leaves the stream as it was.
        labels = label_codes(labels, rows.n_samples, layer=self.layer)
        if self._n_features is None:
            self._n_features, self._fmt, self._device = rows.n_features, rows.fmt, device
        backend = get_kernel_backend(device)
        if self.options.mode == "resolution":
            fmt = update_format_of(rows.fmt, self.options)
            transform = resolution_transform(fmt, self.options)
            fingerprints, nonfinite = backend.fingerprints(rows.data, fmt, transform, rows.fmt)
            # NaN equals nothing: each row whose t holds NaN gets a fingerprint of its own
            fingerprints = distinct_nan_fingerprints(
                backend, rows, fmt, transform, fingerprints, nonfinite, self._n_samples
            )
            self._fingerprints.append(fingerprints)
        else:
            roots, nonfinite = self._threshold_update(rows, backend)
            self._roots.append(roots)
        self._nonfinite.append(nonfinite)
        self._labels.append(labels)
        self._n_samples += rows.n_samples

    def _threshold_update(self, rows, backend) -> tuple[np.ndarray, np.ndarray]:
        means, tolerances, nonfinite = backend.row_means(rows.data)
        n_old = self._leader_index.shape[0]
        if n_old:
            combined = _concat_rows(self._leader_rows, rows.data, self._device)
            means = np.concatenate([self._leader_means, means])
            tolerances = np.concatenate([self._leader_tolerances, tolerances])
        else:
            combined = rows.data
        leaders = np.empty(combined.shape[0], dtype=np.int64)
        leaders[:n_old] = np.arange(n_old)
        assign, n_leaders = backend.threshold_assign(
            combined, means, tolerances, n_old, leaders, n_old,
            self.options.threshold_scale, self.options.gamma,
        )
        new = leaders[n_old:n_leaders]
        self._leader_rows = _take_rows(combined, leaders[:n_leaders], self._device)
        self._leader_means = means[leaders[:n_leaders]]
        self._leader_tolerances = tolerances[leaders[:n_leaders]]
        self._leader_index = np.concatenate([self._leader_index, new - n_old + self._n_samples])
        return self._leader_index[assign], nonfinite

    @checked_keywords
    def result(self, *, n_classes: int | None = None) -> LayerResult:
        """The layer's bundles over every sample seen so far.

        Parameters
        ----------
        n_classes : int, optional
            ``N_c``; inferred from the labels seen when omitted.

        Returns
        -------
        LayerResult
        """
        if not self._n_samples:
            raise BundleLabError(f"layer {self.layer!r}: no batch was added before result()")
        nonfinite = np.concatenate(self._nonfinite)
        keep = _check_nonfinite(nonfinite, self.options.nonfinite, self.layer)
        if self.options.mode == "resolution":
            roots = group_fingerprints(np.concatenate(self._fingerprints))
        else:
            roots = np.concatenate(self._roots)
        codes, classes = merge_label_codes(self._labels)
        return _layer_result(
            roots, keep, codes, check_n_classes(n_classes, len(classes)), self.options,
            layer=self.layer, n_features=self._n_features, dtype=self._fmt.name,
            update_format=update_format_of(self._fmt, self.options).name,
        )


def _concat_rows(first, second, device):
    if device == "cpu":
        return np.concatenate([first, second])
    from numba import cuda

    out = cuda.device_array((first.shape[0] + second.shape[0], first.shape[1]), dtype=first.dtype)
    out[: first.shape[0]] = first
    out[first.shape[0]:] = second
    return out


def _take_rows(rows, index: np.ndarray, device):
    if device == "cpu":
        return rows[index]
    from numba import cuda

    host = rows.copy_to_host()[index]  # leaders are few; a host round trip keeps this simple
    return cuda.to_device(np.ascontiguousarray(host))
