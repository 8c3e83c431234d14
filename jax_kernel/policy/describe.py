"""Kernel process: what the kernel says about the sandbox, to the worker's policy, the log and the frontend.

The notes in each worker's policy on what the kernel enforces itself (``%sandbox`` shows them
next to what the worker applied), the one warning about what this host does not offer, the
worker's report as ``kernel_info_reply`` carries it, and the limit that ended a worker, named
for the user ("killed by the sandbox's memory limit").
"""

from __future__ import annotations

import signal
from typing import Any

from ..protocol.exitcodes import EXIT_STRICT
from .limits import WorkerSandbox, parse_size


def kernel_side(active_outputs_mode: str, cpu_time_limit: float, made: list[str]) -> dict[str, str]:
    """What the kernel enforces itself, for a worker's policy: its environment filter, the
    ``active_outputs_mode`` and ``cpu_time_limit`` settings, and the config placeholders ``made``."""
    notes = {
        "environment": "allowlist (Sandbox.env_allow, minus Sandbox.env_deny): kernel secrets, "
        "tokens, service URLs and connection paths stay out"
    }
    if active_outputs_mode == "sanitize":
        notes["active_outputs"] = (
            "sanitized by the kernel: JavaScript dropped, HTML cleaned (nh3), script-bearing SVG and "
            "Markdown dropped (Sandbox.active_outputs)"
        )
    if cpu_time_limit:
        notes["cpu_time_limit"] = f"{cpu_time_limit:g} CPU s per cell (kernel-side watchdog)"
    notes["config_locations"] = (
        "existing dot-entries of writable folders and the config/code dirs inside them are read-only"
        + (f"; made where missing, to be read-only too: {made}" if made else "")
        + "; not yet: a new top-level dot-file or .git in a writable folder is not refused"
    )
    return notes


def unavailable(report: dict[str, Any]) -> str | None:
    """What a worker's ``report`` says it could not apply on this host, as one line, or None."""
    missing = report.get("unavailable")
    if missing and isinstance(missing, dict):
        return "; ".join(f"{k}: {v}" for k, v in missing.items())
    return None


def reported(report: dict[str, Any]) -> dict[str, Any]:
    """The parts of a worker's ``report`` that ``kernel_info_reply`` carries."""
    info = {"active": report.get("active", {}), "unavailable": report.get("unavailable", {})}
    for key in ("network", "masking"):
        if isinstance(report.get(key), str):
            info[key] = report[key]
    return info


def explain_exit(ws: WorkerSandbox, returncode: int | None, profile: str) -> str | None:
    """Name the limit that ended a worker (``ws``, under ``profile``), if one did."""
    limits = ws.policy.get("limits", {})
    if returncode == EXIT_STRICT and profile == "strict":
        return "could not apply the strict sandbox profile on this host"
    if returncode == -signal.SIGKILL:
        cg = ws.cgroups.get("memory")
        if cg is not None and cg.oom_kills():
            return (
                f"was killed by the sandbox's memory limit ({limits.get('memory_limit', 0):,} bytes, "
                "Sandbox.memory_limit)"
            )
    if returncode == -signal.SIGXFSZ:
        return f"exceeded the sandbox's file size limit ({limits.get('max_file_size')} bytes, Sandbox.max_file_size)"
    if returncode == -signal.SIGXCPU:
        return "exceeded the sandbox's CPU time limit (Sandbox.cpu_time_limit)"
    return None


def policy_info(sandbox: Any) -> dict[str, Any]:
    """``Sandbox``'s policy and what its last worker reported, as ``kernel_info_reply`` carries it."""
    info: dict[str, Any] = {
        "profile": sandbox.profile,
        "allow_network": sandbox.network_allowed,
        "egress": sandbox.egress if sandbox.network_allowed else None,
        "active_outputs": sandbox.active_outputs_mode,
        "host_ports": list(sandbox.host_ports),
        "memory_limit": parse_size(sandbox.memory_limit, "memory_limit") if sandbox.enabled else 0,
        "max_processes": sandbox.max_processes,
        "max_open_files": sandbox.max_open_files,
        "max_file_size": parse_size(sandbox.max_file_size, "max_file_size"),
        "cpu_time_limit": sandbox.cpu_time_limit,
        "accelerators": sandbox.accelerators,
    }
    if sandbox.last_report is not None:
        info.update(reported(sandbox.last_report))
    return info
