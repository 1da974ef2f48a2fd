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

bundlelab's own backends (``"torch"``, ``"keras"``) are registered by
:mod:`bundlelab.adapters`, next to their adapters; :func:`get_backend` imports that package
(which imports no framework) on its first lookup.  A backend that can also train
super-networks for :mod:`bundlelab.search` follows :class:`SuperNetBackend` and builds a
:class:`SuperTrainee`.

Two trainee methods are optional: ``set_learning_rate(lr)`` (the learning rate of the next
steps; needed by a ``TrainConfig.schedule`` other than ``"constant"``, which the run sets
before every step) and ``largest_values()`` (``{layer name: largest |value| of its weights
and batch-norm statistics, inf if not finite}``; without it the run watches only the loss
for divergence).  Both of bundlelab's backends have them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._errors import BundleLabError
from .._registry import Registry
from .._validation import checked_keywords


@runtime_checkable
class Trainee(Protocol):
    """One model being trained, with its optimizer state, in a framework."""

    def train_epoch(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """One pass of optimizer steps over ``batches`` of ``(inputs float32, labels int64)``.

        Returns ``{"loss": mean cross-entropy, "accuracy": fraction correct}`` over the epoch
        (in training mode, as the batches were seen)."""

    def evaluate(self, x: np.ndarray, y: np.ndarray, *,
                 inference_batch_size: int) -> dict[str, float]:
        """``{"loss", "accuracy"}`` on ``(x, y)`` in inference mode, without gradients,
        ``inference_batch_size`` samples per forward pass (only bounds memory)."""

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
class SuperTrainee(Protocol):
    """A super-network being trained by the search: weights, gate logits and their optimizers.

    ``E`` is the number of gates (optional edges, in the order of
    :class:`bundlelab.search.GatedGraph`), ``N`` the number of nodes of the spec.  The
    *switches* of an architecture say which gates it keeps on.
    """

    def gate_probabilities(self) -> np.ndarray:
        """``sigmoid(gate logits)``, shape ``(E,)``, float64."""

    def train_step(self, x: np.ndarray, y: np.ndarray, switches: np.ndarray, alive: np.ndarray,
                   penalty: np.ndarray, *, reinforce: bool = True) -> dict[str, Any]:
        """One step of both optimizers on a batch; example ``b`` runs the architecture of
        ``switches[b]`` (shape ``(B, E)``, bool), whose real nodes are ``alive[b]`` (``(B, N)``),
        with the cost penalty ``penalty[b]``.  ``reinforce=False`` trains the weights only.
        Returns ``{"loss": mean cross-entropy, "correct": int, "n": B}``."""

    def evaluate(self, x: np.ndarray, y: np.ndarray, switches: np.ndarray, alive: np.ndarray, *,
                 inference_batch_size: int) -> dict[str, float]:
        """``{"loss", "accuracy"}`` of the one architecture ``switches`` (``(E,)``), ``alive``
        (``(N,)``) on ``(x, y)`` in inference mode."""

    def node_seconds(self, batch_size: int) -> np.ndarray:
        """Forward seconds of each node alone on a batch of ``batch_size``, shape ``(N,)``."""

    def save(self, path: str) -> None:
        """Write weights, gate logits and both optimizers' states to ``path``."""

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote; a file of another super-network raises
        BundleLabError."""


@runtime_checkable
class Backend(Protocol):
    """A framework that builds and trains specs."""

    name: str
    #: file suffix of its checkpoints, e.g. ".pt"
    checkpoint_suffix: str

    def build(self, spec: Any, config: Any) -> Trainee:
        """A freshly initialised trainee of ``spec`` (weights seeded by ``config.seed``) with
        the optimizer ``config`` names, on ``config.device``."""


@runtime_checkable
class SuperNetBackend(Backend, Protocol):
    """A backend that can also train super-networks (what :mod:`bundlelab.search` needs)."""

    def build_supernet(self, spec: Any, config: Any, **options: Any) -> SuperTrainee:
        """A freshly initialised :class:`SuperTrainee` of the super-network ``spec``
        (``options``: ``gate_init``, ``gate_optimizer``, ``gate_learning_rate``)."""


#: name -> "module:attribute" (imported on first use) or a factory; bundlelab's own backends
#: are registered by :mod:`bundlelab.adapters` on the first lookup
_BACKENDS = Registry("backend")
_ADAPTERS_PACKAGE = "bundlelab.adapters"
_own_backends_registered = False


def _registered() -> Registry:
    """The registry, with the backends of :mod:`bundlelab.adapters` (which imports no
    framework) registered."""
    global _own_backends_registered
    if not _own_backends_registered:
        def register_unless_taken(name: str, factory: str) -> None:
            # a backend the user registered under a built-in name before this first lookup
            # stays theirs, as it would have had the built-ins been registered first
            if name not in _BACKENDS.names():
                _BACKENDS.register(name, factory)

        importlib.import_module(_ADAPTERS_PACKAGE)._register_backends(register_unless_taken)
        _own_backends_registered = True
    return _BACKENDS


@checked_keywords
def register_backend(name: str, factory: str | Callable[[], Backend]) -> None:
    """Make a backend available under ``name``.

    Parameters
    ----------
    name : str
        The name :func:`get_backend` (and the CLI's ``--backend``) accepts.
    factory : str or callable
        A zero-argument callable returning the backend, or a ``"module:attribute"`` string
        imported on first use (so registering costs no import).
    """
    _BACKENDS.register(name, factory)


@checked_keywords
def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend`."""
    return _registered().names()


@checked_keywords
def get_backend(backend: str | Backend) -> Backend:
    """The backend registered as ``backend`` (a backend object is returned as it is).

    Parameters
    ----------
    backend : str or Backend
        A registered name (``"torch"``, ``"keras"``, ...) or an object with ``name``,
        ``checkpoint_suffix`` and ``build``.

    Returns
    -------
    Backend
    """
    if not isinstance(backend, str):
        if not isinstance(backend, Backend):
            raise BundleLabError(
                "The 'backend' parameter must be one of "
                f"{', '.join(map(repr, available_backends()))} "
                f"or an object with name, checkpoint_suffix and build. Got {backend!r} instead."
            )
        return backend
    return _registered().create(backend)
