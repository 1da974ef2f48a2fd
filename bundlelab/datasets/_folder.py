"""Image folders (ImageNet-style, e.g. Imagenette): ``train/<class>/*.jpg``, ``val/<class>/*``.

Images are decoded with Pillow, converted to RGB, resized so the shorter side is
``image_size``, and center-cropped to ``image_size`` x ``image_size``.  Subsets are chosen on
the file lists, so only the images kept are decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._errors import BundleLabError, require
from ._dataset import RawSplits, pick_indices

EXTENSIONS = {".jpg", ".jpeg", ".png"}
HOLDS = "train/<class>/*.jpg and val/<class>/*.jpg (or test/<class>/*)"
TEST_FOLDERS = ("val", "test")


def _class_folders(split_dir: Path) -> list[str]:
    # hidden folders (.ipynb_checkpoints, ...) are not classes
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(name: str, class_dir: Path) -> list[Path]:
    files = sorted(f for f in class_dir.iterdir()
                   if f.is_file() and f.suffix.lower() in EXTENSIONS)
    if not files:
        raise BundleLabError(
            f"{name}: the class folder {class_dir} holds no .jpg, .jpeg or .png image; "
            "put the class's images there or remove the folder"
        )
    return files


def _list_split(name: str, split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for label, class_name in enumerate(classes):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():  # a class missing from the test split is allowed
            continue
        found = _image_files(name, class_dir)
        files += found
        labels += [label] * len(found)
    return files, np.array(labels, dtype=np.int64)


def _read_image(name: str, path: Path, size: int, image_module) -> np.ndarray:
    try:
        with image_module.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size (fast)
            image = image.convert("RGB")
            width, height = image.size
            scale = size / min(width, height)
            new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = image.resize(new_size, image_module.Resampling.BILINEAR)
            left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError, ...
        raise BundleLabError(
            f"{name}: cannot read the image {path} ({type(exc).__name__}: {exc}); "
            "replace or remove the file"
        ) from None


def _read_images(name: str, files: list[Path], size: int) -> np.ndarray:
    Image = require("PIL.Image", purpose=f"{name}: reading images", package="pillow")
    # Pillow releases the GIL while decoding, so threads overlap the per-image work.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda path: _read_image(name, path, size, Image), files))
    return np.stack(images).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)


def load_image_folder(folder: Path, *, image_size: int, n_train: int | None,
                      n_test: int | None, seed: int, name: str = "imagefolder") -> RawSplits:
    """Both splits of an image folder, subset before decoding (images (N, 3, S, S))."""
    train_dir = folder / "train"
    if not train_dir.is_dir():
        raise BundleLabError(
            f"{name}: no 'train' folder in {folder}; arrange the images as "
            f"{folder}/train/<class>/*.jpg and {folder}/val/<class>/*.jpg"
        )
    test_dir = next((folder / d for d in TEST_FOLDERS if (folder / d).is_dir()), None)
    if test_dir is None:
        raise BundleLabError(
            f"{name}: no 'val' (or 'test') folder in {folder}; put the held-out images in "
            f"{folder}/val/<class>/*.jpg"
        )
    classes = _class_folders(train_dir)
    if not classes:
        raise BundleLabError(
            f"{name}: {train_dir} has no class folders; put each class's images in "
            f"{train_dir}/<class>/"
        )
    unknown = sorted(set(_class_folders(test_dir)) - set(classes))
    if unknown:
        raise BundleLabError(
            f"{name}: the class folder {unknown[0]!r} of {test_dir} has no counterpart in "
            f"{train_dir}; every test class needs training images (add {train_dir}/{unknown[0]}/)"
        )
    splits = []
    for split, split_dir, n in (("train", train_dir, n_train), ("test", test_dir, n_test)):
        files, labels = _list_split(name, split_dir, classes)
        if not files:
            raise BundleLabError(f"{name}: {split_dir} holds no images in its class folders")
        keep = pick_indices(len(files), n, seed, split, name)
        if keep is not None:
            files, labels = [files[i] for i in keep], labels[keep]
        splits += [_read_images(name, files, image_size), labels]
    return RawSplits(*splits, tuple(classes))
