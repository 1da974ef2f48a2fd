"""The demo dump: digits through a healthy and a deep narrow ReLU network (numpy only).

The 1,797 8x8 digit images ship with scikit-learn (no download).  Both networks are
random-initialised (He-normal, no training) multi-layer perceptrons; every hidden layer's
ReLU output is saved.  The narrow one loses information layer by layer: whole groups of digits
end up with identical outputs, i.e. in conflicting bundles, until every sample shares one.
"""

from __future__ import annotations

import os

import numpy as np

from .dumps import save_dump

#: network name -> hidden layer widths
NETWORKS = {"healthy": (64,) * 4, "narrow": (3,) * 12}
SEED = 1
DEMO_FILE = "bundlelab-demo.npz"


def demo_activations(seed: int = SEED) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Hidden-layer outputs of both demo networks on the digits, and the digit labels.

    Returns ``({"healthy/dense1": (1797, 64) float32, ..., "narrow/dense12": (1797, 3)}, labels)``.
    """
    layers, labels, _ = _run_demo(seed)
    return layers, labels


def demo_weight_amplitude(seed: int = SEED) -> float:
    """``w`` of the demo: the largest absolute weight of the two demo networks."""
    return _run_demo(seed)[2]


def _run_demo(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    inputs = images / 16.0  # pixel intensities 0..16 -> [0, 1]
    rng = np.random.default_rng(seed)
    layers = {}
    largest = 0.0
    for network, widths in NETWORKS.items():
        hidden = inputs
        for depth, width in enumerate(widths, start=1):
            weights = rng.standard_normal((hidden.shape[1], width)) * np.sqrt(2.0 / hidden.shape[1])
            largest = max(largest, float(np.abs(weights).max()))
            hidden = np.maximum(hidden @ weights, 0.0).astype(np.float32)
            layers[f"{network}/dense{depth}"] = hidden
    return layers, labels.astype(np.int64), largest


def write_demo_dump(directory: str | os.PathLike = ".", *, seed: int = SEED) -> str:
    """Write :data:`DEMO_FILE` into ``directory`` (atomically) and return its path."""
    path = os.path.join(os.fspath(directory), DEMO_FILE)
    layers, labels = demo_activations(seed)
    save_dump(path, layers, labels)
    return path
