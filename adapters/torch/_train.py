"""TorchTrainee: a spec built with :func:`build_model` and its optimizer, trained step by step.

The framework-free loop (:mod:`bundlelab.training`) hands this backend numpy batches it has
already shuffled and augmented; everything here is what needs torch: the optimizer step, the
inference passes, the checkpoint file and the layer taps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from ..._errors import BundleLabError
from ..._validation import check_instance, check_positive_int, checked_keywords
from ...report import BundleReport
from ...spec import Spec, measured_layers
from ._audit import audit
from ._build import build_model
from ._optim import make_optimizer
from ._runtime import (
    evaluate_in_batches,
    median_seconds,
    read_checkpoint,
    resolve_device,
    to_tensors,
)

CHECKPOINT_FORMAT = "bundlelab.torch-checkpoint/1"


class TorchTrainee:
    """A spec's module and its optimizer on one device (see :class:`bundlelab.training.Trainee`).

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    config : bundlelab.training.TrainConfig
        ``seed`` seeds the weights; ``optimizer``, ``learning_rate`` and ``weight_decay``
        make the optimizer; ``device`` places both.
    """

    @checked_keywords
    def __init__(self, spec: Spec, config) -> None:
        check_instance("spec", spec, Spec, "a bundlelab.spec.Spec")
        self.spec, self.config = spec, config
        self.device = resolve_device(config.device)
        self.model = build_model(spec, seed=config.seed).to(self.device)
        self.optimizer = make_optimizer(
            config.optimizer, self.model.parameters(),
            learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        )

    def train_epoch(self, batches) -> dict[str, float]:
        self.model.train()
        # Sums stay on the device: one synchronisation per epoch, not per step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for x, y in batches:
            xt, yt = to_tensors(x, y, self.device)
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

    def set_learning_rate(self, learning_rate: float) -> None:
        """The learning rate of the next steps (the schedule of the run sets it per step)."""
        for group in self.optimizer.param_groups:  # Lookahead shares its inner groups
            group["lr"] = learning_rate

    def largest_values(self) -> dict[str, float]:
        """Largest ``|value|`` of each layer's weights and batch-norm statistics, by node id
        (``inf`` where one is not finite): what the run watches for divergence."""
        node_of = {key: node for node, key in self.model.node_keys.items()}
        largest: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            tensors = [*self.model.named_parameters(), *self.model.named_buffers()]
            for name, tensor in tensors:
                if not tensor.is_floating_point() or not tensor.numel():
                    continue
                parts = name.split(".")
                node = node_of.get(parts[1], parts[1]) if parts[0] == "nodes" else parts[0]
                value = torch.nan_to_num(tensor.detach().abs().max().float(), nan=float("inf"))
                largest[node] = value if node not in largest else torch.maximum(largest[node],
                                                                                value)
        # one synchronisation for the whole model
        values = torch.stack(list(largest.values())).cpu().tolist() if largest else []
        return dict(zip(largest, values))

    def evaluate(self, x: np.ndarray, y: np.ndarray, *,
                 inference_batch_size: int) -> dict[str, float]:
        step = check_positive_int("inference_batch_size", inference_batch_size)
        return evaluate_in_batches(self.model, x, y, step, self.device, self.model)

    def measure_bundles(self, x: np.ndarray, y: np.ndarray, **options) -> BundleReport:
        names = self.model.layer_names  # node id -> tap module name
        report = audit(
            self.model, torch.from_numpy(np.ascontiguousarray(x)), np.asarray(y),
            layers=[names[node] for node in measured_layers(self.spec)], n_samples=None,
            device=self.device, learning_rate=options.pop("learning_rate", None),
            batch_size=options.pop("batch_size", None), **options,
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

    def inference_seconds(self, x: np.ndarray, *, repeats: int = 5) -> float:
        repeats = check_positive_int("repeats", repeats)
        was_training = self.model.training
        self.model.eval()
        xt = to_tensors(x, None, self.device)
        try:
            with torch.no_grad():
                return median_seconds(lambda: self.model(xt), self.device, repeats=repeats)
        finally:
            self.model.train(was_training)
