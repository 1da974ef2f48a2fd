"""The data a model is fed: tensors, datasets and loaders, and the measured training subset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate

from ..._errors import BundleLabError
from ..._validation import check_optional_int, check_seed


@dataclass
class _TensorData:
    """Inputs in one tensor, labels (or None) in one array."""

    x: torch.Tensor
    y: np.ndarray | None

    def head(self, k: int) -> torch.Tensor:
        return self.x[:k]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
        for start in range(0, self.x.shape[0], batch_size):
            end = start + batch_size
            yield self.x[start:end], None if self.y is None else self.y[start:end]


@dataclass
class _ItemData:
    """A dataset of (input, label) items, batched by ``collate_fn``."""

    dataset: Any
    collate_fn: Callable = default_collate

    def head(self, k: int) -> Any:
        return _split(_first_batch(self._loader(k)))[0]

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        for batch in self._loader(batch_size):
            yield _split(batch)

    def _loader(self, batch_size: int) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn
        )


@dataclass
class _BatchData:
    """Ready-made (input, label) batches: a DataLoader or a list of batches."""

    batches_: Any

    def head(self, k: int) -> Any:
        return _slice(_split(_first_batch(self.batches_))[0], k)

    def batches(self, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
        for batch in self.batches_:
            yield _split(batch)


_DATA_TYPES = (_TensorData, _ItemData, _BatchData)


def _first_batch(batches: Any) -> Any:
    for batch in batches:
        return batch
    raise BundleLabError("the data yielded no samples")


def _as_data(inputs: Any, model: nn.Module) -> Any:
    if isinstance(inputs, _DATA_TYPES):
        return inputs
    if isinstance(inputs, DataLoader):
        return _BatchData(inputs)
    if isinstance(inputs, Dataset):
        return _ItemData(inputs)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
        x = _as_tensor(inputs[0], model)
        return _TensorData(x, _as_labels(inputs[1], x.shape[0]))
    return _TensorData(_as_tensor(inputs, model), None)


def _training_subset(data, labels, *, n_samples, seed, model) -> Any:
    """The measured training samples: ``n_samples`` of ``data`` chosen with ``seed``."""
    n_samples = check_optional_int("n_samples", n_samples, low=1)
    seed = check_seed("seed", seed)
    if isinstance(data, DataLoader) or isinstance(data, Dataset):
        if labels is not None:
            raise BundleLabError(
                "labels were given with a dataset or loader, whose items already carry "
                "them; drop labels=..."
            )
        dataset = data.dataset if isinstance(data, DataLoader) else data
        collate_fn = data.collate_fn if isinstance(data, DataLoader) else default_collate
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            source = data if isinstance(data, DataLoader) else _ItemData(dataset).batches(256)
            return _BatchData(_first_samples(source, n_samples))
        index = _sample_index(len(dataset), n_samples, seed)
        return _ItemData(Subset(dataset, index.tolist()), collate_fn)
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
    kept, seen = [], 0
    for batch in batches:
        x, y = _split(batch)
        take = y.shape[0] if n_samples is None else min(y.shape[0], n_samples - seen)
        kept.append((_slice(x, take), y[:take]))
        seen += take
        if n_samples is not None and seen >= n_samples:
            break
    if not seen:
        raise BundleLabError("the data yielded no samples")
    return kept


def _split(batch: Any) -> tuple[Any, np.ndarray]:
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


def _slice(x: Any, k: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:k]
    if isinstance(x, dict):
        return {key: _slice(value, k) for key, value in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(value, k) for value in x)
    return x
