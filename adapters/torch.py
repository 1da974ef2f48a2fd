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

import contextlib
import difflib
import fnmatch
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .._errors import BundleLabError

try:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate
except ImportError:  # pragma: no cover - depends on the environment
    raise BundleLabError(
        "the torch adapter requires PyTorch. You can install it with `pip install torch`"
    ) from None
from .._validation import check_positive_float, check_positive_int
from ..bundles import BundleOptions
from ..report import BundleReport
from ..tracker import BundleTracker
from . import measure_bundles, select_layers

#: module types whose calls are the default taps
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.GLU,
    nn.Hardshrink, nn.Softshrink,
)

_DEFAULTS = BundleOptions()
_TRACE_SAMPLES = 2


# -- layers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tap:
    """One call of one module whose output is a float tensor."""

    name: str  # "layer1.0.relu:2"
    module: str  # "layer1.0.relu"
    kind: type  # the module's class
    shape: tuple[int, ...]  # output shape per sample
    is_output: bool  # the output shares storage with the model's output (the logits)
    source: str | None  # module whose parameters give the per-layer amplitude


@dataclass
class Trace:
    """Every tappable module call of one forward pass, in execution order."""

    taps: list[Tap]
    untappable: dict[str, str]  # module name -> what it outputs instead of a float tensor

    @property
    def names(self) -> list[str]:
        return [tap.name for tap in self.taps]

    def default(self) -> list[Tap]:
        """Activation calls; else the top-level children but the last; never the output."""
        hidden = [t for t in self.taps if not t.is_output]
        taps = [t for t in hidden if issubclass(t.kind, ACTIVATION_TYPES)]
        if not taps:
            children = [t for t in self.taps if "." not in t.module]
            taps = [t for t in children[:-1] if not t.is_output]
        if not taps:
            raise BundleLabError(
                "the model has no tappable layer: no activation module (nn.ReLU, nn.GELU, ...) "
                "and no top-level child before its output layer; pass layers=[...] to name the "
                "modules to tap"
            )
        return taps

    def select(self, layers: Any) -> list[Tap]:
        """Taps matching names, glob patterns or module types, in execution order."""
        if layers is None:
            return self.default()
        items = [layers] if isinstance(layers, (str, type)) else list(layers)
        chosen: set[str] = set()
        for item in items:
            if isinstance(item, type) and issubclass(item, nn.Module):
                hits = [t.name for t in self.taps if issubclass(t.kind, item)]
                if not hits:
                    kinds = ", ".join(sorted({t.kind.__name__ for t in self.taps}))
                    raise BundleLabError(
                        f"no layer of type {item.__name__} in the model; its layers are of "
                        f"types {kinds}"
                    )
            elif isinstance(item, str):
                # an existing name is taken literally (a module name: all of its calls), even
                # when it holds glob characters, as select_layers does
                hits = [t.name for t in self.taps if item in (t.name, t.module)] or [
                    t.name for t in self.taps
                    if fnmatch.fnmatchcase(t.name, item) or fnmatch.fnmatchcase(t.module, item)
                ]
                if not hits and item in self.untappable:
                    raise BundleLabError(
                        f"module {item!r} outputs {self.untappable[item]}; a layer must output "
                        "one float tensor of shape (batch, ...)"
                    )
                if not hits:
                    select_layers(self.names, [item])  # one-line error naming close matches
            else:
                raise BundleLabError(
                    "The 'layers' parameter must hold module names, glob patterns or module "
                    f"types. Got {item!r} instead."
                )
            chosen.update(hits)
        return [t for t in self.taps if t.name in chosen]


def trace_model(model: nn.Module, inputs: Any, *, device: Any = None) -> Trace:
    """Run ``model`` on two samples of ``inputs`` and list its tappable module calls.

    Inputs that do not fit the model give a one-line :class:`BundleLabError` naming the module
    that rejected them, what it expects and what it got.
    """
    _check_model(model)
    data = _as_data(inputs, model)
    x = _to_device(data.head(_TRACE_SAMPLES), _device(model, device))
    names = {module: name for name, module in model.named_modules() if name}
    own_params = {m for m in names if next(m.parameters(recurse=False), None) is not None}
    any_params = {m for m in names if next(m.parameters(), None) is not None}
    calls: dict[nn.Module, int] = {}
    running: list[tuple[nn.Module, str | None, tuple]] = []  # (module, last parametrised, shapes)
    last_parametrised: list[str | None] = [None]
    returned: list[tuple[str, int, nn.Module, Any, str | None]] = []

    def before(module, args):
        running.append((module, last_parametrised[0], _shapes(args)))

    def after(module, args, output):
        _, previous, _ = running.pop()
        calls[module] = call = calls.get(module, 0) + 1
        source = names[module] if module in any_params else previous
        returned.append((names[module], call, module, output, source))
        if module in own_params:
            last_parametrised[0] = names[module]

    with _hooks(names, before, after), _inference(model):
        try:
            result = _call(model, x)
        except (BundleLabError, torch.OutOfMemoryError):
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # the first forward pass: a failure here is almost always inputs of the wrong shape
            # or dtype; the user gets one line naming the module that rejected them
            raise _misfit(model, names, data, running, exc) from None

    outputs = {_storage(t) for t in _tensors(result)}
    n_traced = _tensors(x)[0].shape[0] if _tensors(x) else None
    taps, untappable = [], {}
    for name, call, module, output, source in returned:
        if not (isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim):
            untappable.setdefault(name, _describe(output))
            continue
        if n_traced is not None and output.shape[0] != n_traced:  # e.g. (seq, batch, ...)
            why = f"{_describe(output)} for {n_traced} samples (batch not first)"
            untappable.setdefault(name, why)
            continue
        taps.append(Tap(
            name=name if call == 1 else f"{name}:{call}",
            module=name,
            kind=type(module),
            shape=tuple(output.shape[1:]),
            is_output=_storage(output) in outputs,
            source=source,
        ))
    return Trace(taps, untappable)


class TorchAdapter:
    """The :class:`bundlelab.adapters.ActivationAdapter` for ``torch.nn.Module`` models.

    Parameters
    ----------
    layers : list of str or nn.Module types, optional
        Module names, glob patterns or module types to tap; default: every activation call.
    device : torch.device or str, optional
        Where the inputs are sent; default: the device of the model's parameters.

    Examples
    --------
    >>> from bundlelab.adapters import get_adapter, measure_bundles
    >>> report = measure_bundles(get_adapter("torch"), model, x, labels)  # doctest: +SKIP
    """

    name = "torch"

    def __init__(self, *, layers: Any = None, device: Any = None):
        self.layers = layers
        self.device = device

    def trace(self, model: nn.Module, inputs: Any) -> Trace:
        """The tracing pass (see :func:`trace_model`)."""
        return trace_model(model, inputs, device=self.device)

    def layer_names(self, model: nn.Module, inputs: Any = None) -> list[str]:
        """Names of the selected taps, in execution order (a tracing pass on ``inputs``)."""
        if inputs is None:
            raise BundleLabError(
                "the torch adapter finds a model's layers by running it: pass inputs (two "
                "samples are enough)"
            )
        return [tap.name for tap in self.trace(model, inputs).select(self.layers)]

    def iter_layer_outputs(
        self, model: nn.Module, inputs: Any, *, layers: Sequence[str], batch_size: int
    ) -> Iterator[dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], np.ndarray]]:
        """Per batch, the tapped outputs (and the batch's labels when the data carries them).

        A ``DataLoader`` is iterated as it is (``batch_size`` does not apply to it).
        """
        _check_model(model)
        data = _as_data(inputs, model)
        device = _device(model, self.device)
        plan = _plan(model, layers)
        for x, y in data.batches(check_positive_int("batch_size", batch_size)):
            outputs = _tap_outputs(model, _to_device(x, device), plan)
            missing = [name for name in layers if name not in outputs]
            if missing:
                raise BundleLabError(
                    f"layer {missing[0]!r} was not called on a batch although the tracing pass "
                    "called it (input-dependent control flow); choose layers=[...] every "
                    "batch reaches"
                )
            outputs = {name: outputs[name] for name in layers}
            yield outputs if y is None else (outputs, y)

    def weight_amplitude(self, model: nn.Module) -> float:
        """``w``: max ``|w|`` over the model's trainable parameters (all if none is trainable)."""
        _check_model(model)
        return _amplitude(model.parameters(), "the model")

    def layer_weight_amplitudes(self, model: nn.Module, taps: Sequence[Tap]) -> dict[str, float]:
        """Per-layer ``w`` of each tap (see the module docstring)."""
        modules = dict(model.named_modules())
        model_w = None
        amplitudes = {}
        for tap in taps:
            if tap.source is None:
                model_w = self.weight_amplitude(model) if model_w is None else model_w
                amplitudes[tap.name] = model_w
            else:
                parameters = modules[tap.source].parameters()
                amplitudes[tap.name] = _amplitude(parameters, repr(tap.source))
        return amplitudes


# -- audit -------------------------------------------------------------------------------------


def audit(
    model: nn.Module,
    data: Any,
    labels: Any = None,
    *,
    layers: Any = None,
    n_samples: int | None = 2048,
    seed: int = 0,
    optimizer: Any = None,
    train_loader: Any = None,
    learning_rate: float | None = None,
    train_batch_size: int | None = None,
    weight_amplitude: str | float = "model",
    mode: str = "resolution",
    batch_size: int = 256,
    device: Any = None,
    progress: bool = False,
    **options,
) -> BundleReport:
    """Conflicting bundles of a PyTorch model's hidden layers on a subset of its training set.

    Parameters
    ----------
    model : torch.nn.Module
        Left as it was: eval mode and no gradients during the measurement, each module's
        training flag restored afterwards.
    data : tensor, array, (inputs, labels), Dataset or DataLoader
        The TRAINING set (see the module docstring).
    labels : array-like of shape (n_samples,), optional
        Labels for a tensor or array ``data``; datasets and loaders carry their own.
    layers : list of str or nn.Module types, optional
        Module names (every call of the module), glob patterns, or module types; default: the
        output of every activation module call, in execution order, never the logits.
    n_samples : int or None, default=2048
        Training samples measured (chosen with ``seed``); None or more than there are: all.
    seed : int, default=0
    optimizer : torch.optim.Optimizer, optional
        The training optimizer; its ``param_groups[0]["lr"]`` is the learning rate α.
    train_loader : DataLoader, optional
        The training loader; its ``batch_size`` is |B|.
    learning_rate, train_batch_size : optional
        α and |B| given directly (they win over ``optimizer`` and ``train_loader``); default
        1e-3 and 64.
    weight_amplitude : 'model', 'layer' or float, default='model'
        ``w`` (see the module docstring).  With 'layer', ``report.params`` holds
        ``weight_amplitude='layer'`` and ``layer_weight_amplitudes`` (name -> w), as the Keras
        adapter writes them.
    mode : {'resolution', 'threshold'}, default='resolution'
    batch_size : int, default=256
        Samples per forward pass; it only bounds memory.
    device : torch.device or str, optional
        Where the inputs are sent; default: the device of the model's parameters.
    progress : bool, default=False
        Show a progress bar over batches.
    **options
        gamma, epsilon, nonfinite: see :func:`bundlelab.find_bundles`.

    Returns
    -------
    bundlelab.BundleReport
    """
    _check_model(model)
    subset = _training_subset(data, labels, n_samples=n_samples, seed=seed, model=model)
    return _measure(
        model, subset, layers=layers, optimizer=optimizer, train_loader=train_loader,
        learning_rate=learning_rate, train_batch_size=train_batch_size,
        weight_amplitude=weight_amplitude, mode=mode, batch_size=batch_size, device=device,
        progress=progress, options=options,
    )


def _measure(
    model, subset, *, layers, optimizer, train_loader, learning_rate, train_batch_size,
    weight_amplitude, mode, batch_size, device, progress, options,
) -> BundleReport:
    _check_options(options, _CORE_OPTIONS, "audit")
    learning_rate, train_batch_size = _training_hyperparameters(
        optimizer, train_loader, learning_rate, train_batch_size
    )
    batch_size = check_positive_int("batch_size", batch_size)
    adapter = TorchAdapter(layers=layers, device=device)
    options = dict(options, mode=mode, learning_rate=learning_rate)
    if weight_amplitude == "layer":
        taps = adapter.trace(model, subset).select(layers)
        w = adapter.layer_weight_amplitudes(model, taps)
    elif weight_amplitude == "model":
        w = adapter.weight_amplitude(model)
    elif isinstance(weight_amplitude, str):
        raise BundleLabError(
            "The 'weight_amplitude' parameter must be 'model', 'layer' or a float in [0, inf). "
            f"Got {weight_amplitude!r} instead."
        )
    else:
        w = check_positive_float("weight_amplitude", weight_amplitude, allow_zero=True)
    return measure_bundles(
        adapter, model, subset, batch_size=batch_size, train_batch_size=train_batch_size,
        weight_amplitude=w, progress=progress, **options,
    )


#: keywords passed on to the core (see :func:`bundlelab.find_bundles`)
_CORE_OPTIONS = frozenset({"gamma", "epsilon", "nonfinite"})


def _check_options(options: dict, allowed: frozenset, where: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BundleLabError(
            f"{where}() got unexpected keyword(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(sorted(allowed))}"
        )


def _training_hyperparameters(optimizer, train_loader, learning_rate, train_batch_size):
    """α and |B|: given, else read from the optimizer and the loader, else the defaults."""
    if learning_rate is None and optimizer is not None:
        groups = getattr(optimizer, "param_groups", None)
        if not groups or "lr" not in groups[0]:
            raise BundleLabError(
                f"cannot read the learning rate of {type(optimizer).__name__} (no "
                "param_groups[0]['lr']); pass learning_rate=..."
            )
        learning_rate = float(groups[0]["lr"])
    if train_batch_size is None and train_loader is not None:
        train_batch_size = getattr(train_loader, "batch_size", None)
        if train_batch_size is None:
            sampler = getattr(train_loader, "batch_sampler", None)
            train_batch_size = getattr(sampler, "batch_size", None)
        if train_batch_size is None:
            raise BundleLabError(
                f"cannot read the training batch size of {type(train_loader).__name__} (no "
                "batch_size, e.g. a custom batch_sampler); pass train_batch_size=..."
            )
    learning_rate = _DEFAULTS.learning_rate if learning_rate is None else learning_rate
    train_batch_size = _DEFAULTS.batch_size if train_batch_size is None else train_batch_size
    return (
        check_positive_float("learning_rate", learning_rate),
        check_positive_int("train_batch_size", train_batch_size),
    )


# -- training hook -----------------------------------------------------------------------------


class BundleHook:
    """Record ``H^l(t)`` and the number of bundles per layer during a plain PyTorch loop.

    Call it once per epoch (``hook(epoch)``) or per optimisation step
    (``hook.step(global_step)``); it measures when the step is a multiple of ``every``, always
    on the same training samples (chosen once, at construction).  The learning rate is read
    from ``optimizer`` at every measurement, so schedules are followed.

    Parameters
    ----------
    model, data, labels
        As for :func:`audit`; the samples are drawn once, here.
    every : int, default=1
        Measure at steps 0, every, 2 * every, ...
    layers, n_samples, seed, optimizer, train_loader, learning_rate, train_batch_size,
    weight_amplitude, mode, batch_size, device
        As for :func:`audit`.
    tensorboard : SummaryWriter or path, optional
        Also write the scalars ``{tag}/entropy/{layer}`` and ``{tag}/n_bundles/{layer}``
        (``:`` in a layer name becomes ``_``): to a writer (any object with ``add_scalar``),
        or to a new ``torch.utils.tensorboard.SummaryWriter`` on this log directory (needs
        tensorboard).
    tag : str, default='bundles'
    **options
        gamma, epsilon, nonfinite: see :func:`bundlelab.find_bundles`.

    Attributes
    ----------
    tracker : bundlelab.BundleTracker
        The history: ``time_averaged()`` is the paper's ``H^l``; ``to_json``/``to_csv`` export.

    Examples
    --------
    >>> hook = BundleHook(model, x, y, optimizer=opt, train_loader=loader)  # doctest: +SKIP
    >>> for epoch in range(epochs):                                      # doctest: +SKIP
    ...     train_one_epoch(model, loader, opt)
    ...     hook(epoch)
    >>> hook.tracker.time_averaged()                                     # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        labels: Any = None,
        *,
        every: int = 1,
        layers: Any = None,
        n_samples: int | None = 2048,
        seed: int = 0,
        optimizer: Any = None,
        train_loader: Any = None,
        learning_rate: float | None = None,
        train_batch_size: int | None = None,
        weight_amplitude: str | float = "model",
        mode: str = "resolution",
        batch_size: int = 256,
        device: Any = None,
        tensorboard: Any = None,
        tag: str = "bundles",
        **options,
    ):
        _check_model(model)
        _check_options(options, _CORE_OPTIONS, "BundleHook")
        BundleOptions(mode=mode, **options)  # bad options fail here, not epochs later
        self.model = model
        self.every = check_positive_int("every", every)
        self.tag = str(tag)
        self._measure_options = dict(
            layers=layers, optimizer=optimizer, train_loader=train_loader,
            learning_rate=learning_rate, train_batch_size=train_batch_size,
            weight_amplitude=weight_amplitude, mode=mode,
            batch_size=check_positive_int("batch_size", batch_size), device=device,
            progress=False, options=options,
        )
        self._subset = _training_subset(data, labels, n_samples=n_samples, seed=seed, model=model)
        self.tracker = BundleTracker()
        self._writer, self._owns_writer = _summary_writer(tensorboard)

    def __call__(self, epoch: int) -> BundleReport | None:
        """Measure at the end of ``epoch`` when it is a multiple of ``every``."""
        return self.step(epoch)

    def step(self, global_step: int) -> BundleReport | None:
        """Measure at ``global_step`` when it is a multiple of ``every``; the report or None."""
        if int(global_step) % self.every:
            return None
        return self.record(global_step)

    def record(self, step: int) -> BundleReport:
        """Measure now and record the report under ``step``."""
        report = _measure(self.model, self._subset, **self._measure_options)
        self.tracker.record(int(step), report)
        if self._writer is not None:
            for tag, value in _scalars(report, self.tag).items():
                self._writer.add_scalar(tag, value, int(step))
            if hasattr(self._writer, "flush"):
                self._writer.flush()
        return report

    def close(self) -> None:
        """Close the TensorBoard writer this hook opened (not one it was given)."""
        if self._owns_writer and self._writer is not None:
            self._writer.close()
            self._writer = None


def _scalars(report: BundleReport, tag: str) -> dict[str, float]:
    """TensorBoard/logger scalars of one step (``:`` is not allowed in a tag)."""
    scalars = {}
    for result in report:
        layer = result.layer.replace(":", "_")
        scalars[f"{tag}/entropy/{layer}"] = result.entropy
        scalars[f"{tag}/n_bundles/{layer}"] = result.n_bundles
    return scalars


def _summary_writer(tensorboard: Any) -> tuple[Any, bool]:
    """(writer, whether this module opened it)."""
    if tensorboard is None:
        return None, False
    if hasattr(tensorboard, "add_scalar"):
        return tensorboard, False
    if not isinstance(tensorboard, (str, os.PathLike)):
        raise BundleLabError(
            "The 'tensorboard' parameter must be a SummaryWriter or a log directory. "
            f"Got {type(tensorboard).__name__} instead."
        )
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise BundleLabError(
            "BundleHook(tensorboard=...) requires tensorboard. You can install it with "
            "`pip install tensorboard`"
        ) from None
    return SummaryWriter(log_dir=os.fspath(tensorboard)), True


def __getattr__(name: str) -> Any:
    # BundleCallback exists only where Lightning does; building it imports Lightning, which is
    # slow, so it happens on first access instead of at import.
    if name == "BundleCallback":
        callback = _lightning_callback()
        globals()[name] = callback
        return callback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lightning_callback() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise AttributeError(
                "BundleCallback requires Lightning. You can install it with `pip install lightning`"
            ) from None

    class BundleCallback(Callback):
        """Lightning callback: a :class:`BundleHook` run at the end of training epochs.

        The hook is built on the LightningModule at the first epoch end; unless given, the
        learning rate comes from the trainer's first optimizer and |B| from its train
        dataloader (pass ``train_batch_size=`` when that loader has no ``batch_size``).  Only
        the global-zero process measures; the scalars also go to ``trainer.logger``.
        """

        def __init__(self, data: Any, labels: Any = None, *, every: int = 1, **hook_options):
            super().__init__()
            self.data, self.labels = data, labels
            self.every = check_positive_int("every", every)
            self.hook_options = hook_options
            self.hook: BundleHook | None = None

        @property
        def tracker(self) -> BundleTracker | None:
            return self.hook.tracker if self.hook is not None else None

        def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
            if not getattr(trainer, "is_global_zero", True):
                return
            if self.hook is None:
                options = dict(self.hook_options)
                optimizers = getattr(trainer, "optimizers", None) or [None]
                options.setdefault("optimizer", optimizers[0])
                loader = getattr(trainer, "train_dataloader", None)
                if getattr(loader, "batch_size", None) is not None:
                    options.setdefault("train_loader", loader)
                self.hook = BundleHook(
                    pl_module, self.data, self.labels, every=self.every, **options
                )
            report = self.hook(trainer.current_epoch)
            logger = getattr(trainer, "logger", None)
            if report is not None and logger is not None:
                logger.log_metrics(_scalars(report, self.hook.tag), step=trainer.global_step)

    BundleCallback.__module__ = __name__
    return BundleCallback


# -- data --------------------------------------------------------------------------------------


@dataclass
class _TensorData:
    """Inputs in one tensor, labels (or None) in one array."""

    x: torch.Tensor
    y: np.ndarray | None

    def head(self, k: int) -> torch.Tensor:
        return self.x[:k]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
        for start in range(0, self.x.shape[0], batch_size):
            end = start + batch_size
            yield self.x[start:end], None if self.y is None else self.y[start:end]


@dataclass
class _ItemData:
    """A dataset of (input, label) items, batched by ``collate_fn``."""

    dataset: Any
    collate_fn: Callable = default_collate

    def head(self, k: int) -> Any:
        return _split(_first_batch(self._loader(k)))[0]

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        for batch in self._loader(batch_size):
            yield _split(batch)

    def _loader(self, batch_size: int) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn
        )


@dataclass
class _BatchData:
    """Ready-made (input, label) batches: a DataLoader or a list of batches."""

    batches_: Any

    def head(self, k: int) -> Any:
        return _slice(_split(_first_batch(self.batches_))[0], k)

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        for batch in self.batches_:
            yield _split(batch)


_DATA_TYPES = (_TensorData, _ItemData, _BatchData)


def _first_batch(batches: Any) -> Any:
    for batch in batches:
        return batch
    raise BundleLabError("the data yielded no samples")


def _as_data(inputs: Any, model: nn.Module) -> Any:
    if isinstance(inputs, _DATA_TYPES):
        return inputs
    if isinstance(inputs, DataLoader):
        return _BatchData(inputs)
    if isinstance(inputs, Dataset):
        return _ItemData(inputs)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
        x = _as_tensor(inputs[0], model)
        return _TensorData(x, _as_labels(inputs[1], x.shape[0]))
    return _TensorData(_as_tensor(inputs, model), None)


def _training_subset(data, labels, *, n_samples, seed, model) -> Any:
    """The measured training samples: ``n_samples`` of ``data`` chosen with ``seed``."""
    if n_samples is not None:
        n_samples = check_positive_int("n_samples", n_samples)
    if isinstance(data, DataLoader) or isinstance(data, Dataset):
        if labels is not None:
            raise BundleLabError(
                "labels were given with a dataset or loader, whose items already carry "
                "them; drop labels=..."
            )
        dataset = data.dataset if isinstance(data, DataLoader) else data
        collate_fn = data.collate_fn if isinstance(data, DataLoader) else default_collate
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            source = data if isinstance(data, DataLoader) else _ItemData(dataset).batches(256)
            return _BatchData(_first_samples(source, n_samples))
        index = _sample_index(len(dataset), n_samples, seed)
        return _ItemData(Subset(dataset, index.tolist()), collate_fn)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        if labels is not None:
            raise BundleLabError(
                "labels were given twice: pass data=(inputs, labels) or labels=..."
            )
        data, labels = data
    if labels is None:
        raise BundleLabError(
            "no labels: pass labels=... with an input tensor, or data as (inputs, labels), a "
            "Dataset or a DataLoader"
        )
    x = _as_tensor(data, model)
    y = _as_labels(labels, x.shape[0])
    index = _sample_index(x.shape[0], n_samples, seed)
    if index.shape[0] == x.shape[0]:
        return _TensorData(x, y)
    return _TensorData(x[torch.from_numpy(index).to(x.device)], y[index])


def _sample_index(n: int, n_samples: int | None, seed: int) -> np.ndarray:
    if n == 0:
        raise BundleLabError("the data holds no samples")
    if n_samples is None or n_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, n_samples, replace=False))


def _first_samples(batches: Any, n_samples: int | None) -> list[tuple[Any, np.ndarray]]:
    kept, seen = [], 0
    for batch in batches:
        x, y = _split(batch)
        take = y.shape[0] if n_samples is None else min(y.shape[0], n_samples - seen)
        kept.append((_slice(x, take), y[:take]))
        seen += take
        if n_samples is not None and seen >= n_samples:
            break
    if not seen:
        raise BundleLabError("the data yielded no samples")
    return kept


def _split(batch: Any) -> tuple[Any, np.ndarray]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        size = f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise BundleLabError(
            "expected (inputs, labels) pairs from the dataset or loader, got a "
            f"{type(batch).__name__}{size}"
        )
    x, y = batch
    return x, _as_labels(y, None)


def _as_labels(labels: Any, n: int | None) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels)
    if n is not None and (labels.ndim == 0 or labels.shape[0] != n):
        got = 1 if labels.ndim == 0 else labels.shape[0]
        raise BundleLabError(
            f"got {got} labels for {n} samples: pass one label per sample, in the order of the "
            "inputs"
        )
    return labels


def _as_tensor(x: Any, model: nn.Module) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.ndim:
        return x
    if isinstance(x, np.ndarray) and x.ndim:
        tensor = torch.from_numpy(np.ascontiguousarray(x))
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        return tensor.to(dtype) if tensor.is_floating_point() and dtype is not None else tensor
    raise BundleLabError(
        f"cannot feed a {type(x).__name__} to the model: pass a tensor or array of inputs of "
        "shape (n_samples, ...) with labels, (inputs, labels), a Dataset or a DataLoader"
    )


def _slice(x: Any, k: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:k]
    if isinstance(x, dict):
        return {key: _slice(value, k) for key, value in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(value, k) for value in x)
    return x


# -- forward passes ----------------------------------------------------------------------------


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise BundleLabError(f"expected a torch.nn.Module, got {type(model).__name__}")


def _device(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError):
            raise BundleLabError(
                f"The 'device' parameter must be a torch device such as 'cpu' or 'cuda:0'. "
                f"Got {device!r} instead."
            ) from None
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {key: _to_device(value, device) for key, value in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(value, device) for value in x)
    return x


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


@contextlib.contextmanager
def _inference(model: nn.Module):
    """Eval mode and no gradients for one forward pass; every module's own flag restored."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def _hooks(modules: dict, before: Callable | None, after: Callable):
    handles = []
    try:
        for module in modules:
            if before is not None:
                handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _plan(model: nn.Module, layers: Sequence[str]) -> dict[nn.Module, tuple[str, dict[int, str]]]:
    """module -> (its name, {call number: tap name}) for the hooks of a measuring pass."""
    modules = dict(model.named_modules())
    plan: dict[nn.Module, tuple[str, dict[int, str]]] = {}
    for tap in layers:
        name, call = tap, 1
        if tap not in modules:
            prefix, _, suffix = tap.rpartition(":")
            if not (suffix.isdigit() and prefix in modules):
                close = difflib.get_close_matches(tap, [n for n in modules if n], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise BundleLabError(f"the model has no module call named {tap!r}{hint}")
            name, call = prefix, int(suffix)
        plan.setdefault(modules[name], (name, {}))[1][call] = tap
    return plan


def _tap_outputs(model: nn.Module, x: Any, plan: dict) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[nn.Module, int] = {}

    def after(module, args, output):
        calls[module] = call = calls.get(module, 0) + 1
        tap = plan[module][1].get(call)
        if tap is None:
            return
        if not isinstance(output, torch.Tensor):
            raise BundleLabError(f"layer {tap!r} outputs {_describe(output)}, not a tensor")
        # a clone: later in-place ops of the forward pass must not change what we measure
        outputs[tap] = output.detach().clone(memory_format=torch.contiguous_format)

    with _hooks(plan, None, after), _inference(model):
        _call(model, x)
    return outputs


def _misfit(model, names, data, running, exc) -> BundleLabError:
    """One line for inputs that the model rejects on the tracing pass."""
    given = ", ".join(str(shape[1:]) for shape in _shapes(data.head(_TRACE_SAMPLES))) or "?"
    per_sample = f"inputs with samples of shape {given}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if running:
        module, _, shapes = running[-1]
        expected = _expected_input(module)
        got = shapes[0] if len(shapes) == 1 else ", ".join(map(str, shapes))
        want = f"expects {expected}, " if expected else ""
        return BundleLabError(
            f"{per_sample} do not fit the model: layer {names[module]!r} "
            f"({type(module).__name__}) {want}got {got} ({reason})"
        )
    return BundleLabError(f"{per_sample} do not fit the model: {reason}")


def _expected_input(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return f"(..., {module.in_features})"
    spatial = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}
    for kind, dims in spatial.items():
        if isinstance(module, kind):
            return f"(batch, {module.in_channels}, {dims})"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return f"(batch, {module.num_features}, ...)"
    if isinstance(module, nn.LayerNorm):
        return "(..., " + ", ".join(map(str, module.normalized_shape)) + ")"
    if isinstance(module, nn.Embedding):
        return f"integer indices below {module.num_embeddings}"
    if isinstance(module, nn.RNNBase):
        return f"(..., {module.input_size})"
    return None


def _shapes(value: Any) -> tuple:
    return tuple(tuple(t.shape) for t in _tensors(value))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _storage(tensor: torch.Tensor) -> tuple[int, str]:
    return tensor.untyped_storage().data_ptr(), str(tensor.device)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _amplitude(parameters: Any, owner: str) -> float:
    """max |w| over the trainable parameters (all of them if none is trainable); 0 if none."""
    parameters = [p for p in parameters if p.is_floating_point() and p.numel()]
    chosen = [p for p in parameters if p.requires_grad] or parameters
    if not chosen:
        return 0.0
    value = max(float(p.detach().abs().max()) for p in chosen)
    if not math.isfinite(value):
        raise BundleLabError(
            f"{owner} has NaN or Inf weights (did training diverge?), so w is undefined; pass "
            "weight_amplitude=<float>"
        )
    return value


__all__ = ["ACTIVATION_TYPES", "BundleHook", "Tap", "Trace", "TorchAdapter", "audit", "trace_model"]
