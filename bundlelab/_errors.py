"""The one error type bundlelab raises for bad input.

Public entry points validate at the boundary and raise :class:`BundleLabError` with a single
line that names the problem and, where possible, the fix.  The CLI prints that line and exits
with status 2 instead of showing a traceback.
"""


class BundleLabError(ValueError):
    """Bad input or a failed operation, described in one line for the user."""
