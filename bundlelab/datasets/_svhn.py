"""SVHN's cropped-digits MATLAB files (``train_32x32.mat``, ``test_32x32.mat``).

``extra_32x32.mat`` is not read.  The files store ``X`` as (32, 32, 3, N) uint8 and ``y`` as
(N, 1) with the digit 0 labelled 10; labels are mapped back to 0..9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError, require
from ._dataset import RawSplits, check_labels

FILES = ("train_32x32.mat", "test_32x32.mat")
HOLDS = "SVHN's train_32x32.mat and test_32x32.mat"
CLASSES = tuple(str(digit) for digit in range(10))


def load_svhn(folder: Path) -> RawSplits:
    """Both SVHN splits from ``folder`` (images (N, 3, 32, 32), labels 0..9)."""
    loadmat = require("scipy.io", purpose="svhn: reading the .mat files", package="scipy").loadmat
    splits = []
    for file_name in FILES:
        path = folder / file_name
        if not path.is_file():
            raise BundleLabError(
                f"svhn: no {file_name!r} in {folder}; download train_32x32.mat and "
                "test_32x32.mat (the cropped-digits format) from the dataset's site and put them "
                "in that folder"
            )
        try:
            mat = loadmat(path, variable_names=["X", "y"])
        except Exception as exc:  # scipy raises many types for damaged or v7.3 files
            raise BundleLabError(
                f"svhn: cannot read {path} as a MATLAB v5 file ({type(exc).__name__}: {exc}); "
                "download it again"
            ) from None
        images, labels = mat.get("X"), mat.get("y")
        if images is None or labels is None:
            raise BundleLabError(
                f"svhn: {path} has no 'X' and 'y' variables; it is not an SVHN cropped-digits file"
            )
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
            raise BundleLabError(
                f"svhn: 'X' in {path} is {images.dtype} of shape {images.shape}, expected "
                "uint8 (32, 32, 3, N); it is not an SVHN cropped-digits file"
            )
        labels = np.asarray(labels).ravel()
        if len(labels) != images.shape[3]:
            raise BundleLabError(
                f"svhn: {path} holds {images.shape[3]} images but {len(labels)} labels"
            )
        if labels.size and (labels.min() < 1 or labels.max() > 10):
            raise BundleLabError(
                f"svhn: the labels in {path} range over {labels.min()}..{labels.max()}, "
                "expected 1..10 (10 for the digit 0)"
            )
        # (H, W, C, N) -> (N, C, H, W); standardisation writes a contiguous copy later
        splits += [images.transpose(3, 2, 0, 1),
                   check_labels("svhn", labels.astype(np.int64) % 10, 10, str(path))]
    return RawSplits(*splits, CLASSES)
