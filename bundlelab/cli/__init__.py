"""The ``bundlelab`` command line.

:mod:`._app` owns the typer app, :func:`main`, :func:`run`, the error mapping and the options
shared by several commands; each command group lives in its own module and registers itself on
that app when imported here: ``_analyze`` (analyze, info), ``_audit`` (audit), ``_train``
(train, autotune), ``_search`` (search).  Importing this package is cheap: every heavy import
happens inside the command that needs it.
"""

from ._app import app, main, run
from . import _analyze, _audit, _train, _search  # noqa: F401,E402,I001  (registers them, in help order)

__all__ = ["app", "main", "run"]
