"""Reading an ONNX graph: float types, inputs, shape inference, node order, every tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import onnx

from ..._validation import checked_keywords

#: ONNX element types bundles are computed on; others (int, bool, bfloat16) are never layers
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
}


@dataclass(frozen=True)
class ModelInput:
    """A graph input of an ONNX model.

    Attributes
    ----------
    name : str
    dims : tuple or None
        Each dimension an int, a symbolic name or None when unknown; None: any shape.
    dtype : numpy.dtype or None
    """

    name: str
    dims: tuple[int | str | None, ...] | None
    dtype: np.dtype | None

    def describe(self) -> str:
        if self.dims is None:
            return f"{self.name!r} (any shape)"
        dims = ", ".join("N" if d is None else str(d) for d in self.dims)
        dtype = f" and type {self.dtype}" if self.dtype else ""
        return f"{self.name!r} of shape ({dims}){dtype}"


ModelInput.__init__ = checked_keywords(ModelInput.__init__)  # type: ignore[method-assign]


def model_input(value: Any) -> ModelInput:
    """The :class:`ModelInput` a graph input (ValueInfoProto) describes."""
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


#: float initializers with more values than this are shape-inferred from their type alone
WEIGHT_STUB_VALUES = 64
_FLOAT_DATA_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
})


def inferred_types(proto: Any, *, declared: bool = True
                   ) -> dict[str, tuple[int | None, tuple | None]]:
    """tensor -> (elem type, dims) from onnx's shape inference; gaps where it cannot tell.

    Inference runs on :func:`without_weights` of ``proto``: onnx serializes the model it is
    given, and the weights are nearly all of a model's bytes.  ``declared=False`` leaves out
    what the file itself says of its tensors (its value_info, the shapes of its outputs),
    which inference otherwise keeps and builds on: the dims are then derived from the inputs
    through the ops alone, so a faulty declaration cannot pass for a proof."""
    skeleton, stubs = without_weights(proto)
    if not declared:
        del skeleton.graph.value_info[:]
        for output in skeleton.graph.output:
            if output.type.HasField("tensor_type"):
                output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a hint: onnxruntime types the taps anyway
        inferred = skeleton
    graph = inferred.graph
    types: dict[str, tuple[int | None, tuple | None]] = {}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.name not in stubs:  # a weight's stand-in input is none of the model's inputs
            _note_type(types, value)
    for value in proto.graph.value_info:
        if value.name in stubs:  # a weight the file itself describes: inference keeps that
            _note_type(types, value)
    return types


def _note_type(types: dict, value: Any) -> None:
    if value.type.HasField("tensor_type"):
        tensor_type = value.type.tensor_type
        types[value.name] = (tensor_type.elem_type or None, _dims(tensor_type))
    elif value.type.WhichOneof("value") is not None:
        types[value.name] = (-1, None)  # a sequence, map or optional: never a layer


def without_weights(proto: Any) -> tuple[Any, set[str]]:
    """A copy of ``proto`` for shape inference whose large float initializers are graph
    inputs of the same type and shape, and the names of the inputs added for them.

    Shape inference reads an initializer's values only where they decide a shape (Reshape's
    shape, Resize's scales, Pad's pads: integers, or a few floats), so a float tensor of more
    than :data:`WEIGHT_STUB_VALUES` values infers the same as an input of its type and shape.
    Nothing of the weights is copied."""
    graph = proto.graph
    inputs = {value.name for value in graph.input}
    skeleton = onnx.ModelProto()
    _copy_fields(proto, skeleton, skip="graph")
    _copy_fields(graph, skeleton.graph, skip="initializer")
    stubs = set()
    for tensor in graph.initializer:
        if tensor.data_type in _FLOAT_DATA_TYPES and _n_values(tensor) > WEIGHT_STUB_VALUES:
            if tensor.name not in inputs:  # IR < 4 lists every initializer as an input
                skeleton.graph.input.append(onnx.helper.make_tensor_value_info(
                    tensor.name, tensor.data_type, list(tensor.dims)))
                stubs.add(tensor.name)
        else:
            skeleton.graph.initializer.append(tensor)
    return skeleton, stubs


def _copy_fields(source: Any, target: Any, *, skip: str) -> None:
    """Every field that is set in message ``source`` but ``skip``, copied into ``target``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, (str, bytes, int, float, bool)):
            setattr(target, field.name, value)
        elif hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        else:
            getattr(target, field.name).CopyFrom(value)


def _n_values(tensor: Any) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def topological_order(graph: Any, known: list[str]) -> list:
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


def all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers (dense and sparse) and node attributes (dense
    and sparse tensors), subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparse = list(attribute.sparse_tensors)
            if attribute.HasField("sparse_tensor"):
                sparse.append(attribute.sparse_tensor)
            for tensor in sparse:  # e.g. a Constant node's sparse_value
                yield tensor.values
                yield tensor.indices
            if attribute.HasField("g"):
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def model_tensors(proto: Any) -> Iterator[Any]:
    """Every TensorProto of a model: its graph's (:func:`all_tensors`), its functions' node
    attributes, and its training-info graphs' -- every place onnxruntime may read external
    data from."""
    yield from all_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)
    for info in proto.training_info:
        for graph in (info.initialization, info.algorithm):
            yield from all_tensors(graph)
