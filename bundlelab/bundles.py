"""Conflicting bundles of a layer: the public entry points of the core.

Two modes (see ``docs/semantics.md``):

``resolution`` (default; what the authors' released code computes)
    ``t_i = fl(w - fl(fl(a_i * alpha) * fl(1/|B|)))`` in the activation's own format; samples
    are bundled iff their transformed rows are IEEE-equal in every value.  Equality is an
    equivalence relation, so bundles are found by fingerprinting every row once (one parallel
    pass), grouping equal fingerprints, and confirming each group exactly.
``threshold`` (the paper's eq. 1)
    ``i ~ j`` iff ``(alpha/|B|) * max_k |a_ik - a_jk| <= gamma``, assigned greedily in sample
    order, with candidate pairs pruned by a bound on the row means.

Bundle ids are numbered by first occurrence on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ._arrays import Rows, as_rows, is_gpu_array
from ._errors import BundleLabError
from ._validation import (
    DEVICES,
    MODES,
    NONFINITE_POLICIES,
    check_bool,
    check_choice,
    check_keywords,
    check_n_classes,
    check_positive_float,
    check_positive_int,
    checked_keywords,
    encode_labels,
)
from .entropy import bundle_stats, max_entropy
from .kernels import Transform, get_kernel_backend
from .report import BundleReport, LayerResult


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
        The training batch size |B|.
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
    """

    mode: str = "resolution"
    learning_rate: float = 1e-3
    batch_size: int = 64
    weight_amplitude: float = 1.0
    gamma: float = 1e-8
    epsilon: float = 0.0
    nonfinite: str = "raise"
    device: str = "auto"

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        object.__setattr__(self, "learning_rate", check_positive_float("learning_rate", self.learning_rate))
        object.__setattr__(self, "batch_size", check_positive_int("batch_size", self.batch_size))
        object.__setattr__(
            self, "weight_amplitude",
            check_positive_float("weight_amplitude", self.weight_amplitude, allow_zero=True),
        )
        object.__setattr__(self, "gamma", check_positive_float("gamma", self.gamma, allow_zero=True))
        object.__setattr__(self, "epsilon", check_positive_float("epsilon", self.epsilon, allow_zero=True))
        check_choice("nonfinite", self.nonfinite, NONFINITE_POLICIES)
        check_choice("device", self.device, DEVICES)

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


# -- resolution mode ---------------------------------------------------------------------------


def group_fingerprints(fingerprints: np.ndarray, confirm=None) -> np.ndarray:
    """Representative (smallest index) of each sample's class of equal fingerprints.

    ``confirm(first, second) -> bool array`` checks candidate pairs exactly; a fingerprint
    collision (different rows, equal fingerprints) is then split correctly.  Without
    ``confirm`` the grouping trusts the 128-bit fingerprints.
    """
    n = fingerprints.shape[0]
    order = np.lexsort((fingerprints[:, 1], fingerprints[:, 0]))  # stable: ties keep index order
    ordered = fingerprints[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group_of = np.cumsum(starts) - 1
    root = np.empty(n, dtype=np.int64)
    root[order] = order[np.flatnonzero(starts)][group_of]
    if confirm is None:
        return root
    members = np.flatnonzero(root != np.arange(n))
    if members.size:
        equal = confirm(root[members], members)
        if not equal.all():
            _split_collisions(root, members[~equal], confirm)
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


def _resolution_roots(rows: Rows, options: BundleOptions) -> tuple[np.ndarray, np.ndarray]:
    backend = get_kernel_backend(rows.device)
    transform = Transform.for_format(
        rows.fmt, options.weight_amplitude, options.learning_rate, options.batch_size
    )
    fingerprints, nonfinite = backend.fingerprints(rows.data, rows.fmt, transform)

    def confirm(first, second):
        return backend.pairs_equal(rows.data, first, second, rows.fmt, transform)

    return group_fingerprints(fingerprints, confirm), nonfinite


# -- threshold mode ----------------------------------------------------------------------------


def _threshold_roots(rows: Rows, options: BundleOptions) -> tuple[np.ndarray, np.ndarray]:
    backend = get_kernel_backend(rows.device)
    means, tolerances, nonfinite = backend.row_means(rows.data)
    leaders = np.empty(rows.n_samples, dtype=np.int64)
    assign, _ = backend.threshold_assign(
        rows.data, means, tolerances, 0, leaders, 0, options.threshold_scale, options.gamma
    )
    return leaders[assign], nonfinite


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
) -> LayerResult:
    ids = np.full(roots.shape[0], -1, dtype=np.int64)
    if keep.any():
        # np.unique sorts the representatives, which are the smallest index of each bundle:
        # the inverse therefore numbers bundles by first occurrence.
        _, first_occurrence = np.unique(roots[keep], return_inverse=True)
        ids[keep] = first_occurrence.reshape(-1)
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
        Class label per sample, any hashable values.
    mode : {'resolution', 'threshold'}, default='resolution'
        ``'resolution'``: bundled iff ``w - a * lr / batch_size`` is equal at floating-point
        resolution (the authors' released code).  ``'threshold'``: the paper's eq. (1),
        ``(lr / batch_size) * max|a_i - a_j| <= gamma``, assigned greedily in sample order.
    learning_rate : float, default=1e-3
        The training learning rate alpha.
    batch_size : int, default=64
        The training batch size |B|.
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
        device=device,
    )
    return _find_bundles(activations, labels, options, n_classes=n_classes, layer=str(layer))


def _find_bundles(activations, labels, options: BundleOptions, *, n_classes, layer: str) -> LayerResult:
    rows = as_rows(activations, device=options.device_for(activations), layer=layer)
    codes, classes = encode_labels(labels, rows.n_samples, layer=layer)
    n_classes = check_n_classes(n_classes, len(classes))
    if options.mode == "resolution":
        roots, nonfinite = _resolution_roots(rows, options)
    else:
        roots, nonfinite = _threshold_roots(rows, options)
    keep = _check_nonfinite(nonfinite, options.nonfinite, layer)
    return _layer_result(
        roots, keep, codes, n_classes, options,
        layer=layer, n_features=rows.n_features, dtype=rows.fmt.name,
    )


@checked_keywords
def analyze_layers(
    layers: Mapping[str, Any] | Iterable[tuple[str, Any]],
    labels,
    *,
    progress: bool = False,
    n_classes: int | None = None,
    **options,
) -> BundleReport:
    """Bundles of several layers, in the given (network) order.

    Parameters
    ----------
    layers : mapping or iterable of (name, activations)
        Layer outputs; values may be arrays or zero-argument callables that load them lazily
        (so a dump larger than memory is read one layer at a time).
    labels : array-like of shape (n_samples,)
        Class label per sample, any hashable values.
    progress : bool, default=False
        Show a progress bar over layers.
    n_classes : int, optional
        ``N_c``; inferred from the labels when omitted.
    **options
        Any keyword of :func:`find_bundles` (mode, learning_rate, batch_size, ...).

    Returns
    -------
    BundleReport
    """
    bundle_options = BundleOptions.from_keywords(
        "analyze_layers()", options, also=("progress", "n_classes")
    )
    progress = check_bool("progress", progress)
    items = list(layers.items()) if isinstance(layers, Mapping) else list(layers)
    if not items:
        raise BundleLabError("no layers to analyse: pass at least one (name, activations) pair")
    results = []
    iterator = items
    if progress:
        from rich.progress import track

        iterator = track(items, description="analysing layers", transient=True)
    for name, value in iterator:
        activations = value() if callable(value) else value
        results.append(_find_bundles(activations, labels, bundle_options, n_classes=n_classes, layer=str(name)))
    return BundleReport(results, bundle_options.params())
