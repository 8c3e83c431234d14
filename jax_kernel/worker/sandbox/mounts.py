"""Mounts in the worker's own mount namespace: the read-only root and the binds on top of it.

Runs in the worker process, inside the mount namespace :mod:`.namespaces` made (never the
host's: ``/`` is made private first, so nothing here propagates out).  Holds the mount
primitives the other mount steps (:mod:`.private_tmp`, :mod:`.masks`, :mod:`.network`'s DNS
bind) use too, and the steps that make the host's files read-only: every mount read-only but
the writable folders, the policy's read-only paths inside those, and the compilation cache
narrowed to this notebook's folder.
"""

from __future__ import annotations

import ctypes
import os
import re
import stat
from typing import Any

from .base import Unavailable, _err, _is_within, _libc, _Report, _sys

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


def _make_root_readonly(fs: dict[str, Any], report: _Report) -> None:
    """The ``readonly_root`` step: see :func:`_readonly_root`."""
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


def _bind_readonly(fs: dict[str, Any], report: _Report) -> list[str]:
    """Bind the policy's ``readonly`` paths read-only on themselves; return those done."""
    readonly = []
    for path in fs.get("readonly", []):
        try:
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            readonly.append(path)
        except Unavailable as e:
            report.unavailable(f"readonly:{path}", str(e))
    # A writable path the policy names inside a read-only one (the compilation cache under ~/.cache
    # when the notebooks live in ~) gets a writable bind of its own on top.
    for path in fs.get("writable", []):
        real = os.path.realpath(path)
        if os.path.isdir(real) and any(real.startswith(ro.rstrip("/") + "/") for ro in readonly):
            try:
                _mount(real, real, None, MS_BIND | MS_REC)
                _mount(None, real, None, MS_REMOUNT | MS_BIND)
            except Unavailable as e:
                report.unavailable(f"writable:{real}", str(e))
    return readonly


def _isolate_cache(fs: dict[str, Any], report: _Report) -> None:
    """The shared compilation cache, narrowed to this notebook's folder: see :func:`_shared_cache`."""
    shared = fs.get("shared_cache")
    if shared:
        try:
            _shared_cache(shared["root"], shared["folder"])
            report.data["cache"] = "compilation cache: this notebook's folder only (the others are not there)"
        except (Unavailable, OSError, KeyError, TypeError) as e:
            report.data["cache"] = f"compilation cache: other notebooks' folders stay readable ({e})"


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
