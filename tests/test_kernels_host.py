"""The numpy path of the CPU backend (``kernels/host.py``) equals the Numba kernels bit for bit,
and a fresh process uses it for small inputs without loading Numba."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bundlelab.kernels import Transform, host
from bundlelab.kernels._formats import FORMATS
from bundlelab.kernels.cpu import CpuBackend

COMPILED = CpuBackend()

#: values that stress the transform and the words: signed zeros, subnormals, the extremes,
#: non-finite values, and values one ulp apart
SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 5e-324, 1e-300, 3.4e38, -3.4e38, 1e308,
           np.inf, -np.inf, np.nan, 1.0000001, 0.99999994, 65504.0]


def _rows(dtype):
    with np.errstate(over="ignore"):  # 1e308 becomes inf in float32: meant
        special = np.array(SPECIAL).astype(dtype).tolist()
    return hnp.arrays(
        dtype,
        st.tuples(st.integers(0, 40), st.integers(1, 1100)),  # over 512 words: two key blocks
        elements=st.one_of(st.sampled_from(special),
                           st.floats(-1e6, 1e6, width=np.dtype(dtype).itemsize * 8)),
    )


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(["float32", "float64"]))
    rows = draw(_rows(dtype))
    if len(rows) > 1 and draw(st.booleans()):  # repeated rows, as bundles make them
        rows[len(rows) // 2:] = rows[: len(rows) - len(rows) // 2]
    fmt = FORMATS[draw(st.sampled_from(["float32", "float64"]))]  # widening and narrowing
    transform = Transform.for_format(
        fmt, draw(st.sampled_from([0.0, 1.0, 3.0])), draw(st.sampled_from([1.0, 1e-3, 0.5])),
        draw(st.sampled_from([1, 64, 7])),
    )
    return np.ascontiguousarray(rows), fmt, transform


@settings(max_examples=120, deadline=None)
@given(cases())
def test_numpy_fingerprints_equal_the_kernels(case):
    rows, fmt, transform = case
    expected, expected_bad = COMPILED.fingerprints(rows, fmt, transform)
    got, bad = host.fingerprints(rows, fmt, transform)
    assert got.dtype == np.uint64 and got.shape == (len(rows), 2)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(bad, expected_bad)


@settings(max_examples=80, deadline=None)
@given(cases(), st.data())
def test_numpy_pairs_equal_the_kernels(case, data):
    rows, fmt, transform = case
    if not len(rows):
        return
    index = st.integers(0, len(rows) - 1)
    pairs = data.draw(st.lists(st.tuples(index, index), max_size=30))
    first = np.array([p[0] for p in pairs], dtype=np.int64)
    second = np.array([p[1] for p in pairs], dtype=np.int64)
    expected = COMPILED.pairs_equal(rows, first, second, fmt, transform)
    np.testing.assert_array_equal(host.pairs_equal(rows, first, second, fmt, transform),
                                  expected)


@pytest.mark.parametrize("threads", [False, True])
def test_blocks_of_many_rows_and_one_ulp_apart(rng, monkeypatch, threads):
    """More rows than one numpy block, on one thread and split over threads; rows one ulp
    apart, -0.0 against +0.0."""
    monkeypatch.setattr(host, "THREAD_BYTES", 1 if threads else 1 << 40)
    monkeypatch.setattr(host.os, "cpu_count", lambda: 3)  # three uneven ranges of blocks
    rows = rng.standard_normal((3 * host.BLOCK_WORDS // 8 + 5, 15)).astype(np.float32)
    rows[1::2] = rows[::2][: len(rows[1::2])]
    rows[3, 4] = np.nextafter(rows[3, 4], np.float32(np.inf))
    rows[5, 0], rows[4, 0] = -0.0, 0.0
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, 0.0, 1.0, 1)  # t = -a: the ulp survives
    expected, _ = COMPILED.fingerprints(rows, fmt, transform)
    got, _ = host.fingerprints(rows, fmt, transform)
    np.testing.assert_array_equal(got, expected)
    assert (got[2] != got[3]).any() and (got[4] == got[5]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block_words", [1, 3, 512])
def test_rows_longer_than_a_block_are_hashed_in_pieces(rng, monkeypatch, dtype, block_words):
    """A row longer than the numpy path's block is hashed in pieces whose lane sums add up to
    the kernel's (odd float32 widths: the padding half-word falls in the last piece)."""
    monkeypatch.setattr(host, "BLOCK_WORDS", block_words)
    fmt = FORMATS[dtype]
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    for n_features in (1, 2, 7, 1031):
        rows = rng.standard_normal((4, n_features)).astype(dtype)
        expected, _ = COMPILED.fingerprints(rows, fmt, transform)
        got, _ = host.fingerprints(rows, fmt, transform)
        np.testing.assert_array_equal(got, expected, err_msg=f"{n_features} values")


SCRIPT = r"""
import json, sys
import numpy as np
import bundlelab
from bundlelab.kernels import get_kernel_backend, host
host.NUMPY_BUDGET_BYTES = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((300, 33)).astype(np.float32)
a[150:] = a[:150]
labels = np.arange(300) % 3
ids = bundlelab.find_bundles(a, labels).bundle_ids.tolist()
print(json.dumps({"ids": ids, "numba": "numba" in sys.modules}))
"""


@pytest.mark.parametrize("budget", [1 << 30, 0])
def test_a_fresh_process_hashes_small_inputs_without_numba(budget):
    """Within the budget a fresh process never imports Numba; over it, it does; the bundle ids
    are the same either way."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(budget)], capture_output=True,
                          text=True, check=True)
    out = json.loads(done.stdout)
    assert out["numba"] is (budget == 0)
    assert out["ids"] == list(range(150)) * 2


def test_the_budget_is_spent_once(monkeypatch):
    """A stream of small batches stops using numpy once the budget is spent."""
    monkeypatch.setattr(host, "NUMPY_BUDGET_BYTES", 1000)
    monkeypatch.setattr(host, "_COMPILED_MODULE", "not.loaded.module")
    backend = host.HostBackend()
    fmt = FORMATS["float32"]
    assert backend._numpy_pays(fmt, 600)
    assert not backend._numpy_pays(fmt, 600)
    assert backend._numpy_pays(fmt, 400)
    assert not backend._numpy_pays(fmt, 1)
    assert not host.HostBackend()._numpy_pays(FORMATS["float16"], 1)  # emulated: Numba only


def test_the_confirmation_runs_where_the_pass_ran(monkeypatch, rng):
    """Pairs spend no budget: with the compiled kernels not loaded they run in numpy even with
    the budget spent (loading Numba for them alone would cost more), else compiled."""
    calls = []
    original = host.pairs_equal
    monkeypatch.setattr(host, "pairs_equal", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(host, "NUMPY_BUDGET_BYTES", 0)
    rows = rng.standard_normal((6, 5)).astype(np.float32)
    rows[3:] = rows[:3]
    first, second = np.arange(3), np.arange(3, 6)
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    monkeypatch.setattr(host, "_COMPILED_MODULE", "not.loaded.module")
    assert host.HostBackend().pairs_equal(rows, first, second, fmt, transform).all()
    assert calls == [1]
    monkeypatch.setattr(host, "_COMPILED_MODULE", "bundlelab.kernels.cpu")
    assert host.HostBackend().pairs_equal(rows, first, second, fmt, transform).all()
    assert calls == [1]


def test_fingerprints_with_partners_on_both_paths(monkeypatch, rng):
    """The numpy path proves no duplicates (partner None: all are confirmed after the pass);
    the compiled one proves them during the pass; the fingerprints are the same bits."""
    from bundlelab.kernels import cpu

    monkeypatch.setattr(cpu, "PARTNER_ROW_BYTES", 0)  # small rows through the fused pass
    rows = rng.standard_normal((8, 33)).astype(np.float32)
    rows[4:] = rows[:4]
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    monkeypatch.setattr(host, "_COMPILED_MODULE", "not.loaded.module")
    numpy_fp, numpy_bad, numpy_partner = host.HostBackend().fingerprints_partners(
        rows, fmt, transform)
    assert numpy_partner is None
    monkeypatch.setattr(host, "_COMPILED_MODULE", "bundlelab.kernels.cpu")
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # rows in order: each duplicate meets its first occurrence
    try:
        fp, bad, partner = host.HostBackend().fingerprints_partners(rows, fmt, transform)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(fp, numpy_fp)
    np.testing.assert_array_equal(bad, numpy_bad)
    np.testing.assert_array_equal(fp, COMPILED.fingerprints(rows, fmt, transform)[0])
    assert partner.tolist() == [-1, -1, -1, -1, 0, 1, 2, 3]
