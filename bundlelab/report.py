"""Results: one :class:`LayerResult` per layer, collected in a :class:`BundleReport`.

The JSON schema (``bundlelab.report/1``) is stable and documented in ``docs/report-schema.md``::

    {"schema": "bundlelab.report/1",
     "params": {"mode": ..., "learning_rate": ..., "batch_size": ..., "weight_amplitude": ...,
                "gamma": ..., "epsilon": ..., "nonfinite": ..., "update_format": ...,
                "sources": {"learning_rate": ..., "batch_size": ..., "weight_amplitude": ...,
                            "update_format": ...}},
     "first_conflicting_layer": "<layer name>" | null,
     "layers": [{"layer", "n_samples", "n_bundles", "n_conflicting", "entropy",
                 "largest_bundle", "fully_conflicting", "n_classes", "max_entropy",
                 "n_excluded", "n_features", "dtype", "update_format", ["bundle_ids"]}, ...]}

Fields are only added within a schema version: a record written before ``update_format``
existed was computed in its activations' format, and reads back with ``update_format = dtype``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ._atomic import atomic_write_text
from ._errors import BundleLabError, require
from ._validation import check_bool, checked_keywords, short_repr

SCHEMA = "bundlelab.report/1"

#: the per-layer columns of JSON records, CSV rows and tables, in order
RECORD_FIELDS = (
    "layer",
    "n_samples",
    "n_bundles",
    "n_conflicting",
    "entropy",
    "largest_bundle",
    "fully_conflicting",
    "n_classes",
    "max_entropy",
    "n_excluded",
    "n_features",
    "dtype",
    "update_format",
)

#: CSV columns after :data:`RECORD_FIELDS`: the parameters that scale ``t`` and where each came
#: from (``params["sources"]``), repeated on every row so that each row stands alone
PARAM_COLUMNS = (
    "update_format_source",
    "weight_amplitude",
    "weight_amplitude_source",
    "learning_rate",
    "learning_rate_source",
    "batch_size",
    "batch_size_source",
)


@dataclass(frozen=True, eq=False)
class LayerResult:
    """Bundles of one layer (made by :func:`bundlelab.find_bundles`; the fields are also the
    constructor's parameters).

    Attributes
    ----------
    layer : str
        Layer name.
    n_samples : int
        Samples the bundles were computed on (excluded samples not counted).
    n_bundles : int
        Number of bundles.
    n_conflicting : int
        Bundles holding two or more distinct labels.
    entropy : float
        Bundle entropy ``(1/N) * sum_D |D| * H(D)`` (natural log).
    largest_bundle : int
        Size of the largest bundle.
    fully_conflicting : bool
        All samples fall into one bundle and it holds two or more labels.
    n_classes : int
        ``N_c``, the number of classes.
    max_entropy : float
        ``ln(N_c)``, the entropy of a fully conflicting bundle on balanced labels.
    n_excluded : int
        Samples left out because their activations were not finite.
    n_features : int
        Values per sample (the flattened layer output).
    dtype : str
        Floating-point format of the activations.
    bundle_ids : numpy.ndarray of int64, shape (n_samples + n_excluded,)
        Bundle id per input sample, numbered by first occurrence; -1 for excluded samples.
    update_format : str, optional
        Format the weight update ``t = w - a * alpha / |B|`` was computed in (resolution mode;
        ``'float64'`` in threshold mode, the format of its test).  Defaults to ``dtype``.
    """

    layer: str
    n_samples: int
    n_bundles: int
    n_conflicting: int
    entropy: float
    largest_bundle: int
    fully_conflicting: bool
    n_classes: int
    max_entropy: float
    n_excluded: int
    n_features: int
    dtype: str
    bundle_ids: np.ndarray = field(repr=False)
    update_format: str | None = None

    def __post_init__(self):
        if self.update_format is None:
            # what bundlelab computed before the update format was its own option
            object.__setattr__(self, "update_format", self.dtype)

    @property
    def is_conflicting(self) -> bool:
        """Whether some bundle of this layer holds samples of different labels."""
        return self.n_conflicting > 0

    def to_record(self, *, include_ids: bool = False) -> dict[str, Any]:
        """A JSON-ready dict with the fields of :data:`RECORD_FIELDS`."""
        record = {name: getattr(self, name) for name in RECORD_FIELDS}
        if include_ids:
            record["bundle_ids"] = self.bundle_ids.tolist()
        return record


# a one-line BundleLabError for an unknown keyword, at the call (the dataclass writes __init__)
LayerResult.__init__ = checked_keywords(LayerResult.__init__)  # type: ignore[method-assign]

#: the JSON type of each record field, for reading a report back
_FIELD_TYPES = {
    "layer": (str,), "n_samples": (int,), "n_bundles": (int,), "n_conflicting": (int,),
    "entropy": (int, float), "largest_bundle": (int,), "fully_conflicting": (bool,),
    "n_classes": (int,), "max_entropy": (int, float), "n_excluded": (int,), "n_features": (int,),
    "dtype": (str,), "update_format": (str,),
}

#: record fields a report written by an earlier version may lack -> how to fill them in
_ADDED_FIELDS = {"update_format": lambda record: record.get("dtype")}


def _layer_from_record(record: Any, index: int) -> LayerResult:
    """A :class:`LayerResult` from a JSON record, or a one-line error naming the bad field."""
    where = f"bundlelab report: layers[{index}]"
    if not isinstance(record, dict):
        raise BundleLabError(f"{where} must be an object, got {type(record).__name__}")
    fields = {}
    for name in RECORD_FIELDS:
        if name not in record and name not in _ADDED_FIELDS:
            raise BundleLabError(f"{where} has no {name!r} field")
        value = record[name] if name in record else _ADDED_FIELDS[name](record)
        types = _FIELD_TYPES[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise BundleLabError(
                f"{where}.{name} must be a {types[-1].__name__}, got {short_repr(value, 40)}"
            )
        fields[name] = float(value) if float in types else value
    ids = record.get("bundle_ids", [])
    if not (isinstance(ids, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and -1 <= i < 2**63 for i in ids
    )):
        raise BundleLabError(f"{where}.bundle_ids must be a list of ints >= -1")
    return LayerResult(**fields, bundle_ids=np.asarray(ids, dtype=np.int64))


class BundleReport(Sequence[LayerResult]):
    """Bundles of several layers, in network order, with the parameters that produced them.

    Parameters
    ----------
    layers : sequence of LayerResult
        One result per layer, in network order.
    params : dict, optional
        The options that produced them (:meth:`bundlelab.BundleOptions.params`).
    """

    @checked_keywords
    def __init__(self, layers: Sequence[LayerResult], params: dict[str, Any] | None = None):
        self.layers = list(layers)
        self.params = dict(params or {})

    # -- sequence protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for result in self.layers:
                if result.layer == key:
                    return result
            raise KeyError(f"no layer named {key!r}; layers: {', '.join(self.names)}")
        return self.layers[key]

    @property
    def names(self) -> list[str]:
        """Layer names in order."""
        return [result.layer for result in self.layers]

    @property
    def first_conflicting(self) -> LayerResult | None:
        """The first layer (in network order) with a conflicting bundle, or None."""
        return next((result for result in self.layers if result.is_conflicting), None)

    def __repr__(self) -> str:
        first = self.first_conflicting
        where = first.layer if first else "none"
        return f"BundleReport({len(self)} layers, first conflicting layer: {where})"

    # -- export ------------------------------------------------------------------------------
    @checked_keywords
    def to_dict(self, *, include_ids: bool = False) -> dict[str, Any]:
        """The report as plain data following the ``bundlelab.report/1`` schema.

        Parameters
        ----------
        include_ids : bool, default=False
            Include each layer's ``bundle_ids`` (one int per sample).

        Returns
        -------
        dict
        """
        include_ids = check_bool("include_ids", include_ids)
        first = self.first_conflicting
        return {
            "schema": SCHEMA,
            "params": self.params,
            "first_conflicting_layer": first.layer if first else None,
            "layers": [result.to_record(include_ids=include_ids) for result in self.layers],
        }

    @checked_keywords
    def to_json(self, path=None, *, include_ids: bool = False) -> str:
        """Serialise to JSON.

        Parameters
        ----------
        path : path-like, optional
            Also write the text there, atomically.
        include_ids : bool, default=False
            Include each layer's ``bundle_ids``.

        Returns
        -------
        str
        """
        text = json.dumps(self.to_dict(include_ids=include_ids), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @checked_keywords
    def to_csv(self, path=None) -> str:
        """One CSV row per layer: the columns :data:`RECORD_FIELDS`, then
        :data:`PARAM_COLUMNS` (``w``, ``alpha``, ``|B|`` and where each, and the update format,
        came from; empty where the params do not say).

        Parameters
        ----------
        path : path-like, optional
            Also write the text there, atomically.

        Returns
        -------
        str
        """
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=RECORD_FIELDS + PARAM_COLUMNS, lineterminator="\n"
        )
        writer.writeheader()
        for result in self.layers:
            writer.writerow({**result.to_record(), **self._param_columns(result.layer)})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def _param_columns(self, layer: str) -> dict[str, Any]:
        params = self.params
        sources = params.get("sources") if isinstance(params.get("sources"), dict) else {}
        weight = params.get("weight_amplitude", "")
        per_layer = params.get("layer_weight_amplitudes")
        if weight == "layer" and isinstance(per_layer, dict):
            weight = per_layer.get(layer, "")
        return {
            "update_format_source": sources.get("update_format", ""),
            "weight_amplitude": weight,
            "weight_amplitude_source": sources.get("weight_amplitude", ""),
            "learning_rate": params.get("learning_rate", ""),
            "learning_rate_source": sources.get("learning_rate", ""),
            "batch_size": params.get("batch_size", ""),
            "batch_size_source": sources.get("batch_size", ""),
        }

    def to_dataframe(self):
        """A pandas DataFrame, one row per layer (needs ``pip install 'bundlelab[pandas]'``)."""
        pd = require("pandas", purpose="BundleReport.to_dataframe()", extra="pandas")
        return pd.DataFrame([result.to_record() for result in self.layers], columns=RECORD_FIELDS)

    @classmethod
    @checked_keywords
    def from_dict(cls, data: dict[str, Any]) -> "BundleReport":
        """Rebuild a report from :meth:`to_dict` output (bundle ids only if they were saved).

        Parameters
        ----------
        data : dict
            Plain data of the ``bundlelab.report/1`` schema (e.g. ``json.load`` of a report).

        Returns
        -------
        BundleReport
        """
        if not isinstance(data, dict):
            raise BundleLabError(
                f"not a bundlelab report: expected a JSON object, got {type(data).__name__}"
            )
        if data.get("schema") != SCHEMA:
            raise BundleLabError(
                f"not a bundlelab report: expected schema {SCHEMA!r}, got "
                f"{short_repr(data.get('schema'), 40)}"
            )
        records = data.get("layers")
        params = data.get("params", {})
        if not isinstance(records, list):
            raise BundleLabError(
                f"bundlelab report: 'layers' must be a list, got {type(records).__name__}"
            )
        if not isinstance(params, dict):
            raise BundleLabError(
                f"bundlelab report: 'params' must be an object, got {type(params).__name__}"
            )
        return cls([_layer_from_record(record, i) for i, record in enumerate(records)], params)

    @checked_keywords
    def plot(self, path=None, *, ax=None):
        """Bundle entropy per layer, with ``ln(N_c)`` and the first conflicting layer marked
        (needs matplotlib: ``pip install 'bundlelab[plot]'``).

        Parameters
        ----------
        path : path-like, optional
            Also save the figure there as PNG, atomically.
        ax : matplotlib Axes, optional
            Draw into these axes instead of a new figure.

        Returns
        -------
        matplotlib Axes
        """
        from .plotting import plot_report

        return plot_report(self, path=path, ax=ax)
