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
(each key bucketed by ``_bucket_run``: keys within the key's width lie in the same or adjacent
buckets), so a pair within gamma lies in the same or an adjacent cell of the grid: at most
``3**m`` cells, found in a hash table of the occupied cells.  The number of occupied cells
grows with ``N`` (up to ``B**m``), so for rows that spread on a few keys the leaders per
neighbourhood stay a handful and the run is near-linear.  Keys are chosen greedily on a sample
of rows (the mean, signed sums over all or :data:`SUBSET` columns, the most variable columns;
see :func:`grid_keys`): each added key must at least halve the sample pairs that share a
neighbourhood.  Rows that tie on
every key (values spread less than ``W`` in every direction the keys see) still fall back to
comparing more pairs, never to a different answer.

The first-leader rule.  Each cell lists its leaders in opening order, so the first leader
within gamma in one cell is the cell's earliest; over the neighbour cells the earliest of those
is taken, walking each list only up to the best position found so far.

Parallel blocks.  Rows are assigned in blocks of :data:`BLOCK` rows.  In parallel, each row of
the block finds its earliest leader among those opened before the block (read-only index).  Then
one thread walks the block in order: a row that found such a leader keeps it (every leader the
block opens comes later), the others are checked against the leaders opened earlier in this
block only (a cell's in-block leaders are the tail of its list, stamped per block) and open a
bundle when none is within gamma.  That is the sequential greedy, with most pair tests
(those against earlier leaders) done on every core.

A row with NaN or Inf is within gamma of nothing: it opens a bundle and is never indexed.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _cache  # noqa: F401 - before any cache=True kernel: where the cache lives
from . import _formats

_njit = numba.njit(cache=True, nogil=True)

#: rows assigned per parallel round
BLOCK = 2048
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
    """Indices of the ``count`` columns with the largest spread (max - min) over the rows."""
    n_features = rows.shape[1]
    if n_features <= count:
        return np.arange(n_features, dtype=np.int64)
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
    """``(finite, cells, n_cells_bound, strides)``: the grid cell of every row.

    ``finite[i]``: row i has no NaN/Inf (only those are indexed).  ``cells[i]`` is the code
    ``sum_q (bucket_q(i) + 1) * strides[q]`` of its cell, so the cell next to it on key ``q``
    is ``cells[i] +- strides[q]``; rows that are not indexed have code 0, which no indexed row
    has.  The keys are chosen on a sample of rows as described in the module docstring.
    """
    n_rows, n_features = rows.shape
    finite = np.isfinite(means)
    suspicious = np.flatnonzero(~finite)  # NaN/Inf in the row, or a sum that overflowed
    if suspicious.size:
        _finite_rows(rows, suspicious.astype(np.int64), finite)
    indexed = np.flatnonzero(finite)
    cells = np.zeros(n_rows, dtype=np.int64)
    if not indexed.size:
        return finite, cells, np.zeros(0, dtype=np.int64)
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
    for q in chosen:
        values, width = keys[q]
        column = values(indexed)
        if not np.isfinite(column).all():
            continue  # a signed sum that overflowed: no bound holds for it
        order = np.argsort(column)  # equal keys share a bucket, in whatever order they sort
        ids = np.empty(indexed.size, dtype=np.int64)
        n_buckets = _bucket_run(np.ascontiguousarray(column[order]), width, ids)
        if stride * (n_buckets + 2) >= 2**62:
            break  # codes must fit in int64 (only with more than a million rows)
        bucket = np.empty(indexed.size, dtype=np.int64)
        bucket[order] = ids
        cells[indexed] += (bucket + 1) * stride
        strides.append(stride)
        stride *= n_buckets + 2
    if not strides:
        cells[indexed] = 1  # one cell for every indexed row
    return finite, cells, np.array(strides, dtype=np.int64)


def neighbour_offsets(strides):
    """Code differences between a cell and the cells next to it on every key (itself first)."""
    offsets = np.zeros(1, dtype=np.int64)
    for stride in strides:
        offsets = np.concatenate([offsets, offsets - stride, offsets + stride])
    return offsets


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


# -- the greedy, block by block ----------------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def _earliest_before(
    rows, means, tolerances, probes, scale, gamma, reach, start, stop, cells, finite, table,
    offsets, leaders, limit, head, after, found, neighbours,
):
    """For each row of ``[start, stop)``: its neighbour cells, and the earliest leader among
    positions ``< limit`` within gamma of it (-1 when none)."""
    for t in numba.prange(stop - start):
        j = start + t
        best = -1
        if finite[j]:
            for o in range(offsets.shape[0]):
                cell = _cell_at(table, cells[j] + offsets[o])
                neighbours[t, o] = cell
                if cell < 0:
                    continue
                p = head[cell]
                while p >= 0 and p < limit and (best < 0 or p < best):
                    if _is_within(rows, means, tolerances, probes, scale, gamma, reach, j,
                                  leaders[p]):
                        best = p
                        break
                    p = after[p]
        found[t] = best


@_njit
def _index_leader(cell, position, head, tail, after, stamp, block_first, block):
    if tail[cell] < 0:
        head[cell] = position
    else:
        after[tail[cell]] = position
    tail[cell] = position
    if stamp[cell] != block:
        stamp[cell] = block
        block_first[cell] = position


@_njit
def _resolve_block(
    rows, means, tolerances, probes, scale, gamma, reach, start, stop, finite, cell_of,
    found, neighbours, leaders, n_leaders, head, tail, after, stamp, block_first, block,
    assign, first_new,
):
    """Walk the block in order: rows without an earlier leader are checked against the leaders
    this block opened, and open a bundle when none is within gamma.  Returns the leader
    count."""
    for t in range(stop - start):
        j = start + t
        best = found[t]
        if best < 0 and finite[j]:
            for o in range(neighbours.shape[1]):
                cell = neighbours[t, o]
                if cell < 0 or stamp[cell] != block:
                    continue
                p = block_first[cell]
                while p >= 0 and (best < 0 or p < best):
                    if _is_within(rows, means, tolerances, probes, scale, gamma, reach, j,
                                  leaders[p]):
                        best = p
                        break
                    p = after[p]
        if best < 0:
            leaders[n_leaders] = j
            best = n_leaders
            if finite[j]:
                _index_leader(cell_of[j], best, head, tail, after, stamp, block_first, block)
            n_leaders += 1
        assign[j - first_new] = best
    return n_leaders


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
    finite, cells, strides = grid_keys(rows, means, tolerances, probes, scale, gamma)
    offsets = neighbour_offsets(strides)
    table, cell_of, n_cells = _cell_table(cells, finite)
    head = np.full(n_cells, -1, dtype=np.int64)
    tail = np.full(n_cells, -1, dtype=np.int64)
    stamp = np.full(n_cells, -1, dtype=np.int64)
    block_first = np.full(n_cells, -1, dtype=np.int64)
    after = np.full(leaders.shape[0], -1, dtype=np.int64)
    for position in range(n_leaders):
        if finite[leaders[position]]:
            _index_leader(cell_of[leaders[position]], position, head, tail, after, stamp,
                          block_first, -1)
    found = np.empty(BLOCK, dtype=np.int64)
    neighbours = np.full((BLOCK, offsets.size), -1, dtype=np.int64)
    for block, start in enumerate(range(first_new, n_rows, BLOCK)):
        stop = min(start + BLOCK, n_rows)
        _earliest_before(
            rows, means, tolerances, probes, scale, gamma, reach, start, stop, cells, finite,
            table, offsets, leaders, n_leaders, head, after, found, neighbours,
        )
        n_leaders = _resolve_block(
            rows, means, tolerances, probes, scale, gamma, reach, start, stop, finite, cell_of,
            found, neighbours, leaders, n_leaders, head, tail, after, stamp, block_first, block,
            assign, first_new,
        )
    return n_leaders


__all__ = ["greedy_threshold", "grid_keys", "probe_columns", "threshold_reach", "BLOCK"]
