"""The CUDA backend gives the CPU backend's results bit for bit (Numba's simulator by default).

The same test bodies run on a real GPU with BUNDLELAB_TEST_REAL_GPU=1.  The simulator runs every
GPU thread as a Python thread, so the arrays here are tiny.
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bundlelab
from bundlelab._arrays import as_rows
from bundlelab.kernels._formats import FORMATS
from bundlelab.kernels import Transform
from bundlelab.kernels.cpu import CpuBackend

pytestmark = pytest.mark.cuda

cuda = pytest.importorskip("numba.cuda")
cuda_kernels = pytest.importorskip("bundlelab.kernels.cuda")

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
FIELDS = ("n_bundles", "n_conflicting", "largest_bundle", "fully_conflicting", "n_excluded")


def _activations(rng, n_samples=16, n_features=13, dtype="float32", special=True):
    """Random rows with planted duplicates, near-duplicates, signed zeros and non-finite rows."""
    a = rng.normal(size=(n_samples, n_features))
    a[4] = a[1]  # exact duplicate
    a[7] = a[2] + 2e-3  # near duplicate: bundled by the loose gamma of threshold mode
    a[9] = a[2] + 5e-2  # farther: never bundled with row 2 at that gamma
    a[11] = a[1]
    if special:
        a[1, 0], a[4, 0], a[11, 0] = 0.0, -0.0, 0.0  # +-0.0 are equal
        a[5, 3] = a[12, 3] = np.inf  # equal rows holding the same infinity
        a[12] = a[5]
        a[6, 2] = a[13, 2] = np.nan  # NaN rows equal nothing
        a[13] = a[6]
        a[8, 1] = -np.inf
    return a.astype(DTYPES[dtype])


def _rows_for(a, device):
    return as_rows(a, device=device)


def _assert_same_result(cpu, gpu):
    assert gpu.bundle_ids.tolist() == cpu.bundle_ids.tolist()
    assert gpu.entropy == cpu.entropy
    for field in FIELDS:
        assert getattr(gpu, field) == getattr(cpu, field), field


# -- kernels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, n_features",  # odd lengths: padded last word; 301: several lanes share a row
    [(dtype, 13) for dtype in DTYPES] + [("float32", 301), ("bfloat16", 301)],
)
def test_fingerprints_equal_cpu(rng, dtype, n_features):
    n_samples = 16 if n_features < 100 else 3
    a = _activations(rng, 16, n_features, dtype)[:n_samples]
    cpu_rows, gpu_rows = _rows_for(a, "cpu"), _rows_for(a, "cuda")
    fmt = cpu_rows.fmt
    transform = Transform.for_format(fmt, 0.75, 1e-3, 64)
    expected, expected_bad = CpuBackend().fingerprints(cpu_rows.data, fmt, transform)
    got, got_bad = cuda_kernels.CudaBackend().fingerprints(gpu_rows.data, fmt, transform)
    assert got.dtype == np.uint64 and got.shape == (n_samples, 2)
    assert got_bad.tolist() == expected_bad.tolist()
    # NaN bit patterns are hardware-specific; every other row must hash identically
    plain = ~np.isnan(cpu_rows.data).any(axis=1)
    assert plain.sum() >= n_samples - 2
    np.testing.assert_array_equal(got[plain], expected[plain])


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_fingerprints_equal_cpu_across_key_blocks(dtype):
    """Rows longer than one block of word keys (``_hashing.BLOCK_WORDS``), with structure: a
    permutation of the first row, a change in the last word only, an odd length."""
    n_features = 1031
    a = np.random.default_rng(5).normal(size=(3, n_features))
    a[1] = a[0][::-1]
    a[2] = a[0]
    a[2, -1] = 1.5 * a[2, -1]
    a = a.astype(DTYPES[dtype])
    cpu_rows, gpu_rows = _rows_for(a, "cpu"), _rows_for(a, "cuda")
    fmt = cpu_rows.fmt  # bfloat16: the emulated kernels
    transform = Transform.for_format(fmt, 0.0, 1.0, 1)  # t = -a: distinct rows stay distinct
    expected, _ = CpuBackend().fingerprints(cpu_rows.data, fmt, transform, cpu_rows.fmt)
    got, _ = cuda_kernels.CudaBackend().fingerprints(gpu_rows.data, fmt, transform, gpu_rows.fmt)
    np.testing.assert_array_equal(got, expected)
    assert np.unique(expected[:, 0]).size == np.unique(expected[:, 1]).size == 3


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    values=st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 3.4e38, 1e-45, 0.1, np.inf, -np.inf]),
        min_size=12, max_size=12,
    ),
    weight_amplitude=st.sampled_from([0.0, 1.0, 1e-3]),
)
def test_fingerprints_equal_cpu_on_special_values(values, weight_amplitude):
    a = np.array(values, dtype=np.float32).reshape(4, 3)
    fmt = FORMATS["float32"]
    transform = Transform.for_format(fmt, weight_amplitude, 0.5, 3)
    expected = CpuBackend().fingerprints(a, fmt, transform)
    got = cuda_kernels.CudaBackend().fingerprints(cuda.to_device(a), fmt, transform)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_pairs_equal_and_row_means_agree_with_cpu(rng, dtype):
    a = _activations(rng, 14, 9, dtype)
    cpu_rows, gpu_rows = _rows_for(a, "cpu"), _rows_for(a, "cuda")
    fmt = cpu_rows.fmt
    transform = Transform.for_format(fmt, 1.0, 1e-3, 64)
    first = np.array([1, 1, 6, 5, 2, 0, 3])
    second = np.array([4, 11, 13, 12, 7, 0, 10])
    expected = CpuBackend().pairs_equal(cpu_rows.data, first, second, fmt, transform)
    got = cuda_kernels.CudaBackend().pairs_equal(gpu_rows.data, first, second, fmt, transform)
    assert got.tolist() == expected.tolist()
    assert got[:2].all() and not got[2]  # +-0.0 rows equal, NaN rows never

    means, tolerances, bad = cuda_kernels.CudaBackend().row_means(gpu_rows.data)
    cpu_means, cpu_tolerances, cpu_bad = CpuBackend().row_means(cpu_rows.data)
    assert bad.tolist() == cpu_bad.tolist()
    finite = ~cpu_bad
    # summation orders differ: the means agree within the error bound each side reports
    assert np.all(
        np.abs(means[finite] - cpu_means[finite]) <= tolerances[finite] + cpu_tolerances[finite]
    )


def test_threshold_assign_continues_from_existing_leaders(rng, monkeypatch):
    """Chunks smaller than the input, and leaders from an earlier batch (as in streaming)."""
    monkeypatch.setattr(cuda_kernels, "CHUNK", 4)
    a = _activations(rng, 14, 20, "float32", special=False)
    gpu = cuda_kernels.CudaBackend()
    means, tolerances, _ = CpuBackend().row_means(a)
    scale, gamma = 1e-3 / 64, 1e-7
    results = []
    for backend, rows in ((CpuBackend(), a), (gpu, cuda.to_device(a))):
        leaders = np.empty(14, dtype=np.int64)
        leaders[:2] = [0, 2]
        assign, n_leaders = backend.threshold_assign(
            rows, means, tolerances, 3, leaders, 2, scale, gamma
        )
        results.append((assign.tolist(), n_leaders, leaders[:n_leaders].tolist()))
    assert results[1] == results[0]
    assign = results[0][0]
    assert assign[7 - 3] == 1  # row 7 joins leader 2 (position 1) across chunks


# -- update formats other than the activations' own (issue 11 §1) ----------------------------

#: (activation dtype, update format) pairs that differ: widening, narrowing, narrow to narrow
MIXED_PAIRS = [(dtype, fmt) for dtype in DTYPES for fmt in DTYPES if dtype != fmt]


@pytest.mark.parametrize("dtype, update_format", MIXED_PAIRS)
def test_fingerprints_and_pairs_in_another_update_format_equal_cpu(rng, dtype, update_format):
    a = _activations(rng, 14, 7, dtype).astype(np.float64)
    a[3] = a[0] * 1.0009765625  # a few ulps of float16 apart: bundled in the narrow formats
    a = a.astype(DTYPES[dtype])
    cpu_rows, gpu_rows = _rows_for(a, "cpu"), _rows_for(a, "cuda")
    fmt = FORMATS[update_format]
    transform = Transform.for_format(fmt, 0.75, 0.5, 2)
    expected, expected_bad = CpuBackend().fingerprints(cpu_rows.data, fmt, transform, cpu_rows.fmt)
    got, got_bad = cuda_kernels.CudaBackend().fingerprints(gpu_rows.data, fmt, transform,
                                                           gpu_rows.fmt)
    assert got_bad.tolist() == expected_bad.tolist()
    plain = ~np.isnan(cpu_rows.data).any(axis=1)
    np.testing.assert_array_equal(got[plain], expected[plain])
    first, second = np.array([0, 1, 5, 6, 2]), np.array([3, 4, 12, 13, 9])
    assert cuda_kernels.CudaBackend().pairs_equal(
        gpu_rows.data, first, second, fmt, transform, gpu_rows.fmt
    ).tolist() == CpuBackend().pairs_equal(
        cpu_rows.data, first, second, fmt, transform, cpu_rows.fmt
    ).tolist()


@pytest.mark.parametrize("dtype, update_format", [("float16", "auto"), ("float32", "float64"),
                                                  ("float64", "float16"), ("bfloat16", "float16")])
def test_find_bundles_in_another_update_format_matches_cpu(rng, dtype, update_format):
    a = _activations(rng, 14, 5, dtype)
    labels = rng.integers(0, 3, a.shape[0])
    options = dict(nonfinite="keep", update_format=update_format)
    cpu = bundlelab.find_bundles(a, labels, device="cpu", **options)
    gpu = bundlelab.find_bundles(a, labels, device="cuda", **options)
    _assert_same_result(cpu, gpu)
    assert gpu.update_format == cpu.update_format != "auto"


# -- public API -------------------------------------------------------------------------------


@pytest.mark.slow  # seconds per dtype under the simulator
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_find_bundles_resolution_matches_cpu(rng, dtype):
    a = _activations(rng, dtype=dtype)
    labels = rng.integers(0, 3, a.shape[0])
    for nonfinite in ("keep", "exclude"):
        options = dict(nonfinite=nonfinite, learning_rate=0.5, batch_size=2)
        cpu = bundlelab.find_bundles(a, labels, device="cpu", **options)
        gpu = bundlelab.find_bundles(a, labels, device="cuda", **options)
        _assert_same_result(cpu, gpu)
    assert cpu.bundle_ids[4] == cpu.bundle_ids[1] == cpu.bundle_ids[11]


@pytest.mark.parametrize(
    "dtype, gamma",
    [("float32", 1e-8), ("float32", 1e-7), ("float64", 1e-7), ("float16", 1e-6)],
)
def test_find_bundles_threshold_matches_cpu(rng, dtype, gamma, monkeypatch):
    monkeypatch.setattr(cuda_kernels, "CHUNK", 8)  # several chunks even for 16 rows
    a = _activations(rng, 16, 21, dtype)
    labels = rng.integers(0, 3, a.shape[0])
    cpu = bundlelab.find_bundles(a, labels, mode="threshold", gamma=gamma, nonfinite="keep")
    gpu = bundlelab.find_bundles(
        a, labels, mode="threshold", gamma=gamma, nonfinite="keep", device="cuda"
    )
    _assert_same_result(cpu, gpu)
    assert cpu.bundle_ids[4] == cpu.bundle_ids[1]
    if gamma == 1e-7:  # (alpha / |B|) * 2e-3 = 3.1e-8 <= gamma < (alpha / |B|) * 5e-2
        assert cpu.bundle_ids[7] == cpu.bundle_ids[2] != cpu.bundle_ids[9]


@pytest.mark.parametrize(
    "mode, dtype",
    [("resolution", "float32"), ("resolution", "bfloat16"), ("threshold", "float64")],
)
def test_stream_matches_cpu_stream_and_in_memory(rng, mode, dtype):
    a = _activations(rng, 15, 10, dtype, special=False)
    labels = rng.integers(0, 3, a.shape[0])
    options = dict(mode=mode, gamma=1e-7)
    results = []
    for device in ("cpu", "cuda"):
        stream = bundlelab.BundleStream(device=device, **options)
        for batch in np.array_split(np.arange(15), 3):
            stream.update(a[batch], labels[batch])
        results.append(stream.result())
    in_memory = bundlelab.find_bundles(a, labels, device="cpu", **options)
    _assert_same_result(results[0], results[1])
    _assert_same_result(in_memory, results[1])


@pytest.mark.slow  # compiles every kernel
def test_warm_up_runs():
    cuda_kernels.warm_up()
