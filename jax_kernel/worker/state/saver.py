"""Where a pass's values go: files written once, found again by content, and what is known already.

The caches here make an unchanged value cheap: JAX arrays by object (weak references, so the cache
neither keeps device memory alive nor trusts a reused id), numpy arrays by object and last digest
(with whether they changed last time), files by digest (the ones this process wrote or a restore
verified).
"""

from __future__ import annotations

import base64
import weakref
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .manifest import Store, file_hasher, take_seed
from .writer import BytesSource, Pacer, Writer, hash_job

if TYPE_CHECKING:
    from .arrays import Prepared

#: Pickles up to this size sit in the manifest (base64) instead of a file of their own.
INLINE_MAX = 16 * 1024


class Saver:
    """One directory's store, its writer, and the change-detection caches."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.store = Store(directory)
        self.pacer = Pacer()
        self.writer = Writer(self.store, self.pacer)
        # id -> (weakref, digest, changed in its last pass) of numpy arrays hashed before
        self.numpy_seen: dict[int, tuple[Any, str | None, bool]] = {}
        self.jax_refs: dict[int, tuple[Any, dict[str, Any]]] = {}  # id -> (weakref, file ref)
        self.absorb_seeds()

    def absorb_seeds(self) -> None:
        """Take what a restore in this process verified and made (whether it ran before or after
        this keeper was made): restored arrays are then known, not hashed and written again."""
        seeds = take_seed(self.directory)
        self.store.known |= seeds["verified"]
        for obj_ref in seeds["numpy"]:
            if (obj := obj_ref()) is not None:
                self.numpy_seen[id(obj)] = (obj_ref, None, False)
        for obj_ref, ref in seeds["jax"]:
            if (obj := obj_ref()) is not None:
                self.jax_refs[id(obj)] = (obj_ref, ref)

    def array(self, p: Prepared) -> Generator[None, None, dict[str, Any]]:
        """The array's file, written if it is not already there; its manifest entry."""
        if p.meta is None:  # numpy: mutable, hashed every pass
            # One seen before and unchanged last time is hashed first, and written only if that
            # finds new bytes; a new one, or one that changed last time (a training loop's), is
            # hashed while it is written: one pass over its bytes when it did change.
            entry = self.numpy_seen.get(id(p.array))
            seen = entry is not None and entry[0]() is p.array
            last = entry[1] if entry is not None and seen else None
            check_first = seen and not (entry is not None and entry[2])
            source = p.source()
            digest = None
            if check_first and not self.writer.resumable(id(p.array), p.array):
                digest = yield from hash_job(source, self.pacer)
                if not self.store.has(digest, ".npy"):
                    verified = False
                    if self.store.exists(digest, ".npy"):
                        verified = yield from self.store.verify(digest, ".npy", self.pacer.want())
                    digest = digest if verified else None
            if digest is None:
                digest = yield from self.writer.write(source, id(p.array), p.array, ".npy")
            self.numpy_seen[id(p.array)] = (
                weakref.ref(p.array),
                digest,
                last is not None and digest != last,
            )
            return {**source.ref(), "digest": digest}
        cached = self.jax_refs.get(id(p.array))
        if cached is not None and cached[0]() is p.array and self.store.has(cached[1]["digest"], ".npy"):
            return {**cached[1], "jax": p.meta}
        source = p.source()
        digest = yield from self.writer.write(source, id(p.array), p.array, ".npy")
        ref = {**source.ref(), "digest": digest}
        self.jax_refs[id(p.array)] = (weakref.ref(p.array), ref)
        return {**ref, "jax": p.meta}

    def pickle(self, data: bytes) -> Generator[None, None, dict[str, Any]]:
        """A value's pickle: inline in the manifest when small, else its own file (written once)."""
        digest = file_hasher(data).hexdigest()
        if len(data) <= INLINE_MAX:
            return {"inline": base64.b64encode(data).decode("ascii"), "digest": digest}
        if not self.store.has(digest, ".pkl"):
            yield from self.writer.write(
                BytesSource(data), ("pickle", digest), None, ".pkl"
            )  # bytes: same digest
        return {"file": True, "digest": digest, "bytes": len(data)}

    def prune(self) -> None:
        """Forget objects that are gone (after a commit)."""
        for cache in (self.numpy_seen, self.jax_refs):
            for key in [k for k, v in cache.items() if v[0]() is None]:
                del cache[key]

    def clear(self) -> None:
        """Delete every file and forget everything (a restart)."""
        self.writer.drop_all()
        self.store.discard()
        self.numpy_seen.clear()
        self.jax_refs.clear()

    def stats(self) -> dict[str, int]:
        p = self.pacer
        return {"hashed_bytes": p.hashed, "written_bytes": p.written, "files_written": p.files}
