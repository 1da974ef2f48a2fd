"""Whether a run shows its progress: on a terminal by default, as the command line does."""

from __future__ import annotations

import sys
from typing import Any

from .._validation import check_bool


def resolve_progress(progress: Any) -> bool:
    """``progress`` as a bool; None (the default of ``fit``, ``autotune``, ``search`` and
    ``sweep``): True when stderr is a terminal, so a script's log files and pipes get no
    progress bars while a person at a terminal sees them."""
    if progress is None:
        stream = sys.stderr
        try:
            return bool(stream is not None and stream.isatty())
        except (AttributeError, ValueError):  # a replaced or closed stderr
            return False
    return check_bool("progress", progress)
