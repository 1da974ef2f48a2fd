"""Named factories registered by name and built on demand: the adapters and the training
backends are both found this way, so registering one costs no import."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ._errors import BundleLabError


class Registry:
    """Names -> factories: a zero-argument callable, or a ``"module:attribute"`` string whose
    module is imported on first use.

    Parameters
    ----------
    parameter : str
        The name of the parameter that takes a registered name, for the error message
        (``"backend"``, ``"name"``).
    """

    def __init__(self, parameter: str) -> None:
        self.parameter = parameter
        self._factories: dict[str, str | Callable[[], Any]] = {}

    def register(self, name: str, factory: str | Callable[[], Any]) -> None:
        """Make ``factory`` available under ``name`` (a later registration replaces it)."""
        if not isinstance(name, str) or not name:
            raise BundleLabError(
                f"The 'name' parameter must be a non-empty str. Got {name!r} instead."
            )
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise BundleLabError(
                "The 'factory' parameter must be a callable or a 'module:attribute' string. "
                f"Got {factory!r} instead."
            )
        self._factories[name] = factory

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def create(self, name: str) -> Any:
        """What the factory registered as ``name`` returns."""
        try:
            factory = self._factories[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise BundleLabError(
                f"The {self.parameter!r} parameter must be one of "
                f"{', '.join(map(repr, self.names())) or 'none registered'}. Got {name!r} instead."
            ) from None
        if isinstance(factory, str):
            module_name, _, attribute = factory.partition(":")
            factory = getattr(importlib.import_module(module_name), attribute)
        return factory()
