"""Option values converted without pydantic, where that gives typer's own value.

typer >= 0.2x converts every option through a pydantic TypeAdapter built on first use:
importing pydantic and building the adapters costs a fresh process about 0.1 s, a quarter of
a small ``bundlelab analyze``.  The plain values a command line gives (a str, an int or float
written in the usual way, a choice, a path) are converted here to exactly what pydantic
returns; anything else (other spellings, a value out of range, an error to word) goes through
typer's own pydantic path, so values and messages stay typer's.  This leans on typer's
private runtime-coercion classes (typer is pinned in constraints.txt); without them nothing
changes.  tests/test_cli_startup.py compares both conversions over every option.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

try:  # typer's runtime coercion (typer >= 0.2x); older typers convert through click, no pydantic
    from typer._coercion import RuntimeParam as _RuntimeParam
    from typer._coercion import build_runtime_param as _build_runtime_param
    from typer._param_types import coerce_cli_choice as _coerce_cli_choice
    from typer._param_types import coerce_cli_path as _coerce_cli_path
    from typer._param_types import routes_to_path as _routes_to_path
except ImportError:  # pragma: no cover - depends on the installed typer
    _RuntimeParam = None

#: integers and decimal numbers as people type them; pydantic reads other spellings too
#: ("+3", "1_000", " 12 ", "inf"), which go to it
_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?")
#: "this value is for pydantic"
_SLOW = object()


def _plain_value(annotation, info, value, ctx, param):
    """``value`` converted as typer's pydantic adapter converts it, or :data:`_SLOW`."""
    if info.parser is not None:
        return _SLOW
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return _coerce_cli_choice(value, choices=tuple(annotation),
                                      case_sensitive=info.case_sensitive, ctx=ctx)
        except ValueError:
            return _SLOW
    if annotation is int or annotation is float:
        if info.clamp:
            return _SLOW
        if type(value) is annotation:
            number = value
        elif type(value) is str and (_INT if annotation is int else _FLOAT).fullmatch(value):
            number = annotation(value)
        else:
            return _SLOW
        if (annotation is float and not math.isfinite(number)) \
                or (info.min is not None and number < info.min) \
                or (info.max is not None and number > info.max):
            return _SLOW
        return number
    if annotation is str:
        return value if type(value) is str else _SLOW
    if (isinstance(annotation, type) and issubclass(annotation, Path)
            and _routes_to_path(annotation, info) and info.path_type in (None, annotation)):
        if type(value) is str:  # what pydantic does with a str for a Path
            value = annotation(value)
        if not isinstance(value, annotation):
            return _SLOW
        try:
            return _coerce_cli_path(value, info, path_type=annotation, param=param, ctx=ctx)
        except Exception:  # noqa: BLE001 - typer words the error, from the value as given
            return _SLOW
    return _SLOW


if _RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainRuntimeParam(_RuntimeParam):
        """typer's runtime coercion of one parameter, plain values first (see above)."""

        descriptor: object = None

        def _coerce_value(self, value, param, ctx):
            annotation = self.annotation
            if typing.get_origin(annotation) is list:  # a repeated option: each item alone
                item_type = typing.get_args(annotation)[0]
                items = value if isinstance(value, (list, tuple)) else [value]
                done = [_plain_value(item_type, self.parameter_info, item, ctx, param)
                        for item in items]
                if not any(item is _SLOW for item in done):
                    return done
            elif typing.get_origin(annotation) is None:
                done = _plain_value(annotation, self.parameter_info, value, ctx, param)
                if done is not _SLOW:
                    return done
            # typer's own conversion (rare: built for this value only, it imports pydantic)
            slow = _build_runtime_param(self.descriptor)
            return slow._coerce_value(value, param=param, ctx=ctx)


def light_coercion(params: list) -> list:
    """Give each typer parameter that has no runtime coercion yet the one above (typer builds
    its own lazily, on the parameter's first value: this runs before)."""
    if _RuntimeParam is None:
        return params
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", True) is not None \
                or descriptor.file_annotation is not None:
            continue
        param._runtime_param = _PlainRuntimeParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
            descriptor=descriptor,
        )
    return params
