"""PyTorch models: tap hidden layers with forward hooks and measure their bundles.

>>> from bundlelab.adapters.torch import audit
>>> report = audit(model, x_train, y_train, optimizer=opt, train_loader=loader)  # doctest: +SKIP
>>> report.first_conflicting                                                  # doctest: +SKIP

Layers (taps)
    A tap is one call of one module, named by ``named_modules()``; a module called several
    times per forward pass (a shared ``self.relu`` in a ResNet block) gives the taps ``name``,
    ``name:2``, ``name:3``, ...  A tracing forward pass on two samples lists them in execution
    order (the order in which the calls return); only calls that return one float tensor with
    the batch as its first dimension are taps.  By default the taps are the calls of
    activation modules (:data:`ACTIVATION_TYPES`), leaving out any whose output is the model's
    output: the output of each hidden layer after its non-linearity, never the logits.  A model
    without activation modules (it calls ``F.relu``) falls back to the outputs of its top-level
    children except the last one.  ``layers=`` picks any module calls instead: module names (a
    name selects every call of that module), glob patterns (``"layer*.?"``), or module types
    (``layers=[nn.ReLU]``).
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
    ``torch.utils.data.Dataset`` whose items are ``(input, label)``, or a ``DataLoader``.  Pass
    the TRAINING set: :func:`audit` and :class:`BundleHook` measure ``n_samples`` of it (2048,
    as in the paper; all if fewer), the sorted indices
    ``np.random.default_rng(seed).choice(N, n_samples, replace=False)``.  A loader is sampled
    through its ``dataset`` and ``collate_fn`` (its sampler and shuffling are bypassed); an
    iterable dataset gives its first ``n_samples`` samples.  Numpy float inputs are cast to the
    model's parameter dtype.
Weight amplitude ``w``
    ``"model"`` (default, as the authors' code): max ``|w|`` over the model's trainable
    parameters (all parameters if none is trainable).  ``"layer"``: per tap, max ``|w|`` over
    the parameters of the module that produced it (recursively, so a block uses all of its
    weights); for a module without parameters (an activation), over those of the nearest
    module with parameters of its own that returned before it was called, in execution order
    (``nn.Linear`` then ``nn.ReLU``: the Linear; a ResNet block's last ReLU: its last batch
    norm); the model's amplitude when there is none.  Or a float.
Training hyperparameters
    ``learning_rate`` and ``train_batch_size`` as given, else ``optimizer.param_groups[0]["lr"]``
    and ``train_loader.batch_size``, else the core's defaults (1e-3 and 64).
During training
    :class:`BundleHook` records ``H^l(t)`` into a :class:`bundlelab.BundleTracker` from a plain
    loop; ``BundleCallback`` is the same for Lightning, defined only where ``lightning`` or
    ``pytorch_lightning`` is installed (and imported on first access).
"""

from __future__ import annotations

from typing import Any

from ..._errors import BundleLabError

try:
    import torch  # noqa: F401 - fail here with an install hint, not deep in a submodule
except ImportError:  # pragma: no cover - depends on the environment
    raise BundleLabError(
        "the torch adapter requires PyTorch. You can install it with "
        "`pip install 'bundlelab[torch]'` (pins torch==2.13.0)"
    ) from None
from ._adapter import TorchAdapter
from ._audit import audit
from ._build import build_model
from ._hook import BundleHook
from ._lightning import _lightning_callback
from ._tracing import ACTIVATION_TYPES, Tap, Trace, trace_model
from ._train import TorchBackend, TorchTrainee


def __getattr__(name: str) -> Any:
    # BundleCallback exists only where Lightning does; building it imports Lightning, which is
    # slow, so it happens on first access instead of at import.
    if name == "BundleCallback":
        callback = _lightning_callback()
        globals()[name] = callback
        return callback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ACTIVATION_TYPES", "BundleHook", "Tap", "Trace", "TorchAdapter", "audit", "trace_model"]
__all__ += ["TorchBackend", "TorchTrainee", "build_model"]
from ._supernet import TorchSuperTrainee  # noqa: E402
__all__ += ["TorchSuperTrainee"]
