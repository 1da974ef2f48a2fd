"""OnnxModel (an ONNX model prepared for tapping and running) and load_model, which reads one.

OnnxModel holds the parsed graph (inputs, nodes in order, constants, inferred types) as public
read-only attributes and caches what is derived from it; choosing taps (``_taps.py``) and
running onnxruntime (``_runtime.py``) are functions of those attributes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..._errors import BundleLabError
from ..._validation import checked_keywords, short_repr
from ._external_data import check_external_data
from ._graph import FLOAT_TYPES, inferred_types, model_input, model_tensors, topological_order
from ._runtime import check_feeds, new_session, resolve_providers, run_session
from ._taps import (
    Tap,
    batch_first_known,
    find_taps,
    float_layers,
    no_layer_message,
    sample_bytes,
)

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


#: nodes whose constant inputs are the trained weights the update format is read from
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: nodes that only convert a stored weight before such a node reads it
_WEIGHT_CONVERSIONS = frozenset({"Cast", "Transpose", "DequantizeLinear", "Identity", "Reshape"})
_UPDATE_FORMATS = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}
#: metadata the dynamo exporter's optimizer leaves on the nodes it rewrote
_REWRITE_RULE = "pkg.onnxscript.rewriter.rule_name"


@checked_keywords
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
    if not isinstance(path, (str, os.PathLike)):
        raise BundleLabError(
            f"The 'path' parameter must be the path of an .onnx file. Got {short_repr(path)} "
            "instead."
        )
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
    return OnnxModel(proto, name=path.name, base_dir=path.parent)  # checks external data


def _not_onnx(path: Path, head: bytes) -> str:
    what = (
        "a zip archive (a TorchScript or PyTorch checkpoint?)" if head.startswith(b"PK\x03\x04")
        else "not an ONNX model (protobuf ModelProto)"
    )
    return (
        f"{path.name} is {what}: bundlelab audit reads ONNX models only; export one with "
        "torch.onnx.export(model, example_input, 'model.onnx') or tf2onnx"
    )


class OnnxModel:
    """An ONNX model prepared for tapping: inputs, candidate taps, onnxruntime sessions.

    Parameters
    ----------
    proto : onnx.ModelProto
    name : str, default='model'
        Name used in messages (the file name when loaded by :func:`load_model`).
    base_dir : path-like, optional
        Folder holding the model's external data; required when it has some.

    Attributes
    ----------
    proto : onnx.ModelProto
    name : str
    base_dir : pathlib.Path or None
    inputs : list of ModelInput
        The graph inputs that are fed data (not initializers).
    nodes : list of onnx.NodeProto
        The nodes in topological order.
    constants : dict of str to onnx.TensorProto
        Initializers and ``Constant`` nodes' values, by tensor name.
    types : dict of str to (elem type, dims)
        What onnx's shape inference knows of each tensor.
    has_external_data : bool
        Whether some tensors are kept in files next to the model.
    """

    @checked_keywords
    def __init__(self, proto: Any, *, name: str = "model", base_dir: str | Path | None = None):
        if not hasattr(proto, "graph"):
            raise BundleLabError(
                f"The 'proto' parameter must be an onnx.ModelProto. Got {short_repr(proto)} "
                "instead."
            )
        self.proto = proto
        self.name = str(name)
        self.base_dir = None if base_dir is None else Path(base_dir)
        graph = proto.graph
        self.has_external_data = any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model_tensors(proto)
        )
        if self.has_external_data:
            if self.base_dir is None:
                raise BundleLabError(
                    f"{name} keeps tensors in external files: load it with load_model(path) or "
                    "pass base_dir= (the folder of the model file)"
                )
            # here too, not only in load_model: a proto handed in directly is checked against
            # its base_dir (never the working directory) before onnxruntime reads anything
            check_external_data(proto, self.base_dir, where=self.name)
        self.constants = {t.name: t for t in graph.initializer}
        self.inputs = [
            model_input(value) for value in graph.input if value.name not in self.constants
        ]
        if not self.inputs:
            raise BundleLabError(f"{name} has no input: there is nothing to feed the data to")
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value" and node.output:
                        self.constants[node.output[0]] = attribute.t
        known = [i.name for i in self.inputs] + list(self.constants)
        self.nodes = topological_order(graph, known)
        self.types = inferred_types(proto)
        self._candidates: dict[bool, list[Tap]] = {}
        #: all_nodes -> (tensor, shape) of candidates shape inference proved have no batch axis
        self.unbatched: dict[bool, list[tuple[str, tuple]]] = {}
        self._sessions: dict[tuple, Any] = {}
        self._layers: dict[tuple, list[Tap]] = {}
        #: types inferred from the inputs through the ops alone (see batch_first_known)
        self._derived_types: dict | None = None

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

    # -- layers ---------------------------------------------------------------------------------
    def candidate_taps(self, *, all_nodes: bool = False) -> list[Tap]:
        """Tensors that can be layers, in topological order, before onnxruntime has typed them."""
        if all_nodes not in self._candidates:
            self.unbatched[all_nodes] = []
            self._candidates[all_nodes] = find_taps(
                self, all_nodes=all_nodes, unbatched=self.unbatched[all_nodes])
        return self._candidates[all_nodes]

    def layers(self, *, all_nodes: bool = False, providers: Any = None) -> list[Tap]:
        """The model's layers: candidate taps that onnxruntime reports as float tensors."""
        key = (all_nodes, tuple(resolve_providers(providers)))
        if key not in self._layers:
            candidates = self.candidate_taps(all_nodes=all_nodes)
            layers = float_layers(candidates, self.session(candidates, providers)) if (
                candidates
            ) else []
            if not layers:
                raise BundleLabError(no_layer_message(self.name, all_nodes))
            self._layers[key] = layers
        return self._layers[key]

    def batch_first_known(self, tensor: str) -> bool:
        """Whether shape inference proves ``tensor``'s first axis is the batch (no probe
        batch needed): its first dimension is the fixed batch size of a fixed-size export,
        or one of the symbols the inputs of a dynamic one have first, as inference derives it
        from the inputs through the ops, without the file's own declarations of its tensors
        (which a faulty export may get wrong, and which inference would build on)."""
        fixed = self.fixed_batch_size
        if fixed is not None:
            batch = {fixed}
        else:
            firsts = {i.dims[0] if i.dims else None for i in self.inputs}
            if not all(isinstance(d, str) and d for d in firsts):
                return False  # an unnamed or fixed first axis among dynamic ones: run probes
            batch = firsts
        if self._derived_types is None:
            self._derived_types = inferred_types(self.proto, declared=False)
        return batch_first_known(self._derived_types, tensor, batch)

    def sample_bytes(self, taps: Sequence[Tap]) -> int | None:
        """Bytes the tapped outputs of one sample take, or None where a shape is not known."""
        return sample_bytes(self.types, taps)

    # -- running --------------------------------------------------------------------------------
    def session(self, taps: Sequence[Tap], providers: Any = None) -> Any:
        """An onnxruntime session whose graph outputs include ``taps`` (cached)."""
        names = resolve_providers(providers)
        tensors = list(dict.fromkeys(tap.tensor for tap in taps))  # a block output may be a tap
        key = (tuple(tensors), tuple(names))
        if key not in self._sessions:
            self._sessions.clear()  # one session at a time: they hold the weights
            self._sessions[key] = new_session(self, tensors, names)
        return self._sessions[key]

    def run(self, session: Any, tensors: list[str], feeds: dict[str, np.ndarray]) -> list:
        """``session.run``, with onnxruntime's failures as one line naming the node."""
        return run_session(session, tensors, feeds, where=self.name)

    def feeds(self, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
        """Check ``inputs`` against the model's inputs: (name -> array, number of samples)."""
        return check_feeds(inputs, self.inputs, where=self.name)

    # -- weights --------------------------------------------------------------------------------
    def weight_amplitude(self) -> float:
        """``w``: max |value| over the float initializers that are weights (module docstring)."""
        settings = {
            node.input[i]
            for node in self.nodes
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
            values = self.array(tensor)
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

    def weight_format(self) -> str | None:
        """The float format of the constants that Conv, Gemm and MatMul nodes read as weights
        (through a Cast, Transpose or DequantizeLinear), the widest where they differ; None
        when no such node reads a float constant."""
        producers = {name: node for node in self.nodes for name in node.output}
        found = set()
        for node in self.nodes:
            if node.op_type not in _WEIGHTED_OPS:
                continue
            for name in node.input[1:]:
                for _ in range(3):  # a weight stored in another form is converted first
                    producer = producers.get(name)
                    if name in self.constants or producer is None or (
                        producer.op_type not in _WEIGHT_CONVERSIONS or not producer.input
                    ):
                        break
                    name = producer.input[0]
                tensor = self.constants.get(name)
                if tensor is not None and tensor.data_type in _UPDATE_FORMATS:
                    found.add(_UPDATE_FORMATS[tensor.data_type])
        widest = [name for name in ("float64", "float32", "bfloat16", "float16") if name in found]
        return widest[0] if widest else None

    def folded_batch_norm(self) -> str | None:
        """A note when a torch exporter folded batch norm into convolution weights (their
        largest value is then not a trained parameter's), else None."""
        fused = sum(
            any(p.key == _REWRITE_RULE and "BatchNorm" in p.value for p in node.metadata_props)
            for node in self.nodes
        )
        if not fused and self.proto.producer_name == "pytorch":
            # the legacy exporter's constant folding renames the weights it computed
            fused = sum(node.op_type == "Conv" and len(node.input) > 1
                        and node.input[1].startswith("onnx::") for node in self.nodes)
        if not fused:
            return None
        return f"ONNX weights, batch norm folded into {fused} conv"

    def array(self, tensor: Any) -> np.ndarray:
        """A TensorProto of the model as a numpy array (external data read from base_dir)."""
        base = None if self.base_dir is None else str(self.base_dir)
        return numpy_helper.to_array(tensor, base_dir=base or "")
