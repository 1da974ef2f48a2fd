"""Running a model with onnxruntime: providers, sessions that output the taps, input checks."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import onnx

from ..._errors import BundleLabError, require
from ..._validation import short_repr
from ._graph import ModelInput
from ._messages import explain_load_error, is_ort_error, shorten, strip_ort_prefix

if TYPE_CHECKING:
    from ._model import OnnxModel

#: --providers / ``providers=`` shorthands
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"

#: onnxruntime settings of every session the adapter builds, set on the session (never through
#: process-wide environment variables).  Between two forward passes the audit fingerprints
#: the taps on the same cores; onnxruntime's intra-op threads, left spinning after each pass,
#: would take those cores from it (and from any other busy process), so they sleep instead.
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


def _onnxruntime() -> Any:
    return require("onnxruntime", purpose="running ONNX models", extra="onnx")


def resolve_providers(providers: Any) -> list[str]:
    """onnxruntime provider names from None / 'cpu' / 'cuda' / a list of either."""
    if providers is None:
        return [PROVIDERS["cpu"]]
    requested = [providers] if isinstance(providers, str) else providers
    if not isinstance(requested, (list, tuple)) or not requested or not all(
        isinstance(p, str) for p in requested
    ):
        raise BundleLabError(
            "The 'providers' parameter must be 'cpu', 'cuda', an onnxruntime provider name or "
            f"a list of them. Got {short_repr(providers)} instead."
        )
    names = [PROVIDERS.get(str(p).lower(), str(p)) for p in requested]
    ort = _onnxruntime()

    available = ort.get_available_providers()
    for name in names:
        if name not in available:
            hint = (
                ": install onnxruntime-gpu (with a CUDA it supports) instead of onnxruntime"
                if name == PROVIDERS["cuda"] else ""
            )
            raise BundleLabError(
                f"onnxruntime {ort.__version__} has no {name} (available: "
                f"{', '.join(available)}){hint}"
            )
    if PROVIDERS["cpu"] not in names:
        names.append(PROVIDERS["cpu"])  # runs the nodes the accelerator has no kernel for
    return names


def new_session(model: OnnxModel, tensors: list[str], providers: list[str]) -> Any:
    """An onnxruntime session of ``model`` whose graph outputs also include ``tensors``."""
    ort = _onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 4  # only fatal: failures come back as exceptions, and log
    # lines on stderr would break the CLI's one-line errors
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if model.has_external_data:
        options.add_session_config_entry(_EXTERNAL_FOLDER_KEY, str(model.base_dir.resolve()))
    outputs = model.proto.graph.output
    n_outputs = len(outputs)
    for tensor in tensors:
        elem_type = model.types.get(tensor, (None, None))[0]
        # Untyped (onnx could not infer it, e.g. after a custom op): onnxruntime types it.
        outputs.append(
            onnx.helper.make_tensor_value_info(tensor, elem_type, None)
            if elem_type is not None else onnx.ValueInfoProto(name=tensor)
        )
    try:
        serialized = model.proto.SerializeToString()
    finally:
        del outputs[n_outputs:]
    try:
        return ort.InferenceSession(serialized, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class
        if not is_ort_error(exc):
            raise
        raise BundleLabError(explain_load_error(exc, model)) from None


def run_session(session: Any, tensors: list[str], feeds: dict[str, np.ndarray], *,
                where: str) -> list:
    """``session.run``, with onnxruntime's failures as one line naming the node."""
    try:
        return session.run(tensors, feeds)
    except Exception as exc:  # noqa: BLE001
        if not is_ort_error(exc):
            raise
        message = strip_ort_prefix(str(exc))
        match = re.search(r"running (\S+) node\. Name:'([^']*)' Status Message: (.*)", message)
        if match:
            op, node, detail = match.groups()
            message = f"node {node!r} ({op}) failed: {shorten(detail)}"
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
        raise BundleLabError(
            f"{where}: onnxruntime failed on a batch of shape {shapes}: {message}"
        ) from None


def check_feeds(inputs: Any, expected: Sequence[ModelInput], *,
                where: str) -> tuple[dict[str, np.ndarray], int]:
    """Check ``inputs`` against the model's inputs: (name -> array, number of samples)."""
    if isinstance(inputs, Mapping):
        missing = [i.name for i in expected if i.name not in inputs]
        if missing:
            raise BundleLabError(
                f"{where} takes inputs {', '.join(repr(i.name) for i in expected)}; "
                f"the data has no {missing[0]!r} (it has {', '.join(map(repr, inputs))})"
            )
        arrays = {i.name: inputs[i.name] for i in expected}
    elif len(expected) == 1:
        arrays = {expected[0].name: inputs}
    else:
        raise BundleLabError(
            f"{where} takes {len(expected)} inputs "
            f"({', '.join(repr(i.name) for i in expected)}): pass a dict name -> array"
        )
    checked = {i.name: _check_input(i, arrays[i.name], where) for i in expected}
    sizes = {name: array.shape[0] if array.ndim else 0 for name, array in checked.items()}
    if len(set(sizes.values())) > 1:
        raise BundleLabError(f"{where}: the inputs hold different sample counts {sizes}")
    n = next(iter(sizes.values()))
    if not n:
        raise BundleLabError(f"{where}: the data holds no sample")
    return checked, n


def _check_input(expected: ModelInput, array: Any, where: str) -> np.ndarray:
    array = array if isinstance(array, np.ndarray) else np.asarray(array)  # memmaps stay maps
    shape = array.shape
    if expected.dims is not None:
        fits = len(shape) == len(expected.dims) and all(
            not isinstance(want, int) or want == got
            for want, got in zip(expected.dims[1:], shape[1:])
        )
        if not fits:
            hint = ""
            per_sample = expected.dims[1:]
            if shape and all(isinstance(d, int) for d in per_sample) and (
                math.prod(per_sample) == math.prod(shape[1:])
            ):
                hint = f": reshape it to {(shape[0], *per_sample)}"
            raise BundleLabError(
                f"{where} expects input {expected.describe()}, the data has shape {shape}{hint}"
            )
    if expected.dtype is not None and array.dtype != expected.dtype:
        # Numbers convert to a float input exactly enough; floats never silently become ints.
        allowed = {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}.get(expected.dtype.kind, "")
        if array.dtype.kind not in allowed:
            raise BundleLabError(
                f"{where} expects input {expected.name!r} of type {expected.dtype}, the data is "
                f"{array.dtype}: convert it, e.g. x.astype(np.{expected.dtype})"
            )
    return array
