"""What the trainees of specs and of super-networks share: the device, checkpoint files,
evaluation in batches and synchronised timing."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..._errors import BundleLabError
from ..._validation import short_repr


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the first GPU when there is one, else the CPU; other names as torch's."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise BundleLabError(
            f"The 'device' parameter must be 'auto', 'cpu', 'cuda' or 'cuda:N'. Got "
            f"{short_repr(device)} instead."
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


def to_tensors(x: np.ndarray, y: np.ndarray | None, device: torch.device):
    """A batch on ``device``: float inputs as they are, labels as int64 (or only ``x``)."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
    if y is None:
        return xt
    return xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


@torch.no_grad()
def evaluate_in_batches(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int,
                        device: torch.device,
                        logits_of: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``logits_of(inputs)`` over ``(x, y)`` in batches, with
    ``model`` in eval mode (its mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), batch_size):
            xt, yt = to_tensors(x[start:start + batch_size], y[start:start + batch_size], device)
            logits = logits_of(xt)
            loss_sum += float(F.cross_entropy(logits, yt, reduction="sum"))
            correct += int((logits.argmax(1) == yt).sum())
    finally:
        model.train(was_training)
    return {"loss": loss_sum / len(y), "accuracy": correct / len(y)}


def median_seconds(run: Callable[[], Any], device: torch.device, *, repeats: int = 5) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after one warm-up call
    (allocations, kernel selection); synchronised on GPUs so the time is the device's."""
    times = []
    for k in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
