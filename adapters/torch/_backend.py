"""TorchBackend: the ``"torch"`` training backend of :mod:`bundlelab.training` and the search."""

from __future__ import annotations

from typing import Any

from ..._validation import checked_keywords
from ...spec import Spec
from ._supernet import TorchSuperTrainee
from ._train import TorchTrainee


class TorchBackend:
    """Builds :class:`TorchTrainee` and :class:`TorchSuperTrainee` objects; registered as the
    ``"torch"`` backend (a :class:`bundlelab.training.SuperNetBackend`)."""

    name = "torch"
    checkpoint_suffix = ".pt"

    @checked_keywords
    def __init__(self) -> None:
        pass  # stateless; declared so that a stray keyword is a one-line error

    def build(self, spec: Spec, config: Any) -> TorchTrainee:
        """A freshly initialised :class:`TorchTrainee` of ``spec`` (see
        :class:`bundlelab.training.Backend`)."""
        return TorchTrainee(spec, config)

    def build_supernet(self, spec: Spec, config: Any, **options: Any) -> TorchSuperTrainee:
        """A :class:`TorchSuperTrainee` (``options``: ``gate_init``, ``gate_optimizer``,
        ``gate_learning_rate``)."""
        return TorchSuperTrainee(spec, config, **options)
