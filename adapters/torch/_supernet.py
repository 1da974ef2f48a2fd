"""A budgeted super-network in PyTorch: a spec whose optional edges are switched per example.

The search itself (sampling architectures, finding each one's real architecture, its cost and
penalty) is framework-free and lives in the core; this backend does what needs torch.  Each
example ``b`` of a batch comes with ``switches[b]``, the on/off state of every gate (optional
edge of an ``add`` node), and ``alive[b]``, the nodes of its real architecture (those on an
input-to-output path of switched-on edges).  The forward pass then computes, for each
example, exactly the sub-network it describes, avoiding two mistakes of the authors' released code:

* a node outside the real architecture outputs exactly zero: its module runs only on the
  examples where it is alive (rows gathered, run, scattered back into zeros), so a conv + batch
  norm cut off from every path cannot leak its batch-norm shift into the logits;
* batch-norm statistics (and running averages) are computed over the alive examples only.

Gates are learnt by REINFORCE with a batch-mean baseline, one Bernoulli logit per gate.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..._errors import BundleLabError
from ..._validation import (
    check_choice,
    check_float,
    check_positive_float,
    check_positive_int,
    checked_keywords,
)
from ...spec import Spec
from ._build import SpecModule
from ._optim import make_optimizer
from ._runtime import (
    evaluate_in_batches,
    median_seconds,
    read_checkpoint,
    resolve_device,
    to_tensors,
)

SUPERNET_FORMAT = "bundlelab.torch-supernet/1"
GATE_OPTIMIZERS = ("adam", "sgd")
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def spec_gates(spec: Spec) -> list[tuple[str, str]]:
    """Every optional edge ``(source_id, target_id)``, in the canonical gate order."""
    return [
        (source, node.id)
        for node in spec.nodes
        for source in node.inputs
        if source in node.optional
    ]


class SuperNetModule(SpecModule):
    """A :class:`SpecModule` whose forward pass switches optional edges per example.

    ``forward(x)`` computes the whole super-network (every edge on), as the plain module;
    ``forward(x, switches, alive)`` computes each example's own sub-network:

    * an in-edge ``u -> v`` carries ``out_u * live`` with ``live[b] = alive[b, u] & alive[b, v]
      & switches[b, j]`` (the last factor for an optional edge ``j`` only): ``out_u`` is already
      zero where ``u`` is dead and rows where ``v`` is dead are never computed, so only the
      gate is applied, to the examples where it is off;
    * node ``v``'s module (and its measured tap) runs on the examples where ``alive[:, v]``;
      the other rows of its output are exactly zero.  When every example is alive the module
      runs on the batch directly; when none is, it does not run.

    One alive example in training mode: its batch-norm layers run with their running statistics
    for that call (and do not update them).  One example gives one value per channel on a 1x1
    map, where batch norm cannot normalise, and on larger maps a per-example normalisation the
    network never sees at evaluation; either way its statistics would be noise.
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        gate_index = {edge: j for j, edge in enumerate(spec_gates(spec))}
        # per node: (position among its inputs, gate index) of each optional in-edge
        self._gated_inputs = [
            [(k, gate_index[(s, node.id)]) for k, s in enumerate(node.inputs) if s in node.optional]
            for node in spec.nodes
        ]
        self._batchnorms = [
            [m for m in self.nodes[self.node_keys[node.id]].modules() if isinstance(m, _BATCHNORMS)]
            for node in spec.nodes
        ]

    def forward(self, x: torch.Tensor, switches: torch.Tensor | None = None,
                alive: torch.Tensor | None = None) -> torch.Tensor:
        if switches is None and alive is None:
            return super().forward(x)
        if switches is None or alive is None:
            raise BundleLabError("SuperNetModule needs both 'switches' and 'alive', or neither")
        batch = x.shape[0]
        # One host copy of the masks: the per-node decisions below then cost no device sync.
        alive_host = alive.detach().to("cpu", torch.bool)
        edge_host = switches.detach().to("cpu", torch.bool)
        switches = switches.to(x.device, torch.bool)
        counts = alive_host.sum(0).tolist()
        outputs: dict[str, torch.Tensor] = {}
        for v, node in enumerate(self.spec.nodes):
            if counts[v] == 0:
                outputs[node.id] = x.new_zeros((batch, *self.spec.shape_of(node.id)))
                continue
            args = [outputs[s] for s in node.inputs] if node.inputs else [x]
            rows_host = alive_host[:, v]
            rows = None
            if counts[v] < batch:
                rows = rows_host.nonzero().squeeze(1).to(x.device)
                args = [a.index_select(0, rows) for a in args]
            for k, j in self._gated_inputs[v]:
                if bool(edge_host[rows_host, j].all()):
                    continue
                on = switches[:, j] if rows is None else switches.index_select(0, rows)[:, j]
                args[k] = torch.where(on.view(-1, *[1] * (args[k].dim() - 1)), args[k], 0.0)
            with self._batch_statistics(v, counts[v]):
                out = self.node_forward(node, args)
            if rows is not None:
                out = out.new_zeros((batch, *out.shape[1:])).index_copy(0, rows, out)
            outputs[node.id] = out
        return outputs[self.spec.output]

    def node_forward(self, node, args: list) -> torch.Tensor:
        """Node ``node``'s module (and its measured tap) on ``args``, for every row."""
        out = self.nodes[self.node_keys[node.id]](*args)
        if node.id in self.layer_names:
            out = getattr(self, self.layer_names[node.id])(out)
        return out

    @contextlib.contextmanager
    def _batch_statistics(self, v: int, n_alive: int):
        """Batch norm from running statistics when one example alone is alive in training."""
        frozen = [bn for bn in self._batchnorms[v] if bn.training] if n_alive == 1 else []
        for bn in frozen:
            bn.train(False)
        try:
            yield
        finally:
            for bn in frozen:
                bn.train(True)


class TorchSuperTrainee:
    """A super-network's weights, gate logits and their two optimizers on one device.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
        The super-network; its gates are the optional edges of its ``add`` nodes.
    config : bundlelab.training.TrainConfig
        ``seed`` seeds the weights (as :func:`build_model`); ``optimizer``, ``learning_rate``
        and ``weight_decay`` make the weights' optimizer; ``device`` places everything.
    gate_init : float, default=3.0
        Initial logit of every gate: ``sigmoid(3) ~ 0.95``, as the authors.
    gate_optimizer : {"adam", "sgd"}, default="adam"
        The gate logits' own optimizer, without weight decay (``"sgd"`` has no momentum).  Adam
        by default because it is invariant to the scale of the gradient: our REINFORCE term is
        a batch *mean* where the authors' code sums over the batch, so plain SGD at their
        learning rate would move the logits ``batch_size`` times slower than theirs.
    gate_learning_rate : float, default=0.01

    Attributes
    ----------
    gates : list of (str, str)
        ``(source_id, target_id)`` of every optional edge, in canonical order (nodes in spec
        order, then each node's inputs in order); gate ``j`` is column ``j`` of ``switches``.
    gate_logits : torch.nn.Parameter, shape (E,)
    model : SuperNetModule
    """

    @checked_keywords
    def __init__(self, spec: Spec, config, *, gate_init: float = 3.0,
                 gate_optimizer: str = "adam", gate_learning_rate: float = 0.01) -> None:
        if not isinstance(spec, Spec):
            raise BundleLabError(
                f"The 'spec' parameter must be a bundlelab.spec.Spec. Got {type(spec).__name__} "
                "instead."
            )
        gate_init = check_float("gate_init", gate_init)
        gate_optimizer = check_choice("gate_optimizer", gate_optimizer, GATE_OPTIMIZERS)
        gate_learning_rate = check_positive_float("gate_learning_rate", gate_learning_rate)
        self.spec, self.config = spec, config
        self.gates = spec_gates(spec)
        self.device = resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = SuperNetModule(spec).to(self.device)
        self.gate_logits = nn.Parameter(
            torch.full((len(self.gates),), float(gate_init), device=self.device)
        )
        self.optimizer = make_optimizer(
            config.optimizer, self.model.parameters(),
            learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        )
        if gate_optimizer == "adam":
            self.gate_optimizer = torch.optim.Adam([self.gate_logits], lr=gate_learning_rate)
        else:
            self.gate_optimizer = torch.optim.SGD([self.gate_logits], lr=gate_learning_rate)

    def gate_probabilities(self) -> np.ndarray:
        """``sigmoid(gate_logits)``, shape ``(E,)``, float64."""
        with torch.no_grad():
            return torch.sigmoid(self.gate_logits.detach().double()).cpu().numpy()

    def train_step(self, x: np.ndarray, y: np.ndarray, switches: np.ndarray, alive: np.ndarray,
                   penalty: np.ndarray, *, reinforce: bool = True) -> dict:
        """One step of both optimizers on a batch of sampled architectures.

        Parameters
        ----------
        x : ndarray, shape (B, *spec.input_shape), float32
        y : ndarray, shape (B,), int
        switches : ndarray, shape (B, E), bool
            The sampled on/off state ``h`` of every gate, for each example.
        alive : ndarray, shape (B, N), bool
            The nodes of each example's real architecture.
        penalty : ndarray, shape (B,), float
            ``lambda * max(0, cost_b - C)``, computed by the core.
        reinforce : bool, default=True
            False: train the weights only (warm-up of the whole super-network); the gate
            logits are left as they are.

        Returns
        -------
        dict
            ``"loss"``: the mean cross-entropy; ``"correct"``: examples classified right;
            ``"n"``: ``B``.

        Notes
        -----
        With ``l_b`` the per-example cross-entropy, ``r_b = -(l_b + penalty_b)`` (detached) and
        ``log p_b = sum_j h_bj log sigmoid(g_j) + (1 - h_bj) log sigmoid(-g_j)``, the loss is
        ``mean_b l_b - mean_b (r_b - mean(r)) log p_b``.
        """
        batch = len(y)
        xt, yt = to_tensors(x, y, self.device)
        edge_t, alive_t = self._masks(switches, alive, (batch,))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.gate_optimizer.zero_grad(set_to_none=True)
        logits = self.model(xt, edge_t, alive_t)
        losses = F.cross_entropy(logits, yt, reduction="none")
        loss = losses.mean()
        if reinforce:
            penalty_t = self._penalty(penalty, batch)
            h = edge_t.to(self.gate_logits.dtype)
            log_p = (h * F.logsigmoid(self.gate_logits)
                     + (1 - h) * F.logsigmoid(-self.gate_logits)).sum(1)
            reward = -(losses.detach() + penalty_t)
            loss = loss - ((reward - reward.mean()) * log_p).mean()
        loss.backward()
        self.optimizer.step()
        if reinforce:
            self.gate_optimizer.step()
        return {"loss": float(losses.detach().mean()),
                "correct": int((logits.detach().argmax(1) == yt).sum()), "n": batch}

    def evaluate(self, x: np.ndarray, y: np.ndarray, switches: np.ndarray, alive: np.ndarray, *,
                 inference_batch_size: int) -> dict[str, float]:
        """Loss and accuracy of one architecture (``switches`` (E,), ``alive`` (N,)), in eval
        mode."""
        batch_size = check_positive_int("inference_batch_size", inference_batch_size)
        switches_one, alive_one = (m[None] for m in self._masks(switches, alive, ()))

        def logits_of(xt):
            n = len(xt)
            return self.model(xt, switches_one.expand(n, -1), alive_one.expand(n, -1))

        return evaluate_in_batches(self.model, x, y, batch_size, self.device, logits_of)

    def save(self, path: str) -> None:
        torch.save({
            "format": SUPERNET_FORMAT, "spec": self.spec.name,
            "gates": [list(edge) for edge in self.gates],
            "model": self.model.state_dict(), "gate_logits": self.gate_logits.detach(),
            "optimizer": self.optimizer.state_dict(),
            "gate_optimizer": self.gate_optimizer.state_dict(),
        }, path)

    def load(self, path: str) -> None:
        state = read_checkpoint(path, self.device, SUPERNET_FORMAT,
                                "PyTorch super-network checkpoint")
        other = BundleLabError(
            f"checkpoint {path} was written for another super-network (spec "
            f"{state.get('spec')!r}), not for {self.spec.name!r}"
        )
        if [tuple(edge) for edge in state.get("gates", ())] != self.gates:
            raise other
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise other from None
        with torch.no_grad():
            self.gate_logits.copy_(state["gate_logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])

    @torch.inference_mode()
    def node_seconds(self, batch_size: int, *, repeats: int = 5) -> np.ndarray:
        """Forward seconds of each node's module alone, shape ``(N,)``; 0 for the input.

        Each module (with its measured tap) runs in eval mode on a random batch of its input
        shape(s), once to warm up and then ``repeats`` times; the median is kept.  On a GPU
        every timing is synchronised.  The latency cost of an architecture sums these over its
        alive nodes.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        repeats = check_positive_int("repeats", repeats)
        generator = torch.Generator().manual_seed(self.config.seed)
        was_training = self.model.training
        self.model.eval()
        seconds = np.zeros(len(self.spec.nodes))
        try:
            for v, node in enumerate(self.spec.nodes):
                if node.op == "input":
                    continue
                args = [
                    torch.randn((batch_size, *self.spec.shape_of(s)), generator=generator)
                    .to(self.device)
                    for s in node.inputs
                ]
                seconds[v] = median_seconds(
                    lambda: self.model.node_forward(node, args), self.device, repeats=repeats
                )
        finally:
            self.model.train(was_training)
        return seconds

    def _masks(self, switches: np.ndarray, alive: np.ndarray, lead: tuple):
        """Bool tensors of ``switches`` (*lead, E) and ``alive`` (*lead, N), checked."""
        switches, alive = np.asarray(switches), np.asarray(alive)
        for name, value, width, axis in (("switches", switches, len(self.gates), "gates"),
                                         ("alive", alive, len(self.spec.nodes), "nodes")):
            if value.shape != (*lead, width):
                raise BundleLabError(
                    f"The {name!r} parameter must have shape {(*lead, width)} (one column per "
                    f"{axis[:-1]}: {width} {axis}). Got {value.shape} instead."
                )
        return (torch.from_numpy(switches.astype(bool)).to(self.device),
                torch.from_numpy(alive.astype(bool)).to(self.device))

    def _penalty(self, penalty: np.ndarray, batch: int) -> torch.Tensor:
        penalty = np.asarray(penalty, dtype=np.float32)
        if penalty.shape != (batch,):
            raise BundleLabError(
                f"The 'penalty' parameter must have shape {(batch,)}. Got {penalty.shape} instead."
            )
        return torch.from_numpy(penalty).to(self.device)
