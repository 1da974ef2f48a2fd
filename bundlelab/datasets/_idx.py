"""MNIST's IDX files, parsed with numpy (optionally gzipped, under either naming scheme).

IDX layout: two zero bytes, an element-type code (0x08: unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError
from ._dataset import RawSplits, check_labels
from ._files import first_existing, read_bytes

UBYTE = 0x08
#: the four files, with the number of dimensions each stores
FILES = {
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}
HOLDS = "the four MNIST IDX files (" + ", ".join(FILES) + ", each optionally .gz)"
CLASSES = tuple(str(digit) for digit in range(10))


def candidates(file_name: str) -> list[str]:
    """Accepted names: the site's, torchvision's (``train-images.idx3-ubyte``), each gzipped."""
    dotted = file_name.replace("-idx", ".idx")
    return [file_name, file_name + ".gz", dotted, dotted + ".gz"]


def read_idx(path: Path, ndim: int, name: str = "mnist") -> np.ndarray:
    """The uint8 array stored in an IDX file (read-only view of the file's bytes).

    Parameters
    ----------
    path : Path
        The file; gunzipped first when its name ends in ``.gz``.
    ndim : int
        Number of dimensions the file must store (3 for images, 1 for labels).
    name : str, default='mnist'
        Data set name for messages.

    Returns
    -------
    ndarray of uint8 with the dimensions of the header.
    """
    data = read_bytes(name, path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise BundleLabError(
            f"{name}: {path} is not an IDX file (it does not start with the IDX magic number); "
            "download the MNIST files again"
        )
    if data[2] != UBYTE:
        raise BundleLabError(
            f"{name}: {path} stores elements of type code 0x{data[2]:02X}, expected 0x08 "
            "(unsigned bytes) as in MNIST's files"
        )
    if data[3] != ndim:
        raise BundleLabError(
            f"{name}: {path} stores a {data[3]}-d array, expected {ndim}-d; "
            "check that image and label files are not swapped"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BundleLabError(
            f"{name}: {path} is truncated inside its header ({len(data)} bytes); "
            "download it again"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise BundleLabError(
            f"{name}: {path} {problem}: its header announces shape {dims}, i.e. {expected} "
            f"bytes, but it has {len(data)}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(folder: Path) -> RawSplits:
    """Both MNIST splits from the IDX files in ``folder`` (images (N, 1, 28, 28))."""
    arrays = {}
    for file_name, ndim in FILES.items():
        path = first_existing(folder, candidates(file_name))
        if path is None:
            raise BundleLabError(
                f"mnist: no {file_name!r} (or .gz) in {folder}; download the four MNIST IDX "
                f"files ({', '.join(FILES)}) from the dataset's site and put them in that folder"
            )
        arrays[file_name] = (path, read_idx(path, ndim))
    splits = []
    for images_name, labels_name in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                     ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        (images_path, images), (labels_path, labels) = arrays[images_name], arrays[labels_name]
        if len(images) != len(labels):
            raise BundleLabError(
                f"mnist: {images_path} holds {len(images)} images but {labels_path} "
                f"{len(labels)} labels; the files belong to different downloads"
            )
        splits += [images[:, None], check_labels("mnist", labels, 10, str(labels_path))]
    if splits[0].shape[1:] != splits[2].shape[1:]:
        raise BundleLabError(
            f"mnist: train images are {splits[0].shape[2:]} but test images "
            f"{splits[2].shape[2:]}; the files belong to different data sets"
        )
    return RawSplits(*splits, CLASSES)
