"""ONNX models: tap intermediate tensors, run them with onnxruntime, measure their bundles.

>>> from bundlelab.adapters import measure_bundles
>>> from bundlelab.adapters.onnx import OnnxAdapter
>>> report = measure_bundles(OnnxAdapter(), "model.onnx", x, labels)   # doctest: +SKIP

Loading
    :func:`load_model` reads the graph with ``load_external_data=False`` and refuses external
    data whose ``location`` leaves the model's folder (absolute paths, ``..``, symlinks
    pointing out) before any of it is read.  onnxruntime then reads the external data from
    that folder; the weight amplitude reads it tensor by tensor.  Nothing is ever unpickled.
Layers (taps)
    By default the outputs of activation nodes (:data:`ACTIVATION_OPS`, ``Clip`` with a lower
    bound of 0 as in ReLU6, and ``x * Sigmoid(x)`` as SiLU), in topological order;
    ``all_nodes=True`` taps every node's float outputs.  Graph outputs (the logits), and
    ``Identity`` copies of them, are never layers, nor are tensors that do not depend on the
    model's inputs.  A layer is named after its tensor; tensor names that are bare numbers
    (older exporters) are prefixed with their node's name (``Relu_3:12``).  The taps become
    extra graph outputs, typed by ``onnx.shape_inference`` where it can; where it cannot (custom
    ops), the output is added untyped and onnxruntime infers its type.
Batches
    A dynamic batch axis is fed ``batch_size`` samples at a time.  A model exported with a
    fixed batch size B is fed exactly B samples at a time whatever ``batch_size`` says; the
    last batch is padded by repeating its last sample and the padded rows are dropped.  That
    is exact for models that treat samples independently (inference-mode batch norm), which is
    what a fixed-size export of a classifier does.
Weight amplitude ``w``
    The largest ``|value|`` over the model's float initializers, leaving out rank-0 constants
    (scalars such as an attention scale or an epsilon) and inputs that are settings rather than
    trained weights (:data:`SETTING_INPUTS`: Clip bounds, batch-norm running statistics, ...).
    ONNX does not record which tensors were trainable, and exporters fold batch norm into the
    convolution weights: pass ``weight_amplitude=`` to :func:`bundlelab.adapters.measure_bundles`
    (CLI: ``--weight-amplitude``) when you know the training-time value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._errors import BundleLabError

try:
    import onnx
    from onnx import numpy_helper
except ImportError:  # pragma: no cover - depends on the environment
    raise BundleLabError(
        "the ONNX adapter requires onnx and onnxruntime. You can install them with "
        "`pip install onnx onnxruntime`"
    ) from None

#: activation ops whose outputs are the default layers (domains "", "ai.onnx", "com.microsoft")
ACTIVATION_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu",
    "Selu", "Celu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softplus", "Softsign",
    "HardSwish", "Mish", "Swish",
})
_ACTIVATION_DOMAINS = ("", "ai.onnx", "com.microsoft")

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

#: ONNX element types bundles are computed on; others (int, bool, bfloat16) are never layers
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
}
_ORT_FLOAT_TYPES = {"tensor(float)", "tensor(double)", "tensor(float16)"}

#: --providers / ``providers=`` shorthands
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


@dataclass(frozen=True)
class Tap:
    """One tapped tensor: its layer name in reports and where it comes from in the graph."""

    layer: str
    tensor: str
    node: str
    op_type: str


@dataclass(frozen=True)
class ModelInput:
    """A graph input: name, dims (int, symbolic name, or None when unknown) and numpy dtype."""

    name: str
    dims: tuple[int | str | None, ...] | None
    dtype: np.dtype | None

    def describe(self) -> str:
        if self.dims is None:
            return f"{self.name!r} (any shape)"
        dims = ", ".join("N" if d is None else str(d) for d in self.dims)
        dtype = f" and type {self.dtype}" if self.dtype else ""
        return f"{self.name!r} of shape ({dims}){dtype}"


# -- loading -----------------------------------------------------------------------------------


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


def check_external_data(proto: Any, base_dir: Path, *, where: str) -> None:
    """Refuse tensors whose external data is not a file inside ``base_dir`` (one-line error)."""
    root = Path(base_dir).resolve()
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        refused = f"{where}: tensor {tensor.name!r} keeps its data in {location!r}"
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


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


# -- the model ---------------------------------------------------------------------------------


class OnnxModel:
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
            t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(graph)
        )
        if self._external and self.base_dir is None:
            raise BundleLabError(
                f"{name} keeps tensors in external files: load it with load_model(path) or pass "
                "base_dir= (the folder of the model file)"
            )
        self._constants = {t.name: t for t in graph.initializer}
        self.inputs = [
            _model_input(value) for value in graph.input if value.name not in self._constants
        ]
        if not self.inputs:
            raise BundleLabError(f"{name} has no input: there is nothing to feed the data to")
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value" and node.output:
                        self._constants[node.output[0]] = attribute.t
        known = [i.name for i in self.inputs] + list(self._constants)
        self._nodes = _topological_order(graph, known)
        self._types = _inferred_types(proto)
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

    # -- taps -----------------------------------------------------------------------------------
    def candidate_taps(self, *, all_nodes: bool = False) -> list[Tap]:
        """Tensors that can be layers, in topological order, before onnxruntime has typed them."""
        if all_nodes not in self._candidates:
            self._candidates[all_nodes] = self._find_taps(all_nodes)
        return self._candidates[all_nodes]

    def _find_taps(self, all_nodes: bool) -> list[Tap]:
        outputs = _output_aliases(self.proto.graph, self._nodes)
        dependent = {i.name for i in self.inputs}
        consumers: dict[str, list] = {}
        for node in self._nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
            if any(name in dependent for name in node.input) or _has_subgraph(node):
                dependent.update(name for name in node.output if name)
        batch = self.inputs[0].dims[0] if self.inputs[0].dims else None
        taps, used = [], set()
        for node in self._nodes:
            if all_nodes:
                picked = [(name, node, node.op_type) for name in node.output]
            else:
                picked = self._activation_output(node, consumers)
            for tensor, producer, op_type in picked:
                if tensor and tensor in dependent and tensor not in outputs and (
                    self._may_be_per_sample(tensor, batch)
                ):
                    layer = _layer_name(tensor, producer, used)
                    used.add(layer)
                    taps.append(Tap(layer, tensor, producer.name, op_type))
        return taps

    def _activation_output(self, node: Any, consumers: dict) -> list[tuple[str, Any, str]]:
        if node.domain not in _ACTIVATION_DOMAINS or not node.output:
            return []
        if node.op_type == "Clip":
            return [(node.output[0], node, "Clip")] if self._clip_min(node) == 0 else []
        if node.op_type not in ACTIVATION_OPS:
            return []
        if node.op_type == "Sigmoid":
            # x * Sigmoid(x) is how exporters write SiLU: the product is the activation.
            for user in consumers.get(node.output[0], []):
                if user.op_type == "Mul" and sorted(user.input) == sorted(
                    [node.input[0], node.output[0]]
                ):
                    return [(user.output[0], user, "SiLU")]
        return [(node.output[0], node, node.op_type)]

    def _clip_min(self, node: Any) -> float | None:
        for attribute in node.attribute:  # opset < 11
            if attribute.name == "min":
                return attribute.f
        if len(node.input) > 1 and node.input[1] in self._constants:
            value = self._array(self._constants[node.input[1]])
            if value.size == 1:
                return float(value.reshape(-1)[0])
        return None

    def _may_be_per_sample(self, tensor: str, batch: int | str | None) -> bool:
        """False when shape inference proves the tensor has no batch axis first."""
        elem_type, dims = self._types.get(tensor, (None, None))
        if elem_type is not None and elem_type not in _FLOAT_TYPES:
            return False
        if dims is None:
            return True
        if not dims:
            return False  # a scalar
        first = dims[0]
        return not isinstance(first, int) or first == batch

    def layers(self, *, all_nodes: bool = False, providers: Any = None) -> list[Tap]:
        """The model's layers: candidate taps that onnxruntime reports as float tensors."""
        key = (all_nodes, tuple(resolve_providers(providers)))
        if key not in self._layers:
            candidates = self.candidate_taps(all_nodes=all_nodes)
            if not candidates:
                raise BundleLabError(self._no_layer_message(all_nodes))
            session = self.session(candidates, providers)
            types = {output.name: output.type for output in session.get_outputs()}
            layers = [tap for tap in candidates if types.get(tap.tensor) in _ORT_FLOAT_TYPES]
            if not layers:
                raise BundleLabError(self._no_layer_message(all_nodes))
            self._layers[key] = layers
        return self._layers[key]

    def _no_layer_message(self, all_nodes: bool) -> str:
        if all_nodes:
            return (
                f"{self.name} has no tappable layer: no node outputs a float tensor of "
                "per-sample values before the graph outputs"
            )
        return (
            f"{self.name} has no tappable layer: no activation node (Relu, Sigmoid, Tanh, Gelu, "
            "...) outputs a hidden tensor; tap every node's outputs with all_nodes=True "
            "(CLI: --all-nodes)"
        )

    def sample_bytes(self, taps: Sequence[Tap]) -> int | None:
        """Bytes the tapped outputs of one sample take, or None where a shape is not known."""
        total = 0
        for tap in taps:
            elem_type, dims = self._types.get(tap.tensor, (None, None))
            if elem_type not in _FLOAT_TYPES or not dims or not all(
                isinstance(d, int) for d in dims[1:]
            ):
                return None
            total += math.prod(dims[1:]) * np.dtype(_FLOAT_TYPES[elem_type]).itemsize
        return total

    # -- running --------------------------------------------------------------------------------
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
            if not _is_ort_error(exc):
                raise
            raise BundleLabError(explain_load_error(exc, self)) from None

    def run(self, session: Any, tensors: list[str], feeds: dict[str, np.ndarray]) -> list:
        """``session.run``, with onnxruntime's failures as one line naming the node."""
        try:
            return session.run(tensors, feeds)
        except Exception as exc:  # noqa: BLE001
            if not _is_ort_error(exc):
                raise
            message = _strip_ort_prefix(str(exc))
            match = re.search(r"running (\S+) node\. Name:'([^']*)' Status Message: (.*)", message)
            if match:
                op, node, detail = match.groups()
                message = f"node {node!r} ({op}) failed: {_shorten(detail)}"
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
                tensor.data_type not in _FLOAT_TYPES or tensor.name in settings
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


# -- helpers -----------------------------------------------------------------------------------


def _model_input(value: Any) -> ModelInput:
    tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor_type is None:
        return ModelInput(value.name, None, None)
    dtype = None
    if tensor_type.elem_type:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return ModelInput(value.name, _dims(tensor_type), dtype)


def _dims(tensor_type: Any) -> tuple[int | str | None, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor_type.shape.dim
    )


def _inferred_types(proto: Any) -> dict[str, tuple[int | None, tuple | None]]:
    """tensor -> (elem type, dims) from onnx's shape inference; gaps where it cannot tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a hint: onnxruntime types the taps anyway
        inferred = proto
    graph = inferred.graph
    types = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.HasField("tensor_type"):
            tensor_type = value.type.tensor_type
            types[value.name] = (tensor_type.elem_type or None, _dims(tensor_type))
        elif value.type.WhichOneof("value") is not None:
            types[value.name] = (-1, None)  # a sequence, map or optional: never a layer
    return types


def _topological_order(graph: Any, known: list[str]) -> list:
    """Nodes in a topological order that keeps the file's order where it is one already."""
    available = set(known) | {""}
    pending = list(graph.node)
    order = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                order.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):  # inputs from nowhere: keep the file's order
            order.extend(remaining)
            break
        pending = remaining
    return order


def _has_subgraph(node: Any) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def _output_aliases(graph: Any, nodes: list) -> set[str]:
    """Graph outputs and the tensors they merely copy (Identity chains)."""
    producers = {name: node for node in nodes for name in node.output}
    aliases, todo = set(), [value.name for value in graph.output]
    while todo:
        name = todo.pop()
        if name in aliases:
            continue
        aliases.add(name)
        node = producers.get(name)
        if node is not None and node.op_type == "Identity" and node.input:
            todo.append(node.input[0])
    return aliases


def _layer_name(tensor: str, node: Any, used: set[str]) -> str:
    name = tensor
    if tensor.isdigit():  # '12' says nothing; 'Relu_3:12' does
        name = f"{node.name or node.op_type}:{tensor}"
    while name in used:
        name = f"{name}'"
    return name


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


def _batch(array: np.ndarray, start: int, stop: int, dtype: Any, size: int | None) -> np.ndarray:
    """Rows start:stop as a contiguous array of the model's type, padded to ``size`` rows."""
    rows = np.ascontiguousarray(array[start:stop], dtype=dtype)
    if size is not None and rows.shape[0] < size:
        pad = np.repeat(rows[-1:], size - rows.shape[0], axis=0)
        rows = np.concatenate([rows, pad])
    return rows


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


def _is_ort_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


def _strip_ort_prefix(message: str) -> str:
    message = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message.strip())
    # Drop C++ source locations ('/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) ').
    message = re.sub(r"/onnxruntime_src/\S+:\d+ (?:\S+\(.*?\)(?: const)? )?", "", message)
    return " ".join(message.split())


def _shorten(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain_load_error(exc: BaseException, model: OnnxModel) -> str:
    """onnxruntime's refusal to load a model as one line naming the node and op."""
    import onnxruntime as ort

    message = _strip_ort_prefix(str(exc))
    runtime = f"onnxruntime {ort.__version__}"
    where = model.name
    patterns = [
        (r"Could not find an implementation for (\S+)\((\d+)\) node with name '([^']*)'",
         lambda op, version, node: f"{runtime} cannot run node {node!r}: it has no kernel for "
                                   f"{op} (opset {version}) with {_input_types(model, node, op)}"),
        (r"(\S*):(\S+)\((-?\d+)\) is not a registered function/op",
         lambda domain, op, _: f"{runtime} cannot run node {_node_of(model, op, domain)!r}: op "
                               f"{op} of domain {domain!r} is not registered (a custom op: load "
                               "its library, or export without it)"),
        (r'In Node, \("([^"]*)", (\S+), "([^"]*)", -?\d+\).*?Error (.*)',
         lambda node, op, domain, detail: f"{runtime} cannot run node {node!r} (op {op}"
                                          f"{' of domain ' + repr(domain) if domain else ''}): "
                                          f"{_shorten(detail, 160)}"),
        (r"of operator \((\S+)\) in node \(([^)]*)\) is invalid",
         lambda op, node: f"{runtime} cannot run node {node!r} (op {op}): "
                          f"{_shorten(message, 200)}"),
        (r"Opset (\d+) is under development",
         lambda version: f"{where} uses opset {version}, newer than {runtime} supports: "
                         "re-export with an older opset or upgrade onnxruntime"),
        (r"Unsupported model IR version: (\d+), max supported IR version: (\d+)",
         lambda version, top: f"{where} has ONNX IR version {version}, {runtime} reads up to "
                              f"{top}: save it with ir_version={top} (if it uses nothing newer) "
                              "or upgrade onnxruntime"),
    ]
    for pattern, explain in patterns:
        match = re.search(pattern, message)
        if match:
            text = explain(*match.groups())
            return text if text.startswith(where) else f"{where}: {text}"
    return f"{where}: {runtime} cannot load the model: {_shorten(message)}"


def _node_of(model: OnnxModel, op: str, domain: str) -> str:
    for node in model.proto.graph.node:
        if node.op_type == op and node.domain == domain:
            return node.name or f"{op} -> {node.output[0] if node.output else '?'}"
    return op


def _input_types(model: OnnxModel, node_name: str, op: str) -> str:
    for node in model.proto.graph.node:
        if node.name == node_name and node.op_type == op:
            types = []
            for name in node.input:
                elem_type = model._types.get(name, (None, None))[0]
                if elem_type and elem_type > 0:
                    name = onnx.helper.tensor_dtype_to_string(elem_type)
                    types.append(name.removeprefix("TensorProto."))
                else:
                    types.append("?")
            return f"inputs of type {', '.join(types).lower()}"
    return "these input types"


# -- data ----------------------------------------------------------------------------------------


def load_data(
    path: str | Path, input_names: Sequence[str], *, labels_key: str = "labels"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model inputs and labels from an ``.npz`` file or a folder of ``.npy`` files.

    Each input is stored under its name, or as ``x`` when the model has a single input; the
    labels under ``labels_key``.  Nothing is unpickled (``allow_pickle=False``); ``.npy`` files
    are memory-mapped, so a subset can be taken without reading them whole.

    Returns
    -------
    inputs : dict of str -> numpy.ndarray of shape (n_samples, ...)
    labels : numpy.ndarray of shape (n_samples,)
    """
    what, stored, read, close = _open_arrays(Path(path))
    try:
        inputs = {}
        for name in input_names:
            key = name if name in stored else ("x" if len(input_names) == 1 else None)
            if key not in stored:
                fallback = " or 'x'" if len(input_names) == 1 else ""
                raise BundleLabError(
                    f"{what} has no array {name!r}{fallback} for the model input {name!r}; it "
                    f"holds {', '.join(map(repr, stored)) or 'nothing'}"
                )
            inputs[name] = _read_array(read, key, what)
        if labels_key not in stored:
            raise BundleLabError(
                f"{what} has no labels array {labels_key!r}; it holds "
                f"{', '.join(map(repr, stored))}: name the array of class labels (CLI: --labels)"
            )
        labels = np.asarray(_read_array(read, labels_key, what))
    finally:
        close()
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise BundleLabError(
            f"{what}: labels {labels_key!r} have shape {labels.shape}, expected one label per "
            "sample (for one-hot labels save labels.argmax(axis=1))"
        )
    for name, array in inputs.items():
        if array.ndim == 0 or array.shape[0] != labels.shape[0]:
            count = array.shape[0] if array.ndim else "no"
            raise BundleLabError(
                f"{what}: {labels.shape[0]} labels for {count} samples of input {name!r}: store "
                "one label per sample, in the same order"
            )
    return inputs, labels


def _open_arrays(path: Path):
    """(description, stored names, read(name), close()) for an .npz file or a .npy folder."""
    if not path.exists():
        raise BundleLabError(f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        files = {file.stem: file for file in path.glob("*.npy") if file.is_file()}
        read = lambda key: np.load(files[key], mmap_mode="r", allow_pickle=False)  # noqa: E731
        return f"{path.name}/ (*.npy)", list(files), read, lambda: None
    if path.suffix.lower() != ".npz":
        raise BundleLabError(
            f"unknown data format {path.suffix or path.name!r}: pass an .npz file (np.savez(path, "
            "x=inputs, labels=labels)) or a folder of .npy files (x.npy and labels.npy)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile and numpy raise various errors
        raise BundleLabError(
            f"{path.name} is not a readable .npz archive ({_shorten(str(exc), 120)})"
        ) from None
    return path.name, list(archive.files), archive.__getitem__, archive.close


def _read_array(read, key: str, what: str) -> np.ndarray:
    try:
        return read(key)
    except Exception as exc:  # noqa: BLE001 - truncated zip members, bad headers, pickles
        if "allow_pickle" in str(exc):
            raise BundleLabError(
                f"{what}: array {key!r} holds Python objects (pickled), which bundlelab never "
                "loads: save numeric arrays"
            ) from None
        raise BundleLabError(
            f"{what}: cannot read array {key!r}, the file looks truncated or corrupt "
            f"({_shorten(str(exc), 120)})"
        ) from None


# -- the adapter ---------------------------------------------------------------------------------


class OnnxAdapter:
    """Measure bundles inside ONNX models, run by onnxruntime (see the module docstring).

    Parameters
    ----------
    all_nodes : bool, default=False
        Tap every node's float outputs instead of the activation nodes' only.
    providers : str or list of str, optional
        ``'cpu'`` (default), ``'cuda'``, or onnxruntime provider names; the CPU provider is
        always added last for the nodes an accelerator cannot run.

    ``model`` in the methods is a path, an ``onnx.ModelProto`` or an :class:`OnnxModel`;
    ``inputs`` a numpy array (one-input models) or a dict input name -> array.
    """

    name = "onnx"

    def __init__(self, *, all_nodes: bool = False, providers: Any = None):
        self.all_nodes = bool(all_nodes)
        self.providers = providers
        self._last: tuple[Any, OnnxModel, Any] | None = None  # (key, model, source)

    def model(self, model: Any) -> OnnxModel:
        """``model`` as an :class:`OnnxModel` (the last one is cached)."""
        if isinstance(model, OnnxModel):
            return model
        if isinstance(model, (str, Path)):
            path = Path(model)
            stat = path.stat() if path.is_file() else None
            key = ("path", str(path.resolve()), stat and (stat.st_mtime_ns, stat.st_size))
        else:
            key = ("proto", id(model))
        if self._last is None or self._last[0] != key:
            if key[0] == "path":
                loaded = load_model(model)
            elif hasattr(model, "graph"):
                loaded = OnnxModel(model)
            else:
                raise BundleLabError(
                    f"the ONNX adapter takes a path, an onnx.ModelProto or an OnnxModel, not "
                    f"{type(model).__name__}"
                )
            self._last = (key, loaded, model)  # keep model alive: its id is the key
        return self._last[1]

    def layers(self, model: Any) -> list[Tap]:
        """The layers as :class:`Tap` records (layer name, tensor, node, op type)."""
        return self.model(model).layers(all_nodes=self.all_nodes, providers=self.providers)

    def layer_names(self, model: Any, inputs: Any = None) -> list[str]:
        return [tap.layer for tap in self.layers(model)]

    def iter_layer_outputs(
        self, model: Any, inputs: Any, *, layers: Sequence[str], batch_size: int
    ) -> Iterator[dict[str, np.ndarray]]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BundleLabError(
                "The 'batch_size' parameter must be an int in [1, inf). "
                f"Got {batch_size!r} instead."
            )
        onnx_model = self.model(model)
        taps = {tap.layer: tap for tap in self.layers(model)}
        unknown = [layer for layer in layers if layer not in taps]
        if unknown:
            raise BundleLabError(f"{onnx_model.name} has no layer {unknown[0]!r}")
        # the session layers() built (every candidate is an output): cached, not rebuilt
        candidates = onnx_model.candidate_taps(all_nodes=self.all_nodes)
        session = onnx_model.session(candidates, self.providers)
        tensors = [taps[layer].tensor for layer in layers]
        feeds, n_samples = onnx_model.feeds(inputs)
        fixed = onnx_model.fixed_batch_size
        step = fixed or batch_size
        dtypes = {i.name: i.dtype for i in onnx_model.inputs}
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            batch = {
                name: _batch(array, start, stop, dtypes[name], fixed)
                for name, array in feeds.items()
            }
            outputs = onnx_model.run(session, tensors, batch)
            expected = fixed or stop - start
            result = {}
            for layer, output in zip(layers, outputs):
                if output.ndim == 0 or output.shape[0] != expected:
                    raise BundleLabError(
                        f"{onnx_model.name}: layer {layer!r} outputs shape {output.shape} for a "
                        f"batch of {expected} samples: its first axis is not the batch; leave "
                        "it out (--layers)"
                    )
                result[layer] = output[: stop - start]
            yield result

    def weight_amplitude(self, model: Any) -> float:
        return self.model(model).weight_amplitude()


__all__ = [
    "ACTIVATION_OPS",
    "ModelInput",
    "OnnxAdapter",
    "OnnxModel",
    "Tap",
    "load_data",
    "load_model",
]
