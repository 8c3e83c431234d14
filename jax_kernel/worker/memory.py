"""Where the worker's memory is: per-device figures for ``usage`` requests and ``%jax_memory``.

Nothing here imports JAX or starts its backend: a worker whose cells never started JAX
reports so, and starting a GPU backend just to look at it would take the memory (XLA
preallocates) that the report is about.  ``device_memory`` runs on a thread of its own
while a cell may be running, so it reads only what JAX already set up.
"""

from __future__ import annotations

import html
import math
import sys
from typing import Any

from ..protocol import wire

#: Live arrays listed by ``%jax_memory`` unless ``--top`` says otherwise.
DEFAULT_TOP = 10


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


def buffers_and_memory() -> dict[str, Any]:
    """:func:`device_memory` plus the number of live JAX arrays (``%jax_reset`` reports both)."""
    report = device_memory()
    if report["jax"] == "ok":
        jax = sys.modules["jax"]
        report["live_buffers"] = len(jax.live_arrays())
    return report


def host_rss() -> int | None:
    """This process' resident memory in bytes."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - a report without RSS is still a report
        return None


def _live_arrays(top: int) -> tuple[list[dict[str, Any]], int, int, dict[int, int]]:
    """The ``top`` largest live arrays, their count, total bytes, and live bytes per device id."""
    import jax

    arrays = []
    per_device: dict[int, int] = {}
    for x in jax.live_arrays():
        try:
            if x.is_deleted():
                continue
            devices = sorted(x.devices(), key=lambda d: d.id)
            shard_bytes = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
            for d in devices:
                per_device[d.id] = per_device.get(d.id, 0) + shard_bytes
            arrays.append((x.nbytes, x.shape, x.dtype, devices))
        except Exception:  # noqa: BLE001 - an array deleted meanwhile is simply not listed
            continue
    arrays.sort(key=lambda a: a[0], reverse=True)
    rows = [
        {
            "nbytes": nbytes,
            "shape": tuple(shape),
            "dtype": str(dtype),
            "devices": ", ".join(str(d) for d in devs[:4])
            + (f", … ({len(devs)} in all)" if len(devs) > 4 else ""),
        }
        for nbytes, shape, dtype, devs in arrays[:top]
    ]
    return rows, len(arrays), sum(a[0] for a in arrays), per_device


def memory_report(top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Everything ``%jax_memory`` shows, as plain data."""
    report: dict[str, Any] = {"rss": host_rss(), "jax": "not_started", "devices": [], "arrays": []}
    xla_bridge = _started_jax()
    if xla_bridge is None:
        return report
    rows, count, total, per_device = _live_arrays(top)
    devices = [_device_entry(d) for d in xla_bridge.local_devices()]
    for d in devices:
        d["live_bytes"] = per_device.get(d["id"], 0)
    report.update(jax="ok", devices=devices, arrays=rows, array_count=count, array_bytes=total)
    return report


def human(n: int | None) -> str:
    """Bytes as people read them: 1.5 GiB, 12.0 MiB, 512 B."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) for each table of the report, shared by both renderings."""
    tables = []
    if report["jax"] != "ok":
        note = "JAX has not started a backend in this worker yet: there are no devices or arrays to show."
        return [("Worker process", ["host RSS"], [[human(report["rss"])]], note)]
    no_stats = [d for d in report["devices"] if "bytes_in_use" not in d]
    rows = [
        [
            str(d["id"]),
            d["platform"],
            d["kind"],
            human(d.get("bytes_in_use")),
            human(d.get("peak_bytes_in_use")),
            human(d.get("bytes_limit")),
            human(d["live_bytes"]),
        ]
        for d in report["devices"]
    ]
    note = (
        f"{', '.join(sorted({d['platform'] for d in no_stats}))} devices keep no memory statistics "
        "(memory_stats() is None): see the live arrays and the host RSS."
        if no_stats
        else ""
    )
    header = ["id", "platform", "kind", "in use", "peak", "limit", "live arrays"]
    tables.append(("Devices", header, rows, note))
    arrays = [[human(a["nbytes"]), str(a["shape"]), a["dtype"], a["devices"]] for a in report["arrays"]]
    shown = len(report["arrays"])
    count = report["array_count"]
    note = f"{count} live array{'' if count == 1 else 's'}, {human(report['array_bytes'])} in all"
    if shown < report["array_count"]:
        note += f"; the {shown} largest shown"
    tables.append(("Live arrays", ["size", "shape", "dtype", "devices"], arrays, note))
    tables.append(("Worker process", ["host RSS"], [[human(report["rss"])]], ""))
    return tables


def render_text(report: dict[str, Any]) -> str:
    """The report as aligned plain-text tables."""
    out = []
    for title, header, rows, note in _tables(report):
        widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
        out.append(title)
        for row in [header, *rows]:
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if note:
            out.append(f"  {note}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_html(report: dict[str, Any]) -> str:
    """The report as HTML tables."""
    parts = ["<div class='jax-memory'>"]
    for title, header, rows, note in _tables(report):
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in rows
        )
        parts.append(f"<h4>{html.escape(title)}</h4><table><tr>{head}</tr>{body}</table>")
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("</div>")
    return "".join(parts)
