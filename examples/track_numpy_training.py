"""H^l(t) during training, with no framework: a NumPy ReLU MLP trained by SGD on digits.

Trains a wide-shallow and a narrow-deep fully connected net (as in the paper's figure 4) on
scikit-learn's digits, records the bundle entropy of every hidden layer after each epoch with
:class:`bundlelab.BundleTracker`, and writes per-net heatmaps and JSON histories.

    python examples/track_numpy_training.py --epochs 10 --out results/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import bundlelab


def he_init(rng, sizes):
    return [
        (rng.normal(0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)).astype(np.float32), np.zeros(fan_out, np.float32))
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
    ]


def forward(params, x):
    """Hidden activations (after ReLU) and logits."""
    hidden = []
    h = x
    for w, b in params[:-1]:
        h = np.maximum(h @ w + b, 0)
        hidden.append(h)
    w, b = params[-1]
    return hidden, h @ w + b


def sgd_epoch(params, x, y, *, lr, batch_size, rng):
    for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch_size)):
        xb, yb = x[idx], y[idx]
        hidden, logits = forward(params, xb)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = p
        grad[np.arange(len(yb)), yb] -= 1
        grad /= len(yb)
        inputs = [xb] + hidden
        for layer in reversed(range(len(params))):
            w, b = params[layer]
            grad_w, grad_b = inputs[layer].T @ grad, grad.sum(axis=0)
            grad = (grad @ w.T) * (inputs[layer] > 0) if layer else None
            params[layer] = (w - lr * grad_w, b - lr * grad_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target
    for name, width, depth in [("wide-shallow", 64, 3), ("narrow-deep", 4, 12)]:
        rng = np.random.default_rng(0)
        params = he_init(rng, [x.shape[1]] + [width] * depth + [10])
        tracker = bundlelab.BundleTracker(learning_rate=args.lr, batch_size=args.batch_size)
        for epoch in range(args.epochs):
            sgd_epoch(params, x, y, lr=args.lr, batch_size=args.batch_size, rng=rng)
            hidden, logits = forward(params, x)
            amplitude = max(float(np.abs(w).max()) for w, _ in params)
            layers = {f"dense{i + 1}": h for i, h in enumerate(hidden)}
            report = bundlelab.analyze_layers(
                layers, y, learning_rate=args.lr, batch_size=args.batch_size, weight_amplitude=amplitude
            )
            tracker.record(epoch, report)
            accuracy = float((logits.argmax(axis=1) == y).mean())
            print(f"{name:>13} epoch {epoch}: train accuracy {accuracy:.3f}, "
                  f"H^L(t) {report[-1].entropy:.3f}, first conflicting layer "
                  f"{report.first_conflicting.layer if report.first_conflicting else 'none'}")
        args.out.mkdir(parents=True, exist_ok=True)
        tracker.to_json(args.out / f"{name}-history.json")
        tracker.plot(args.out / f"{name}-entropy.png")
        averaged = tracker.time_averaged()
        print(f"{name:>13}: time-averaged bundle entropy of the last layer H^L = {averaged[tracker.layer_names[-1]]:.3f}")


if __name__ == "__main__":
    main()
