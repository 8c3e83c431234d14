"""The seccomp-bpf deny list of the worker, as raw classic BPF (no libseccomp), with TSYNC.

Runs in the worker process, the last step of the sandbox, since the filter forbids ``unshare``,
``mount`` and ``setns``, which the earlier steps need.  :func:`seccomp_program` is pure (it
builds the bytes for any architecture it has a table for), so the kernel's tests can read it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from .base import _ARCH, NAMESPACE_FLAGS, Unavailable, _err, _libc, _Report, _sys

# Denied system calls by architecture: name -> number.
_DENY = {
    "x86_64": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166,
        "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "kexec_load": 246,
        "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "keyctl": 250, "add_key": 248, "request_key": 249, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pivot_root": 155, "chroot": 161,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "reboot": 169, "swapon": 167, "swapoff": 168, "syslog": 103, "acct": 163, "kcmp": 312,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
        "fremovexattr": 199, "setxattrat": 463, "removexattrat": 466,
    },
    "aarch64": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
        "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "keyctl": 219, "add_key": 217, "request_key": 218, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pivot_root": 41, "chroot": 51,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "reboot": 142, "swapon": 224, "swapoff": 225, "syslog": 116, "acct": 89, "kcmp": 272,
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15,
        "fremovexattr": 16, "setxattrat": 463, "removexattrat": 466,
    },
}  # fmt: skip
# The xattr writes are there because Landlock does not govern them: a POSIX ACL written as
# ``system.posix_acl_access`` changes who may read a file, and as uid 0 the worker owns
# /etc/shadow.  EPERM is what shutil.copy2 and cp already expect from a file system without them.
#: As uid 0 the worker owns most system files, and Landlock does not govern chmod: with the
#: capabilities gone, uid 0 could still chmod /etc/shadow or make a binary setuid.  So for root
#: these succeed without doing anything (an error would break shutil.copy and friends).
_CHMOD = {"x86_64": (90, 91, 268, 452), "aarch64": (52, 53, 452)}
#: Calls that act on a process or thread named by a pid argument: (number, index of the pid
#: argument, required value of args[0] or None, whether a NULL new value (args[2]) makes it a
#: harmless read).  Same uid is all the kernel asks for, so without this a cell could set
#: another kernel's CPU rlimit to 1 s or re-pin its threads; they succeed only on the caller
#: itself (pid 0, or the worker's own pid baked in).  setpriority and ioprio_set take
#: (which, who): only "a process" (PRIO_PROCESS 0, IOPRIO_WHO_PROCESS 1) is allowed, since
#: who=0 with "a user" means every process of the caller's uid.
_SELF_ONLY = {
    "x86_64": {
        "prlimit64": (302, 0, None, True), "setpriority": (141, 1, 0, False),
        "sched_setaffinity": (203, 0, None, False), "sched_setscheduler": (144, 0, None, False),
        "sched_setparam": (142, 0, None, False), "sched_setattr": (314, 0, None, False),
        "ioprio_set": (251, 1, 1, False),
    },
    "aarch64": {
        "prlimit64": (261, 0, None, True), "setpriority": (140, 1, 0, False),
        "sched_setaffinity": (122, 0, None, False), "sched_setscheduler": (119, 0, None, False),
        "sched_setparam": (118, 0, None, False), "sched_setattr": (274, 0, None, False),
        "ioprio_set": (30, 1, 1, False),
    },
}  # fmt: skip
_CLONE = {"x86_64": 56, "aarch64": 220}
_SOCKET = {"x86_64": 41, "aarch64": 198}
#: Allowed at once, before the deny list is walked: XLA's thread pools call futex all the time.
_FAST = {"x86_64": (202,), "aarch64": (98,)}
AF_UNIX = 1
_CLONE3 = 435
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _arg_lo(i: int) -> int:
    """Offset of the low 32 bits of syscall argument ``i`` in struct seccomp_data (little endian).

    A pid, ``which`` or ``who`` is an int: the kernel reads only those 32 bits, so they are what
    the filter must compare (a set high half changes nothing the kernel does)."""
    return 16 + 8 * i


def _self_only(nr: int, pid_arg: int, which: int | None, read_ok: bool, pid: int) -> list[bytes]:
    """BPF for one :data:`_SELF_ONLY` call: allow it on pid 0 (self) or ``pid``, else EPERM.

    Assumes the accumulator holds the syscall number; every path through the block returns.
    """
    # (code, k, where to go if true, if false): None is the next instruction.
    body: list[tuple[int, int, str | None, str | None]] = []
    if which is not None:
        body += [(_BPF_LD_W_ABS, _arg_lo(0), None, None), (_BPF_JEQ_K, which, None, "deny")]
    body += [
        (_BPF_LD_W_ABS, _arg_lo(pid_arg), None, None),
        (_BPF_JEQ_K, 0, "allow", None),
        (_BPF_JEQ_K, pid & 0xFFFFFFFF, "allow", None if read_ok else "deny"),
    ]
    if read_ok:  # prlimit64(other, res, NULL, old) only reads a limit (/proc/<pid>/limits has it)
        body += [
            (_BPF_LD_W_ABS, _arg_lo(2), None, None),
            (_BPF_JEQ_K, 0, None, "deny"),
            (_BPF_LD_W_ABS, _arg_lo(2) + 4, None, None),
            (_BPF_JEQ_K, 0, "allow", "deny"),
        ]
    at = {"deny": len(body), "allow": len(body) + 1}
    code = [
        _ins(op, k, at[jt] - i - 1 if jt else 0, at[jf] - i - 1 if jf else 0)
        for i, (op, k, jt, jf) in enumerate(body)
    ]
    return [
        _ins(_BPF_JEQ_K, nr, 0, len(code) + 2),
        *code,
        _ins(_BPF_RET_K, _RET_ERRNO | errno.EPERM),
        _ins(_BPF_RET_K, _RET_ALLOW),
    ]


def seccomp_program(
    arch: str = _ARCH, root: bool = False, deny_unix_sockets: bool = False, pid: int | None = None
) -> bytes:
    """The deny-list filter as raw classic BPF (no libseccomp needed).

    A denied call fails with EPERM; clone3 fails with ENOSYS so that glibc falls back to
    clone, whose flags (unlike clone3's, which live in memory) the filter can inspect.
    The calls of :data:`_SELF_ONLY` work only on the caller (pid 0) or on ``pid`` (the worker's
    own, baked in: a filter can't ask who is calling; default: this process's pid).  So a thread
    naming itself by its tid, or a forked child by its pid, is refused too: pid 0 works for both.
    """
    deny = _DENY[arch]
    pid = os.getpid() if pid is None else pid
    self_only = _SELF_ONLY[arch]
    prog = [
        _ins(_BPF_LD_W_ABS, 4),  # arch
        _ins(_BPF_JEQ_K, _AUDIT_ARCH[arch], 1, 0),
        _ins(_BPF_RET_K, _RET_KILL_PROCESS),
        _ins(_BPF_LD_W_ABS, 0),  # syscall number
    ]
    if arch == "x86_64":  # the x32 ABI would otherwise be a way around every rule
        prog += [_ins(_BPF_JGE_K, 0x40000000, 0, 1), _ins(_BPF_RET_K, _RET_ERRNO | errno.EPERM)]
    # Fast paths (each filtered call walks the list; ~60 ns saved per hot call): numbers below
    # every one the filter looks at (read, write, mmap, poll, sched_yield, ...), and futex.
    checked = [*deny.values(), *(v[0] for v in self_only.values()), _CLONE3, _CLONE[arch]]
    if root:
        checked += _CHMOD[arch]
    if deny_unix_sockets:
        checked.append(_SOCKET[arch])
    prog += [_ins(_BPF_JGE_K, min(checked), 1, 0), _ins(_BPF_RET_K, _RET_ALLOW)]
    for nr in _FAST[arch]:
        assert nr not in checked
        prog += [_ins(_BPF_JEQ_K, nr, 0, 1), _ins(_BPF_RET_K, _RET_ALLOW)]
    for nr in sorted(deny.values()):
        prog += [_ins(_BPF_JEQ_K, nr, 0, 1), _ins(_BPF_RET_K, _RET_ERRNO | errno.EPERM)]
    if root:
        for nr in _CHMOD[arch]:
            prog += [_ins(_BPF_JEQ_K, nr, 0, 1), _ins(_BPF_RET_K, _RET_ERRNO | 0)]
    for nr, pid_arg, which, read_ok in sorted(self_only.values()):
        prog += _self_only(nr, pid_arg, which, read_ok, pid)
    prog += [_ins(_BPF_JEQ_K, _CLONE3, 0, 1), _ins(_BPF_RET_K, _RET_ERRNO | errno.ENOSYS)]
    if deny_unix_sockets:
        prog += [
            _ins(_BPF_JEQ_K, _SOCKET[arch], 0, 4),
            _ins(_BPF_LD_W_ABS, 16),  # low half of args[0]: the address family
            _ins(_BPF_JEQ_K, AF_UNIX, 0, 1),
            _ins(_BPF_RET_K, _RET_ERRNO | errno.EPERM),
            _ins(_BPF_RET_K, _RET_ALLOW),
        ]
    prog += [
        _ins(_BPF_JEQ_K, _CLONE[arch], 0, 3),
        _ins(_BPF_LD_W_ABS, 16),  # low half of args[0]: the clone flags
        _ins(_BPF_JSET_K, NAMESPACE_FLAGS, 0, 1),
        _ins(_BPF_RET_K, _RET_ERRNO | errno.EPERM),
        _ins(_BPF_RET_K, _RET_ALLOW),
    ]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _apply_seccomp(report: _Report, deny_unix_sockets: bool = False) -> None:
    if _ARCH not in _DENY:
        raise Unavailable(f"no system call table for {_ARCH}")
    root = os.geteuid() == 0
    code = seccomp_program(root=root, deny_unix_sockets=deny_unix_sockets, pid=os.getpid())
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if (
        _libc.syscall(_sys("seccomp"), SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog))
        != 0
    ):
        raise _err("seccomp(SECCOMP_SET_MODE_FILTER)")
    report.active(
        "seccomp",
        f"{len(_DENY[_ARCH]) + 2} system calls denied (ptrace, process_vm_*, mount, unshare/setns, "
        "namespace flags on clone, clone3 -> ENOSYS, bpf, perf_event_open, kexec, modules, keyctl, "
        "userfaultfd, io_uring, xattr and ACL writes, ...); rlimits, nice, I/O priority, CPU affinity and scheduling "
        "only of the worker itself (prlimit64, setpriority, ioprio_set, sched_set*)"
        + ("; chmod is a no-op (uid 0 owns the system's files)" if root else "")
        + ("; no new unix sockets (socketpair only)" if deny_unix_sockets else ""),
    )
