"""Running the model with onnxruntime: providers, sessions that output the taps, input checks."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import onnx

from ..._errors import BundleLabError
from ._graph import ModelInput
from ._messages import explain_load_error, is_ort_error, shorten, strip_ort_prefix

if TYPE_CHECKING:
    from ._taps import Tap

#: --providers / ``providers=`` shorthands
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def resolve_providers(providers: Any) -> list[str]:
    """onnxruntime provider names from None / 'cpu' / 'cuda' / a list of either."""
    if providers is None:
        return [PROVIDERS["cpu"]]
    requested = [providers] if isinstance(providers, str) else list(providers)
    names = [PROVIDERS.get(str(p).lower(), str(p)) for p in requested]
    import onnxruntime as ort

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


class RuntimeMixin:
    """OnnxModel's methods that run it (the state they read: OnnxModel.__init__)."""

    def session(self, taps: Sequence[Tap], providers: Any = None) -> Any:
        """An onnxruntime session whose graph outputs include ``taps`` (cached)."""
        names = resolve_providers(providers)
        key = (tuple(tap.tensor for tap in taps), tuple(names))
        if key not in self._sessions:
            self._sessions.clear()  # one session at a time: they hold the weights
            self._sessions[key] = self._new_session([tap.tensor for tap in taps], names)
        return self._sessions[key]

    def _new_session(self, tensors: list[str], providers: list[str]) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # only fatal: failures come back as exceptions, and log
        # lines on stderr would break the CLI's one-line errors
        if self._external:
            options.add_session_config_entry(_EXTERNAL_FOLDER_KEY, str(self.base_dir.resolve()))
        outputs = self.proto.graph.output
        n_outputs = len(outputs)
        for tensor in tensors:
            elem_type = self._types.get(tensor, (None, None))[0]
            # Untyped (onnx could not infer it, e.g. after a custom op): onnxruntime types it.
            outputs.append(
                onnx.helper.make_tensor_value_info(tensor, elem_type, None)
                if elem_type is not None else onnx.ValueInfoProto(name=tensor)
            )
        try:
            serialized = self.proto.SerializeToString()
        finally:
            del outputs[n_outputs:]
        try:
            return ort.InferenceSession(serialized, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class
            if not is_ort_error(exc):
                raise
            raise BundleLabError(explain_load_error(exc, self)) from None

    def run(self, session: Any, tensors: list[str], feeds: dict[str, np.ndarray]) -> list:
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
                f"{self.name}: onnxruntime failed on a batch of shape {shapes}: {message}"
            ) from None

    def feeds(self, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
        """Check ``inputs`` against the model's inputs: (name -> array, number of samples)."""
        if isinstance(inputs, Mapping):
            missing = [i.name for i in self.inputs if i.name not in inputs]
            if missing:
                raise BundleLabError(
                    f"{self.name} takes inputs {', '.join(repr(i.name) for i in self.inputs)}; "
                    f"the data has no {missing[0]!r} (it has {', '.join(map(repr, inputs))})"
                )
            arrays = {i.name: inputs[i.name] for i in self.inputs}
        elif len(self.inputs) == 1:
            arrays = {self.inputs[0].name: inputs}
        else:
            raise BundleLabError(
                f"{self.name} takes {len(self.inputs)} inputs "
                f"({', '.join(repr(i.name) for i in self.inputs)}): pass a dict name -> array"
            )
        checked = {i.name: _check_input(i, arrays[i.name], self.name) for i in self.inputs}
        sizes = {name: array.shape[0] for name, array in checked.items()}
        if len(set(sizes.values())) > 1:
            raise BundleLabError(f"{self.name}: the inputs hold different sample counts {sizes}")
        n = next(iter(sizes.values()))
        if not n:
            raise BundleLabError(f"{self.name}: the data holds no sample")
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
