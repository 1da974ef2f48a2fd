"""The row fingerprint, written once and compiled for both the CPU and the CUDA kernels.

A row of transformed values ``t_0 .. t_{D-1}`` (canonical bit patterns: ``-0.0`` is turned into
``+0.0`` first) is cut into 64-bit words ``x_m``: for float64 the bits of ``t_m``; for the
32-bit layout (float32, and float16/bfloat16, whose values are held as float32) the bits of
``t_{2m}`` in the low half and ``t_{2m+1}`` in the high half (little-endian packing), with a
zero high half after the last value of an odd-length row.  Two 64-bit lanes, each an NH sum
(the universal hash of UMAC: Black, Halevi, Krawczyk, Krovetz and Rogaway, CRYPTO 1999) plus the
plain sum of the words, summed per block of 512 words, the blocks weighted and added, finished by
one strong mix per row::

    nh(x, k)  = ((lo(x) + lo(k)) mod 2**32) * ((hi(x) + hi(k)) mod 2**32)     (exact, < 2**64)
    S_L(c)    = sum over the words m of block c (m div 512 = c) of nh(x_m, base_L[m mod 512]) + x_m
    lane_L    = mix(sum_c tweak_L[c] * S_L(c))                (sums, products mod 2**64; L = a, b)

``base`` (512 words per lane) and ``tweak`` (one odd word per lane and block of 512 words) are
splitmix64 outputs (:func:`word_keys`), so every word of a block has its own pseudo-random key;
the base table stays in L1 while the row streams past.  Keys must look random: keys that follow a
pattern in the position (a Weyl sequence ``m * C``, say) make permuted rows collide by the
thousand, because NH is linear in each key.  Blocks reuse the base keys, so the same offset of
two blocks has the same key; the block weights keep values moved between blocks from cancelling:
two rows that differ in block ``c`` only differ by ``tweak[c] * (S(c) - S'(c))``, which is not
zero whenever the block sums differ (an odd weight is invertible mod 2**64), and a difference
spread over blocks cancels only if the weighted differences do.  ``mix`` is the splitmix64
finaliser, a bijection: it spreads the bits of the sums (for the sorting that follows) without
creating or removing collisions.  Per 64-bit word a lane costs one 32x32->64 multiply
(``vpmuludq``) and a few adds, all of which vectorise, and one 64-bit multiply per block: the
pass runs near memory speed.  (The keys once were ``base * tweak`` per word: AVX2 has no 64-bit
multiply, and its emulation in every word made the pass 1.4x slower on one core.  A tweak
xor-ed or added to each key is as cheap but not as good: it leaves the keys of one offset in
two blocks a fixed xor or difference apart, and moved values then collide, as the tests show.)

Collisions.  NH over equal-length inputs is 2**-32-almost-Delta-universal for uniformly random
keys (Black et al.), and adding ``sum x_m``, a function of the row alone, keeps that bound for
the sum of one block.  Rows that differ in one block differ in that block's sum with that
probability, and an odd weight keeps a non-zero difference non-zero; rows that differ in
several blocks collide only if the weighted differences cancel, which for random odd weights
has probability about 2**-63 when the blocks' differences are not all zero.  So two different
rows of the same length collide in one lane with probability about 2**-32 at most, and in both
lanes (independent keys) about 2**-64.  The plain sum also covers NH's weak spot, a word whose
key makes one factor zero and so drops out of the product.  The bound is the one of the
random-key model, not a proof for these keys: they are fixed pseudo-random constants, and
every block uses the same base keys, told apart by its weight.  It describes rows that are
not constructed against these constants, as activations are not;
``tests/test_fingerprint_quality.py`` checks the structured rows activations do produce
(zeros, patterns, permutations, one-ulp and one-bit changes, values moved between blocks,
blocks swapped wholesale).

Being sums, the lanes can be accumulated in any order and split at any word: a row cut into
tiles, warps or batches gives the same fingerprint on every backend, and ``mix`` is applied once
the whole row is summed.  The compiled functions below are plain Python on purpose;
``kernels/cpu.py`` wraps them with ``numba.njit`` and ``kernels/cuda.py`` with
``numba.cuda.jit(device=True)``; :func:`word_keys` runs on the host, in numpy.
"""

import functools
import warnings

import numpy as np

#: the fingerprint's definition: raised whenever a row's fingerprint changes, so that a stream's
#: pickled state from another definition is refused instead of merged (equal rows would split)
VERSION = 2
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


def key(base, pos):
    """Key of the word at position ``pos`` (uint64) from one lane's ``base``."""
    return base[pos & BLOCK_MASK]


def weight(tweak, pos):
    """Weight of the block holding the word at position ``pos`` (uint64): a lane adds
    ``term(x, key(base, pos)) * weight(tweak, pos)`` per word, or a block's terms times its
    weight once (the same sum: a row may be split at any word)."""
    return tweak[pos >> BLOCK_SHIFT]


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
