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


def _autogroup(pid: int, nice: int) -> None:
    """With the kernel's autogroup scheduling (``sched_autogroup_enabled``), CPU time is shared
    between sessions first, and a worker is a session of its own (it is started with setsid): a
    thread's nice then only ranks it within its session.  The session's weight is its
    autogroup's nice (``/proc/<pid>/autogroup``), so that is set too."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass  # no autogroup scheduling here: the threads' nice is what counts


def lower(pid: int, nice: int) -> bool:
    """Every thread of ``pid`` (and its session's autogroup) to ``nice``; False if it could not
    be done (it then runs as it was)."""
    if nice <= 0 or not can_restore() or not _set(pid, nice):
        return False
    _autogroup(pid, nice)
    return True


def restore(pid: int) -> bool:
    """Every thread of ``pid`` (and its autogroup) back to this process's own priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    _autogroup(pid, own)
    return _set(pid, own)
