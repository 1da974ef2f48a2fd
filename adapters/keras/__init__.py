"""Keras 3 models: tap hidden layers through the Functional graph and measure their bundles.

>>> from bundlelab.adapters.keras import audit
>>> report = audit(model, x_train, y_train, batch_size=64)   # doctest: +SKIP
>>> report.first_conflicting                                 # doctest: +SKIP

Backend
    Works on every Keras backend (TensorFlow, JAX, PyTorch).  Keras takes its backend from
    ``KERAS_BACKEND`` (else ``~/.keras/keras.json``, else TensorFlow); when that is TensorFlow
    and TensorFlow is not installed, importing this module sets ``KERAS_BACKEND`` to PyTorch
    (else JAX) first.  A Keras imported before bundlelab keeps its backend, so set
    ``KERAS_BACKEND`` before ``import keras`` on a machine without TensorFlow.
Layers (taps)
    A tap is one call of one layer (or of a ``keras.ops`` function) in the model's graph, named
    by the layer; a layer called several times per forward pass (a shared ``ReLU``) gives the
    taps ``name``, ``name:2``, ``name:3``, ... in execution order, as in the torch adapter.  Only
    hidden calls with one floating-point output are taps; the model's outputs (the logits) never
    are.  The layers of a nested model (a Sequential or Functional model used as a layer, e.g.
    ``Sequential([Input, base_model, GlobalAveragePooling2D(), Dense])``) are taps too, named
    ``"outer/inner"`` (deeper nesting joins every level with ``"/"``; a nested model called
    twice: ``"base:2/..."``).  By default the taps are the calls that end in a non-linearity (a
    non-linear ``activation``, activation layers, ``keras.ops`` activations, layers whose class
    is named like an activation), except those of gating branches: squeeze-excitation branches
    (from where they leave the main path to the ``Multiply`` that scales it) and softmax
    weights that feed a product (attention).  ``layers="all"`` keeps those; ``layers="blocks"``
    takes the outputs of the repeated blocks (repeated nested models or layers made of layers,
    else numbered layer names such as ``block_3_...``, ``conv2_block1_...``).  What the
    default picked and left out is printed once (stderr) and kept in
    ``report.params["selection"]``.  ``layers=`` picks any calls instead: layer names (a name
    selects every call of that layer), tap names (``"relu:2"``, ``"base/block_1_relu"``), glob
    patterns (``"block*"``, ``"base/*"``) or layer classes (``layers=[keras.layers.ReLU]``).
    Subclassed models have no graph to tap: build them with the Functional API, or compute
    the layer outputs yourself and pass them to :func:`bundlelab.analyze_layers`.
Inference
    A *side model* ``keras.Model(model.inputs, [outputs of the chosen taps])`` shares the model's
    layers and weights and runs ``inference_batch_size`` samples at a time with
    ``training=False`` (dropout off, batch norm on its moving statistics), without gradients.
    Outputs stream into :class:`bundlelab.BundleStream` (through
    :func:`bundlelab.adapters.measure_bundles`); torch-backend tensors stay where they are
    (CUDA tensors go to the core, which reads them zero-copy).
Data
    ``x`` as given to ``model.fit`` (an array, or a list of arrays for a model with several
    inputs) and ``y`` as class ids or one-hot rows.  Pass the TRAINING set: :func:`audit` and
    :class:`BundleCallback` measure ``n_samples`` of it (2048, as in the paper; all if fewer),
    the sorted indices ``np.random.default_rng(seed).choice(N, n_samples, replace=False)``.
Weight amplitude ``w``
    ``"model"`` (default, as the authors' code): max ``|w|`` over ``model.trainable_weights``.
    ``"layer"``: per tap, max ``|w|`` of its own layer; for a call without weights (an
    activation, an add), of the nearest layers with weights before it in the graph; the
    model's amplitude when there is none.  Or a float.
Training hyperparameters
    ``learning_rate`` as given, else the compiled optimizer's current rate
    (``model.optimizer.learning_rate``, schedules followed), else the core's default 1e-3.
    ``batch_size`` (|B|) as given, else the core's default 64: Keras does not tell a model's
    ``fit`` batch size, so pass the one ``fit`` trains with.  ``report.params["sources"]`` says
    where each came from ("given", "optimizer", "default", "model parameters").
Update format
    The weight update is evaluated in the format of the model's trainable variables
    (:meth:`KerasAdapter.update_format`): float32 under a ``mixed_float16`` or
    ``mixed_bfloat16`` policy, whose layers output float16/bfloat16 but update float32
    variables.  ``update_format="activations"`` evaluates it in the activations' format
    instead (low-precision bundling).
During training
    :class:`BundleCallback` records ``H^l(t)`` during ``model.fit`` into a
    :class:`bundlelab.BundleTracker`, with t = the number of epochs completed, measuring when
    t is a multiple of ``every``.  :class:`KerasBackend` (registered as the ``"keras"``
    training backend) trains specs built by :func:`build_model` with the optimizers of
    :func:`make_optimizer`, which match the PyTorch backend's step for step.  The builder's
    layers and the optimizers are registered with Keras' serialization (package
    ``"bundlelab"``), so ``keras.models.load_model`` reads saved models once this module is
    imported.
"""

from __future__ import annotations

from ._import import keras  # noqa: F401 - fail here with an install hint, not in a submodule
from ._adapter import KerasAdapter, optimizer_learning_rate
from ._audit import audit
from ._build import build_model
from ._callback import BundleCallback
from ._optim import make_optimizer
from ._taps import Tap
from ._train import KerasBackend, KerasTrainee

__all__ = [
    "BundleCallback",
    "KerasAdapter",
    "KerasBackend",
    "KerasTrainee",
    "Tap",
    "audit",
    "build_model",
    "make_optimizer",
    "optimizer_learning_rate",
]
