"""Where Numba caches bundlelab's compiled kernels: a per-user folder, never the package.

Numba's default for ``cache=True`` is the ``__pycache__`` folder beside the source whenever that
folder is writable, which for an installed package is ``site-packages/bundlelab/``.  pip does
not record those files, so ``pip uninstall`` (or ``pip install -e .`` over a regular install)
leaves ``site-packages/bundlelab/`` behind as a bare folder, and Python then imports it as an
empty namespace package that shadows the real one.  So bundlelab's kernels are cached under
the user's cache folder instead (``~/.cache/bundlelab/numba`` on Linux, the platform's
equivalent elsewhere), one subfolder per source folder and bundlelab version.

``NUMBA_CACHE_DIR`` still wins when it is set (Numba's own locator comes first).  If that folder
cannot be written, Numba's next locators are tried as usual.  Only files of the bundlelab
package are redirected; other packages' caches are untouched.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

#: the folder holding the ``bundlelab`` package's source files
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def user_cache_dir() -> Path:
    """The per-user folder for bundlelab's kernel cache (created on first use by Numba)."""
    from .. import __version__

    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bundlelab" / "numba" / __version__


@functools.lru_cache(maxsize=8)
def folder_stamp(folder: Path) -> tuple:
    """``(name, sha256 of the content)`` of every Python file in ``folder``, sorted by name
    (by content, as Numba stamps a kernel's own file: an edit that keeps a file's size and
    time still counts, a copy that only touches the times does not).  Read once per process
    and folder."""
    stamps = []
    for path in sorted(folder.glob("*.py")):
        try:
            stamps.append((path.name, hashlib.sha256(path.read_bytes()).hexdigest()))
        except OSError:
            continue
    return tuple(stamps)


def _locator_class(caching):
    """A Numba cache locator for the functions defined in bundlelab's own files."""
    # Numba's locator base classes are internal (no public hook exists for this); the
    # interface used here (get_cache_path, from_function and the source-file mixin) has been
    # stable since numba 0.49, and install() falls back to Numba's defaults if it changes.
    class BundlelabCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(
                user_cache_dir() / self.get_suitable_cache_subpath(py_file)
            )

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            # Numba stamps a cached kernel with its own file only, but bundlelab's kernels
            # inline functions of their sibling modules (the fingerprint of _hashing.py, the
            # rounding of _formats.py): a change to any of them must recompile the kernels
            return super().get_source_stamp(), folder_stamp(Path(self._py_file).parent)

        @classmethod
        def from_function(cls, py_func, py_file):
            try:
                inside = Path(py_file).resolve().is_relative_to(PACKAGE_DIR)
            except (OSError, ValueError):
                inside = False
            if not inside:
                return None
            return super().from_function(py_func, py_file)

    return BundlelabCacheLocator


def install(module_name: str = "numba.core.caching") -> bool:
    """Put bundlelab's locator right after Numba's ``NUMBA_CACHE_DIR`` locator in the cache
    implementation of ``module_name`` (``numba.core.caching``, or the CUDA target's own caching
    module). Idempotent; returns whether the locator is in place."""
    caching = sys.modules.get(module_name)
    if caching is None:
        import importlib

        try:
            caching = importlib.import_module(module_name)
        except ImportError:
            return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list):
        return False
    if any(getattr(cls, "__name__", "") == "BundlelabCacheLocator" for cls in classes):
        return True
    try:
        locator = _locator_class(caching)
    except AttributeError:
        return False
    user_provided = getattr(caching, "UserProvidedCacheLocator", None)
    index = classes.index(user_provided) + 1 if user_provided in classes else 0
    classes.insert(index, locator)
    return True


install()
