"""What load_jax_library reports: versions, backend, devices (and a set's processes), as a displayable dict.

Runs in the worker process.  :class:`JaxInfo` is also the ``info`` of a ``jax_load`` reply, which the
kernel passes on as it is.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..memory import human
from .settings import STATE, backend_platform


class JaxInfo(dict):
    """What load_jax_library reports; a plain dict that also displays as a table."""

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>{esc(str(v))}</td></tr>"
            for k, v in self.items()
            if k not in ("devices", "processes")
        )
        devices = _html_table(
            ("id", "platform", "kind", "memory"),
            ("id", "platform", "kind", "memory"),
            self.get("devices", []),
        )
        processes = ""
        if self.get("processes"):
            processes = _html_table(
                ("process", "host", "pid", "devices"), ("index", "host", "pid", "devices"), self["processes"]
            )
        return f"<table>{rows}</table>{devices}{processes}"

    def text(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.items() if k not in ("devices", "processes")]
        if self.get("processes"):
            lines.append("processes:")
            for p in self["processes"]:
                lines.append(f"  {p['index']}: {p['host']} pid {p['pid']}, devices {p['devices']}")
        lines.append("devices:")
        for d in self.get("devices", []):
            mem = f", memory {d['memory']}" if d.get("memory") else ""
            lines.append(f"  {d['id']}: {d['platform']} ({d['kind']}){mem}")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def bundle(self) -> dict[str, Any]:
        return {"text/plain": self.text(), "text/html": self._repr_html_(), "application/json": dict(self)}


def _html_table(headers: Sequence[str], keys: Sequence[str], items: Sequence[Mapping[str, Any]]) -> str:
    """One HTML table: a header row, then one row per item with its values under ``keys``."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(i.get(k, '')))}</td>" for k in keys) + "</tr>" for i in items
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def jax_info() -> JaxInfo:
    """Versions, backend and devices of the JAX running in this process."""
    import jax
    import jaxlib

    devices = []
    for d in jax.devices():
        entry: dict[str, Any] = {"id": d.id, "platform": d.platform, "kind": d.device_kind, "memory": None}
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - CPU devices and some plugins have none
            stats = {}
        if stats.get("bytes_limit"):
            entry["memory"] = human(stats["bytes_limit"])
        devices.append(entry)
    config = cast(Any, jax.config)  # options are attributes made at run time: the stubs declare none
    return JaxInfo(
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        backend=backend_platform(),
        device_count=len(devices),
        x64=bool(config.jax_enable_x64),
        compilation_cache_dir=config.jax_compilation_cache_dir,
        matmul_precision=config.jax_default_matmul_precision,
        **({"lease": STATE.lease} if STATE.lease else {}),
        **_process_info(),
        devices=devices,
    )


def _process_info() -> dict[str, Any]:
    """For a set member: where every process of the set runs and which devices it has."""
    if not STATE.member:
        return {}
    import jax

    by_process: dict[int, list[int]] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d.id)
    table = [{**p, "devices": by_process.get(p["index"], [])} for p in STATE.member.get("table", [])]
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "launcher": STATE.member.get("launcher", ""),
        "processes": table,
    }
