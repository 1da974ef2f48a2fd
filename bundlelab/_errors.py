"""The error types bundlelab raises.

Public entry points validate at the boundary and raise :class:`BundleLabError` with a single
line that names the problem and, where possible, the fix.  The CLI prints that line and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class BundleLabError(ValueError):
    """Bad input or a failed operation, described in one line for the user."""


class MissingDependencyError(BundleLabError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that
    brings it.  Being an ``ImportError`` too, ``except ImportError`` keeps working."""


def require(module: str, *, purpose: str, extra: str | None = None,
            package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying how to install it.

    Parameters
    ----------
    module : str
        The module to import, e.g. ``"matplotlib.pyplot"``.
    purpose : str
        What needs it, as the start of the message: ``"plotting"``, ``"reading HDF5 dumps"``.
    extra : str, optional
        The bundlelab extra that brings it (``"plot"`` -> ``pip install 'bundlelab[plot]'``).
    package : str, optional
        The PyPI name when there is no extra (default: the top-level module name).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"'bundlelab[{extra}]'" if extra else (package or module.split(".")[0])
        raise MissingDependencyError(
            f"{purpose} requires {package or module.split('.')[0]}. You can install it with "
            f"`pip install {hint}`"
        ) from exc
