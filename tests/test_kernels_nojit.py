"""The kernels mean the same thing as plain Python: results with NUMBA_DISABLE_JIT=1 agree."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, warnings
import numpy as np
warnings.simplefilter("ignore")  # uint64 wrap-around warns in plain numpy, by design
import bundlelab.kernels.cpu  # the Numba kernels, not the numpy path of a fresh process (host.py)
from bundlelab import find_bundles
from bundlelab.kernels import Transform, get_kernel_backend
from bundlelab.kernels._formats import FORMATS

rng = np.random.default_rng(3)
a = rng.random((12, 7)).astype(np.float32)   # odd row length: exercises the word padding
a[6:] = a[:6]
a[3, 2], a[9, 2] = -0.0, 0.0
a[8, :] = a[2, :] + np.float32(1e-7)          # within gamma of row 2 in threshold mode
labels = np.arange(12) % 3
out = {}
for dtype in ("float32", "float64", "float16"):
    x = a.astype(dtype)
    out[dtype] = find_bundles(x, labels).bundle_ids.tolist()
    out[dtype + "/threshold"] = find_bundles(x, labels, mode="threshold", gamma=1e-6).bundle_ids.tolist()
for name in ("float32", "float64"):
    f = FORMATS[name]
    fp, _ = get_kernel_backend("cpu").fingerprints(a.astype(name), f, Transform.for_format(f, 1.0, 1e-3, 64))
    out["fingerprints/" + name] = [int(v) for v in fp.ravel()]
# rows longer than one key block (512 words: _hashing.BLOCK_WORDS), odd in float32
long_rows = rng.normal(size=(3, 1201))
for name in ("float32", "float64"):
    f = FORMATS[name]
    t = Transform.for_format(f, 0.0, 1.0, 1)
    fp, _ = get_kernel_backend("cpu").fingerprints(long_rows.astype(name), f, t)
    out["fingerprints/long/" + name] = [int(v) for v in fp.ravel()]
# update formats other than the activations' own: widening, narrowing (with rounding of a)
big = a * np.float32(3000.0)  # float16 rounding of a matters at this scale
for dtype, update_format in (("float16", "float32"), ("float32", "float64"), ("float64", "float32"),
                             ("float32", "float16"), ("float16", "bfloat16")):
    x = big.astype(dtype)
    out[dtype + "->" + update_format] = find_bundles(
        x, labels, update_format=update_format, learning_rate=0.5).bundle_ids.tolist()
    f = FORMATS[update_format]
    fp, _ = get_kernel_backend("cpu").fingerprints(
        x.astype(np.float32) if dtype == "float16" else x, f,
        Transform.for_format(f, 1.0, 1e-3, 64), FORMATS[dtype])
    out["fingerprints/" + dtype + "->" + update_format] = [int(v) for v in fp.ravel()]
# the fused pass (duplicates proven while hashing) and the compiled grouping, for every row
# length; the bundle ids, not the partners, are fixed (which earlier row a duplicate meets
# depends on the threads)
from unittest import mock
from bundlelab.kernels import cpu as cpu_kernels
with mock.patch.object(cpu_kernels, "PARTNER_ROW_BYTES", 0):
    for dtype in ("float32", "float64"):
        out["fused/" + dtype] = find_bundles(a.astype(dtype), labels).bundle_ids.tolist()
print(json.dumps(out))
"""


def _run(disable_jit: bool) -> dict:
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1" if disable_jit else "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def test_jit_and_interpreted_kernels_agree():
    compiled, interpreted = _run(False), _run(True)
    assert compiled == interpreted
    assert compiled["float32"][:6] == [0, 1, 2, 3, 4, 5] and compiled["float32"][6:] == [0, 1, 2, 3, 4, 5]
    assert compiled["float32/threshold"][8] == 2
    assert compiled["float16->float32"] == compiled["float32"]  # float16 values, float32 updates
    assert compiled["fused/float32"] == compiled["float32"]
    assert compiled["fused/float64"] == compiled["float64"]
    for name in ("float32", "float64"):  # three distinct rows, three distinct fingerprints
        assert len(set(compiled["fingerprints/long/" + name])) == 6


def test_kernel_layout():
    """One registry: ``get_kernel_backend`` (a device; ``bundlelab.training.get_backend`` is a
    framework); the CPU backend beside its kernels (behind the numpy path of host.py); the shared kernel internals under
    ``kernels/``."""
    import bundlelab.kernels as kernels
    from bundlelab.kernels import cpu, host

    assert kernels.get_kernel_backend("cpu").__class__ is host.HostBackend
    assert host.HostBackend()._compiled().__class__ is cpu.CpuBackend
    assert not hasattr(kernels, "get_backend")
    assert not hasattr(cpu, "warm_up")  # dead code, removed
    for moved in ("_hashing", "_formats"):
        importlib.import_module(f"bundlelab.kernels.{moved}")
        assert importlib.util.find_spec(f"bundlelab.{moved}") is None


def test_an_unknown_device_is_one_line():
    from bundlelab import BundleLabError
    from bundlelab.kernels import get_kernel_backend

    with pytest.raises(BundleLabError, match="The 'device' parameter must be one of 'cpu', 'cuda'"):
        get_kernel_backend("tpu")
