"""HDF5 dumps (``.h5`` / ``.hdf5``) through h5py: datasets anywhere in the file, read by rows.

A dataset is named by its path without the leading slash (``block1/conv2``); the labels key is
a path too.  Groups created with ``track_order=True`` list their members in creation order,
other groups in natural name order.  Row chunks are read with h5py slicing, which only touches
the HDF5 chunks that hold those rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError, require
from .dumps import Dump, LayerInfo, info_from_dtype, natural_key


def _h5py():
    return require("h5py", purpose="reading HDF5 dumps", extra="io")


class Hdf5Dump(Dump):
    """Layers stored as datasets of an HDF5 file."""

    format = "hdf5"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        self._h5py = _h5py()
        try:
            self._file = self._h5py.File(path, "r")
        except OSError as exc:
            raise BundleLabError(
                f"{path.name} is not a readable HDF5 file, it looks truncated or corrupt "
                f"({' '.join(str(exc).split())}); re-create it with h5py"
            ) from None
        try:
            infos: dict[str, LayerInfo] = {}
            self._walk(self._file, "", infos)
            self.labels_key = labels_key.strip("/")
            self._finish_listing(list(infos), infos)
        except BaseException:
            self._file.close()
            raise

    def _walk(self, group, prefix: str, infos: dict[str, LayerInfo]) -> None:
        names = list(group.keys())
        tracked = group.id.get_create_plist().get_link_creation_order()
        if not tracked & self._h5py.h5p.CRT_ORDER_TRACKED:
            names.sort(key=natural_key)
        for name in names:
            item = group.get(name)
            path = prefix + name
            if isinstance(item, self._h5py.Group):
                self._walk(item, path + "/", infos)
            elif isinstance(item, self._h5py.Dataset):
                if self._h5py.check_string_dtype(item.dtype) is not None:
                    infos[path] = LayerInfo(path, item.shape, "str", item.dtype.itemsize)
                else:
                    infos[path] = info_from_dtype(path, item.shape, item.dtype)

    def _read(self, name: str) -> np.ndarray:
        return self._file[name][()]

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._file[name][start:stop]

    def _read_labels(self) -> np.ndarray:
        dataset = self._file[self.labels_key]
        if self._h5py.check_string_dtype(dataset.dtype) is not None:
            return np.asarray(dataset.asstr()[()])
        return np.asarray(dataset[()])

    def close(self) -> None:
        self._file.close()
