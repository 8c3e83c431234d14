"""StateKeeper: after each successful cell, save what changed in the namespace, a piece at a time.

A *pass* walks the names as they were bound when the cell finished and ends in a commit.  It is a
generator that yields after every bounded piece (one value pickled, one chunk hashed or written),
so the worker's idle loop can run it in ``step()`` slices and drop it for a request.  A newer cell
replaces the pass with one towards the newer cell; nothing is lost, because files are named by
their content (an unchanged array is found already written) and a half-written array file is
continued where it stopped (``writer.Writer``).

Change detection, cheapest first: JAX arrays are immutable, so one seen before (same object,
checked through a weak reference, so the cache neither keeps device memory alive nor trusts a
reused id) costs nothing; a numpy array can change in place, so it is hashed every pass: one that
was unchanged last time is hashed first and written only if its digest is new, while a new one,
or one that changed last time (a training loop's), is hashed while it is written, one pass over its
bytes; a new JAX array is hashed while it is written too.  Everything else is pickled again, which
is cheap with its arrays out of band, and its pickle is found already written when its digest did
not change.

Budgets: a value over ``max_value_bytes`` or over what is left of ``max_total_bytes`` (names in
namespace order get the room first) is skipped with its size; a pass gets ``max_seconds`` of step
time per idle period and carries on after the next cell; numpy arrays that could not be hashed
and written within ``max_seconds`` are skipped, because any cell may change them.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import types
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from .manifest import FORMAT, VERSION, NoSnapshot, member_dir, read_committed, summarize
from .saver import Saver
from .summary import Budgets, Corrupt, RestoreReport, Summary, Unsaveable, human_bytes, saveable_name

#: Immutable values two names may share without being restored as one object.
_NO_ALIAS = (int, float, complex, bool, str, bytes, tuple, frozenset, type(None), types.ModuleType)


@dataclass
class _Target:
    cell: int
    ns: dict[str, Any]
    names: list[str]
    values: dict[str, Any]
    saved: frozenset[str]  # the names saved under their own name (left out of functions' globals)
    history: int  # len(In) when the cell ended: it grows when a cell runs, failed ones included


Pass = Generator[None, None, None]


class StateKeeper:
    """Incremental snapshots of one worker's namespace into ``root`` (see the package docstring)."""

    def __init__(self, root: str, budgets: Budgets, member: str = "") -> None:
        self.directory = member_dir(root, member)
        self.member = member
        self.budgets = budgets
        self._saver = Saver(self.directory)
        self._lock = threading.RLock()
        self._target: _Target | None = None
        self._pass: Pass | None = None
        self._idle_seconds = 0.0  # step time since the last cell_done (bounded by max_seconds)
        self._pass_seconds = 0.0  # step time since the last commit
        self._summary = self._load_summary()

    # -- the API the worker calls -------------------------------------------------------------

    def cell_done(self, ns: dict[str, Any], cell: int, hidden: set[str]) -> None:
        with self._lock:
            self._saver.absorb_seeds()
            names = [n for n in list(ns) if saveable_name(n, hidden)]
            values = {n: ns[n] for n in names}
            self._target = _Target(cell, ns, names, values, frozenset(names), _history(ns))
            self._pass = self._run(self._target)
            self._idle_seconds = 0.0

    def pending(self) -> bool:
        with self._lock:
            return self._pass is not None and self._idle_seconds < self.budgets.max_seconds

    def step(self, seconds: float) -> None:
        with self._lock:
            target = self._target
            if target is not None and _history(target.ns) != target.history:
                # A cell ran and failed (a successful one calls cell_done): it may have changed
                # values in place, so the pass starts over; finished files are found again.
                target.history = _history(target.ns)
                self._pass = self._run(target)
            if self.pending():
                self._advance(time.perf_counter() + seconds, seconds)

    def save_now(self, ns: dict[str, Any], cell: int, hidden: set[str]) -> Summary:
        with self._lock:
            self.cell_done(ns, cell, hidden)
            while self._pass is not None:
                self._advance(time.perf_counter() + 1.0, 0.1)
            return self.summary()

    def summary(self) -> Summary:
        with self._lock:
            s = self._summary
            return dataclasses.replace(s, values=dict(s.values), skipped=dict(s.skipped))

    def stats(self) -> dict[str, int]:
        """Work done since this keeper started (for tests and benches): bytes hashed and written."""
        with self._lock:
            return self._saver.stats()

    def discard(self) -> None:
        with self._lock:
            self._pass = self._target = None
            self._saver.clear()
            self._summary = Summary()
            self._pass_seconds = 0.0

    @staticmethod
    def restore(root: str, ns: dict[str, Any], expected: str | None, member: str = "") -> RestoreReport:
        from .restore import restore

        return restore(root, ns, expected, member)

    # -- stepping -------------------------------------------------------------------------------

    def _advance(self, deadline: float, seconds: float) -> None:
        self._saver.pacer.piece = max(0.002, seconds / 2)
        start = time.perf_counter()
        try:
            while self._pass is not None and time.perf_counter() < deadline:
                next(self._pass)
        except StopIteration:
            self._pass = self._target = None
        except Exception as e:  # noqa: BLE001 - a full disk must not become the user's error
            self._pass = self._target = None
            self._saver.writer.drop_all()
            self._summary.error = f"{type(e).__name__}: {e}"[:300]
        except BaseException:  # KeyboardInterrupt in idle time: start the pass again, keep its files
            self._pass = self._run(self._target) if self._target is not None else None
            raise
        finally:
            spent = time.perf_counter() - start
            self._idle_seconds += spent
            self._pass_seconds += spent
        if self._pass is None and self._summary.error is None:
            self._summary.seconds = round(self._pass_seconds, 4)
            self._pass_seconds = 0.0

    # -- one pass -------------------------------------------------------------------------------

    def _run(self, target: _Target) -> Pass:
        records: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        first_name: dict[int, str] = {}
        tally = _Tally()
        for name in target.names:
            value = target.values[name]
            if id(value) in first_name and not isinstance(value, _NO_ALIAS):
                first = first_name[id(value)]
                if first in records:
                    records[name] = {"kind": records[first]["kind"], "bytes": 0, "alias": first}
                else:
                    skipped[name] = skipped[first]
                continue
            first_name[id(value)] = name
            try:
                records[name] = yield from self._save_value(name, value, target, tally)
            except Unsaveable as e:
                skipped[name] = str(e)
            except OSError:
                raise  # the disk, not the value: the pass stops and says so
            except Exception as e:  # noqa: BLE001 - a value that breaks the engine is that value's loss
                skipped[name] = f"{type(value).__name__}: not saveable ({type(e).__name__}: {str(e)[:120]})"
            yield
        self._commit(target, records, skipped)

    def _save_value(
        self, name: str, value: Any, target: _Target, tally: _Tally
    ) -> Generator[None, None, dict[str, Any]]:
        from .pickling import inside, kind_of, pickle_value  # cloudpickle: only once needed

        if isinstance(value, types.ModuleType):
            if sys.modules.get(value.__name__) is not value:
                raise Unsaveable(f"module {value.__name__}: not importable by its name")
            return {"kind": "module", "bytes": 0, "module": value.__name__}
        top = self._top_level_array(value)
        arrays, pickled, notes = top, b"", []
        if not top:
            pickler = pickle_value(value, target.ns, target.saved, self.budgets, _oob_min())
            arrays, pickled, notes = pickler.arrays, pickler.data, pickler.notes
        record: dict[str, Any] = {"kind": kind_of(value, bool(arrays))}
        from .arrays import Prepared

        try:
            prepared = [Prepared(a) for a in arrays]
        except Unsaveable as e:  # a deleted JAX array
            raise Unsaveable(e.args[0] if top else inside(value, e)) from None
        size = len(pickled) + sum(p.nbytes for p in prepared)
        fresh = len(pickled) + sum(p.nbytes for p in prepared if id(p.array) not in tally.counted)
        if size > self.budgets.max_value_bytes:
            raise Unsaveable(self.budgets.over_value(human_bytes(size)))
        if tally.total + fresh > self.budgets.max_total_bytes:
            raise Unsaveable(self.budgets.over_total(human_bytes(size)))
        mutable = sum(p.nbytes for p in prepared if p.meta is None)
        if mutable / self._saver.pacer.rate > self.budgets.max_seconds:
            # A numpy array can change in any cell, so it must be hashed and written within one
            # idle period's time budget; JAX arrays (immutable) may take several.
            raise Unsaveable(self.budgets.too_slow(f"{human_bytes(mutable)} of numpy arrays"))
        tally.total += fresh
        tally.counted.update(id(p.array) for p in prepared)
        yield
        refs = []
        for p in prepared:
            ref = yield from self._saver.array(p)
            refs.append({**ref, "ref": tally.token(p.array)})
            notes.extend(p.notes)
        record["bytes"] = size
        if top:
            record["array"] = refs[0]
        else:
            record["pickle"] = yield from self._saver.pickle(pickled)
            record["arrays"] = refs
        if notes:
            record["notes"] = [f"{name}: {n}" for n in dict.fromkeys(notes)]
        return record

    def _top_level_array(self, value: Any) -> list[Any]:
        """[value] when the value itself is a large array (saved as one file, no pickle)."""
        np = sys.modules.get("numpy")
        if np is not None and type(value) in (np.ndarray, np.memmap):
            ok = not value.dtype.hasobject and value.dtype.fields is None and value.dtype.subdtype is None
            return [value] if ok and value.nbytes >= _oob_min() else []
        from .jaxarrays import is_jax_array

        if is_jax_array(value) and value.is_fully_addressable and value.nbytes >= _oob_min():
            return [value]
        return []

    def _commit(self, target: _Target, records: dict[str, dict[str, Any]], skipped: dict[str, str]) -> None:
        self._saver.writer.drop_all()  # whatever is still half-written belongs to values that are gone now
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "cell": target.cell,
            "member": self.member,
            "created": time.time(),
            "values": records,
            "skipped": skipped,
        }
        digest, _ = self._saver.store.commit(manifest)
        self._summary = summarize(manifest, digest)
        self._saver.prune()

    def _load_summary(self) -> Summary:
        try:
            manifest, digest = read_committed(self.directory, None)
        except (NoSnapshot, Corrupt, ValueError):
            return Summary()
        return summarize(manifest, digest)


class _Tally:
    """Running totals of one pass: bytes admitted, arrays already counted, alias tokens."""

    def __init__(self) -> None:
        self.total = 0
        self.counted: set[int] = set()
        self._tokens: dict[int, int] = {}

    def token(self, obj: Any) -> int:
        """Same object, same token: restore gives two names sharing an array one array again."""
        return self._tokens.setdefault(id(obj), len(self._tokens))


def _history(ns: dict[str, Any]) -> int:
    history = ns.get("In")
    return len(history) if isinstance(history, list) else 0


def _oob_min() -> int:
    from .arrays import OOB_MIN

    return OOB_MIN
