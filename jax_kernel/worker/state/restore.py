"""Restore: load the last committed snapshot into a fresh worker's namespace.

Order of trust: the manifest is checked against the digest the kernel recorded (or, without one,
against ``HEAD``) before anything in it is used; every file a value needs is checked against the
manifest's digest before that value is built, so no code in a pickle runs unless the pickle and
every array it refers to are intact.  A value that fails is reported and skipped; restore never
raises.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import os
import re
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .manifest import NoSnapshot, file_hasher, member_dir, read_committed, seed
from .summary import Corrupt, RestoreReport

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_MISSING = object()


def restore(root: str, ns: dict[str, Any], expected: str | None, member: str = "") -> RestoreReport:
    """Load the committed snapshot under ``root`` into ``ns``; never raises (see the report)."""
    start = time.perf_counter()
    report = RestoreReport()
    builtins_before = ns.get("__builtins__", _MISSING)  # cloudpickle's setstate writes it into globals
    try:
        _restore(member_dir(root, member), ns, expected, report)
    except NoSnapshot:
        report.notes.append("there is no snapshot to restore")
    except (Corrupt, ValueError) as e:
        report.notes.append(f"the snapshot {e}: not restored")
    except Exception as e:  # noqa: BLE001 - a snapshot we cannot read is a note, not a broken worker
        report.notes.append(f"the snapshot could not be read ({type(e).__name__}: {e}): not restored")
    finally:
        if builtins_before is _MISSING:
            ns.pop("__builtins__", None)
        else:
            ns["__builtins__"] = builtins_before
    report.seconds = round(time.perf_counter() - start, 4)
    return report


def _restore(directory: str, ns: dict[str, Any], expected: str | None, report: RestoreReport) -> None:
    manifest, digest = read_committed(directory, expected)
    if expected is not None and digest != expected:
        report.notes.append(
            "it was saved after the last snapshot the kernel had heard of (the worker died telling it)"
        )
    values = manifest.get("values")
    skipped = manifest.get("skipped", {})
    if not isinstance(values, dict) or not isinstance(skipped, dict):
        raise Corrupt("is not understood")
    report.cell = manifest.get("cell") if isinstance(manifest.get("cell"), int) else None
    report.not_restored.update({str(k): str(v) for k, v in skipped.items()})
    loader = _Loader(directory, ns, report.notes)
    loader.verify_all([r for r in values.values() if isinstance(r, dict)])
    results: dict[str, Any] = {}
    aliases = {
        n: r["alias"] for n, r in values.items() if isinstance(r, dict) and isinstance(r.get("alias"), str)
    }
    for name, record in values.items():
        if name in aliases:
            continue
        try:
            if not isinstance(record, dict):
                raise Corrupt("is not understood")
            results[name] = loader.load(name, record)
        except Corrupt as e:
            report.not_restored[name] = f"its saved data {e}: not restored"
        except Exception as e:  # noqa: BLE001 - one value that cannot be built is one value lost
            report.not_restored[name] = f"could not be rebuilt ({type(e).__name__}: {str(e)[:150]})"
    for name, first in aliases.items():
        if first in results:
            results[name] = results[first]
        else:
            report.not_restored[name] = report.not_restored.get(first, "its value was not restored")
    for name in values:
        if name in results:
            ns[name] = results[name]
            report.restored.append(name)
    seed(directory, loader.verified, loader.numpy_arrays, loader.jax_arrays)


class _Loader:
    def __init__(self, directory: str, ns: dict[str, Any], notes: list[str]) -> None:
        self.objects = os.path.join(directory, "objects")
        self.ns = ns
        self.notes = notes
        self.verified: set[str] = set()
        self.numpy_arrays: list[Any] = []  # weak references: the seeds must not keep values alive
        self.jax_arrays: list[tuple[Any, dict[str, Any]]] = []
        self._by_token: dict[Any, Any] = {}
        self._placer: Any = None
        self._mapped: dict[str, Any] = {}  # digest -> checked read-only array, or the Corrupt it raised

    def verify_all(self, records: list[dict[str, Any]]) -> None:
        """Map and check every array file up front, two at a time: sha256 is one core's work per file."""
        refs: dict[str, dict[str, Any]] = {}
        for record in records:
            for ref in [record.get("array"), *record.get("arrays", ())]:
                digest = ref.get("digest") if isinstance(ref, dict) else None
                if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
                    refs.setdefault(digest, ref)

        if not refs:
            return
        from .arrays import map_npy  # numpy: only for a snapshot that holds arrays

        def check(digest: str) -> None:
            try:
                self._mapped[digest] = map_npy(os.path.join(self.objects, digest + ".npy"), refs[digest])
            except FileNotFoundError:
                self._mapped[digest] = Corrupt("is missing")
            except Exception as e:  # noqa: BLE001 - kept, and raised for the value that needs it
                self._mapped[digest] = e if isinstance(e, Corrupt) else Corrupt(f"is unreadable ({e})")

        workers = min(2, os.cpu_count() or 1, len(refs))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(check, refs))
        else:
            for digest in refs:
                check(digest)

    def load(self, name: str, record: dict[str, Any]) -> Any:
        if "module" in record:
            module = record["module"]
            if not isinstance(module, str) or not _MODULE_NAME.match(module):
                raise Corrupt("names no module")
            return importlib.import_module(module)
        if "array" in record:
            value = self.array(name, record["array"])
        elif "pickle" in record:
            arrays = [self.array(name, ref) for ref in record.get("arrays", [])]  # all checked first
            data = self.pickle_bytes(record["pickle"])
            from .pickling import StateUnpickler

            value = StateUnpickler(
                data, self.ns, arrays, lambda meta, host: self.put(host, meta, name)
            ).load()
        else:
            raise Corrupt("is not understood")
        self.notes.extend(str(n) for n in record.get("notes", ()))
        return value

    def array(self, name: str, ref: dict[str, Any]) -> Any:
        token = ("token", ref.get("ref")) if ref.get("ref") is not None else ("file", id(ref))
        if token in self._by_token:
            return self._by_token[token]
        digest = ref.get("digest")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise Corrupt("names no file")
        host = self._mapped.get(digest)
        if host is None:
            raise Corrupt("is missing")
        if isinstance(host, Exception):
            raise host
        if host.dtype != _expected_dtype(ref) or list(host.shape) != ref.get("shape"):
            raise Corrupt("does not match its description")  # the same file named twice, differently
        self.verified.add(digest)
        plain = {k: v for k, v in ref.items() if k not in ("jax", "ref")}
        if isinstance(ref.get("jax"), dict):
            value = self.put(host, ref["jax"], name)
            self.jax_arrays.append((weakref.ref(value), plain))
        else:
            value = host.copy()  # a private, writable copy; the mapping is left to the collector
            self.numpy_arrays.append(weakref.ref(value))
        self._by_token[token] = value
        return value

    def put(self, host: Any, meta: dict[str, Any], name: str) -> Any:
        if self._placer is None:
            from .jaxarrays import Placer

            self._placer = Placer()
        return self._placer.put(host, meta, name, self.notes)

    def pickle_bytes(self, ref: dict[str, Any]) -> bytes:
        digest = ref.get("digest")
        if "inline" in ref:
            try:
                data = base64.b64decode(ref["inline"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise Corrupt("failed its check") from None
        else:
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise Corrupt("names no file")
            try:
                with open(os.path.join(self.objects, digest + ".pkl"), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise Corrupt("is missing") from None
        if file_hasher(data).hexdigest() != digest:
            raise Corrupt("failed its check")
        if "file" in ref:
            self.verified.add(digest)
        return data


def _expected_dtype(ref: dict[str, Any]) -> Any:
    from .arrays import resolve_dtype

    return resolve_dtype(ref.get("descr"), ref.get("dtype"))[1]
