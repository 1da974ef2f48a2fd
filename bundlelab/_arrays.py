"""Array interop without importing any framework.

Like einops' backends, an array's framework is recognised from its type's module name; if you
hold a torch tensor, torch is already imported and we use it only through the tensor's own
methods (and ``sys.modules`` for a dtype object).  GPU arrays are handed to the CUDA kernels
zero-copy through ``__cuda_array_interface__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import BundleLabError
from .kernels._formats import FORMATS, FloatFormat


@dataclass
class Rows:
    """Activations as a (n_samples, n_features) array on one device, in a kernel dtype.

    ``data`` is float32 or float64; float16/bfloat16 inputs are converted exactly to float32
    and ``fmt`` remembers the activations' own format (the update format the arithmetic is
    rounded to is resolved from it, see :func:`bundlelab.bundles.resolve_update_format`).
    """

    data: Any
    fmt: FloatFormat
    device: str  # "cpu" or "cuda"

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.data.shape[1])


def framework_of(array: Any) -> str:
    """Return 'numpy', 'cupy', 'torch', 'cuda' (any CUDA array interface) or 'other'."""
    if isinstance(array, np.ndarray):
        return "numpy"
    module = type(array).__module__.split(".")[0]
    if module in ("cupy", "torch"):
        return module
    if hasattr(array, "__cuda_array_interface__"):
        return "cuda"
    return "other"


def is_gpu_array(array: Any) -> bool:
    """Whether ``array`` lives in CUDA device memory."""
    kind = framework_of(array)
    if kind == "torch":
        return bool(array.is_cuda)
    return kind in ("cupy", "cuda")


def dtype_name(array: Any) -> str:
    """The element type as a plain name: 'float32', 'bfloat16', 'int64', 'object', ..."""
    name = str(array.dtype)
    return name.removeprefix("torch.")


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.is_cuda:
        tensor = tensor.cpu()
    if dtype_name(tensor) == "bfloat16":
        tensor = tensor.float()  # exact: bfloat16 is the top half of float32
    return tensor.numpy()


def to_host(array: Any) -> np.ndarray:
    """A numpy view (zero-copy where possible) or copy of any supported array."""
    kind = framework_of(array)
    if kind == "numpy":
        return array
    if kind == "torch":
        return _torch_to_numpy(array)
    if kind == "cupy":
        return array.get()
    if kind == "cuda":
        from numba import cuda

        return cuda.as_cuda_array(array).copy_to_host()
    try:
        return np.asarray(array)
    except Exception as exc:  # noqa: BLE001 - the user gets one line instead
        raise BundleLabError(
            f"cannot read activations of type {type(array).__name__}: pass a numpy array, "
            f"a CuPy array or a torch tensor ({exc})"
        ) from None


def check_float_dtype(name: str, layer: str | None) -> FloatFormat:
    """Map a dtype name to its :class:`FloatFormat`, or raise a one-line error naming the fix."""
    where = f"layer {layer!r}: " if layer else ""
    if name in FORMATS:
        return FORMATS[name]
    if name.startswith(("int", "uint", "bool")):
        raise BundleLabError(
            f"{where}integer activations ({name}) are not supported: bundles are defined on the "
            "floating-point values a layer outputs; cast them, e.g. a.astype(np.float32)"
        )
    if name in ("object", "O") or name.startswith(("<U", "|S", "str")):
        raise BundleLabError(
            f"{where}activations of dtype {name} are refused: save layer outputs as a float "
            "array (never pickled objects)"
        )
    raise BundleLabError(
        f"{where}unsupported activation dtype {name}: expected one of "
        f"{', '.join(FORMATS)}"
    )


def as_rows(array: Any, *, device: str, layer: str | None = None) -> Rows:
    """Flatten activations of shape (n_samples, ...) to kernel rows on ``device``.

    ``device`` is 'cpu' or 'cuda'; GPU inputs stay on the GPU for 'cuda' (zero-copy when they
    are already float32/float64 and C-contiguous), CPU inputs are copied there.
    """
    where = f"layer {layer!r}: " if layer else ""
    if framework_of(array) == "other":
        array = to_host(array)
    shape = tuple(int(s) for s in array.shape)
    if len(shape) == 0:
        raise BundleLabError(
            f"{where}activations must have shape (n_samples, ...), got a scalar"
        )
    if shape[0] == 0:
        raise BundleLabError(f"{where}activations are empty (0 samples)")
    n_features = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if n_features == 0:
        raise BundleLabError(f"{where}activations have 0 values per sample (shape {shape})")
    fmt = check_float_dtype(dtype_name(array), layer)

    if device == "cpu":
        host = to_host(array)
        if host.dtype.kind != "f" or host.dtype.itemsize == 2:
            host = host.astype(np.float32)  # exact for float16 and bfloat16
        data = np.ascontiguousarray(host.reshape(shape[0], n_features))
        return Rows(data, fmt, "cpu")

    from .kernels import get_kernel_backend

    # a one-line error on a machine without a usable GPU, before any copy
    get_kernel_backend("cuda")
    return Rows(_to_cuda_rows(array, shape[0], n_features, fmt), fmt, "cuda")


def _to_cuda_rows(array: Any, n_samples: int, n_features: int, fmt: FloatFormat) -> Any:
    from numba import cuda

    kind = framework_of(array)
    if kind == "torch":
        if not array.is_cuda:
            array = array.cuda()
        array = array.detach().reshape(n_samples, n_features)
        if not fmt.native:
            array = array.float()
        return cuda.as_cuda_array(array.contiguous())
    if kind == "cupy":
        array = array.reshape(n_samples, n_features)
        if not fmt.native:
            array = array.astype("float32")
        import cupy  # already imported: the user handed us a CuPy array

        return cuda.as_cuda_array(cupy.ascontiguousarray(array))
    if kind == "cuda":
        device_array = cuda.as_cuda_array(array)
        if not fmt.native:
            device_array = cuda.to_device(device_array.copy_to_host().astype(np.float32))
        return device_array.reshape(n_samples, n_features)
    host = to_host(array)
    if not fmt.native:
        host = host.astype(np.float32)
    return cuda.to_device(np.ascontiguousarray(host.reshape(n_samples, n_features)))
