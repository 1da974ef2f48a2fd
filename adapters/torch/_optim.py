"""Optimizers for training specs: the paper's Ranger (RAdam + Lookahead), Adam, AdamW, SGD."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..._errors import BundleLabError

#: Lookahead's defaults (Zhang et al. 2019, and the Ranger the paper trains with)
LOOKAHEAD_STEPS = 6
LOOKAHEAD_ALPHA = 0.5


class Lookahead(torch.optim.Optimizer):
    """Lookahead around an inner optimizer: every ``k`` steps the slow weights move ``alpha``
    of the way to the fast ones, and the fast weights restart from there.

    The slow weights are part of :meth:`state_dict`, so a resumed run continues exactly.
    """

    def __init__(self, inner: torch.optim.Optimizer, k: int = LOOKAHEAD_STEPS,
                 alpha: float = LOOKAHEAD_ALPHA) -> None:
        self.inner, self.k, self.alpha = inner, k, alpha
        self.steps = 0
        self.slow = [p.detach().clone() for p in self._params()]
        # Share the inner optimizer's groups and state, so schedulers and `lr` readers work.
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    def _params(self) -> Iterable[torch.Tensor]:
        return [p for group in self.inner.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            for slow, fast in zip(self.slow, self._params()):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)
        return loss

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "slow": self.slow, "steps": self.steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict["inner"])
        # torch's load_state_dict gives the inner optimizer new group and state objects:
        # share those, or a schedule setting "lr" here would no longer reach the steps
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        for slow, saved in zip(self.slow, state_dict["slow"]):
            slow.copy_(saved)
        self.steps = int(state_dict["steps"])


def make_optimizer(name: str, parameters, *, learning_rate: float, weight_decay: float):
    """The optimizer ``name`` of :data:`bundlelab.training.OPTIMIZERS` over ``parameters``.

    ``"ranger"``: RAdam (eps 1e-6, decoupled weight decay) inside :class:`Lookahead`;
    ``"adam"``: ``torch.optim.Adam`` (weight decay added to the gradient, L2);
    ``"adamw"``: ``torch.optim.AdamW`` (decoupled weight decay); ``"sgd"``: momentum 0.9, L2.
    """
    parameters = list(parameters)
    if name == "ranger":
        # RAdam with decoupled weight decay and eps 1e-6, as the authors' TensorFlow setup.
        radam = torch.optim.RAdam(
            parameters, lr=learning_rate, eps=1e-6, weight_decay=weight_decay,
            decoupled_weight_decay=True,
        )
        return Lookahead(radam)
    if name == "adam":  # weight decay as an L2 term of the gradient, as torch's Adam does
        return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=learning_rate, momentum=0.9, weight_decay=weight_decay
        )
    raise BundleLabError(
        f"The 'optimizer' parameter must be one of 'ranger', 'adam', 'adamw', 'sgd'. Got "
        f"{name!r} instead."
    )
