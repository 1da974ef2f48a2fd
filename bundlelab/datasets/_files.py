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


#: the most a data file may hold (gunzipped): MNIST's largest is 47 MB, EMNIST's 550 MB
MAX_FILE_BYTES = 2**31


def read_bytes(name: str, path: Path, *, limit: int | None = None) -> bytes:
    """The file's content, gunzipped when its name ends in ``.gz``; more than ``limit`` bytes
    (default :data:`MAX_FILE_BYTES`; a gzip bomb: megabytes that inflate to gigabytes) is
    refused before it is all read."""
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                data = stream.read(limit + 1)
        else:
            with open(path, "rb") as stream:
                data = stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # truncated or not gzip
        raise BundleLabError(
            f"{name}: cannot read {path} ({type(exc).__name__}: {exc}); "
            "download the file again"
        ) from None
    if len(data) > limit:
        gunzipped = " once gunzipped" if path.suffix == ".gz" else ""
        raise BundleLabError(
            f"{name}: {path} holds more than {limit:,} bytes{gunzipped}, more than any data set "
            "bundlelab reads; it is not the data set's file"
        )
    return data
