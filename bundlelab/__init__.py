"""bundlelab: find the layers that hurt a network's training, and search architectures on a budget.

The core works on raw activation arrays (numpy, CuPy, torch tensors) and never imports a
deep-learning framework; framework code lives in :mod:`bundlelab.adapters`.

>>> import numpy as np, bundlelab
>>> result = bundlelab.find_bundles(np.zeros((4, 8), np.float32), [0, 1, 0, 1])
>>> result.n_bundles, result.fully_conflicting, round(result.entropy, 4)
(1, True, 0.6931)
"""

from ._errors import BundleLabError, MissingDependencyError
from .bundles import BundleOptions, analyze_layers, find_bundles
from .entropy import bundle_entropy
from .report import BundleReport, LayerResult
from .streaming import BundleStream, merge_streams
from .tracker import BundleTracker

__version__ = "0.1.0"

__all__ = [
    "BundleLabError",
    "BundleOptions",
    "BundleReport",
    "BundleStream",
    "BundleTracker",
    "LayerResult",
    "MissingDependencyError",
    "analyze_layers",
    "bundle_entropy",
    "find_bundles",
    "merge_streams",
]
