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
* fingerprints are written to ``out`` of shape (n_samples, 2), uint64; ``nonfinite`` flags rows
  whose activations are not all finite (the caller rejects or excludes those samples).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from . import _cache  # noqa: F401 - before any cache=True kernel: where the cache lives
from . import _formats, _hashing
from ._threads import LAUNCH_LOCK, choose_threading_layer
from ._formats import needs_rounding

_njit = numba.njit(cache=True, nogil=True)

choose_threading_layer()  # before the first parallel launch: a pool that sleeps when idle

term_a = _njit(_hashing.term_a)
term_b = _njit(_hashing.term_b)
round_to_format = numba.njit(cache=True, nogil=True, inline="always")(
    _formats.round_to_format
)

# Rows are processed in tiles that stay in L1: transform a tile into a scratch buffer, then hash
# its canonical bit patterns.
TILE = 1024


@_njit
def _hash_tile(words, first_word, n_words, lane_a, lane_b):
    for k in range(n_words):
        x = words[k]
        pos = np.uint64(first_word + k)
        lane_a += term_a(x, pos)
        lane_b += term_b(x, pos)
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
def fingerprints_native(rows, w, alpha, invb, out, nonfinite):
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
                words, start // per_word, (count + per_word - 1) // per_word, lane_a, lane_b
            )
        out[i, 0] = lane_a
        out[i, 1] = lane_b
        nonfinite[i] = bad


@numba.njit(parallel=True, cache=True, nogil=True)
def fingerprints_emulated(
    rows, w, alpha, invb, precision, emin, max_finite, round_input, out, nonfinite
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
                words, start // per_word, (count + per_word - 1) // per_word, lane_a, lane_b
            )
        out[i, 0] = lane_a
        out[i, 1] = lane_b
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


@_njit
def _within(row_i, row_j, probes, scale, gamma):
    # Probe the most variable columns first: rows that differ usually differ there, so most
    # rejected pairs cost a handful of loads instead of a pass over the row.
    for k in probes:
        d = abs(np.float64(row_i[k]) - np.float64(row_j[k]))
        if not (d * scale <= gamma):
            return False
    for k in range(row_i.shape[0]):
        d = abs(np.float64(row_i[k]) - np.float64(row_j[k]))
        if not (d * scale <= gamma):  # NaN compares false: a NaN row bundles with nothing
            return False
    return True


threshold_reach = _njit(_formats.threshold_reach)


@_njit
def _may_be_within(means, tolerances, j, other, reach):
    """Mean pruning: False only when the row means prove the rows are farther than gamma
    (``reach`` is :func:`threshold_reach`).

    A non-finite mean (an overflowed sum, or a NaN/Inf value) proves nothing, so such pairs
    are always compared value by value.
    """
    gap = abs(means[j] - means[other])
    if gap <= reach + tolerances[j] + tolerances[other]:
        return True
    return not (np.isfinite(means[j]) and np.isfinite(means[other]))


@_njit
def _index_leader(q_buckets, offsets, head, tail, count, after, position, row):
    """Append leader ``position`` (sample ``row``) to its bucket of every key."""
    for q in range(q_buckets.shape[0]):
        b = offsets[q] + q_buckets[q, row]
        if tail[b] < 0:
            head[b] = position
        else:
            after[q, tail[b]] = position
        tail[b] = position
        count[b] += 1


@_njit
def greedy_threshold(
    rows, means, tolerances, probes, first_new, leaders, n_leaders, assign, scale, gamma,
    finite, buckets, n_buckets,
):
    """Greedy ``threshold``-mode assignment of ``rows[first_new:]`` to leaders.

    Equivalent to "the first unassigned sample opens a bundle and takes every still-unassigned
    sample within gamma": sample j joins the earliest leader within gamma, or becomes a leader.
    ``leaders[:n_leaders]`` are row indices of the existing leaders (in opening order);
    ``assign[j - first_new]`` receives the leader's position; ``probes`` are column indices
    compared first (any order is correct).  Returns the new leader count.

    Candidate leaders come from an index (see :func:`threshold_index`): for every key ``q``
    (a column, or the row means), ``buckets[q, i]`` is row i's bucket, and a leader within
    gamma of row j lies in bucket ``b - 1``, ``b`` or ``b + 1`` of *every* key.  Each bucket
    lists its leaders in opening order; row j walks the three buckets of the key where they
    hold the fewest leaders, merged in opening order, and stops at the first leader within
    gamma: the earliest one, as the definition asks.  A row with a NaN or Inf value
    (``finite[i]`` False) is within gamma of no row, so it opens a bundle and is not indexed.
    """
    reach = threshold_reach(scale, gamma)
    n_keys = buckets.shape[0]
    offsets = np.zeros(n_keys + 1, dtype=np.int64)
    for q in range(n_keys):
        offsets[q + 1] = offsets[q] + n_buckets[q]
    head = np.full(offsets[n_keys], -1, dtype=np.int64)
    tail = np.full(offsets[n_keys], -1, dtype=np.int64)
    count = np.zeros(offsets[n_keys], dtype=np.int64)
    after = np.full((n_keys, leaders.shape[0]), -1, dtype=np.int64)
    for position in range(n_leaders):
        if finite[leaders[position]]:
            _index_leader(buckets, offsets, head, tail, count, after, position, leaders[position])
    for j in range(first_new, rows.shape[0]):
        found = -1
        if finite[j]:
            key = -1
            fewest = leaders.shape[0] + 1
            for q in range(n_keys):
                b = offsets[q] + buckets[q, j]
                held = count[b]
                if buckets[q, j] > 0:
                    held += count[b - 1]
                if buckets[q, j] + 1 < n_buckets[q]:
                    held += count[b + 1]
                if held < fewest:
                    fewest = held
                    key = q
            if fewest > 0:
                b = offsets[key] + buckets[key, j]
                below = head[b - 1] if buckets[key, j] > 0 else -1
                same = head[b]
                above = head[b + 1] if buckets[key, j] + 1 < n_buckets[key] else -1
                while True:
                    position = same
                    if below >= 0 and (position < 0 or below < position):
                        position = below
                    if above >= 0 and (position < 0 or above < position):
                        position = above
                    if position < 0:
                        break
                    leader = leaders[position]
                    if _may_be_within(means, tolerances, j, leader, reach):
                        if _within(rows[j], rows[leader], probes, scale, gamma):
                            found = position
                            break
                    following = after[key, position]
                    if position == same:
                        same = following
                    elif position == below:
                        below = following
                    else:
                        above = following
        if found < 0:
            leaders[n_leaders] = j
            found = n_leaders
            if finite[j]:
                _index_leader(buckets, offsets, head, tail, count, after, n_leaders, j)
            n_leaders += 1
        assign[j - first_new] = found
    return n_leaders


@_njit
def _bucket_run(sorted_keys, width, out):
    """Bucket of each key in ascending order: a bucket starts at key s and holds the keys k with
    fl(k - s) <= width.  Two keys at most ``width`` apart (exactly) then lie in the same or in
    adjacent buckets.  Returns the bucket count."""
    bucket = 0
    start = sorted_keys[0] if sorted_keys.shape[0] else 0.0
    for i in range(sorted_keys.shape[0]):
        if sorted_keys[i] - start > width:
            bucket += 1
            start = sorted_keys[i]
        out[i] = bucket
    return bucket + 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _finite_rows(rows, candidates, finite):
    for c in numba.prange(candidates.shape[0]):
        row = rows[candidates[c]]
        ok = True
        for k in range(row.shape[0]):
            v = np.float64(row[k])
            if (v - v) != 0.0:
                ok = False
        finite[candidates[c]] = ok


def probe_columns(rows, count=16):
    """Indices of the ``count`` columns with the largest spread (max - min) over the rows."""
    n_features = rows.shape[1]
    if n_features <= count:
        return np.arange(n_features, dtype=np.int64)
    spread = rows.max(axis=0).astype(np.float64) - rows.min(axis=0)
    spread = np.nan_to_num(spread, nan=np.inf)
    return np.sort(np.argsort(-spread, kind="stable")[:count]).astype(np.int64)


@numba.njit(parallel=True, cache=True, nogil=True)
def _signed_sums(rows, signs, factor, out):
    """``out[p, i] = factor * sum_k signs[p, k] * rows[i, k]`` in float64, summed in column
    order (the order ``row_means`` sums in, so its tolerance bounds the rounding here too)."""
    n_keys, n_features = signs.shape
    for i in numba.prange(rows.shape[0]):
        row = rows[i]
        for p in range(n_keys):
            total = 0.0
            for k in range(n_features):
                total += signs[p, k] * np.float64(row[k])
            out[p, i] = total * factor


#: keys indexed in threshold mode, chosen among the row means, ``PROJECTIONS`` signed sums and
#: the probe columns as those that spread the rows over the most buckets
INDEX_KEYS = 4
PROJECTIONS = 2
#: rows on which the keys are ranked (a sample of them when there are more)
RANKING_ROWS = 4096


def _buckets_of(keys, width, indexed, n_rows):
    order = np.argsort(keys)  # equal keys share a bucket: their order does not matter
    ids = np.empty(indexed.size, dtype=np.int64)
    n_ids = _bucket_run(np.ascontiguousarray(keys[order]), width, ids)
    bucket = np.zeros(n_rows, dtype=np.int64)  # rows not indexed never look theirs up
    bucket[indexed[order]] = ids
    return n_ids, bucket


def threshold_index(rows, means, tolerances, probes, scale, gamma):
    """``(finite, buckets, n_buckets)`` for :func:`greedy_threshold`.

    A pair within gamma differs by at most ``W = threshold_reach(scale, gamma)`` in every column
    (the test takes the column differences exactly as here).  Each key is 1-Lipschitz in that
    distance: a column; the mean; a signed sum ``2**-e * sum_k s_k a_k`` with ``s_k = +-1`` and
    ``D <= 2**e`` (rows of equal mean, e.g. permutations of one row, spread on it).  A computed
    mean or signed sum errs by at most the row's tolerance (``4 u sum|a| + 1e-300``, see
    :func:`row_means`), so a pair within gamma differs there by at most ``W + 2 max(tol)``.
    Bucketed with those widths, the pair sits in the same or adjacent buckets of every key.
    """
    n_rows, n_features = rows.shape
    finite = np.isfinite(means)
    suspicious = np.flatnonzero(~finite)  # NaN/Inf in the row, or a sum that overflowed
    if suspicious.size:
        _finite_rows(rows, suspicious.astype(np.int64), finite)
    indexed = np.flatnonzero(finite)
    reach = threshold_reach(scale, gamma)
    # (values of the key at some of the indexed rows, bucket width)
    keys = [(lambda at, k=k: rows[at, k].astype(np.float64), reach) for k in probes]
    if indexed.size:
        widest = float(tolerances[indexed].max())
        wide = (reach + 2.0 * widest) * (1.0 + 2.0**-40)
        signs = np.random.default_rng(20210105).choice([-1.0, 1.0], (PROJECTIONS, n_features))
        sums = np.empty((PROJECTIONS, n_rows))
        _signed_sums(rows, signs, 2.0 ** -math.ceil(math.log2(n_features)), sums)
        aggregates = [means] + list(sums)
        keys = [(lambda at, v=v: v[at], wide) for v in aggregates
                if np.isfinite(v[indexed]).all()] + keys
    if len(keys) > INDEX_KEYS and indexed.size > 2 * RANKING_ROWS:
        sample = np.sort(np.random.default_rng(0).choice(indexed.size, RANKING_ROWS, replace=False))
    else:
        sample = None
    ranked = []
    for position, (values, width) in enumerate(keys):
        if len(keys) <= INDEX_KEYS:
            ranked.append((0, position))
            continue
        column = values(indexed if sample is None else indexed[sample])
        ids = np.empty(column.size, dtype=np.int64)
        ranked.append((-_bucket_run(np.ascontiguousarray(np.sort(column)), width, ids), position))
    ranked.sort()  # most buckets first; ties: the aggregates, then the probes in column order
    chosen = [_buckets_of(keys[position][0](indexed), keys[position][1], indexed, n_rows)
              for _, position in ranked[:INDEX_KEYS]]
    if not chosen:
        chosen = [(1, np.zeros(n_rows, dtype=np.int64))]
    buckets = np.ascontiguousarray(np.stack([bucket for _, bucket in chosen]))
    n_buckets = np.array([max(count, 1) for count, _ in chosen], dtype=np.int64)
    return finite, buckets, n_buckets


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
            fingerprints_native(rows, w, alpha, invb, out, nonfinite)
        else:
            fingerprints_emulated(
                rows, transform.weight_amplitude, transform.learning_rate,
                transform.inverse_batch_size, fmt.precision, fmt.emin, fmt.max_finite,
                needs_rounding(source, fmt), out, nonfinite,
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
        probes = probe_columns(rows)
        finite, buckets, n_buckets = threshold_index(rows, means, tolerances, probes, scale, gamma)
        n_leaders = greedy_threshold(
            rows, means, tolerances, probes, first_new, leaders, n_leaders, assign, scale, gamma,
            finite, buckets, n_buckets,
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
    "threshold_index",
    "threshold_reach",
]
