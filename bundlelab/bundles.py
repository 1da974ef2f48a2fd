"""Conflicting bundles of a layer: the public entry points of the core.

Two modes (see ``docs/semantics.md``):

``resolution`` (default; what the authors' released code computes)
    ``t_i = fl(w - fl(fl(a_i * alpha) * fl(1/|B|)))`` in the *update format* (the format the
    weights are updated in: by default the activation's own, float32 for float16/bfloat16
    activations, whose training updates float32 master weights); samples
    are bundled iff their transformed rows are IEEE-equal in every value.  Equality is an
    equivalence relation, so bundles are found by fingerprinting every row once (one parallel
    pass), grouping equal fingerprints, and confirming each group exactly.
``threshold`` (the paper's eq. 1)
    ``i ~ j`` iff ``(alpha/|B|) * max_k |a_ik - a_jk| <= gamma``, assigned greedily in sample
    order, with candidate pairs pruned by a bound on the row means.

Bundle ids are numbered by first occurrence on every backend.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ._arrays import Rows, as_rows, is_gpu_array
from ._errors import BundleLabError
from ._validation import (
    DEVICES,
    MODES,
    NONFINITE_POLICIES,
    UPDATE_FORMATS,
    check_bool,
    check_choice,
    check_int,
    check_keywords,
    check_n_classes,
    check_positive_float,
    checked_keywords,
    label_codes,
    short_repr,
)
from .entropy import bundle_stats, max_entropy
from ._provenance import check_sources, report_sources
from .kernels import Transform, get_kernel_backend
from .kernels._formats import FORMATS, FloatFormat, needs_rounding
from .report import BundleReport, LayerResult

#: the largest training batch size accepted: every int up to it is exact in float64, so
#: ``1 / batch_size`` and ``learning_rate / batch_size`` are computed from the exact |B|
MAX_BATCH_SIZE = 2**53


@dataclass(frozen=True, kw_only=True)
class BundleOptions:
    """Validated options shared by every entry point.

    Keyword-only; :func:`find_bundles` says what each option means.  Values are converted (a
    numpy integer becomes an int), so the options serialise to JSON as they are.

    Parameters
    ----------
    mode : {'resolution', 'threshold'}, default='resolution'
        Equality at floating-point resolution, or the paper's threshold ``gamma``.
    learning_rate : float, default=1e-3
        The training learning rate alpha.
    batch_size : int, default=64
        The training batch size |B|, at most 2**53.
    weight_amplitude : float, default=1.0
        ``w``, the largest absolute weight (resolution mode).
    gamma : float, default=1e-8
        Threshold of eq. (1) (threshold mode).
    epsilon : float, default=0.0
        0 for the exact entropy; 1e-5 reproduces the authors' ``ln(p + 1e-5)``.
    nonfinite : {'raise', 'exclude', 'keep'}, default='raise'
        What to do with samples whose activations hold NaN or Inf.
    device : {'auto', 'cpu', 'cuda'}, default='auto'
        Where to compute; 'auto' follows the activations.
    update_format : {'auto', 'activations', 'float16', 'bfloat16', 'float32', 'float64'}, \
default='auto'
        Format of the weight update ``t`` (resolution mode); see :func:`resolve_update_format`.
    """

    mode: str = "resolution"
    learning_rate: float = 1e-3
    batch_size: int = 64
    weight_amplitude: float = 1.0
    gamma: float = 1e-8
    epsilon: float = 0.0
    nonfinite: str = "raise"
    device: str = "auto"
    update_format: str = "auto"

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        object.__setattr__(self, "learning_rate", check_positive_float("learning_rate", self.learning_rate))
        object.__setattr__(
            self, "batch_size", check_int("batch_size", self.batch_size, low=1, high=MAX_BATCH_SIZE)
        )
        object.__setattr__(
            self, "weight_amplitude",
            check_positive_float("weight_amplitude", self.weight_amplitude, allow_zero=True),
        )
        object.__setattr__(self, "gamma", check_positive_float("gamma", self.gamma, allow_zero=True))
        object.__setattr__(self, "epsilon", check_positive_float("epsilon", self.epsilon, allow_zero=True))
        check_choice("nonfinite", self.nonfinite, NONFINITE_POLICIES)
        check_choice("device", self.device, DEVICES)
        check_choice("update_format", self.update_format, UPDATE_FORMATS)
        if self.mode == "threshold" and self.threshold_scale == 0.0:
            raise BundleLabError(
                f"learning_rate / batch_size = {self.learning_rate!r} / {self.batch_size} "
                "underflows to 0 in float64, so threshold mode would bundle every pair of finite "
                "samples: pass a larger learning_rate or a smaller batch_size"
            )

    def params(self) -> dict[str, Any]:
        """The options that define the numbers (for reports)."""
        return {
            "mode": self.mode,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "weight_amplitude": self.weight_amplitude,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "nonfinite": self.nonfinite,
            "update_format": self.update_format,
        }

    def device_for(self, activations: Any) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if is_gpu_array(activations) else "cpu"

    @property
    def threshold_scale(self) -> float:
        return self.learning_rate / self.batch_size

    @classmethod
    def from_keywords(
        cls, where: str, options: Mapping[str, Any], also: Iterable[str] = ()
    ) -> "BundleOptions":
        """Options from the ``**options`` of an entry point: an unknown keyword is one line
        naming ``where`` (e.g. ``"analyze_layers()"``) and the valid keywords (the options,
        and ``also``: the entry point's own keywords)."""
        check_keywords(where, options, [*cls.__dataclass_fields__, *also])
        return cls(**options)


# a one-line BundleLabError for an unknown keyword, at the call (the dataclass writes __init__)
BundleOptions.__init__ = checked_keywords(BundleOptions.__init__)  # type: ignore[method-assign]


@checked_keywords
def resolve_update_format(update_format: str, activations_dtype: str) -> str:
    """The format the weight update ``t = w - a * alpha / |B|`` is computed in.

    Parameters
    ----------
    update_format : {'auto', 'activations', 'float16', 'bfloat16', 'float32', 'float64'}
        ``'auto'``: the activations' format, except float16/bfloat16 activations, whose
        training (mixed precision) updates float32 master weights: ``'float32'``.
        ``'activations'``: the activations' format always (low-precision bundling).
        A format name: that format.
    activations_dtype : {'float16', 'bfloat16', 'float32', 'float64'}
        The activations' format.

    Returns
    -------
    str
        A format name.

    Examples
    --------
    >>> resolve_update_format("auto", "float16"), resolve_update_format("activations", "float16")
    ('float32', 'float16')
    """
    check_choice("update_format", update_format, UPDATE_FORMATS)
    check_choice("activations_dtype", activations_dtype, tuple(FORMATS))
    if update_format == "activations" or (
        update_format == "auto" and FORMATS[activations_dtype].native
    ):
        return activations_dtype
    return "float32" if update_format == "auto" else update_format


# -- resolution mode ---------------------------------------------------------------------------


def group_fingerprints(fingerprints: np.ndarray, confirm=None, partner=None) -> np.ndarray:
    """Representative (smallest index) of each sample's class of equal fingerprints.

    ``confirm(first, second) -> bool array`` checks candidate pairs exactly; a fingerprint
    collision (different rows, equal fingerprints) is then split correctly.  Without
    ``confirm`` the grouping trusts the 128-bit fingerprints.  ``partner`` (int64, -1: none)
    holds equalities already proven exactly during the fingerprint pass
    (:meth:`~bundlelab.kernels.cpu.CpuBackend.fingerprints_partners`): a member connected to
    its representative through them is not compared again.
    """
    compiled = sys.modules.get("bundlelab.kernels.cpu")
    if compiled is not None:
        # O(n) in a compiled hash table; a process that has not loaded Numba (small inputs,
        # kernels/host.py) sorts instead: the same representatives either way
        root, unproven = compiled.CpuBackend().group_rows(fingerprints, partner)
    else:
        root = _sorted_roots(fingerprints)
        unproven = root != np.arange(root.shape[0])
    if confirm is None:
        return root
    members = np.flatnonzero(unproven)
    if members.size:
        equal = confirm(root[members], members)
        if not equal.all():
            _split_collisions(root, members[~equal], confirm)
    return root


def _sorted_roots(fingerprints: np.ndarray) -> np.ndarray:
    """The representatives of :func:`group_fingerprints` by a stable sort of the fingerprints."""
    n = fingerprints.shape[0]
    order = np.lexsort((fingerprints[:, 1], fingerprints[:, 0]))  # stable: ties keep index order
    ordered = fingerprints[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group_of = np.cumsum(starts) - 1
    root = np.empty(n, dtype=np.int64)
    root[order] = order[np.flatnonzero(starts)][group_of]
    return root


def _split_collisions(root: np.ndarray, mismatched: np.ndarray, confirm) -> None:
    """Exact leader assignment inside the (rare) groups whose rows were not all equal."""
    for representative in np.unique(root[mismatched]):
        group = np.flatnonzero(root == representative)  # ascending sample order
        leaders = [int(group[0])]
        for sample in group[1:]:
            candidates = np.asarray(leaders, dtype=np.int64)
            hits = confirm(candidates, np.full(candidates.shape, sample, dtype=np.int64))
            if hits.any():
                root[sample] = candidates[np.argmax(hits)]
            else:
                root[sample] = sample
                leaders.append(int(sample))


def resolution_transform(fmt: FloatFormat, options: BundleOptions) -> Transform:
    """The constants of resolution mode rounded to ``fmt``; warns (one line) when ``alpha`` or
    ``1/|B|`` rounds to 0 there, which maps every finite activation to ``t = w`` (one bundle)."""
    transform = Transform.for_format(
        fmt, options.weight_amplitude, options.learning_rate, options.batch_size
    )
    if transform.learning_rate == 0.0:
        warnings.warn(
            f"learning_rate={options.learning_rate!r} rounds to 0 in {fmt.name}: every finite "
            "activation maps to t = w, so all samples fall into one bundle",
            UserWarning, stacklevel=2,
        )
    elif transform.inverse_batch_size == 0.0:
        warnings.warn(
            f"1/batch_size (batch_size={options.batch_size}) rounds to 0 in {fmt.name}: every "
            "finite activation maps to t = w, so all samples fall into one bundle",
            UserWarning, stacklevel=2,
        )
    if math.isinf(transform.weight_amplitude):
        warnings.warn(
            f"weight_amplitude={options.weight_amplitude!r} overflows {fmt.name}: t = inf for "
            "almost every activation, so nearly all samples fall into one bundle; pass a wider "
            "update_format",
            UserWarning, stacklevel=2,
        )
    return transform


def distinct_nan_fingerprints(
    backend, rows: Rows, fmt: FloatFormat, transform: Transform, fingerprints: np.ndarray,
    nonfinite: np.ndarray, first_index: int = 0,
) -> np.ndarray:
    """``fingerprints`` with a distinct value for every row whose transformed values hold NaN.

    Such a row equals no row, not even itself, so it is a bundle of its own; giving each one its
    own fingerprint keeps thousands of identical NaN rows out of one candidate group (whose exact
    splitting would compare every pair).  The value depends on the row's sample index
    (``first_index`` + its position): see :func:`mark_nan_rows`.
    """
    nan_rows = nan_row_positions(backend, rows, fmt, transform, nonfinite)
    if not nan_rows.size:
        return fingerprints
    return mark_nan_rows(fingerprints.copy(), nan_rows + first_index, first_index)


def nan_row_positions(
    backend, rows: Rows, fmt: FloatFormat, transform: Transform, nonfinite: np.ndarray
) -> np.ndarray:
    """Positions (int64, ascending) of the rows whose transformed values ``t`` hold NaN.

    A row's ``t`` holds NaN iff ``t_i == t_i`` fails, which the exact comparison kernel answers
    (in the update format ``fmt``).  Only rows flagged non-finite can have it, except where a
    finite activation can reach ``inf * 0`` or ``inf - inf``: ``1/|B|`` rounded to 0
    (``a * alpha`` may overflow), ``alpha`` rounded to 0 while a wide activation is narrowed
    (the cast may overflow), ``alpha`` rounded to infinity (``0 * alpha``), or ``w`` rounded
    to infinity.
    """
    if (transform.inverse_batch_size == 0.0 or not math.isfinite(transform.weight_amplitude)
            or not math.isfinite(transform.learning_rate)
            or (transform.learning_rate == 0.0 and needs_rounding(rows.fmt, fmt))):
        candidates = np.arange(nonfinite.shape[0], dtype=np.int64)
    else:
        candidates = np.flatnonzero(nonfinite).astype(np.int64)
    if not candidates.size:
        return candidates
    equal_to_itself = backend.pairs_equal(
        rows.data, candidates, candidates, fmt, transform, rows.fmt
    )
    return candidates[~equal_to_itself]


def mark_nan_rows(
    fingerprints: np.ndarray, samples: np.ndarray, first_index: int = 0
) -> np.ndarray:
    """Give the NaN rows at sample indices ``samples`` the fingerprint ``(sample, 2**64 - 1)``,
    in place; ``fingerprints[0]`` belongs to sample ``first_index``.

    The value is the row's sample index in the whole pass, so it is distinct for every NaN row,
    and a stream cut into shards reproduces it by shifting each shard's indices by the samples
    before it (:meth:`bundlelab.BundleStream.merge`).
    """
    fingerprints[samples - first_index, 0] = samples.astype(np.uint64)
    fingerprints[samples - first_index, 1] = np.uint64(2**64 - 1)
    return fingerprints


def update_format_of(activations: FloatFormat, options: BundleOptions) -> FloatFormat:
    """The format resolution mode computes ``t`` in for activations of format ``activations``
    (threshold mode: float64, the format of its test)."""
    if options.mode != "resolution":
        return FORMATS["float64"]
    return FORMATS[resolve_update_format(options.update_format, activations.name)]


def _resolution_roots(
    rows: Rows, fmt: FloatFormat, options: BundleOptions, layer: str
) -> tuple[np.ndarray, np.ndarray]:
    backend = get_kernel_backend(rows.device)
    transform = resolution_transform(fmt, options)
    partner = None
    if hasattr(backend, "fingerprints_partners"):
        # optional: a backend that proves duplicates during its pass, while they are in cache
        fingerprints, nonfinite, partner = backend.fingerprints_partners(
            rows.data, fmt, transform, rows.fmt)
    else:
        fingerprints, nonfinite = backend.fingerprints(rows.data, fmt, transform, rows.fmt)
    keep = _check_nonfinite(nonfinite, options.nonfinite, layer)  # raise before the grouping
    fingerprints = distinct_nan_fingerprints(
        backend, rows, fmt, transform, fingerprints, nonfinite
    )

    def confirm(first, second):
        return backend.pairs_equal(rows.data, first, second, fmt, transform, rows.fmt)

    return group_fingerprints(fingerprints, confirm, partner), keep


# -- threshold mode ----------------------------------------------------------------------------


def _threshold_roots(
    rows: Rows, options: BundleOptions, layer: str
) -> tuple[np.ndarray, np.ndarray]:
    backend = get_kernel_backend(rows.device)
    means, tolerances, nonfinite = backend.row_means(rows.data)
    keep = _check_nonfinite(nonfinite, options.nonfinite, layer)  # raise before the assignment
    leaders = np.empty(rows.n_samples, dtype=np.int64)
    assign, _ = backend.threshold_assign(
        rows.data, means, tolerances, 0, leaders, 0, options.threshold_scale, options.gamma
    )
    return leaders[assign], keep


# -- shared ------------------------------------------------------------------------------------


def _check_nonfinite(nonfinite: np.ndarray, policy: str, layer: str | None) -> np.ndarray:
    """Mask of samples to keep, or a one-line error under the default policy."""
    n_bad = int(nonfinite.sum())
    if n_bad and policy == "raise":
        where = f"layer {layer!r}" if layer else "activations"
        raise BundleLabError(
            f"{where}: {n_bad} of {nonfinite.size} samples have NaN or Inf values; pass "
            "nonfinite='exclude' (CLI: --nonfinite exclude) to leave them out, or 'keep' to "
            "compare them with IEEE semantics"
        )
    if policy == "exclude":
        return ~nonfinite
    return np.ones(nonfinite.shape, dtype=bool)


def _layer_result(
    roots: np.ndarray,
    keep: np.ndarray,
    label_codes: np.ndarray,
    n_classes: int,
    options: BundleOptions,
    *,
    layer: str,
    n_features: int,
    dtype: str,
    update_format: str,
) -> LayerResult:
    ids = np.full(roots.shape[0], -1, dtype=np.int64)
    if keep.any():
        # Representatives are the smallest index of each bundle, so their rank among the
        # representatives of kept samples numbers bundles by first occurrence (what
        # np.unique's inverse gives, in O(n) instead of a sort).
        kept_roots = roots[keep]
        is_representative = np.zeros(roots.shape[0], dtype=bool)
        is_representative[kept_roots] = True
        rank = np.cumsum(is_representative) - 1
        ids[keep] = rank[kept_roots]
    else:
        raise BundleLabError(f"layer {layer!r}: every sample was excluded (NaN or Inf activations)")
    codes = label_codes[keep]
    stats = bundle_stats(ids[keep], codes, epsilon=options.epsilon)
    return LayerResult(
        layer=layer,
        n_samples=stats.n_samples,
        n_bundles=stats.n_bundles,
        n_conflicting=stats.n_conflicting,
        entropy=stats.entropy,
        largest_bundle=stats.largest_bundle,
        fully_conflicting=stats.fully_conflicting,
        n_classes=n_classes,
        max_entropy=max_entropy(n_classes),
        n_excluded=int((~keep).sum()),
        n_features=n_features,
        dtype=dtype,
        update_format=update_format,
        bundle_ids=ids,
    )


@checked_keywords
def find_bundles(
    activations,
    labels,
    *,
    mode: str = "resolution",
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    weight_amplitude: float = 1.0,
    gamma: float = 1e-8,
    epsilon: float = 0.0,
    n_classes: int | None = None,
    nonfinite: str = "raise",
    device: str = "auto",
    update_format: str = "auto",
    layer: str = "layer",
) -> LayerResult:
    """Bundles, conflicting bundles and bundle entropy of one layer's outputs.

    Parameters
    ----------
    activations : array of shape (n_samples, ...)
        The layer's outputs (after its non-linearity) for training samples: a numpy array, a
        CuPy array or a torch tensor (CPU or CUDA; GPU inputs are processed on the GPU without
        a copy).  float32, float64, float16 or bfloat16; flattened per sample.
    labels : array-like of shape (n_samples,)
        Class label per sample, any hashable values; two labels are one class iff equal as
        Python values (1 and "1" are two classes).  NaN, Inf, None and unhashable values are
        refused (see ``docs/semantics.md``, "Labels").
    mode : {'resolution', 'threshold'}, default='resolution'
        ``'resolution'``: bundled iff ``w - a * lr / batch_size`` is equal at floating-point
        resolution (the authors' released code).  ``'threshold'``: the paper's eq. (1),
        ``(lr / batch_size) * max|a_i - a_j| <= gamma``, assigned greedily in sample order.
    learning_rate : float, default=1e-3
        The training learning rate alpha.
    batch_size : int, default=64
        The training batch size |B|, at most 2**53.
    weight_amplitude : float, default=1.0
        ``w``, the largest absolute weight of the model (resolution mode).
    gamma : float, default=1e-8
        Threshold of eq. (1) (threshold mode).
    epsilon : float, default=0.0
        0 for the exact entropy; 1e-5 reproduces the authors' ``ln(p + 1e-5)``.
    n_classes : int, optional
        ``N_c``; inferred from the labels when omitted.
    nonfinite : {'raise', 'exclude', 'keep'}, default='raise'
        What to do with samples whose activations hold NaN or Inf.
    device : {'auto', 'cpu', 'cuda'}, default='auto'
        Where to compute; 'auto' follows the activations.
    update_format : {'auto', 'activations', 'float16', 'bfloat16', 'float32', 'float64'}, \
default='auto'
        The format ``t = w - a * lr / batch_size`` is computed in (resolution mode): the
        precision of the weight update.  ``'auto'``: the activations' format, but float32 for
        float16/bfloat16 activations (mixed-precision training updates float32 master
        weights).  ``'activations'``: always the activations' format (low-precision
        bundling).  A format name: that format; activations are converted to it first, exactly
        when it is wider, rounded to nearest-even (like a cast) when it is narrower.  The
        result's ``update_format`` is the resolved name.
    layer : str, default='layer'
        Name used in the result and in error messages.

    Returns
    -------
    LayerResult

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    >>> result = find_bundles(a, ["cat", "dog", "cat"])
    >>> result.n_bundles, result.n_conflicting, result.bundle_ids.tolist()
    (2, 1, [0, 0, 1])
    >>> round(result.entropy, 4)  # (2/3) * ln 2
    0.4621
    """
    options = BundleOptions(
        mode=mode, learning_rate=learning_rate, batch_size=batch_size,
        weight_amplitude=weight_amplitude, gamma=gamma, epsilon=epsilon, nonfinite=nonfinite,
        device=device, update_format=update_format,
    )
    return _find_bundles(activations, labels, options, n_classes=n_classes, layer=str(layer))


def _find_bundles(activations, labels, options: BundleOptions, *, n_classes, layer: str) -> LayerResult:
    rows = as_rows(activations, device=options.device_for(activations), layer=layer)
    codes, classes = label_codes(labels, rows.n_samples, layer=layer)
    n_classes = check_n_classes(n_classes, len(classes))
    fmt = update_format_of(rows.fmt, options)
    if options.mode == "resolution":
        roots, keep = _resolution_roots(rows, fmt, options, layer)
    else:
        roots, keep = _threshold_roots(rows, options, layer)
    return _layer_result(
        roots, keep, codes, n_classes, options,
        layer=layer, n_features=rows.n_features, dtype=rows.fmt.name, update_format=fmt.name,
    )


_LAYERS_EXPECTED = (
    "a mapping of layer name -> activations, or a sequence of (name, activations) pairs"
)


def _is_array(value: Any) -> bool:
    return any(hasattr(value, attribute) for attribute in
               ("shape", "__array__", "__array_interface__", "__cuda_array_interface__"))


def layer_items(layers: Any) -> list[tuple[str, Any]]:
    """``(name, activations)`` pairs of a mapping or a sequence of pairs; anything else (a bare
    array, whose rows would unpack as pairs, None, a string) is a one-line error."""
    if isinstance(layers, Mapping):
        items = list(layers.items())
    elif layers is None or isinstance(layers, (str, bytes)) or _is_array(layers):
        shape = f" of shape {tuple(layers.shape)}" if hasattr(layers, "shape") else ""
        raise BundleLabError(
            f"layers must be {_LAYERS_EXPECTED}; got {type(layers).__name__}{shape}"
            + (" (for one layer pass {'name': activations})" if shape else "")
        )
    else:
        try:
            items = list(layers)
        except TypeError:
            raise BundleLabError(
                f"layers must be {_LAYERS_EXPECTED}; got {type(layers).__name__}"
            ) from None
        for position, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                shape = f" of shape {tuple(item.shape)}" if hasattr(item, "shape") else ""
                raise BundleLabError(
                    f"layers must be {_LAYERS_EXPECTED}; item {position} is a "
                    f"{type(item).__name__}{shape}, not a (name, activations) pair"
                )
    named = []
    for name, value in items:
        if isinstance(name, bool) or not isinstance(name, (str, numbers.Integral)):
            raise BundleLabError(
                f"layer names must be strings; got {short_repr(name, 40)} of type "
                f"{type(name).__name__}"
            )
        named.append((str(name), value))
    return named


@checked_keywords
def analyze_layers(
    layers: Mapping[str, Any] | Iterable[tuple[str, Any]],
    labels,
    *,
    progress: bool = False,
    n_classes: int | None = None,
    sources: Mapping[str, str] | None = None,
    **options,
) -> BundleReport:
    """Bundles of several layers, in the given (network) order.

    Parameters
    ----------
    layers : mapping or iterable of (name, activations)
        Layer outputs; values may be arrays or zero-argument callables that load them lazily
        (so a dump larger than memory is read one layer at a time).
    labels : array-like of shape (n_samples,)
        Class label per sample, any hashable values; two labels are one class iff equal as
        Python values (1 and "1" are two classes).  NaN, Inf, None and unhashable values are
        refused (see ``docs/semantics.md``, "Labels").
    progress : bool, default=False
        Show a progress bar over layers.
    n_classes : int, optional
        ``N_c``; inferred from the labels when omitted.
    sources : mapping of str to str, optional
        Where ``learning_rate``, ``batch_size``, ``weight_amplitude`` and ``update_format``
        came from (e.g. ``{"learning_rate": "optimizer"}``); the report's
        ``params["sources"]`` holds these, ``"given"`` for the other keywords passed, and
        ``"default"`` (or ``"assumed (float16 activations)"``) for the rest.
    **options
        Any keyword of :func:`find_bundles` (mode, learning_rate, batch_size, update_format,
        ...).

    Returns
    -------
    BundleReport
    """
    bundle_options = BundleOptions.from_keywords(
        "analyze_layers()", options, also=("progress", "n_classes", "sources")
    )
    caller_sources = check_sources(sources)
    progress = check_bool("progress", progress)
    items = layer_items(layers)
    if not items:
        raise BundleLabError("no layers to analyse: pass at least one (name, activations) pair")
    results = []
    iterator = items
    if progress:
        from rich.progress import track

        iterator = track(items, description="analysing layers", transient=True)
    for name, value in iterator:
        activations = value() if callable(value) else value
        results.append(
            _find_bundles(activations, labels, bundle_options, n_classes=n_classes, layer=name)
        )
    params = bundle_options.params()
    params["sources"] = report_sources(
        options, caller_sources,
        bundle_options.update_format if bundle_options.mode == "resolution" else None,
        [result.dtype for result in results],
    )
    return BundleReport(results, params)
