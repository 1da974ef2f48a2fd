"""Import Keras 3 for the Keras modules, with a backend that is installed.

Keras picks its backend from ``KERAS_BACKEND`` and defaults to TensorFlow, so on a machine
with Keras and PyTorch but no TensorFlow a plain ``import keras`` fails deep inside Keras.
When the user has not chosen, and TensorFlow is absent, this picks PyTorch (else JAX).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from .._errors import BundleLabError

#: backends tried, in order, when KERAS_BACKEND is unset and TensorFlow is not installed
FALLBACK_BACKENDS = (("torch", "torch"), ("jax", "jax"))


def import_keras(purpose: str):
    """The ``keras`` module; ``purpose`` ("the Keras adapter", ...) words the errors."""
    if importlib.util.find_spec("keras") is None:
        raise BundleLabError(
            f"{purpose} requires Keras 3. You can install it with `pip install 'bundlelab[keras]'`"
        )
    if ("keras" not in sys.modules and "KERAS_BACKEND" not in os.environ
            and importlib.util.find_spec("tensorflow") is None):
        for backend, module in FALLBACK_BACKENDS:
            if importlib.util.find_spec(module) is not None:
                os.environ["KERAS_BACKEND"] = backend
                break
    try:
        import keras
    except ImportError as exc:
        raise BundleLabError(
            f"Keras could not load its backend {os.environ.get('KERAS_BACKEND', 'tensorflow')!r} "
            f"({exc}); set KERAS_BACKEND to an installed one: torch, jax or tensorflow"
        ) from None
    return keras
