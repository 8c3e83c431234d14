"""Where the worker's memory is: per-device figures for ``usage`` requests.

Nothing here imports JAX or starts its backend: a worker whose cells never started JAX
reports so, and starting a GPU backend just to look at it would take the memory (XLA
preallocates) that the report is about.  ``device_memory`` runs on a thread of its own
while a cell may be running, so it reads only what JAX already set up.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import wire


def _started_jax() -> Any | None:
    """JAX's backend module once JAX runs with a backend; None before (never imports it)."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    initialized = getattr(xla_bridge, "backends_are_initialized", None)
    if initialized is None or not initialized():
        return None  # not imported, still being imported on the main thread, or no backend yet
    return xla_bridge


def _device_entry(device: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": device.id, "platform": device.platform, "kind": device.device_kind}
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without statistics reports none
        stats = None
    for field in wire.USAGE_MEMORY_FIELDS:
        if stats and isinstance(stats.get(field), int):
            entry[field] = stats[field]
    return entry


def device_memory() -> dict[str, Any]:
    """The ``usage`` reply: each local device's memory statistics, once JAX has started."""
    xla_bridge = _started_jax()
    if xla_bridge is None:
        return {"jax": "not_started", "devices": []}
    devices = xla_bridge.local_devices()[: wire.USAGE_MAX_DEVICES]
    return {"jax": "ok", "devices": [_device_entry(d) for d in devices]}
