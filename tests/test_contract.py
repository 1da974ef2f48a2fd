"""Contract tests over every public callable, in the style of scikit-learn's ``test_common.py``.

Every function and class listed in the ``__all__`` of a public package (adapters only where
their framework imports) must:

* take its options keyword-only after the data (``def f(x, y, *, lr=1e-3)``): a parameter with
  a default may be positional only when it names where data lives (``path``, ``root``); a
  configuration dataclass (every field has a default) is keyword-only as a whole, while a
  record dataclass (required fields, e.g. ``Node``) takes its fields positionally;
* document its parameters in a numpydoc ``Parameters`` section (``Attributes`` for a record
  dataclass, whose fields are its parameters), naming each of them;
* refuse an unknown keyword at the call with a one-line :class:`bundlelab.BundleLabError` that
  names it (for a class: its constructor), instead of a raw ``TypeError`` or a failure later.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

from bundlelab import BundleLabError

MODULES = (
    "bundlelab",
    "bundlelab.spec",
    "bundlelab.io",
    "bundlelab.datasets",
    "bundlelab.kernels",
    "bundlelab.search",
    "bundlelab.training",
    "bundlelab.adapters",
    "bundlelab.adapters.torch",
    "bundlelab.adapters.onnx",
    "bundlelab.adapters.keras",
)

#: parameters that may stay positional although they have a default: data, not options
DATA_WITH_DEFAULT = frozenset({"path", "root", "labels"})
#: callable -> parameters with a default that are its data all the same
DATA_EXCEPTIONS = {
    "bundlelab.BundleReport": {"params"},  # the options that produced the report: its content
    "bundlelab.spec.conv_net": {"depth"},  # the preset, or keyword-only ``blocks`` instead
}

BOGUS = "not_a_parameter_xyz"


def _public_callables() -> list[tuple[str, object]]:
    found: dict[int, tuple[str, object]] = {}
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if module_name.count(".") < 2:  # the core and the adapter registry always import
                raise
            continue  # an adapter whose framework is not installed here
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # constants, registries
            if inspect.isclass(obj) and (
                issubclass(obj, BaseException)
                or getattr(obj, "_is_protocol", False)  # typing.Protocol: not instantiable
                or inspect.isabstract(obj)
            ):
                continue
            found.setdefault(id(obj), (f"{module_name}.{name}", obj))
    return sorted(found.values())


CALLABLES = _public_callables()
IDS = [name for name, _ in CALLABLES]


def _signature(obj) -> inspect.Signature:
    return inspect.signature(obj)  # for a class: its constructor's, without self


def _parameters(obj) -> list[inspect.Parameter]:
    return list(_signature(obj).parameters.values())


def _is_record(obj) -> bool:
    """A dataclass with required fields: its fields are its data."""
    return dataclasses.is_dataclass(obj) and any(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in dataclasses.fields(obj)
        if f.init
    )


def _docstring(obj) -> str:
    text = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and obj.__init__ is not object.__init__:
        text += "\n" + (inspect.getdoc(obj.__init__) or "")
    return text


def _section(text: str, title: str) -> str | None:
    """The body of a numpydoc section (``title`` underlined with dashes), or None."""
    match = re.search(rf"^{title}\n-{{3,}}\n(.*?)(?=^\S[^\n]*\n-{{3,}}\n|\Z)", text, re.S | re.M)
    return match.group(1) if match else None


@pytest.mark.parametrize("name, obj", CALLABLES, ids=IDS)
def test_options_after_the_data_are_keyword_only(name, obj):
    if _is_record(obj):
        return
    if dataclasses.is_dataclass(obj):
        positional = [p.name for p in _parameters(obj) if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert not positional, f"{name}: configuration fields must be keyword-only: {positional}"
        return
    options = [
        p.name
        for p in _parameters(obj)
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is not p.empty
        and p.name not in DATA_WITH_DEFAULT | DATA_EXCEPTIONS.get(name, set())
    ]
    assert not options, f"{name}: options must be keyword-only (after '*'): {options}"


@pytest.mark.parametrize("name, obj", CALLABLES, ids=IDS)
def test_parameters_are_documented(name, obj):
    parameters = [p.name for p in _parameters(obj)]
    if not parameters:
        return
    text = _docstring(obj)
    section = _section(text, "Parameters")
    if section is None and _is_record(obj):
        section = _section(text, "Attributes")
    assert section is not None, f"{name}: the docstring has no numpydoc 'Parameters' section"
    missing = [p for p in parameters if not re.search(rf"(^|[\s,*]){re.escape(p)}\b", section)]
    assert not missing, f"{name}: parameters missing from the 'Parameters' section: {missing}"


@pytest.mark.parametrize("name, obj", CALLABLES, ids=IDS)
def test_an_unknown_keyword_is_a_one_line_error(name, obj):
    required = [
        p for p in _parameters(obj)
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    keyword_only = {
        p.name: None for p in _parameters(obj) if p.default is p.empty and p.kind is p.KEYWORD_ONLY
    }
    with pytest.raises(BundleLabError) as exc:
        obj(*[None] * len(required), **keyword_only, **{BOGUS: 1})
    message = str(exc.value)
    assert BOGUS in message, f"{name}: the error does not name the unknown keyword: {message}"
    assert "\n" not in message.strip(), f"{name}: the error is not one line: {message!r}"


def test_the_walk_finds_the_core_entry_points():
    names = set(IDS)
    for expected in (
        "bundlelab.find_bundles",
        "bundlelab.BundleTracker",
        "bundlelab.spec.conv_net",
        "bundlelab.io.analyze_dump",
        "bundlelab.datasets.load_dataset",
        "bundlelab.kernels.get_kernel_backend",
    ):
        assert expected in names


@pytest.mark.parametrize(
    "module_name",
    [
        "bundlelab",
        "bundlelab.bundles",
        "bundlelab.entropy",
        "bundlelab.streaming",
        "bundlelab.tracker",
        "bundlelab.io.dumps",
        "bundlelab.datasets._load",
        "bundlelab.spec",
        "bundlelab.spec._graph",
        "bundlelab.spec._presets",
    ],
)
def test_docstring_examples_run(module_name):
    import doctest

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.failed == 0 and result.attempted > 0, module_name
