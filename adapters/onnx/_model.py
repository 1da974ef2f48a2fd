"""OnnxModel (an ONNX model prepared for tapping and running) and load_model, which reads one.

OnnxModel's tap-choosing methods live in ``_taps.py``, its onnxruntime methods in
``_runtime.py``; here are its inputs, its weights and the safe loading.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..._errors import BundleLabError
from ._external_data import check_external_data
from ._graph import FLOAT_TYPES, all_tensors, inferred_types, model_input, topological_order
from ._runtime import RuntimeMixin
from ._taps import Tap, TapsMixin

#: op -> positions of inputs that hold settings, not trained weights (left out of ``w``)
SETTING_INPUTS = {
    "Clip": (1, 2),
    "BatchNormalization": (3, 4),  # running mean and variance
    "Pad": (2,),
    "Resize": (1, 2),
    "Upsample": (1,),
    "Pow": (1,),
    "Range": (0, 1, 2),
}


def load_model(path: str | Path) -> "OnnxModel":
    """Read an ONNX model file, checking that external data stays inside its folder.

    Parameters
    ----------
    path : path-like
        A ``.onnx`` file; tensors saved with ``save_as_external_data=True`` are read from files
        in the same folder (or below it).

    Returns
    -------
    OnnxModel
    """
    path = Path(path)
    if not path.exists():
        raise BundleLabError(f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        raise BundleLabError(f"{str(path)!r} is a folder: pass the .onnx file of the model")
    with open(path, "rb") as stream:
        head = stream.read(4)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, onnx's ValueError, ...
        if isinstance(exc, OSError):
            raise
        raise BundleLabError(_not_onnx(path, head)) from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise BundleLabError(_not_onnx(path, head))
    check_external_data(proto, path.parent, where=path.name)
    return OnnxModel(proto, name=path.name, base_dir=path.parent)


def _not_onnx(path: Path, head: bytes) -> str:
    what = (
        "a zip archive (a TorchScript or PyTorch checkpoint?)" if head.startswith(b"PK\x03\x04")
        else "not an ONNX model (protobuf ModelProto)"
    )
    return (
        f"{path.name} is {what}: bundlelab audit reads ONNX models only; export one with "
        "torch.onnx.export(model, example_input, 'model.onnx') or tf2onnx"
    )


class OnnxModel(TapsMixin, RuntimeMixin):
    """An ONNX model prepared for tapping: inputs, candidate taps, onnxruntime sessions.

    Parameters
    ----------
    proto : onnx.ModelProto
    name : str, default='model'
        Name used in messages (the file name when loaded by :func:`load_model`).
    base_dir : path-like, optional
        Folder holding the model's external data; required when it has some.
    """

    def __init__(self, proto: Any, *, name: str = "model", base_dir: str | Path | None = None):
        self.proto = proto
        self.name = name
        self.base_dir = None if base_dir is None else Path(base_dir)
        graph = proto.graph
        self._external = any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(graph)
        )
        if self._external and self.base_dir is None:
            raise BundleLabError(
                f"{name} keeps tensors in external files: load it with load_model(path) or pass "
                "base_dir= (the folder of the model file)"
            )
        self._constants = {t.name: t for t in graph.initializer}
        self.inputs = [
            model_input(value) for value in graph.input if value.name not in self._constants
        ]
        if not self.inputs:
            raise BundleLabError(f"{name} has no input: there is nothing to feed the data to")
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value" and node.output:
                        self._constants[node.output[0]] = attribute.t
        known = [i.name for i in self.inputs] + list(self._constants)
        self._nodes = topological_order(graph, known)
        self._types = inferred_types(proto)
        self._candidates: dict[bool, list[Tap]] = {}
        self._sessions: dict[tuple, Any] = {}
        self._layers: dict[tuple, list[Tap]] = {}

    def __repr__(self) -> str:
        return f"OnnxModel({self.name!r}, inputs: {', '.join(i.describe() for i in self.inputs)})"

    @property
    def fixed_batch_size(self) -> int | None:
        """The batch size the model was exported with, or None for a dynamic batch axis."""
        sizes = {i.dims[0] for i in self.inputs if i.dims}
        fixed = {s for s in sizes if isinstance(s, int)}
        if len(fixed) > 1:
            raise BundleLabError(
                f"{self.name}: the inputs have different fixed batch sizes {sorted(fixed)}"
            )
        return next(iter(fixed)) if fixed and len(sizes) == 1 else None

    # -- weights --------------------------------------------------------------------------------
    def weight_amplitude(self) -> float:
        """``w``: max |value| over the float initializers that are weights (module docstring)."""
        settings = {
            node.input[i]
            for node in self._nodes
            for i in SETTING_INPUTS.get(node.op_type, ())
            if i < len(node.input)
        }
        amplitude = None
        for tensor in self.proto.graph.initializer:
            if (
                tensor.data_type not in FLOAT_TYPES or tensor.name in settings
                or not tensor.dims
            ):
                continue
            values = self._array(tensor)
            if values.size:
                peak = float(np.max(np.abs(values)))
                amplitude = peak if amplitude is None else max(amplitude, peak)
        if amplitude is None:
            raise BundleLabError(
                f"{self.name} has no float weight to take the weight amplitude w from: pass "
                "weight_amplitude=... (CLI: --weight-amplitude)"
            )
        if not math.isfinite(amplitude):
            raise BundleLabError(
                f"{self.name} has NaN or Inf weights: pass weight_amplitude=... (CLI: "
                "--weight-amplitude) if you still want to measure it"
            )
        return amplitude

    def _array(self, tensor: Any) -> np.ndarray:
        base = None if self.base_dir is None else str(self.base_dir)
        return numpy_helper.to_array(tensor, base_dir=base or "")
