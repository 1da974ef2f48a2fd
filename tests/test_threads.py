"""Numba's pool is chosen per library (kernels/_threads.py): a layer that sleeps when idle,
no process-wide OMP_WAIT_POLICY, the user's choice kept, and concurrent callers safe."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _python(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter (Numba's layer is fixed once per process)."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# bundlelab.kernels.cpu: the compiled kernels (a fresh process hashes its first small inputs in
# numpy without loading Numba, kernels/host.py; these tests are about Numba's pool)
FIND = (
    "import numba, numpy as np, bundlelab, bundlelab.kernels.cpu;"
    "bundlelab.find_bundles(np.zeros((64, 8), np.float32), np.arange(64) % 2);"
)


def test_bundlelab_runs_numba_on_a_pool_that_sleeps_and_sets_no_wait_policy():
    out = _python(FIND + "import os; print(numba.threading_layer(), os.environ.get('OMP_WAIT_POLICY'))")
    assert out == "workqueue None"


def test_the_cli_sets_no_process_wide_wait_policy():
    out = _python(
        "import os; from bundlelab.cli._app import load_data;"
        "load_data('digits', n_train=None, n_test=None, image_size=None, seed=0);"
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    assert out == "None"


@pytest.mark.parametrize("how", ["env", "config"])
def test_a_users_choice_of_threading_layer_wins(how):
    if how == "env":
        out = _python(FIND + "print(numba.threading_layer())", NUMBA_THREADING_LAYER="omp")
    else:
        out = _python("import numba; numba.config.THREADING_LAYER = 'omp';" + FIND
                      + "print(numba.threading_layer())")
    assert out == "omp"


@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_threads_calling_the_kernels_at_once_take_turns_and_agree(path):
    """The workqueue layer aborts the process on concurrent launches: the backend's lock makes
    eight threads safe, each getting the result of a serial call (and the numpy path of a
    fresh process is safe too, without loading Numba)."""
    load = ("import bundlelab.kernels.cpu\n" if path == "compiled"
            else "from bundlelab.kernels import host; host.NUMPY_BUDGET_BYTES = 1 << 40\n")
    last = ("import numba; print(numba.threading_layer())\n" if path == "compiled"
            else "import sys; print('numba' in sys.modules)\n")
    out = _python(
        "import numpy as np, bundlelab\n" + load +
        "from concurrent.futures import ThreadPoolExecutor\n"
        "rng = np.random.default_rng(0)\n"
        "data = [np.repeat(rng.random((2000 + i, 64), dtype=np.float32), 3, axis=0) for i in range(8)]\n"
        "labels = [np.arange(len(a)) % 3 for a in data]\n"
        "serial = [bundlelab.find_bundles(a, y).bundle_ids.tolist() for a, y in zip(data, labels)]\n"
        "for mode in ('resolution',):\n"
        "    with ThreadPoolExecutor(8) as pool:\n"
        "        for _ in range(5):\n"
        "            got = list(pool.map(lambda p: bundlelab.find_bundles(*p, mode=mode, gamma=0.0)"
        ".bundle_ids.tolist(), zip(data, labels)))\n"
        "            assert got == serial, mode\n" + last
    )
    assert out == ("workqueue" if path == "compiled" else "False")
