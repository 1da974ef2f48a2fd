"""One registry of compute backends: every array operation of bundlelab goes through it.

A backend implements :class:`bundlelab.kernels.backends.KernelBackend` for one device.  It is
looked up by name and built on first use, so ``import bundlelab`` compiles and imports nothing
heavy, and the CUDA backend is never touched on a machine that does not ask for it.
"""

from __future__ import annotations

import functools
import importlib

from .._errors import BundleLabError

#: device name -> (module, class) of its backend
BACKENDS = {
    "cpu": ("bundlelab.kernels.backends", "CpuBackend"),
    "cuda": ("bundlelab.kernels.cuda", "CudaBackend"),
}


@functools.cache
def get_backend(device: str):
    """Return the (cached) backend instance for ``device`` ('cpu' or 'cuda')."""
    try:
        module_name, class_name = BACKENDS[device]
    except KeyError:
        raise BundleLabError(
            f"unknown device {device!r}: expected one of {', '.join(BACKENDS)} or 'auto'"
        ) from None
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)()
    except BundleLabError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. numba's CudaSupportError: no driver or GPU
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleLabError(
            f"the {device} backend is not available here ({reason}); use device='cpu'"
        ) from None
