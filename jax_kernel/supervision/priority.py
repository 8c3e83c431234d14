"""Kernel process: a standby worker warms up at a low CPU priority and works at the normal one.

A standby is refilled as soon as the last one is taken, so that a second restart a few seconds
after the first finds one warm.  Its warm-up pauses while a cell runs (``Standby.pause``); in
between, it should still give way to anything else that runs, so the kernel lowers every thread
of the new process right after it starts (Linux keeps a nice value per thread, and a thread
inherits its creator's) and raises them all back when the standby takes up work.  Raising a
priority needs ``CAP_SYS_NICE`` (root) or an ``RLIMIT_NICE`` that allows it, in the kernel's
process; where neither holds the standby warms up at the kernel's own priority.
"""

from __future__ import annotations

import functools
import os
import resource

#: CAP_SYS_NICE's bit in /proc/<pid>/status's CapEff mask.
_CAP_SYS_NICE = 23


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _set(pid: int, nice: int) -> bool:
    ok = True
    for tid in _tasks(pid):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError:
            ok = False
    return ok


@functools.cache
def can_restore() -> bool:
    """Whether this process may give a lowered worker its normal priority back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:") and int(line.split()[1], 16) >> _CAP_SYS_NICE & 1:
                    return True
    except (OSError, ValueError):
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft >= 20 - os.getpriority(os.PRIO_PROCESS, 0)


def lower(pid: int, nice: int) -> bool:
    """Every thread of ``pid`` to ``nice``; False if it could not be done (it then runs as it was)."""
    return nice > 0 and can_restore() and _set(pid, nice)


def restore(pid: int) -> bool:
    """Every thread of ``pid`` back to this process's own priority."""
    return _set(pid, os.getpriority(os.PRIO_PROCESS, 0))
