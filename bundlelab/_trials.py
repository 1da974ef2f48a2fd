"""Trials: the resumable runs a sweep hands to an executor, and the threads each computes with.

A trial is one call of a top-level function on a picklable task (a spec as a dict, the data's
arrays or a :class:`~bundlelab.datasets.DatasetSource` that loads them where the trial runs, a
:class:`~bundlelab.training.TrainConfig`, the trial's run folder), so the same
trial runs in this process, in a local worker process or on a Ray worker
(:func:`bundlelab.executors.get_executor`).  It resumes from its run folder, so a retried
trial (a worker killed, an error) goes on from its last finished epoch.

Identical results: torch's CPU results depend on the number of intra-op threads (a reduction
split over more threads adds in another order), and Ray starts its workers with
``OMP_NUM_THREADS`` set to their CPUs (1 by default).  So every trial sets torch's intra-op
threads to one number for its duration (:func:`bundlelab.executors.torch_threads`), by default the number the
sweep's own process uses (:func:`trial_threads`): a trial on a worker then computes exactly
what it computes in-process.

This module holds the auto-tune's trials (``bundlelab autotune --seeds``); the search's live
in :mod:`bundlelab.search._sweep`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._errors import BundleLabError, require
from ._validation import check_positive_int
from .datasets import DatasetSource


def trial_data(data: Any) -> Any:
    """A trial's data set: ``data`` itself, or the one a :class:`DatasetSource` loads."""
    return data.load() if isinstance(data, DatasetSource) else data


def trial_threads(threads: Any, backend: Any) -> int | None:
    """The intra-op threads every trial of a sweep computes with.

    Parameters
    ----------
    threads : int or None
        A number of threads (>= 1); None: as many as this process's torch uses now, so that
        trials on other processes (Ray starts workers with one thread) compute exactly as
        in-process ones.
    backend : str or Backend
        Only the ``"torch"`` backend's threads are set; other backends keep theirs (a
        ``threads`` given for them is an error).

    Returns
    -------
    int or None
        None: leave the threads alone (another backend).
    """
    from .training import get_backend

    name = get_backend(backend).name
    if threads is not None:
        threads = check_positive_int("threads", threads)
    if name != "torch":
        if threads is not None:
            raise BundleLabError(
                f"threads={threads} sets torch's intra-op threads, and the {name!r} backend is "
                "not torch; leave threads unset"
            )
        return None
    if threads is None:
        # the torch backend is built already, so torch is imported
        threads = require("torch", purpose="the torch backend", extra="torch").get_num_threads()
    return threads


@dataclass(frozen=True)
class TrainingTrial:
    """One auto-tune (``kind="autotune"``) or one plain training run (``kind="fit"``, a
    network compared with) of ``bundlelab autotune --seeds``.

    Attributes
    ----------
    kind : {"autotune", "fit"}
    spec : dict
        The spec, as :func:`bundlelab.spec.to_dict` gives it (cheap to send).
    data : bundlelab.datasets.Dataset or DatasetSource
    config : TrainConfig
        Seeded.
    backend : str
    directory : str
        The trial's run folder (an absolute path every worker can reach).
    check_epochs : int or "all"
        The auto-tune's (unused by ``"fit"``).
    progress : bool
        Progress bars of the run itself (only in-process: workers' bars would mix).
    threads : int or None
        torch's intra-op threads during the trial (None: left as they are); see
        :func:`bundlelab.executors.torch_threads`.
    """

    kind: str
    spec: dict
    data: Any
    config: Any
    backend: str
    directory: str
    check_epochs: int | str = "all"
    progress: bool = False
    threads: int | None = None


def run_training_trial(trial: TrainingTrial) -> dict[str, Any]:
    """Run (or resume) one :class:`TrainingTrial`; return its figures as plain data.

    Returns
    -------
    dict
        ``layers``, ``test_accuracy``, ``checkpoint_mb``, ``ms_per_step``, ``final_entropy``
        (the fields of :class:`bundlelab.training.TrainingResult` the comparison table
        shows) and, for an auto-tune, ``evolution_csv``.
    """
    from .executors import torch_threads
    from .spec import from_dict
    from .training import fit

    spec, data = from_dict(trial.spec), trial_data(trial.data)
    options = dict(backend=trial.backend, config=trial.config,
                   directory=os.fspath(trial.directory), progress=trial.progress)
    with torch_threads(trial.threads):
        if trial.kind == "autotune":
            from .autotune import autotune

            tuned = autotune(spec, data, check_epochs=trial.check_epochs, **options)
            training, evolution = tuned.training, tuned.evolution_csv()
        else:
            training, evolution = fit(spec, data, **options), None
    return {"seed": trial.config.seed, "layers": training.layers,
            "test_accuracy": training.test_accuracy, "checkpoint_mb": training.checkpoint_mb,
            "ms_per_step": training.ms_per_step, "final_entropy": training.final_entropy,
            "evolution_csv": evolution}
