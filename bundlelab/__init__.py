"""bundlelab: find the layers that hurt a network's training, and search architectures on a budget.

The core works on raw activation arrays (numpy, CuPy, torch tensors) and never imports a
deep-learning framework; framework code lives in :mod:`bundlelab.adapters`.

>>> import numpy as np, bundlelab
>>> result = bundlelab.find_bundles(np.zeros((4, 8), np.float32), [0, 1, 0, 1])
>>> result.n_bundles, result.fully_conflicting, round(result.entropy, 4)
(1, True, 0.6931)
"""

import importlib
from typing import TYPE_CHECKING

from ._errors import BundleLabError, MissingDependencyError

if TYPE_CHECKING:  # type checkers and editors see the names the lazy imports below give
    from .bundles import BundleOptions, analyze_layers, find_bundles
    from .entropy import bundle_entropy
    from .report import BundleReport, LayerResult
    from .streaming import BundleStream, merge_streams
    from .tracker import BundleTracker

__version__ = "0.1.0"

#: public name -> the module defining it, imported on first use (PEP 562): a command line
#: process imports only what its command needs (``bundlelab --version`` no numpy code of ours,
#: ``bundlelab analyze`` no streaming or tracker)
_LAZY = {
    "BundleOptions": ".bundles",
    "analyze_layers": ".bundles",
    "find_bundles": ".bundles",
    "bundle_entropy": ".entropy",
    "BundleReport": ".report",
    "LayerResult": ".report",
    "BundleStream": ".streaming",
    "merge_streams": ".streaming",
    "BundleTracker": ".tracker",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
