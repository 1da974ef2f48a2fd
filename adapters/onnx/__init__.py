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

from ..._errors import BundleLabError

try:
    import onnx  # noqa: F401 - fail here with an install hint, not deep in a submodule
except ImportError:  # pragma: no cover - depends on the environment
    raise BundleLabError(
        "the ONNX adapter requires onnx and onnxruntime. You can install them with "
        "`pip install 'bundlelab[onnx]'`"
    ) from None
# The F401 names are public but outside __all__, as they were before the package was split.
from ._adapter import OnnxAdapter
from ._data import load_data
from ._external_data import check_external_data  # noqa: F401
from ._graph import ModelInput
from ._messages import explain_load_error  # noqa: F401
from ._model import SETTING_INPUTS, OnnxModel, load_model  # noqa: F401
from ._runtime import PROVIDERS, resolve_providers  # noqa: F401
from ._taps import ACTIVATION_OPS, Tap

__all__ = [
    "ACTIVATION_OPS",
    "ModelInput",
    "OnnxAdapter",
    "OnnxModel",
    "Tap",
    "load_data",
    "load_model",
]
