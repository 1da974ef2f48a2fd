""".safetensors dumps, read lazily through ``safe_open`` / ``get_slice`` (numpy framework).

bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays, which the core computes on in
bfloat16; safetensors needs ``ml_dtypes`` imported to build them, so it is imported here, on
the first bfloat16 read.  Layer order is the natural order of the tensor names (the format
stores tensors sorted, not in write order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError, require
from .dumps import Dump, LayerInfo, check_declared, corrupt_error, format_bytes, natural_key

#: safetensors dtype code -> (numpy name, item size)
DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


def _safe_open():
    safetensors = require("safetensors", purpose="reading .safetensors dumps", extra="io")
    return safetensors.safe_open, safetensors.SafetensorError


class SafetensorsDump(Dump):
    """Layers stored as tensors of a ``.safetensors`` file (memory-mapped by safetensors)."""

    format = "safetensors"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        safe_open, self._error_type = _safe_open()
        try:
            self._file = safe_open(str(path), framework="np")
        except (self._error_type, OSError, ValueError, RuntimeError) as exc:
            raise BundleLabError(
                f"{path.name} is not a readable .safetensors file, it looks truncated or corrupt "
                f"({exc}); re-create it with safetensors.numpy.save_file"
            ) from None
        try:
            self._list()
        except BaseException:
            self.close()
            raise

    def _list(self) -> None:
        infos = {}
        size = self.path.stat().st_size
        for name in self._file.keys():
            try:
                tensor = self._file.get_slice(name)
                code = tensor.get_dtype()
                shape = tuple(int(s) for s in tensor.get_shape())
            except (self._error_type, OSError, ValueError, RuntimeError) as exc:
                raise corrupt_error(self.path, f"the header of tensor {name!r}", exc) from None
            dtype, itemsize = DTYPES.get(code, (code.lower(), 1))
            infos[name] = LayerInfo(name, shape, dtype, itemsize)
            # safetensors checks the offsets against the file; this is a second guard
            check_declared(self.path, infos[name], limit=size, stored=format_bytes(size))
        self._finish_listing(sorted(infos, key=natural_key), infos)

    def _slice(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        info = self._infos.get(name, self._label_info)
        if info.dtype == "bfloat16":
            _import_ml_dtypes()
        try:
            tensor = self._file.get_slice(name)
            return tensor[start:stop] if info.shape else tensor[:]
        except self._error_type as exc:
            raise corrupt_error(self.path, f"tensor {name!r}", exc) from None

    def _read(self, name: str) -> np.ndarray:
        return self._slice(name)

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._slice(name, start, stop)

    def _read_labels(self) -> np.ndarray:
        return self._slice(self.labels_key)

    def close(self) -> None:
        self._file.__exit__(None, None, None)


def _import_ml_dtypes() -> None:
    # importing ml_dtypes registers numpy's 'bfloat16' dtype, which safetensors needs
    require("ml_dtypes", purpose="reading bfloat16 tensors", extra="io")
