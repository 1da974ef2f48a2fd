"""One-line messages: onnxruntime's errors naming the node and op, long text shortened."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from ._model import OnnxModel


def is_ort_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


def strip_ort_prefix(message: str) -> str:
    message = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message.strip())
    # Drop C++ source locations ('/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) ').
    message = re.sub(r"/onnxruntime_src/\S+:\d+ (?:\S+\(.*?\)(?: const)? )?", "", message)
    return " ".join(message.split())


def shorten(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain_load_error(exc: BaseException, model: OnnxModel) -> str:
    """onnxruntime's refusal to load a model as one line naming the node and op."""
    import onnxruntime as ort

    message = strip_ort_prefix(str(exc))
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
                                          f"{shorten(detail, 160)}"),
        (r"of operator \((\S+)\) in node \(([^)]*)\) is invalid",
         lambda op, node: f"{runtime} cannot run node {node!r} (op {op}): "
                          f"{shorten(message, 200)}"),
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
    return f"{where}: {runtime} cannot load the model: {shorten(message)}"


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
                elem_type = model.types.get(name, (None, None))[0]
                if elem_type and elem_type > 0:
                    name = onnx.helper.tensor_dtype_to_string(elem_type)
                    types.append(name.removeprefix("TensorProto."))
                else:
                    types.append("?")
            return f"inputs of type {', '.join(types).lower()}"
    return "these input types"
