"""Keras 3 training backend: a spec built by :func:`~bundlelab.adapters.keras_build.build_model`,
trained one batch at a time (the :class:`bundlelab.training` protocol).

The optimizers follow the paper and the PyTorch backend: ``"ranger"`` is :class:`RAdam`
(epsilon 1e-6, decoupled weight decay) inside :class:`Lookahead` (k=6, alpha=0.5), ``"adam"``
is Keras' AdamW, ``"sgd"`` is :class:`L2SGD` (momentum 0.9, L2 weight decay as in
``torch.optim.SGD``).  Keras 3 has neither RAdam nor Lookahead, hence the two small classes here.

Checkpoints are Keras' own ``.weights.h5`` files (``model.load_weights`` reads them) with the
spec and the optimizer's name stored as HDF5 attributes, so that a checkpoint of another
architecture is refused before any weight is touched.

Written for and tested on the torch backend; the optimizers use ``keras.ops`` only, but
:class:`Lookahead` has no ``stateless_apply``, so ``"ranger"`` does not train on JAX, and
:class:`RAdam` computes its per-step scalars in float64 (which Apple's MPS lacks).
``config.device`` is honoured with :func:`keras.device` around every call (``"auto"``: Keras'
own choice, the GPU when there is one).  The same config and batches train bit for bit alike on
the CPU; on a GPU, cuDNN's convolution kernels are not deterministic by default, so runs agree
to rounding only (torch's global determinism switches are left to the caller).

>>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")          # doctest: +SKIP
>>> from bundlelab.training import TrainConfig                          # doctest: +SKIP
>>> from bundlelab.adapters.keras_train import KerasBackend             # doctest: +SKIP
>>> trainee = KerasBackend().build(spec, TrainConfig(optimizer="ranger"))  # doctest: +SKIP
>>> trainee.train_epoch([(x_batch, y_batch)])                           # doctest: +SKIP
{'loss': 2.31, 'accuracy': 0.09}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._errors import BundleLabError
from ._keras_import import import_keras

keras = import_keras("training a spec in Keras")
from keras import ops

from ..report import BundleReport
from ..spec import dumps, loads, measured_layers
from .keras import _inference_context, audit
from .keras_build import build_model

#: Keras refuses other suffixes in ``save_weights`` / ``load_weights``
CHECKPOINT_SUFFIX = ".weights.h5"
RANGER_EPSILON = 1e-6
LOOKAHEAD_K = 6
LOOKAHEAD_ALPHA = 0.5
SGD_MOMENTUM = 0.9
TIMED_RUNS = 5
# HDF5 attributes of a checkpoint
_SPEC_ATTRIBUTE = "bundlelab_spec"
_OPTIMIZER_ATTRIBUTE = "bundlelab_optimizer"  # "" when the optimizer state was not saved


# -- optimizers --------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="bundlelab")
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam (Liu et al., 2019), step for step as ``torch.optim.RAdam``.

    While the variance of the adaptive rate is intractable (``rho_t <= 5``, the first 5 steps
    with ``beta_2 = 0.999``) the step is momentum SGD with the bias-corrected first moment;
    afterwards it is Adam's step times the rectification term ``r_t``.  ``weight_decay`` is
    Keras' (decoupled: ``w -= learning_rate * weight_decay * w`` before the step), which is
    ``torch.optim.RAdam(decoupled_weight_decay=True)``.

    Parameters
    ----------
    learning_rate : float, default=1e-3
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8
        Added to ``sqrt(v)`` before the bias correction, as torch does.
    **kwargs
        Keras' optimizer keywords (``weight_decay``, ``name``, ...).
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._m = self.add_optimizer_variables(variables, "m")
        self._v = self.add_optimizer_variables(variables, "v")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._m[index], self._v[index]
        gradient = ops.cast(gradient, dtype)

        def constant(value, dtype=dtype):
            # from the Python float: Keras would turn a bare 0.999 into float32 first, and
            # 1 - float32(0.999) is 1.3e-5 off 0.001
            return ops.convert_to_tensor(value, dtype)

        self.assign(m, ops.add(m, ops.multiply(constant(1 - self.beta_1),
                                               ops.subtract(gradient, m))))
        self.assign(v, ops.add(ops.multiply(constant(self.beta_2), v),
                               ops.multiply(constant(1 - self.beta_2), ops.square(gradient))))
        # The step's scalars in float64, as torch computes them: rho_t is a difference of two
        # numbers near 2 / (1 - beta_2) = 1999, which float32 knows only to ~1e-4.
        t = ops.cast(self.iterations + 1, "float64")
        beta_2_t = ops.power(constant(self.beta_2, "float64"), t)
        correction1 = 1 - ops.power(constant(self.beta_1, "float64"), t)
        correction2 = 1 - beta_2_t
        rho_inf = 2 / (1 - self.beta_2) - 1
        rho_t = rho_inf - 2 * t * beta_2_t / correction2
        rectification = ops.sqrt(ops.maximum(  # used only where rho_t > 5; no NaN elsewhere
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t), 0.0
        ))
        step = ops.multiply(ops.divide(m, ops.cast(correction1, dtype)),
                            ops.cast(learning_rate, dtype))
        adaptive = ops.divide(ops.cast(ops.sqrt(correction2), dtype),
                              ops.add(ops.sqrt(v), constant(self.epsilon)))
        rectified = ops.multiply(ops.multiply(step, adaptive), ops.cast(rectification, dtype))
        # rho_t <= 5 (the first 5 steps with beta_2 = 0.999): the adaptive rate's variance is
        # intractable, so the step is momentum SGD
        self.assign_sub(variable, ops.where(ops.greater(rho_t, 5.0), rectified, step))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="bundlelab")
class Lookahead(keras.optimizers.Optimizer):
    """Lookahead (Zhang et al., 2019) around another optimizer.

    The wrapped optimizer updates the *fast* weights every step; every ``k``-th of its steps
    the *slow* weights move ``slow += alpha * (fast - slow)`` and the fast weights restart from
    them.  The slow weights start at the weights of the first step (or of :meth:`build`).
    Its variables (saved with the model) are its own followed by the wrapped optimizer's.

    Parameters
    ----------
    optimizer : keras.optimizers.Optimizer
        The inner (fast) optimizer; learning rate and iterations are its.
    k : int, default=6
    alpha : float, default=0.5
    name : str, optional
    """

    def __init__(self, optimizer, k=LOOKAHEAD_K, alpha=LOOKAHEAD_ALPHA, name=None):
        # learning rate and iterations are delegated to the inner optimizer (as Keras'
        # LossScaleOptimizer does); this 0.0 only fills the base class' slot
        super().__init__(learning_rate=0.0, name=name)
        self.inner = optimizer
        self.k, self.alpha = k, alpha

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.inner.build(variables)
        self._slow = self.add_optimizer_variables(variables, "slow")
        for slow, fast in zip(self._slow, variables):
            slow.assign(fast)

    @property
    def variables(self):
        return self._variables + self.inner.variables

    @property
    def learning_rate(self):
        return self.inner.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner.iterations

    def apply(self, grads, trainable_variables=None):
        if not self.built:  # before the inner step: the slow weights are the initial ones
            self.build(list(trainable_variables))
        self.inner.apply(grads, trainable_variables)
        ops.cond(ops.equal(ops.mod(self.inner.iterations, self.k), 0), self._synchronise,
                 lambda: None)

    def _synchronise(self):
        for slow, fast in zip(self._slow, self._trainable_variables):
            slow.assign(ops.add(slow, ops.multiply(self.alpha, ops.subtract(fast, slow))))
            fast.assign(slow)

    def get_config(self):
        return {"name": self.name, "optimizer": keras.optimizers.serialize(self.inner),
                "k": self.k, "alpha": self.alpha}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.optimizers.deserialize(config.pop("optimizer"),
                                             custom_objects=custom_objects)
        return cls(inner, **config)


@keras.saving.register_keras_serializable(package="bundlelab")
class L2SGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 penalty, as ``torch.optim.SGD(weight_decay=...)``.

    Keras' own ``weight_decay`` is decoupled (``w -= learning_rate * weight_decay * w``,
    outside the momentum); here ``l2 * w`` is added to the gradient before the momentum, so
    the decay accumulates in the momentum buffer as it does in torch.

    Parameters
    ----------
    learning_rate : float, default=0.01
    momentum : float, default=0.0
    l2 : float, default=0.0
    **kwargs
        Keras' SGD keywords (not ``weight_decay``).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(ops.cast(gradient, variable.dtype),
                               ops.multiply(ops.convert_to_tensor(self.l2, variable.dtype),
                                            variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def make_optimizer(config) -> keras.optimizers.Optimizer:
    """The optimizer ``config.optimizer`` names, with its learning rate and weight decay.

    Parameters
    ----------
    config : bundlelab.training.TrainConfig

    Returns
    -------
    keras.optimizers.Optimizer
        ``"ranger"``: ``Lookahead(RAdam(epsilon=1e-6, weight_decay), k=6, alpha=0.5)``;
        ``"adam"``: ``keras.optimizers.AdamW(weight_decay, epsilon=1e-8)`` (torch's epsilon;
        Keras adds it to ``sqrt(v)`` before the bias correction, torch after);
        ``"sgd"``: ``L2SGD(momentum=0.9, l2=weight_decay)``.
    """
    rate, decay = float(config.learning_rate), float(config.weight_decay)
    if config.optimizer == "ranger":
        # Keras' base optimizer takes None, not 0, for no decay
        return Lookahead(RAdam(rate, epsilon=RANGER_EPSILON, weight_decay=decay or None))
    if config.optimizer == "adam":
        return keras.optimizers.AdamW(rate, weight_decay=decay, epsilon=1e-8)
    if config.optimizer == "sgd":
        return L2SGD(rate, momentum=SGD_MOMENTUM, l2=decay)
    raise BundleLabError(  # TrainConfig validates this already; a duck-typed config may not
        f"The 'optimizer' parameter must be one of 'ranger', 'adam', 'sgd'. "
        f"Got {config.optimizer!r} instead."
    )


# -- devices and timing ------------------------------------------------------------------------


def _keras_device(device: str) -> str | None:
    """``config.device`` as :func:`keras.device` takes it (None: Keras' own choice)."""
    if device == "auto":
        return None
    if device.startswith("cuda"):
        if keras.backend.backend() == "torch":
            import torch

            if not torch.cuda.is_available():
                raise BundleLabError(
                    f"device {device!r} was asked for, but torch sees no CUDA device; "
                    "use device='cpu' or 'auto'"
                )
        # Keras' device names say "gpu" on every backend (torch maps it back to "cuda")
        index = device.partition(":")[2] or "0"
        return f"gpu:{index}"
    return device


def _wait_for(output) -> None:
    """Block until ``output`` is computed: GPU work is asynchronous."""
    if keras.backend.backend() == "torch":
        if output.is_cuda:
            import torch

            torch.cuda.synchronize(output.device)
    else:  # a copy to the host waits for the result on every backend
        keras.ops.convert_to_numpy(output)


@contextlib.contextmanager
def _quiet_keras_io():
    # Keras' own saving calls np.array() on torch tensors, which numpy 2 warns about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation",
                                category=DeprecationWarning)
        yield


# -- the trainee -------------------------------------------------------------------------------


class KerasTrainee:
    """A Keras model of a spec with its optimizer: the :class:`bundlelab.training.Trainee`
    of :class:`KerasBackend`.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    config : bundlelab.training.TrainConfig
        ``seed`` seeds the weights, ``optimizer``, ``learning_rate`` and ``weight_decay`` make
        the optimizer (:func:`make_optimizer`), ``device`` places variables and batches
        (``"auto"``: where Keras puts them, the GPU when there is one); ``learning_rate`` and
        ``batch_size`` are also the metric's in :meth:`measure_bundles`.

    Attributes
    ----------
    model : keras.Model
        Compiled with the optimizer, sparse cross-entropy from logits and accuracy.
    """

    def __init__(self, spec, config) -> None:
        self.spec, self.config = spec, config
        self._device = _keras_device(config.device)
        with self._on_device():
            self.model = build_model(spec, seed=config.seed)
            self._compile()

    def _on_device(self):
        return contextlib.nullcontext() if self._device is None else keras.device(self._device)

    def _compile(self) -> None:
        """A fresh optimizer, built now: a checkpoint then loads into a trainee that has not
        trained yet, and Lookahead's slow weights start at the current weights."""
        self.model.compile(
            optimizer=make_optimizer(self.config),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        self.model.optimizer.build(self.model.trainable_variables)

    def train_epoch(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """One optimizer step per ``(inputs, labels)`` batch, in training mode.

        Returns
        -------
        dict
            ``{"loss", "accuracy"}``: means over the epoch's samples (each batch's values,
            computed before its step, weighted by its size).
        """
        loss = correct = 0.0
        n_samples = 0
        with self._on_device():
            for x, y in batches:
                logs = self.model.train_on_batch(x, y, return_dict=True)
                size = len(x)
                loss += logs["loss"] * size
                correct += logs["accuracy"] * size
                n_samples += size
        if not n_samples:
            raise BundleLabError("train_epoch got no batches: pass at least one (x, y) batch")
        return {"loss": loss / n_samples, "accuracy": correct / n_samples}

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> dict[str, float]:
        """``{"loss", "accuracy"}`` over ``(x, y)`` in inference mode, ``batch_size`` at a time."""
        with self._on_device():
            logs = self.model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        return {"loss": float(logs["loss"]), "accuracy": float(logs["accuracy"])}

    def measure_bundles(self, x: np.ndarray, y: np.ndarray, **options: Any):
        """Bundles of the spec's measured layers on all of ``(x, y)``.

        Parameters
        ----------
        x, y : arrays of shape (n_samples, ...) and (n_samples,)
            The measurement subset (used whole).
        **options
            Keywords of :func:`bundlelab.find_bundles`; ``learning_rate`` and ``batch_size``
            (the training batch size ``|B|``) default to the config's.

        Returns
        -------
        bundlelab.BundleReport
            One layer per :func:`bundlelab.spec.measured_layers` node, in that order.
        """
        learning_rate = options.pop("learning_rate", self.config.learning_rate)
        train_batch_size = options.pop("batch_size", self.config.batch_size)
        layers = measured_layers(self.spec)
        with self._on_device():
            report = audit(
                self.model, x, y, layers=layers, n_samples=max(len(x), 1),
                learning_rate=learning_rate, train_batch_size=train_batch_size, **options,
            )
        # Keras lists a DAG's layers in its own topological order; reports follow the spec's,
        # the numbering that rewrites (and "the first conflicting layer") use.
        return BundleReport([report[name] for name in layers], report.params)

    def save(self, path: str, *, optimizer: bool = True) -> None:
        """Write the weights (and with ``optimizer`` the optimizer's state) to ``path``.

        The file is Keras' ``.weights.h5`` format whatever ``path`` ends in, with the spec and
        the optimizer's name as attributes of its root.
        """
        import h5py

        with tempfile.TemporaryDirectory() as folder:
            staged = os.path.join(folder, "checkpoint" + CHECKPOINT_SUFFIX)
            with self._on_device(), _quiet_keras_io():
                self.model.save_weights(staged)
            # copied group by group: deleting the optimizer's group would not shrink the file
            with h5py.File(staged, "r") as source, h5py.File(path, "w") as target:
                for key in source:
                    if optimizer or key != "optimizer":
                        source.copy(source[key], target, key)
                target.attrs.update(source.attrs)
                target.attrs[_SPEC_ATTRIBUTE] = dumps(self.spec, format="json")
                target.attrs[_OPTIMIZER_ATTRIBUTE] = self.config.optimizer if optimizer else ""

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote.  Without saved optimizer state the optimizer
        starts afresh from the loaded weights.

        Raises
        ------
        BundleLabError
            The file is not such a checkpoint, was written for another spec, or holds the
            state of another optimizer.
        """
        saved_spec, saved_optimizer = _checkpoint_attributes(path)
        if saved_spec != self.spec:
            raise BundleLabError(
                f"checkpoint {os.fspath(path)!r} was written for another architecture "
                f"(spec {saved_spec.name!r}), not for this trainee's spec {self.spec.name!r}"
            )
        if saved_optimizer and saved_optimizer != self.config.optimizer:
            raise BundleLabError(
                f"checkpoint {os.fspath(path)!r} holds the state of optimizer "
                f"{saved_optimizer!r}, but this trainee trains with {self.config.optimizer!r}"
            )
        with tempfile.TemporaryDirectory() as folder:
            readable = os.fspath(path)
            if not readable.endswith(CHECKPOINT_SUFFIX):
                readable = shutil.copy(readable, os.path.join(folder, "c" + CHECKPOINT_SUFFIX))
            with self._on_device(), _quiet_keras_io(), warnings.catch_warnings():
                # without optimizer state Keras warns that it skips the optimizer: intended
                warnings.filterwarnings("ignore", message="Skipping variable loading")
                self.model.load_weights(readable)
                if not saved_optimizer:
                    self._compile()

    def inference_seconds(self, x: np.ndarray) -> float:
        """Median wall time of one forward pass of the batch ``x`` (``training=False``) over
        5 runs after a warm-up, synchronised on GPUs."""
        with self._on_device(), _inference_context():
            inputs = keras.ops.convert_to_tensor(np.asarray(x, dtype=np.float32))
            _wait_for(self.model(inputs, training=False))
            seconds = []
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                _wait_for(self.model(inputs, training=False))
                seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))


def _checkpoint_attributes(path) -> tuple[Any, str]:
    """The spec and optimizer name a checkpoint was written with, or a one-line error."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            spec_text = file.attrs.get(_SPEC_ATTRIBUTE)
            saved_optimizer = file.attrs.get(_OPTIMIZER_ATTRIBUTE, "")
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BundleLabError(f"cannot read checkpoint {os.fspath(path)!r}: {reason}") from None
    if spec_text is None:
        raise BundleLabError(
            f"{os.fspath(path)!r} is not a bundlelab Keras checkpoint (it holds no spec); "
            "write checkpoints with KerasTrainee.save"
        )
    return loads(str(spec_text), format="json"), str(saved_optimizer)


class KerasBackend:
    """The ``"keras"`` :class:`bundlelab.training.Backend`: Keras 3 models of specs."""

    name = "keras"
    checkpoint_suffix = CHECKPOINT_SUFFIX

    def build(self, spec, config) -> KerasTrainee:
        """A freshly initialised :class:`KerasTrainee` of ``spec`` (weights seeded by
        ``config.seed``) with the optimizer ``config`` names, on ``config.device``."""
        return KerasTrainee(spec, config)


__all__ = ["KerasBackend", "KerasTrainee", "L2SGD", "Lookahead", "RAdam", "make_optimizer"]
