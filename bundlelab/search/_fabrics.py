"""Super-networks of the budgeted search, written in the spec language.

A super-network is an ordinary :class:`bundlelab.spec.Spec` whose ``add`` nodes have optional
input edges: each optional edge is a gate the search learns to keep or drop.  Every node is one
computation of the paper's graph (a transformation, an aggregation, the stem, the output), so
node counts, costs and rounds match the paper's.  Aggregations (``add`` with ReLU) are
measured layers, so an extracted network is audited for conflicting bundles at its aggregations.

Two families (Veniat & Denoyer, CVPR 2018, and its supplementary):

* :func:`resnet_fabric`: ``k`` groups of ``n`` basic blocks with the extra cross-group
  connections; ResNet-(6n+2) is the sub-network without them (``extra=False``).
* :func:`conv_fabric`: the convolutional neural fabric, ``columns`` x ``scales``.
"""

from __future__ import annotations

import math

from .._errors import BundleLabError
from .._validation import (
    check_bool,
    check_positive_float,
    check_positive_int,
    checked_keywords,
    short_repr,
)
from ..spec import Node, Spec
from ..spec._graph import check_spec_size

RESNET_FILTERS = (16, 32, 64)


def _shape(input_shape) -> tuple:
    try:
        shape = tuple(check_positive_int("input_shape", d) for d in input_shape)
    except (TypeError, BundleLabError):
        shape = ()
    if len(shape) != 3:
        raise BundleLabError(
            "The 'input_shape' parameter must be (channels, height, width), three ints >= 1. "
            f"Got {short_repr(input_shape)} instead."
        )
    return shape


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


@checked_keywords
def resnet_fabric(n: int, *, k: int = 3, filters: tuple = RESNET_FILTERS, extra: bool = True,
                  width_multiplier: float = 1.0, input_shape: tuple = (3, 32, 32),
                  n_classes: int = 10, name: str | None = None) -> Spec:
    """The ResNet fabric of ``k`` groups of ``n`` blocks; ``extra=False`` gives ResNet-(6n+2).

    Stem: ``stem`` (3x3 conv, BN, ReLU).  Block ``j`` of group ``g`` (ids ``g{g}b{j}``, 1-based):
    the branch ``g{g}b{j}.branch`` (3x3 conv with stride 2 in the first block of groups after
    the first, BN, ReLU, 3x3 conv, BN), the shortcut (the identity edge, or ``g{g}b{j}.proj``: a
    1x1 conv with stride and BN where the shape changes) and the aggregation ``g{g}b{j}``: ReLU
    of the sum, measured.  Output: ``head``, global average pooling and a dense layer.

    With ``extra``, each block of groups after the first also receives from 2 (first and last
    block) or 3 (other blocks) positions of the previous group: for block ``j`` (0-based) and
    mirror ``i = n - 1 - j``, positions ``i - 1`` always, ``i`` if ``j != 0`` and ``i - 2`` if
    ``j != n - 1``, where position ``m`` is the output of block ``m`` of the previous group and
    ``-1`` that group's input.  Each such source feeds the block's aggregation through a basic
    block (``...from{source}.branch``) and a 1x1 projection (``...from{source}.proj``), both
    with the stride of the resolution ratio.

    Gates: every branch and projection edge into an aggregation; the stem, the aggregations,
    the identity shortcuts and the head are always on.

    Parameters
    ----------
    n : int
        Blocks per group: 3, 5, 7, 9, 18 contain ResNet-20, 32, 44, 56, 110.
    k : int, default=3
    filters : tuple of k ints, default=(16, 32, 64)
    extra : bool, default=True
    width_multiplier : float, default=1.0
    input_shape : (channels, height, width), default=(3, 32, 32)
    n_classes : int, default=10
    name : str, optional

    >>> from bundlelab.spec import layer_count
    >>> layer_count(resnet_fabric(3, extra=False))  # 19 convs in branches+stem, the head
    20
    """
    n = check_positive_int("n", n)
    k = check_positive_int("k", k)
    width_multiplier = check_positive_float("width_multiplier", width_multiplier)
    extra = check_bool("extra", extra)
    n_classes = check_positive_int("n_classes", n_classes)
    try:
        filters = tuple(check_positive_int("filters", f) for f in filters)
    except (TypeError, BundleLabError):
        filters = ()
    if len(filters) != k:
        raise BundleLabError(
            f"The 'filters' parameter must hold k={k} ints >= 1. Got {short_repr(filters)} instead."
        )
    input_shape = _shape(input_shape)
    check_spec_size(2 * k * n, what=f"resnet_fabric({n}, k={k})", at_least=True)
    widths = [_scaled(f, width_multiplier) for f in filters]
    nodes = [Node("input", "input"),
             Node("stem", "conv_bn", {"filters": widths[0], "activation": "relu"}, ("input",))]
    # position -> (node id, group it belongs to); group -1 is the stem
    previous_positions: dict[int, str] = {}
    group_of: dict[str, int] = {"stem": -1}
    width_of: dict[str, int] = {"stem": widths[0]}
    last = "stem"
    for g in range(k):
        positions = {-1: last}
        for j in range(n):
            block = f"g{g + 1}b{j + 1}"
            stride = 2 if (g > 0 and j == 0) else 1
            inputs, optional = [], []

            def transform(source: str, tag: str, stride: int) -> None:
                branch = Node(f"{block}{tag}.branch", "branch",
                              {"filters": widths[g], "stride": stride}, (source,))
                nodes.append(branch)
                inputs.append(branch.id)
                optional.append(branch.id)

            transform(last, "", stride)
            if stride == 1 and width_of[last] == widths[g]:
                inputs.append(last)  # identity shortcut: always on
            else:
                proj = Node(f"{block}.proj", "conv_bn",
                            {"filters": widths[g], "kernel_size": 1, "stride": stride}, (last,))
                nodes.append(proj)
                inputs.append(proj.id)
                optional.append(proj.id)
            if extra and g > 0:
                i = n - 1 - j
                sources = [i - 1] + ([i] if j != 0 else []) + ([i - 2] if j != n - 1 else [])
                for m in sorted(set(s for s in sources if -1 <= s < n)):
                    source = previous_positions[m]
                    ratio = 2 ** (g - max(group_of[source], 0)) if source != "stem" else 2 ** g
                    tag = f".from{source}"
                    transform(source, tag, ratio)
                    proj = Node(f"{block}{tag}.proj", "conv_bn",
                                {"filters": widths[g], "kernel_size": 1, "stride": ratio}, (source,))
                    nodes.append(proj)
                    inputs.append(proj.id)
                    optional.append(proj.id)
            nodes.append(Node(block, "add", {"activation": "relu"}, tuple(inputs),
                              optional=tuple(optional), measured=True, stage=f"g{g + 1}"))
            group_of[block] = g
            width_of[block] = widths[g]
            positions[j] = block
            last = block
        previous_positions = positions
    nodes.append(Node("head", "classifier", {"units": n_classes}, (last,)))
    kind = "resnet-fabric" if extra else "resnet"
    default = f"{kind}-{6 * n + 2}" if k == 3 else f"{kind}-k{k}n{n}"
    if width_multiplier != 1:
        default += f"-x{width_multiplier:g}"
    return Spec(tuple(nodes), "head", input_shape, n_classes, name=name or default)


@checked_keywords
def conv_fabric(columns: int, *, channels: int = 128, scales: int | None = None,
                input_shape: tuple = (3, 32, 32), n_classes: int = 10,
                name: str | None = None) -> Spec:
    """The convolutional neural fabric: ``columns`` x ``scales`` aggregations of ``channels``.

    Scales run from the input resolution (scale 0) down by halves to 1x1 (scale
    ``log2(side)``), so ``scales`` defaults to ``log2(width) + 1`` (6 for 32 px).  Node
    ``c{l}s{s}`` aggregates (ReLU of the sum, measured) column ``l``, scale ``s``; ``c0s0`` is
    the stem (3x3 conv, BN, ReLU).  Transformations (3x3 conv + BN, no ReLU), each a gate:

    * column 0 is a chain down the scales (stride 2): ``c0s{s-1} -> c0s{s}``;
    * column ``l >= 1`` receives at scale ``s`` from column ``l - 1`` at scales ``s - 1``
      (stride 2), ``s`` (stride 1) and ``s + 1`` (nearest x2 upsampling, then stride 1),
      those that exist; transformation ids ``c{l}s{s}.from_s{k}``;
    * the last column (when ``columns > 1``) also chains down the scales, so the 1x1 node of
      the last column sees every scale.

    Output: ``head`` on ``c{L-1}s{S-1}`` (a 1x1 map, so a 1x1 conv to the classes).  With 8
    columns and 6 scales: 48 aggregations, 122 transformations, 1 output = 171 nodes.

    Parameters
    ----------
    columns : int
    channels : int, default=128
    scales : int, optional
        Default: ``log2(width) + 1``.
    input_shape : (channels, height, width), default=(3, 32, 32)
    n_classes : int, default=10
    name : str, optional

    >>> spec = conv_fabric(8, channels=4)
    >>> sum(len(n.optional) for n in spec.nodes), len(spec.nodes) - 1   # gates, nodes but input
    (122, 171)
    """
    columns = check_positive_int("columns", columns)
    channels = check_positive_int("channels", channels)
    n_classes = check_positive_int("n_classes", n_classes)
    input_shape = _shape(input_shape)
    side = input_shape[2]
    full = int(math.log2(side)) + 1 if side & (side - 1) == 0 else None
    if scales is None:
        if full is None:
            raise BundleLabError(
                f"conv_fabric needs inputs whose width is a power of 2 for the default scales; "
                f"got width {side}: pass scales=..."
            )
        scales = full
    scales = check_positive_int("scales", scales)
    check_spec_size(2 * columns * scales, what=f"conv_fabric({columns})", at_least=True)
    conv = {"filters": channels}
    nodes = [Node("input", "input"),
             Node("c0s0", "conv_bn", {**conv, "activation": "relu"}, ("input",),
                  measured=True, stage="c0")]

    def aggregate(l: int, s: int, sources: list) -> None:
        ids = []
        for k, params in sources:
            source = f"c{l if k is None else l - 1}s{s - 1 if k is None else k}"
            t = Node(f"c{l}s{s}.from_{'chain' if k is None else f's{k}'}", "conv_bn",
                     {**conv, **params}, (source,))
            nodes.append(t)
            ids.append(t.id)
        nodes.append(Node(f"c{l}s{s}", "add", {"activation": "relu"}, tuple(ids),
                          optional=tuple(ids), measured=True, stage=f"c{l}"))

    for s in range(1, scales):
        aggregate(0, s, [(None, {"stride": 2})])
    for l in range(1, columns):
        for s in range(scales):
            sources = []
            if s - 1 >= 0:
                sources.append((s - 1, {"stride": 2}))
            sources.append((s, {}))
            if s + 1 < scales:
                sources.append((s + 1, {"upsample": 2}))
            if l == columns - 1 and s > 0:
                sources.append((None, {"stride": 2}))
            aggregate(l, s, sources)
    nodes.append(Node("head", "classifier", {"units": n_classes}, (f"c{columns - 1}s{scales - 1}",)))
    return Spec(tuple(nodes), "head", input_shape, n_classes,
                name=name or f"conv-fabric-w{columns}-h{scales}-c{channels}")
