""":func:`load_dataset`: a name (or ``name:/path``) -> a standardised :class:`Dataset`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from .._errors import BundleLabError
from . import _cifar, _folder, _idx, _svhn
from .._validation import check_optional_int, check_seed, checked_keywords
from ._dataset import Dataset, standardize
from ._digits import load_digits_splits
from ._files import data_folder

DEFAULT_IMAGE_SIZE = 64


@dataclass(frozen=True)
class Source:
    """How to load one data set."""

    load: Callable  # (folder) -> RawSplits; with resizable, also image_size, n_train, ...
    flip: bool  # horizontal flips keep the class (natural images, not digits)
    holds: str | None  # what the data folder holds; None: embedded, no folder
    resizable: bool = False  # images are resized to image_size (and subset before decoding)


#: name -> how to load it; DATASETS lists the names
REGISTRY = {
    "digits": Source(load_digits_splits, flip=False, holds=None),
    "mnist": Source(_idx.load_mnist, flip=False, holds=_idx.HOLDS),
    "cifar10": Source(_cifar.load_cifar10, flip=True, holds=_cifar.HOLDS),
    "svhn": Source(_svhn.load_svhn, flip=False, holds=_svhn.HOLDS),
    "imagefolder": Source(_folder.load_image_folder, flip=True, holds=_folder.HOLDS,
                          resizable=True),
    "imagenette": Source(_folder.load_image_folder, flip=True, holds=_folder.HOLDS,
                         resizable=True),
}
DATASETS = tuple(REGISTRY)


def _parse_name(name, root) -> tuple[str, object]:
    if not isinstance(name, str):
        raise BundleLabError(
            f"The 'name' parameter must be a str such as 'cifar10:/data/cifar'. Got {name!r}."
        )
    key, colon, inline_root = name.partition(":")
    key = key.strip().lower()
    if key not in REGISTRY:
        raise BundleLabError(
            f"unknown data set {key!r}; choose one of {', '.join(DATASETS)} "
            "(file-based ones as name:/path/to/folder)"
        )
    if colon:
        if root is not None:
            raise BundleLabError(
                f"{key}: a folder was given twice ({name!r} and root={os.fspath(root)!r}); "
                "pass it one way only"
            )
        if not inline_root:
            raise BundleLabError(f"{key}: empty folder after the colon in {name!r}")
        root = inline_root
    return key, root


@checked_keywords
def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a data set from local files (nothing is ever downloaded) as float32 arrays.

    Standardisation: each channel is mapped to ``(x - mean) / std``, where ``mean`` and
    ``std`` are that channel's mean and (population) standard deviation over the pixels of the
    training images actually kept (after ``n_train``), computed in float64 from the stored
    pixel values; the test images are transformed with the *same* training statistics (the
    test split's own statistics are never used).  A channel that is constant in the training
    split is only centred.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``"digits"`` (scikit-learn's, embedded; (1, 8, 8)),
        ``"mnist"`` (IDX files; (1, 28, 28)), ``"cifar10"`` (python or binary batches;
        (3, 32, 32)), ``"svhn"`` (``train_32x32.mat``, ``test_32x32.mat``; (3, 32, 32)),
        ``"imagefolder"`` or its alias ``"imagenette"`` (``train/<class>/*.jpg`` and
        ``val/<class>/*``; (3, image_size, image_size)).  ``"name:/path"`` gives the folder
        inline, as on the command line.
    root : str or path-like, optional
        Folder holding the files; required for every data set but ``"digits"``.
    image_size : int, optional
        Side of the square images of an image folder (default 64): the shorter side is resized
        to it, then the center is cropped.  The other data sets have a fixed size; passing
        ``image_size`` for them is allowed only when it equals that size.
    n_train, n_test : int, optional
        Keep a seeded random subset of this many samples of each split (for CPU-scale runs),
        in the stored order; the whole split when None.  See :meth:`Dataset.subset`.
    seed : int, default=0
        Seed of the subsets.

    Returns
    -------
    Dataset
        ``x_*`` float32 (n_samples, C, H, W), C-contiguous; ``y_*`` int64 in
        ``0 .. n_classes - 1``.

    Raises
    ------
    BundleLabError
        For an unknown name, a missing folder or file (the message names the expected files),
        or a truncated, damaged or unsafe file.

    Examples
    --------
    >>> from bundlelab.datasets import load_dataset
    >>> data = load_dataset("digits")
    >>> data.input_shape, data.n_classes, len(data.y_train), len(data.y_test)
    ((1, 8, 8), 10, 1347, 450)
    >>> cifar = load_dataset("cifar10:/data/cifar", n_train=5000)   # doctest: +SKIP
    """
    key, root = _parse_name(name, root)
    source = REGISTRY[key]
    n_train = check_optional_int("n_train", n_train, low=1)
    n_test = check_optional_int("n_test", n_test, low=1)
    image_size = check_optional_int("image_size", image_size, low=1)
    seed = check_seed("seed", seed)
    if source.holds is None:
        if root is not None:
            raise BundleLabError(f"{key} ships with scikit-learn and takes no folder; remove it")
        folder = None
    else:
        folder = data_folder(key, root, source.holds)

    if source.resizable:
        size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
        raw = source.load(folder, image_size=size, n_train=n_train, n_test=n_test, seed=seed,
                          name=key)
    else:
        raw = source.load(folder).subset(key, n_train, n_test, seed)
        stored = raw.x_train.shape[2:]
        if image_size is not None and stored != (image_size, image_size):
            raise BundleLabError(
                f"{key}: the images are {stored[0]}x{stored[1]} and are not resized; "
                "image_size applies to image folders only, leave it out"
            )
    x_train, x_test = standardize(raw.x_train, raw.x_test)
    return Dataset(key, x_train, raw.y_train, x_test, raw.y_test, raw.classes, source.flip)
