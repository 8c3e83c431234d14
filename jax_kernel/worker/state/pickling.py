"""Everything that is not a plain array: cloudpickle, with arrays taken out of band.

cloudpickle pickles functions and classes defined in cells (module ``__main__``) by value and
everything importable by reference.  On top of it:

- Arrays of at least ``OOB_MIN`` bytes inside a value (a dict of params, a flax or equinox
  pytree, a dataclass) become persistent ids ``("a", i)`` and go to the ``.npy`` store, so a
  pytree of 1 GiB of arrays is a small pickle plus files that are shared, hashed and written in
  chunks like any array.  Small JAX arrays stay in the pickle with their placement (``("j",
  placement, host copy)``), so they come back on their devices too.
- Functions whose globals are the user namespace get that namespace back on restore (persistent id
  ``("ns",)``) instead of a frozen copy of the globals they read, and the globals that are saved
  under their own names are left out of the function's pickle: after a restore, ``step()`` sees
  the ``lr`` the user assigns next, as it did before the crash.
- ``jax.jit`` objects, which cloudpickle cannot pickle, reduce to ``jax.jit(f.__wrapped__,
  **options)``; ``jax.Device`` objects (inside a ``Mesh`` or a ``NamedSharding``) to their platform
  and id, looked up again on restore.
- Open files are refused rather than pickled as their contents (what cloudpickle does for files
  opened for reading): a restored ``StringIO`` would not be the file.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import time
import types
from typing import Any

import cloudpickle

from .summary import Budgets, Unsaveable, human_bytes

#: Types the pickler never takes out of band: the fast path of ``persistent_id``.
_PLAIN = frozenset(
    {int, float, complex, bool, str, bytes, bytearray, type(None), list, dict, tuple, set, frozenset}
)


class _NamespaceMark:
    """Stands for the user namespace in a function's pickle (persistent id ``("ns",)``)."""


NS_MARK = _NamespaceMark()


class TooLarge(Exception):
    """The pickle outgrew the per-value budget while it was being written."""


class _Bounded(io.BytesIO):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self._limit:
            raise TooLarge
        return super().write(data)


def _rejit(fun: Any, options: dict[str, Any]) -> Any:
    """Unpickling target of a jitted function: jit it again (its compiled code is not kept)."""
    import jax

    return jax.jit(fun, **options)


def _device(platform: str, device_id: int) -> Any:
    """Unpickling target of a ``jax.Device``: the same device, which must still exist."""
    import jax

    try:
        for device in jax.devices(platform):
            if device.id == device_id:
                return device
    except RuntimeError:  # no such backend here any more
        pass
    raise LookupError(f"device {platform}:{device_id} is gone")


def _assemble(shape: tuple[int, ...], sharding: Any, shards: list[Any]) -> Any:
    """Unpickling target of a global array: this process' shards, put back into the whole."""
    import jax

    return jax.make_array_from_single_device_arrays(shape, sharding, shards)


_JIT_OPTIONS = (
    "static_argnums",
    "static_argnames",
    "donate_argnums",
    "donate_argnames",
    "keep_unused",
    "inline",
)


def _jit_options(fun: Any, notes: list[str]) -> dict[str, Any]:
    info = getattr(fun, "_jit_info", None)  # JAX's own record of the options (private: guarded)
    if info is None:
        notes.append("its jit options could not be read: restored as plain jax.jit")
        return {}
    options = {k: getattr(info, k) for k in _JIT_OPTIONS if getattr(info, k, None) not in (None, (), False)}
    if getattr(info, "compiler_options_kvs", ()):
        options["compiler_options"] = dict(info.compiler_options_kvs)
    if getattr(info, "backend", None):
        options["backend"] = info.backend
    lost = [k for k in ("device",) if getattr(info, k, None) is not None]
    if getattr(info, "user_specified_in_shardings", False):
        lost.append("in_shardings")
    if any(type(leaf).__name__ != "UnspecifiedValue" for leaf in getattr(info, "out_shardings_leaves", ())):
        lost.append("out_shardings")
    if lost:
        notes.append(f"jit's {', '.join(lost)} not kept")
    return options


class StatePickler(cloudpickle.Pickler):
    """cloudpickle with the out-of-band arrays and reducers described in the module docstring."""

    def __init__(self, file: Any, ns: dict[str, Any], saved: set[str] | frozenset[str], oob_min: int) -> None:
        super().__init__(file, protocol=5)
        self._ns, self._saved, self._oob_min = ns, saved, oob_min
        self._np = sys.modules.get("numpy")
        self._jax = sys.modules.get("jax")
        self.arrays: list[Any] = []  # the out-of-band arrays, by index
        self._index: dict[int, int] = {}
        self.notes: list[str] = []
        self.data = b""  # the pickle, once dumps() has run

    def _take(self, obj: Any) -> tuple[str, int]:
        if id(obj) not in self._index:
            self._index[id(obj)] = len(self.arrays)
            self.arrays.append(obj)
        return ("a", self._index[id(obj)])

    def persistent_id(self, obj: Any) -> Any:
        if obj is NS_MARK or obj is self._ns:  # ``g = globals()`` comes back as the new namespace
            return ("ns",)
        t = type(obj)
        if t in _PLAIN:
            return None
        np = self._np
        if np is not None and (t is np.ndarray or t is np.memmap):
            if obj.nbytes < self._oob_min or obj.dtype.hasobject or obj.dtype.fields is not None:
                return None
            return self._take(obj)
        jax = self._jax
        if jax is not None and isinstance(obj, jax.Array):
            if not obj.is_fully_addressable:
                return None  # reducer_override splits it into this process' shards
            if obj.nbytes >= self._oob_min:
                return self._take(obj)
            from .jaxarrays import describe

            data, meta, notes = describe(obj)
            self.notes.extend(notes)
            return ("j", meta, np.asarray(data) if np is not None else data)
        return None

    def reducer_override(self, obj: Any) -> Any:
        jax = self._jax
        if jax is not None:
            if type(obj).__name__ == "PjitFunction" and hasattr(obj, "__wrapped__"):
                return (_rejit, (obj.__wrapped__, _jit_options(obj, self.notes)))
            if isinstance(obj, jax.Device):
                return (_device, (obj.platform, obj.id))
            if isinstance(obj, jax.Array) and not obj.is_fully_addressable:
                # A global array of a set of processes: this process keeps its own shards (each a
                # one-device array, saved as usual) and the sharding; the replacement set, laid out
                # alike, puts the global array together again from every member's part.
                if obj.is_deleted():
                    raise pickle.PicklingError("cannot pickle 'deleted jax array' object")
                shards = [s.data for s in obj.addressable_shards]
                return (_assemble, (tuple(obj.shape), obj.sharding, shards))
        if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
            raise pickle.PicklingError(f"cannot pickle '{type(obj).__name__}' object (an open file)")
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func: Any) -> Any:
        """A function of the user namespace: its globals are the namespace it is restored into."""
        reduced = super()._dynamic_function_reduce(func)
        if func.__globals__ is not self._ns:
            return reduced
        try:
            make, args, (state, slots), listitems, dictitems, setter = reduced
            slots = dict(slots)
            slots["__globals__"] = {k: v for k, v in slots["__globals__"].items() if k not in self._saved}
            return (make, (args[0], NS_MARK, *args[2:]), (state, slots), listitems, dictitems, setter)
        except (TypeError, ValueError, KeyError):  # another cloudpickle's layout: keep its own semantics
            return reduced


def pickle_value(
    value: Any, ns: dict[str, Any], saved: frozenset[str], budgets: Budgets, oob_min: int
) -> StatePickler:
    """Pickle a value for the snapshot; what fails, or does not fit the budgets, is Unsaveable."""
    started = time.perf_counter()
    try:
        pickler = dumps(value, ns, saved, budgets.max_value_bytes + 1, oob_min)
    except TooLarge:
        raise Unsaveable(
            budgets.over_value(f"more than {human_bytes(budgets.max_value_bytes)} pickled")
        ) from None
    except Unsaveable as e:  # a deleted JAX array inside
        raise Unsaveable(inside(value, e)) from None
    except Exception as e:  # noqa: BLE001 - whatever pickling raises, the value is skipped
        raise Unsaveable(unsaveable_reason(value, e)) from None
    took = time.perf_counter() - started
    if took > budgets.max_seconds:
        raise Unsaveable(budgets.too_slow(f"pickling it took {took:.1f} s"))
    return pickler


def inside(value: Any, e: Unsaveable) -> str:
    """``dict: not saveable (holds a jax array: deleted ...)``: the reason names the outer value."""
    from .jaxarrays import is_jax_array

    if is_jax_array(value):
        return str(e.args[0])
    return f"{type(value).__name__}: not saveable (holds a {e.args[0]})"


def dumps(
    value: Any, ns: dict[str, Any], saved: set[str] | frozenset[str], limit: int, oob_min: int
) -> StatePickler:
    """Pickle ``value``; the pickler keeps the bytes (``.file``), the arrays taken and the notes."""
    buf = _Bounded(limit)
    pickler = StatePickler(buf, ns, saved, oob_min)
    pickler.dump(value)
    pickler.data = buf.getvalue()
    return pickler


class StateUnpickler(pickle.Unpickler):
    """Resolves the persistent ids ``StatePickler`` wrote."""

    def __init__(self, data: bytes, ns: dict[str, Any], arrays: list[Any], small: Any) -> None:
        super().__init__(io.BytesIO(data))
        self._ns, self._arrays, self._small = ns, arrays, small

    def persistent_load(self, pid: Any) -> Any:
        if pid == ("ns",):
            return self._ns
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "a" and isinstance(pid[1], int):
            return self._arrays[pid[1]]
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "j":
            return self._small(pid[1], pid[2])
        raise pickle.UnpicklingError("unknown persistent id")


def unsaveable_reason(value: Any, exc: BaseException) -> str:
    """``generator: not saveable``; ``dict: not saveable (holds a generator)``."""
    outer = type(value).__name__
    found = re.search(r"cannot pickle '([^']+)' object( \(an open file\))?", str(exc))
    if found:
        inner = found.group(1)
        suffix = found.group(2) or ""
        if inner.rsplit(".", 1)[-1] == outer:
            return f"{outer}{suffix}: not saveable"
        return f"{outer}: not saveable (holds a {inner}{suffix})"
    message = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{outer}: not saveable ({type(exc).__name__}{': ' + message if message else ''})"


_SCALARS = frozenset({int, float, complex, bool, str, bytes, list, dict, tuple, set, frozenset, type(None)})


def kind_of(value: Any, has_arrays: bool) -> str:
    """The kind ``%jax_state`` shows for a value."""
    t = type(value)
    if t.__name__ == "PjitFunction":
        return "jitted function"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return "function"
    if isinstance(value, type):
        return "class"
    if isinstance(value, types.ModuleType):
        return "module"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return "array"
    from .jaxarrays import is_jax_array

    if is_jax_array(value):
        return "jax array"
    if has_arrays:
        return "pytree"
    return t.__name__ if t in _SCALARS else "object"
