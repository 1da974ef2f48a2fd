"""The ``bundlelab`` command line.

:mod:`._app` owns the typer app, :func:`main`, :func:`run`, the error mapping and the options
shared by several commands; each command group lives in its own module and registers itself on
that app when imported: ``_analyze`` (analyze, info), ``_audit`` (audit), ``_train`` (train,
autotune), ``_search`` (search).  :func:`run` imports only the module of the command it runs
(``_app.load_commands``), and every heavy import happens inside the command that needs it, so
a command pays for no other command's code.  ``bundlelab.cli.app`` is the app with every
command registered.
"""

from ._app import main, run


def __getattr__(name: str):
    if name == "app":  # every command registered (PEP 562: imported on first use)
        from ._app import load_commands

        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main", "run"]
