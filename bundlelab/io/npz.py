""".npz dumps: read member headers only, stream rows out of (possibly deflated) members.

Nothing is ever unpickled: headers are parsed with :mod:`numpy.lib.format` and arrays of
Python objects are refused before their data is touched.  A member's header must not declare
more data than the member can hold: its stored size, or for a deflated member (what
``np.savez_compressed`` writes) 1032 times its compressed size, deflate's own bound, so a
5 MB archive cannot make a reader allocate terabytes.  Other compression methods are refused.
Stored (uncompressed) members, what ``np.savez`` and :func:`bundlelab.io.save_dump` write, are
memory-mapped in place: the member's data offset is the zip local header's end plus the
``.npy`` header, checked against the file's size before anything is mapped.  A member whose
data is not aligned for its type (the zip headers before it have an odd length; ``save_dump``
pads them) is read from that offset into one buffer.  Deflated members are streamed in pieces
into one buffer, so a layer is never held in memory twice and can be read in chunks.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from .._errors import BundleLabError
from .dumps import (
    READ_ERRORS,
    ORDER_STORED,
    Dump,
    LayerInfo,
    check_declared,
    corrupt_error,
    format_bytes,
    info_from_dtype,
    mapped_array,
    read_exact,
)

#: a zip local file header: signature, then 22 bytes, then the name and extra field lengths
_LOCAL_HEADER = struct.Struct("<4s22sHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"

#: the most one deflated byte can inflate to (258-byte matches coded in 2 bits)
DEFLATE_MAX_RATIO = 1032

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an open ``.npy`` stream, leaving it at the data.

    A header that does not parse is a ValueError, whatever numpy's parser raised on it
    (``tokenize.TokenError``, ``SyntaxError``, ``TypeError`` ...); the stream's own read errors
    pass through.
    """
    version = np.lib.format.read_magic(stream)
    try:
        reader = _HEADER_READERS[version]
    except KeyError:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}") from None
    try:
        shape, fortran, dtype = reader(stream)
    except READ_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser on arbitrary bytes
        raise ValueError(f"the .npy header does not parse ({type(exc).__name__}: {exc})") from None
    if not isinstance(shape, tuple) or not all(isinstance(size, int) for size in shape):
        raise ValueError(f"the .npy header holds the shape {shape!r}")
    return shape, fortran, dtype


class NpzDump(Dump):
    """Layers and labels stored as members of an ``.npz`` (zip) archive."""

    format = "npz"

    def __init__(self, path: Path, labels_key: str):
        super().__init__(path, labels_key)
        try:
            self._zip = zipfile.ZipFile(path)
        except (*READ_ERRORS, zipfile.LargeZipFile, UnicodeDecodeError, NotImplementedError) as exc:
            raise BundleLabError(
                f"{path.name} is not a readable .npz (zip) archive, it looks truncated or "
                f"corrupt ({exc}); re-create it with bundlelab.io.save_dump or np.savez"
            ) from None
        try:
            self._members: dict[str, str] = {}
            self._fortran: dict[str, bool] = {}
            self._dtypes: dict[str, np.dtype] = {}
            #: name -> byte offset of the data of a stored member in the file
            self._offsets: dict[str, int] = {}
            self._file_size = path.stat().st_size
            infos: dict[str, LayerInfo] = {}
            for member in self._zip.infolist():
                if member.is_dir() or not member.filename.endswith(".npy"):
                    continue
                name = member.filename[: -len(".npy")]
                infos[name] = self._member_info(name, member)
                self._members[name] = member.filename
            # zip members keep the order they were written in
            self._finish_listing(list(infos), infos, order=ORDER_STORED)
        except BaseException:
            self._zip.close()
            raise

    def _member_info(self, name: str, member: zipfile.ZipInfo) -> LayerInfo:
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleLabError(
                f"{self.path.name}: array {name!r} is compressed with method "
                f"{member.compress_type}; bundlelab reads .npz members that are stored or "
                "deflated (what np.savez and np.savez_compressed write): re-create the dump"
            )
        try:
            with self._zip.open(member) as stream:
                shape, fortran, dtype = read_npy_header(stream)
                header_size = stream.tell()
        except (*READ_ERRORS, NotImplementedError) as exc:
            raise corrupt_error(self.path, f"the header of array {name!r}", exc) from None
        info = info_from_dtype(name, shape, dtype)
        if dtype.hasobject:  # never read: refused as pickled data when asked for
            limit, stored = float("inf"), ""
        elif member.compress_type == zipfile.ZIP_STORED:
            limit = min(member.file_size, member.compress_size) - header_size
            stored = f"{format_bytes(max(limit, 0))} of data"
        else:
            limit = member.compress_size * DEFLATE_MAX_RATIO - header_size
            stored = (
                f"{format_bytes(member.compress_size)} of deflated data (at most "
                f"{format_bytes(member.compress_size * DEFLATE_MAX_RATIO)} once inflated)"
            )
        check_declared(self.path, info, limit=limit, stored=stored)
        if not dtype.hasobject and member.file_size < header_size + info.nbytes:
            raise corrupt_error(
                self.path, f"array {name!r}",
                EOFError(f"{member.file_size - header_size} of {info.nbytes} data bytes stored"),
            )
        self._fortran[name] = bool(fortran)
        self._dtypes[name] = dtype
        if member.compress_type == zipfile.ZIP_STORED and not dtype.hasobject:
            self._offsets[name] = self._data_offset(name, member, header_size, info.nbytes)
        return info

    def _data_offset(self, name: str, member: zipfile.ZipInfo, header_size: int,
                     n_bytes: int) -> int:
        """Where a stored member's array data starts in the file, checked to lie inside it."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(member.header_offset)
                fields = _LOCAL_HEADER.unpack(read_exact(handle, _LOCAL_HEADER.size))
        except (*READ_ERRORS, struct.error) as exc:
            raise corrupt_error(self.path, f"the zip header of array {name!r}", exc) from None
        signature, _, name_length, extra_length = fields
        if signature != _LOCAL_SIGNATURE:
            raise corrupt_error(self.path, f"the zip header of array {name!r}",
                                ValueError("no local file header where the directory points"))
        offset = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        offset += header_size
        if offset + n_bytes > self._file_size:
            raise corrupt_error(
                self.path, f"array {name!r}",
                EOFError(f"its data ({format_bytes(n_bytes)} at byte {offset}) ends past the end "
                         f"of the file ({format_bytes(self._file_size)})"),
            )
        return offset

    def _map(self, name: str) -> np.ndarray | None:
        """The stored member mapped in place, or None (deflated, or not aligned)."""
        if name not in self._offsets:
            return None
        info = self._infos_all(name)
        return mapped_array(self.path, self._offsets[name], self._dtypes[name], info.shape,
                            fortran=self._fortran[name])

    def _read(self, name: str) -> np.ndarray:
        return self._read_rows(name, 0, self._infos_all(name).n_samples)

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if self._fortran[name]:
            return self._read_fortran(name)[start:stop]
        mapped = self._map(name)
        if mapped is not None:
            return mapped[start:stop]
        row_bytes = self._infos_all(name).n_features * self._infos_all(name).itemsize
        if name in self._offsets:  # stored but not aligned: one read from the data's offset
            with open(self.path, "rb") as handle:
                handle.seek(self._offsets[name] + start * row_bytes)
                buffer = self._aligned_read(name, handle, stop - start)
            return self._rows(name, buffer, stop - start)
        with self._open(name) as stream:
            _skip(stream, start * row_bytes)
            buffer = self._aligned_read(name, stream, stop - start)
        return self._rows(name, buffer, stop - start)

    def _aligned_read(self, name: str, stream, n_rows: int) -> np.ndarray:
        """``n_rows`` rows from ``stream`` into one new (aligned) array's memory."""
        info = self._infos_all(name)
        buffer = np.empty(n_rows * info.n_features, self._dtypes[name])
        return read_exact(stream, buffer.nbytes, into=buffer)

    def _chunks(self, name, info, chunk_rows):
        if self._fortran[name]:
            # Column-major data has no contiguous rows: it is read whole, once, then sliced.
            array = self._wrap_errors(name, lambda: self._read_fortran(name))
            for start in range(0, info.n_samples, chunk_rows):
                yield array[start:start + chunk_rows]
            return
        mapped = self._wrap_errors(name, lambda: self._map(name))
        if mapped is not None:
            for start in range(0, info.n_samples, chunk_rows):
                yield mapped[start:start + chunk_rows]
            return
        # One pass over the member stream: a deflated stream cannot seek cheaply.
        stream = self._wrap_errors(name, lambda: self._open(name))
        with stream:
            for start in range(0, info.n_samples, chunk_rows):
                n = min(chunk_rows, info.n_samples - start)
                buffer = self._wrap_errors(name, lambda: self._aligned_read(name, stream, n))
                yield self._rows(name, buffer, n)

    def _open(self, name: str):
        stream = self._zip.open(self._members[name])
        read_npy_header(stream)
        return stream

    def _read_fortran(self, name: str) -> np.ndarray:
        array = self._map(name)  # one copy, from the page cache, where the member is stored
        if array is None:
            with self._zip.open(self._members[name]) as stream:
                array = np.lib.format.read_array(stream, allow_pickle=False)
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))

    def _rows(self, name: str, buffer: np.ndarray, n_rows: int) -> np.ndarray:
        dtype = self._dtypes[name]
        rows = buffer.reshape((n_rows,) + self._infos_all(name).shape[1:])
        return rows if dtype.isnative else rows.astype(dtype.newbyteorder("="))

    def _read_labels(self) -> np.ndarray:
        with self._zip.open(self._members[self.labels_key]) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)

    def _infos_all(self, name: str) -> LayerInfo:
        return self._infos[name] if name in self._infos else self._label_info

    def close(self) -> None:
        self._zip.close()


def _skip(stream: IO[bytes], n_bytes: int) -> None:
    while n_bytes > 0:
        chunk = stream.read(min(n_bytes, 1 << 24))
        if not chunk:
            raise EOFError("the data ends early")
        n_bytes -= len(chunk)
