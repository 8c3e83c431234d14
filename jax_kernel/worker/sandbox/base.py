"""What every step of the worker's sandbox shares: libc, system call numbers, the report.

Runs in the worker process, before IPython or JAX is imported (see the package docstring):
ctypes and the standard library only, so importing it starts no thread.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

_ARCH = os.uname().machine
# (landlock_create_ruleset, landlock_add_rule, landlock_restrict_self, seccomp, capset) per arch.
_SYSCALLS = {
    "x86_64": {
        "ll_create": 444,
        "ll_add": 445,
        "ll_restrict": 446,
        "seccomp": 317,
        "capset": 126,
        "mount_setattr": 442,
    },
    "aarch64": {
        "ll_create": 444,
        "ll_add": 445,
        "ll_restrict": 446,
        "seccomp": 277,
        "capset": 91,
        "mount_setattr": 442,
    },
}


class Unavailable(Exception):
    """A protection that can't be applied on this host, with the reason as message."""


def _err(what: str) -> Unavailable:
    e = ctypes.get_errno()
    return Unavailable(f"{what} failed: {os.strerror(e)} (errno {e})")


def _sys(name: str) -> int:
    try:
        return _SYSCALLS[_ARCH][name]
    except KeyError:
        raise Unavailable(f"not supported on {_ARCH}") from None


# Namespace flags of unshare, setns and clone (the seccomp filter refuses them on clone).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWTIME
)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


#: /dev is never readable wholesale: a raw disk is readable to its owner (root) and would
#: bypass every rule.  These are the devices a Python/JAX process uses.
DEV_ALLOWED = (
    "null",
    "zero",
    "full",
    "random",
    "urandom",
    "tty",
    "ptmx",
    "pts",
    "fd",
    "stdin",
    "stdout",
    "stderr",
)


class _Report:
    """What :func:`~jax_kernel.worker.sandbox.apply` found: each protection active or unavailable."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.data: dict[str, Any] = {"profile": profile, "active": {}, "unavailable": {}}

    def active(self, name: str, detail: str) -> None:
        self.data["active"][name] = detail

    def unavailable(self, name: str, reason: str) -> None:
        self.data["unavailable"][name] = reason

    def step(self, name: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Unavailable as e:
            self.unavailable(name, str(e))
        except OSError as e:
            self.unavailable(name, f"{e.strerror or e}")
