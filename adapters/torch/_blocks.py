"""``layers="blocks"``: the repeated blocks of a network, found in its module tree.

A block is a module whose class is not a container (``nn.Sequential``, ``nn.ModuleList``,
``nn.ModuleDict`` or a subclass, such as torchvision's ``Conv2dNormActivation``), that holds
at least two layers with weights (a conv and its batch norm, attention and MLP), and whose
class occurs at least twice in the model: a ResNet's basic blocks, an inverted residual, a
transformer block.  The outermost such modules are the blocks, except a "stage": a block
holding a container with two blocks of one class or more (timm's ``ConvNeXtStage`` holds
``blocks`` of ``ConvNeXtBlock``) is opened and its blocks are taken instead.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _weighted_layers(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if next(m.parameters(recurse=False), None) is not None)


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the model's blocks (see the module docstring), in registration order."""
    candidates = {
        m for m in model.modules()
        if m is not model and not isinstance(m, _CONTAINERS) and _weighted_layers(m) >= 2
    }
    counts = Counter(type(m) for m in candidates)
    blocks = {m for m in candidates if counts[type(m)] >= 2}

    def is_stage(module: nn.Module) -> bool:
        for container in module.modules():
            if container is not module and isinstance(container, _CONTAINERS):
                kinds = Counter(type(c) for c in container.children() if c in blocks)
                if any(n >= 2 for n in kinds.values()):
                    return True
        return False

    chosen: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if child in blocks and not is_stage(child):
                chosen.append(full)
            else:
                visit(child, full + ".")

    visit(model, "")
    return chosen
