"""A directory of ``.npy`` files: one per layer, plus ``labels.npy``, memory-mapped.

Layer order: the names in ``layers.txt`` (one per line; blank lines and ``#`` comments are
skipped) when the directory has that file, else natural order of the file names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError
from .dumps import (
    READ_ERRORS,
    Dump,
    LayerInfo,
    check_declared,
    corrupt_error,
    format_bytes,
    info_from_dtype,
    natural_key,
    unknown_layer_error,
)
from .npz import read_npy_header

ORDER_FILE = "layers.txt"


class NpyDirDump(Dump):
    """Layers stored as ``<name>.npy`` files in one directory, read through memory maps."""

    format = "npy-dir"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        self._files = {file.stem: file for file in path.glob("*.npy") if file.is_file()}
        infos = {name: self._file_info(name, file) for name, file in self._files.items()}
        names = sorted(infos, key=natural_key)
        order_file = path / ORDER_FILE
        if order_file.is_file():
            names = self._listed_order(order_file, names)
        self._finish_listing(names, infos)

    def _listed_order(self, order_file: Path, names: list[str]) -> list[str]:
        listed = []
        try:
            text = order_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise corrupt_error(order_file, "the layer order", exc) from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                listed.append(line)
        for name in listed:
            if name not in names:
                error = unknown_layer_error(name, names, where=f"{self.path.name}/{ORDER_FILE}")
                raise BundleLabError(f"{error} (no {name}.npy in the directory)")
        if self.labels_key in names and self.labels_key not in listed:
            listed.append(self.labels_key)
        return listed

    def _file_info(self, name: str, file: Path) -> LayerInfo:
        try:
            with open(file, "rb") as stream:
                shape, _, dtype = read_npy_header(stream)
                header_size = stream.tell()
        except READ_ERRORS as exc:
            raise corrupt_error(file, "its .npy header", exc) from None
        info = info_from_dtype(name, shape, dtype)
        size = file.stat().st_size
        if not dtype.hasobject:
            stored = max(size - header_size, 0)
            check_declared(file, info, limit=stored, stored=f"{format_bytes(stored)} of data")
        if not dtype.hasobject and size < header_size + info.nbytes:
            raise corrupt_error(
                file, "its data", EOFError(f"{size - header_size} of {info.nbytes} bytes stored")
            )
        return info

    def _map(self, name: str) -> np.ndarray:
        return np.load(self._files[name], mmap_mode="r", allow_pickle=False)

    def _read(self, name: str) -> np.ndarray:
        return np.array(self._map(name), order="C")

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.array(self._map(name)[start:stop], order="C")

    def _chunks(self, name, info, chunk_rows):
        mapped = self._wrap_errors(name, lambda: self._map(name))
        for start in range(0, info.n_samples, chunk_rows):
            yield np.array(mapped[start:start + chunk_rows], order="C")

    def _read_labels(self) -> np.ndarray:
        return np.load(self._files[self.labels_key], allow_pickle=False)
