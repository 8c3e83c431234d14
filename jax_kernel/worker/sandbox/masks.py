"""Hiding paths from the worker by covering them, and a private ``/dev``.

Runs in the worker process, inside its own mount namespace (:mod:`.namespaces`), last of the
mount steps.  A hidden path is covered with an empty, read-only, mode-000 mount, so the folders
around it stay usable (notebooks in ``~`` beside ``~/.ssh``); ``/dev`` becomes a tmpfs with only
the safe devices.  What could not be masked here, Landlock carves out of its rules instead
(:mod:`.landlock`), so the paths masked are returned for it.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .base import DEV_ALLOWED, Unavailable, _libc
from .mounts import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    _bind_regular_file,
    _mount,
)


def _mask_hidden(fs: dict[str, Any]) -> list[str]:
    """Cover each hidden path that exists: a directory with an empty mode-000 tmpfs, a file with
    the kernel's empty ``mask_file``; return the real paths covered."""
    masked: list[str] = []
    mask_file = fs.get("mask_file")
    for path in fs.get("hidden", []):
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
                _bind_regular_file(mask_file, real, fs.get("mask_id"))
                _mount(None, real, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            else:
                continue
        except Unavailable:
            continue
        masked.append(real)
    return masked


def _mask_dev(fs: dict[str, Any], masked: list[str]) -> str:
    """The private /dev (added to ``masked`` when made); return the note for the report."""
    try:
        _private_dev(fs.get("devices", []))
        masked.append("/dev")
        return "; a private /dev with only the safe devices"
    except (Unavailable, OSError) as e:
        return f"; /dev carved out of Landlock's rules ({e})"


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
