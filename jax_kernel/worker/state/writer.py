"""Hashing and writing sources in pieces short enough for the worker's idle loop.

Every job is a generator that yields after each piece (one chunk hashed, or hashed and written),
so ``StateKeeper.step`` can stop between any two pieces and a request is never kept waiting for
more than one.  The chunk size follows the measured throughput, so a piece takes about half the
step's time whatever the machine.

A write interrupted by a new cell is not thrown away: the half-written file stays open, keyed by
the array object it came from, and the next pass continues it if that object is still there.  A
JAX array cannot have changed (they are immutable); a numpy array can, so its already-written
prefix is hashed again from memory first, and the write starts over if the hash differs.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from .manifest import Store, file_hasher

MIN_CHUNK = 1 << 20
O_DIRECT = getattr(os, "O_DIRECT", 0)
MAX_CHUNK = 64 << 20


class Source:
    """Bytes to store: a header, then ``data_bytes`` handed out by ``read`` in chunks.

    ``grain`` is the granularity chunks are rounded to (a row, or 1 byte when the data is one
    contiguous buffer); ``mutable`` says whether the bytes can change behind our back (numpy), which
    decides whether a half-written file may be resumed after a cell ran without checking it.
    """

    header: bytes
    data_bytes: int
    grain: int
    mutable: bool

    def chunk_size(self, want: int) -> int:
        return max(self.grain, want // self.grain * self.grain)

    def read(self, start: int, size: int) -> memoryview:  # pragma: no cover - abstract
        raise NotImplementedError


def hash_and_write(hasher: Any, out: DirectFile | None, data: memoryview) -> None:
    """Feed ``data`` to the hash and (if ``out``) to the file.  BLAKE3 runs several times faster
    than the disk takes the bytes (and on every core), so the two need no overlapping."""
    hasher.update(data)
    if out is not None:
        out.write(data)


def write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data) :]


#: O_DIRECT's unit: writes are whole blocks from a page-aligned buffer, at block offsets.
BLOCK = 4096
#: The aligned buffer data passes through on its way to an O_DIRECT file (reused, so its pages
#: are touched once).
BOUNCE = 8 << 20


class DirectFile:
    """A file written around the page cache (O_DIRECT) where the filesystem allows it.

    Why: new page-cache pages for gigabytes of snapshot cost more than the disk here (this VM
    gave 0.37 GB/s buffered for a new 1 GiB file, 1.6 GB/s direct), and under the worker's memory
    cgroup they would count against the memory the user's arrays need.  Data goes through one
    page-aligned buffer and out in whole blocks; the last partial block is written after O_DIRECT
    is turned off again (``fcntl``).  A filesystem without O_DIRECT (tmpfs) gets plain writes."""

    _buffer: mmap.mmap | None = None  # shared: one writer at a time (the worker's main thread)

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fill = 0
        self.direct = False
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
            self.direct = bool(O_DIRECT)
        except OSError:
            pass  # EINVAL: this filesystem has no direct I/O
        if self.direct and DirectFile._buffer is None:
            DirectFile._buffer = mmap.mmap(-1, BOUNCE)
        self._pending = b""

    def write(self, data: memoryview) -> None:
        if not self.direct:
            write_all(self.fd, data)
            return
        buffer = DirectFile._buffer
        assert buffer is not None
        view = memoryview(buffer)
        view[: self.fill] = self._pending  # another file may have used the buffer since (< 1 block)
        try:
            while len(data):
                n = min(len(data), BOUNCE - self.fill)
                view[self.fill : self.fill + n] = data[:n]
                self.fill += n
                data = data[n:]
                whole = self.fill - self.fill % BLOCK
                if self.fill == BOUNCE or (whole and not len(data)):
                    try:
                        write_all(self.fd, view[:whole])
                    except OSError:  # direct I/O refused after all: the rest goes buffered
                        self._undirect()
                        write_all(self.fd, view[:whole])
                    rest = self.fill - whole
                    view[:rest] = view[whole : self.fill]
                    self.fill = rest
        finally:
            view.release()
        self._pending = bytes(buffer[: self.fill])  # what the shared buffer holds for this file

    def _undirect(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
        self.direct = False

    def close(self) -> None:
        """Write the last partial block (buffered) and close."""
        if self.fd < 0:
            return
        try:
            if self.direct and self._pending:
                self._undirect()
                write_all(self.fd, memoryview(self._pending))
        finally:
            os.close(self.fd)
            self.fd = -1


class BytesSource(Source):
    """A pickle's bytes, written like an array's (no header)."""

    def __init__(self, data: bytes) -> None:
        self.header = b""
        self.data_bytes = len(data)
        self.grain = 1
        self.mutable = False
        self._view = memoryview(data)

    def read(self, start: int, size: int) -> memoryview:
        return self._view[start : start + size]


class Pacer:
    """Chooses chunk sizes so that one piece takes about ``piece`` seconds; counts the work done."""

    def __init__(self) -> None:
        self.rate = 1e9  # bytes per second, measured as we go
        self.piece = 0.01
        self.hashed = 0  # bytes hashed, written and files written since the keeper started
        self.written = 0
        self.files = 0

    def want(self) -> int:
        return int(min(MAX_CHUNK, max(MIN_CHUNK, self.rate * self.piece)))

    def took(self, nbytes: int, seconds: float) -> None:
        if nbytes >= MIN_CHUNK and seconds > 0:
            self.rate = 0.7 * self.rate + 0.3 * (nbytes / seconds)


@dataclass
class Partial:
    """A file being written: where it is, how far it got, and the hash of what it holds."""

    owner: Any  # weakref to the array the bytes come from (None: keyed by content digest)
    path: str
    out: DirectFile
    offset: int
    hasher: Any
    header: bytes
    data_bytes: int

    def close(self) -> None:
        self.out.close()


def _pieces(source: Source, pacer: Pacer, start: int, stop: int, work: Any) -> Generator[None, None, None]:
    """Read ``source`` from ``start`` to ``stop`` in chunks, calling ``work(offset, data)`` on each."""
    offset = start
    while offset < stop:
        n = min(source.chunk_size(pacer.want()), stop - offset)
        t = time.perf_counter()
        work(offset, source.read(offset, n))
        pacer.took(n, time.perf_counter() - t)
        offset += n
        yield


def hash_job(source: Source, pacer: Pacer) -> Generator[None, None, str]:
    """The digest of the file ``source`` would be, without writing it."""
    hasher = file_hasher(source.header)

    def work(_: int, data: memoryview) -> None:
        hasher.update(data)
        pacer.hashed += len(data)

    yield from _pieces(source, pacer, 0, source.data_bytes, work)
    return hasher.hexdigest()


class Writer:
    """Writes sources into a store, keeping interrupted writes for the next pass."""

    def __init__(self, store: Store, pacer: Pacer) -> None:
        self.store = store
        self.pacer = pacer
        self.partials: dict[Any, Partial] = {}

    def write(self, source: Source, key: Any, owner: Any, ext: str) -> Generator[None, None, str]:
        """Write ``source`` to its content address; the digest. ``owner``: the array (or None)."""
        partial = yield from self._resume(source, key, owner)
        if partial is None:
            fd, path = self.store.open_tmp()
            ref = weakref.ref(owner) if owner is not None else None
            partial = Partial(ref, path, DirectFile(fd), 0, file_hasher(), source.header, source.data_bytes)
            self.partials[key] = partial
            hash_and_write(partial.hasher, partial.out, memoryview(source.header))

        def work(offset: int, data: memoryview) -> None:
            hash_and_write(partial.hasher, partial.out, data)
            partial.offset = offset + len(data)
            self.pacer.hashed += len(data)
            self.pacer.written += len(data)

        try:
            yield from _pieces(source, self.pacer, partial.offset, source.data_bytes, work)
        except GeneratorExit:
            raise  # the pass was replaced between two pieces: the file is consistent, keep it
        except BaseException:
            self.drop(key)  # interrupted inside a piece: the file and its hash may disagree
            raise
        partial.close()
        del self.partials[key]
        digest = partial.hasher.hexdigest()
        self.store.finish(partial.path, digest, ext)
        self.pacer.files += 1
        return digest

    def _resume(self, source: Source, key: Any, owner: Any) -> Generator[None, None, Partial | None]:
        partial = self.partials.get(key)
        if partial is None:
            return None
        same = (
            partial.header == source.header
            and partial.data_bytes == source.data_bytes
            and (partial.owner is None or partial.owner() is owner)
        )
        if same and source.mutable and partial.offset:
            check = file_hasher(source.header)

            def work(_: int, data: memoryview) -> None:
                check.update(data)
                self.pacer.hashed += len(data)

            yield from _pieces(source, self.pacer, 0, partial.offset, work)
            same = check.hexdigest() == partial.hasher.copy().hexdigest()
        if same:
            return partial
        self.drop(key)
        return None

    def resumable(self, key: Any, owner: Any) -> bool:
        """Whether a half-written file of ``owner`` is waiting (then hashing it first is wasted)."""
        partial = self.partials.get(key)
        return partial is not None and partial.owner is not None and partial.owner() is owner

    def drop(self, key: Any) -> None:
        partial = self.partials.pop(key, None)
        if partial is not None:
            partial.close()
            try:
                os.remove(partial.path)
            except FileNotFoundError:
                pass

    def drop_all(self) -> None:
        for key in list(self.partials):
            self.drop(key)
