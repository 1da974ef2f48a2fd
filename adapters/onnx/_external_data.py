"""Refusing external data that is not a file inside the model's folder, before it is read."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx

from ..._errors import BundleLabError
from ..._validation import short_repr
from ._graph import model_tensors


def check_external_data(proto: Any, base_dir: Path, *, where: str) -> None:
    """Refuse tensors whose external data is not a file inside ``base_dir`` (one-line error).

    Every tensor of the model is checked: initializers, sparse initializers, Constant nodes'
    dense and sparse values, subgraphs, model functions and training-info graphs.
    """
    root = Path(base_dir).resolve()
    for tensor in model_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        refused = (f"{where}: tensor {short_repr(tensor.name)} keeps its data in "
                   f"{short_repr(location)}")
        if not location:
            raise BundleLabError(f"{refused}: the external data has no location")
        posix, windows = PurePosixPath(location), PureWindowsPath(location)
        if posix.is_absolute() or windows.is_absolute() or windows.drive:
            raise BundleLabError(
                f"{refused}, an absolute path: external data must lie in the model's folder "
                "(a relative location)"
            )
        if ".." in posix.parts or ".." in windows.parts:
            raise BundleLabError(
                f"{refused}, which leaves the model's folder ('..'): external data must lie in "
                "the model's folder"
            )
        try:
            target = (root / location).resolve()
            end = int(info.get("offset") or 0) + int(info.get("length") or 0)
        except (ValueError, OSError) as exc:
            raise BundleLabError(f"{refused}: unreadable location or length ({exc})") from None
        if not target.is_relative_to(root):
            raise BundleLabError(
                f"{refused}, a link that leads out of the model's folder to {str(target)!r}: "
                "external data must lie in the model's folder"
            )
        if not target.is_file():
            raise BundleLabError(
                f"{refused}, which is missing: copy the data file next to {where}"
            )
        if end > target.stat().st_size:
            raise BundleLabError(
                f"{refused}: the file holds {target.stat().st_size} bytes, the tensor needs "
                f"{end}; it looks truncated"
            )
