"""CIFAR-10 from the binary version (plain numpy) or the python version (restricted unpickling).

The python version's batches are pickles, and unpickling runs whatever callables the file
names.  :class:`CifarUnpickler` resolves only the few numpy globals a CIFAR batch refers to and
refuses every other, so a tampered file cannot execute code.  What those globals may build is
bounded too: an array allocated by numpy's reconstructor holds at most as many bytes as the
file (the pixels must come from the file), dtypes are plain numbers, and a batch holds at most
the 60,000 images of CIFAR-10, so a small tampered file cannot make gigabytes of zeros.  The
binary version needs no unpickling at all and is preferred when both are present.
"""

from __future__ import annotations

import codecs
import math
import numbers
import os
import pickle
from pathlib import Path

import numpy as np

from .._errors import BundleLabError
from .._validation import short_repr
from ._dataset import RawSplits, check_labels
from ._files import first_existing

PY_FOLDER = "cifar-10-batches-py"
BIN_FOLDER = "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
HOLDS = f"{PY_FOLDER}/ or {BIN_FOLDER}/ (extracted from CIFAR-10's python or binary archive)"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS  # binary version: one label byte, then the pixels
MAX_IMAGES = 60_000  # all of CIFAR-10; the official batches hold 10,000 each


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1');
    # other codecs (zlib, base64, ...) have no business in a CIFAR batch.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise BundleLabError(f"cifar10: refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's multiarray._reconstruct
#: (module, name) -> object: everything a CIFAR batch pickled by numpy 1.x or 2.x refers to
ALLOWED_GLOBALS = {
    **{(module, "_reconstruct"): _RECONSTRUCT
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "ndarray"): np.ndarray
       for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "dtype"): np.dtype
       for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")},
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses any other global.

    numpy's reconstructor and ``dtype`` are handed out bounded: an array may not hold more
    bytes than ``max_bytes`` (default: the file's size), a dtype must be a plain number type.
    """

    def __init__(self, stream, path: Path, *, max_bytes: int | None = None):
        super().__init__(stream, encoding="bytes")  # Python-2 str (the official files) -> bytes
        self.path = path
        self.max_bytes = os.fstat(stream.fileno()).st_size if max_bytes is None else max_bytes

    def find_class(self, module: str, name: str):
        try:
            found = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise BundleLabError(
                f"cifar10: refusing to unpickle {self.path}: it refers to "
                f"the global {short_repr(f'{module}.{name}', 120)}, which a CIFAR-10 batch "
                "never needs; the file is not a CIFAR-10 python batch or was tampered with, "
                "download it again"
            ) from None
        if found is _RECONSTRUCT:
            return self._reconstruct
        if found is np.dtype:
            return self._dtype
        return found

    def _refuse(self, what: str) -> BundleLabError:
        return BundleLabError(
            f"cifar10: refusing to unpickle {self.path}: {what}; the file is not a CIFAR-10 "
            "python batch or was tampered with, download it again"
        )

    def _dtype(self, spec, align=False, copy=False):
        try:
            # always a copy: the pickle's BUILD then sets the state of this copy, never of
            # numpy's own descriptor for the type
            dtype = np.dtype(spec, align=bool(align), copy=True) if isinstance(
                spec, str) and len(spec) <= 8 else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in "biuf" or dtype.subdtype or dtype.fields:
            raise self._refuse(f"it builds a numpy dtype {short_repr(spec)}, not a plain number")
        return dtype

    def _reconstruct(self, cls, shape, dtype):
        if cls is not np.ndarray:
            raise self._refuse(f"it reconstructs a {short_repr(cls)}, not a numpy array")
        if not isinstance(shape, tuple) or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise self._refuse(f"it builds an array of shape {short_repr(shape)}")
        dtype = np.dtype(self._dtype(dtype.decode("latin1")) if isinstance(dtype, bytes) else dtype)
        if dtype.hasobject:
            raise self._refuse("it builds an array of Python objects")
        n_bytes = math.prod(shape) * dtype.itemsize
        if n_bytes > self.max_bytes:
            raise self._refuse(
                f"it builds an array of shape {short_repr(shape)} ({n_bytes:,} bytes) from a file "
                f"of {self.max_bytes:,} bytes"
            )
        return _RECONSTRUCT(cls, shape, dtype)


def unpickle(path: Path) -> object:
    """The object pickled in ``path``, through :class:`CifarUnpickler` (py2 str -> bytes)."""
    try:
        with open(path, "rb") as stream:
            return CifarUnpickler(stream, path).load()
    except BundleLabError:
        raise
    except Exception as exc:  # truncated or not a pickle: UnpicklingError, EOFError, ...
        raise BundleLabError(
            f"cifar10: cannot read {path} ({type(exc).__name__}: {exc}); download it again"
        ) from None


def _entry(batch: dict, key: str, path: Path):
    # Python-2 pickles (the official files) have bytes keys, re-pickled ones may have str keys.
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise BundleLabError(f"cifar10: {path} has no {key!r} entry; it is not a CIFAR-10 batch")


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle(path)
    if not isinstance(batch, dict):
        raise BundleLabError(
            f"cifar10: {path} holds a {type(batch).__name__}, not a CIFAR-10 batch (a dict)"
        )
    data, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != PIXELS or len(data) > MAX_IMAGES):
        shape = getattr(data, "shape", None)
        raise BundleLabError(
            f"cifar10: 'data' in {path} is {getattr(data, 'dtype', type(data).__name__)} of "
            f"shape {short_repr(shape)}, expected uint8 (n_images, 3072) with at most "
            f"{MAX_IMAGES} images (10000 rows in the official files)"
        )
    # a list of ints or an int array; anything else (a list of arrays, say) could become a
    # huge array in np.asarray before its shape is checked
    plain = isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu"
    if not plain and not (isinstance(labels, list) and len(labels) == len(data) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels
    )):
        kind = f"{labels.dtype} of shape {labels.shape}" if isinstance(
            labels, np.ndarray) else type(labels).__name__
        raise BundleLabError(
            f"cifar10: 'labels' in {path} is {kind}, expected a list of {len(data)} ints"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(data),):
        raise BundleLabError(
            f"cifar10: {path} holds {len(data)} images but labels of shape {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), check_labels("cifar10", labels, 10, str(path))


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        records = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BundleLabError(f"cifar10: cannot read {path} ({exc})") from None
    if records.size == 0 or records.size % RECORD:
        raise BundleLabError(
            f"cifar10: {path} has {records.size} bytes, not a whole number of {RECORD}-byte "
            "records (1 label byte + 3072 pixels); the file is truncated, download it again"
        )
    records = records.reshape(-1, RECORD)
    labels = check_labels("cifar10", records[:, 0], 10, str(path))
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _py_classes(folder: Path) -> tuple:
    path = folder / "batches.meta"
    if not path.is_file():
        return CLASSES
    meta = unpickle(path)
    names = _entry(meta, "label_names", path) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise BundleLabError(
            f"cifar10: {path} does not list 10 'label_names'; delete it to use the default "
            "CIFAR-10 names"
        )
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _bin_classes(folder: Path) -> tuple:
    path = folder / "batches.meta.txt"
    if not path.is_file():
        return CLASSES
    names = [line.strip() for line in path.read_text(encoding="latin1").splitlines()]
    names = [name for name in names if name]
    if len(names) != 10:
        raise BundleLabError(
            f"cifar10: {path} lists {len(names)} class names, expected 10; delete it to use the "
            "default CIFAR-10 names"
        )
    return tuple(names)


def _locate(folder: Path) -> tuple[Path, bool]:
    """The folder holding the batches and whether it is the binary version."""
    for candidate, binary in ((folder / BIN_FOLDER, True), (folder, True),
                              (folder / PY_FOLDER, False), (folder, False)):
        suffix = ".bin" if binary else ""
        if candidate.is_dir() and first_existing(
            candidate, [name + suffix for name in TRAIN_BATCHES + (TEST_BATCH,)]
        ):
            return candidate, binary
    raise BundleLabError(
        f"cifar10: no CIFAR-10 batches in {folder} (looked for {PY_FOLDER}/data_batch_1 and "
        f"{BIN_FOLDER}/data_batch_1.bin, there and in the folder itself); extract "
        "cifar-10-python.tar.gz or cifar-10-binary.tar.gz into that folder"
    )


def load_cifar10(folder: Path) -> RawSplits:
    """Both CIFAR-10 splits from ``folder`` (images (N, 3, 32, 32))."""
    batches_folder, binary = _locate(folder)
    suffix, read = (".bin", _read_bin_batch) if binary else ("", _read_py_batch)
    batches = []
    for batch_name in TRAIN_BATCHES + (TEST_BATCH,):
        path = batches_folder / (batch_name + suffix)
        if not path.is_file():
            names = ", ".join(name + suffix for name in TRAIN_BATCHES + (TEST_BATCH,))
            raise BundleLabError(
                f"cifar10: no {batch_name + suffix!r} in {batches_folder}; the folder needs "
                f"{names}: extract the complete CIFAR-10 archive there"
            )
        batches.append(read(path))
    classes = _bin_classes(batches_folder) if binary else _py_classes(batches_folder)
    x_train = np.concatenate([images for images, _ in batches[:-1]])
    y_train = np.concatenate([labels for _, labels in batches[:-1]])
    return RawSplits(x_train, y_train, *batches[-1], classes)
