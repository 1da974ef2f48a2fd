"""One registry of compute backends: every array operation of bundlelab goes through it.

A backend implements :class:`KernelBackend` for one device: ``kernels/cpu.py`` holds the Numba
CPU kernels and :class:`~bundlelab.kernels.cpu.CpuBackend`, ``kernels/cuda.py`` the CUDA ones.
The ``"cpu"`` entry is :class:`~bundlelab.kernels.host.HostBackend`, which runs a process's
first small native-format inputs in numpy (bit for bit the same) and loads the Numba kernels
only when they pay for their load time.
``_hashing.py`` (the row fingerprint) and ``_formats.py`` (rounding to narrow float formats) are
plain Python compiled for both targets.  A backend is looked up by name and built on first use,
so ``import bundlelab`` compiles and imports nothing heavy, and the CUDA backend is never
touched on a machine that does not ask for it.
"""

from __future__ import annotations

import functools
import importlib

from .._errors import BundleLabError
from .._validation import check_choice, checked_keywords
from ._protocol import KernelBackend, Transform

#: device name -> (module, class) of its backend
BACKENDS = {
    "cpu": ("bundlelab.kernels.host", "HostBackend"),
    "cuda": ("bundlelab.kernels.cuda", "CudaBackend"),
}


@functools.cache
def _kernel_backend(device: str) -> KernelBackend:
    module_name, class_name = BACKENDS[device]
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


@checked_keywords
def get_kernel_backend(device: str) -> KernelBackend:
    """The (cached) kernel backend of a device.

    Parameters
    ----------
    device : {'cpu', 'cuda'}
        The device whose kernels to return (``'auto'`` is resolved by the caller, from where
        the activations live).

    Returns
    -------
    KernelBackend
        The backend instance, built on first use and shared afterwards.

    Raises
    ------
    BundleLabError
        For an unknown device, or a CUDA backend that cannot start here (no driver or GPU).
    """
    return _kernel_backend(check_choice("device", device, tuple(BACKENDS)))


__all__ = ["BACKENDS", "KernelBackend", "Transform", "get_kernel_backend"]
