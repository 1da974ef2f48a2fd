"""The backend protocol: what the training loop, the auto-tune and the search ask a framework.

A backend turns a :class:`bundlelab.spec.Spec` into a :class:`Trainee` (a model with its
optimizer) and nothing else; shuffling, augmentation, checkpoint files, resuming, bundle
tracking and progress are done once, framework-free, in :mod:`bundlelab.training`.  Backends
are registered by name and imported only when asked for, so the core stays framework-free::

    class MyBackend:
        name = "myframework"

        def build(self, spec, config):          # -> a Trainee
            ...

    register_backend("myframework", MyBackend)   # or "package.module:MyBackend"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._errors import BundleLabError


@runtime_checkable
class Trainee(Protocol):
    """One model being trained, with its optimizer state, in a framework."""

    def train_epoch(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """One pass of optimizer steps over ``batches`` of ``(inputs float32, labels int64)``.

        Returns ``{"loss": mean cross-entropy, "accuracy": fraction correct}`` over the epoch
        (in training mode, as the batches were seen)."""

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> dict[str, float]:
        """``{"loss", "accuracy"}`` on ``(x, y)`` in inference mode, without gradients."""

    def measure_bundles(self, x: np.ndarray, y: np.ndarray, **options: Any) -> Any:
        """A :class:`bundlelab.BundleReport` of every measured layer of the spec, in the
        order of :func:`bundlelab.spec.measured_layers`, named by node id.  ``options`` are
        keywords of :func:`bundlelab.find_bundles` (``learning_rate``, ``batch_size``)."""

    def save(self, path: str, *, optimizer: bool = True) -> None:
        """Write the weights (and the optimizer state) to ``path``; need not be atomic."""

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote; a file of another spec raises BundleLabError."""

    def inference_seconds(self, x: np.ndarray) -> float:
        """Wall time of one forward pass of the batch ``x`` in inference mode (median of
        several runs after a warm-up; synchronised on GPUs)."""


@runtime_checkable
class Backend(Protocol):
    """A framework that builds and trains specs."""

    name: str
    #: file suffix of its checkpoints, e.g. ".pt"
    checkpoint_suffix: str

    def build(self, spec: Any, config: Any) -> Trainee:
        """A freshly initialised trainee of ``spec`` (weights seeded by ``config.seed``) with
        the optimizer ``config`` names, on ``config.device``."""


_BACKENDS: dict[str, str | Callable[[], Backend]] = {
    "torch": "bundlelab.adapters.torch:TorchBackend",
    "keras": "bundlelab.adapters.keras_train:KerasBackend",
}


def register_backend(name: str, factory: str | Callable[[], Backend]) -> None:
    """Make a backend available under ``name`` (a factory or a lazy ``"module:attr"``)."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend`."""
    return sorted(_BACKENDS)


def get_backend(backend: str | Backend) -> Backend:
    """The backend registered as ``backend`` (a backend object is returned as it is)."""
    if not isinstance(backend, str):
        if not isinstance(backend, Backend):
            raise BundleLabError(
                f"The 'backend' parameter must be one of {', '.join(map(repr, _BACKENDS))} or "
                f"an object with name, checkpoint_suffix and build. Got {backend!r} instead."
            )
        return backend
    try:
        factory = _BACKENDS[backend]
    except KeyError:
        raise BundleLabError(
            f"The 'backend' parameter must be one of {', '.join(map(repr, available_backends()))}. "
            f"Got {backend!r} instead."
        ) from None
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory()
