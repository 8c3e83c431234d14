"""The worker's ``usage`` reply, which the kernel passes on to the frontend: checked and bounded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .checks import is_count
from .framing import WireError

#: Bounds on the worker's ``usage`` reply, which the kernel passes on to the frontend.
USAGE_MAX_DEVICES = 256
USAGE_MAX_TEXT = 200
USAGE_MAX_BYTES = 1 << 60  # an exabyte: no device memory figure is larger
USAGE_MEMORY_FIELDS = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
USAGE_JAX_STATES = frozenset({"ok", "not_started"})


def _bounded_int(value: Any, what: str, limit: int) -> int:
    if not is_count(value, limit):
        raise WireError(f"usage reply: {what} is not an integer in [0, {limit}]")
    return value


def _bounded_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > USAGE_MAX_TEXT:
        raise WireError(f"usage reply: {what} is not a string of at most {USAGE_MAX_TEXT} characters")
    return value


def validate_usage_reply(content: Mapping[str, Any]) -> dict[str, Any]:
    """Check the worker's ``usage`` reply and copy out only the known fields.

    ``{"jax": "ok" | "not_started", "devices": [{"id", "platform", "kind", "bytes_in_use",
    "peak_bytes_in_use", "bytes_limit"}]}``; the memory fields are absent where the device keeps
    no statistics (CPU).  Anything else, or anything out of bounds, is a WireError.
    """
    jax_state = content.get("jax")
    if jax_state not in USAGE_JAX_STATES:
        raise WireError(f"usage reply: unknown jax state {jax_state!r}")
    devices = content.get("devices", [])
    if not isinstance(devices, list) or len(devices) > USAGE_MAX_DEVICES:
        raise WireError(f"usage reply: devices is not a list of at most {USAGE_MAX_DEVICES}")
    checked = []
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            raise WireError(f"usage reply: device {i} is not an object")
        entry: dict[str, Any] = {
            "id": _bounded_int(device.get("id"), f"device {i} id", 1 << 31),
            "platform": _bounded_text(device.get("platform"), f"device {i} platform"),
            "kind": _bounded_text(device.get("kind"), f"device {i} kind"),
        }
        for field in USAGE_MEMORY_FIELDS:
            if device.get(field) is not None:
                entry[field] = _bounded_int(device[field], f"device {i} {field}", USAGE_MAX_BYTES)
        checked.append(entry)
    return {"jax": jax_state, "devices": checked}
