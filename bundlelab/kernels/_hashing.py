"""The row fingerprint, written once and compiled for both the CPU and the CUDA kernels.

A row of transformed values ``t_0 .. t_{D-1}`` (canonical bit patterns: ``-0.0`` is turned into
``+0.0`` first) is cut into 64-bit words ``x_m``: for float64 the bits of ``t_m``; for the
32-bit layout (float32, and float16/bfloat16, whose values are held as float32) the bits of
``t_{2m}`` in the low half and ``t_{2m+1}`` in the high half (little-endian packing), with a
zero high half after the last value of an odd-length row.  Two 64-bit lanes, each an NH sum
(the universal hash of UMAC: Black, Halevi, Krawczyk, Krovetz and Rogaway, CRYPTO 1999) plus the
plain sum of the words, finished by one strong mix per row::

    nh(x, k)  = ((lo(x) + lo(k)) mod 2**32) * ((hi(x) + hi(k)) mod 2**32)     (exact, < 2**64)
    lane_L    = mix(sum_m nh(x_m, key_L(m)) + x_m)                  (sums mod 2**64; L = a, b)
    key_L(m)  = base_L[m mod 512] * tweak_L[m div 512]                                (mod 2**64)

``base`` (512 words per lane) and ``tweak`` (one odd word per lane and block of 512 words) are
splitmix64 outputs (:func:`word_keys`), so every word of a row has its own pseudo-random key; the
base table stays in L1 while the row streams past.  Keys must look random: keys that follow a
pattern in the position (a Weyl sequence ``m * C``, say) make permuted rows collide by the
thousand, because NH is linear in each key.  ``mix`` is the splitmix64 finaliser, a bijection:
it spreads the bits of the sums (for the sorting that follows) without creating or removing
collisions.  Per 64-bit word a lane costs one 32x32->64 multiply (``vpmuludq``), one 64-bit
multiply for the key and a few adds, all of which vectorise: on two cores the pass runs near
memory speed instead of being bound by two splitmix64 mixes per word.  (AVX2 has no 64-bit
multiply: on one core its emulation for the key makes the pass about 1.5x slower than without
it.  Cheaper keys were tried and rejected: a tweak xor-ed or added to the base key lets values
moved between blocks collide, failing ``test_values_exchanged_between_key_blocks``; weighting
each block's sum by an odd tweak once, instead of per word, leaves a moved value's difference
times ``tweak[c] - tweak[c']``, an even number with up to 2**12-2**16 in its factors of 2
between the 64-128 blocks of a 65536-value row: a review found one lane colliding about once in
2**21 random moves.)

Collisions.  NH over equal-length inputs is 2**-32-almost-Delta-universal for uniformly random
keys (Black et al.), and adding ``sum x_m``, a function of the row alone, keeps that bound: two
different rows of the same length collide in one lane with probability at most 2**-32, and in
both lanes (independent keys) at most 2**-64.  The plain sum also covers NH's weak spot, a word
whose key makes one factor zero and so drops out of the product.  The bound is the one of the
random-key model, not a proof for these keys: they are fixed pseudo-random constants, and the
keys of different blocks are related (the same base times different odd tweaks; the tweak is
what keeps values moved between blocks from cancelling).  It describes rows that are not
constructed against these constants, as activations are not; ``tests/test_fingerprint_quality.py``
checks the structured rows activations do produce (zeros, patterns, permutations, one-ulp and
one-bit changes, values moved between blocks, blocks swapped wholesale).

Being sums, the lanes can be accumulated in any order and split at any word: a row cut into
tiles, warps or batches gives the same fingerprint on every backend, and ``mix`` is applied once
the whole row is summed.  The compiled functions below are plain Python on purpose;
``kernels/cpu.py`` wraps them with ``numba.njit`` and ``kernels/cuda.py`` with
``numba.cuda.jit(device=True)``; :func:`word_keys` runs on the host, in numpy.
"""

import functools
import warnings

import numpy as np

#: the fingerprint's definition: to be raised whenever a row's fingerprint changes (a test pins
#: fingerprints of fixed rows), so that a stream's pickled state from another definition is
#: refused instead of merged, where its equal rows would be split; 1 is the NH hash above
VERSION = 1
#: words per key block: ``base`` has this many keys per lane, ``tweak`` one per block
BLOCK_WORDS = 512
BLOCK_SHIFT = np.uint64(9)
BLOCK_MASK = np.uint64(BLOCK_WORDS - 1)
LOW_32 = np.uint64(0xFFFFFFFF)
SHIFT_32 = np.uint64(32)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)
SHIFT_30 = np.uint64(30)
SHIFT_27 = np.uint64(27)
SHIFT_31 = np.uint64(31)
#: where the key streams start in splitmix64's sequence (any fixed values would do)
SEED_BASE = 0x243F6A8885A308D3
SEED_TWEAK = 0x13198A2E03707344


# The compiled functions are built by two different JITs and must not call a Python global.


def key(base, tweak, pos):
    """Key of the word at position ``pos`` (uint64) from one lane's ``base`` and ``tweak``."""
    return base[pos & BLOCK_MASK] * tweak[pos >> BLOCK_SHIFT]


def term(bits, key):
    """Contribution of the word ``bits`` under ``key``: its NH product plus the word itself."""
    low = (bits + key) & LOW_32  # lo(x) + lo(k) mod 2**32: the carry out is masked away
    high = ((bits >> SHIFT_32) + (key >> SHIFT_32)) & LOW_32
    return low * high + bits


def finish(total):
    """The splitmix64 finaliser of a lane's sum: a bijective, well-avalanching 64-bit mix."""
    z = (total ^ (total >> SHIFT_30)) * MIX_1
    z = (z ^ (z >> SHIFT_27)) * MIX_2
    return z ^ (z >> SHIFT_31)


def _splitmix64(seed: int, count: int) -> np.ndarray:
    """``count`` successive outputs of splitmix64 started at ``seed``."""
    state = np.uint64(seed) + GOLDEN * np.arange(1, count + 1, dtype=np.uint64)
    return finish(state)


def n_words(n_values: int, update_format: str) -> int:
    """64-bit words in a row of ``n_values`` values: one per float64 value, one per two values
    of the 32-bit layout (float32, and float16/bfloat16 held as float32)."""
    return n_values if update_format == "float64" else -(-n_values // 2)


@functools.lru_cache(maxsize=16)
def word_keys(n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """``(base, tweak)`` for rows of ``n_words`` words: uint64 arrays of shape
    (2, BLOCK_WORDS) and (2, max(1, ceil(n_words / BLOCK_WORDS))), row 0 for lane a, row 1 for
    lane b (read-only: they are shared).  A word's key does not depend on ``n_words``."""
    n_blocks = max(1, -(-n_words // BLOCK_WORDS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # uint64 wrap-around is the arithmetic
        base = _splitmix64(SEED_BASE, 2 * BLOCK_WORDS).reshape(2, BLOCK_WORDS)
        tweak = _splitmix64(SEED_TWEAK, 2 * n_blocks).reshape(n_blocks, 2).T | np.uint64(1)
    base, tweak = np.ascontiguousarray(base), np.ascontiguousarray(tweak)
    base.flags.writeable = tweak.flags.writeable = False
    return base, tweak
