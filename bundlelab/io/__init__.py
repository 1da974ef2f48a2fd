"""Activation dumps on disk: open them lazily, analyse them layer by layer or chunk by chunk.

>>> from bundlelab.io import open_dump, analyze_dump   # doctest: +SKIP
>>> report = analyze_dump("activations.npz", layers=["block*"])   # doctest: +SKIP

Formats: ``.npz``, a directory of ``.npy`` files (or thingsvision's one folder per layer),
``.safetensors`` (needs ``safetensors``), HDF5 ``.h5`` / ``.hdf5`` (needs ``h5py``) and a dict
of tensors saved by ``torch.save`` (``.pt``, needs ``torch``; never unpickled otherwise).
See :mod:`bundlelab.io.dumps` for the layer order each stores and :attr:`Dump.order`.

A dump written as shards (disjoint samples of the same layers, e.g. one file per data-parallel
worker) is analysed by passing the folder, a glob or a list of paths to :func:`analyze_dump`:
each shard is fingerprinted in its own task and the per-sample state is merged in shard order
(sorted by name, natural order), giving the report of the concatenated dump
(:mod:`bundlelab.io.shards`).
"""

from .analysis import analyze_dump, default_memory_budget, select_layers
from .dumps import Dump, LayerInfo, open_dump, save_dump

__all__ = [
    "Dump",
    "LayerInfo",
    "analyze_dump",
    "default_memory_budget",
    "open_dump",
    "save_dump",
    "select_layers",
]
