"""Worker side of the sandbox: applies the kernel's policy to this process, first thing.

:func:`apply` runs in ``jax_kernel.worker.__main__`` before IPython or JAX is imported and
before any thread exists, because Landlock restricts only the calling thread and the
threads it creates later, and a user namespace can't be made once a process has threads.
Everything here uses ctypes and the standard library only, so importing this module
starts no thread either.

Order (each step needs the privileges the later ones take away):

1. resource limits (rlimits) and joining the kernel-made cgroups (memory, pids);
2. namespaces: a new network namespace when the policy denies the network (with a user
   namespace first when not root);
3. ``no_new_privs``, then, as root, every capability is dropped (bounding, ambient,
   effective, permitted, inheritable): uid 0 stays, so an interpreter under a 0700
   ``/root`` still works, but the DAC override, CAP_KILL, CAP_SYS_RESOURCE (raising the
   rlimits back) and CAP_SYS_ADMIN are gone;
4. Landlock: file system read-only except the writable paths, hidden paths unreadable,
   and (ABI >= 6) signals and abstract unix sockets scoped to the worker's own domain,
   so it can't signal the kernel or anyone else even as uid 0; when the policy has
   ``net_rules`` (ABI >= 4), TCP bind and connect only to the ports it names;
5. seccomp-bpf (a deny list, with TSYNC), last, since it forbids ``unshare``.

Every step records itself as active or unavailable (with the reason) in a report that
``%sandbox`` and the kernel's ``kernel_info_reply`` show.  Under the ``strict`` profile an
unavailable protection ends the worker (exit code :data:`EXIT_STRICT`) with a message on
stderr naming it; under ``standard`` it is reported and the worker goes on.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import resource
import stat
import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol.exitcodes import EXIT_STRICT

#: What the last :func:`apply` did, for ``%sandbox`` and the ``ready`` message.
REPORT: dict[str, Any] = {"profile": "off", "active": {}, "unavailable": {}}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_DUMPABLE = 4

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


# --- resource limits and cgroups ------------------------------------------------------


def _setrlimit(res: int, value: int) -> None:
    value = int(value)
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY and value > hard:
        value = hard  # never try to raise a limit: the lower one already applies
    resource.setrlimit(res, (value, value))


def _apply_limits(policy: dict[str, Any], report: _Report) -> None:
    limits = policy.get("limits", {})
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

    cgroups = policy.get("cgroups", {})
    joined = {}
    for controller, procs in cgroups.items():
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            joined[controller] = os.path.dirname(procs)
        except OSError as e:
            report.unavailable(f"cgroup_{controller}", f"could not join {procs}: {e.strerror}")

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


# --- namespaces --------------------------------------------------------------------------

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


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD = -100
AT_RECURSIVE = 0x8000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _mount_setattr(path: str, recursive: bool, set_: int = 0, clear: int = 0) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    if (
        _libc.syscall(
            _sys("mount_setattr"), AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)
        )
        != 0
    ):
        raise _err(f"mount_setattr({path})")


def _readonly_mounts() -> list[str]:
    """Mount points (as /proc/self/mountinfo names them) that are read-only now."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if "ro" in fields[5].split(","):
                # mountinfo escapes blanks and backslashes as octal
                found.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return found


def _readonly_root(writable: list[str]) -> list[str]:
    """Make every mount read-only (recursively, from ``/``), then bind the ``writable`` folders
    back read-write, each at its own path; return the folders bound back.

    Landlock governs opening and creating files, not their metadata: as root a POSIX ACL
    (``setxattr``), ``utime`` or a ``user.*`` xattr changed files in folders the worker could not
    write.  A read-only mount refuses them all (EROFS), whoever the caller is.  A mount that was
    read-only before stays so inside a writable folder too.
    """
    already_ro = set(_readonly_mounts())
    folders: list[str] = []
    for path in sorted({os.path.realpath(p) for p in writable}, key=len):
        if os.path.isdir(path) and not any(_is_within(path, f) for f in folders):
            folders.append(path)
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in folders}
    try:
        _mount_setattr("/", True, set_=MOUNT_ATTR_RDONLY)
        for path, fd in fds.items():
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount_setattr(path, True, clear=MOUNT_ATTR_RDONLY)
            for point in already_ro:
                if _is_within(point, path):
                    _mount_setattr(point, False, set_=MOUNT_ATTR_RDONLY)
    finally:
        for fd in fds.values():
            os.close(fd)
    return folders


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        raise _err(f"mount({target})")


def _namespaces(policy: dict[str, Any], report: _Report) -> list[str]:
    """New mount (and, if the network is denied, network) namespaces; return the masked paths.

    In its own mount namespace the worker covers each hidden path with an empty, read-only,
    mode-000 tmpfs (a directory) or file (a file), so the folders around it stay usable
    (notebooks in ``~`` beside ``~/.ssh``); Landlock carves out whatever could not be masked.
    Not root: a user namespace mapping our own ids comes first (the interpreter keeps working).
    """
    want_net = not policy.get("allow_network", True)
    # The namespace the kernel made: a set's private network, or this kernel's user-mode egress
    # (jax_kernel.host.netns); either way the kernel checks from /proc that we joined it.
    join = policy.get("join_netns")
    egress = policy.get("egress") or {}
    uid, gid = os.getuid(), os.getgid()
    user = 0 if uid == 0 else CLONE_NEWUSER
    net = CLONE_NEWNET if want_net and not join else 0
    mounts = True
    if _libc.unshare(user | CLONE_NEWNS | net) != 0:
        why = _err("unshare(CLONE_NEWNS)")
        mounts = False
        if net and _libc.unshare(user | net) != 0:
            report.unavailable("network", str(_err("unshare(CLONE_NEWNET)")))
            net = 0
        elif not net:
            user = 0
        report.data["masking"] = f"hidden paths carved out of Landlock's rules instead ({why})"
    if user:
        # Map our own ids so that files keep their owners and the interpreter still runs.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    if net:
        report.active("network", "isolated: a new network namespace with no interfaces up")
    if join:
        what = "the set's network namespace" if want_net else "the kernel's user-mode egress"
        try:
            _join_network(join)
            report.active(
                "network",
                "the set's own network namespace: loopback shared by its processes, nothing else"
                if want_net
                else egress.get("describe", "user-mode egress"),
            )
            if not want_net:
                report.data["network"] = (
                    "allowed by policy, through user-mode egress (not the host's loopback)"
                )
        except (Unavailable, OSError) as e:
            report.unavailable("network", f"could not join {what} ({e})")
    elif not want_net and egress.get("unavailable"):
        report.unavailable("network", egress["unavailable"])
        report.data["network"] = "allowed by policy, on the host's network (loopback included)"
    elif not want_net and egress.get("host"):
        report.data["network"] = egress["host"]
    masked: list[str] = []
    if not mounts:
        report.unavailable(
            "readonly_root", f"no mount namespace, so the host's files keep writable metadata ({why})"
        )
        return masked
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    fs = policy.get("fs", {})
    # The host's shared memory, when accelerators use it and /dev can't be private (NCCL).
    shm = ["/dev/shm"] if "/dev/shm" in fs.get("devices", []) else []
    try:
        back = _readonly_root([*fs.get("writable", []), *shm])
        report.active(
            "readonly_root",
            f"mount namespace: / and every mount beneath it read-only, only {back} bound back "
            "writable: extended attributes, ACLs, times and modes of every other file fail (EROFS)",
        )
    except (Unavailable, OSError) as e:
        report.unavailable(
            "readonly_root", f"the host's files keep writable metadata (xattr, ACL, utime): {e}"
        )
    readonly = []
    for path in policy.get("fs", {}).get("readonly", []):
        try:
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            readonly.append(path)
        except Unavailable as e:
            report.unavailable(f"readonly:{path}", str(e))
    policy["readonly_done"] = readonly
    # A writable path the policy names inside a read-only one (the compilation cache under ~/.cache
    # when the notebooks live in ~) gets a writable bind of its own on top.
    for path in policy.get("fs", {}).get("writable", []):
        real = os.path.realpath(path)
        if os.path.isdir(real) and any(real.startswith(ro.rstrip("/") + "/") for ro in readonly):
            try:
                _mount(real, real, None, MS_BIND | MS_REC)
                _mount(None, real, None, MS_REMOUNT | MS_BIND)
            except Unavailable as e:
                report.unavailable(f"writable:{real}", str(e))
    shared = policy.get("fs", {}).get("shared_cache")
    if shared:
        try:
            _shared_cache(shared["root"], shared["folder"])
            report.data["cache"] = "compilation cache: this notebook's folder only (the others are not there)"
        except (Unavailable, OSError, KeyError, TypeError) as e:
            report.data["cache"] = f"compilation cache: other notebooks' folders stay readable ({e})"
    private_tmp = policy.get("fs", {}).get("private_tmp")
    tmp_note = ""
    if private_tmp:
        try:
            writable_now = policy.get("fs", {}).get("writable", [])
            kept = _private_tmp(private_tmp["dir"], private_tmp.get("keep", []), writable_now)
            policy["tmp_done"] = os.path.realpath("/tmp")
            tmp_note = f"; a private /tmp ({kept} of the host's paths under it kept: the kernel's own)"
        except (Unavailable, OSError, KeyError, TypeError) as e:
            report.unavailable("private_tmp", str(e))
    resolv = policy.get("fs", {}).get("resolv_conf")
    if resolv and "network" in report.data["active"]:
        # The host's resolver listens on its loopback, which egress does not reach: the kernel
        # forwards it to our 127.0.0.1:53 and wrote the resolv.conf that says so.
        try:
            _bind_regular_file(resolv, os.path.realpath("/etc/resolv.conf"))
        except (Unavailable, OSError) as e:
            report.unavailable("dns", f"the host's resolver is on its loopback, out of reach ({e})")
    mask_file = policy.get("fs", {}).get("mask_file")
    for path in policy.get("fs", {}).get("hidden", []):
        real = os.path.realpath(path)
        if not os.path.exists(real):
            continue
        try:
            if os.path.isdir(real):
                _mount(
                    "none",
                    real,
                    "tmpfs",
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    "size=4k,nr_inodes=1,mode=000",
                )
            elif mask_file:
                _bind_regular_file(mask_file, real, policy["fs"].get("mask_id"))
                _mount(None, real, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            else:
                continue
        except Unavailable:
            continue
        masked.append(real)
    try:
        _private_dev(policy.get("fs", {}).get("devices", []))
        masked.append("/dev")
        dev = "; a private /dev with only the safe devices"
    except (Unavailable, OSError) as e:
        dev = f"; /dev carved out of Landlock's rules ({e})"
    report.data["masking"] = (
        f"mount namespace: {len(masked)} paths covered by empty mode-000 mounts{dev}; "
        f"{len(readonly)} paths inside writable folders kept read-only (code, config, dot-files){tmp_note}"
    )
    # The working directory still points into the mount it started on, now read-only and under
    # the binds made since: look it up again, so that it is the topmost mount there (the writable
    # bind of the notebook folder, or a read-only bind on it), as for a process started now.
    os.chdir(os.getcwd())
    return masked


def _private_tmp(directory: str, keep: list[str], writable: list[str]) -> int:
    """Put ``directory`` (the kernel's, empty at first) over ``/tmp``, then bind back what of the
    host's ``/tmp`` the worker needs (``keep``: its notebook folder, state dir, interpreter, ... when
    they live there), each at its own path; return how many were bound back.

    Other notebooks' temp files, their kernels' connection files (jupyter_client puts them in /tmp
    when no runtime dir is given), tmux's and ssh-agent's sockets: none of it is in the new /tmp.
    Every path is opened (O_PATH) before /tmp is covered and bound from its descriptor, so the
    mounts made before (read-only code, a writable cache inside it) come along (MS_REC).  What is
    not inside a ``writable`` path is bound back read-only: the new /tmp itself is writable, and
    Landlock's grant on it would reach whatever is mounted beneath it.
    """
    writable_real = [os.path.realpath(w) for w in writable]
    real_tmp = os.path.realpath("/tmp")
    inside = sorted(
        {os.path.realpath(p) for p in keep if _is_within(os.path.realpath(p), real_tmp) and os.path.exists(p)}
    )
    # Parents first; a kept path inside another comes along with it (MS_REC), unless it must be
    # writable inside a read-only one (the state dir's history and temp dirs): then it gets its own.
    plan: list[tuple[str, bool]] = []
    for path in inside:
        rw = any(_is_within(path, w) for w in writable_real)
        parent = next((b for b in reversed(plan) if _is_within(path, b[0])), None)
        if path != real_tmp and (parent is None or parent[1] != rw):
            plan.append((path, rw))
    fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path, _ in plan}
    new = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _mount(f"/proc/self/fd/{new}", real_tmp, None, MS_BIND)
    except Unavailable:
        for fd in [new, *fds.values()]:
            os.close(fd)
        raise
    try:
        _mount(None, real_tmp, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        for path, fd in fds.items():
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(path, exist_ok=True)
            elif not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            if not dict(plan)[path]:
                _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    except (Unavailable, OSError):
        _libc.umount2(real_tmp.encode(), MNT_DETACH)  # all or nothing: the host's /tmp as before
        raise
    finally:
        for fd in [new, *fds.values()]:
            os.close(fd)
    return len(plan)


def _shared_cache(root: str, folder: str) -> None:
    """Cover ``root`` (a cache every notebook's kernel uses) with an empty tmpfs that holds only
    ``folder``, this trust domain's, at its own path: the path stays the same at every start
    (JAX's cache key includes it), and the other folders are neither readable nor writable.

    The tmpfs is mode 0111 and read-only once the folder is mounted in it: it can be walked
    through, not listed (the capabilities that would override that are dropped next)."""
    if not _is_within(folder, root) or folder == root:
        raise Unavailable(f"{folder} is not a folder inside {root}")
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _mount("none", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0111")
        try:
            os.makedirs(folder, mode=0o111, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", folder, None, MS_BIND | MS_REC)
            _mount(
                None,
                root,
                None,
                MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=64k,mode=0111",
            )
        except (Unavailable, OSError):
            _libc.umount2(root.encode(), MNT_DETACH)
            raise
    finally:
        os.close(fd)


def _join_network(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise _err("setns(CLONE_NEWNET)")
    finally:
        os.close(fd)


def _bind_regular_file(source: str, target: str, expected: list[int] | None = None) -> None:
    """Bind ``source`` over ``target``, refusing a source that is not a plain file (a symlink)
    or, with ``expected`` (device, inode), not the very file the kernel made."""
    fd = os.open(source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unavailable(f"{source} is not a regular file")
        if expected is not None and [info.st_dev, info.st_ino] != list(expected):
            raise Unavailable(f"{source} is not the file the kernel made (replaced?)")
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    finally:
        os.close(fd)


def _private_dev(devices: list[str]) -> None:
    """Replace /dev (in our mount namespace) by a tmpfs holding only the devices we allow.

    A raw disk is readable to its owner (root), which would bypass every file rule, so /dev
    is never visible wholesale; with a private /dev, "/" can have a single Landlock rule
    (and stays listable)."""
    keep = [*DEV_ALLOWED, *(os.path.relpath(d, "/dev") for d in devices if d.startswith("/dev/"))]
    fds = {}
    for name in keep:
        path = f"/dev/{name}"
        if name in ("pts", "ptmx", "shm") or os.path.islink(path) or not os.path.exists(path) or "/" in name:
            continue  # a private devpts instance instead: no way into the host's terminals
        fds[name] = os.open(path, os.O_PATH | os.O_CLOEXEC)
    links = {
        "fd": "/proc/self/fd",
        "stdin": "/proc/self/fd/0",
        "stdout": "/proc/self/fd/1",
        "stderr": "/proc/self/fd/2",
    }
    try:
        _mount("none", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
        try:
            _fill_dev(fds, links)
        except BaseException:
            _libc.umount2(b"/dev", 2)  # MNT_DETACH: back to the host's /dev, carved out by Landlock
            raise
    finally:
        for fd in fds.values():
            os.close(fd)


def _fill_dev(fds: dict[str, int], links: dict[str, str]) -> None:
    """Populate the private /dev tmpfs (see :func:`_private_dev`)."""
    for name, fd in fds.items():
        target = f"/dev/{name}"
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    os.mkdir("/dev/pts")
    _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    links["ptmx"] = "pts/ptmx"
    # A private /dev/shm (multiprocessing, NCCL): nothing shared with the host's processes.
    os.mkdir("/dev/shm")
    _mount("none", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=50%,mode=1777")
    for name, dest in links.items():
        if not os.path.lexists(f"/dev/{name}"):
            os.symlink(dest, f"/dev/{name}")
    _mount(None, "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


# --- privileges --------------------------------------------------------------------------


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


# --- Landlock ----------------------------------------------------------------------------

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

#: What a writable folder others read gets no right to make (see _landlock).
SPECIAL_FILES = LL_MAKE_SYM | LL_MAKE_FIFO | LL_MAKE_SOCK | LL_MAKE_CHAR | LL_MAKE_BLOCK
_FILE_RIGHTS = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV
READ = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
DEVICE = LL_READ_FILE | LL_WRITE_FILE | LL_IOCTL_DEV | LL_TRUNCATE

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

        Measured for a whole ephemeral range (32768-60999: 28232 rules; 2 cores, Linux 6.18):
        ~40 ms (27-50 ms over 15 runs), about half of it the ctypes calls themselves (hence one
        struct and one bound function for every port), plus ~9 ms in landlock_restrict_self and
        ~1.7 MB of kernel memory per worker.  Only a ruleset built once by the long-lived kernel
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


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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


def _net_rules(raw: Any) -> tuple[list[int], list[int], range | None, range | None]:
    """Check the policy's ``net_rules``: (bind ports, connect ports, bind range, connect range)."""

    def port(p: Any) -> int:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
            raise Unavailable(f"net_rules: {p!r} is not a TCP port")
        return p

    def span(r: Any) -> range | None:
        if r is None:
            return None
        if not isinstance(r, (list, tuple)) or len(r) != 2 or port(r[0]) > port(r[1]):
            raise Unavailable(f"net_rules: {r!r} is not a [low, high] port range")
        return range(r[0], r[1] + 1)

    if not isinstance(raw, dict):
        raise Unavailable(f"net_rules: {raw!r} is not a dict")
    bind = sorted({port(p) for p in raw.get("bind") or []})
    connect = sorted({port(p) for p in raw.get("connect") or []})
    return bind, connect, span(raw.get("bind_range")), span(raw.get("connect_range"))


def _port_spans(bind: range | None, connect: range | None) -> list[tuple[range, int]]:
    """Disjoint pieces of the two ranges with the rights of each: where they overlap, one rule
    per port carries both (28k rules for the ephemeral range, not 56k)."""
    ranges = [(r, a) for r, a in ((bind, LL_NET_BIND_TCP), (connect, LL_NET_CONNECT_TCP)) if r]
    cuts = sorted({x for r, _ in ranges for x in (r.start, r.stop)})
    spans = []
    for lo, hi in itertools.pairwise(cuts):
        access = 0
        for r, a in ranges:
            if lo in r:
                access |= a
        if access:
            spans.append((range(lo, hi), access))
    return spans


def _describe_ports(ports: list[int], span: range | None) -> str:
    """For the report: `port 0 (an ephemeral one)`, `ports 8476 and 32768-60999`, `no port`."""
    parts = ["0 (an ephemeral one)" if p == 0 else str(p) for p in ports]
    if span:
        parts.append(f"{span.start}-{span.stop - 1}")
    if not parts:
        return "no port"
    noun = "port" if len(parts) == 1 and not span else "ports"
    return f"{noun} " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])


def _apply_landlock(policy: dict[str, Any], report: _Report) -> None:
    """File-system rules, scoping and, when the policy has ``net_rules``, TCP port rules.

    The network rules join the file-system ruleset (one Landlock layer); a failure of either
    leaves both unapplied and reported.  Only TCP can be restricted, and by port only: Landlock
    does not see addresses, UDP or other protocols.
    """
    abi = landlock_abi()
    net = None
    if policy.get("net_rules") is not None:
        try:
            net = _net_rules(policy["net_rules"])
        except Unavailable as e:
            report.unavailable("network", str(e))
        else:
            if abi < 4:
                net = None
                if "network" not in report.data["active"]:  # not already cut by a network namespace
                    report.unavailable(
                        "network", f"TCP port rules need Landlock ABI 4, this kernel has {abi}"
                    )
    try:
        _landlock(policy, report, abi, net)
    except (Unavailable, OSError) as e:
        if net is not None:
            report.unavailable("network", f"TCP port rules not applied: {getattr(e, 'strerror', None) or e}")
        raise


def _landlock(
    policy: dict[str, Any],
    report: _Report,
    abi: int,
    net: tuple[list[int], list[int], range | None, range | None] | None,
) -> None:
    """Build and apply the one ruleset (``net``: checked ``net_rules``, or None to leave TCP alone)."""
    if abi < 1:
        raise Unavailable("the kernel has no Landlock (needs Linux >= 5.13 with landlock in the LSM list)")
    fs = policy.get("fs", {})
    masked = set(policy.get("masked", []))
    hidden = sorted({os.path.realpath(p) for p in fs.get("hidden", []) if os.path.lexists(p)} - masked)
    rs = _Ruleset(abi, net=net is not None)
    if net is not None:
        bind, connect, bind_range, connect_range = net
        rs.add_ports(bind, LL_NET_BIND_TCP)
        rs.add_ports(connect, LL_NET_CONNECT_TCP)
        for ports, access in _port_spans(bind_range, connect_range):
            rs.add_ports(ports, access)
    _grant(rs, "/", hidden, READ, 0, masked)
    for name in DEV_ALLOWED:
        rs.add(f"/dev/{name}", DEVICE | READ)
    for path in fs.get("devices", []):
        if path != "/dev/shm":
            rs.add(path, DEVICE | READ)
    # Where multiprocessing and NCCL make their shared memory: private when /dev is (see above),
    # the host's (when accelerators are allowed) otherwise.
    if "/dev" in masked or "/dev/shm" in fs.get("devices", []):
        rs.add("/dev/shm", rs.handled)
    writable = []
    # Symlinks, FIFOs, sockets and device nodes only in the worker's own temp dirs: in a folder
    # that anything outside reads (the notebook folder: the Jupyter server's save follows a
    # symlink, and a FIFO named like a notebook hangs its read), only ordinary files and folders.
    private = {os.path.realpath(p) for p in fs.get("private_writable", [])}
    ordinary = rs.handled & ~SPECIAL_FILES
    for path in [*fs.get("writable", []), *([policy["tmp_done"]] if policy.get("tmp_done") else [])]:
        # A writable folder that holds a hidden path (notebooks in ~) can't itself be listed or
        # get new entries; what is in it can.  Landlock can only allow, never carve out.
        # Without the mount namespace, what must stay read-only is carved out of the write grant.
        done = set(policy.get("readonly_done") or [])
        ro = [p for p in fs.get("readonly", []) if p not in done]
        access = rs.handled if os.path.realpath(path) in private else ordinary
        if _grant(rs, path, [*hidden, *ro], access, 0, masked):
            writable.append(os.path.realpath(path))
    rs.restrict()
    report.active(
        "filesystem",
        f"Landlock ABI {abi}: read-only except {writable} (ordinary files and folders only: symlinks, "
        f"FIFOs, sockets and device nodes in {sorted(private)} alone); "
        f"hidden: {sorted((masked - {'/dev'}) | set(hidden))}",
    )
    if net is not None:
        bind, connect, bind_range, connect_range = net
        detail = (
            f"Landlock ABI {abi}: TCP connect only to {_describe_ports(connect, connect_range)}, "
            f"bind only to {_describe_ports(bind, bind_range)}, on any address (Landlock sees ports, "
            "not addresses); UDP and other non-TCP traffic are not covered by Landlock"
        )
        previous = report.data["active"].get("network")  # a network namespace already cut it
        report.active("network", f"{previous}; {detail}" if previous else detail)
        if "network" in report.data:
            report.data["network"] += "; TCP ports limited (see network under Active)"
    if rs.scoped:
        report.active(
            "signals", "Landlock scope: no signals to (or abstract sockets of) processes outside the sandbox"
        )
    else:
        report.unavailable("signals", f"signal scoping needs Landlock ABI 6, this kernel has {abi}")


# --- seccomp -----------------------------------------------------------------------------

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


# --- driver ------------------------------------------------------------------------------


class _Report:
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


def apply(policy: dict[str, Any] | None) -> dict[str, Any]:
    """Apply ``policy`` (from the kernel's config) to this process; return the report.

    Must run before any thread exists.  Exits the process under ``strict`` if a
    protection is unavailable.
    """
    global REPORT
    policy = policy or {}
    profile = policy.get("profile", "off")
    report = _Report(profile)
    if profile == "off":
        REPORT = report.data
        return report.data
    if not sys.platform.startswith("linux"):
        report.unavailable("sandbox", f"needs Linux, this is {sys.platform}")
    else:
        report.step("rlimits", _apply_limits, policy, report)
        if policy.get("allow_network", True):
            report.data["network"] = "allowed by policy"
        masked: list[str] = []
        try:
            masked = _namespaces(policy, report)
        except (Unavailable, OSError) as e:
            report.data["masking"] = f"hidden paths carved out of Landlock's rules instead ({e})"
        policy = {**policy, "masked": masked}
        report.step("no_new_privs", _no_new_privs, report)
        report.step("capabilities", _drop_capabilities, report)
        report.step("filesystem", _apply_landlock, policy, report)
        report.step("seccomp", _apply_seccomp, report, bool(policy.get("deny_unix_sockets")))
        for name, detail in policy.get("kernel_side", {}).items():
            report.active(name, detail)
    REPORT = report.data
    if profile == "strict" and report.data["unavailable"]:
        missing = "; ".join(f"{k}: {v}" for k, v in report.data["unavailable"].items())
        os.write(2, f"jax-kernel sandbox (strict profile): cannot apply {missing}\n".encode())
        os._exit(EXIT_STRICT)
    return report.data


def register_magic(shell: Any, selftest: Callable[[], int] | None = None) -> None:
    """``%sandbox``: show which protections are active and which are unavailable, and why;
    ``%sandbox --selftest``: have the kernel run the attack battery and show what it contained."""

    def sandbox(line: str = "") -> None:
        from IPython.core.error import UsageError

        arg = line.strip()
        if not arg:
            print(format_report())
            return
        if arg != "--selftest" or selftest is None:
            raise UsageError(f"%sandbox takes no argument or --selftest, not {arg!r}")
        status = selftest()
        if status == 1:
            raise RuntimeError("the self-test found attacks the sandbox did not contain: see the table above")
        if status:
            raise RuntimeError("the self-test could not run: see the lines above")

    shell.register_magic_function(sandbox, "line", "sandbox")


def format_report(report: dict[str, Any] | None = None) -> str:
    """Human-readable report for ``%sandbox``."""
    report = REPORT if report is None else report
    lines = [f"Sandbox profile: {report.get('profile', 'off')}"]
    if report.get("network"):
        lines.append(f"Network: {report['network']}")
    if report.get("masking"):
        lines.append(f"Hidden paths: {report['masking']}")
    active = report.get("active", {})
    if active:
        lines.append("Active:")
        lines += [f"  {k}: {v}" for k, v in active.items()]
    unavailable = report.get("unavailable", {})
    if unavailable:
        lines.append("Unavailable on this host:")
        lines += [f"  {k}: {v}" for k, v in unavailable.items()]
    return "\n".join(lines)
