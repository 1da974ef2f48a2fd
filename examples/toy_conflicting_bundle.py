"""Section 3.2 of the paper: training a tiny ReLU net with and without a fully conflicting bundle.

The paper (fig. 2) reports: without a conflicting bundle the net reaches training accuracy ~1.0;
with a fully conflicting bundle each output neuron fires at 1/N_c = 0.5 after 50 epochs, and
output one at 0.66 on 66%/33% data; gradient amplitudes are similar at the start either way.

Toy task: 1000 points x in [0, 1), class 0 iff x < 0.5.  Net: "ReLU activations, two layers and
two neurons per layer followed by softmax and cross-entropy", read as two weight layers,
Linear(1, 2) -> ReLU -> Linear(2, 2) logits -> softmax, so the ReLU output is the hidden layer
whose bundles we measure.  The paper's figure of the weights is not in its text; ours:

* no conflict: ``W1 = (1, -1)``, ``b1 = (0, 1)``: hidden output ``(x, 1 - x)``, distinct per x;
* fully conflicting: the same ``W1``, ``b1 = (-1.5, -0.5)``: both pre-activations are <= -0.5 on
  [0, 1), so every sample's hidden output is (0, 0).  The ReLUs are dead, the first layer gets
  exactly zero gradient, and the bundle never splits;
* both: ``W2 = I``, ``b2 = (0.5, -0.5)``, so the conflicting runs start at softmax 0.73/0.27,
  away from the class prior, and the comparison differs only in ``b1``.

Classes are stratified, 500/500 or 660/340.  Plain SGD, learning rate 0.1, batch size 64 (the
paper's) reaches ~1.0 in 50 epochs.  :func:`bundlelab.find_bundles` gets that learning rate and
batch size and ``w`` = the model's current max |parameter|.  An epoch's gradient norm is the mean
over its steps of the L2 norm of all parameter gradients (``start``: full batch, at t = 0).

    python examples/toy_conflicting_bundle.py --epochs 50 --seed 0 --out results/toy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bundlelab

LR, BATCH_SIZE = 0.1, 64
FIRST_BIAS = {"none": (0.0, 1.0), "full": (-1.5, -0.5)}
RUNS = [("no-conflict balanced", "none", 500), ("conflicting balanced", "full", 500),
        ("conflicting imbalanced", "full", 660)]


def toy_data(n_class0: int, *, n_samples: int = 1000, rng: np.random.Generator):
    """The toy set: ``n_class0`` x uniform in [0, 0.5), the rest in [0.5, 1).

    Returns
    -------
    x : torch.Tensor of float32, shape (n_samples, 1)
    y : torch.Tensor of int64, shape (n_samples,)
        The class, ``x >= 0.5``.
    """
    stratum = np.repeat(np.array([0, 1], np.float32), [n_class0, n_samples - n_class0])
    below_one = np.nextafter(np.float32(1), np.float32(0))  # (1 + u) / 2 can round up to 1
    x = np.minimum((stratum + rng.random(n_samples, dtype=np.float32)) / 2, below_one)
    return torch.from_numpy(x[:, None]), torch.from_numpy((x >= 0.5).astype(np.int64))


def toy_net(conflict: str) -> nn.Sequential:
    """Linear(1, 2) -> ReLU -> Linear(2, 2) with the hand-set weights (module docstring).

    ``conflict='none'``: hidden output ``(x, 1 - x)``; ``'full'``: 0 for every x in [0, 1).
    """
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor(FIRST_BIAS[conflict]))
        net[2].weight.copy_(torch.eye(2))
        net[2].bias.copy_(torch.tensor([0.5, -0.5]))
    return net


def evaluate(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Training accuracy, mean softmax output per class and bundles of the hidden layer.

    Returns
    -------
    dict
        ``train_acc``, ``mean_outputs`` (per class), ``n_bundles``, ``n_conflicting``, ``entropy``
        (H^L(t), nats), ``fully_conflicting`` and ``weight_amplitude`` (the ``w`` used).
    """
    with torch.no_grad():
        hidden = net[1](net[0](x))
        probs = torch.softmax(net[2](hidden), dim=1)
        w = max(p.abs().max().item() for p in net.parameters())
    bundles = bundlelab.find_bundles(hidden, y.numpy(), learning_rate=LR, batch_size=BATCH_SIZE,
                                     weight_amplitude=w, layer="hidden")
    return {"train_acc": (probs.argmax(1) == y).float().mean().item(),
            "mean_outputs": probs.mean(0).tolist(), "n_bundles": bundles.n_bundles,
            "n_conflicting": bundles.n_conflicting, "entropy": bundles.entropy,
            "fully_conflicting": bundles.fully_conflicting, "weight_amplitude": w}


def gradient_norm(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """L2 norm of all parameter gradients of the cross-entropy on (x, y); kept in ``.grad``."""
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    return torch.sqrt(sum((p.grad ** 2).sum() for p in net.parameters())).item()


def train(conflict: str, n_class0: int, *, epochs: int, seed: int) -> dict:
    """Train one run with plain SGD (lr ``LR``, batches of ``BATCH_SIZE``, reshuffled per epoch).

    ``conflict`` picks the initialisation (:func:`toy_net`), ``n_class0`` the class-0 samples out
    of 1000; ``seed`` seeds the data, the shuffling and torch.

    Returns
    -------
    dict
        ``start`` (:func:`evaluate` at the hand-set weights, plus ``full_batch_grad_norm``),
        ``history`` (per epoch: :func:`evaluate` plus ``grad_norm``), ``end`` (the last epoch's
        bundles) and summary numbers.
    """
    torch.manual_seed(seed)
    x, y = toy_data(n_class0, rng=np.random.default_rng(seed))
    net = toy_net(conflict)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    shuffle = torch.Generator().manual_seed(seed)
    start, history = {**evaluate(net, x, y), "full_batch_grad_norm": gradient_norm(net, x, y)}, []
    for _ in range(epochs):
        norms = []
        for idx in torch.randperm(len(x), generator=shuffle).split(BATCH_SIZE):
            norms.append(gradient_norm(net, x[idx], y[idx]))
            optimizer.step()
        history.append({**evaluate(net, x, y), "grad_norm": float(np.mean(norms))})
    end = history[-1]
    return {"conflict": conflict, "class_counts": [n_class0, len(x) - n_class0], "start": start,
            "final_train_acc": end["train_acc"], "final_mean_outputs": end["mean_outputs"],
            "first_epoch_grad_norm": history[0]["grad_norm"], "history": history,
            "end": {k: end[k] for k in ("n_bundles", "n_conflicting", "entropy",
                                        "fully_conflicting")}}


def plot(results: dict, path: Path) -> None:
    """Save accuracy and mean outputs (top), gradient norm (bottom), one column per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 6), sharex=True,
                             sharey="row", squeeze=False)
    for col, (name, run) in enumerate(results.items()):
        epochs = np.arange(1, len(run["history"]) + 1)
        outputs = np.array([h["mean_outputs"] for h in run["history"]])
        top, bottom = axes[0, col], axes[1, col]
        top.plot(epochs, [h["train_acc"] for h in run["history"]], "k-", label="train accuracy")
        top.plot(epochs, outputs[:, 0], "C0--", label="mean softmax, class 0")
        top.plot(epochs, outputs[:, 1], "C1--", label="mean softmax, class 1")
        top.set_ylim(0, 1.05)
        top.set_title(f"{name}\nH(hidden) start {run['start']['entropy']:.3f}, "
                      f"end {run['end']['entropy']:.3f}", fontsize=10)
        bottom.plot(epochs, [h["grad_norm"] for h in run["history"]], "C3-")
        bottom.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].set_ylabel("gradient L2 norm (epoch mean)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/toy"))
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")

    torch.set_num_threads(1)  # a net of ten parameters: more threads only add overhead
    results = {name: train(conflict, n0, epochs=args.epochs, seed=args.seed)
               for name, conflict, n0 in RUNS}
    reference = results[RUNS[0][0]]["first_epoch_grad_norm"]
    print(f"{'run':<24}{'bundles start->end':>19}{'H start->end':>15}{'train acc':>10}"
          f"{'mean outputs':>14}{'grad t=0':>10}{'grad ep1':>10}{'ratio':>7}")
    for name, run in results.items():
        run["first_epoch_grad_norm_ratio"] = run["first_epoch_grad_norm"] / reference
        s, e = run["start"], run["end"]
        outputs = "/".join(f"{p:.3f}" for p in run["final_mean_outputs"])
        print(f"{name:<24}{s['n_bundles']:>10} -> {e['n_bundles']:<5}"
              f"{s['entropy']:>6.3f} -> {e['entropy']:<5.3f}{run['final_train_acc']:>10.3f}"
              f"{outputs:>14}{s['full_batch_grad_norm']:>10.3f}"
              f"{run['first_epoch_grad_norm']:>10.3f}{run['first_epoch_grad_norm_ratio']:>7.2f}")
    document = {"epochs": args.epochs, "seed": args.seed, "optimizer": "SGD", "learning_rate": LR,
                "batch_size": BATCH_SIZE, "runs": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy-results.json").write_text(json.dumps(document, indent=1) + "\n",
                                               encoding="utf-8")
    plot(results, args.out / "toy-training.png")
    print(f"wrote {args.out / 'toy-results.json'} and {args.out / 'toy-training.png'}")


if __name__ == "__main__":
    main()
