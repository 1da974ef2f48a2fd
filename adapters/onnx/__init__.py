"""ONNX models: tap intermediate tensors, run them with onnxruntime, measure their bundles.

>>> from bundlelab.adapters.onnx import audit
>>> report = audit("model.onnx", "train.npz")                 # doctest: +SKIP
>>> report = audit("model.onnx", x_train, y_train, n_samples=1024)   # doctest: +SKIP

:func:`audit` measures a seeded subset of the training set in one call (what the CLI's
``bundlelab audit`` runs); :class:`OnnxAdapter` is the adapter for
:func:`bundlelab.adapters.measure_bundles`.

Loading
    :func:`load_model` reads the graph with ``load_external_data=False`` and refuses external
    data whose ``location`` leaves the model's folder (absolute paths, ``..``, symlinks
    pointing out) before any of it is read.  onnxruntime then reads the external data from
    that folder; the weight amplitude reads it tensor by tensor.  Nothing is ever unpickled.
Layers (taps)
    By default the outputs of activations, in topological order: activation nodes
    (:data:`ACTIVATION_OPS`, ``Clip`` with a lower bound of 0 as in ReLU6) and the activations
    exporters write as arithmetic below the opset that has them as one op -- GELU as
    ``x * 0.5 * (1 + Erf(x / sqrt 2))`` or its Tanh approximation, SiLU/Swish as
    ``x * Sigmoid(x)``, HardSwish as ``x * HardSigmoid(x)`` or ``x * Clip(x + 3, 0, 6) / 6``,
    Mish as ``x * Tanh(Softplus(x))`` -- tapped at the pattern's final product.  Left out of
    the default, kept by ``layers='all'``: squeeze-excitation gates (an activation whose output
    scales a larger tensor by broadcast, and the activation inside its branch) and attention
    weights (a ``Softmax`` multiplied into values).  ``layers='blocks'`` taps the outputs of
    repeated blocks (``layer1.0``, ``blocks.3``); ``all_nodes=True`` taps every node's float
    outputs, leaving out (and naming) the tensors whose first axis is not the batch.  Graph
    outputs (the logits), and ``Identity`` copies of them, are never layers, nor are tensors
    that do not depend on the model's inputs.
Names
    A torch export records which module wrote each node (the legacy exporter in node names,
    ``/layer1/layer1.0/relu_1/Relu``; the dynamo exporter in ``pkg.torch.onnx.name_scopes``
    metadata); a layer is then named as the torch adapter names it: the activation module
    (``layer1.0.relu``, ``layer1.0.relu:2`` for its second call) or the function call
    attributed to the module that made it (``layer1.0:relu``, ``forward:silu``).  Otherwise a
    layer is named after its tensor; tensor names that are bare numbers (older exporters) are
    prefixed with their node's name (``Relu_3:12``); a name met again gets the suffix ``:2``,
    ``:3``, ... .  Names and glob patterns given to ``layers=`` match the layer names, the
    tensor names with or without their leading ``/`` (``'layer4*'`` matches
    ``/layer4/layer4.0/relu/Relu_output_0``) and the module names.  The taps become extra graph
    outputs, typed by ``onnx.shape_inference`` where it can; where it cannot (custom ops), the
    output is added untyped and onnxruntime infers its type.
Batches
    A dynamic batch axis is fed ``inference_batch_size`` samples at a time.  A model exported
    with a fixed batch size B is fed exactly B samples at a time whatever
    ``inference_batch_size`` says; the
    last batch is padded by repeating its last sample and the padded rows are dropped.  That
    is exact for models that treat samples independently (inference-mode batch norm), which is
    what a fixed-size export of a classifier does.
Weight amplitude ``w``
    The largest ``|value|`` over the model's float initializers, leaving out rank-0 constants
    (scalars such as an attention scale or an epsilon) and inputs that are settings rather than
    trained weights (:data:`SETTING_INPUTS`: Clip bounds, batch-norm running statistics, ...).
    ONNX does not record which tensors were trainable, and exporters fold batch norm into the
    convolution weights: pass ``weight_amplitude=`` to :func:`audit` or
    :func:`bundlelab.adapters.measure_bundles` (CLI: ``--weight-amplitude``) when you know the
    training-time value.  Where a torch exporter folded batch norm (the dynamo exporter's
    rewrite metadata, the legacy exporter's ``onnx::Conv_*`` weights), the audit's
    ``params["sources"]["weight_amplitude"]`` says so.
Update format
    :meth:`OnnxAdapter.update_format`: the float format of the weights Conv, Gemm and MatMul
    nodes read (``'float16'`` for a half-precision export), the format of the weight update
    unless ``update_format=`` is given.
"""

from __future__ import annotations

from ..._errors import require

# onnx here, with the install hint, not deep in a submodule; onnxruntime when a model runs
require("onnx", purpose="the ONNX adapter", extra="onnx")

from ._adapter import OnnxAdapter  # noqa: E402
from ._audit import AUDIT_BATCH_BYTES, audit, automatic_batch_size  # noqa: E402
from ._data import load_data  # noqa: E402
from ._graph import ModelInput  # noqa: E402
from ._model import OnnxModel, load_model  # noqa: E402
from ._taps import ACTIVATION_OPS, Tap  # noqa: E402

__all__ = [
    "ACTIVATION_OPS",
    "AUDIT_BATCH_BYTES",
    "ModelInput",
    "OnnxAdapter",
    "OnnxModel",
    "Tap",
    "audit",
    "automatic_batch_size",
    "load_data",
    "load_model",
]
