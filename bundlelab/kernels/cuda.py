"""Numba CUDA kernels: the same fingerprints, exact comparisons and threshold assignment as
``kernels/cpu.py``, bit for bit, on rows that already live in GPU memory.

Layout contract: the one of ``kernels/cpu.py`` (C-contiguous (n_samples, n_features) float32 or
float64 rows; float16/bfloat16 arrive as exact float32; the native kernels compute in the dtype
of the constants ``w, alpha, invb`` (the update format), casting each activation to it first;
the emulated ones round every operation, and a wider activation itself, to the narrow format).
Results are returned as host numpy arrays.

How the work is split:

* fingerprints, row means, exact pair comparison: a block of ``BLOCK`` threads holds
  ``BLOCK // lanes`` *row groups*; the ``lanes`` threads of a group stride over one row (so
  consecutive threads load consecutive values: coalesced), keep private partial sums, and the
  group reduces them in shared memory at the end.  A fingerprint thread hashes whole 64-bit
  words of the row (one float64 or two float32, see ``_hashing.py``); the lane sums are
  wrap-around uint64 sums, so any split of the words gives the CPU's result exactly, and the
  group's first thread applies the final mix to the reduced sums.
* threshold mode: the GPU answers "is row j within gamma of row c" for many pairs at once (mean
  pruning first, then the exact value test); the inherently sequential greedy runs on the host
  over those answers, chunk by chunk (see :meth:`CudaBackend.threshold_assign`).

Bit-exactness with the CPU needs two precautions.  ``ptxas`` fuses a multiply followed by an add
into one FMA (a single rounding) unless the multiply carries an explicit rounding mode, so the
transform uses ``_mul_rn`` / ``_sub_rn`` (libdevice's ``__nv_fmul_rn`` etc.).  And the constants
are passed in the update format's dtype and every activation is cast to it before the first
operation, so a float32 computation is never promoted to float64.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as Python on numpy
scalars; the plain-Python bodies of ``_mul_rn``, ``_sub_rn`` and ``_bits`` are what runs there.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
from numba import config, cuda, types
from numba.core.extending import overload
from numba.cuda import libdevice

from . import _cache

# numba-cuda keeps its own copy of the caching module; CPU's was set up by importing _cache.
_cache.install("numba.cuda.core.caching")

from . import _formats, _hashing
from .._errors import BundleLabError
from ._formats import FORMATS, needs_rounding
from ._protocol import Transform

_SIMULATOR = bool(config.ENABLE_CUDASIM)

#: threads per block of the row-group kernels
BLOCK = 256
#: values each lane should at least handle before a row gets more lanes (amortises the reduction)
VALUES_PER_LANE = 8
#: rows of threshold mode assigned per round of GPU work + host greedy
CHUNK = 1024
#: threads per block scanning the leaders for one row (threshold mode)
LEADER_THREADS = 128
#: side of the square blocks of the pairwise kernel (threshold mode)
PAIR_TILE = 16

_device_fn = cuda.jit(device=True)

term = _device_fn(_hashing.term)
finish = _device_fn(_hashing.finish)
key = _device_fn(_hashing.key)
round_to_format = _device_fn(_formats.round_to_format)


# -- scalar helpers with a CUDA lowering ------------------------------------------------------
# The Python bodies are the semantics (and what the simulator runs); the CUDA overloads emit
# multiplies and subtractions with an explicit rounding mode, which ptxas never contracts into
# an FMA, and bit casts that cost no instruction.


def _mul_rn(x, y):
    """``x * y`` rounded once to the operands' format."""
    return x * y


def _sub_rn(x, y):
    """``x - y`` rounded once to the operands' format."""
    return x - y


def _bits(t):
    """Bit pattern of the float ``t`` as a uint64 (float32 patterns zero-extended)."""
    return np.uint64(t.view(np.uint32 if t.dtype.itemsize == 4 else np.uint64))


def _values_per_word(w):
    """Values of the update format (the dtype of ``w``) per 64-bit word of the fingerprint:
    1 (float64) or 2 (float32)."""
    return 8 // w.dtype.itemsize


def _cast_like(v, w):
    """The activation ``v`` converted to the dtype of ``w`` (round to nearest-even when it
    narrows, exact when it widens)."""
    return type(w)(v)


@overload(_mul_rn, target="cuda")
def _mul_rn_cuda(x, y):
    if x == types.float32:
        return lambda x, y: libdevice.fmul_rn(x, y)
    return lambda x, y: libdevice.dmul_rn(x, y)


@overload(_sub_rn, target="cuda")
def _sub_rn_cuda(x, y):
    if x == types.float32:
        return lambda x, y: libdevice.fsub_rn(x, y)
    # libdevice has no dsub_rn; x + (-y) is IEEE subtraction exactly (signed zeros included)
    return lambda x, y: libdevice.dadd_rn(x, -y)


@overload(_bits, target="cuda")
def _bits_cuda(t):
    if t == types.float32:
        # via uint32, so the pattern is zero-extended (float_as_int returns a signed int32)
        return lambda t: np.uint64(np.uint32(libdevice.float_as_int(t)))
    return lambda t: np.uint64(libdevice.double_as_longlong(t))


@overload(_values_per_word, target="cuda")
def _values_per_word_cuda(w):
    per_word = 64 // w.bitwidth  # a compile-time constant, so the loops unroll
    return lambda w: per_word


@overload(_cast_like, target="cuda")
def _cast_like_cuda(v, w):
    if w == types.float32:
        return lambda v, w: np.float32(v)  # cvt.rn: round to nearest-even, as numpy
    return lambda v, w: np.float64(v)


# -- device functions -------------------------------------------------------------------------


@_device_fn
def _native_value(v, w, alpha, invb):
    """``w - (v * alpha) * invb`` in the dtype of the operands (as ``cpu.fingerprints_native``)."""
    return _sub_rn(w, _mul_rn(_mul_rn(v, alpha), invb))


@_device_fn
def _emulated_value(v, w, alpha, invb, precision, emin, max_finite, round_input):
    """As ``cpu._emulated_value``: each operation in float64, rounded to the narrow format
    (and the activation first, when ``round_input``: it may lie outside the format)."""
    a = np.float64(v)
    if round_input:
        a = round_to_format(a, precision, emin, max_finite)
    scaled = round_to_format(_mul_rn(a, alpha), precision, emin, max_finite)
    step = round_to_format(_mul_rn(scaled, invb), precision, emin, max_finite)
    return round_to_format(_sub_rn(w, step), precision, emin, max_finite)


@_device_fn
def _native_word(rows, row, m, w, alpha, invb):
    """Word ``m`` of the row's canonical transformed values (layout in ``_hashing.py``: one
    float64, or two float32 packed little-endian with a zero high half past the row's end;
    the update format, the dtype of ``w``, decides which), and whether one of its activations
    is NaN or +-inf."""
    zero = _cast_like(0, w)
    per_word = _values_per_word(w)
    x = np.uint64(0)
    bad = False
    for h in range(per_word):
        k = m * per_word + h
        if k < rows.shape[1]:
            v = rows[row, k]
            bad |= (v - v) != 0  # the activation is NaN or +-inf (not t: it may overflow)
            # + 0 turns -0.0 into +0.0 (and nothing else): equal bits iff IEEE-equal, NaN aside
            t = _native_value(_cast_like(v, w), w, alpha, invb) + zero
            x |= _bits(t) << np.uint64(32 * h)
    return x, bad


@_device_fn
def _emulated_word(rows, row, m, w, alpha, invb, precision, emin, max_finite, round_input):
    """:func:`_native_word` for narrow formats: two float32 (exact narrow values) per word."""
    x = np.uint64(0)
    bad = False
    for h in range(2):
        k = 2 * m + h
        if k < rows.shape[1]:
            v = rows[row, k]
            bad |= (v - v) != 0
            value = _emulated_value(v, w, alpha, invb, precision, emin, max_finite, round_input)
            t = np.float32(value) + np.float32(0.0)  # the conversion is exact
            x |= _bits(t) << np.uint64(32 * h)
    return x, bad


@_device_fn
def _row_group(n_rows):
    """(row, lane, lanes, slot, valid) of this thread: ``lanes`` threads share a row, ``slot``
    is the thread's place in the block's shared arrays; ``valid`` is False past the last row."""
    lane = cuda.threadIdx.x
    lanes = cuda.blockDim.x
    row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    slot = cuda.threadIdx.y * lanes + lane
    return row, lane, lanes, slot, row < n_rows


@_device_fn
def _reduce_row_group(x, y, flags, slot, lane, lanes):
    """Tree-reduce the shared partial sums ``x``, ``y`` (and OR ``flags``) of a row group into
    its lane 0.  Every thread of the block must call this (it synchronises the block)."""
    step = lanes // 2
    while step > 0:
        cuda.syncthreads()
        if lane < step:
            x[slot] += x[slot + step]
            y[slot] += y[slot + step]
            flags[slot] |= flags[slot + step]
        step //= 2
    cuda.syncthreads()


@_device_fn
def _or_row_group(flags, slot, lane, lanes):
    """:func:`_reduce_row_group` for the flags alone."""
    step = lanes // 2
    while step > 0:
        cuda.syncthreads()
        if lane < step:
            flags[slot] |= flags[slot + step]
        step //= 2
    cuda.syncthreads()


@_device_fn
def _is_candidate(means, tolerances, j, other, reach):
    """The mean pruning of ``cpu._may_be_within``, the same expressions in the same order."""
    gap = abs(means[j] - means[other])
    if gap <= reach + tolerances[j] + tolerances[other]:
        return True
    return not (math.isfinite(means[j]) and math.isfinite(means[other]))


@_device_fn
def _within(rows, j, other, probes, scale, gamma):
    """As ``cpu._within``: every value within gamma (NaN compares false and bundles nothing).
    The ``probes`` columns go first: rows that differ usually differ there."""
    for q in range(probes.shape[0]):
        k = probes[q]
        d = abs(np.float64(rows[j, k]) - np.float64(rows[other, k]))
        if not (d * scale <= gamma):
            return False
    for k in range(rows.shape[1]):
        d = abs(np.float64(rows[j, k]) - np.float64(rows[other, k]))
        if not (d * scale <= gamma):
            return False
    return True


# -- kernels ----------------------------------------------------------------------------------


@_device_fn
def _store_fingerprint(sum_a, sum_b, bad, slot, lane, lanes, valid, row, lane_a, lane_b, flag,
                       out, nonfinite):
    """Reduce the row group's partial lane sums and flags; its first thread finishes them
    (``_hashing.finish``, once per row) and writes the row."""
    sum_a[slot] = lane_a
    sum_b[slot] = lane_b
    bad[slot] = flag
    _reduce_row_group(sum_a, sum_b, bad, slot, lane, lanes)
    if valid and lane == 0:
        out[row, 0] = finish(sum_a[slot])
        out[row, 1] = finish(sum_b[slot])
        nonfinite[row] = bad[slot] != 0


@cuda.jit(cache=True)
def _fingerprints_native(rows, w, alpha, invb, base_a, base_b, tweak_a, tweak_b, out, nonfinite):
    """Row-group kernel: fingerprint of ``t = w - (a * alpha) * invb`` in the rows' dtype."""
    sum_a = cuda.shared.array(BLOCK, np.uint64)
    sum_b = cuda.shared.array(BLOCK, np.uint64)
    bad = cuda.shared.array(BLOCK, np.uint8)
    row, lane, lanes, slot, valid = _row_group(rows.shape[0])
    lane_a = np.uint64(0)
    lane_b = np.uint64(0)
    flag = np.uint8(0)
    if valid:
        n_words = -(-rows.shape[1] // _values_per_word(w))
        for m in range(lane, n_words, lanes):
            x, bad_word = _native_word(rows, row, m, w, alpha, invb)
            if bad_word:
                flag = np.uint8(1)
            pos = np.uint64(m)
            lane_a += term(x, key(base_a, tweak_a, pos))
            lane_b += term(x, key(base_b, tweak_b, pos))
    _store_fingerprint(sum_a, sum_b, bad, slot, lane, lanes, valid, row, lane_a, lane_b, flag,
                       out, nonfinite)


@cuda.jit(cache=True)
def _fingerprints_emulated(rows, w, alpha, invb, precision, emin, max_finite, round_input,
                           base_a, base_b, tweak_a, tweak_b, out, nonfinite):
    """Like :func:`_fingerprints_native` computed in a narrow format, hashed as float32."""
    sum_a = cuda.shared.array(BLOCK, np.uint64)
    sum_b = cuda.shared.array(BLOCK, np.uint64)
    bad = cuda.shared.array(BLOCK, np.uint8)
    row, lane, lanes, slot, valid = _row_group(rows.shape[0])
    lane_a = np.uint64(0)
    lane_b = np.uint64(0)
    flag = np.uint8(0)
    if valid:
        for m in range(lane, -(-rows.shape[1] // 2), lanes):
            x, bad_word = _emulated_word(rows, row, m, w, alpha, invb, precision, emin, max_finite,
                                         round_input)
            if bad_word:
                flag = np.uint8(1)
            pos = np.uint64(m)
            lane_a += term(x, key(base_a, tweak_a, pos))
            lane_b += term(x, key(base_b, tweak_b, pos))
    _store_fingerprint(sum_a, sum_b, bad, slot, lane, lanes, valid, row, lane_a, lane_b, flag,
                       out, nonfinite)


@cuda.jit(cache=True)
def _pairs_equal_native(rows, first, second, w, alpha, invb, out):
    """Row-group kernel over pairs: ``out[p]`` = transformed rows first[p], second[p] are equal."""
    differs = cuda.shared.array(BLOCK, np.uint8)
    p, lane, lanes, slot, valid = _row_group(first.shape[0])
    flag = np.uint8(0)
    if valid:
        i = first[p]
        j = second[p]
        for k in range(lane, rows.shape[1], lanes):
            ti = _native_value(_cast_like(rows[i, k], w), w, alpha, invb)
            tj = _native_value(_cast_like(rows[j, k], w), w, alpha, invb)
            if not (ti == tj):
                flag = np.uint8(1)
    differs[slot] = flag
    _or_row_group(differs, slot, lane, lanes)
    if valid and lane == 0:
        out[p] = differs[slot] == 0


@cuda.jit(cache=True)
def _pairs_equal_emulated(rows, first, second, w, alpha, invb, precision, emin, max_finite,
                          round_input, out):
    """Like :func:`_pairs_equal_native` computed in a narrow format."""
    differs = cuda.shared.array(BLOCK, np.uint8)
    p, lane, lanes, slot, valid = _row_group(first.shape[0])
    flag = np.uint8(0)
    if valid:
        i = first[p]
        j = second[p]
        for k in range(lane, rows.shape[1], lanes):
            ti = _emulated_value(rows[i, k], w, alpha, invb, precision, emin, max_finite,
                                 round_input)
            tj = _emulated_value(rows[j, k], w, alpha, invb, precision, emin, max_finite,
                                 round_input)
            if not (ti == tj):
                flag = np.uint8(1)
    differs[slot] = flag
    _or_row_group(differs, slot, lane, lanes)
    if valid and lane == 0:
        out[p] = differs[slot] == 0


@cuda.jit(cache=True)
def _row_means(rows, means, tolerances, nonfinite):
    """Row-group kernel: float64 row means, their error bounds and a non-finite flag.

    The tree order differs from the CPU's sequential sum, so the means may differ in the last
    bits; the tolerance ``4 u sum|a|`` still bounds the error of the mean, because any summation
    order errs by at most ``(n - 1) u sum|a|`` and the mean divides that by n.  (Only a row
    whose float64 sum overflows, |values| near 1e308, can prune differently from the CPU.)
    """
    total = cuda.shared.array(BLOCK, np.float64)
    total_abs = cuda.shared.array(BLOCK, np.float64)
    bad = cuda.shared.array(BLOCK, np.uint8)
    row, lane, lanes, slot, valid = _row_group(rows.shape[0])
    partial = 0.0
    partial_abs = 0.0
    flag = np.uint8(0)
    if valid:
        for k in range(lane, rows.shape[1], lanes):
            v = np.float64(rows[row, k])
            if (v - v) != 0.0:
                flag = np.uint8(1)
            partial += v
            partial_abs += abs(v)
    total[slot] = partial
    total_abs[slot] = partial_abs
    bad[slot] = flag
    _reduce_row_group(total, total_abs, bad, slot, lane, lanes)
    if valid and lane == 0:
        means[row] = total[slot] / rows.shape[1]
        tolerances[row] = 4.0 * 2.0**-53 * total_abs[slot] + 1e-300
        nonfinite[row] = bad[slot] != 0


@cuda.jit(cache=True)
def _earliest_leader(rows, means, tolerances, probes, first_row, leaders, n_leaders, reach, scale,
                     gamma, found):
    """One block per row ``j = first_row + blockIdx.x``: ``found[blockIdx.x]`` = position of the
    earliest leader that passes the pruning and is within gamma of row j, or -1.

    The block tests the leaders tile by tile in position order and stops after the first tile
    with a hit, whose smallest position is the answer.
    """
    best = cuda.shared.array(1, np.int64)
    j = first_row + cuda.blockIdx.x
    if cuda.threadIdx.x == 0:
        best[0] = n_leaders
    cuda.syncthreads()
    for start in range(0, n_leaders, cuda.blockDim.x):
        pos = start + cuda.threadIdx.x
        hit = 0
        if pos < n_leaders:
            leader = leaders[pos]
            if _is_candidate(means, tolerances, j, leader, reach):
                if _within(rows, j, leader, probes, scale, gamma):
                    hit = 1
                    cuda.atomic.min(best, 0, pos)
        if cuda.syncthreads_or(hit):  # same answer in every thread: the break is uniform
            break
    if cuda.threadIdx.x == 0:
        found[cuda.blockIdx.x] = best[0] if best[0] < n_leaders else -1


@cuda.jit(cache=True)
def _pairs_within(rows, means, tolerances, probes, candidates, reach, scale, gamma, within):
    """``within[a, b]`` for b < a: row candidates[b] passes the pruning and is within gamma of
    row candidates[a] (a later row).  Entries with b >= a are left unwritten."""
    b, a = cuda.grid(2)
    if a < candidates.shape[0] and b < a:
        j = candidates[a]
        other = candidates[b]
        within[a, b] = _is_candidate(means, tolerances, j, other, reach) and _within(
            rows, j, other, probes, scale, gamma
        )


@cuda.jit(cache=True)
def _column_spread(rows, spread):
    """One thread per column (coalesced across threads): max - min over the rows, +inf where a
    NaN makes it undefined.  Only orders the probe columns, so it need not match the CPU's."""
    k = cuda.grid(1)
    if k < rows.shape[1]:
        low = np.float64(rows[0, k])
        high = low
        has_nan = low != low
        for i in range(1, rows.shape[0]):
            v = np.float64(rows[i, k])
            has_nan |= v != v
            if v < low:
                low = v
            if v > high:
                high = v
        width = high - low  # NaN for inf - inf
        spread[k] = np.inf if has_nan or width != width else width


# -- host side --------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _greedy_open_rows(open_rows, within, chunk_start, leaders, n_leaders, found):
    """The sequential greedy over the rows of a chunk that no earlier leader took.

    Row ``open_rows[a]`` joins the earliest row it is within among those of this chunk that
    opened a bundle before it (``within[a, b]``), else opens one.  ``found`` (indexed by row -
    ``chunk_start``) and ``leaders`` are updated; returns the new leader count.
    """
    opened = np.empty(open_rows.shape[0], dtype=np.int64)  # index a of each new leader
    first_position = n_leaders
    n_opened = 0
    for a in range(open_rows.shape[0]):
        position = -1
        for q in range(n_opened):
            if within[a, opened[q]]:
                position = first_position + q
                break
        if position < 0:
            opened[n_opened] = a
            position = first_position + n_opened
            leaders[position] = open_rows[a]
            n_opened += 1
        found[open_rows[a] - chunk_start] = position
    return first_position + n_opened


def _device_rows(rows):
    """A Numba device array for ``rows``: zero-copy for GPU arrays, a copy for host arrays."""
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

    if is_cuda_ndarray(rows):
        return rows
    if isinstance(rows, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(rows))
    return cuda.as_cuda_array(rows)  # CuPy, torch, ... through __cuda_array_interface__


def _row_groups(n_values: int, n_rows: int) -> tuple[int, tuple[int, int]]:
    """(grid, block) of a row-group kernel over ``n_rows`` rows of ``n_values`` values.

    A row gets a warp at least (so each load instruction reads contiguous memory), and more
    lanes, up to the whole block, while each would still handle ``VALUES_PER_LANE`` values.
    """
    lanes = 32
    while lanes < BLOCK and lanes * VALUES_PER_LANE < n_values:
        lanes *= 2
    rows_per_block = BLOCK // lanes
    return -(-n_rows // rows_per_block), (lanes, rows_per_block)


def _launch(kernel, grid, block, *args) -> None:
    """``kernel[grid, block](*args)``.  Under the simulator the kernels run on numpy scalars,
    whose intended wrap-around (uint64 hash sums) and inf - inf raise RuntimeWarnings that the
    GPU would not; they are silenced there."""
    if not _SIMULATOR:
        kernel[grid, block](*args)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning)
        kernel[grid, block](*args)


def _probe_columns(rows, count: int = 16) -> np.ndarray:
    """Indices of the ``count`` columns with the largest spread, as ``cpu.probe_columns``."""
    n_features = rows.shape[1]
    if n_features <= count:
        return np.arange(n_features, dtype=np.int64)
    spread = cuda.device_array(n_features, dtype=np.float64)
    _launch(_column_spread, -(-n_features // BLOCK), BLOCK, rows, spread)
    order = np.argsort(-spread.copy_to_host(), kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def _device_keys(n_words: int) -> tuple:
    """``(base_a, base_b, tweak_a, tweak_b)`` of ``_hashing.word_keys`` on the device (a few
    KiB: every row reads them, from the cache)."""
    base, tweak = _hashing.word_keys(n_words)
    return tuple(cuda.to_device(np.ascontiguousarray(v)) for v in (*base, *tweak))


def _native_constants(fmt, transform):
    """``w, alpha, invb`` as numpy scalars of the update format (as ``cpu._native_constants``):
    their dtype selects the format the native kernels compute and hash in."""
    cast = np.float32 if fmt.name == "float32" else np.float64
    return (cast(transform.weight_amplitude), cast(transform.learning_rate),
            cast(transform.inverse_batch_size))


class CudaBackend:
    """Numba CUDA kernels; results bit-identical to :class:`~bundlelab.kernels.cpu.CpuBackend`.

    One exception: the raw fingerprint of a row whose transformed values contain NaN.  NaN bit
    patterns are hardware-specific (a GPU returns the canonical NaN, x86 propagates the input's
    payload); such rows never bundle, so bundles and ids are identical all the same.
    """

    name = "cuda"

    def __init__(self) -> None:
        if not cuda.is_available():
            raise BundleLabError(
                "no usable CUDA GPU: numba.cuda found no driver or device; pass device='cpu' "
                "(CLI: --device cpu), or install the NVIDIA driver and `pip install bundlelab[gpu]`"
            )

    def fingerprints(self, rows, fmt, transform, source=None):
        rows = _device_rows(rows)
        n = rows.shape[0]
        out = cuda.device_array((n, 2), dtype=np.uint64)
        nonfinite = cuda.device_array(n, dtype=np.bool_)
        grid, block = _row_groups(rows.shape[1], n)
        keys = _device_keys(_hashing.n_words(rows.shape[1], fmt.name))
        if fmt.native:
            _launch(
                _fingerprints_native, grid, block, rows, *_native_constants(fmt, transform),
                *keys, out, nonfinite,
            )
        else:
            _launch(
                _fingerprints_emulated, grid, block, rows, transform.weight_amplitude,
                transform.learning_rate, transform.inverse_batch_size, fmt.precision, fmt.emin,
                fmt.max_finite, needs_rounding(source, fmt), *keys, out, nonfinite,
            )
        return out.copy_to_host(), nonfinite.copy_to_host()

    def pairs_equal(self, rows, first, second, fmt, transform, source=None):
        n_pairs = first.shape[0]
        if n_pairs == 0:
            return np.empty(0, dtype=np.bool_)
        rows = _device_rows(rows)
        first = cuda.to_device(np.ascontiguousarray(first, dtype=np.int64))
        second = cuda.to_device(np.ascontiguousarray(second, dtype=np.int64))
        out = cuda.device_array(n_pairs, dtype=np.bool_)
        grid, block = _row_groups(rows.shape[1], n_pairs)
        if fmt.native:
            _launch(
                _pairs_equal_native, grid, block, rows, first, second,
                *_native_constants(fmt, transform), out,
            )
        else:
            _launch(
                _pairs_equal_emulated, grid, block, rows, first, second,
                transform.weight_amplitude, transform.learning_rate,
                transform.inverse_batch_size, fmt.precision, fmt.emin, fmt.max_finite,
                needs_rounding(source, fmt), out,
            )
        return out.copy_to_host()

    def row_means(self, rows):
        rows = _device_rows(rows)
        n = rows.shape[0]
        means = cuda.device_array(n, dtype=np.float64)
        tolerances = cuda.device_array(n, dtype=np.float64)
        nonfinite = cuda.device_array(n, dtype=np.bool_)
        grid, block = _row_groups(rows.shape[1], n)
        _launch(_row_means, grid, block, rows, means, tolerances, nonfinite)
        return means.copy_to_host(), tolerances.copy_to_host(), nonfinite.copy_to_host()

    def threshold_assign(
        self, rows, means, tolerances, first_new, leaders, n_leaders, scale, gamma
    ):
        """Greedy threshold assignment with the same result as ``cpu.greedy_threshold``.

        Chunk by chunk (``CHUNK`` rows): the GPU finds, for every row, the earliest leader
        opened before the chunk that it is within (:func:`_earliest_leader`); for the rows left
        over it tests every pair among them (:func:`_pairs_within`); the host then runs the
        sequential greedy over those answers (:func:`_greedy_open_rows`).  Leaders opened
        before the chunk precede, in position, every leader the chunk opens, so this is
        exactly "join the earliest leader within gamma, else open a bundle".
        """
        rows = _device_rows(rows)
        n = rows.shape[0]
        assign = np.empty(n - first_new, dtype=np.int64)
        n_leaders = int(n_leaders)
        if first_new >= n:
            return assign, n_leaders
        reach = _formats.threshold_reach(scale, gamma)  # as cpu.greedy_threshold
        context = (  # the leading arguments of both pair kernels
            rows,
            cuda.to_device(np.ascontiguousarray(means, dtype=np.float64)),
            cuda.to_device(np.ascontiguousarray(tolerances, dtype=np.float64)),
            cuda.to_device(_probe_columns(rows)),
        )
        d_leaders = cuda.device_array(n, dtype=np.int64)  # leaders only ever append
        on_device = 0
        for start in range(first_new, n, CHUNK):
            stop = min(start + CHUNK, n)
            found = np.full(stop - start, -1, dtype=np.int64)
            if n_leaders:
                if on_device < n_leaders:
                    d_leaders[on_device:n_leaders].copy_to_device(
                        np.ascontiguousarray(leaders[on_device:n_leaders], dtype=np.int64)
                    )
                    on_device = n_leaders
                d_found = cuda.device_array(stop - start, dtype=np.int64)
                threads = min(LEADER_THREADS, 32 * -(-n_leaders // 32))
                _launch(
                    _earliest_leader, stop - start, threads, *context, start, d_leaders,
                    n_leaders, reach, scale, gamma, d_found,
                )
                found = d_found.copy_to_host()
            open_rows = start + np.flatnonzero(found < 0)
            if open_rows.size:
                within = _within_open_rows(context, open_rows, reach, scale, gamma)
                n_leaders = int(
                    _greedy_open_rows(open_rows, within, start, leaders, n_leaders, found)
                )
            assign[start - first_new:stop - first_new] = found
        return assign, n_leaders


def _within_open_rows(context, open_rows, reach, scale, gamma) -> np.ndarray:
    """Host bool matrix: ``[a, b]`` (b < a) = open row b is a candidate leader within gamma of
    open row a (see :func:`_pairs_within`); the rest is unspecified."""
    n_open = open_rows.shape[0]
    within = cuda.device_array((n_open, n_open), dtype=np.bool_)
    if n_open > 1:
        side = -(-n_open // PAIR_TILE)
        _launch(
            _pairs_within, (side, side), (PAIR_TILE, PAIR_TILE), *context,
            cuda.to_device(open_rows.astype(np.int64)), reach, scale, gamma, within,
        )
    return within.copy_to_host()


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for every (storage dtype, update format)
    pair on a tiny input."""
    backend = CudaBackend()
    for dtype, fmt in (
        (np.float32, FORMATS["float32"]),
        (np.float64, FORMATS["float64"]),
        (np.float32, FORMATS["float16"]),
        (np.float32, FORMATS["float64"]),  # narrow or float32 activations, float64 updates
        (np.float64, FORMATS["float32"]),  # float64 activations, float32 updates
        (np.float64, FORMATS["float16"]),
    ):
        rows = cuda.to_device(np.zeros((2, 3), dtype=dtype))
        transform = Transform.for_format(fmt, 1.0, 1.0, 1)
        backend.fingerprints(rows, fmt, transform)
        backend.pairs_equal(rows, np.zeros(1, np.int64), np.ones(1, np.int64), fmt, transform)
        if fmt.native and np.dtype(dtype).name == fmt.name:
            means, tolerances, _ = backend.row_means(rows)
            # from scratch (pairs among new rows), then against an existing leader
            backend.threshold_assign(rows, means, tolerances, 0, np.empty(2, np.int64), 0, 1.0, 1.0)
            backend.threshold_assign(rows, means, tolerances, 1, np.zeros(2, np.int64), 1, 1.0, 1.0)
        _probe_columns(cuda.to_device(np.zeros((2, 17), dtype=dtype)))


__all__ = ["CudaBackend", "warm_up"]
