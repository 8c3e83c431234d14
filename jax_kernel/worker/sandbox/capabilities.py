"""``no_new_privs`` and dropping every capability of the worker.

Runs in the worker process, after the namespaces and mounts (which need CAP_SYS_ADMIN) and
before Landlock and seccomp.  As root, uid 0 stays, so an interpreter under a 0700 ``/root``
still works, but the DAC override, CAP_KILL, CAP_SYS_RESOURCE (raising the rlimits back) and
CAP_SYS_ADMIN are gone.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .base import _err, _libc, _Report, _sys

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_DUMPABLE = 4


def _no_new_privs(report: _Report) -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _err("prctl(PR_SET_NO_NEW_PRIVS)")
    report.active("no_new_privs", "set: exec can't gain privileges (setuid, file capabilities)")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities(report: _Report) -> None:
    """Drop every capability; as root, uid 0 stays (see the module docstring for why).

    Not root, the worker may still hold every capability of the user namespace it made for
    its mount/network namespaces: those go too (dropping is always allowed)."""
    root = os.geteuid() == 0
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and root and ctypes.get_errno() != errno.EINVAL:
            raise _err(f"prctl(PR_CAPBSET_DROP, {cap})")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _libc.syscall(_sys("capset"), ctypes.byref(header), data) != 0:
        raise _err("capset")
    report.active(
        "capabilities",
        "all dropped (uid stays 0: the interpreter may live under a 0700 home)"
        if root
        else f"all dropped (uid {os.geteuid()}, user namespace included)",
    )
