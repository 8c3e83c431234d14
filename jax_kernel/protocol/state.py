"""What travels about the worker's snapshots of its variables: JSON summaries, never their content.

The worker saves its namespace into its kernel's private state dir while it is idle
(:mod:`jax_kernel.worker.state`) and tells the kernel what the last committed snapshot holds (a
``state`` message: the cell it reflects, its manifest's digest, each value's size and kind, what
was skipped and why); a worker that replaces a dead one restores it and says what came back (a
``restored`` message).  The kernel reads only these summaries, checked and bounded here (the worker
is untrusted: a name or a reason is a string of bounded length, a count an int), and never a
snapshot file: it neither unpickles nor even opens one.
"""

from __future__ import annotations

from typing import Any

from .checks import is_count

#: Longest name or reason the kernel keeps from a summary; a longer one is cut.
MAX_TEXT = 300
#: Most names a summary may list (values, skipped or restored); the rest are counted, not named.
MAX_NAMES = 2000


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _names(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [n[:MAX_TEXT] for n in value[:MAX_NAMES] if isinstance(n, str)]


def _reasons(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for name, reason in list(value.items())[:MAX_NAMES]:
        if isinstance(name, str) and isinstance(reason, str):
            out[name[:MAX_TEXT]] = reason[:MAX_TEXT]
    return out


def _count(value: Any) -> int | None:
    return value if is_count(value) else None


def _seconds(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0.0
    )


def summary(raw: Any) -> dict[str, Any]:
    """A worker's snapshot summary, as far as it is well formed (see the module docstring)."""
    raw = raw if isinstance(raw, dict) else {}
    values: dict[str, dict[str, Any]] = {}
    listed = raw.get("values")
    if isinstance(listed, dict):
        for name, info in list(listed.items())[:MAX_NAMES]:
            if isinstance(name, str) and isinstance(info, dict):
                values[name[:MAX_TEXT]] = {
                    "bytes": _count(info.get("bytes")) or 0,
                    "kind": _text(info.get("kind")) or "object",
                }
    digest = raw.get("digest")
    return {
        "cell": _count(raw.get("cell")),
        "digest": digest if isinstance(digest, str) and len(digest) <= 128 else None,
        "values": values,
        "skipped": _reasons(raw.get("skipped")),
        "bytes": _count(raw.get("bytes")) or 0,
        "seconds": _seconds(raw.get("seconds")),
    }


def restore_report(raw: Any) -> dict[str, Any]:
    """A fresh worker's account of what it restored, as far as it is well formed."""
    raw = raw if isinstance(raw, dict) else {}
    notes = raw.get("notes")
    return {
        "cell": _count(raw.get("cell")),
        "restored": _names(raw.get("restored")),
        "not_restored": _reasons(raw.get("not_restored")),
        "notes": [n[:MAX_TEXT] for n in notes[:50] if isinstance(n, str)] if isinstance(notes, list) else [],
        "seconds": _seconds(raw.get("seconds")),
        "memory": device_memory(raw.get("memory")),
    }


def device_memory(raw: Any) -> dict[str, Any]:
    """Device memory in use and live JAX buffers, as the worker measured them (``%jax_reset``
    reports them before and after): ``in_use`` None where the backend keeps no statistics (CPU)."""
    raw = raw if isinstance(raw, dict) else {}
    devices = raw.get("devices") if isinstance(raw.get("devices"), list) else []
    used = [d.get("bytes_in_use") for d in devices if isinstance(d, dict)]
    counted = [u for u in used if is_count(u)]
    return {
        "in_use": sum(counted) if counted else None,
        "live_buffers": _count(raw.get("live_buffers")),
    }


def sized(n: int) -> str:
    """A size as a person reads it (the worker's reasons use the same units)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
