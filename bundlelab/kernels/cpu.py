"""Numba CPU kernels (row fingerprints, exact row comparison, the grouping of fingerprints,
greedy threshold assignment) and :class:`CpuBackend`, the
:class:`~bundlelab.kernels.KernelBackend` that drives them.

Resolution mode's exactness contract (group by fingerprint, confirm every member against its
representative) is met in two places: :func:`fingerprints_partners_native` compares a long row
with an earlier row of the same fingerprint right after hashing it, while it is in cache, and
:func:`group_rows` leaves only the members no such proven equality connects to their
representative for the exact comparison after the pass.

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


@_inline
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


#: rows per task of the parallel fingerprint drivers at most: one scratch tile per task, not
#: per row (a heap allocation per row costs more than hashing a short row)
ROWS_PER_TASK = 64


@_njit
def _rows_per_task(n_samples):
    """Rows per task: up to ROWS_PER_TASK, and at least 64 tasks while there are rows enough,
    so short passes still spread over the threads (the thread count would be a dynamic global,
    which the on-disk cache refuses)."""
    return max(1, min(ROWS_PER_TASK, n_samples // 64))


# Inlined into its drivers (as _hash_tile): in one function Numba drops the reference counting
# of the per-row and per-tile views, which costs as much as hashing a short row (measured at 256
# values a row: 2.5x -> 2.0x the floor).
@_inline
def _fingerprint_row_native(row, w, alpha, invb, keys, buf):
    """``(lane a, lane b, non-finite)`` of one row: its transformed values, ``buf`` (TILE values
    of the update format) as scratch; the lanes still need :func:`finish`."""
    n_features = row.shape[0]
    work = type(w)
    zero = work(0)
    per_word = 8 // buf.itemsize
    words = buf.view(np.uint64)
    lane_a = np.uint64(0)
    lane_b = np.uint64(0)
    bad = False
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
            words, start // per_word, (count + per_word - 1) // per_word, keys, lane_a, lane_b,
        )
    return lane_a, lane_b, bad


@_njit
def _rows_equal_native(row_i, row_j, w, alpha, invb):
    """Transformed rows ``row_i`` and ``row_j`` are IEEE-equal in every value."""
    n_features = row_i.shape[0]
    work = type(w)
    # Compare tile by tile without a branch inside the tile, so the loop vectorises; stop at
    # the first tile that differs.
    for start in range(0, n_features, TILE):
        src_i = row_i[start:start + TILE]
        src_j = row_j[start:start + TILE]
        differs = False
        for k in range(src_i.shape[0]):
            ti = w - (work(src_i[k]) * alpha) * invb
            tj = w - (work(src_j[k]) * alpha) * invb
            differs |= ti != tj  # NaN != NaN: a NaN row equals no row
        if differs:
            return False
    return True


@_njit
def _bits_equal(row_i, row_j):
    """Rows ``row_i`` and ``row_j`` hold the same bits (one branch-free pass: comparing a row in
    cache with one streaming from memory runs near the stream's speed this way, about twice
    as fast as the transformed comparison measured)."""
    bits_i = row_i.view(np.uint32)
    bits_j = row_j.view(np.uint32)
    differs = np.uint32(0)
    for k in range(bits_i.shape[0]):
        differs |= bits_i[k] ^ bits_j[k]
    return differs == 0


@numba.njit(parallel=True, cache=True, nogil=True)
def fingerprints_native(rows, w, alpha, invb, keys, out, nonfinite):
    """Fingerprint ``t = w - (a * alpha) * invb`` per row, in the dtype of the constants.

    ``w``, ``alpha`` and ``invb`` share one dtype, float32 or float64 (the update format); each
    activation is cast to it first, so the arithmetic stays in it whatever the rows' dtype.
    """
    n_samples = rows.shape[0]
    per_task = _rows_per_task(n_samples)
    for task in numba.prange((n_samples + per_task - 1) // per_task):
        buf = np.zeros(TILE, dtype=type(w))
        for i in range(task * per_task, min(n_samples, (task + 1) * per_task)):
            lane_a, lane_b, bad = _fingerprint_row_native(rows[i], w, alpha, invb, keys, buf)
            out[i, 0] = finish(lane_a)
            out[i, 1] = finish(lane_b)
            nonfinite[i] = bad


#: rows shorter than this (bytes) are confirmed after the pass: the table probe costs a cache
#: miss per row, as much as reading about 4 KiB, which confirming a short duplicate later
#: costs less than; a long row saves a whole re-read of itself
PARTNER_ROW_BYTES = 32 << 10


@numba.njit(parallel=True, cache=True, nogil=True)
def fingerprints_partners_native(rows, w, alpha, invb, keys, out, nonfinite, seen, partner):
    """:func:`fingerprints_native`, and for each row an earlier-hashed row proven equal to it.

    Confirming a duplicate right after hashing it reads only the other row again (this one is
    still in cache); confirming after the pass reads both.  ``seen`` (int64, shape (m, 2) with
    m a power of two >= 2 * n_samples, zeros) is an open-addressing table of
    ``(row + 1, first fingerprint word)``, one cache line per probe, shared by the threads
    without locks: a lost or torn entry only costs a missed or a failed comparison, because
    ``partner[i] = j`` (-1: none) is written only after the exact comparison of rows ``i`` and
    ``j`` succeeded.  Which ``j`` a row meets depends on the threads' timing, the proof does
    not: the grouping checks each member against its representative through these proven
    edges and compares the rest exactly.
    """
    n_samples = rows.shape[0]
    mask = np.uint64(seen.shape[0] - 1)
    # Equal bits give equal t, and a t that equals itself, unless t can be NaN: never for
    # finite activations when alpha and invb are non-zero and finite and w is finite (no
    # inf * 0, no inf - inf); then a row of finite activations is proven by its bits alone.
    bits_prove = alpha != 0 and invb != 0 and (alpha - alpha) == 0 and (w - w) == 0
    per_task = _rows_per_task(n_samples)
    for task in numba.prange((n_samples + per_task - 1) // per_task):
        buf = np.zeros(TILE, dtype=type(w))
        for i in range(task * per_task, min(n_samples, (task + 1) * per_task)):
            lane_a, lane_b, bad = _fingerprint_row_native(rows[i], w, alpha, invb, keys, buf)
            fp_a = finish(lane_a)
            fp_b = finish(lane_b)
            out[i, 0] = fp_a
            out[i, 1] = fp_b
            nonfinite[i] = bad
            partner[i] = -1
            key = np.int64(fp_a)
            slot = fp_a & mask
            while True:
                entry = seen[slot, 0]
                if entry == 0:
                    seen[slot, 1] = key
                    seen[slot, 0] = i + 1
                    break
                if seen[slot, 1] == key:
                    j = entry - 1
                    if out[j, 0] == fp_a and out[j, 1] == fp_b and (
                            (bits_prove and not bad and _bits_equal(rows[i], rows[j]))
                            or _rows_equal_native(rows[i], rows[j], w, alpha, invb)):
                        partner[i] = j
                    break
                slot = (slot + np.uint64(1)) & mask


#: 2**64 / golden ratio: multiplying by it spreads consecutive keys over the high bits
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


@_njit
def _find(parent, i):
    """Union-find root of ``i``, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def group_rows(fingerprints, partner, root, unproven):
    """Group rows by fingerprint: ``root[i]`` = the smallest row with ``i``'s fingerprint;
    ``unproven[i]`` = ``i`` is a member (not its own root) not yet proven equal to its root.

    ``partner[i] = j`` (>= 0) is a proven equality of rows ``i`` and ``j`` (see
    :func:`fingerprints_partners_native`), -1 none; a member is proven when such edges connect
    it to its root (union-find over the edges; equal rows have equal fingerprints, so an edge
    never leaves a group).  Serial and O(n): one pass in sample order over an open-addressing
    table keyed by the fingerprint, so the first row seen of each fingerprint is its root.
    """
    n = fingerprints.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=np.int64)  # root + 1, 0 = empty
    for i in range(n):
        fp_a = fingerprints[i, 0]
        fp_b = fingerprints[i, 1]
        # the slot from both words, mixed (Fibonacci hashing): NaN rows carry (sample index,
        # 2**64 - 1), consecutive integers whose low bits would fill one run of slots that
        # every later row probing into it walks to its end (quadratic time)
        slot = ((fp_a ^ fp_b) * _FIBONACCI) >> shift
        while True:
            entry = table[slot]
            if entry == 0:
                table[slot] = i + 1
                root[i] = i
                break
            r = entry - 1
            if fingerprints[r, 0] == fp_a and fingerprints[r, 1] == fp_b:
                root[i] = r
                break
            slot = (slot + np.uint64(1)) & mask
    parent = np.arange(n)
    for i in range(n):
        j = partner[i]
        if j >= 0:
            a = _find(parent, i)
            b = _find(parent, j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    for i in range(n):
        unproven[i] = root[i] != i and _find(parent, i) != _find(parent, root[i])


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
    for p in numba.prange(first.shape[0]):
        out[p] = _rows_equal_native(rows[first[p]], rows[second[p]], w, alpha, invb)


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


# fastmath "reassoc" lets the sums vectorise: the tolerance bounds the error of every summation
# order, and no flag that assumes finite values is set, so ``bad`` stays exact.  In the order of
# the loop the sums are a chain of dependent adds, a quarter of memory speed.
@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def row_means(rows, means, tolerances, nonfinite):
    """Row means in float64 and a bound on their rounding error.

    ``|mean_i - mean_j| <= max_k |a_ik - a_jk|`` in exact arithmetic, so the means prune the
    candidate pairs of ``threshold`` mode; the tolerance keeps the pruning conservative under
    the rounding of the float64 sums, in any order (error <= n * u * sum|a|, u = 2**-53; we use
    4x that).
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
    def fingerprints_partners(self, rows, fmt, transform, source=None):
        """:meth:`fingerprints`, and ``partner`` (int64, -1: none): for each row an
        earlier-hashed row proven exactly equal to it in the same pass; None (none proven:
        every member is confirmed after the pass) for the emulated formats and for rows
        shorter than :data:`PARTNER_ROW_BYTES`."""
        n = rows.shape[0]
        if not fmt.native or rows.shape[1] * rows.itemsize < PARTNER_ROW_BYTES:
            out, nonfinite = self.fingerprints.__wrapped__(self, rows, fmt, transform, source)
            return out, nonfinite, None
        out = np.empty((n, 2), dtype=np.uint64)
        nonfinite = np.empty(n, dtype=np.bool_)
        partner = np.empty(n, dtype=np.int64)
        seen = np.zeros((1 << max(1, 2 * n - 1).bit_length(), 2), dtype=np.int64)
        w, alpha, invb = _native_constants(fmt, transform)
        fingerprints_partners_native(rows, w, alpha, invb, fingerprint_keys(rows.shape[1], fmt),
                                     out, nonfinite, seen, partner)
        return out, nonfinite, partner

    def group_rows(self, fingerprints, partner=None):
        """``(root, unproven)`` of :func:`group_rows` (serial: no launch lock)."""
        n = fingerprints.shape[0]
        root = np.empty(n, dtype=np.int64)
        unproven = np.empty(n, dtype=np.bool_)
        if partner is None:
            partner = np.full(n, -1, dtype=np.int64)
        group_rows(np.ascontiguousarray(fingerprints, dtype=np.uint64), partner, root, unproven)
        return root, unproven

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
    "fingerprints_partners_native",
    "fingerprints_emulated",
    "group_rows",
    "pairs_equal_native",
    "pairs_equal_emulated",
    "row_means",
    "greedy_threshold",
    "threshold_reach",
]
