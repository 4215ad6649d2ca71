"""Metric values as float cells in a shared, append-only memory map.

A worker writes its cells in place; the supervisor reads the worker's file. Every write
lands in the kernel's page cache at once, so a worker that is SIGKILLed loses nothing it
had counted. The format (native byte order: the reader runs on the same host):

    header   8 bytes magic, 8 bytes `used` (bytes in use, header included)
    entry    u32 key bytes, u32 n, the n keys joined by NUL, zero padding to 8 bytes,
             then n float64 values (so every value is 8-byte aligned)

An entry is written whole before `used` is raised past it, so a reader that stops at
`used` never sees half an entry. (x86-64 makes stores visible in program order; arm64
may not, so the reader also stops at the first entry that is not whole: unwritten bytes
read as the zeros the file was allocated with. A scrape's request and answer between
supervisor and worker go through the kernel, which orders everything written before.)
One writer per store (the worker's event-loop thread): no lock. An aligned 8-byte store
or load is a single instruction on x86-64 and arm64, so a concurrent reader sees a value
either before or after an update, never torn.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Sequence

MAGIC = b"GWCELLS1"
_HEADER = 16
_ENTRY = struct.Struct("=II")


def _align(n: int) -> int:
    return (n + 7) & ~7


class CellStore:
    """An append-only table of named float cells: `add()` a block of keys, then update
    `values[index]` in place. With a `path`, a new file only this store writes (it must
    not exist: a predecessor's counts are never silently overwritten); without, memory
    no other process sees."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, capacity: int = 1 << 16) -> None:
        if capacity < _HEADER or capacity % mmap.PAGESIZE:
            raise ValueError(f"capacity must be a positive multiple of the page size ({mmap.PAGESIZE}), not {capacity}")
        self.path = None if path is None else os.fspath(path)
        if self.path is None:
            self._fd = _anonymous_fd()
        else:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._closer = weakref.finalize(self, os.close, self._fd)
        # Every mapping ever made stays open: hot-path objects keep the view they were
        # bound with. Two MAP_SHARED mappings of one file alias the same pages, so an old
        # view still reads and writes the live cells below its length; and a mapping
        # with exported views is never resized or closed, which would raise BufferError.
        self._maps: list[mmap.mmap] = []
        self._map(capacity)
        self._bytes[: len(MAGIC)] = MAGIC
        self._used = _HEADER
        self._header[1] = _HEADER
        self._keys: list[tuple[str, int]] = []

    def _map(self, size: int) -> None:
        # posix_fallocate, not ftruncate: a sparse file on a full tmpfs would SIGBUS on
        # the first write to a new page; this fails here, with ENOSPC, instead.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(self._fd, 0, size)
        else:  # pragma: no cover - macOS
            os.ftruncate(self._fd, size)
        mapped = mmap.mmap(self._fd, size)
        self._maps.append(mapped)
        self._bytes = memoryview(mapped)
        self._header = self._bytes[:_HEADER].cast("Q")
        self.values: memoryview[float] = self._bytes.cast("d")
        """Every cell of the store, by index; a view taken earlier covers the cells that
        existed then (and stays valid: see `__init__`)."""

    def add(self, keys: Sequence[str], values: Sequence[float] | None = None) -> int:
        """Append cells named `keys` (contiguous, initially `values` or 0) and return the
        index of the first in `values`. Keys are not checked for uniqueness: callers add
        each series once."""
        if not keys or any("\0" in key for key in keys):
            raise ValueError("keys must be a non-empty list of strings without NUL")
        if values is not None and len(values) != len(keys):
            raise ValueError(f"{len(keys)} keys and {len(values)} values")
        data = "\0".join(keys).encode()
        start = self._used
        first = _align(start + _ENTRY.size + len(data))
        end = first + 8 * len(keys)
        if end > len(self._bytes):
            size = len(self._bytes)
            while size < end:
                size *= 2
            self._map(size)
        _ENTRY.pack_into(self._bytes, start, len(data), len(keys))
        self._bytes[start + _ENTRY.size : start + _ENTRY.size + len(data)] = data
        index = first // 8
        for offset, value in enumerate(values or ()):
            self.values[index + offset] = value
        # Published last: a reader trusts nothing past `used`.
        self._used = end
        self._header[1] = end
        self._keys.extend((key, index + offset) for offset, key in enumerate(keys))
        return index

    def cells(self) -> dict[str, float]:
        """Every cell, by key: what `read_cells` returns for a store's file."""
        values = self.values
        return {key: values[index] for key, index in self._keys}

    def close(self) -> None:
        """Release the memory (tests; a worker's store lives as long as the worker).
        Objects still holding a view keep their mapping alive until they go."""
        self.values.release()
        self._header.release()
        self._bytes.release()
        for mapped in self._maps:
            # A view still out there keeps its mapping, which goes when the view goes.
            with contextlib.suppress(BufferError):
                mapped.close()
        self._closer()


def read_cells(path: str | os.PathLike[str]) -> dict[str, float]:
    """The cells of a store's file, live (still being written and grown) or final (its
    writer dead). Entries not yet published are not read."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < _HEADER:
            return {}  # just created: not even a header yet
        # Mapped rather than read(): loads through the map are aligned 8-byte loads, so
        # a value being updated is never read torn (read() copies bytes its own way).
        with mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as raw:
            if raw[: len(MAGIC)] != MAGIC:
                return {}  # the magic is the first thing written
            with raw[: size - size % 8].cast("d") as values, raw[:_HEADER].cast("Q") as header:
                return _parse(raw, values, min(header[1], size))


def _parse(raw: memoryview, values: memoryview[float], used: int) -> dict[str, float]:
    out: dict[str, float] = {}
    offset = _HEADER
    while offset + _ENTRY.size <= used:
        length, count = _ENTRY.unpack_from(raw, offset)
        first = _align(offset + _ENTRY.size + length)
        end = first + 8 * count
        if count == 0 or end > used:
            break  # a file that is not ours, or a reader that sees `used` early (arm64)
        try:
            keys = bytes(raw[offset + _ENTRY.size : offset + _ENTRY.size + length]).decode().split("\0")
        except UnicodeDecodeError:
            break
        if len(keys) != count:
            break
        index = first // 8
        for i, key in enumerate(keys):
            out[key] = values[index + i]
        offset = end
    return out


def _anonymous_fd() -> int:
    # A file nobody can open by name, so that the store grows like a named one (see
    # `_maps`): a memfd on Linux, else an unlinked temporary file.
    if hasattr(os, "memfd_create"):
        return os.memfd_create("gateway-cells", os.MFD_CLOEXEC)
    fd, name = tempfile.mkstemp(prefix="gateway-cells-")  # pragma: no cover - not Linux
    os.unlink(name)  # pragma: no cover
    return fd  # pragma: no cover
