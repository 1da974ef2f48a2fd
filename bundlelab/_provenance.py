"""Where the numbers of a report came from: ``params["sources"]``.

A count of bundles means little without ``w``, ``alpha``, ``|B|`` and the update format, and
each of them may have been given by the caller, read from the model, or assumed.  Every report
of several layers (``analyze_layers``, ``measure_bundles``, ``BundleTracker``) says which, in
``params["sources"]``: the keys of :data:`SOURCE_KEYS`, each mapped to a short text such as
``"given"``, ``"default"``, ``"model parameters"``, ``"optimizer"``, ``"train loader"`` or
``"assumed (float16 activations)"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import BundleLabError
from ._validation import short_repr

#: the parameters whose origin a report states
SOURCE_KEYS = ("learning_rate", "batch_size", "weight_amplitude", "update_format")
#: longest source text accepted (it is printed in a table header)
MAX_SOURCE_LENGTH = 80
#: activation formats whose "auto" update format is an assumption (float32 master weights)
NARROW_FORMATS = ("float16", "bfloat16")


def check_sources(sources: Any) -> dict[str, str]:
    """``sources`` as a plain dict, or a one-line error naming the bad key or value."""
    if sources is None:
        return {}
    if not isinstance(sources, Mapping):
        raise BundleLabError(
            f"sources must be a mapping of {', '.join(SOURCE_KEYS)} -> short text; got "
            f"{type(sources).__name__}"
        )
    checked = {}
    for key, text in sources.items():
        if key not in SOURCE_KEYS:
            raise BundleLabError(
                f"sources has an unknown key {short_repr(key, 40)}; expected some of "
                f"{', '.join(SOURCE_KEYS)}"
            )
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SOURCE_LENGTH:
            raise BundleLabError(
                f"sources[{key!r}] must be a non-empty text of at most {MAX_SOURCE_LENGTH} "
                f"characters, e.g. 'given' or 'optimizer'; got {short_repr(text, 40)}"
            )
        checked[key] = text.strip()
    return checked


def assumed_update_format(requested: str | None, activation_dtypes: Iterable[str]) -> str | None:
    """``"assumed (float16 activations)"`` when an ``"auto"`` update format was resolved to
    float32 for narrow activations (the dtypes in order of first appearance), else None
    (also for ``requested=None``: threshold mode, where no update format is used)."""
    if requested != "auto":
        return None
    narrow = list(dict.fromkeys(d for d in activation_dtypes if d in NARROW_FORMATS))
    return f"assumed ({', '.join(narrow)} activations)" if narrow else None


def report_sources(
    given: Iterable[str], caller: Mapping[str, str], requested_update_format: str | None,
    activation_dtypes: Iterable[str],
) -> dict[str, str]:
    """The ``sources`` of a report: the caller's texts first, then ``"given"`` for the keywords
    in ``given`` and ``"default"`` for the rest; an ``"auto"`` update format resolved for narrow
    activations says it was assumed unless the caller named its source."""
    given = set(given)
    sources = {key: caller.get(key) or ("given" if key in given else "default")
               for key in SOURCE_KEYS}
    assumed = assumed_update_format(requested_update_format, activation_dtypes)
    if assumed and "update_format" not in caller:
        sources["update_format"] = assumed
    return sources
