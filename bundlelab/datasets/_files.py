"""Finding and reading the files of a data set, with one-line errors that say what to put where."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from .._errors import BundleLabError


def data_folder(name: str, root, holds: str) -> Path:
    """``root`` as an existing folder; ``holds`` says what the folder should contain."""
    if root is None:
        raise BundleLabError(
            f"{name}: no data folder given; pass the folder that holds {holds} as "
            f"'{name}:/path/to/folder' (or root=...); nothing is downloaded"
        )
    folder = Path(os.path.expanduser(os.fspath(root)))
    if not folder.is_dir():
        raise BundleLabError(
            f"{name}: the folder {folder} does not exist; pass the folder that holds {holds} "
            f"as '{name}:/path/to/folder'"
        )
    return folder


def first_existing(folder: Path, names) -> Path | None:
    """The first of ``names`` that is a file in ``folder``, or None."""
    for file_name in names:
        path = folder / file_name
        if path.is_file():
            return path
    return None


def read_bytes(name: str, path: Path) -> bytes:
    """The file's content, gunzipped when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # truncated or not gzip
        raise BundleLabError(
            f"{name}: cannot read {path} ({type(exc).__name__}: {exc}); "
            "download the file again"
        ) from None
