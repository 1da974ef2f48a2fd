"""Numba CPU kernels (row fingerprints, exact row comparison, greedy threshold assignment) and
:class:`CpuBackend`, the :class:`~bundlelab.kernels.KernelBackend` that drives them.

Inputs are validated once in Python (``bundlelab/_validation.py``); the kernels contain no
checks.  ``parallel=True`` with ``prange`` appears only in the driver loops over rows, and every
kernel is cached on disk (``cache=True``) so the compile cost is paid once per machine, not once
per run; the cache lives in the user's cache folder, not the package (see ``_cache.py``).

Layout contract (shared with ``kernels/cuda.py``):

* ``rows`` is a C-contiguous 2-D array of shape (n_samples, n_features), float32 or float64.
  float16/bfloat16 activations arrive converted to float32 (exactly).
* the *update format* (the format ``t`` is computed in, see ``docs/semantics.md``) is given by
  the type of the constants ``w, alpha, invb``: the ``*_native`` kernels compute in float32 or
  float64 whatever the storage (each activation is first cast to that format: exact when it
  widens, rounded to nearest-even when it narrows), and hash words of that format, so a
  float16 row evaluated in float32 has the fingerprint of the same values stored as float32.
  The ``*_emulated`` kernels compute in float16/bfloat16 by rounding every operation (and the
  activation itself, when it is not already in the format) to the narrow format.
* ``keys`` of the fingerprint kernels is :func:`fingerprint_keys` (the word keys of
  ``_hashing.py``, shared by every row and every call with the same row length).
* fingerprints are written to ``out`` of shape (n_samples, 2), uint64; ``nonfinite`` flags rows
  whose activations are not all finite (the caller rejects or excludes those samples).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from . import _cache  # noqa: F401 - before any cache=True kernel: where the cache lives
from . import _formats, _hashing
from ._threads import LAUNCH_LOCK, choose_threading_layer
from ._formats import needs_rounding
from ._threshold import greedy_threshold, threshold_reach
from ._hashing import BLOCK_WORDS

_njit = numba.njit(cache=True, nogil=True)

choose_threading_layer()  # before the first parallel launch: a pool that sleeps when idle

_inline = numba.njit(cache=True, nogil=True, inline="always")
term = _inline(_hashing.term)
finish = _inline(_hashing.finish)
round_to_format = _inline(_formats.round_to_format)

# Rows are processed in tiles that stay in L1: transform a tile into a scratch buffer, then hash
# its canonical bit patterns.
TILE = 1024


@_njit
def _hash_tile(words, first_word, n_words, keys, lane_a, lane_b):
    """Add the tile's words (the first at position ``first_word`` of the row, a multiple of
    ``BLOCK_WORDS``: tiles start at multiples of TILE values) to the lane sums.  ``keys`` is
    ``(base_a, base_b, tweak_a, tweak_b)`` from ``_hashing.word_keys``."""
    base_a, base_b, tweak_a, tweak_b = keys
    for offset in range(0, n_words, BLOCK_WORDS):
        block = (first_word + offset) // BLOCK_WORDS
        tweak_to_a = tweak_a[block]
        tweak_to_b = tweak_b[block]
        chunk = words[offset:offset + min(BLOCK_WORDS, n_words - offset)]
        for k in range(chunk.shape[0]):
            x = chunk[k]
            lane_a += term(x, base_a[k] * tweak_to_a)
            lane_b += term(x, base_b[k] * tweak_to_b)
    return lane_a, lane_b


@_njit
def _emulated_value(v, w, alpha, invb, precision, emin, max_finite, round_input):
    a = np.float64(v)
    if round_input:
        # the activation is wider than the update format: cast it first (one correct rounding
        # of the exact value), as converting the array would
        a = round_to_format(a, precision, emin, max_finite)
    scaled = round_to_format(a * alpha, precision, emin, max_finite)
    step = round_to_format(scaled * invb, precision, emin, max_finite)
    return round_to_format(w - step, precision, emin, max_finite)


@numba.njit(parallel=True, cache=True, nogil=True)
def fingerprints_native(rows, w, alpha, invb, keys, out, nonfinite):
    """Fingerprint ``t = w - (a * alpha) * invb`` per row, in the dtype of the constants.

    ``w``, ``alpha`` and ``invb`` share one dtype, float32 or float64 (the update format); each
    activation is cast to it first, so the arithmetic stays in it whatever the rows' dtype.
    """
    n_samples, n_features = rows.shape
    work = type(w)
    zero = work(0)
    for i in numba.prange(n_samples):
        buf = np.zeros(TILE, dtype=work)
        per_word = 8 // buf.itemsize
        words = buf.view(np.uint64)
        lane_a = np.uint64(0)
        lane_b = np.uint64(0)
        bad = False
        row = rows[i]
        for start in range(0, n_features, TILE):
            count = min(TILE, n_features - start)
            # A 1-D slice lets LLVM vectorise this loop; 2-D indexing with wraparound does not.
            src = row[start:start + count]
            for k in range(count):
                v = src[k]
                # The non-finite flag is about the activation, not t: a finite activation whose
                # transform overflows to -inf is a valid (if extreme) input.
                bad |= (v - v) != 0  # true for NaN and +-inf only
                t = w - (work(v) * alpha) * invb
                # Adding +0.0 maps -0.0 to +0.0 and leaves every other value unchanged, so the
                # bit patterns agree exactly when IEEE equality does (NaN aside).
                buf[k] = t + zero
            if count % per_word:
                buf[count] = zero  # pad the last word of an odd-length float32 row
            lane_a, lane_b = _hash_tile(
                words, start // per_word, (count + per_word - 1) // per_word, keys, lane_a,
                lane_b,
            )
        out[i, 0] = finish(lane_a)
        out[i, 1] = finish(lane_b)
        nonfinite[i] = bad


@numba.njit(parallel=True, cache=True, nogil=True)
def fingerprints_emulated(
    rows, w, alpha, invb, precision, emin, max_finite, round_input, keys, out, nonfinite
):
    """Fingerprint ``t`` computed in a narrow format (float16/bfloat16), held as float32.

    ``round_input``: the rows may hold values outside the format (wider activations), which
    are rounded to it first; False when they are known to be in it already (saves the work).
    """
    n_samples, n_features = rows.shape
    zero = np.float32(0.0)
    per_word = 2  # the values are held as float32: two per 64-bit word
    for i in numba.prange(n_samples):
        buf = np.zeros(TILE, dtype=np.float32)
        words = buf.view(np.uint64)
        lane_a = np.uint64(0)
        lane_b = np.uint64(0)
        bad = False
        row = rows[i]
        for start in range(0, n_features, TILE):
            count = min(TILE, n_features - start)
            src = row[start:start + count]
            for k in range(count):
                v = src[k]
                bad |= (v - v) != 0
                t = _emulated_value(v, w, alpha, invb, precision, emin, max_finite, round_input)
                buf[k] = np.float32(t) + zero
            if count % per_word:
                buf[count] = zero  # pad the last word of an odd-length float32 row
            lane_a, lane_b = _hash_tile(
                words, start // per_word, (count + per_word - 1) // per_word, keys, lane_a,
                lane_b,
            )
        out[i, 0] = finish(lane_a)
        out[i, 1] = finish(lane_b)
        nonfinite[i] = bad


@numba.njit(parallel=True, cache=True, nogil=True)
def pairs_equal_native(rows, first, second, w, alpha, invb, out):
    """``out[p]`` = transformed rows ``first[p]`` and ``second[p]`` are IEEE-equal everywhere
    (computed in the dtype of the constants, as :func:`fingerprints_native`)."""
    n_features = rows.shape[1]
    work = type(w)
    for p in numba.prange(first.shape[0]):
        row_i = rows[first[p]]
        row_j = rows[second[p]]
        equal = True
        # Compare tile by tile without a branch inside the tile, so the loop vectorises; stop
        # at the first tile that differs.
        for start in range(0, n_features, TILE):
            src_i = row_i[start:start + TILE]
            src_j = row_j[start:start + TILE]
            differs = False
            for k in range(src_i.shape[0]):
                ti = w - (work(src_i[k]) * alpha) * invb
                tj = w - (work(src_j[k]) * alpha) * invb
                differs |= not (ti == tj)
            if differs:
                equal = False
                break
        out[p] = equal


@numba.njit(parallel=True, cache=True, nogil=True)
def pairs_equal_emulated(
    rows, first, second, w, alpha, invb, precision, emin, max_finite, round_input, out
):
    """Like :func:`pairs_equal_native` in a narrow format (see :func:`fingerprints_emulated`)."""
    n_features = rows.shape[1]
    for p in numba.prange(first.shape[0]):
        row_i = rows[first[p]]
        row_j = rows[second[p]]
        equal = True
        for k in range(n_features):
            ti = _emulated_value(row_i[k], w, alpha, invb, precision, emin, max_finite,
                                 round_input)
            tj = _emulated_value(row_j[k], w, alpha, invb, precision, emin, max_finite,
                                 round_input)
            if not (ti == tj):
                equal = False
                break
        out[p] = equal


@numba.njit(parallel=True, cache=True, nogil=True)
def row_means(rows, means, tolerances, nonfinite):
    """Row means in float64 and a bound on their rounding error.

    ``|mean_i - mean_j| <= max_k |a_ik - a_jk|`` in exact arithmetic, so the means prune the
    candidate pairs of ``threshold`` mode; the tolerance keeps the pruning conservative under
    the rounding of the float64 sums (error <= n * u * sum|a|, u = 2**-53; we use 4x that).
    """
    n_samples, n_features = rows.shape
    for i in numba.prange(n_samples):
        total = 0.0
        total_abs = 0.0
        bad = False
        row = rows[i]
        for k in range(n_features):
            v = np.float64(row[k])
            bad |= (v - v) != 0.0  # inf - inf and NaN - NaN are NaN; finite - itself is 0
            total += v
            total_abs += abs(v)
        means[i] = total / n_features
        nonfinite[i] = bad
        tolerances[i] = 4.0 * 2.0**-53 * total_abs + 1e-300


def fingerprint_keys(n_values: int, fmt) -> tuple:
    """The fingerprint kernels' ``keys`` argument for rows of ``n_values`` values hashed in the
    update format ``fmt``: ``(base_a, base_b, tweak_a, tweak_b)``."""
    base, tweak = _hashing.word_keys(_hashing.n_words(n_values, fmt.name))
    return base[0], base[1], tweak[0], tweak[1]


def _native_constants(fmt, transform):
    """``w, alpha, invb`` as numpy scalars of the update format: their type selects the
    format the native kernels compute in."""
    cast = np.float32 if fmt.name == "float32" else np.float64
    return (cast(transform.weight_amplitude), cast(transform.learning_rate),
            cast(transform.inverse_batch_size))


def _one_launch_at_a_time(method):
    """Hold :data:`LAUNCH_LOCK` during ``method`` (see ``_threads.py``: the workqueue layer
    aborts on concurrent launches)."""
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with LAUNCH_LOCK:
            return method(*args, **kwargs)

    return locked


class CpuBackend:
    """Numba kernels on the host; the reference every other backend must match bit for bit.

    Every method holds one process-wide lock while its parallel kernels run (see
    ``kernels/_threads.py``)."""

    name = "cpu"

    @_one_launch_at_a_time
    def fingerprints(self, rows, fmt, transform, source=None):
        n = rows.shape[0]
        out = np.empty((n, 2), dtype=np.uint64)
        nonfinite = np.empty(n, dtype=np.bool_)
        if fmt.native:
            w, alpha, invb = _native_constants(fmt, transform)
            fingerprints_native(rows, w, alpha, invb, fingerprint_keys(rows.shape[1], fmt),
                                out, nonfinite)
        else:
            fingerprints_emulated(
                rows, transform.weight_amplitude, transform.learning_rate,
                transform.inverse_batch_size, fmt.precision, fmt.emin, fmt.max_finite,
                needs_rounding(source, fmt), fingerprint_keys(rows.shape[1], fmt), out, nonfinite,
            )
        return out, nonfinite

    @_one_launch_at_a_time
    def pairs_equal(self, rows, first, second, fmt, transform, source=None):
        out = np.empty(first.shape[0], dtype=np.bool_)
        first = np.ascontiguousarray(first, dtype=np.int64)
        second = np.ascontiguousarray(second, dtype=np.int64)
        if fmt.native:
            w, alpha, invb = _native_constants(fmt, transform)
            pairs_equal_native(rows, first, second, w, alpha, invb, out)
        else:
            pairs_equal_emulated(
                rows, first, second, transform.weight_amplitude, transform.learning_rate,
                transform.inverse_batch_size, fmt.precision, fmt.emin, fmt.max_finite,
                needs_rounding(source, fmt), out,
            )
        return out

    @_one_launch_at_a_time
    def row_means(self, rows):
        n = rows.shape[0]
        means = np.empty(n)
        tolerances = np.empty(n)
        nonfinite = np.empty(n, dtype=np.bool_)
        row_means(rows, means, tolerances, nonfinite)
        return means, tolerances, nonfinite

    @_one_launch_at_a_time
    def threshold_assign(
        self, rows, means, tolerances, first_new, leaders, n_leaders, scale, gamma
    ):
        assign = np.empty(rows.shape[0] - first_new, dtype=np.int64)
        if not assign.size:
            return assign, int(n_leaders)
        means = np.ascontiguousarray(means, dtype=np.float64)
        tolerances = np.ascontiguousarray(tolerances, dtype=np.float64)
        n_leaders = greedy_threshold(
            rows, means, tolerances, first_new, leaders, int(n_leaders), assign, scale, gamma
        )
        return assign, int(n_leaders)


__all__ = [
    "CpuBackend",
    "fingerprints_native",
    "fingerprints_emulated",
    "pairs_equal_native",
    "pairs_equal_emulated",
    "row_means",
    "greedy_threshold",
    "threshold_reach",
]
