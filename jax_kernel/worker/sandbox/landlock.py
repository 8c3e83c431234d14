"""Landlock primitives: access rights, the ruleset, and granting a tree minus its hidden paths.

Runs in the worker process.  Landlock restricts only the calling thread and the threads it
creates later, which is why the sandbox goes on before any thread exists.  The worker's one
ruleset is built from the policy in :mod:`.filesystem`; this module knows nothing of the policy.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable

from .base import DEV_ALLOWED, Unavailable, _err, _is_within, _libc, _sys

LL_EXECUTE = 1 << 0
LL_WRITE_FILE = 1 << 1
LL_READ_FILE = 1 << 2
LL_READ_DIR = 1 << 3
LL_REMOVE_DIR = 1 << 4
LL_REMOVE_FILE = 1 << 5
LL_MAKE_CHAR = 1 << 6
LL_MAKE_DIR = 1 << 7
LL_MAKE_REG = 1 << 8
LL_MAKE_SOCK = 1 << 9
LL_MAKE_FIFO = 1 << 10
LL_MAKE_BLOCK = 1 << 11
LL_MAKE_SYM = 1 << 12
LL_REFER = 1 << 13  # ABI 2
LL_TRUNCATE = 1 << 14  # ABI 3
LL_IOCTL_DEV = 1 << 15  # ABI 5
LL_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
LL_SCOPE_SIGNAL = 1 << 1  # ABI 6
LL_NET_BIND_TCP = 1 << 0  # ABI 4
LL_NET_CONNECT_TCP = 1 << 1  # ABI 4
LL_RULE_PATH_BENEATH = 1
LL_RULE_NET_PORT = 2

#: What a writable folder others read gets no right to make (see filesystem._landlock).
SPECIAL_FILES = LL_MAKE_SYM | LL_MAKE_FIFO | LL_MAKE_SOCK | LL_MAKE_CHAR | LL_MAKE_BLOCK
_FILE_RIGHTS = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV
READ = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
DEVICE = LL_READ_FILE | LL_WRITE_FILE | LL_IOCTL_DEV | LL_TRUNCATE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]  # port: host order


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version, 0 if Landlock is unavailable."""
    try:
        nr = _sys("ll_create")
    except Unavailable:
        return 0
    abi = _libc.syscall(nr, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(abi), 0)


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= LL_REFER
    if abi >= 3:
        rights |= LL_TRUNCATE
    if abi >= 5:
        rights |= LL_IOCTL_DEV
    return rights


class _Ruleset:
    def __init__(self, abi: int, net: bool = False) -> None:
        """``net``: also handle TCP bind/connect (ABI >= 4), so that only :meth:`add_ports` allows them."""
        self.abi = abi
        self.handled = _handled_fs(abi)
        self.handled_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP if net and abi >= 4 else 0
        scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL if abi >= 6 else 0
        attr = _RulesetAttr(self.handled, self.handled_net, scoped)
        # The struct grew: {fs} (ABI 1-3), {fs, net} (ABI 4-5), {fs, net, scoped} (ABI 6+); an older
        # kernel refuses a bigger size (E2BIG) unless the extra fields are zero.
        size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 8 if abi < 4 else 16
        self.fd = _libc.syscall(_sys("ll_create"), ctypes.byref(attr), size, 0)
        if self.fd < 0:
            raise _err("landlock_create_ruleset")
        self.scoped = bool(scoped)
        self.rules = 0

    def add(self, path: str, access: int) -> bool:
        """Allow ``access`` beneath ``path``; False if the path does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISDIR(mode):
                if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                    return False  # a pipe or socket (/dev/stderr, say): not governed by rules
                access &= _FILE_RIGHTS
            attr = _PathBeneath(access & self.handled, fd)
            if _libc.syscall(_sys("ll_add"), self.fd, LL_RULE_PATH_BENEATH, ctypes.byref(attr), 0) != 0:
                raise _err(f"landlock_add_rule({path})")
            self.rules += 1
            return True
        finally:
            os.close(fd)

    def add_ports(self, ports: Iterable[int], access: int) -> None:
        """Allow TCP ``access`` (bind and/or connect) to each port; Landlock has no port ranges.

        For a whole ephemeral range this costs tens of ms and some kernel memory per worker
        (bench/RESULTS.md, "Measurements behind design choices"), about half of it the ctypes calls themselves (hence
        one struct and one bound function for every port).  Only a ruleset built once by the long-lived kernel
        and passed to each worker (a stacked layer) would avoid it; a worker starts in seconds.
        """
        attr = _NetPort(access & self.handled_net, 0)
        ref, call, nr, fd = ctypes.byref(attr), _libc.syscall, _sys("ll_add"), self.fd
        for port in ports:
            attr.port = port
            if call(nr, fd, LL_RULE_NET_PORT, ref, 0) != 0:
                raise _err(f"landlock_add_rule(port {port})")
            self.rules += 1

    def restrict(self) -> None:
        if _libc.syscall(_sys("ll_restrict"), self.fd, 0) != 0:
            raise _err("landlock_restrict_self")
        os.close(self.fd)


def _grant(
    rs: _Ruleset,
    path: str,
    hidden: list[str],
    access: int = READ,
    depth: int = 0,
    masked: frozenset[str] | set[str] = frozenset(),
) -> bool:
    """Allow ``access`` to ``path`` and everything beneath it except the hidden paths.

    Landlock only allows, and a rule covers a whole tree: a directory that holds a hidden
    path gets no rule itself (it can't be listed), and each of its entries gets its own.
    """
    real = os.path.realpath(path)
    if real == "/dev" and "/dev" not in masked:
        for name in DEV_ALLOWED:
            rs.add(f"/dev/{name}", access)
        return True
    if any(_is_within(real, h) for h in hidden):
        return False
    carve = hidden if "/dev" in masked else [*hidden, "/dev"]
    if depth < 32 and any(_is_within(h, real) for h in carve):
        if os.path.islink(path):
            return False  # the real directory is handled where it lives
        try:
            entries = os.listdir(real)
        except OSError:
            return False
        for name in entries:
            _grant(rs, os.path.join(real, name), hidden, access, depth + 1, masked)
        return True
    return rs.add(real, access)
