"""Saved activation dumps: one array per layer plus the class labels, read lazily.

:func:`open_dump` picks a reader by extension from :data:`READERS` (imported on first use, so
``h5py`` and ``safetensors`` are needed only for their own formats).  Every reader lists its
layers without loading them, loads one layer on demand, and can read a layer in row chunks, so a
dump larger than memory can be analysed (see :func:`bundlelab.io.analyze_dump`).

Layer order (the network order the report follows), and what :attr:`Dump.order` says:

- ``.npz``: the order the arrays were written (``np.savez(path, **layers)`` keeps dict order):
  "stored in the file".
- ``.safetensors``: the JSON list of names under the metadata key ``bundlelab.order`` (what
  :func:`save_dump` writes; ``layer_order`` and ``order`` are read too): "stored in the file".
- ``.h5`` / ``.hdf5``: creation order where the groups track it (``track_order=True``, on the
  file or a group; :func:`save_dump` sets it): "stored in the file".
- directory of ``.npy`` files (or thingsvision's one folder per layer): the names listed in
  ``layers.txt`` (one per line, ``#`` comments) when there is one: "stored in the file".
- ``.pt`` (a dict of tensors saved by ``torch.save``): dict order, "stored in the file".
- otherwise, names that are torchlens layer labels (``linear_1_1``, ``relu_1_2``: type, count,
  position) follow the position they carry; any other names natural order (``layer2`` before
  ``layer10``): "sorted by name (the file stores no order)".
- an order the user gives (``open_dump(order=...)``, ``bundlelab analyze --order``) overrides all
  of these: "given".

0-d arrays (saved scalars such as a step counter) are not listed as layers.

Layers stored uncompressed are memory-mapped in place, copy-on-write (``.npy`` files, stored
``.npz`` members, ``.safetensors`` tensors, contiguous HDF5 datasets without filters: see
:func:`mapped_array`), so analysing a layer reads the page cache instead of copying the file;
the rest is read, or streamed, into one buffer.

Refused before any data is read, each in one line (``docs/security.md``): arrays of Python
objects (never unpickled); a header that declares a negative dimension or more bytes than the
file stores for the array (:func:`check_declared`); labels larger than physical memory; in
HDF5, external links, external raw storage, virtual datasets and link cycles; a pipe or device
as the dump path.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import mmap
import os
import re
import time
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from .._arrays import to_host
from .._atomic import atomic_open
from .._errors import BundleLabError
from .._selection import short_list, unknown_layer_error
from .._validation import (
    check_bool,
    check_int,
    checked_keywords,
    saved_label_vector,
    short_repr,
)

#: what a reader's library raises on a corrupt or truncated file, turned into one line
READ_ERRORS = (
    OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error, OverflowError,
)

#: file extension (or "directory") -> (module, class) of its reader
READERS = {
    ".npz": ("bundlelab.io.npz", "NpzDump"),
    "directory": ("bundlelab.io.npy_dir", "NpyDirDump"),
    ".safetensors": ("bundlelab.io.safetensors_dump", "SafetensorsDump"),
    ".h5": ("bundlelab.io.hdf5", "Hdf5Dump"),
    ".hdf5": ("bundlelab.io.hdf5", "Hdf5Dump"),
    ".pt": ("bundlelab.io.torch_dump", "TorchDump"),
    ".pth": ("bundlelab.io.torch_dump", "TorchDump"),
}

#: the element types a layer can be analysed in (any other array is not a layer by default)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

#: what :attr:`Dump.order` says about where the layer order came from
ORDER_STORED = "stored in the file"
ORDER_BY_NAME = "sorted by name (the file stores no order)"
ORDER_TORCHLENS = "torchlens labels (the position in each name)"
ORDER_GIVEN = "given"

#: the labels of torchvision datasets and thingsvision scripts, read when 'labels' is absent
FALLBACK_LABELS_KEY = "targets"

#: a torchlens layer label: type, count of that type, position in the network, optional pass
_TORCHLENS_LABEL = re.compile(r"^([a-z][a-z0-9]*(?:_[a-z][a-z0-9]*)*)_(\d+)_(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class LayerInfo:
    """Shape and element type of one stored array, known without loading it.

    Parameters
    ----------
    name : str
        The array's name in the dump.
    shape : tuple of int
        Its shape, samples first.
    dtype : str
        numpy's name of its element type in native byte order ('float32', 'bfloat16', ...).
    itemsize : int
        Bytes per element.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy's name in native byte order: 'float32', 'bfloat16', 'object', ...
    itemsize: int

    @property
    def n_samples(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def n_features(self) -> int:
        # Python ints: a forged shape such as (4, 2**62) must not wrap around
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


# a one-line BundleLabError for an unknown keyword, at the call (the dataclass writes __init__)
LayerInfo.__init__ = checked_keywords(LayerInfo.__init__)  # type: ignore[method-assign]


class Dump:
    """An opened activation dump: layer names in network order, labels, and lazy layer reads.

    Use :func:`open_dump` to get one.  ``dump[name]`` gives a layer as a writable numpy
    array (a copy-on-write memory map of the file where the layer is stored uncompressed and
    aligned, else read into one buffer); :meth:`iter_chunks` reads it ``chunk_rows`` samples
    at a time; :meth:`layers` yields ``(name, loader)`` pairs that
    :func:`bundlelab.analyze_layers` accepts.  Close it (or use it as a context manager) to
    release the file.

    A dump without its labels array opens (``bundlelab info`` lists it); reading
    :attr:`labels` is then a one-line error naming the arrays that could be labels.

    Subclasses list their arrays through ``_finish_listing`` (which fills ``_infos``, the
    layers in order, and ``_label_info``) and implement ``_read(name)``,
    ``_read_rows(name, start, stop)`` and ``_read_labels()``.

    Parameters
    ----------
    path : pathlib.Path
        The dump's file or directory.
    labels_key : str
        Name of the array holding the labels.
    """

    format = "?"

    @checked_keywords
    def __init__(self, path: Path, labels_key: str):
        self.path = path
        self.labels_key = labels_key
        self._infos: dict[str, LayerInfo] = {}
        self._arrays: dict[str, LayerInfo] = {}
        self._label_info: LayerInfo | None = None
        self._labels: np.ndarray | None = None
        #: where the layer order came from (ORDER_STORED, ORDER_BY_NAME, ... ; see the module)
        self.order = ORDER_BY_NAME

    # -- what is stored ----------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Layer names in network order (the labels array is not a layer)."""
        return list(self._infos)

    def info(self, name: str) -> LayerInfo:
        """Shape and dtype of a layer, without reading it."""
        try:
            return self._infos[name]
        except KeyError:
            raise unknown_layer_error(name, self.layer_names, where=self.path.name) from None

    @property
    def arrays(self) -> dict[str, LayerInfo]:
        """Every stored array (layers, labels, scalars, ids), in listing order."""
        return dict(self._arrays)

    @property
    def has_labels(self) -> bool:
        """Whether the dump holds its labels array (``labels_key``)."""
        return self._label_info is not None

    def label_candidates(self) -> list[str]:
        """Arrays that could be the labels: 1-D integer, boolean or string arrays with one value
        per sample (the sample count of the float layers)."""
        counts = [info.n_samples for info in self._infos.values() if info.dtype in FLOAT_DTYPES]
        n_samples = max(set(counts), key=counts.count) if counts else None
        return [
            name for name, info in self._arrays.items()
            if len(info.shape) == 1 and (n_samples is None or info.shape[0] == n_samples)
            and info.dtype.startswith(("int", "uint", "bool", "str", "<U", "bytes"))
        ]

    @property
    def labels(self) -> np.ndarray:
        """The class label of every sample (read once, then cached)."""
        if self._label_info is None:
            raise missing_labels_error(
                self.path.name, self.labels_key, list(self._arrays), self.label_candidates()
            )
        if self._labels is None:
            check_readable(self._label_info, self.path.name)
            check_labels_fit(self._label_info, self.path.name, self.labels_key)
            labels = self._wrap_errors(self.labels_key, self._read_labels)
            self._labels = saved_label_vector(labels, where=self.path.name, key=self.labels_key)
        return self._labels

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} layers)"

    def ordered(self, order: Any) -> list[str]:
        """The layers a given order lists, in that order (checked, the dump unchanged).

        Parameters
        ----------
        order : sequence of str, or path-like
            Layer names in network order, or a text file of them (one per line, blank lines
            and ``#`` comments skipped, like ``layers.txt``).

        Returns
        -------
        list of str
        """
        where = self.path.name
        if isinstance(order, (str, os.PathLike)):
            where = f"the order file {Path(order).name}"
            order = read_order_file(Path(order))
        if isinstance(order, (bytes, Mapping)) or not hasattr(order, "__iter__"):
            raise BundleLabError(
                "The 'order' parameter must be a list of layer names or a text file of them. "
                f"Got {short_repr(order)} instead."
            )
        names = list(order)
        if not names or not all(isinstance(name, str) for name in names):
            raise BundleLabError(
                f"the layer order must name at least one layer, as str: got {short_repr(names)}"
            )
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise BundleLabError(f"{where} names the layer {twice!r} twice: list each layer once")
        for name in names:
            if name not in self._infos:
                raise unknown_layer_error(name, self.layer_names, where=where)
        return names

    def reorder(self, order: Any) -> None:
        """Use a given layer order: the listed layers, in that order, are the dump's layers
        (arrays not listed are left out) and :attr:`order` becomes "given".

        Parameters
        ----------
        order : sequence of str, or path-like
            See :meth:`ordered`.
        """
        self._infos = {name: self._infos[name] for name in self.ordered(order)}
        self.order = ORDER_GIVEN

    # -- reading -----------------------------------------------------------------------------
    def load(self, name: str) -> np.ndarray:
        """The whole layer as a writable array of shape (n_samples, ...) in native byte order:
        memory-mapped in place (copy-on-write: a write stays in this process) where the format
        stores it uncompressed and aligned, else read into memory."""
        info = self.info(name)
        check_readable(info, self.path.name)
        return in_memory(self._wrap_errors(name, lambda: self._read(name)))

    __getitem__ = load

    def iter_chunks(self, name: str, chunk_rows: int) -> Iterator[np.ndarray]:
        """The layer ``chunk_rows`` samples at a time, in sample order (the last may be shorter)."""
        chunk_rows = check_int("chunk_rows", chunk_rows, low=1)
        info = self.info(name)
        check_readable(info, self.path.name)
        return (in_memory(chunk) for chunk in self._chunks(name, info, chunk_rows))

    def _chunks(self, name: str, info: LayerInfo, chunk_rows: int) -> Iterator[np.ndarray]:
        for start in range(0, info.n_samples, chunk_rows):
            stop = min(start + chunk_rows, info.n_samples)
            yield self._wrap_errors(name, lambda: self._read_rows(name, start, stop))

    def layers(self) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
        """``(name, loader)`` pairs in order; each loader reads its layer when called."""
        for name in self._infos:
            yield name, (lambda name=name: self.load(name))

    def close(self) -> None:
        """Release the file (a no-op for formats that hold nothing open)."""

    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- for readers -------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _read_labels(self) -> np.ndarray:
        raise NotImplementedError

    def _wrap_errors(self, name: str, read: Callable[[], Any]) -> Any:
        """Run a read; a corrupt or truncated file becomes one line naming the array."""
        try:
            return read()
        except BundleLabError:
            raise
        except READ_ERRORS as exc:
            raise corrupt_error(self.path, f"array {name!r}", exc) from None

    def _finish_listing(
        self, names: list[str], infos: dict[str, LayerInfo], *, order: str = ORDER_BY_NAME
    ) -> None:
        """Split the stored arrays into labels and layers (in ``names`` order, which is what
        ``order`` says; an ORDER_BY_NAME listing follows torchlens positions when the names are
        torchlens labels)."""
        if not names:
            raise BundleLabError(
                f"{self.path.name} is an empty dump: it holds no arrays; save one array per "
                f"layer and a {self.labels_key!r} array (bundlelab.io.save_dump does both)"
            )
        if (self.labels_key not in infos and self.labels_key == "labels"
                and FALLBACK_LABELS_KEY in infos):
            self.labels_key = FALLBACK_LABELS_KEY
        self._arrays = {name: infos[name] for name in names}
        self._label_info = infos.get(self.labels_key)
        # 0-d arrays are scalars (saved hyper-parameters, step counters), not layers.
        layers = [name for name in names if name != self.labels_key and infos[name].shape]
        self.order = order
        if order == ORDER_BY_NAME:
            by_position = torchlens_order(layers)
            if by_position is not None:
                layers, self.order = by_position, ORDER_TORCHLENS
        self._infos = {name: infos[name] for name in layers}
        if not self._infos:
            raise BundleLabError(
                f"{self.path.name} holds only the labels {self.labels_key!r} and no layer: save "
                "one activation array per layer beside them"
            )


# -- opening and saving ------------------------------------------------------------------------


@checked_keywords
def open_dump(
    path: str | os.PathLike, *, labels_key: str = "labels", order: Any = None
) -> Dump:
    """Open an activation dump without loading its layers.

    Parameters
    ----------
    path : path-like
        A ``.npz`` file, a directory of ``.npy`` files (or thingsvision's layout: one folder
        per layer holding ``features.npy`` or ``features.hdf5``), a ``.safetensors`` file, an
        HDF5 file (``.h5`` / ``.hdf5``) or a ``.pt`` file holding a dict of tensors: one array
        of shape (n_samples, ...) per layer plus the labels.
    labels_key : str, default='labels'
        Name of the array that holds the class label of every sample (in a directory, the
        file ``<labels_key>.npy``; in HDF5, a dataset path).  When the default 'labels' is
        absent, an array named 'targets' is read instead.  A dump without its labels opens;
        reading :attr:`Dump.labels` is then the error.
    order : sequence of str or path-like, optional
        The layer order to use instead of the stored one (:meth:`Dump.reorder`): the listed
        layers, in that order, are the dump's layers.  By default the order stored in the file,
        else natural name order; :attr:`Dump.order` says which.

    Returns
    -------
    Dump

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "acts.npz")
    >>> save_dump(path, {"dense1": np.ones((4, 3), np.float32)}, [0, 1, 0, 1])
    >>> with open_dump(path) as dump:
    ...     dump.layer_names, dump["dense1"].shape, dump.labels.tolist()
    (['dense1'], (4, 3), [0, 1, 0, 1])
    """
    path = _check_path(path)
    if not path.exists():
        raise BundleLabError(f"no such file or directory: {str(path)!r}")
    if not path.is_dir() and not path.is_file():
        raise BundleLabError(
            f"{str(path)!r} is not a regular file or a directory (a pipe or a device): save the "
            "dump to a file"
        )
    if not isinstance(labels_key, str) or not labels_key:
        raise BundleLabError(
            f"The 'labels_key' parameter must be a non-empty str. Got {labels_key!r} instead."
        )
    kind = "directory" if path.is_dir() else path.suffix.lower()
    if kind not in READERS:
        hint = (
            "a single .npy file holds one array: put one .npy file per layer and labels.npy "
            "in a directory, or save an .npz with bundlelab.io.save_dump"
            if kind == ".npy"
            else "supported: .npz, .safetensors, .h5/.hdf5, .pt, or a directory of .npy files"
        )
        raise BundleLabError(f"unknown dump format {path.suffix or path.name!r}: {hint}")
    module_name, class_name = READERS[kind]
    reader = getattr(importlib.import_module(module_name), class_name)
    dump = reader(path, labels_key)
    if order is not None:
        try:
            dump.reorder(order)
        except BaseException:
            dump.close()
            raise
    return dump


@checked_keywords
def save_dump(
    path: str | os.PathLike,
    layers: dict[str, Any],
    labels: Any,
    *,
    labels_key: str = "labels",
    compress: bool = False,
) -> None:
    """Write layers and labels to a dump file atomically (never pickled), with the layer order.

    The format follows the extension: ``.npz`` (the members in layer order), ``.safetensors``
    (the order as a JSON list under the metadata key ``bundlelab.order``; needs
    ``safetensors``) or ``.h5`` / ``.hdf5`` (datasets in a file that tracks creation order;
    needs ``h5py``).  :func:`open_dump` reads each back in the order of ``layers``.

    Parameters
    ----------
    path : path-like
        Destination, ending in ``.npz``, ``.safetensors``, ``.h5`` or ``.hdf5``.
    layers : dict of str -> array of shape (n_samples, ...)
        Layer outputs in network order (numpy arrays, or CuPy arrays / torch tensors, copied to
        the host).
    labels : array-like of shape (n_samples,)
        Class labels (numbers, or strings except in ``.safetensors``).
    labels_key : str, default='labels'
    compress : bool, default=False
        Deflate the members / datasets (smaller, slower to read); not for ``.safetensors``.
    """
    compress = check_bool("compress", compress)
    path = _check_path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise BundleLabError(
            f"save_dump writes .npz, .safetensors, .h5 or .hdf5 files: got {str(path)!r}; "
            "name it *.npz"
        )
    if not isinstance(labels_key, str) or not labels_key:
        raise BundleLabError(
            f"The 'labels_key' parameter must be a non-empty str. Got {short_repr(labels_key)} "
            "instead."
        )
    if not isinstance(layers, Mapping):
        raise BundleLabError(
            "The 'layers' parameter must be a dict of layer name -> activations. Got "
            f"{type(layers).__name__} instead."
        )
    if labels_key in layers:
        raise BundleLabError(
            f"a layer is named {labels_key!r} like the labels: rename it or pass another labels_key"
        )
    if not layers:
        raise BundleLabError("no layers to save: pass a dict of layer name -> activations")
    npz = suffix == ".npz"
    arrays = {str(name): _savable(name, value, npz=npz) for name, value in layers.items()}
    label_array = _savable(labels_key, labels, labels=True)
    label_vector = saved_label_vector(label_array, where="save_dump()", key=labels_key)
    for name, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != label_vector.shape[0]:
            shape = "a scalar" if array.ndim == 0 else f"{array.shape[0]} samples"
            raise BundleLabError(
                f"save_dump(): layer {name!r} has {shape} but there are "
                f"{label_vector.shape[0]} labels: pass one label per sample, and every layer "
                "with the samples first, in the same order"
            )
    SAVE_FORMATS[suffix](path, arrays, labels_key, label_array, compress)


def _save_npz(path: Path, arrays: dict, labels_key: str, labels: np.ndarray, compress: bool):
    arrays = {**arrays, labels_key: labels}
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_open(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=compression, allowZip64=True) as archive:
            for name, array in arrays.items():
                member_info = _aligned_member(name + ".npy", compression, handle.tell())
                with archive.open(member_info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


#: zip extra-field id of alignment padding (the one Android's zipalign writes)
_PADDING_FIELD = 0xD935
#: a zip64 local header: 30 fixed bytes before the name, 20 bytes of zip64 sizes after it
_LOCAL_HEADER_BYTES, _ZIP64_EXTRA_BYTES = 30, 20


def _aligned_member(filename: str, compression: int, header_offset: int) -> zipfile.ZipInfo:
    """A member whose data starts on a 64-byte boundary of the file: a padding extra field
    fills the local header up, so the array after its .npy header (a multiple of 64 bytes
    long) is aligned and :class:`~bundlelab.io.npz.NpzDump` maps it in place."""
    info = zipfile.ZipInfo(filename, date_time=time.localtime()[:6])
    info.compress_type = compression
    info.external_attr = 0o600 << 16
    if compression == zipfile.ZIP_STORED:
        try:
            name_bytes = len(filename.encode("ascii"))
        except UnicodeEncodeError:
            name_bytes = len(filename.encode("utf-8"))
        end = header_offset + _LOCAL_HEADER_BYTES + name_bytes + _ZIP64_EXTRA_BYTES
        padding = -end % 64 or 64
        padding += 64 if padding < 4 else 0
        info.extra = _PADDING_FIELD.to_bytes(2, "little") + (padding - 4).to_bytes(2, "little")
        info.extra += bytes(padding - 4)
    return info


def _save_safetensors(path: Path, arrays: dict, labels_key: str, labels: np.ndarray,
                      compress: bool):
    from .._errors import require

    if compress:
        raise BundleLabError(
            "save_dump(): .safetensors files are not compressed: drop compress=True, or save .npz"
        )
    if labels.dtype.kind in "USO":
        raise BundleLabError(
            f"save_dump(): .safetensors stores numbers only, and the labels {labels_key!r} are "
            "strings: map them to integers, or save .npz or .h5"
        )
    if any(str(array.dtype) == "bfloat16" for array in arrays.values()):
        require("ml_dtypes", purpose="writing bfloat16 tensors", extra="io")
    numpy_io = require("safetensors.numpy", purpose="writing .safetensors dumps", extra="io")
    tensors = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    tensors[labels_key] = np.ascontiguousarray(labels)
    # the format sorts its tensors by name: the order travels in the metadata
    data = numpy_io.save(tensors, metadata={ORDER_KEY: json.dumps(list(arrays))})
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def _save_hdf5(path: Path, arrays: dict, labels_key: str, labels: np.ndarray, compress: bool):
    from .._errors import require

    h5py = require("h5py", purpose="writing HDF5 dumps", extra="io")
    if any(str(array.dtype) == "bfloat16" for array in arrays.values()):
        raise BundleLabError(
            "save_dump(): HDF5 has no bfloat16: save .safetensors, or cast to float32 (exact, "
            "but bundles are then computed at float32 resolution)"
        )
    if "/" in labels_key or any("/" in name for name in arrays):
        raise BundleLabError(
            "save_dump(): a name holds '/', which HDF5 reads as a group path: rename the layer"
        )
    options = {"compression": "gzip"} if compress else {}
    # h5py writes through the file object, so the file appears whole or not at all; data of
    # 1 KiB or more starts on a 64-byte boundary, so the reader maps it in place
    with atomic_open(path, "w+b") as handle:
        with h5py.File(handle, "w", track_order=True, alignment_threshold=1024,
                       alignment_interval=64) as file:
            for name, array in arrays.items():
                file.create_dataset(name, data=array, **options)
            if labels.dtype.kind in "US":
                file.create_dataset(labels_key, data=labels.astype(object),
                                    dtype=h5py.string_dtype())
            else:
                file.create_dataset(labels_key, data=labels)


#: extension -> writer of :func:`save_dump`
SAVE_FORMATS = {
    ".npz": _save_npz,
    ".safetensors": _save_safetensors,
    ".h5": _save_hdf5,
    ".hdf5": _save_hdf5,
}

#: the safetensors metadata key under which :func:`save_dump` stores the layer order
ORDER_KEY = "bundlelab.order"


def _savable(name: str, value: Any, *, labels: bool = False, npz: bool = True) -> np.ndarray:
    array = to_host(value) if hasattr(value, "shape") else np.asarray(value)
    array = np.asarray(array)
    if array.dtype.hasobject:
        if labels:
            raise BundleLabError(
                f"labels {name!r} are Python objects: pass numbers or strings, e.g. "
                "np.asarray(labels, dtype=str)"
            )
        raise BundleLabError(f"layer {name!r} holds Python objects: pass a float array")
    if array.dtype.kind == "V" or (npz and str(array.dtype) == "bfloat16"):
        raise BundleLabError(
            f"layer {name!r} is {array.dtype}, which .npz cannot record: save it as .safetensors, "
            "or cast to float32 (exact, but bundles are then computed at float32 resolution)"
        )
    return array


def _check_path(path: Any) -> Path:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise BundleLabError(
            f"The 'path' parameter must be a file or directory path. Got {short_repr(path)} "
            "instead."
        )
    return Path(path)


# -- shared helpers ----------------------------------------------------------------------------

#: an order file is a list of names: anything larger is not one
MAX_ORDER_FILE_BYTES = 16 << 20

#: the units of ``format_bytes``, each 1024 times the one before
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n_bytes: int) -> str:
    """``160 B``, ``1.5 MiB``, ``256.0 TiB``."""
    value = float(n_bytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{n_bytes} B"
            return f"{value:.1f} {unit}" if abs(value) < 1e4 else f"{value:.3g} {unit}"
        value /= 1024
    return f"{n_bytes} B"


def physical_memory() -> int:
    """Bytes of physical memory (8 GiB where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 8 << 30


def check_declared(path: Path, info: LayerInfo, *, limit: int, stored: str) -> None:
    """Refuse a stored array whose header declares a negative dimension, or more bytes than
    the file can hold for it (``limit``, described by ``stored``), before anything is allocated:
    a forged header must not make a reader allocate terabytes or loop over fill values.
    """
    if any(size < 0 for size in info.shape):
        raise corrupt_error(
            path, f"array {info.name!r}",
            ValueError(f"its header declares a negative dimension, shape {short_repr(info.shape)}"),
        )
    if info.nbytes > limit:
        raise BundleLabError(
            f"{path.name}: array {info.name!r} declares shape {short_repr(info.shape)} of "
            f"{info.dtype} ({format_bytes(info.nbytes)}) but the file holds {stored} for it: "
            "the file is truncated or its header corrupt or forged (nothing was read); re-create "
            "the dump"
        )


def check_labels_fit(info: LayerInfo, where: str, key: str) -> None:
    """The labels are read whole: refuse, before reading them, labels larger than memory."""
    memory = physical_memory()
    if info.nbytes > memory:
        raise BundleLabError(
            f"{where}: the labels {key!r} declare {info.n_samples} samples "
            f"({format_bytes(info.nbytes)}), more than this machine's memory "
            f"({format_bytes(memory)}); bundlelab reads the labels whole"
        )


def natural_key(name: str) -> list:
    """Sort key that puts ``layer2`` before ``layer10``."""
    parts = re.split(r"(\d+)", name)
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]


def in_memory(array: np.ndarray) -> np.ndarray:
    """A writable array in native byte order, as the kernels take it.

    Copy-on-write memory maps (:func:`mapped_array`) are writable and pass through uncopied:
    the kernels only read them, and a write would stay private to the process.  Read-only
    buffers are copied (the kernels are compiled for writable arrays, a read-only one costs a
    second compile), and so are arrays in the other byte order.
    """
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable:
        return np.array(array)
    return array


def mapped_array(
    path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], *, fortran: bool = False
) -> np.ndarray | None:
    """The ``shape`` ``dtype`` values stored at byte ``offset`` of ``path``, memory-mapped in
    place copy-on-write (writable; a write stays private, the file never changes), or None
    where the data is not aligned for its type (the kernels read aligned values: the caller
    reads a copy instead).  The caller has checked that the file holds the bytes.

    The array is a plain ndarray view whose ``base`` is the :class:`numpy.memmap`; its pages
    are read from the page cache when touched (and count in the process's RSS once touched).
    """
    if offset % dtype.alignment:
        return None
    if math.prod(shape) == 0:  # mmap cannot map 0 bytes
        return np.empty(shape, dtype, order="F" if fortran else "C")
    mapped = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape,
                       order="F" if fortran else "C")
    try:  # read ahead: analysis reads every mapped layer front to back
        mapped._mmap.madvise(mmap.MADV_SEQUENTIAL)
    except (AttributeError, OSError, ValueError):  # not on every platform
        pass
    return np.asarray(mapped)


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a chunk of a copy-on-write memory map that the caller is done
    with and has not written to (a no-op for any other array): streaming a mapped layer then
    holds about one chunk in RSS, not the whole file.  Pages touched again are read again from
    the file; a page that was written to would lose the write, so only the analysis, which
    never writes its chunks, calls this."""
    mapped = array
    while isinstance(mapped, np.ndarray) and not isinstance(mapped, np.memmap):
        mapped = mapped.base
    handle = getattr(mapped, "_mmap", None)
    if handle is None or not hasattr(mmap, "MADV_DONTNEED") or mapped.mode != "c":
        return
    base = mapped.ctypes.data - mapped.offset % mmap.ALLOCATIONGRANULARITY
    start = array.ctypes.data - base
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        try:
            handle.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError):  # advice only
            pass


def read_exact(stream: IO[bytes], n_bytes: int, *, into: Any = None) -> Any:
    """Exactly ``n_bytes`` from ``stream`` into ``into`` (a writable buffer of that size; a new
    bytearray by default), read in pieces of at most 16 MiB so a large read never holds a second
    copy, or EOFError if the stream ends first."""
    buffer = bytearray(n_bytes) if into is None else into
    view = memoryview(buffer).cast("B")
    done = 0
    while done < n_bytes:
        piece = view[done:min(n_bytes, done + READ_PIECE_BYTES)]
        n = stream.readinto(piece) if hasattr(stream, "readinto") else None
        if n is None:
            chunk = stream.read(len(piece))
            n = len(chunk)
            piece[:n] = chunk
        if not n:
            raise EOFError(f"the data ends after {done} of {n_bytes} bytes")
        done += n
    return buffer


#: the most bytes one read of :func:`read_exact` asks for
READ_PIECE_BYTES = 16 << 20


def check_readable(info: LayerInfo, where: str) -> None:
    """Refuse arrays of Python objects before anything is read (they would need unpickling)."""
    if info.dtype == "object":
        raise BundleLabError(
            f"{where}: array {info.name!r} holds Python objects (pickled), which bundlelab never "
            "loads: save it as a numeric (labels: numeric or string) array, e.g. "
            "np.asarray(a, np.float32)"
        )
    if info.dtype == "void16":
        raise BundleLabError(
            f"{where}: array {info.name!r} is stored as raw 2-byte records, which is how np.save "
            "writes bfloat16 (the type is lost): save it as float32 or in a .safetensors dump"
        )


def missing_labels_error(
    where: str, labels_key: str, names: list[str], candidates: list[str] | None = None
) -> BundleLabError:
    close = difflib.get_close_matches(labels_key, names, n=1, cutoff=0.6)
    guess = close[0] if close else (candidates[0] if candidates else "NAME")
    could = f" (could be labels: {short_list(candidates, 4)})" if candidates else ""
    return BundleLabError(
        f"{where} has no labels array {labels_key!r}; it holds {short_list(names)}{could}: name "
        f"the array with the class labels with --labels {guess} (Python: labels_key={guess!r})"
    )


def read_order_file(path: Path) -> list[str]:
    """Layer names from a text file, one per line; blank lines and ``#`` comments skipped."""
    try:
        if not path.is_file():
            raise BundleLabError(
                f"no layer order file {str(path)!r}: pass a text file with one layer name per line"
            )
        if path.stat().st_size > MAX_ORDER_FILE_BYTES:
            raise BundleLabError(
                f"the layer order file {path.name} holds {format_bytes(path.stat().st_size)}, "
                f"more than a list of layer names ({format_bytes(MAX_ORDER_FILE_BYTES)} at most)"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise corrupt_error(path, "the layer order", exc) from None
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def torchlens_order(names: list[str]) -> list[str] | None:
    """``names`` by the position in their torchlens labels (``conv2d_3_7``: the 3rd conv2d, the
    7th layer; ``:2`` the second pass), or None unless every name is such a label, every
    (position, pass) is unique and each type's counts rise with the position (so names like
    VGG's ``relu_1_2``, block 1 layer 2, are not mistaken for labels)."""
    if len(names) < 2:
        return None
    keys = {}
    for name in names:
        match = _TORCHLENS_LABEL.match(name.rsplit("/", 1)[-1])
        if match is None:
            return None
        kind, count, position, passes = match.groups()
        keys[name] = (int(position), int(passes or 1), kind, int(count))
    if len({key[:2] for key in keys.values()}) != len(keys):
        return None
    ordered = sorted(names, key=keys.__getitem__)
    last: dict[str, int] = {}
    for name in ordered:
        _, _, kind, count = keys[name]
        if count < last.get(kind, 0):
            return None
        last[kind] = count
    return ordered


def corrupt_error(path: Path, what: str, exc: BaseException) -> BundleLabError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return BundleLabError(
        f"{path.name}: cannot read {what}, the file looks truncated or corrupt ({detail}); "
        "re-create the dump"
    )


def info_from_dtype(name: str, shape: tuple[int, ...], dtype: np.dtype) -> LayerInfo:
    """A :class:`LayerInfo` from a numpy dtype (object dtypes are recorded as 'object')."""
    dtype_name = "object" if dtype.hasobject else dtype.name
    return LayerInfo(name, tuple(int(s) for s in shape), dtype_name, int(dtype.itemsize))
