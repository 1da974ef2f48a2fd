"""HDF5 dumps (``.h5`` / ``.hdf5``) through h5py: datasets anywhere in the file, read by rows.

A dataset is named by its path without the leading slash (``block1/conv2``); the labels key is
a path too.  Groups created with ``track_order=True`` (the root too, when the file was created
with ``h5py.File(..., track_order=True)``, as :func:`bundlelab.io.save_dump` does) list their
members in creation order, other groups in natural name order; :attr:`Dump.order` says "stored
in the file" when every group with several members tracks its order.  A group reached under
several names (hard or soft links) is listed once, under the first; a soft link to a dataset
lists it under the link's name too.
A contiguous dataset without filters (what :func:`bundlelab.io.save_dump` writes unless told to
compress) is memory-mapped in place at the offset HDF5 reports, checked to lie inside the file;
any other dataset is read a slab of rows at a time into one preallocated buffer
(``read_direct``), which only touches the HDF5 chunks that hold those rows.

Only data stored in the file itself is read.  Refused before anything is read, in one line:
external links (another file's objects), external raw storage (a dataset whose bytes live in
another file, e.g. ``/etc/passwd``), virtual datasets (mapped from other datasets or files),
link cycles, and datasets that declare more data than the file stores for them (a shape of
256 TiB of fill values with no chunk written would hang the read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BundleLabError, require
from .dumps import (
    ORDER_BY_NAME,
    ORDER_STORED,
    Dump,
    LayerInfo,
    check_declared,
    corrupt_error,
    format_bytes,
    info_from_dtype,
    mapped_array,
    natural_key,
)

#: HDF5 filter id -> the most one stored byte can expand to through it: deflate's own bound
#: is 1032:1; shuffle and fletcher32 do not compress
FILTER_RATIOS = {1: 1032, 2: 1, 3: 1}
#: any other filter (szip, nbit, scaleoffset, lzf, blosc, zstd, ...): a generous bound
OTHER_FILTER_RATIO = 1 << 20
#: a dataset may declare this many bytes beyond what its storage can hold (small fill-value
#: datasets are harmless)
SLACK_BYTES = 1 << 16

#: the most bytes one read of a dataset that is not mapped asks HDF5 for
READ_SLAB_BYTES = 64 << 20

#: the order of a file where some groups track creation order and others do not
ORDER_MIXED = "stored in the file where tracked, else sorted by name"

#: what h5py and the HDF5 library raise on a corrupt file
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError)


def _h5py():
    return require("h5py", purpose="reading HDF5 dumps", extra="io")


class Hdf5Dump(Dump):
    """Layers stored as datasets of an HDF5 file."""

    format = "hdf5"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        self._h5py = _h5py()
        self._file_size = path.stat().st_size
        try:
            self._file = self._h5py.File(path, "r")
        except (OSError, RuntimeError, ValueError) as exc:
            raise BundleLabError(
                f"{path.name} is not a readable HDF5 file, it looks truncated or corrupt "
                f"({' '.join(str(exc).split())}); re-create it with h5py"
            ) from None
        try:
            self._refuse_external_links()
            infos: dict[str, LayerInfo] = {}
            self._tracked: set[bool] = set()
            self._walk(infos)
            self.labels_key = labels_key.strip("/")
            order = (ORDER_MIXED if len(self._tracked) > 1
                     else ORDER_STORED if self._tracked == {True} else ORDER_BY_NAME)
            self._finish_listing(list(infos), infos, order=order)
        except BundleLabError:
            self._file.close()
            raise
        except _H5_ERRORS as exc:
            self._file.close()
            raise corrupt_error(path, "its groups and datasets", exc) from None
        except BaseException:
            self._file.close()
            raise

    # -- listing -----------------------------------------------------------------------------
    def _names(self, group) -> list[str]:
        names = list(group.keys())
        tracked = group.id.get_create_plist().get_link_creation_order()
        tracked = bool(tracked & self._h5py.h5p.CRT_ORDER_TRACKED)
        if len(names) > 1:  # one member has no order to keep
            self._tracked.add(tracked)
        if not tracked:
            names.sort(key=natural_key)
        return names

    def _refuse_external_links(self) -> None:
        """Look at every link reachable through hard links, resolving none but hard links, and
        refuse an external one before any soft link is followed (a soft link's path could run
        through it and open the other file)."""
        h5py = self._h5py
        seen = {self._file.id}
        stack = [("", self._file)]
        while stack:
            prefix, group = stack.pop()
            for name in group.keys():
                try:
                    link = group.get(name, getlink=True)
                except TypeError:  # a user-defined link class
                    raise self._refused(prefix + name, "is a user-defined link") from None
                if isinstance(link, h5py.ExternalLink):
                    raise self._refused(
                        prefix + name,
                        f"is an external link to {link.path!r} in the file {link.filename!r}",
                    )
                if isinstance(link, h5py.HardLink):
                    item = group.get(name)
                    if isinstance(item, h5py.Group) and item.id not in seen:
                        seen.add(item.id)
                        stack.append((prefix + name + "/", item))

    def _walk(self, infos: dict[str, LayerInfo]) -> None:
        """Every dataset, depth first in listing order, without recursion (a deep file is no
        RecursionError) and expanding each group once (a file of aliased groups cannot grow the
        listing exponentially)."""
        h5py = self._h5py
        # the root group, not the File: a File's id is the file's, whose creation properties
        # never say that the root tracks creation order
        root = self._file["/"]
        seen = {root.id}
        stack = [(iter(self._names(root)), root, "", {root.id: "/"})]
        while stack:
            names, group, prefix, ancestors = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                continue
            path = prefix + name
            item = group.get(name)  # None: a dangling soft link
            if isinstance(item, h5py.Group):
                if item.id in ancestors:
                    raise BundleLabError(
                        f"{self.path.name}: the link {path!r} leads back to the group "
                        f"{ancestors[item.id]!r} that holds it, a cycle: bundlelab lists the "
                        "datasets of a tree of groups; remove the link or re-create the dump"
                    )
                if item.id in seen:
                    continue
                seen.add(item.id)
                stack.append((iter(self._names(item)), item, path + "/",
                              {**ancestors, item.id: path}))
            elif isinstance(item, h5py.Dataset):
                infos[path] = self._dataset_info(path, item)

    def _dataset_info(self, path: str, dataset) -> LayerInfo:
        h5py = self._h5py
        plist = dataset.id.get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            raise self._refused(
                path, "is a virtual dataset, whose data is mapped from other datasets or files"
            )
        if plist.get_external_count():
            source = plist.get_external(0)[0]
            source = source.decode(errors="replace") if isinstance(source, bytes) else source
            raise self._refused(
                path, f"stores its data in the external file {source!r}, outside the dump"
            )
        if dataset.shape is None:  # h5py.Empty: a dataspace with no data, like a scalar
            return LayerInfo(path, (), "empty", 0)
        if h5py.check_string_dtype(dataset.dtype) is not None:
            info = LayerInfo(path, tuple(dataset.shape), "str", dataset.dtype.itemsize)
        else:
            info = info_from_dtype(path, dataset.shape, dataset.dtype)
        stored = dataset.id.get_storage_size()
        ratio = 1
        for index in range(plist.get_nfilters()):
            ratio *= FILTER_RATIOS.get(plist.get_filter(index)[0], OTHER_FILTER_RATIO)
        detail = f"{format_bytes(stored)} of chunks or data"
        if ratio > 1:
            detail += f", at most {format_bytes(stored * ratio)} once decompressed"
        check_declared(self.path, info, limit=stored * ratio + SLACK_BYTES, stored=detail)
        return info

    def _refused(self, path: str, why: str) -> BundleLabError:
        return BundleLabError(
            f"{self.path.name}: {path!r} {why}; bundlelab reads only data stored inside the dump "
            "file itself: copy the data into the file (e.g. with h5py) and analyse that"
        )

    # -- reading -----------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        mapped = self._map(name)
        if mapped is not None:
            return mapped
        dataset = self._file[name]
        return self._read_rows(name, 0, None) if dataset.shape else dataset[()]

    def _read_rows(self, name: str, start: int, stop: int | None) -> np.ndarray:
        dataset = self._file[name]
        mapped = self._map(name)
        if mapped is not None:
            return mapped[start:stop]
        if not dataset.shape or dataset.dtype.kind not in "biufc":
            return dataset[start:stop]
        stop = dataset.shape[0] if stop is None else min(stop, dataset.shape[0])
        # one buffer in native byte order, filled a slab of rows at a time
        out = np.empty((max(stop - start, 0),) + dataset.shape[1:],
                       dataset.dtype.newbyteorder("="))
        row_bytes = max(out[:1].nbytes, 1)
        step = max(1, READ_SLAB_BYTES // row_bytes)
        for first in range(start, stop, step):
            last = min(first + step, stop)
            dataset.read_direct(out, np.s_[first:last], np.s_[first - start:last - start])
        return out

    def _chunks(self, name, info, chunk_rows):
        mapped = self._wrap_errors(name, lambda: self._map(name))
        if mapped is None:
            yield from super()._chunks(name, info, chunk_rows)
            return
        for start in range(0, info.n_samples, chunk_rows):
            yield mapped[start:start + chunk_rows]

    def _map(self, name: str) -> np.ndarray | None:
        """A contiguous dataset without filters, mapped in place (copy-on-write, see
        :func:`bundlelab.io.dumps.mapped_array`), or None: its bytes are the array's, at the
        offset HDF5 gives, checked to lie inside the file."""
        dataset = self._file[name]
        if not dataset.shape or dataset.dtype.kind not in "iuf":
            return None
        plist = dataset.id.get_create_plist()
        if plist.get_layout() != self._h5py.h5d.CONTIGUOUS or plist.get_nfilters():
            return None
        offset = dataset.id.get_offset()
        if offset is None:  # no data written: the fill value
            return None
        n_bytes = dataset.size * dataset.dtype.itemsize
        if offset + n_bytes > self._file_size:
            raise corrupt_error(
                self.path, f"dataset {name!r}",
                EOFError(f"its data ({format_bytes(n_bytes)} at byte {offset}) ends past the end "
                         f"of the file ({format_bytes(self._file_size)})"),
            )
        return mapped_array(self.path, offset, dataset.dtype, tuple(dataset.shape))

    def _read_labels(self) -> np.ndarray:
        dataset = self._file[self.labels_key]
        if dataset.shape is None:
            raise BundleLabError(
                f"{self.path.name}: the labels {self.labels_key!r} are an empty dataset "
                "(h5py.Empty, no values): store one label per sample"
            )
        if self._h5py.check_string_dtype(dataset.dtype) is not None:
            return np.asarray(dataset.asstr()[()])
        return np.asarray(dataset[()])

    def close(self) -> None:
        self._file.close()
