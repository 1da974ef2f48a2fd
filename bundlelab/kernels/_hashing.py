"""The row fingerprint, written once and compiled for both the CPU and the CUDA kernels.

A row of transformed values ``t_0 .. t_{D-1}`` (canonical bit patterns: ``-0.0`` is turned into
``+0.0`` first) is cut into 64-bit words ``x_m``: for float64 the bits of ``t_m``; for the
32-bit layout (float32, and float16/bfloat16, whose values are held as float32) the bits of
``t_{2m}`` in the low half and ``t_{2m+1}`` in the high half (little-endian packing), with a
zero high half after the last value of an odd-length row.  Two independent 64-bit lanes::

    lane_a = sum_m splitmix64(x_m ^ (m * GOLDEN))             (mod 2**64)
    lane_b = sum_m splitmix64(x_m + (m + 1) * SEED_B) * ODD   (mod 2**64)

Each term is a strong 64-bit mix of the value and its position, so the sums are
position-sensitive, and being sums they can be accumulated in any order: a row split into tiles,
warps or batches gives the same fingerprint on every backend.  The functions below are plain
Python on purpose; ``kernels/cpu.py`` wraps them with ``numba.njit`` and ``kernels/cuda.py`` with
``numba.cuda.jit(device=True)``.
"""

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SEED_B = np.uint64(0xD1B54A32D192ED03)
ODD_B = np.uint64(0xAEF17502108EF2D9)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)
SHIFT_30 = np.uint64(30)
SHIFT_27 = np.uint64(27)
SHIFT_31 = np.uint64(31)
ONE = np.uint64(1)


# Each term is the splitmix64 finaliser (a bijective, well-avalanching 64-bit mix) written out
# inline: the functions are compiled by two different JITs and must not call a Python global.


def term_a(bits, pos):
    """Lane-a contribution of the value with bit pattern ``bits`` at position ``pos``."""
    z = bits ^ (pos * GOLDEN)
    z = (z ^ (z >> SHIFT_30)) * MIX_1
    z = (z ^ (z >> SHIFT_27)) * MIX_2
    return z ^ (z >> SHIFT_31)


def term_b(bits, pos):
    """Lane-b contribution of the value with bit pattern ``bits`` at position ``pos``."""
    z = bits + (pos + ONE) * SEED_B
    z = (z ^ (z >> SHIFT_30)) * MIX_1
    z = (z ^ (z >> SHIFT_27)) * MIX_2
    return (z ^ (z >> SHIFT_31)) * ODD_B
