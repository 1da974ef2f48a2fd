"""Choosing layers by name or glob pattern: one rule for dumps, models and the CLI."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Iterable, Sequence

from ._errors import BundleLabError
from ._validation import checked_keywords

_GLOB_CHARS = set("*?[")


def short_list(names: Sequence[str], limit: int = 12) -> str:
    """The first ``limit`` names, quoted, with a count of the rest."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def unknown_layer_error(name: str, names: Sequence[str], *, where: str) -> BundleLabError:
    """'<where> has no layer X' with the closest names, as one line."""
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = f"layers: {short_list(names)}"
    return BundleLabError(f"{where} has no layer {name!r}: {hint}")


@checked_keywords
def select_layers(
    names: Sequence[str], patterns: Iterable[str] | None, *, where: str = "the model"
) -> list[str]:
    """The layers matching any of ``patterns`` (names or glob patterns), in ``names`` order.

    A comma inside a pattern separates several patterns (``"dense1,block*"``).  An exact layer
    name always matches itself, even if it holds glob characters (``"features[3]"``).  A plain
    name that is not a layer, or a glob that matches none, is a one-line error naming the
    closest layers.  ``patterns=None`` (or empty) selects every layer.

    Parameters
    ----------
    names : sequence of str
        Every layer, in network order.
    patterns : iterable of str, optional
        Layer names or glob patterns (``"block*"``); None or empty selects every layer.
    where : str, default='the model'
        What holds the layers, for error messages (a dump's file name, a model).

    Returns
    -------
    list of str
        The selected names, in ``names`` order.
    """
    if not names:
        raise BundleLabError(f"{where} has no tappable layer")
    if not patterns:
        return list(names)
    wanted: set[str] = set()
    for item in (str(p) for p in patterns):
        for pattern in [item] if item in names else (p.strip() for p in item.split(",")):
            if not pattern:
                continue
            if pattern in names:
                wanted.add(pattern)
            elif _GLOB_CHARS & set(pattern):
                matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
                if not matched:
                    raise BundleLabError(
                        f"the pattern {pattern!r} matches no layer of {where}: "
                        f"layers: {short_list(names, 8)}"
                    )
                wanted.update(matched)
            else:
                raise unknown_layer_error(pattern, names, where=where)
    return [name for name in names if name in wanted]


def announce(summary: str) -> None:
    """Print an audit's layer-selection summary (what it picked, what it left out and why).

    One line on stderr, never stdout: the CLI writes JSON and CSV reports there.
    """
    import sys

    print(f"bundlelab: {summary}", file=sys.stderr, flush=True)
