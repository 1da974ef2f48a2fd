""".safetensors dumps, read lazily through ``safe_open`` / ``get_slice`` (numpy framework).

bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays, which the core computes on in
bfloat16; safetensors needs ``ml_dtypes`` imported to build them, so it is imported here, on
the first bfloat16 read.

Layer order: the format stores tensors sorted by name, not in write order, so the order is read
from the header's ``__metadata__``: a JSON list of names under ``bundlelab.order`` (what
:func:`bundlelab.io.save_dump` writes), else under ``layer_order`` or ``order`` when one holds
such a list.  Names the list misses follow it in natural order; a ``bundlelab.order`` that is
not a list of the file's names is a one-line error.  Without one, natural order of the names
(or the positions of torchlens labels).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .._errors import BundleLabError, require
from .dumps import (
    ORDER_BY_NAME,
    ORDER_KEY,
    ORDER_STORED,
    Dump,
    LayerInfo,
    check_declared,
    corrupt_error,
    format_bytes,
    mapped_array,
    natural_key,
    read_exact,
)

#: the element types that are mapped in place (layers); labels and ids are read by safetensors
FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")

#: metadata keys that hold a layer order, ours first; only ours must be valid
ORDER_KEYS = (ORDER_KEY, "layer_order", "order")

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
        self._offsets = self._data_offsets(infos, size)
        names = sorted(infos, key=natural_key)
        stored = self._stored_order(names)
        if stored is None:
            self._finish_listing(names, infos, order=ORDER_BY_NAME)
        else:
            listed = set(stored)
            rest = [name for name in names if name not in listed]
            self._finish_listing(stored + rest, infos, order=ORDER_STORED)

    def _data_offsets(self, infos: dict[str, LayerInfo], size: int) -> dict[str, int]:
        """name -> where the tensor's bytes start in the file, from the header (which
        ``safe_open`` has validated), checked to hold the declared size inside the file."""
        try:
            with open(self.path, "rb") as handle:
                (header_size,) = struct.unpack("<Q", read_exact(handle, 8))
                if header_size > size - 8:
                    raise EOFError(f"its header declares {header_size} bytes")
                header = json.loads(read_exact(handle, header_size))
        except (OSError, ValueError, EOFError, struct.error) as exc:
            raise corrupt_error(self.path, "its header", exc) from None
        offsets = {}
        for name, info in infos.items():
            entry = header.get(name) if isinstance(header, dict) else None
            spans = entry.get("data_offsets") if isinstance(entry, dict) else None
            if not (isinstance(spans, list) and len(spans) == 2
                    and all(isinstance(at, int) for at in spans)):
                raise corrupt_error(self.path, f"the header of tensor {name!r}",
                                    ValueError("it holds no data_offsets"))
            begin, end = 8 + header_size + spans[0], 8 + header_size + spans[1]
            known = info.dtype in FLOAT_NAMES or entry.get("dtype") in DTYPES
            if (known and end - begin != info.nbytes) or begin < 8 + header_size or end > size:
                raise corrupt_error(
                    self.path, f"tensor {name!r}",
                    ValueError(f"its data_offsets {spans} do not hold its {info.nbytes} bytes "
                               f"inside the file"),
                )
            offsets[name] = begin
        return offsets

    def _map(self, name: str) -> np.ndarray | None:
        """The tensor mapped in place (see :func:`bundlelab.io.dumps.mapped_array`), or None
        for a scalar or data not aligned for its type."""
        info = self._infos.get(name, self._label_info)
        if not info.shape or info.dtype not in FLOAT_NAMES:
            return None
        if info.dtype == "bfloat16":
            _import_ml_dtypes()
        dtype = np.dtype(info.dtype).newbyteorder("<")
        return mapped_array(self.path, self._offsets[name], dtype, info.shape)

    def _stored_order(self, names: list[str]) -> list[str] | None:
        """The layer order in the header's metadata, or None when it holds none."""
        try:
            metadata = self._file.metadata() or {}
        except (self._error_type, OSError, ValueError, RuntimeError) as exc:
            raise corrupt_error(self.path, "its metadata", exc) from None
        known = set(names)
        for key in ORDER_KEYS:
            if key not in metadata:
                continue
            try:
                order = json.loads(metadata[key])
            except ValueError:
                order = None
            valid = (
                isinstance(order, list) and all(isinstance(name, str) for name in order)
                and len(set(order)) == len(order) and set(order) <= known
            )
            if valid:
                return order
            if key == ORDER_KEY:
                raise corrupt_error(
                    self.path, f"the layer order {key!r} of its metadata",
                    ValueError("it is not a JSON list of the names of its tensors, each once"),
                )
        return None

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
        mapped = self._map(name)
        return self._slice(name) if mapped is None else mapped

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        mapped = self._map(name)
        return self._slice(name, start, stop) if mapped is None else mapped[start:stop]

    def _chunks(self, name, info, chunk_rows):
        mapped = self._wrap_errors(name, lambda: self._map(name))
        if mapped is None:
            yield from super()._chunks(name, info, chunk_rows)
            return
        for start in range(0, info.n_samples, chunk_rows):
            yield mapped[start:start + chunk_rows]

    def _read_labels(self) -> np.ndarray:
        return self._slice(self.labels_key)

    def close(self) -> None:
        self._file.__exit__(None, None, None)


def _import_ml_dtypes() -> None:
    # importing ml_dtypes registers numpy's 'bfloat16' dtype, which safetensors needs
    require("ml_dtypes", purpose="reading bfloat16 tensors", extra="io")
