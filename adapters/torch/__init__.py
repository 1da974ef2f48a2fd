"""PyTorch models: tap hidden layers with forward hooks and measure their bundles.

>>> from bundlelab.adapters.torch import audit
>>> report = audit(model, x_train, y_train, optimizer=opt, train_loader=loader)  # doctest: +SKIP
>>> report.first_conflicting                                                  # doctest: +SKIP

Layers (taps)
    A tap is one call of one module, named by ``named_modules()``; a module called several
    times per forward pass (a shared ``self.relu`` in a ResNet block) gives the taps ``name``,
    ``name:2``, ``name:3``, ...  A call of an activation FUNCTION inside a ``forward``
    (``F.relu``, ``torch.relu``, ``x.relu()``, ``x.relu_()``, ``F.gelu``, ``F.silu``,
    ``torch.sigmoid``, ``F.hardswish``, ``torch.tanh``, softmax, ...) is a tap too, seen with a
    ``torch.overrides.TorchFunctionMode`` and named after the module that makes it:
    ``"block1.conv_path:relu"`` (``"forward:relu"`` in the top-level model's own forward), with
    ``:2``, ``:3`` for later calls.  A tracing forward pass on two samples lists them in
    execution order (the order in which the calls return); only calls that return one float
    tensor with the batch as its first dimension are taps.
Default selection
    Every activation: the calls of activation modules, recognised by what they compute (a
    subclass of :data:`ACTIVATION_TYPES`, or ANY class named like one and holding no layer
    with weights: timm's ``GELU``, ``QuickGELU``, ``StarReLU``, ``HardSwishMe``, Hugging Face's
    ``NewGELUActivation``), and the functional calls (the function called inside an activation
    module is that module's tap, not a second one).  Left out: the output (never the logits)
    and the gates, which ``layers="all"`` keeps: activations on a squeezed branch that is
    multiplied back into the main path (a squeeze-excitation block's sigmoid and its inner
    reduce activation), any activation broadcast-multiplied into a tensor twice its size or
    more, and softmax outputs (attention weights); see :mod:`._functional` for the rule.
    ``layers="blocks"``: the outputs of the repeated blocks (basic blocks, inverted residuals,
    transformer blocks; see :mod:`._blocks`).  A model without any activation falls back to
    the outputs of its top-level children except the last one.  A model built by
    :func:`build_model` keeps its measured layers (its activation modules) as the default.
    :func:`audit` prints, once, what the default picked and left out (one line on stderr,
    ``"42 activations tapped; 18 squeeze-excitation gates left out (layers='all' keeps
    them)"``) and stores it in ``report.params["selection"]``.  ``layers=`` picks any calls
    instead: module or tap names (a module name selects every call of that module), glob
    patterns (``"layer*.?"``, ``"*:gelu"``), or module types (``layers=[nn.ReLU]``, which
    also selects ``F.relu`` calls).
Inference
    Every forward pass runs under ``torch.no_grad()`` in eval mode; each module's own training
    flag is restored afterwards, also on error, and the hooks exist only during the pass (no
    state leaks between batches).  A tapped output is a detached clone taken when its module
    returns, so a later in-place op of the forward pass (``out += identity``, an in-place
    ReLU) cannot change it; it stays on its device (CUDA tensors go to the core, which reads
    them zero-copy).  Batches are streamed into :class:`bundlelab.BundleStream` (through
    :func:`bundlelab.adapters.measure_bundles`): memory holds one batch of every tapped layer,
    never every sample of every layer.
Data
    A tensor or array of inputs with ``labels``, a pair ``(inputs, labels)``, a
    ``torch.utils.data.Dataset`` whose items are ``(input, label)``, or a ``DataLoader``.
    Items and batches may also be dicts, the Hugging Face convention
    (``{"pixel_values": x, "labels": y}``), and so may ``data`` itself (a dict of arrays):
    ``label_key`` (default ``"labels"``) names the labels, and the rest is passed to the model
    as keywords (``model(**inputs)``), or, with ``input_key="pixel_values"``, that one value
    positionally.  Pass
    the TRAINING set: :func:`audit` and :class:`BundleHook` measure ``n_samples`` of it (2048,
    as in the paper; all if fewer), the sorted indices
    ``np.random.default_rng(seed).choice(N, n_samples, replace=False)``.  A loader is sampled
    through its ``dataset`` and ``collate_fn`` (its sampler and shuffling are bypassed); an
    iterable dataset, or a loader with ``batch_size=None``, gives its first ``n_samples``
    samples.  Numpy float inputs are cast to the model's parameter dtype.
Weight amplitude ``w``
    ``"model"`` (default, as the authors' code): max ``|w|`` over the model's trainable
    parameters (all parameters if none is trainable).  ``"layer"``: per tap, max ``|w|`` over
    the parameters of the module that produced it (recursively, so a block uses all of its
    weights); for a module without parameters (an activation), over those of the nearest
    module with parameters of its own that returned before it was called, in execution order
    (``nn.Linear`` then ``nn.ReLU``: the Linear; a ResNet block's last ReLU: its last batch
    norm); the model's amplitude when there is none.  Or a float.
Training hyperparameters
    ``learning_rate`` (α) and ``batch_size`` (|B|) as given, else
    ``optimizer.param_groups[0]["lr"]`` and ``train_loader.batch_size``, else the core's
    defaults (1e-3 and 64); ``report.params["sources"]`` says which.
Update format
    The weight update ``t = w - a·α/|B|`` is evaluated in the format of the model's trainable
    parameters (:meth:`TorchAdapter.update_format`): float32 for a float32 model, also when
    the audit runs inside ``with torch.autocast(...)`` (its activations are then float16 or
    bfloat16, its parameters float32, as in mixed-precision training); float16 after
    ``.half()``.  Pass ``update_format=`` to choose another (``"activations"``: the
    activations' own format).  ``inference_batch_size`` (default 256) is the number of samples
    per forward pass; it only bounds memory.
During training
    :class:`BundleHook` records ``H^l(t)`` into a :class:`bundlelab.BundleTracker` from a plain
    loop, t being the number of epochs completed (``hook()`` counts them; ``every=2``
    measures t = 2, 4, ...); ``BundleCallback`` is the same for Lightning (t =
    ``trainer.current_epoch + 1``, logged under step t), defined only where ``lightning`` or
    ``pytorch_lightning`` is installed (and imported on first access).
Training specs
    :func:`build_model` builds a :class:`bundlelab.spec.Spec`; :class:`TorchBackend` (the
    ``"torch"`` backend of :mod:`bundlelab.training` and :mod:`bundlelab.search`) trains it as
    a :class:`TorchTrainee`, or a super-network as a :class:`TorchSuperTrainee`.
"""

from __future__ import annotations

from typing import Any

from ..._errors import require

require("torch", purpose="the torch adapter", extra="torch")  # the install hint, here

from ._adapter import TorchAdapter  # noqa: E402
from ._audit import audit  # noqa: E402
from ._backend import TorchBackend  # noqa: E402
from ._build import build_model  # noqa: E402
from ._hook import BundleHook  # noqa: E402
from ._lightning import _lightning_callback  # noqa: E402
from ._supernet import TorchSuperTrainee  # noqa: E402
from ._tracing import ACTIVATION_TYPES, Tap, Trace, trace_model  # noqa: E402
from ._train import TorchTrainee  # noqa: E402


def __getattr__(name: str) -> Any:
    # BundleCallback exists only where Lightning does; building it imports Lightning, which is
    # slow, so it happens on first access instead of at import (MissingDependencyError
    # without Lightning).
    if name == "BundleCallback":
        callback = _lightning_callback()
        globals()[name] = callback
        return callback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATION_TYPES",
    "BundleHook",
    "Tap",
    "TorchAdapter",
    "TorchBackend",
    "TorchSuperTrainee",
    "TorchTrainee",
    "Trace",
    "audit",
    "build_model",
    "trace_model",
]
