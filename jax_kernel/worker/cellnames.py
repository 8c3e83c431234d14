"""Cell file names the debugger can predict: ``<dir>/<murmur2 of the cell's source>.py``.

JupyterLab and VS Code map a notebook cell to the file the kernel compiled it under by
hashing the cell's text themselves, with the method, seed, prefix and suffix that the
``debugInfo`` reply announces (ipykernel's ``compiler.py`` names cells this way).  So
every cell, from the first one on and whether or not a debugger is attached yet, is
compiled under that name: a breakpoint set later in a function defined earlier binds.
"""

from __future__ import annotations

import os
import struct
import tempfile

from IPython.core.compilerop import CachingCompiler

#: The seed ipykernel uses; frontends read it from debugInfo, but keeping ipykernel's costs nothing.
HASH_SEED = 0xC70F6907
HASH_METHOD = "Murmur2"
SUFFIX = ".py"

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(text: str, seed: int = HASH_SEED) -> int:
    """MurmurHash2 (32-bit, little-endian words) of the text's UTF-8 bytes, as frontends compute it."""
    data = text.encode("utf-8")
    n = len(data)
    h = (seed ^ n) & _MASK
    body = n & ~3
    for (k,) in struct.iter_unpack("<I", data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[body:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class CellNames:
    """Where this worker's cells live: one folder per kernel, so a replacement worker reuses it."""

    def __init__(self, kernel_pid: int) -> None:
        # The kernel's pid, not ours: breakpoints a frontend set keep their paths after a crash restart.
        self.directory = os.path.join(tempfile.gettempdir(), f"jax_kernel_{kernel_pid or os.getpid()}")

    @property
    def prefix(self) -> str:
        """What debugInfo announces as ``tmpFilePrefix``."""
        return self.directory + os.sep

    def path(self, code: str) -> str:
        """The file a cell with this source is compiled under (and dumpCell writes)."""
        return f"{self.prefix}{murmur2(code)}{SUFFIX}"


#: Set by the worker server before the shell exists (the shell's compiler reads it).
NAMES = CellNames(0)


class CellCompiler(CachingCompiler):
    """IPython's caching compiler, naming each cell by the hash of its raw source."""

    def get_code_name(self, raw_code: str, transformed_code: str, number: int) -> str:
        return NAMES.path(raw_code)
