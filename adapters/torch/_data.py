"""The data a model is fed: tensors, datasets and loaders, and the measured training subset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate

from ..._errors import BundleLabError
from ..._validation import check_optional_int, check_seed


@dataclass(frozen=True)
class _DictKeys:
    """How a dict batch (``{"pixel_values": x, "labels": y}``) splits into inputs and labels.

    ``input_key=None``: every key but ``label_key``, passed to the model as keywords
    (``model(**inputs)``, the Hugging Face convention); a key: that value, passed positionally.
    """

    input_key: str | None = None
    label_key: str = "labels"

    def __post_init__(self):
        for name in ("input_key", "label_key"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name == "input_key")):
                raise BundleLabError(
                    f"The '{name}' parameter must be a str (a key of the dict batches). Got "
                    f"{value!r} instead."
                )

    def split(self, batch: Mapping) -> tuple[Any, Any]:
        keys = ", ".join(map(repr, batch))
        if self.label_key not in batch:
            raise BundleLabError(
                f"the dict batches hold no {self.label_key!r} key (keys: {keys}); pass "
                "label_key=... naming the labels"
            )
        if self.input_key is None:
            inputs = {k: v for k, v in batch.items() if k != self.label_key}
            if not inputs:
                raise BundleLabError(f"the dict batches hold only labels (keys: {keys})")
            return inputs, batch[self.label_key]
        if self.input_key not in batch:
            raise BundleLabError(
                f"the dict batches hold no {self.input_key!r} key (keys: {keys}); pass "
                "input_key=... naming the input"
            )
        return batch[self.input_key], batch[self.label_key]


_KEYS = _DictKeys()


@dataclass
class _TensorData:
    """Inputs in one tensor (or a dict of them, passed as keywords), labels (or None) in one
    array."""

    x: Any
    y: np.ndarray | None

    def head(self, k: int) -> Any:
        return _slice(self.x, k)

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray | None]]:
        for start in range(0, _length(self.x), batch_size):
            end = start + batch_size
            yield _slice(self.x, end, start), None if self.y is None else self.y[start:end]


@dataclass
class _ItemData:
    """A dataset of (input, label) items, batched by ``collate_fn``."""

    dataset: Any
    collate_fn: Callable = default_collate
    keys: _DictKeys = _KEYS

    def head(self, k: int) -> Any:
        return _split(_first_batch(self._loader(k)), self.keys)[0]

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        for batch in self._loader(batch_size):
            yield _split(batch, self.keys)

    def _loader(self, batch_size: int) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn
        )


@dataclass
class _BatchData:
    """Ready-made (input, label) batches: a DataLoader or a list of batches."""

    batches_: Any
    keys: _DictKeys = _KEYS

    def head(self, k: int) -> Any:
        return _slice(_split(_first_batch(self.batches_), self.keys)[0], k)

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        for batch in self.batches_:
            yield _split(batch, self.keys)


_DATA_TYPES = (_TensorData, _ItemData, _BatchData)


def _first_batch(batches: Any) -> Any:
    for batch in batches:
        return batch
    raise BundleLabError("the data yielded no samples")


def _as_data(inputs: Any, model: nn.Module, keys: _DictKeys = _KEYS) -> Any:
    if isinstance(inputs, _DATA_TYPES):
        return inputs
    if isinstance(inputs, DataLoader):
        return _BatchData(inputs, keys)
    if isinstance(inputs, Dataset):
        return _ItemData(inputs, keys=keys)
    if isinstance(inputs, Mapping):
        x, y = keys.split(inputs) if keys.label_key in inputs else (inputs, None)
        x = _as_inputs(x, model)
        return _TensorData(x, None if y is None else _as_labels(y, _length(x)))
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
        x = _as_tensor(inputs[0], model)
        return _TensorData(x, _as_labels(inputs[1], x.shape[0]))
    return _TensorData(_as_tensor(inputs, model), None)


def _training_subset(data, labels, *, n_samples, seed, model, keys=_KEYS) -> Any:
    """The measured training samples: ``n_samples`` of ``data`` chosen with ``seed``."""
    n_samples = check_optional_int("n_samples", n_samples, low=1)
    seed = check_seed("seed", seed)
    if isinstance(data, Mapping):
        if labels is not None:
            raise BundleLabError(
                f"labels were given twice: the dict holds {keys.label_key!r}; drop labels=..."
            )
        data, labels = keys.split(data)
        x = _as_inputs(data, model)
        y = _as_labels(labels, _length(x))
        index = _sample_index(_length(x), n_samples, seed)
        return _TensorData(_take(x, index), y[index])
    if isinstance(data, DataLoader) or isinstance(data, Dataset):
        if labels is not None:
            raise BundleLabError(
                "labels were given with a dataset or loader, whose items already carry "
                "them; drop labels=..."
            )
        dataset = data.dataset if isinstance(data, DataLoader) else data
        collate_fn = data.collate_fn if isinstance(data, DataLoader) else default_collate
        # a loader with batch_size=None yields its dataset's items as they are: batches
        unbatched = isinstance(data, DataLoader) and data.batch_sampler is None
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__") or unbatched:
            if isinstance(data, DataLoader):
                source = (_split(batch, keys) for batch in data)
            else:
                source = _ItemData(dataset, keys=keys).batches(256)
            return _BatchData(_first_samples(source, n_samples), keys)
        index = _sample_index(len(dataset), n_samples, seed)
        return _ItemData(Subset(dataset, index.tolist()), collate_fn, keys)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        if labels is not None:
            raise BundleLabError(
                "labels were given twice: pass data=(inputs, labels) or labels=..."
            )
        data, labels = data
    if labels is None:
        raise BundleLabError(
            "no labels: pass labels=... with an input tensor, or data as (inputs, labels), a "
            "Dataset or a DataLoader"
        )
    x = _as_tensor(data, model)
    y = _as_labels(labels, x.shape[0])
    index = _sample_index(x.shape[0], n_samples, seed)
    if index.shape[0] == x.shape[0]:
        return _TensorData(x, y)
    return _TensorData(x[torch.from_numpy(index).to(x.device)], y[index])


def _sample_index(n: int, n_samples: int | None, seed: int) -> np.ndarray:
    if n == 0:
        raise BundleLabError("the data holds no samples")
    if n_samples is None or n_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, n_samples, replace=False))


def _first_samples(batches: Any, n_samples: int | None) -> list[tuple[Any, np.ndarray]]:
    """The first samples of (inputs, labels) pairs, as pairs (which _split passes through)."""
    kept, seen = [], 0
    for x, y in batches:
        take = y.shape[0] if n_samples is None else min(y.shape[0], n_samples - seen)
        kept.append((_slice(x, take), y[:take]))
        seen += take
        if n_samples is not None and seen >= n_samples:
            break
    if not seen:
        raise BundleLabError("the data yielded no samples")
    return kept


def _split(batch: Any, keys: _DictKeys = _KEYS) -> tuple[Any, np.ndarray]:
    if isinstance(batch, Mapping):
        x, y = keys.split(batch)
        return x, _as_labels(y, None)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        size = f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise BundleLabError(
            "expected (inputs, labels) pairs from the dataset or loader, got a "
            f"{type(batch).__name__}{size}"
        )
    x, y = batch
    return x, _as_labels(y, None)


def _as_labels(labels: Any, n: int | None) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels)
    if n is not None and (labels.ndim == 0 or labels.shape[0] != n):
        got = 1 if labels.ndim == 0 else labels.shape[0]
        raise BundleLabError(
            f"got {got} labels for {n} samples: pass one label per sample, in the order of the "
            "inputs"
        )
    return labels


def _as_tensor(x: Any, model: nn.Module) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.ndim:
        return x
    if isinstance(x, np.ndarray) and x.ndim:
        tensor = torch.from_numpy(np.ascontiguousarray(x))
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        return tensor.to(dtype) if tensor.is_floating_point() and dtype is not None else tensor
    raise BundleLabError(
        f"cannot feed a {type(x).__name__} to the model: pass a tensor or array of inputs of "
        "shape (n_samples, ...) with labels, (inputs, labels), a Dataset or a DataLoader"
    )


def _slice(x: Any, end: int, start: int = 0) -> Any:
    """Samples ``start:end`` of inputs: a tensor, or a dict, tuple or list of them."""
    if isinstance(x, torch.Tensor):
        return x[start:end]
    if isinstance(x, Mapping):
        return {key: _slice(value, end, start) for key, value in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(value, end, start) for value in x)
    return x


def _take(x: Any, index: np.ndarray) -> Any:
    """Samples ``index`` of inputs (a tensor or a dict of them); all of them as they are."""
    if isinstance(x, Mapping):
        return {key: _take(value, index) for key, value in x.items()}
    if index.shape[0] == _length(x):
        return x
    return x[torch.from_numpy(index).to(x.device)]


def _length(x: Any) -> int:
    """The number of samples of inputs (a tensor or a dict of batch-first tensors)."""
    if isinstance(x, Mapping):
        lengths = {key: _length(value) for key, value in x.items()}
        if len(set(lengths.values())) != 1:
            raise BundleLabError(
                f"the inputs of a dict hold different numbers of samples: {lengths}"
            )
        return next(iter(lengths.values()))
    return x.shape[0]


def _as_inputs(x: Any, model: nn.Module) -> Any:
    """A tensor of inputs, or a dict of them (every one a tensor or array of shape (n, ...))."""
    if isinstance(x, Mapping):
        if not x:
            raise BundleLabError("the dict of inputs is empty")
        return {str(key): _as_tensor(value, model) for key, value in x.items()}
    return _as_tensor(x, model)
