"""Arrays as ``.npy`` files: numpy's own format, written and read in bounded pieces.

A file holds the standard ``.npy`` header (``numpy.lib.format``, so ``numpy.load`` reads any of
them) followed by the data in C order.  The data comes from a *source* one chunk at a time, so
saving a 1 GiB array is many short steps the worker's idle loop can interleave with requests.

dtypes numpy's format cannot name (ml_dtypes' ``bfloat16``, the ``float8_*`` family, ``int4``:
numpy writes them as opaque void, ``'<V2'``, which loads back as raw bytes) are stored as the
same-width unsigned integer view, and the real dtype's name goes into the manifest next to the
file; reading views the bytes back, so the values are bit-equal.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from .manifest import file_hasher
from .summary import Corrupt, Unsaveable
from .writer import Source

#: Arrays at least this large go to their own file; smaller ones stay inside their value's pickle
#: (a model with a thousand small biases should not become a thousand files).
OOB_MIN = 64 * 1024


def storable_dtype(dtype: np.dtype) -> tuple[np.dtype, str | None]:
    """The dtype written into the header, and the dtype's name when that is only a view of it."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise Unsaveable(f"{dtype} arrays are pickled, not stored as .npy")
    descr = npy_format.dtype_to_descr(dtype)
    try:
        if npy_format.descr_to_dtype(descr) == dtype:
            return dtype, None
    except (TypeError, ValueError):
        pass
    if dtype.itemsize not in (1, 2, 4, 8):
        raise Unsaveable(f"{dtype} has no .npy form")
    return np.dtype(f"u{dtype.itemsize}"), dtype.name


def resolve_dtype(descr: Any, name: str | None) -> tuple[np.dtype, np.dtype]:
    """(stored dtype, dtype to view it as) from what the manifest recorded."""
    if not isinstance(descr, str):
        raise Corrupt("bad dtype description")
    stored = npy_format.descr_to_dtype(descr)  # type: ignore[arg-type]  # a plain descr str is valid
    if name is None:
        return stored, stored
    if not name.isidentifier():
        raise Corrupt(f"bad dtype name {name!r}")
    try:
        real = np.dtype(name)
    except TypeError:
        import ml_dtypes  # JAX's own dependency; registers bfloat16 and friends

        real = np.dtype(getattr(ml_dtypes, name))
    if real.itemsize != stored.itemsize:
        raise Corrupt(f"dtype {name} does not match its stored width")
    return stored, real


def npy_header(shape: tuple[int, ...], stored: np.dtype) -> bytes:
    """The exact header ``numpy.save`` writes for a C-ordered array of this shape and dtype."""
    header = {"descr": npy_format.dtype_to_descr(stored), "fortran_order": False, "shape": tuple(shape)}
    out = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(out, header)
    except ValueError:  # a header over 64 KiB (a very high rank) needs format 2.0
        out = io.BytesIO()
        npy_format.write_array_header_2_0(out, header)
    return out.getvalue()


def as_bytes(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array (any dtype, ml_dtypes included), without copying."""
    return memoryview(a.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


class ArraySource(Source):
    """An array's C-order data bytes after its ``.npy`` header, handed out in chunks of whole rows."""

    _scratch: np.ndarray | None = None

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, grain: int, mutable: bool) -> None:
        self.shape = shape
        self.stored, self.dtype_name = storable_dtype(dtype)
        self.header = npy_header(shape, self.stored)
        self.data_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.grain = max(1, grain)
        self.mutable = mutable

    def scratch(self, rows: int, dtype: np.dtype) -> np.ndarray:
        """A reused buffer for ``rows`` rows: fresh pages for every chunk cost more than the copy."""
        need = rows * self.grain
        if self._scratch is None or self._scratch.nbytes < need:
            self._scratch = np.empty(need, np.uint8)
        return self._scratch[:need].view(dtype).reshape((rows, *self.shape[1:]))

    def ref(self) -> dict[str, Any]:
        """The manifest's description of the file (its digest is added once it is known)."""
        ref: dict[str, Any] = {"descr": npy_format.dtype_to_descr(self.stored), "shape": list(self.shape)}
        if self.dtype_name:
            ref["dtype"] = self.dtype_name
        ref["bytes"] = len(self.header) + self.data_bytes
        return ref


class HostSource(ArraySource):
    """A numpy array in host memory (or a zero-copy view of a JAX CPU buffer)."""

    def __init__(self, a: np.ndarray, mutable: bool) -> None:
        row = a.nbytes // a.shape[0] if a.ndim and a.shape[0] else a.nbytes
        contiguous = a.flags.c_contiguous
        super().__init__(a.shape, a.dtype, 1 if contiguous else row, mutable)
        self.array = a
        self._flat = as_bytes(a) if contiguous else None
        self._row = row

    def read(self, start: int, size: int) -> memoryview:
        if self._flat is not None:
            return self._flat[start : start + size]
        first, last = start // self._row, (start + size) // self._row
        out = self.scratch(last - first, self.array.dtype)
        np.copyto(out, self.array[first:last])
        return as_bytes(out)


def map_npy(path: str, ref: dict[str, Any], chunk: int = 16 << 20) -> np.ndarray:
    """The array in ``path`` as a read-only view of the file, checked against ``ref``'s digest.

    Nothing from the file is parsed: its header must equal, byte for byte, the one the manifest's
    shape and dtype give, and the whole file must hash to the manifest's digest, before the view is
    returned.  Mapping instead of reading means no copy at all for a JAX array on CPU: numpy's
    header is padded so the data is 64-byte aligned, and ``jax.device_put`` then uses the mapped
    pages as the device buffer.  Files are never changed in place (they are written under a
    temporary name and renamed), so a mapped file stays what was verified.
    """
    stored, real = resolve_dtype(ref.get("descr"), ref.get("dtype"))
    shape = tuple(int(n) for n in ref.get("shape", ()))
    header = npy_header(shape, stored)
    count = int(np.prod(shape, dtype=np.int64))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != len(header) + count * stored.itemsize:
            raise Corrupt("was truncated or changed")
        # Copy-on-write: a consumer that writes into the buffer (through DLPack, say) gets private
        # pages instead of a fault, and the file stays as verified.
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    with contextlib.suppress(AttributeError, OSError):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    view = memoryview(mapped)
    try:
        if view[: len(header)] != header:
            raise Corrupt("failed its check")
        hasher = file_hasher()
        for start in range(0, size, chunk):
            hasher.update(view[start : start + chunk])
        if hasher.hexdigest() != ref.get("digest"):
            raise Corrupt("failed its check")
    finally:
        view.release()
    out = np.frombuffer(mapped, dtype=stored, count=count, offset=len(header)).reshape(shape)
    return out if real == stored else out.view(real)


class Prepared:
    """An array about to be saved: its size, and for a JAX array its placement and host data."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.notes: list[str] = []
        self.meta: dict[str, Any] | None = None
        from .jaxarrays import describe, is_jax_array

        if is_jax_array(array):
            self._data, self.meta, self.notes = describe(array)
            self.nbytes = int(self._data.nbytes)
        else:
            self._data = array
            self.nbytes = int(array.nbytes)

    def source(self) -> ArraySource:
        if self.meta is None:
            return HostSource(self._data, mutable=True)
        from .jaxarrays import source

        return source(self._data)
