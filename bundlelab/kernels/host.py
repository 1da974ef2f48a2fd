"""The CPU backend the registry hands out: numpy for the first small inputs of a process, the
Numba kernels of ``kernels/cpu.py`` for everything else.

Loading Numba and bundlelab's cached kernels costs a fresh process about half a second (Numba's
import, its lowering registries with SciPy's BLAS, the cache load), which is most of what a
``bundlelab analyze`` of a small dump costs.  The fingerprint and the exact pair comparison in
the native formats (float32, float64) are short enough to write in vectorised numpy, bit for bit
the same: the same IEEE operations in the same order (``w - (a * alpha) * invb``, then ``+ 0.0``
for ``-0.0``), the same words and keys (``_hashing.py``), and sums mod 2**64, which do not
depend on their order.  numpy runs them two to ten times slower per byte than the compiled
kernels, so :class:`HostBackend` uses them only while the process has not loaded the compiled
kernels and only for the first :data:`NUMPY_BUDGET_BYTES` of rows it fingerprints (the exact
confirmation of a pass runs where the pass ran); after that (and
for the emulated float16/bfloat16 formats and threshold mode, always) it calls
:class:`~bundlelab.kernels.cpu.CpuBackend`, the reference.  A small job pays no compile-cache
cost; a large one or a long stream pays it once, as before.

``tests/test_kernels_host.py`` checks that both paths agree bit for bit.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _hashing

#: rows (bytes) a process hashes with numpy before it loads the compiled kernels instead.
#: Measured on 2 cores, a fresh process: numpy cost about 1.2-1.5 ms per MiB (0.5-0.7 since
#: it computes both lanes per call), loading Numba about 0.6-1 s and its kernels about 0.3 ms
#: per MiB, so numpy wins up to about 800 MiB at the older rate (256 MiB: 0.4 s against 1.1 s;
#: 1 GiB: 1.5 s against 1.3 s), further now.  At this budget a stream of small batches loses
#: at most about one Numba load to the slower numpy path.
NUMPY_BUDGET_BYTES = 512 << 20

#: 64-bit words per block of rows the numpy path works on: fewer numpy calls per row than
#: smaller blocks, its temporaries (both lanes: about 3 MiB a thread) still in the L3 cache
#: (measured on 2 cores, 128k x 256 float32: 80-120 ms, 130-170 ms at 1 << 15)
BLOCK_WORDS = 1 << 16
#: bytes of rows per thread of the numpy fingerprint at least (below, one thread)
THREAD_BYTES = 4 << 20

_LOW_32 = np.uint64(0xFFFFFFFF)
_SHIFT_32 = np.uint64(32)
_COMPILED_MODULE = "bundlelab.kernels.cpu"


def _native_constants(fmt, transform):
    """``w, alpha, invb`` as numpy scalars of the update format (float32 or float64)."""
    cast = np.float32 if fmt.name == "float32" else np.float64
    return (cast(transform.weight_amplitude), cast(transform.learning_rate),
            cast(transform.inverse_batch_size))


def _word_keys(n_words: int) -> np.ndarray:
    """Every word's key per lane as 32-bit halves: uint32 of shape (2, 2 * n_words), the
    memory of the (2, n_words) uint64 keys, so its halves sit where the halves of the row's
    words do (whatever the byte order)."""
    base, tweak = _hashing.word_keys(n_words)
    n_blocks = tweak.shape[1]
    keys = (np.tile(base, (1, n_blocks))[:, :n_words]
            * np.repeat(tweak, _hashing.BLOCK_WORDS, axis=1)[:, :n_words])
    return np.ascontiguousarray(keys).view(np.uint32)


def _transformed(rows: np.ndarray, w, alpha, invb, out: np.ndarray) -> None:
    """``out[:, :D] = w - (a * alpha) * invb + 0.0`` in the dtype of ``w``, as the kernels do:
    the activation is cast to that dtype first, and each operation is rounded to it."""
    work = out.dtype
    d = rows.shape[1]
    t = out[:, :d]
    # overflow to inf and inf * 0 are the arithmetic the kernels do too: no warnings
    with np.errstate(all="ignore"):
        np.multiply(rows if rows.dtype == work else rows.astype(work), alpha, out=t)
        np.multiply(t, invb, out=t)
        np.subtract(w, t, out=t)
        t += work.type(0)  # -0.0 -> +0.0: bit patterns agree exactly when IEEE equality does


def fingerprints(rows: np.ndarray, fmt, transform) -> tuple[np.ndarray, np.ndarray]:
    """The fingerprints of :func:`~bundlelab.kernels.cpu.fingerprints_native`, in numpy.

    Parameters
    ----------
    rows : ndarray of shape (n_samples, n_features), float32 or float64
    fmt : FloatFormat
        A native update format (float32 or float64).
    transform : Transform

    Returns
    -------
    (ndarray of shape (n_samples, 2), uint64; ndarray of shape (n_samples,), bool)
        The fingerprints, and which rows hold a NaN or an infinity.
    """
    w, alpha, invb = _native_constants(fmt, transform)
    work = np.dtype(type(w))
    n_samples, n_features = rows.shape
    per_word = 8 // work.itemsize
    n_words = -(-n_features // per_word)
    keys = _word_keys(n_words)[:, None, :]  # lane, row, word
    sums = np.empty((n_samples, 2), dtype=np.uint64)
    nonfinite = np.empty(n_samples, dtype=np.bool_)
    step = max(1, BLOCK_WORDS // max(n_words, 1))

    # words per operation: a row longer than a block is hashed in pieces (the lane sums add),
    # so the temporaries stay at a block's size whatever the row's length
    piece = max(1, min(n_words, BLOCK_WORDS))

    def hash_rows(first: int, last: int) -> None:
        capacity = min(step, max(last - first, 1))  # rows per block at most
        # zeros: the padding half-word of an odd float32 row stays zero, as in the kernels
        buffer = np.zeros((capacity, n_words * per_word), dtype=work)
        # both lanes in each operation (lane first): half the calls of one lane at a time
        halves = np.empty((2, capacity, 2 * piece), dtype=np.uint32)
        product = np.empty((2, capacity, piece), dtype=np.uint64)
        low = np.empty_like(product)
        for start in range(first, last, step):
            block = rows[start:min(start + step, last)]
            count = block.shape[0]
            nonfinite[start:start + count] = ~np.isfinite(block).all(axis=1)
            values = buffer[:count]
            _transformed(block, w, alpha, invb, values)
            words = values.view(np.uint64)
            # term(x, k) = ((x + k) mod 2**32) * ((x >> 32) + (k >> 32) mod 2**32) + x: both
            # sums mod 2**32 at once, as the 32-bit halves of x and k added in uint32 (which
            # wraps), then the halves of each word multiplied; the "+ x" of every term is one
            # row sum shared by the lanes (sums mod 2**64 split as they please)
            lanes = np.zeros((2, count), dtype=np.uint64)
            lanes += words.sum(axis=1, dtype=np.uint64)
            halves_of_values = values.view(np.uint32)
            for lo in range(0, n_words, piece):
                hi = min(lo + piece, n_words)
                size = hi - lo
                added = halves[:, :count, :2 * size]
                prod, mask = product[:, :count, :size], low[:, :count, :size]
                np.add(halves_of_values[:, 2 * lo:2 * hi], keys[..., 2 * lo:2 * hi], out=added)
                packed = added.view(np.uint64)
                np.right_shift(packed, _SHIFT_32, out=prod)
                np.bitwise_and(packed, _LOW_32, out=mask)
                prod *= mask
                lanes += prod.sum(axis=2, dtype=np.uint64)
            sums[start:start + count] = lanes.T

    # numpy releases the GIL inside each operation: threads over contiguous row ranges use
    # every core, each with its own buffer (the rows are independent)
    n_threads = min(os.cpu_count() or 1, rows.nbytes // THREAD_BYTES, -(-n_samples // step))
    if n_threads <= 1:
        hash_rows(0, n_samples)
    else:
        bounds = np.linspace(0, n_samples, n_threads + 1).astype(int)
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(hash_rows, bounds[:-1], bounds[1:]))  # list: raise what failed
    return _hashing.finish(sums), nonfinite


def pairs_equal(rows: np.ndarray, first: np.ndarray, second: np.ndarray, fmt,
                transform) -> np.ndarray:
    """:func:`~bundlelab.kernels.cpu.pairs_equal_native` in numpy: bool (p,), transformed rows
    ``first[k]`` and ``second[k]`` are IEEE-equal in every value."""
    w, alpha, invb = _native_constants(fmt, transform)
    work = np.dtype(type(w))
    n_features = rows.shape[1]
    out = np.empty(len(first), dtype=np.bool_)
    step = max(1, BLOCK_WORDS // max(n_features, 1))
    for start in range(0, len(first), step):
        stop = min(start + step, len(first))
        left = np.empty((stop - start, n_features), dtype=work)
        right = np.empty_like(left)
        _transformed(rows[first[start:stop]], w, alpha, invb, left)
        _transformed(rows[second[start:stop]], w, alpha, invb, right)
        out[start:stop] = (left == right).all(axis=1)
    return out


class HostBackend:
    """The ``"cpu"`` backend of the registry: numpy while it pays, Numba otherwise.

    Results are those of :class:`~bundlelab.kernels.cpu.CpuBackend` bit for bit, whichever
    path runs; only the cost differs (see the module's docstring)."""

    name = "cpu"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numpy_bytes = 0
        self._compiled_backend = None

    def _compiled(self):
        """The Numba backend (imports Numba and loads the kernels on first use)."""
        if self._compiled_backend is None:
            from .cpu import CpuBackend

            self._compiled_backend = CpuBackend()
        return self._compiled_backend

    def _numpy_pays(self, fmt, n_bytes: int) -> bool:
        """Whether to run numpy for a job touching ``n_bytes`` of rows, and if so count it."""
        if not fmt.native or _COMPILED_MODULE in sys.modules:
            return False
        with self._lock:
            if self._numpy_bytes + n_bytes > NUMPY_BUDGET_BYTES:
                return False
            self._numpy_bytes += n_bytes
            return True

    def fingerprints(self, rows, fmt, transform, source=None):
        if self._numpy_pays(fmt, rows.nbytes):
            return fingerprints(rows, fmt, transform)
        return self._compiled().fingerprints(rows, fmt, transform, source)

    def fingerprints_partners(self, rows, fmt, transform, source=None):
        """``(fingerprints, nonfinite, partner)``: the compiled pass also proves duplicates
        equal while it hashes them (``partner``); the numpy path proves none (None)."""
        if self._numpy_pays(fmt, rows.nbytes):
            return (*fingerprints(rows, fmt, transform), None)
        return self._compiled().fingerprints_partners(rows, fmt, transform, source)

    def pairs_equal(self, rows, first, second, fmt, transform, source=None):
        # The exact confirmation follows a fingerprint pass over the same rows and reads at
        # most twice as much: it runs where that pass ran (loading Numba for it alone would
        # cost more than it saves), so it spends no budget.
        if fmt.native and _COMPILED_MODULE not in sys.modules:
            return pairs_equal(rows, np.asarray(first, dtype=np.int64),
                               np.asarray(second, dtype=np.int64), fmt, transform)
        return self._compiled().pairs_equal(rows, first, second, fmt, transform, source)

    def row_means(self, rows):
        return self._compiled().row_means(rows)

    def threshold_assign(self, rows, means, tolerances, first_new, leaders, n_leaders, scale,
                         gamma):
        return self._compiled().threshold_assign(
            rows, means, tolerances, first_new, leaders, n_leaders, scale, gamma
        )


__all__ = ["HostBackend", "NUMPY_BUDGET_BYTES", "fingerprints", "pairs_equal"]
