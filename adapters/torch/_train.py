"""The PyTorch training backend: a spec built with :func:`build_model`, trained step by step.

The framework-free loop (:mod:`bundlelab.training`) hands this backend numpy batches it has
already shuffled and augmented; everything here is what needs torch: the optimizer step, the
inference passes, the checkpoint file and the layer taps.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..._errors import BundleLabError
from ...report import BundleReport
from ...spec import Spec, measured_layers
from ._audit import audit
from ._build import build_model
from ._optim import make_optimizer

CHECKPOINT_FORMAT = "bundlelab.torch-checkpoint/1"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the first GPU when there is one, else the CPU; other names as torch's."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise BundleLabError(
            f"The 'device' parameter must be 'auto', 'cpu', 'cuda' or 'cuda:N'. Got {device!r} "
            "instead."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BundleLabError(
            f"device {device!r} was asked for but PyTorch sees no GPU; use --device cpu"
        )
    return resolved


def read_checkpoint(path: str, device: torch.device, format: str, kind: str) -> dict:
    """A checkpoint dict of ``format``, read without unpickling anything but tensors and
    plain containers (``weights_only=True``); one-line errors for other files."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise BundleLabError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") != format:
        raise BundleLabError(f"{path} is not a bundlelab {kind}")
    return state


@torch.no_grad()
def evaluate_in_batches(model, x: np.ndarray, y: np.ndarray, batch_size: int, tensors,
                        logits_of) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``logits_of(inputs)`` over ``(x, y)`` in batches, with
    ``model`` in eval mode (its mode restored after); ``tensors(x, y)`` moves a batch."""
    was_training = model.training
    model.eval()
    try:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), batch_size):
            xt, yt = tensors(x[start:start + batch_size], y[start:start + batch_size])
            logits = logits_of(xt)
            loss_sum += float(F.cross_entropy(logits, yt, reduction="sum"))
            correct += int((logits.argmax(1) == yt).sum())
    finally:
        model.train(was_training)
    return {"loss": loss_sum / len(y), "accuracy": correct / len(y)}


class TorchBackend:
    """Builds :class:`TorchTrainee` objects; registered as the ``"torch"`` backend."""

    name = "torch"
    checkpoint_suffix = ".pt"

    def build(self, spec: Spec, config) -> TorchTrainee:
        return TorchTrainee(spec, config)

    def build_supernet(self, spec: Spec, config, **options):
        """A :class:`TorchSuperTrainee` (``options``: ``gate_init``, ``gate_optimizer``,
        ``gate_learning_rate``)."""
        from ._supernet import TorchSuperTrainee  # it imports this module

        return TorchSuperTrainee(spec, config, **options)


class TorchTrainee:
    """A spec's module and its optimizer on one device (see :class:`bundlelab.training.Trainee`).

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    config : bundlelab.training.TrainConfig
        ``seed`` seeds the weights; ``optimizer``, ``learning_rate`` and ``weight_decay``
        make the optimizer; ``device`` places both.
    """

    def __init__(self, spec: Spec, config) -> None:
        self.spec, self.config = spec, config
        self.device = resolve_device(config.device)
        self.model = build_model(spec, seed=config.seed).to(self.device)
        self.optimizer = make_optimizer(
            config.optimizer, self.model.parameters(),
            learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        )

    def _tensors(self, x: np.ndarray, y: np.ndarray | None = None):
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
        if y is None:
            return xt
        return xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)

    def train_epoch(self, batches) -> dict[str, float]:
        self.model.train()
        # Sums stay on the device: one synchronisation per epoch, not per step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for x, y in batches:
            xt, yt = self._tensors(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(xt)
            loss = F.cross_entropy(logits, yt)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * yt.shape[0]
            correct += (logits.detach().argmax(1) == yt).sum()
            seen += yt.shape[0]
        if not seen:
            raise BundleLabError("the training set is empty")
        return {"loss": float(loss_sum) / seen, "accuracy": int(correct) / seen}

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> dict[str, float]:
        return evaluate_in_batches(self.model, x, y, batch_size, self._tensors, self.model)

    def measure_bundles(self, x: np.ndarray, y: np.ndarray, **options) -> BundleReport:
        names = self.model.layer_names  # node id -> tap module name
        report = audit(
            self.model, torch.from_numpy(np.ascontiguousarray(x)), np.asarray(y),
            layers=[names[node] for node in measured_layers(self.spec)], n_samples=None,
            device=self.device, learning_rate=options.pop("learning_rate", None),
            train_batch_size=options.pop("batch_size", None), **options,
        )
        # Report layers under their node ids, the numbering the spec's rewrites use.
        node_of = {module: node for node, module in names.items()}
        layers = [dataclasses.replace(r, layer=node_of.get(r.layer, r.layer)) for r in report]
        return BundleReport(layers, report.params)

    def save(self, path: str, *, optimizer: bool = True) -> None:
        state = {"format": CHECKPOINT_FORMAT, "spec": self.spec.name,
                 "model": self.model.state_dict()}
        if optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        torch.save(state, path)

    def load(self, path: str) -> None:
        state = read_checkpoint(path, self.device, CHECKPOINT_FORMAT, "PyTorch checkpoint")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise BundleLabError(
                f"checkpoint {path} was written for another architecture (spec "
                f"{state.get('spec')!r}), not for {self.spec.name!r}"
            ) from None
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    @torch.no_grad()
    def inference_seconds(self, x: np.ndarray, *, repeats: int = 5) -> float:
        was_training = self.model.training
        self.model.eval()
        xt = self._tensors(x)
        times = []
        try:
            for k in range(repeats + 1):  # the first pass warms up (allocations, kernels)
                self._synchronize()
                start = time.perf_counter()
                self.model(xt)
                self._synchronize()
                if k:
                    times.append(time.perf_counter() - start)
        finally:
            self.model.train(was_training)
        return statistics.median(times)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
