"""Test-suite setup.

The CUDA kernels run under Numba's CUDA simulator unless BUNDLELAB_TEST_REAL_GPU=1 is set; the
variable must be set before numba.cuda is first imported, hence here.
"""

import os

if os.environ.get("BUNDLELAB_TEST_REAL_GPU") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # pytest has already imported numba to resolve the NumbaPerformanceWarning filter of
    # pyproject.toml, and numba reads its environment once: make it read the variable again.
    import numba.core.config  # noqa: E402

    numba.core.config.reload_config()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(12345)

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (a red run must be reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the whole session (about 5 s to start), shut down at the end.

    Tests that use it skip, with the reason, where Ray is not installed: the core install does
    not need it.
    """
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bundlelab[ray]')")
    if ray.is_initialized():  # started by an earlier test through the library: reuse it
        yield ray
        return
    # a small object store: the tests move kilobytes, and /dev/shm may be small on CI machines
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20,
             log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
