"""Forward passes without gradients, and layer outputs in a form the core reads."""

from __future__ import annotations

import contextlib
from typing import Any

from ._import import keras


def inference_context() -> contextlib.AbstractContextManager:
    """No gradient recording: eager torch would otherwise record a graph for autograd."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def to_array(tensor: Any) -> Any:
    """A layer output bundlelab can read: torch tensors as they are (zero copy on the CPU, and
    CUDA tensors stay on the GPU), other backends' tensors as numpy arrays."""
    if type(tensor).__module__.split(".")[0] == "torch":
        return tensor.detach()
    return keras.ops.convert_to_numpy(tensor)
