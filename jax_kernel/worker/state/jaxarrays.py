"""JAX arrays: their bytes through host memory, their placement as JSON, and back onto devices.

Only called for values that are ``jax.Array``s, which exist only once the user's cells imported
JAX: every entry point here takes JAX from ``sys.modules`` and the engine asks ``is_jax_array``
first, so snapshots never import JAX into a worker that did not.

Placement is recorded as plain ids and names (a ``SingleDeviceSharding``'s device, a
``NamedSharding``'s mesh of device ids, axis names and ``PartitionSpec``) because ``jax.Device``
objects cannot be pickled and a restore must be able to say *which* devices are missing.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .arrays import ArraySource, HostSource, as_bytes
from .summary import Unsaveable


def is_jax_array(value: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array)


def describe(x: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """(the array whose bytes are stored, its placement metadata, notes for the user)."""
    jax = sys.modules["jax"]
    if x.is_deleted():
        raise Unsaveable("jax array: deleted (donated to a jitted call, or .delete()d)")
    if not x.is_fully_addressable:
        raise Unsaveable("jax array spanning several processes: not saveable (only process-local arrays are)")
    meta: dict[str, Any] = {}
    data = x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        meta["key_impl"] = str(jax.random.key_impl(x))
        data = jax.random.key_data(x)  # typed PRNG keys have no host form; their uint32 data does
    notes: list[str] = []
    meta.update(placement(x.sharding, notes))
    meta["committed"] = bool(getattr(x, "committed", True))
    meta["weak_type"] = bool(getattr(x, "weak_type", False))
    return data, meta, notes


def placement(sharding: Any, notes: list[str]) -> dict[str, Any]:
    from jax.sharding import NamedSharding, SingleDeviceSharding

    devices = sorted(sharding.device_set, key=lambda d: d.id)
    meta: dict[str, Any] = {"platform": devices[0].platform, "memory_kind": sharding.memory_kind}
    if isinstance(sharding, SingleDeviceSharding):
        meta.update(type="single", device=devices[0].id)
    elif isinstance(sharding, NamedSharding):
        mesh, spec = sharding.mesh, sharding.spec
        ids = np.vectorize(lambda d: d.id, otypes=[np.int64])(mesh.devices)
        meta.update(
            type="named",
            mesh=ids.tolist(),
            axis_names=[str(n) for n in mesh.axis_names],
            axis_types=[t.name for t in getattr(mesh, "axis_types", ())],
            spec=[_encode_axis(p) for p in getattr(spec, "partitions", spec)],
            reduced=sorted(getattr(spec, "reduced", ())),
            unreduced=sorted(getattr(spec, "unreduced", ())),
        )
    else:
        meta.update(type="positional", devices=[d.id for d in devices], sharding=type(sharding).__name__)
        notes.append(f"its {type(sharding).__name__} is kept only as its device ids")
    return meta


def _encode_axis(p: Any) -> Any:
    if p is None or isinstance(p, str):
        return p
    if isinstance(p, tuple):
        return [str(q) for q in p]
    return {"unconstrained": True}  # PartitionSpec.UNCONSTRAINED


def _decode_axis(p: Any) -> Any:
    from jax.sharding import PartitionSpec

    if isinstance(p, list):
        return tuple(p)
    if isinstance(p, dict):
        return PartitionSpec.UNCONSTRAINED
    return p


def source(data: Any) -> ArraySource:
    """The array's bytes: a zero-copy view of a CPU buffer, else gathered row chunk by row chunk."""
    shards = [s for s in data.addressable_shards if s.replica_id == 0]
    if len(shards) == 1 and shards[0].device.platform == "cpu" and shards[0].data.shape == data.shape:
        return HostSource(np.asarray(shards[0].data), mutable=False)
    return ShardSource(data, shards)


class ShardSource(ArraySource):
    """Rows of a sharded or device-resident array, copied to host one chunk at a time.

    Only replica 0 of each shard is read, so a replicated array is copied once; on accelerators
    each chunk is a device-side slice, so host memory holds one chunk, not the whole array.
    """

    def __init__(self, data: Any, shards: list[Any]) -> None:
        shape = tuple(data.shape)
        row = int(np.prod(shape[1:], dtype=np.int64)) * data.dtype.itemsize
        super().__init__(shape, np.dtype(data.dtype), row, mutable=False)
        self._dtype = np.dtype(data.dtype)
        self._row = max(1, row)
        self._parts = []
        for shard in shards:
            index = tuple(shard.index) + (slice(None),) * (len(shape) - len(shard.index))
            first, last, _ = index[0].indices(shape[0])
            on_host = np.asarray(shard.data) if shard.device.platform == "cpu" else None
            self._parts.append((first, last, index[1:], shard.data, on_host))

    def read(self, start: int, size: int) -> memoryview:
        a, b = start // self._row, (start + size) // self._row
        out = self.scratch(b - a, self._dtype)
        for first, last, rest, device_data, on_host in self._parts:
            lo, hi = max(a, first), min(b, last)
            if lo < hi:
                rows = slice(lo - first, hi - first)
                part = on_host[rows] if on_host is not None else np.asarray(device_data[rows])
                out[(slice(lo - a, hi - a), *rest)] = part
        return as_bytes(out)


class Placer:
    """Puts restored host arrays back where they were, or on the default device with a note."""

    def __init__(self) -> None:
        import jax

        self.jax = jax
        self.devices = {(d.platform, d.id): d for d in jax.devices()}
        self._meshes: dict[str, Any] = {}

    def put(self, host: np.ndarray, meta: dict[str, Any], name: str, notes: list[str]) -> Any:
        jax = self.jax
        try:
            target, why = self._target(meta)
        except Exception as e:  # noqa: BLE001 - an unrecognisable placement still restores the data
            target, why = None, f"its placement could not be rebuilt ({type(e).__name__}: {e})"
        out = None
        if target is not None:
            try:
                if meta.get("committed", True):
                    out = jax.device_put(host, target)
                else:
                    with jax.default_device(next(iter(target.device_set))):
                        out = jax.device_put(host)
            except Exception as e:  # noqa: BLE001
                why = f"placing it failed ({type(e).__name__}: {e})"
        if out is None:
            if why:
                notes.append(f"{name}: {why}: placed on the default device")
            out = jax.device_put(host)
        if meta.get("key_impl"):
            out = jax.random.wrap_key_data(out, impl=meta["key_impl"])
        if meta.get("weak_type"):
            out = _weak(out, name, notes)
        return out

    def _target(self, meta: dict[str, Any]) -> tuple[Any, str | None]:
        from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

        kind, platform = meta.get("type"), meta.get("platform")
        if kind == "single":
            device = self.devices.get((platform, meta.get("device")))
            if device is None:
                return None, f"device {platform}:{meta.get('device')} is gone"
            return SingleDeviceSharding(device, memory_kind=meta.get("memory_kind")), None
        if kind == "named":
            ids = np.asarray(meta["mesh"], dtype=np.int64)
            missing = [int(i) for i in ids.flat if (platform, int(i)) not in self.devices]
            if missing:
                return None, f"devices {platform}:{_ranges(missing)} are gone"
            key = repr((platform, meta["mesh"], meta["axis_names"], meta.get("axis_types")))
            if key not in self._meshes:
                self._meshes[key] = self._mesh(ids, platform, meta)
            spec = PartitionSpec(
                *[_decode_axis(p) for p in meta["spec"]],
                **_spec_extras(meta),
            )
            return NamedSharding(self._meshes[key], spec, memory_kind=meta.get("memory_kind")), None
        return None, f"its {meta.get('sharding', 'sharding')} was not kept"

    def _mesh(self, ids: np.ndarray, platform: Any, meta: dict[str, Any]) -> Any:
        from jax.sharding import Mesh

        devices = np.vectorize(lambda i: self.devices[(platform, int(i))], otypes=[object])(ids)
        names = tuple(meta["axis_names"])
        if meta.get("axis_types"):
            from jax.sharding import AxisType

            return Mesh(devices, names, axis_types=tuple(AxisType[t] for t in meta["axis_types"]))
        return Mesh(devices, names)


def _spec_extras(meta: dict[str, Any]) -> dict[str, Any]:
    extras = {k: frozenset(meta[k]) for k in ("reduced", "unreduced") if meta.get(k)}
    return extras


def _weak(x: Any, name: str, notes: list[str]) -> Any:
    """Give back a weakly-typed scalar's weak type (it decides dtype promotion); private API, so guarded."""
    try:
        from jax._src.lax import lax as lax_internal

        return lax_internal._convert_element_type(x, weak_type=True)
    except Exception:  # noqa: BLE001 - a strongly typed value is still the right value
        notes.append(f"{name}: restored with a strong dtype (it was weakly typed)")
        return x


def _ranges(ids: list[int]) -> str:
    """``4-7`` rather than ``4,5,6,7``."""
    ids = sorted(set(ids))
    spans = [[ids[0], ids[0]]]
    for i in ids[1:]:
        if i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
