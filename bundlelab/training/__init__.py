"""Training specs through a framework backend, framework-free.

The loop here shuffles, augments (:func:`augment_batch`), evaluates, records ``H^l(t)`` on a
fixed training subset, checkpoints every epoch and resumes after a crash (:class:`RunFolder`,
shared with the auto-tune and the search); a backend
(:class:`Backend`, ``"torch"`` or ``"keras"``) does only what needs the framework.

>>> from bundlelab.training import TrainConfig, fit                      # doctest: +SKIP
>>> from bundlelab.datasets import load_dataset                          # doctest: +SKIP
>>> from bundlelab.spec import conv_net                                  # doctest: +SKIP
>>> data = load_dataset("digits")                                        # doctest: +SKIP
>>> spec = conv_net(20, width_multiplier=0.25, input_shape=data.input_shape)  # doctest: +SKIP
>>> result = fit(spec, data, config=TrainConfig(epochs=10), directory="runs/plain-20")  # doctest: +SKIP
>>> result.test_accuracy, result.checkpoint_mb, result.ms_per_step     # doctest: +SKIP
"""

from ._augment import augment_batch
from ._backend import (
    Backend,
    SuperNetBackend,
    SuperTrainee,
    Trainee,
    available_backends,
    get_backend,
    register_backend,
)
from ._config import ON_DIVERGENCE, OPTIMIZERS, SCHEDULES, TrainConfig
from ._folder import RESUMABLE_OPTIONS, FolderLock, RunFolder
from ._run import (
    DivergenceWarning,
    EpochRecord,
    Training,
    TrainingDiverged,
    TrainingResult,
    check_data,
    fit,
    training_batches,
)

__all__ = [
    "ON_DIVERGENCE",
    "OPTIMIZERS",
    "SCHEDULES",
    "DivergenceWarning",
    "RESUMABLE_OPTIONS",
    "FolderLock",
    "RunFolder",
    "Backend",
    "EpochRecord",
    "SuperNetBackend",
    "SuperTrainee",
    "TrainConfig",
    "Trainee",
    "Training",
    "TrainingDiverged",
    "TrainingResult",
    "augment_batch",
    "available_backends",
    "check_data",
    "fit",
    "get_backend",
    "register_backend",
    "training_batches",
]
