"""Import Keras 3 with a backend that is installed.

Keras picks its backend from ``KERAS_BACKEND``, else from ``~/.keras/keras.json``, and defaults
to TensorFlow, so on a machine with Keras and PyTorch but no TensorFlow a plain ``import keras``
fails deep inside Keras.  When the backend chosen that way is TensorFlow and TensorFlow is not
installed, :func:`import_keras` sets ``KERAS_BACKEND`` to PyTorch (else JAX) before the first
import.  A Keras imported before bundlelab keeps the backend it was imported with.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from ..._errors import BundleLabError, MissingDependencyError, require

#: backends tried, in order, when the configured one is TensorFlow and it is not installed
FALLBACK_BACKENDS = ("torch", "jax")


def _configured_backend() -> str:
    """The backend Keras would load: ``KERAS_BACKEND``, else its config file, else TensorFlow."""
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return str(json.load(file).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _choose_backend() -> None:
    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    if _configured_backend() != "tensorflow" or importlib.util.find_spec("tensorflow"):
        return
    for backend in FALLBACK_BACKENDS:
        if importlib.util.find_spec(backend) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return


def import_keras(purpose: str):
    """The ``keras`` module, on an installed backend.

    Parameters
    ----------
    purpose : str
        What needs Keras (``"the Keras adapter"``), the start of the error message.

    Raises
    ------
    bundlelab.MissingDependencyError
        Keras is not installed (the message says ``pip install 'bundlelab[keras]'``), or its
        backend cannot be loaded (the message says how to choose another one).
    bundlelab.BundleLabError
        ``KERAS_BACKEND`` names no Keras backend.
    """
    _choose_backend()
    hint = "set KERAS_BACKEND to an installed one: torch, jax or tensorflow"
    try:
        return require("keras", purpose=purpose, extra="keras")
    except MissingDependencyError as error:
        if importlib.util.find_spec("keras") is None:
            raise
        raise MissingDependencyError(
            f"{purpose} could not load Keras' backend {_configured_backend()!r} "
            f"({error.__cause__}); {hint}"
        ) from None
    except ValueError as error:  # Keras' answer to a backend name it does not know
        raise BundleLabError(f"{purpose}: {error}; {hint}") from None


keras = import_keras("the Keras adapter")
