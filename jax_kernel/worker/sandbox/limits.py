"""Resource limits (rlimits) of the worker, and the memory and process limits of its policy.

Runs in the worker process, the first step of :func:`~jax_kernel.worker.sandbox.apply`: raising
an rlimit back needs CAP_SYS_RESOURCE, which the capabilities step drops later.  The memory and
process limits use the kernel-made cgroups when the worker could join them (:mod:`.cgroups`),
rlimits otherwise or as well.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from .base import _Report
from .cgroups import _join_cgroups


def _setrlimit(res: int, value: int) -> None:
    value = int(value)
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY and value > hard:
        value = hard  # never try to raise a limit: the lower one already applies
    resource.setrlimit(res, (value, value))


def _apply_limits(policy: dict[str, Any], report: _Report) -> None:
    limits = policy.get("limits", {})
    _file_limits(limits, report)
    joined = _join_cgroups(policy.get("cgroups", {}), report)
    _memory_limit(limits, joined, report)
    _process_limit(limits, joined, report)


def _file_limits(limits: dict[str, Any], report: _Report) -> None:
    """No core dumps; the policy's open-file and file-size limits."""
    done = []
    _setrlimit(resource.RLIMIT_CORE, 0)
    done.append("core dumps off")
    if limits.get("max_open_files"):
        _setrlimit(resource.RLIMIT_NOFILE, limits["max_open_files"])
        done.append(f"open files {limits['max_open_files']}")
    if limits.get("max_file_size"):
        _setrlimit(resource.RLIMIT_FSIZE, limits["max_file_size"])
        done.append(f"file size {limits['max_file_size']} B")
    report.active("rlimits", ", ".join(done))


def _memory_limit(limits: dict[str, Any], joined: dict[str, str], report: _Report) -> None:
    memory = limits.get("memory_limit")
    if memory:
        how = []
        if "memory" in joined:
            how.append(f"cgroup {joined['memory']}")
        # RLIMIT_DATA as well: an allocation past it fails cleanly (MemoryError) instead of an
        # OOM kill.  RLIMIT_AS is no use: XLA reserves large virtual ranges and aborts under it.
        _setrlimit(resource.RLIMIT_DATA, memory)
        how.append("RLIMIT_DATA")
        report.active("memory_limit", f"{memory} B ({' + '.join(how)})")


def _process_limit(limits: dict[str, Any], joined: dict[str, str], report: _Report) -> None:
    procs_limit = limits.get("max_processes")
    if procs_limit:
        if "pids" in joined:
            report.active("process_limit", f"{procs_limit} tasks (cgroup {joined['pids']})")
        elif os.getuid() != 0:
            # RLIMIT_NPROC counts every task (threads too) of this uid, the kernel's and other
            # programs' included: allow what exists now plus the policy's number.
            existing = _tasks_of_uid(os.getuid())
            _setrlimit(resource.RLIMIT_NPROC, existing + procs_limit)
            report.active("process_limit", f"{procs_limit} tasks beyond the uid's {existing} (RLIMIT_NPROC)")
        else:
            report.unavailable(
                "process_limit", "running as root, where RLIMIT_NPROC does not apply, and no pids cgroup"
            )


def _tasks_of_uid(uid: int) -> int:
    """Threads of all processes whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (KeyError, ValueError, IndexError):
            continue
    return total
