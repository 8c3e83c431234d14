"""The snapshot directory: content-addressed files, manifests, ``HEAD``, commit and garbage collection.

Layout of one member's directory (the root itself for a single worker)::

    HEAD                      {"manifest": "manifest-<sha256>.json", "digest": ..., "cell": N}
    manifest-<sha256>.json    format version, cell, member, per name: kind, bytes, file digests
    objects/<blake3>.npy      arrays (numpy's format), named by the BLAKE3 digest of the whole file
    objects/<blake3>.pkl      pickles too large to sit inline in the manifest
    objects/tmp-*             files being written (renamed to their digest when complete)

A commit writes the manifest under a temporary name, renames it into place, then does the same for
``HEAD``: a worker killed at any moment leaves the previous ``HEAD`` and everything it names
intact.  Nothing is fsynced: the snapshot has to outlive the worker process, not the machine
(the kernel deletes it when it shuts down), and the page cache outlives the process.  Files no
longer named by ``HEAD`` are deleted after the commit; at that point the pass that wrote them has
finished, so none of them is still needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Generator, Iterator
from typing import Any

from .summary import Corrupt, Summary

FORMAT = "jax-kernel-state"
VERSION = 2  # 2: files named by BLAKE3
HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Manifests are small (names and digests); a larger one is not ours.
MAX_MANIFEST = 256 << 20


def file_hasher(data: bytes | memoryview = b"") -> Any:
    """The digest that names and checks every file of a snapshot: BLAKE3 (PyPI ``blake3``, on all
    cores), so that saving is bound by the disk, not the hash; sha256 on one core here ran at
    1.2 GB/s, under the 1 GB/s a snapshot of a GPU notebook's arrays needs once writing is added.
    (The manifest itself, which the kernel records, keeps sha256.)"""
    import blake3

    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if data:
        hasher.update(data)
    return hasher


class NoSnapshot(Exception):
    """Nothing has been committed in this directory."""


def member_dir(root: str, member: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", member):
        raise ValueError(f"bad member name {member!r}")
    return os.path.join(root, member) if member else root


def _digest_name(digest: Any) -> str:
    if not isinstance(digest, str) or not HEX64.match(digest):
        raise Corrupt("bad digest")
    return digest


#: Digests a restore verified and the objects it made, per directory, for the keeper that follows
#: in the same worker: it need neither re-hash those files nor rewrite what it restored.
_SEEDS: dict[str, dict[str, Any]] = {}
_SEEDS_LOCK = threading.Lock()


def seed(directory: str, verified: set[str], numpy: list[Any], jax: list[tuple[Any, dict[str, Any]]]) -> None:
    """Record what a restore verified and made (weak references to the arrays, with their files)."""
    with _SEEDS_LOCK:
        _SEEDS[os.path.realpath(directory)] = {"verified": verified, "numpy": numpy, "jax": jax}


def take_seed(directory: str) -> dict[str, Any]:
    if not _SEEDS:
        return {"verified": set(), "numpy": [], "jax": []}
    with _SEEDS_LOCK:
        return _SEEDS.pop(os.path.realpath(directory), {"verified": set(), "numpy": [], "jax": []})


class Store:
    """One directory's files, and which of them this process knows to be intact."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.objects = os.path.join(directory, "objects")
        os.makedirs(self.objects, mode=0o700, exist_ok=True)
        self.known: set[str] = set()  # digests of files written or verified by this process

    def path(self, digest: str, ext: str) -> str:
        return os.path.join(self.objects, _digest_name(digest) + ext)

    def has(self, digest: str, ext: str) -> bool:
        if digest not in self.known:
            return False
        if os.path.exists(self.path(digest, ext)):
            return True
        self.known.discard(digest)  # deleted behind our back: write it again
        return False

    def exists(self, digest: str, ext: str) -> bool:
        return os.path.exists(self.path(digest, ext))

    def open_tmp(self) -> tuple[int, str]:
        fd, path = tempfile.mkstemp(prefix="tmp-", dir=self.objects)  # mode 0600
        return fd, path

    def finish(self, tmp: str, digest: str, ext: str) -> None:
        os.replace(tmp, self.path(digest, ext))
        self.known.add(digest)

    def verify(self, digest: str, ext: str, chunk: int) -> Generator[None, None, bool]:
        """Hash an existing file this process did not write, in pieces; True if it is intact."""
        hasher = file_hasher()
        try:
            with open(self.path(digest, ext), "rb") as f:
                while data := f.read(chunk):
                    hasher.update(data)
                    yield
        except OSError:
            return False
        if hasher.hexdigest() != digest:
            return False
        self.known.add(digest)
        return True

    def commit(self, manifest: dict[str, Any]) -> tuple[str, int]:
        """Write ``manifest``, point ``HEAD`` at it, delete what it does not name; (digest, size)."""
        data = json.dumps(manifest, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        name = f"manifest-{digest}.json"
        _write_atomic(self.directory, name, data)
        head = {"manifest": name, "digest": digest, "cell": manifest.get("cell")}
        _write_atomic(self.directory, "HEAD", json.dumps(head).encode())
        self._collect(name, set(referenced(manifest)))
        return digest, len(data)

    def _collect(self, manifest_name: str, live: set[str]) -> None:
        """Delete what the new manifest does not name (the pass that wrote it has finished)."""
        for entry in _scandir(self.objects):
            if entry.name.startswith("tmp-"):
                _remove(entry.path)  # a half-written file of a value that is gone, or a dead worker's
            elif entry.name.split(".", 1)[0] not in live:
                _remove(entry.path)
                self.known.discard(entry.name.split(".", 1)[0])
        for entry in _scandir(self.directory):
            if entry.name != manifest_name and (entry.name.startswith(("manifest-", ".tmp-"))):
                _remove(entry.path)

    def discard(self) -> None:
        """Delete every snapshot file (a restart): HEAD first, so nothing half-deleted is restored."""
        for name in ("HEAD",):
            _remove(os.path.join(self.directory, name))
        for entry in _scandir(self.objects):
            _remove(entry.path)
        for entry in _scandir(self.directory):
            if entry.name.startswith(("manifest-", ".tmp-")):
                _remove(entry.path)
        self.known.clear()


def referenced(manifest: dict[str, Any]) -> Iterator[str]:
    """Every file digest a manifest names."""
    for record in manifest.get("values", {}).values():
        if "array" in record:
            yield record["array"]["digest"]
        for ref in record.get("arrays", ()):
            yield ref["digest"]
        if "file" in record.get("pickle", {}):
            yield record["pickle"]["digest"]


def read_committed(directory: str, expected: str | None) -> tuple[dict[str, Any], str]:
    """The committed manifest and its digest, checked; raises NoSnapshot or Corrupt."""
    try:
        with open(os.path.join(directory, "HEAD"), "rb") as f:
            head = json.loads(f.read(4096))
    except FileNotFoundError:
        raise NoSnapshot from None
    except (OSError, ValueError):
        raise Corrupt("HEAD is unreadable") from None
    if not isinstance(head, dict):
        raise Corrupt("HEAD is unreadable")
    digest = expected if expected is not None else head.get("digest")
    path = os.path.join(directory, f"manifest-{_digest_name(digest)}.json")
    latest = head.get("digest")
    if expected is not None and latest != expected and isinstance(latest, str) and not os.path.exists(path):
        # Committed after the last summary the kernel received: the worker died in between.  The
        # manifest still has to pass its own check (same trust domain: the notebook's own worker).
        digest, path = latest, os.path.join(directory, f"manifest-{_digest_name(latest)}.json")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST + 1)
    except FileNotFoundError:
        if expected is not None and head.get("digest") != expected:
            raise Corrupt("on disk is not the one the kernel recorded") from None
        raise Corrupt("has lost its manifest") from None
    if len(data) > MAX_MANIFEST or hashlib.sha256(data).hexdigest() != digest:
        raise Corrupt("failed its check")
    try:
        manifest = json.loads(data)
    except ValueError:
        raise Corrupt("failed its check") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("version") != VERSION
    ):
        raise Corrupt(f"is not a {FORMAT} v{VERSION} snapshot")
    return manifest, digest


def _write_atomic(directory: str, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        _remove(tmp)
        raise


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def summarize(manifest: dict[str, Any], digest: str) -> Summary:
    """The Summary of a committed manifest: what the kernel is told and ``%jax_state`` shows."""
    values = manifest.get("values", {})
    files: dict[str, int] = {}
    inline = 0
    for record in values.values():
        for ref in [record.get("array"), *record.get("arrays", ())]:
            if ref:
                files[ref["digest"]] = int(ref.get("bytes", 0))
        pickled = record.get("pickle", {})
        if "file" in pickled:
            files[pickled["digest"]] = int(pickled.get("bytes", 0))
        elif "inline" in pickled:
            inline += len(pickled["inline"]) * 3 // 4
    return Summary(
        cell=manifest.get("cell"),
        digest=digest,
        values={n: {"bytes": int(r.get("bytes", 0)), "kind": str(r.get("kind"))} for n, r in values.items()},
        skipped=dict(manifest.get("skipped", {})),
        bytes=sum(files.values()) + inline,
    )
