"""A directory of ``.npy`` files, one per layer plus ``labels.npy``, memory-mapped in place
(copy-on-write: the kernels read the page cache, nothing is copied); also thingsvision's
layout, one folder per layer.

Layouts (they can be mixed in one directory):

- ``<layer>.npy``: one file per layer.
- ``<layer>/features.npy`` or ``<layer>/features.hdf5`` (an HDF5 dataset named ``features``):
  one folder per layer, as thingsvision's ``save_features(features, out_path=<dir>/<layer>,
  file_format="npy" | "hdf5")`` writes them.  The layer is named after the folder.  Folders
  holding neither are ignored (an ``images`` folder, say); features split into
  ``features_01.npy``... are refused with a hint (merge them first).

The labels are ``<labels_key>.npy`` at the top (``targets.npy`` when there is no
``labels.npy``).  Layer order: the names in ``layers.txt`` (one per line; blank lines and ``#``
comments are skipped) when the directory has that file, else natural order of the names.  A
layer folder or file that is a symbolic link leading out of the directory is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError
from .dumps import (
    ORDER_BY_NAME,
    ORDER_STORED,
    READ_ERRORS,
    Dump,
    LayerInfo,
    check_declared,
    corrupt_error,
    format_bytes,
    info_from_dtype,
    natural_key,
    read_order_file,
    unknown_layer_error,
)
from .npz import read_npy_header

ORDER_FILE = "layers.txt"
#: the file names thingsvision gives a layer's features in the layer's folder
FEATURE_FILES = ("features.npy", "features.hdf5")
#: the HDF5 dataset holding them
FEATURES_DATASET = "features"


class NpyDirDump(Dump):
    """Layers stored as ``<name>.npy`` files (or ``<name>/features.npy|hdf5`` folders) in one
    directory, read through memory maps (HDF5 through h5py)."""

    format = "npy-dir"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        self._root = path.resolve()
        self._files = {file.stem: file for file in path.glob("*.npy") if file.is_file()}
        self._h5: dict[str, Dump] = {}
        try:
            self._list_folders()
            infos = {name: self._file_info(name, file) for name, file in self._files.items()}
            infos.update({name: self._h5_info(name) for name in self._h5})
            names = sorted(infos, key=natural_key)
            order = ORDER_BY_NAME
            order_file = path / ORDER_FILE
            if order_file.is_file():
                names, order = self._listed_order(order_file, names), ORDER_STORED
            if self._h5 or any(file.parent != path for file in self._files.values()):
                self.format = "thingsvision"
            self._finish_listing(names, infos, order=order)
        except BaseException:
            self.close()
            raise

    def _list_folders(self) -> None:
        """thingsvision's layout: a folder per layer holding its features file."""
        for folder in sorted(self.path.iterdir(), key=lambda p: natural_key(p.name)):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            found = [folder / name for name in FEATURE_FILES if (folder / name).is_file()]
            if not found:
                if any(folder.glob("features_[0-9]*.*")):
                    raise BundleLabError(
                        f"{self.path.name}/{folder.name} holds features split into several "
                        "files (features_01...): merge them into one features.npy first "
                        "(thingsvision.utils.storing.merge_features)"
                    )
                continue
            name = folder.name
            if len(found) > 1:
                raise BundleLabError(
                    f"{self.path.name}/{name} holds both features.npy and features.hdf5: keep "
                    "one of them"
                )
            if name in self._files:
                raise BundleLabError(
                    f"{self.path.name} holds the layer {name!r} twice, as {name}.npy and as the "
                    f"folder {name}/: keep one of them"
                )
            file = found[0]
            self._check_inside(file, f"{name}/{file.name}")
            if file.suffix == ".npy":
                self._files[name] = file
            else:
                from .hdf5 import Hdf5Dump

                self._h5[name] = Hdf5Dump(file, labels_key="labels")

    def _check_inside(self, file: Path, shown: str) -> None:
        try:
            file.resolve().relative_to(self._root)
        except ValueError:
            raise BundleLabError(
                f"{self.path.name}: {shown} is a symbolic link that leads out of the dump "
                "directory; bundlelab reads only files inside it: copy the file in"
            ) from None

    def _listed_order(self, order_file: Path, names: list[str]) -> list[str]:
        listed = read_order_file(order_file)
        for name in listed:
            if name not in names:
                error = unknown_layer_error(name, names, where=f"{self.path.name}/{ORDER_FILE}")
                raise BundleLabError(f"{error} (no {name}.npy in the directory)")
        for key in (self.labels_key, "targets"):
            if key in names and key not in listed:
                listed.append(key)
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

    def _h5_info(self, name: str) -> LayerInfo:
        dump = self._h5[name]
        if FEATURES_DATASET not in dump.arrays:
            raise BundleLabError(
                f"{self.path.name}/{name}/features.hdf5 has no dataset {FEATURES_DATASET!r} "
                f"(it holds {', '.join(map(repr, list(dump.arrays)[:4]))}): thingsvision stores "
                "a layer's features under that name"
            )
        info = dump.arrays[FEATURES_DATASET]
        return LayerInfo(name, info.shape, info.dtype, info.itemsize)

    def _map(self, name: str) -> np.ndarray:
        """The file mapped in place, copy-on-write (see :func:`bundlelab.io.dumps.mapped_array`:
        writable, a write stays private); a column-major file comes back copied in row order."""
        mapped = np.load(self._files[name], mmap_mode="c", allow_pickle=False)
        return np.ascontiguousarray(mapped)  # a view unless the file is column-major

    def _read(self, name: str) -> np.ndarray:
        if name in self._h5:
            return self._h5[name]._read(FEATURES_DATASET)
        return self._map(name)

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self._h5:
            return self._h5[name]._read_rows(FEATURES_DATASET, start, stop)
        return self._map(name)[start:stop]

    def _chunks(self, name, info, chunk_rows):
        if name in self._h5:
            yield from super()._chunks(name, info, chunk_rows)
            return
        mapped = self._wrap_errors(name, lambda: self._map(name))
        for start in range(0, info.n_samples, chunk_rows):
            yield mapped[start:start + chunk_rows]

    def _read_labels(self) -> np.ndarray:
        return np.load(self._files[self.labels_key], allow_pickle=False)

    def close(self) -> None:
        for dump in self._h5.values():
            dump.close()
