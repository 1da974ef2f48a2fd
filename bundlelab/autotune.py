"""The paper's auto-tune (section 3.6): prune conflicting layers, restart, until none conflict.

Start from a deep network (the paper: the 120-layer plain net) and train it.  After each
checked epoch of a run, measure ``H^l`` of every measured layer on the run's training subset;
if a layer conflicts (``H^l > 0``), remove the first such layer and every later layer of its
stage (:func:`bundlelab.spec.truncate_stage_from`; a stage left empty is dropped) and restart
training from scratch with the pruned spec.  A run whose checks find no conflict trains to the
end: that is the result.

Which epochs are checked is ``check_epochs``: an int ``k`` checks the first ``k`` epochs of
every run (``1`` is the paper's rule: prune after the first epoch); ``"all"`` watches the whole
run, so the result is a network that showed no conflict in any epoch of its final run
(conflicts that appear late restart the search, within ``max_restarts``).  ``"all"`` is the
default, a departure from the paper measured in docs/results.md; ``check_epochs=1`` is the
paper's procedure.

The folder of an auto-tune holds ``autotune.json`` (the restarts so far) and one run folder
per restart (``restart-00``, ``restart-01``, ...), each resumable on its own, so the whole
auto-tune resumes after a crash where it stopped (under the same resume policy as a training
run: :data:`bundlelab.training.RESUMABLE_OPTIONS`).  When it ends it also writes
``evolution.csv`` (the supplementary's table: epoch, blocks per stage), ``final-spec.yaml``
and ``result.json``.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
from dataclasses import dataclass
from typing import Any

from ._atomic import atomic_write_text
from ._errors import BundleLabError
from ._validation import check_instance, check_positive_int, checked_keywords
from .spec import Spec, dump, from_dict, layer_count, stage_depths, to_dict, truncate_stage_from
from .training import (
    Backend,
    RunFolder,
    TrainConfig,
    Training,
    TrainingResult,
    check_data,
    get_backend,
)
from .training._progress import resolve_progress

AUTOTUNE_FORMAT = "bundlelab.autotune/1"
STATE_FILE = "autotune.json"
#: Default of ``autotune(check_epochs=...)``: watch every epoch (see :func:`autotune` for why).
CHECK_EPOCHS_DEFAULT = "all"


@dataclass
class Restart:
    """One architecture the auto-tune trained.

    Attributes
    ----------
    spec : Spec
    epochs : int
        How many epochs it was trained.
    epoch : int
        The auto-tune's total epoch count when it ended.
    pruned_layer : str or None
        The conflicting layer that ended it (None for the final run).
    entropy : float or None
        That layer's bundle entropy.
    """

    spec: Spec
    epochs: int = 0
    epoch: int = 0
    pruned_layer: str | None = None
    entropy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": to_dict(self.spec), "epochs": self.epochs, "epoch": self.epoch,
                "pruned_layer": self.pruned_layer, "entropy": self.entropy}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Restart:
        return cls(**{**data, "spec": from_dict(data["spec"])})


@dataclass
class AutotuneResult:
    """The auto-tune's outcome.

    Attributes
    ----------
    spec : Spec
        The pruned network.
    restarts : list of Restart
        Every architecture trained, the last one being ``spec``.
    training : TrainingResult
        The final run.
    """

    spec: Spec
    restarts: list
    training: TrainingResult

    def evolution(self) -> list[dict[str, Any]]:
        """The supplementary's table: the start, then after each pruning the epoch and the
        layers per stage (plus the pruned layer and its entropy)."""
        stages = list(stage_depths(self.restarts[0].spec))
        rows = [{"epoch": "start", **stage_depths(self.restarts[0].spec, stages=tuple(stages)),
                 "layers": layer_count(self.restarts[0].spec), "pruned_layer": "",
                 "entropy": ""}]
        for before, after in zip(self.restarts, self.restarts[1:]):
            rows.append({"epoch": before.epoch, **stage_depths(after.spec, stages=tuple(stages)),
                         "layers": layer_count(after.spec), "pruned_layer": before.pruned_layer,
                         "entropy": before.entropy})
        return rows

    def evolution_csv(self) -> str:
        """:meth:`evolution` as CSV text (what ``evolution.csv`` holds)."""
        rows = self.evolution()
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def summary(self) -> dict[str, Any]:
        """The final run's figures, the number of restarts and the evolution, JSON-ready."""
        return {**self.training.summary(), "restarts": len(self.restarts) - 1,
                "evolution": self.evolution()}


Restart.__init__ = checked_keywords(Restart.__init__)  # type: ignore[method-assign]
AutotuneResult.__init__ = checked_keywords(AutotuneResult.__init__)  # type: ignore[method-assign]


@checked_keywords
def autotune(spec: Spec, data: Any, *, backend: str | Backend = "torch",
             config: TrainConfig | None = None, directory: str | os.PathLike | None = None,
             check_epochs: int | str = CHECK_EPOCHS_DEFAULT, max_restarts: int = 50,
             progress: bool | None = None) -> AutotuneResult:
    """Auto-tune the depth of ``spec`` on ``data`` by removing conflicting layers.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
        The largest network; its measured layers must belong to stages (the presets' do).
    data : bundlelab.datasets.Dataset
    backend : str or Backend, default="torch"
    config : TrainConfig, optional
        Training of every run; ``config.epochs`` is the length of the final run.
    directory : path, optional
        The auto-tune folder; one holding an auto-tune of the same spec and options resumes
        (only :data:`bundlelab.training.RESUMABLE_OPTIONS` may change, as for a training
        run: ``epochs`` may grow).  Locked while the auto-tune works in it.
    check_epochs : int or "all", default="all"
        Which epochs of every run may prune.  ``"all"`` (the default): every epoch is
        measured and checked, so a conflict that appears late in a run also prunes and
        restarts, and the result showed no conflict in any epoch of its final run.  An int
        ``k``: bundles are checked after each of the first ``k`` epochs; later epochs are
        measured as ``config.measure_every`` says, but never prune.  ``1`` is the paper's
        rule.  Why "all" is the default: conflicts appear after the first epoch.  On digits
        resized to 32 px (plain-120 x 0.125, AdamW 1e-2 cosine, 20 epochs, 3 seeds) the
        paper's rule keeps 88-120 layers whose final runs conflict later (``H^L`` 1.0-2.1,
        14% test accuracy on average), while watching every epoch prunes after epoch 1 or 2
        of each run and keeps 40-54 conflict-free layers (86%; docs/results.md, Table 1).
        It costs a bundle measurement every epoch and restarts that may come later in a run
        (bounded by ``max_restarts``).
    max_restarts : int, default=50
        Stop with an error if the network is pruned more often than this.
    progress : bool or None, default=None
        Progress bars and a line per epoch on stderr; None: when stderr is a terminal.

    Returns
    -------
    AutotuneResult
    """
    check_instance("spec", spec, Spec, "a bundlelab.spec.Spec")
    config = TrainConfig() if config is None else config
    check_instance("config", config, TrainConfig, "a TrainConfig")
    check_epochs = _check_epochs_option(check_epochs)
    max_restarts = check_positive_int("max_restarts", max_restarts)
    progress = resolve_progress(progress)
    check_data(spec, data)
    backend = get_backend(backend)
    options = {"backend": backend.name, "spec": to_dict(spec), "config": config.to_dict(),
               "check_epochs": check_epochs}
    if directory is None:
        return _autotune(spec, data, backend, config, None, options, check_epochs, max_restarts,
                         progress)
    with RunFolder(directory, STATE_FILE, AUTOTUNE_FORMAT, kind="auto-tune",
                   epochs=False) as folder:
        return _autotune(spec, data, backend, config, folder, options, check_epochs,
                         max_restarts, progress)


def _autotune(spec, data, backend, config, folder, options, check_epochs, max_restarts,
              progress) -> AutotuneResult:
    state = None if folder is None else folder.resume(options)
    restarts = [Restart(spec)] if state is None else _saved_restarts(folder, state)

    def save() -> None:
        if folder is not None:
            folder.write({**options, "restarts": [r.to_dict() for r in restarts]})

    while True:
        k = len(restarts) - 1
        current = restarts[k]
        done_before = sum(r.epochs for r in restarts[:k])
        with Training(current.spec, data, backend=backend, config=config, progress=progress,
                      directory=None if folder is None else folder.directory / f"restart-{k:02d}"
                      ) as run:
            # A run folder may hold a checked epoch that found a conflict the state did not
            # record (a crash between the two writes): act on it instead of training past it.
            checked = run.history if check_epochs == "all" else run.history[:check_epochs]
            pruned = next((r for r in checked if r.first_conflicting is not None), None)
            while pruned is None and not run.finished:
                checking = check_epochs == "all" or run.epochs_done < check_epochs
                record = run.train_epoch(measure=True if checking else None)
                if checking and record.first_conflicting is not None:
                    pruned = record
                    break
                current.epochs, current.epoch = run.epochs_done, done_before + run.epochs_done
                save()
            if pruned is None:
                # also when the run had finished before a crash lost the state's last update
                current.epochs, current.epoch = run.epochs_done, done_before + run.epochs_done
                training = run.result()
                break
        conflict = pruned.first_conflicting
        if current.spec[conflict.layer].stage is None:
            raise BundleLabError(
                f"layer {conflict.layer!r} conflicts but belongs to no stage, so the auto-tune "
                "cannot remove it; give the spec's measured layers a stage"
            )
        current.epochs, current.epoch = pruned.epoch, done_before + pruned.epoch
        current.pruned_layer, current.entropy = conflict.layer, float(conflict.entropy)
        if len(restarts) > max_restarts:
            raise BundleLabError(
                f"the auto-tune pruned {max_restarts} times without finding a network free of "
                "conflicts; raise max_restarts or start from another spec"
            )
        restarts.append(Restart(truncate_stage_from(current.spec, conflict.layer)))
        save()
        if progress:
            _say(f"auto-tune: {conflict.layer!r} conflicts (H = {current.entropy:.3f}) after "
                 f"epoch {current.epoch}; restarting with {layer_count(restarts[-1].spec)} layers")
    result = AutotuneResult(restarts[-1].spec, restarts, training)
    save()
    if folder is not None:
        dump(result.spec, folder.directory / "final-spec.yaml")
        atomic_write_text(folder.directory / "evolution.csv", result.evolution_csv())
        atomic_write_text(folder.directory / "result.json",
                          json.dumps(result.summary(), indent=2) + "\n")
    return result


def _check_epochs_option(value: Any) -> int | str:
    """``check_epochs`` as given: a positive int or ``"all"`` (one-line error otherwise)."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        raise BundleLabError(
            f"check_epochs must be a positive int or 'all'; got {value!r}; pass 1 for the "
            "paper's first-epoch check or 'all' to watch the whole run"
        )
    return check_positive_int("check_epochs", value)


_RESTART_FIELDS = ("spec", "epochs", "epoch", "pruned_layer", "entropy")


def _saved_restarts(folder: RunFolder, state: dict[str, Any]) -> list[Restart]:
    """The restarts of an auto-tune's state, each field checked (one line naming it)."""
    saved = state.get("restarts")
    if not isinstance(saved, list) or not saved:
        raise folder.state_error("restarts", "a non-empty list of restarts", saved)
    restarts = []
    for i, data in enumerate(saved):
        where = f"restarts[{i}]"
        if not isinstance(data, dict) or set(data) != set(_RESTART_FIELDS):
            raise folder.state_error(where, "a restart of the fields " + ", ".join(_RESTART_FIELDS),
                                     data)
        for name in ("epochs", "epoch"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise folder.state_error(f"{where}.{name}", "an int >= 0", value)
        last = i == len(saved) - 1
        layer = data["pruned_layer"]
        if not (layer is None if last else isinstance(layer, str)):
            raise folder.state_error(f"{where}.pruned_layer",
                                     "null" if last else "a layer name", layer)
        entropy = data["entropy"]
        if not (entropy is None if last else
                isinstance(entropy, numbers.Real) and not isinstance(entropy, bool)):
            raise folder.state_error(f"{where}.entropy", "null" if last else "a number", entropy)
        if i == 0 and data["spec"] != state.get("spec"):
            raise folder.state_error(f"{where}.spec", "the auto-tune's spec",
                                     (data["spec"] or {}).get("name")
                                     if isinstance(data["spec"], dict) else data["spec"])
        try:
            restarts.append(Restart.from_dict(data))
        except (BundleLabError, TypeError, ValueError, KeyError, AttributeError):
            raise folder.state_error(f"{where}.spec", "a spec", data["spec"]) from None
    return restarts


def _say(line: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(line)
