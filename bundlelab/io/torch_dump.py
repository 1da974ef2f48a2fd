"""``.pt`` / ``.pth`` dumps: a dict of tensors saved by ``torch.save``, loaded with
``torch.load(weights_only=True, mmap=True)``.

``torch.save({"relu1": a1, "relu2": a2, "labels": y}, "acts.pt")`` reads as a dump whose
layers are the dict's tensors in dict order ("stored in the file"); nested dicts give names
joined by ``/`` (``{"features": {"relu1": ...}, "targets": y}`` -> ``features/relu1``).  Labels
may be a tensor or a list of numbers or strings; other values (ints, strings) are not layers.

Safety: a ``.pt`` file is a pickle.  It is never unpickled with Python's own unpickler:
``weights_only=True`` restricts it to tensors, dicts, lists and plain values, and anything else
(pickled objects, classes, functions) is refused in one line.  Before torch sees the file:
only torch's zip format is read (the legacy format has no size table), every member must be
stored uncompressed within the file, and the pickle itself may take at most
:data:`MAX_PICKLE_BYTES`.  Tensors are memory-mapped from the file (``mmap=True``), so a
tensor cannot hold more than the file stores; a tensor declaring more elements than its
storage holds (a zero stride) is refused as a forged header.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import BundleLabError, MissingDependencyError
from .dumps import (
    ORDER_STORED,
    Dump,
    LayerInfo,
    check_declared,
    corrupt_error,
    format_bytes,
)

#: the pickle of a dict of tensors names each tensor in ~200 bytes: a bigger one is no dump
MAX_PICKLE_BYTES = 64 << 20

#: torch dtype name -> numpy name, for the ones numpy does not call alike
_NUMPY_NAMES = {"bool": "bool", "bfloat16": "bfloat16"}


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "reading .pt dumps requires torch. You can install it with `pip install torch`, or "
            "convert the dump to .safetensors (safetensors.torch.save_file(tensors, path))"
        ) from None
    return torch


class TorchDump(Dump):
    """Layers stored as the tensors of a dict saved by ``torch.save``."""

    format = "torch"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        self._check_archive()
        torch = _torch()
        self._torch = torch
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            detail = " ".join(str(exc).split("\n", 1)[0].split())
            refused = "Unsupported global" in str(exc) or "Weights only load failed" in detail
            if refused:
                raise BundleLabError(
                    f"{path.name} holds pickled Python objects other than tensors, which "
                    "bundlelab never unpickles: save a dict of tensors, "
                    "torch.save({'layer1': a1, ..., 'labels': y}, path)"
                ) from None
            raise corrupt_error(path, "its pickle", exc) from None
        except Exception as exc:  # noqa: BLE001 - torch's loader on arbitrary bytes
            raise corrupt_error(path, "its tensors", exc) from None
        if not isinstance(loaded, Mapping):
            raise BundleLabError(
                f"{path.name} holds a {type(loaded).__name__}, not a dict of tensors: save "
                "torch.save({'layer1': a1, ..., 'labels': y}, path)"
            )
        self._tensors: dict[str, Any] = {}
        self._values: dict[str, np.ndarray] = {}
        infos: dict[str, LayerInfo] = {}
        self._flatten(loaded, "", infos, depth=0)
        self._finish_listing(list(infos), infos, order=ORDER_STORED)

    def _check_archive(self) -> None:
        """torch's zip format, members stored within the file, a small pickle."""
        size = self.path.stat().st_size
        try:
            with zipfile.ZipFile(self.path) as archive:
                members = archive.infolist()
        except zipfile.BadZipFile as exc:
            raise BundleLabError(
                f"{self.path.name} is not in torch's zip format (torch.save since torch 1.6), "
                f"or it is truncated or corrupt ({exc}): re-save it with torch.save, or convert "
                "it to .safetensors"
            ) from None
        except (OSError, ValueError, EOFError, UnicodeDecodeError, NotImplementedError,
                zipfile.LargeZipFile) as exc:
            raise corrupt_error(self.path, "its zip directory", exc) from None
        pickles = [m for m in members if m.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise BundleLabError(
                f"{self.path.name} is a zip file but not one torch.save wrote (it has "
                f"{len(pickles)} data.pkl members): save the dump with torch.save"
            )
        for member in members:
            if member.compress_type != zipfile.ZIP_STORED or member.file_size > size:
                raise corrupt_error(
                    self.path, f"member {member.filename!r}",
                    ValueError(f"it declares {format_bytes(member.file_size)}, compressed with "
                               f"method {member.compress_type}, in a file of {format_bytes(size)}"),
                )
        if pickles[0].file_size > MAX_PICKLE_BYTES:
            raise BundleLabError(
                f"{self.path.name}: its pickle takes {format_bytes(pickles[0].file_size)}, more "
                f"than a dict of tensors needs ({format_bytes(MAX_PICKLE_BYTES)} at most): save "
                "the dump as .safetensors"
            )

    def _flatten(self, tree: Mapping, prefix: str, infos: dict, *, depth: int) -> None:
        torch = self._torch
        for key, value in tree.items():
            name = prefix + str(key)
            if isinstance(value, Mapping) and depth < 8:
                self._flatten(value, name + "/", infos, depth=depth + 1)
            elif isinstance(value, torch.Tensor):
                infos[name] = self._tensor_info(name, value)
                self._tensors[name] = value
            elif name == self.labels_key or (
                    self.labels_key == "labels" and name == "targets"):
                array = self._plain_array(name, value)
                if array is not None:
                    infos[name] = LayerInfo(name, array.shape, array.dtype.name,
                                            array.dtype.itemsize)
                    self._values[name] = array

    def _plain_array(self, name: str, value: Any) -> np.ndarray | None:
        """Labels saved as a list of numbers or of strings (the pickle's size bounds it)."""
        if not isinstance(value, (list, tuple)):
            return None
        if all(isinstance(item, str) for item in value) or all(
                isinstance(item, int) for item in value):
            return np.asarray(value)
        return None

    def _tensor_info(self, name: str, tensor) -> LayerInfo:
        torch = self._torch
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise BundleLabError(
                f"{self.path.name}: tensor {name!r} is {str(tensor.layout).split('.')[-1]}"
                f"{' and quantized' if tensor.is_quantized else ''}: save dense tensors "
                "(tensor.to_dense() / tensor.dequantize())"
            )
        dtype = str(tensor.dtype).replace("torch.", "")
        info = LayerInfo(name, tuple(int(s) for s in tensor.shape),
                         _NUMPY_NAMES.get(dtype, dtype), int(tensor.element_size()))
        stored = tensor.untyped_storage().nbytes()
        # a zero stride lets a one-element storage declare any shape
        check_declared(self.path, info, limit=stored, stored=f"{format_bytes(stored)} of data")
        return info

    def _array(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        if name in self._values:
            return self._values[name][start:stop]
        tensor = self._tensors[name]
        if tensor.dim():
            tensor = tensor[start:stop]
        if tensor.dtype == self._torch.bfloat16:
            from .safetensors_dump import _import_ml_dtypes

            _import_ml_dtypes()
            import ml_dtypes

            return tensor.contiguous().view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.contiguous().numpy()

    def _read(self, name: str) -> np.ndarray:
        return np.array(self._array(name))

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.array(self._array(name, start, stop))

    def _read_labels(self) -> np.ndarray:
        return np.array(self._array(self.labels_key))
