"""Which taps an audit measures: the expert default, ``'all'``, ``'blocks'`` or names and globs,
and the one-line summary of what was picked and what was left out."""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

from ..._errors import BundleLabError
from ..._selection import select_layers
from ._taps import Tap

_GLOB_CHARS = set("*?[")


def select_taps(taps: Sequence[Tap], layers: Any, *, all_nodes: bool, where: str,
                skipped: Sequence[tuple[str, tuple]] = ()) -> tuple[list[Tap], str]:
    """(the selected taps in graph order, the summary line).

    ``taps`` are the per-sample float taps (activations, gates, softmaxes or every node's,
    then block outputs); ``skipped`` the (layer, shape) pairs left out because their first
    axis is not the batch."""
    nodes = [tap for tap in taps if tap.kind != "block"]
    blocks = [tap for tap in taps if tap.kind == "block"]
    skip_note = _skipped_note(skipped)
    if layers == "blocks":
        if not blocks:
            raise BundleLabError(
                f"{where} has no repeated blocks: its node names carry no module scopes with "
                "numbered children (layer1.0, blocks.3, ...); pass layer names or globs "
                "(layers=[...], CLI: --layers)"
            )
        return blocks, (f"{_plural(len(blocks), 'block output')} tapped ({_span(blocks)})"
                        f"{skip_note}")
    if all_nodes:
        chosen = nodes if layers is None or layers == "all" else _by_pattern(
            nodes, layers, where, skipped=skipped)
        of = f" of {len(nodes)}" if len(chosen) < len(nodes) else ""
        return chosen, f"{len(chosen)}{of} node outputs tapped{skip_note}"
    if layers == "all":
        return nodes, f"{_plural(len(nodes), 'layer')} tapped ({_counts(nodes)}){skip_note}"
    if layers is None:
        chosen = [tap for tap in nodes if tap.kind == "activation"]
        if not chosen:
            raise BundleLabError(_no_activation(where, nodes))
        left = [tap for tap in nodes if tap.kind != "activation"]
        text = f"{_plural(len(chosen), 'activation')} tapped ({_ops(chosen)})"
        if left:
            text += f"; {_counts(left)} left out (layers='all' keeps them)"
        return chosen, text + skip_note
    chosen = _by_pattern(nodes, layers, where, skipped=skipped)
    return chosen, (f"{_plural(len(chosen), 'layer')} selected by name ({_counts(chosen)})"
                    f"{skip_note}")


def _by_pattern(taps: Sequence[Tap], layers: Any, where: str,
                skipped: Sequence[tuple[str, tuple]] = ()) -> list[Tap]:
    """Taps whose name, tensor (with or without its leading ``/``) or torch module matches
    a pattern; a pattern that matches none is :func:`select_layers`' one-line error."""
    patterns = [layers] if isinstance(layers, str) else list(layers)
    names = [tap.layer for tap in taps]
    shapes = dict(skipped)
    wanted: set[str] = set()
    for item in (str(p) for p in patterns):
        for pattern in [item] if item in names else (p.strip() for p in item.split(",")):
            if not pattern:
                continue
            if pattern in shapes:
                raise BundleLabError(
                    f"{where}: layer {pattern!r} outputs shape {shapes[pattern]} for a probe "
                    "batch: its first axis is not the batch; leave it out"
                )
            # an exact name is taken literally, even when it holds glob characters
            matched = [tap.layer for tap in taps if pattern in (tap.layer, *tap.aliases)]
            if not matched and _GLOB_CHARS & set(pattern):
                matched = [tap.layer for tap in taps if any(
                    fnmatch.fnmatchcase(name, pattern) for name in (tap.layer, *tap.aliases))]
            if not matched:
                select_layers(names, [pattern], where=where)  # raises, naming close layers
            wanted.update(matched)
    return [tap for tap in taps if tap.layer in wanted]


_KIND_NAMES = {"gate": "squeeze-excitation tap", "attention": "attention softmax",
               "activation": "activation", "node": "node output"}


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-7] + 'softmaxes' if noun.endswith('softmax') else noun + 's'}"


def _counts(taps: Sequence[Tap]) -> str:
    counts: dict[str, int] = {}
    for tap in taps:
        counts[tap.kind] = counts.get(tap.kind, 0) + 1
    return ", ".join(_plural(n, _KIND_NAMES.get(kind, kind)) for kind, n in counts.items())


def _ops(taps: Sequence[Tap]) -> str:
    counts: dict[str, int] = {}
    for tap in taps:
        counts[tap.op_type] = counts.get(tap.op_type, 0) + 1
    return ", ".join(f"{n} {op}" for op, n in counts.items())


def _span(taps: Sequence[Tap]) -> str:
    return taps[0].layer if len(taps) == 1 else f"{taps[0].layer} ... {taps[-1].layer}"


def _skipped_note(skipped: Sequence[tuple[str, tuple]]) -> str:
    if not skipped:
        return ""
    shown = ", ".join(f"{name!r} {tuple(shape)}" for name, shape in skipped[:3])
    more = f", ... ({len(skipped) - 3} more)" if len(skipped) > 3 else ""
    what = "tensor skipped, its" if len(skipped) == 1 else "tensors skipped, their"
    return f"; {len(skipped)} {what} first axis is not the batch: {shown}{more}"


def _no_activation(where: str, others: Sequence[Tap]) -> str:
    if others:
        return (f"{where} has no activation outside gating branches ({_counts(others)}): "
                "layers='all' measures them")
    return (f"{where} has no tappable layer: no activation node (Relu, Sigmoid, Tanh, Gelu, "
            "...) outputs a hidden tensor; tap every node's outputs with all_nodes=True")

