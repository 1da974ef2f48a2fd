"""Threshold mode's greedy assignment on the CPU: a grid index that prunes, and a block-parallel
greedy that gives exactly the sequential result.

The rule (``docs/semantics.md``): samples in order, sample ``j`` joins the earliest opened
leader ``c`` with ``fl(fl(|a_jk - a_ck|) * scale) <= gamma`` for every column ``k``, else opens a
bundle.  A pair within gamma differs by at most ``W = threshold_reach(scale, gamma)`` in every
column, hence by at most ``W`` in every 1-Lipschitz key (a column), and by at most
``W + 2 max(tolerance)`` in a computed mean or signed sum ``2**-e * sum_k s_k a_k``
(``D <= 2**e``; the tolerance bounds the float64 rounding of the sum, see ``row_means``).

Why one key is not enough.  The previous index bucketed rows on four keys and walked the three
adjacent buckets of the best one.  A key spreads the rows over a number of buckets fixed by the
data (its range divided by ``W``), not by ``N``: every row compares about ``3 N / B`` leaders
and the whole run is quadratic (x16-24 per 4x rows, measured on ReLU activations).

The grid.  Here rows are placed in the cells of a grid on up to :data:`GRID_KEYS` keys at once
(each key cut into buckets :data:`SPAN` key widths wide, by ``_bucket_floor`` or, for keys that
spread over too many buckets or a width of 0, on the sorted keys by ``_bucket_sides``: keys
within the key's width lie in the same or adjacent buckets), so a pair within gamma lies in the
same or an adjacent cell of the grid, found in a hash table of the occupied cells.  Since a
bucket is twice the key's width, a key needs the bucket below or the one above, rarely both:
each row records which (``sides``), and visits about ``2**m`` cells instead of ``3**m``.  Most
of those are empty for distinct rows, so a bit filter that fits in a core's cache
(``_occupancy_filter``) answers most of them before the hash table is read.  The number of
occupied cells grows with ``N`` (up to ``B**m``), so for rows that spread on a few keys the
leaders per neighbourhood stay a handful and the run is near-linear.  Keys are chosen greedily
on a sample of rows (the mean, signed sums over all or :data:`SUBSET` columns, the most variable
columns; see :func:`grid_keys`): each added key must at least halve the sample pairs that share
a neighbourhood.  Rows that tie on every key (values spread less than ``W`` in every direction
the keys see) still fall back to comparing more pairs, never to a different answer.

The first-leader rule.  Each cell lists its leaders in opening order, so the first leader
within gamma in one cell is the cell's earliest; over the neighbour cells the earliest of those
is taken, walking each list only up to the best position found so far.

Parallel blocks.  Rows are assigned in blocks of :data:`BLOCK` rows at first, twice as many
after each block that left few pair tests to one thread (up to :data:`MAX_BLOCK`), so distinct
rows take a handful of rounds: each round waits for every thread, which on a busy machine costs
more than a small block's work.  In parallel, each row of the block finds its earliest leader
among those opened before the block (read-only index).  Then one thread walks the block in
order: a row that found such a leader keeps it (every leader the block opens comes later), the
others are checked against the leaders opened earlier in this block only (a cell's in-block
leaders are the tail of its list, stamped per block) and open a bundle when none is within
gamma.  That is the sequential greedy, with most pair tests (those against earlier leaders) done
on every core.

A row with NaN or Inf is within gamma of nothing: it opens a bundle and is never indexed.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _cache  # noqa: F401 - before any cache=True kernel: where the cache lives
from . import _formats

_njit = numba.njit(cache=True, nogil=True)

#: rows assigned per parallel round at first, and again after a round that left many pair tests
#: to one thread
BLOCK = 2048
#: rows assigned per parallel round at most
MAX_BLOCK = 65536
#: columns of the per-cell leader lists
TAIL, STAMP, BLOCK_FIRST = 0, 1, 2
#: keys of the grid at most (3**GRID_KEYS neighbour cells per row)
GRID_KEYS = 4
#: signed sums offered as keys besides the mean and the probe columns
PROJECTIONS = 4
#: columns of the signed sums over a subset
SUBSET = 64
#: rows of the sample on which the keys are chosen
RANKING_ROWS = 1024
#: most variable columns: probed first by the pair test, and offered as keys
PROBES = 16
#: rows on which the probe columns are chosen
PROBE_ROWS = 4096
#: width of a grid bucket in key widths (see ``_bucket_sides``)
SPAN = 2.0

threshold_reach = _njit(_formats.threshold_reach)


# -- the pair test -----------------------------------------------------------------------------


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


@_njit
def _may_be_within(means, tolerances, j, other, reach):
    """Mean pruning: False only when the row means prove the rows are farther than gamma.

    A non-finite mean (an overflowed sum, or a NaN/Inf value) proves nothing, so such pairs
    are always compared value by value."""
    gap = abs(means[j] - means[other])
    if gap <= reach + tolerances[j] + tolerances[other]:
        return True
    return not (np.isfinite(means[j]) and np.isfinite(means[other]))


@_njit
def _is_within(rows, means, tolerances, probes, scale, gamma, reach, j, leader):
    return (_may_be_within(means, tolerances, j, leader, reach)
            and _within(rows[j], rows[leader], probes, scale, gamma))


# -- keys and buckets --------------------------------------------------------------------------


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


@_njit
def _bucket_sides(sorted_keys, width, buckets, sides):
    """Buckets of the ascending keys, :data:`SPAN` key widths wide (as :func:`_bucket_run`), and
    for each key the adjacent buckets that may hold a key within ``width`` of it: bit 0 the
    bucket below (its largest key is within ``width``), bit 1 the one above.  Returns the
    bucket count.

    Buckets wider than ``width`` make most keys need one side only, so a row visits about
    ``2**m`` cells of the grid instead of ``3**m``.  ``fl(b - a) <= width`` whenever a key
    ``a <= b`` of the pair is within width, and rounding is monotone, so comparing with the
    nearest key of the next bucket decides for every key in it."""
    n = sorted_keys.shape[0]
    n_buckets = _bucket_run(sorted_keys, width * SPAN, buckets)
    first = np.empty(n_buckets + 1, dtype=np.int64)
    first[n_buckets] = n
    for i in range(n - 1, -1, -1):
        first[buckets[i]] = i
    for i in range(n):
        b = buckets[i]
        side = 0
        if b > 0 and sorted_keys[i] - sorted_keys[first[b] - 1] <= width:
            side |= 1
        if b + 1 < n_buckets and sorted_keys[first[b + 1]] - sorted_keys[i] <= width:
            side |= 2
        sides[i] = side
    return n_buckets


#: most buckets of width ``SPAN * width`` a key may span for ``_bucket_floor``: bounds the
#: rounding error of ``(key - lowest) / (SPAN * width)`` by 2**-21 of a bucket
FLOOR_BUCKETS = 2.0**30
#: fraction of a bucket by which ``_bucket_floor`` widens each side's test (> that error)
FLOOR_MARGIN = 2.0**-18


@_njit
def _bucket_floor(keys, width, max_buckets, buckets, sides):
    """``_bucket_sides`` without the sort, for keys that span at most ``max_buckets`` (and
    :data:`FLOOR_BUCKETS`) buckets: bucket ``floor((k - lowest) / (SPAN * width))``.  Returns
    the bucket count, or -1 when the keys span more or ``width`` is not a positive normal float.

    A key within ``width`` of ``k`` (``fl(|k - k'|) <= width``, so
    ``|k - k'| <= width (1 + 2**-53)``) lies at most ``1 / SPAN`` of a bucket (and the rounding
    error, below 2**-20 of a bucket in all) from ``k``'s position ``r``: in the bucket below
    only when ``r``'s fraction is below ``1 / SPAN`` plus :data:`FLOOR_MARGIN`, above only when
    it is at least ``1 - 1 / SPAN`` minus it."""
    n = keys.shape[0]
    if not (width >= 2.0**-1000 and width <= 2.0**1000) or n == 0:
        return -1
    lowest = keys[0]
    highest = keys[0]
    for i in range(n):
        lowest = min(lowest, keys[i])
        highest = max(highest, keys[i])
    span = width * SPAN
    if not ((highest - lowest) / span < min(FLOOR_BUCKETS, max_buckets)):
        return -1
    for i in range(n):
        position = (keys[i] - lowest) / span
        bucket = np.int64(math.floor(position))
        fraction = position - bucket
        buckets[i] = bucket
        sides[i] = ((fraction < 1.0 / SPAN + FLOOR_MARGIN) * 1
                    + (fraction >= 1.0 - 1.0 / SPAN - FLOOR_MARGIN) * 2)
    return np.int64(math.floor((highest - lowest) / span)) + 1


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


def probe_columns(rows, count=PROBES):
    """Indices of the ``count`` columns with the largest spread (max - min) over at most
    :data:`PROBE_ROWS` rows spaced evenly: they only order the pair test's loads and offer
    keys, so a sample serves, and two passes over every row would cost as much as the greedy."""
    n_features = rows.shape[1]
    if n_features <= count:
        return np.arange(n_features, dtype=np.int64)
    rows = rows[::max(1, rows.shape[0] // PROBE_ROWS)]
    spread = rows.max(axis=0).astype(np.float64) - rows.min(axis=0)
    spread = np.nan_to_num(spread, nan=np.inf)
    return np.sort(np.argsort(-spread, kind="stable")[:count]).astype(np.int64)


# fastmath "reassoc" lets the sums vectorise in any order: every order of a float64 sum of s
# terms errs by at most (s - 1) u sum|a_k| (u = 2**-53), so with a factor <= 1/s the error stays
# below u sum|a_k|, under the tolerance of ``row_means``.  No other fast-math flag is set.
@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def _signed_sums(rows, signs, factors, out):
    """``out[p, i] = factors[p] * sum_k signs[p, k] * rows[i, k]`` in float64 (signs in
    {-1, 0, 1}, ``factors[p]`` a power of two at most 1 / the non-zero signs): a 1-Lipschitz
    key up to a rounding error below ``row_means``'s tolerance."""
    n_keys, n_features = signs.shape
    for i in numba.prange(rows.shape[0]):
        row = rows[i]
        for p in range(n_keys):
            total = 0.0
            for k in range(n_features):
                total += signs[p, k] * np.float64(row[k])
            out[p, i] = total * factors[p]


@_njit
def _choose_keys(buckets, max_keys, n_rows):
    """Keys of the grid, chosen greedily on the sample buckets ``buckets[i, q]``: each added key
    must at least halve the sample pairs that share a neighbourhood (buckets at most one apart on
    every key chosen), and none is added once a row of all ``n_rows`` expects fewer than one
    other row in its neighbourhood."""
    n, n_keys = buckets.shape
    chosen = np.full(max_keys, -1, dtype=np.int64)
    shared = n * (n - 1) // 2
    # first key: pairs one bucket apart at most, counted on the sorted buckets
    best, best_shared = -1, shared
    for q in range(n_keys):
        column = np.sort(buckets[:, q])
        count = 0
        lo = 0
        for i in range(n):
            while column[i] - column[lo] > 1:
                lo += 1
            count += i - lo
        if count < best_shared:
            best, best_shared = q, count
    if best < 0 or 2 * best_shared > shared:
        return chosen[:0]
    chosen[0] = best
    shared = best_shared
    # the pairs that share its neighbourhood, then the keys that split them
    order = np.argsort(buckets[:, best], kind="mergesort")
    first = np.empty(shared, dtype=np.int64)
    second = np.empty(shared, dtype=np.int64)
    m = 0
    lo = 0
    for i in range(n):
        while buckets[order[i], best] - buckets[order[lo], best] > 1:
            lo += 1
        for k in range(lo, i):
            first[m] = order[k]
            second[m] = order[i]
            m += 1
    n_chosen = 1
    while n_chosen < max_keys and shared and 2.0 * shared * n_rows > 1.0 * n * n:
        best, best_shared = -1, shared
        for q in range(n_keys):
            taken = False
            for c in range(n_chosen):
                taken |= chosen[c] == q
            if taken:
                continue
            count = 0
            for p in range(m):
                count += abs(buckets[first[p], q] - buckets[second[p], q]) <= 1
            if count < best_shared:
                best, best_shared = q, count
        if best < 0 or 2 * best_shared > shared:
            break
        chosen[n_chosen] = best
        n_chosen += 1
        kept = 0
        for p in range(m):
            if abs(buckets[first[p], best] - buckets[second[p], best]) <= 1:
                first[kept] = first[p]
                second[kept] = second[p]
                kept += 1
        m = kept
        shared = best_shared
    return chosen[:n_chosen]


def grid_keys(rows, means, tolerances, probes, scale, gamma):
    """``(finite, cells, strides, sides)``: the grid cell of every row.

    ``finite[i]``: row i has no NaN/Inf (only those are indexed).  ``cells[i]`` is the code
    ``sum_q (bucket_q(i) + 1) * strides[q]`` of its cell, so the cell next to it on key ``q``
    is ``cells[i] +- strides[q]``; rows that are not indexed have code 0, which no indexed row
    has.  ``sides[i]`` has bit ``2q`` when a row within gamma of row i may lie in the bucket
    below on key ``q``, bit ``2q + 1`` when it may lie in the one above.  The keys are chosen
    on a sample of rows as described in the module docstring.
    """
    n_rows, n_features = rows.shape
    finite = np.isfinite(means)
    suspicious = np.flatnonzero(~finite)  # NaN/Inf in the row, or a sum that overflowed
    if suspicious.size:
        _finite_rows(rows, suspicious.astype(np.int64), finite)
    indexed = np.flatnonzero(finite)
    cells = np.zeros(n_rows, dtype=np.int64)
    if not indexed.size:
        return finite, cells, np.zeros(0, dtype=np.int64), np.zeros(n_rows, dtype=np.int64)
    reach = threshold_reach(scale, gamma)
    # (values of the key at some of the indexed rows, bucket width)
    keys = [(lambda at, k=k: rows[at, k].astype(np.float64), reach) for k in probes]
    widest = float(tolerances[indexed].max())
    wide = (reach + 2.0 * widest) * (1.0 + 2.0**-40)
    # half the sums over every column, half over SUBSET columns: on sparse rows a sum over
    # fewer columns spreads more (its 1/s factor shrinks the spread by sqrt(s) only)
    rng = np.random.default_rng(20210105)
    signs = rng.choice([-1.0, 1.0], (PROJECTIONS, n_features))
    factors = np.full(PROJECTIONS, 2.0 ** -math.ceil(math.log2(max(n_features, 1))))
    if n_features > SUBSET:
        for p in range(PROJECTIONS // 2, PROJECTIONS):
            signs[p, np.sort(rng.permutation(n_features)[SUBSET:])] = 0.0
            factors[p] = 2.0 ** -math.ceil(math.log2(SUBSET))

    every_row = {}  # projection -> its signed sum of every row, for the chosen projections
    on_sample = {}

    def signed_sum(at, p):
        if at.size <= RANKING_ROWS:  # the sample
            if id(at) not in on_sample:
                on_sample[id(at)] = np.empty((PROJECTIONS, at.size))
                _signed_sums(np.ascontiguousarray(rows[at]), signs, factors, on_sample[id(at)])
            return on_sample[id(at)][p]
        return every_row[p][at]

    aggregates = [lambda at, p=p: signed_sum(at, p) for p in range(PROJECTIONS)]
    first_projection = 0
    if np.isfinite(means[indexed]).all():
        aggregates.insert(0, lambda at: means[at])
        first_projection = 1
    keys = [(values, wide) for values in aggregates] + keys

    if indexed.size > RANKING_ROWS:
        sample = np.sort(np.random.default_rng(0).choice(indexed, RANKING_ROWS, replace=False))
    else:
        sample = indexed
    sample_buckets = np.empty((sample.size, len(keys)), dtype=np.int64)
    for q, (values, width) in enumerate(keys):
        column = values(sample)
        order = np.argsort(column)  # buckets depend on the sorted values only, not on ties
        ids = np.empty(sample.size, dtype=np.int64)
        _bucket_run(np.ascontiguousarray(column[order]), width, ids)
        sample_buckets[order, q] = ids
    chosen = _choose_keys(sample_buckets, GRID_KEYS, indexed.size)
    # the chosen projections of every row, in one pass that computes no other one
    projections = [q - first_projection for q in chosen
                   if first_projection <= q < first_projection + PROJECTIONS]
    if projections and indexed.size > RANKING_ROWS:  # else the sample's sums serve
        sums = np.empty((len(projections), n_rows))
        _signed_sums(rows, np.ascontiguousarray(signs[projections]),
                     np.ascontiguousarray(factors[projections]), sums)
        every_row.update(zip(projections, sums))

    strides = []
    stride = 1
    sides = np.zeros(n_rows, dtype=np.int64)
    for q in chosen:
        values, width = keys[q]
        column = values(indexed)
        if not np.isfinite(column).all():
            continue  # a signed sum that overflowed: no bound holds for it
        bucket = np.empty(indexed.size, dtype=np.int64)
        side = np.empty(indexed.size, dtype=np.int64)
        # more buckets than rows would leave room for fewer keys in an int64 code
        n_buckets = _bucket_floor(column, width, 2.0 * indexed.size + 64, bucket, side)
        if n_buckets < 0:  # keys spread over too many buckets, or a width of 0: sort them
            order = np.argsort(column)  # equal keys share a bucket, in whatever order they sort
            ids = np.empty(indexed.size, dtype=np.int64)
            sorted_sides = np.empty(indexed.size, dtype=np.int64)
            n_buckets = _bucket_sides(np.ascontiguousarray(column[order]), width, ids,
                                      sorted_sides)
            bucket[order] = ids
            side[order] = sorted_sides
        if stride * (n_buckets + 2) >= 2**62:
            break  # codes must fit in int64 (only with more than a million rows)
        cells[indexed] += (bucket + 1) * stride
        sides[indexed] |= side << (2 * len(strides))
        strides.append(stride)
        stride *= n_buckets + 2
    if not strides:
        cells[indexed] = 1  # one cell for every indexed row
    return finite, cells, np.array(strides, dtype=np.int64), sides


def neighbour_offsets(strides):
    """``(offsets, needs)``: code differences between a cell and the cells next to it on every
    key (itself first), and the sides each one lies on: bit ``2q`` for the bucket below on key
    ``q``, bit ``2q + 1`` for the one above.  A row visits an offset only when its own ``sides``
    (see :func:`grid_keys`) has every bit of the offset's ``needs``."""
    offsets = np.zeros(1, dtype=np.int64)
    needs = np.zeros(1, dtype=np.int64)
    for q, stride in enumerate(strides):
        offsets = np.concatenate([offsets, offsets - stride, offsets + stride])
        needs = np.concatenate([needs, needs | (1 << 2 * q), needs | (2 << 2 * q)])
    return offsets, needs


def _visits(needs, n_keys):
    """``(visits, start)``: for every value ``s`` of a row's ``sides``, the offsets it visits
    are ``visits[start[s]:start[s + 1]]`` (itself first), so the search skips the others
    without looking at them."""
    lists = [np.flatnonzero((needs & ~s) == 0) for s in range(4**n_keys)]
    start = np.zeros(len(lists) + 1, dtype=np.int64)
    start[1:] = np.cumsum([v.size for v in lists])
    return np.concatenate(lists).astype(np.int64), start


# -- the occupied cells: an open-addressing hash table of codes --------------------------------


@_njit
def _slot(table, code, mask):
    h = (np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)
    s = np.int64(h & np.uint64(mask))
    while table[s, 0] != 0 and table[s, 0] != code:
        s = (s + 1) & mask
    return s


@_njit
def _cell_table(cells, finite):
    """``(table, cell_of)``: the table maps a code to a dense cell id, ``cell_of[i]`` is row
    i's cell (-1 when it is not indexed)."""
    n = cells.shape[0]
    capacity = 16
    while capacity < 2 * n:
        capacity *= 2
    table = np.zeros((capacity, 2), dtype=np.int64)  # code 0 marks an empty slot
    cell_of = np.full(n, -1, dtype=np.int64)
    n_cells = 0
    for i in range(n):
        if finite[i]:
            s = _slot(table, cells[i], capacity - 1)
            if table[s, 0] == 0:
                table[s, 0] = cells[i]
                table[s, 1] = n_cells
                n_cells += 1
            cell_of[i] = table[s, 1]
    return table, cell_of, n_cells


@_njit
def _cell_at(table, code):
    if code <= 0:
        return -1
    s = _slot(table, code, table.shape[0] - 1)
    return table[s, 1] if table[s, 0] == code else -1


#: bits of the occupancy filter per occupied cell (about 1 in 16 empty cells passes it)
FILTER_BITS = 16


@_njit
def _filter_bit(code, shift):
    return (np.uint64(code) * np.uint64(0xD6E8FEB86659FD93)) >> np.uint64(shift)


@_njit
def _occupancy_filter(table, n_cells):
    """``(words, shift)``: a bit per hashed code, set for every occupied cell.

    Most neighbour cells are empty (distinct rows: about one occupied cell in ``3**m``), and a
    miss in the hash table is a random read in an array of 32 bytes per row.  The filter holds
    :data:`FILTER_BITS` bits per cell, small enough to stay in a core's cache, so most misses
    end there."""
    log_bits = 6
    while (1 << log_bits) < FILTER_BITS * n_cells:
        log_bits += 1
    words = np.zeros((1 << log_bits) >> 6, dtype=np.uint64)
    shift = 64 - log_bits
    for s in range(table.shape[0]):
        if table[s, 0] != 0:
            bit = _filter_bit(table[s, 0], shift)
            words[bit >> np.uint64(6)] |= np.uint64(1) << (bit & np.uint64(63))
    return words, shift


@_njit
def _occupied_cell(table, words, shift, code):
    """Dense id of the cell with this code, -1 when no row lies in it."""
    if code <= 0:
        return -1
    bit = _filter_bit(code, shift)
    if not (words[bit >> np.uint64(6)] >> (bit & np.uint64(63))) & np.uint64(1):
        return -1
    return _cell_at(table, code)


# -- the greedy, block by block ----------------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def _earliest_before(
    rows, means, tolerances, probes, scale, gamma, reach, start, stop, cells, sides, finite,
    cell_of, table, words, shift, offsets, visits, visit_start, leaders, limit, head, after,
    found,
    neighbours, n_neighbours,
):
    """For each row of ``[start, stop)``: its occupied neighbour cells
    (``neighbours[t, :n_neighbours[t]]``), and the earliest leader among positions ``< limit``
    within gamma of it (-1 when none)."""
    for t in numba.prange(stop - start):
        j = start + t
        best = -1
        count = 0
        if finite[j]:
            for v in range(visit_start[sides[j]], visit_start[sides[j] + 1]):
                o = visits[v]
                if o == 0:
                    cell = cell_of[j]
                else:
                    cell = _occupied_cell(table, words, shift, cells[j] + offsets[o])
                    if cell < 0:
                        continue
                neighbours[t, count] = cell
                count += 1
                p = head[cell]
                while p >= 0 and p < limit and (best < 0 or p < best):
                    if _is_within(rows, means, tolerances, probes, scale, gamma, reach, j,
                                  leaders[p]):
                        best = p
                        break
                    p = after[p]
        n_neighbours[t] = count
        found[t] = best


@_njit
def _index_leader(cell, position, head, lists, after, block):
    if lists[cell, TAIL] < 0:
        head[cell] = position
    else:
        after[lists[cell, TAIL]] = position
    lists[cell, TAIL] = position
    if lists[cell, STAMP] != block:
        lists[cell, STAMP] = block
        lists[cell, BLOCK_FIRST] = position


@_njit
def _resolve_block(
    rows, means, tolerances, probes, scale, gamma, reach, start, stop, finite, cell_of,
    found, neighbours, n_neighbours, leaders, n_leaders, head, lists, after, block, assign,
    first_new,
):
    """Walk the block in order: rows without an earlier leader are checked against the leaders
    this block opened, and open a bundle when none is within gamma.  Returns the leader count
    and the pair tests made (the work the block left to one thread)."""
    tests = 0
    for t in range(stop - start):
        j = start + t
        best = found[t]
        if best < 0 and finite[j]:
            for o in range(n_neighbours[t]):
                cell = neighbours[t, o]
                if lists[cell, STAMP] != block:
                    continue
                p = lists[cell, BLOCK_FIRST]
                while p >= 0 and (best < 0 or p < best):
                    tests += 1
                    if _is_within(rows, means, tolerances, probes, scale, gamma, reach, j,
                                  leaders[p]):
                        best = p
                        break
                    p = after[p]
        if best < 0:
            leaders[n_leaders] = j
            best = n_leaders
            if finite[j]:
                _index_leader(cell_of[j], best, head, lists, after, block)
            n_leaders += 1
        assign[j - first_new] = best
    return n_leaders, tests


@_njit
def _index_leaders(leaders, n_leaders, finite, cell_of, head, lists, after):
    """Index the leaders of earlier batches (streaming), in opening order."""
    for position in range(n_leaders):
        if finite[leaders[position]]:
            _index_leader(cell_of[leaders[position]], position, head, lists, after, -1)


def greedy_threshold(rows, means, tolerances, first_new, leaders, n_leaders, assign, scale,
                     gamma):
    """Greedy ``threshold``-mode assignment of ``rows[first_new:]`` to leaders.

    ``leaders[:n_leaders]`` are row indices of the existing leaders (in opening order; rows of
    earlier batches in streaming); ``assign[j - first_new]`` receives the position of sample
    j's leader in ``leaders``, which new leaders are appended to.  Returns the leader count.
    """
    n_rows = rows.shape[0]
    probes = probe_columns(rows)
    reach = threshold_reach(scale, gamma)
    finite, cells, strides, sides = grid_keys(rows, means, tolerances, probes, scale, gamma)
    offsets, needs = neighbour_offsets(strides)
    table, cell_of, n_cells = _cell_table(cells, finite)
    words, shift = _occupancy_filter(table, n_cells)
    # per cell: its first leader (all the parallel search reads), and in one cache line its last
    # leader, the last block that indexed a leader there and its first leader in that block
    head = np.full(n_cells, -1, dtype=np.int64)
    lists = np.full((n_cells, 3), -1, dtype=np.int64)
    visits, visit_start = _visits(needs, len(strides))
    after = np.full(leaders.shape[0], -1, dtype=np.int64)
    _index_leaders(leaders, n_leaders, finite, cell_of, head, lists, after)
    most = min(MAX_BLOCK, n_rows - first_new)
    found = np.empty(most, dtype=np.int64)
    neighbours = np.empty((most, offsets.size), dtype=np.int32)
    n_neighbours = np.empty(most, dtype=np.int64)
    start, size, block = first_new, BLOCK, 0
    while start < n_rows:
        stop = min(start + size, n_rows)
        _earliest_before(
            rows, means, tolerances, probes, scale, gamma, reach, start, stop, cells, sides,
            finite, cell_of, table, words, shift, offsets, visits, visit_start, leaders, n_leaders,
            head, after, found, neighbours, n_neighbours,
        )
        n_leaders, serial_tests = _resolve_block(
            rows, means, tolerances, probes, scale, gamma, reach, start, stop, finite, cell_of,
            found, neighbours, n_neighbours, leaders, n_leaders, head, lists, after, block,
            assign, first_new,
        )
        # Each round waits for every thread, and on a busy machine that wait costs more than
        # the work of a small block: while the rows leave little to the one thread (few pair
        # tests against the block's own leaders), take twice the rows per round.
        size = min(2 * size, most) if serial_tests <= stop - start else BLOCK
        start, block = stop, block + 1
    return n_leaders


__all__ = ["greedy_threshold", "grid_keys", "probe_columns", "threshold_reach", "BLOCK"]
