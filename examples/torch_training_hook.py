"""Figure 4 of the paper, small: H^l(t) of PyTorch MLPs while they train on digits.

A plain PyTorch loop trains a wide-shallow and a narrow-deep ReLU MLP on scikit-learn's digits;
one line per epoch (``hook()``, which counts the epochs completed: t = 1, 2, ...) records the
bundle entropy of every hidden layer. Writes a heatmap and the JSON history per network.

    python examples/torch_training_hook.py --epochs 10 --out results/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from bundlelab.adapters.torch import BundleHook


def mlp(width: int, depth: int) -> nn.Sequential:
    layers, fan_in = [], 64
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, width, depth in [("wide-shallow", 64, 3), ("narrow-deep", 4, 12)]:
        torch.manual_seed(0)
        model = mlp(width, depth)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        hook = BundleHook(model, loader, optimizer=optimizer, train_loader=loader)
        for _ in range(args.epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
            report = hook()  # t = hook.epochs, the epochs completed
            with torch.no_grad():
                accuracy = (model(x).argmax(1) == y).float().mean().item()
            first = report.first_conflicting
            print(f"{name:>13} epoch {hook.epochs}: train accuracy {accuracy:.3f}, H^L(t) "
                  f"{report[-1].entropy:.3f}, first conflicting layer {first.layer if first else 'none'}")
        hook.tracker.to_json(args.out / f"torch-{name}-history.json")
        hook.tracker.plot(args.out / f"torch-{name}-entropy.png")


if __name__ == "__main__":
    main()
