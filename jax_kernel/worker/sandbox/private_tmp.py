"""A private ``/tmp`` for the worker: the kernel's empty folder over the host's ``/tmp``.

Runs in the worker process, inside its own mount namespace (:mod:`.namespaces`), after the
read-only root and binds (:mod:`.mounts`), whose mounts the paths kept from the host's ``/tmp``
bring along.  :func:`_cover` does the same for any folder (:mod:`.user_dirs` covers ``~/.cache``).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .base import Unavailable, _is_within, _libc, _Report
from .mounts import MNT_DETACH, MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, _mount


def _cover_tmp(policy: dict[str, Any], report: _Report) -> str:
    """The ``private_tmp`` step; return the note for the report's masking line ("" if none).

    Records the covered ``/tmp`` as ``policy["tmp_done"]``, for Landlock's write grant."""
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
    return tmp_note


def _private_tmp(directory: str, keep: list[str], writable: list[str]) -> int:
    """Put ``directory`` (the kernel's, empty at first) over ``/tmp``, then bind back what of the
    host's ``/tmp`` the worker needs (``keep``: its notebook folder, state dir, interpreter, ... when
    they live there), each at its own path; return how many were bound back.

    Other notebooks' temp files, their kernels' connection files (jupyter_client puts them in /tmp
    when no runtime dir is given), tmux's and ssh-agent's sockets: none of it is in the new /tmp.
    """
    return _cover("/tmp", directory, keep, writable)


def _cover(target: str, directory: str, keep: list[str], writable: list[str]) -> int:
    """Put ``directory`` over ``target`` (writable), then bind back the paths of ``keep`` that lie
    in ``target``, each at its own path; return how many were bound back.

    Every path is opened (O_PATH) before ``target`` is covered and bound from its descriptor, so
    the mounts made before (read-only code, a writable cache inside it) come along (MS_REC).  What
    is not inside a ``writable`` path is bound back read-only: the new folder itself is writable,
    and Landlock's grant on it would reach whatever is mounted beneath it.  A mount point that
    would lie behind a symlink (``directory`` may outlive the worker) is refused: all or nothing.
    """
    writable_real = [os.path.realpath(w) for w in writable]
    real_target = os.path.realpath(target)
    inside = sorted(
        {
            os.path.realpath(p)
            for p in keep
            if _is_within(os.path.realpath(p), real_target) and os.path.exists(p)
        }
    )
    # Parents first; a kept path inside another comes along with it (MS_REC), unless it must be
    # writable inside a read-only one (the state dir's history and temp dirs): then it gets its own.
    plan: list[tuple[str, bool]] = []
    for path in inside:
        rw = any(_is_within(path, w) for w in writable_real)
        parent = next((b for b in reversed(plan) if _is_within(path, b[0])), None)
        if path != real_target and (parent is None or parent[1] != rw):
            plan.append((path, rw))
    fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path, _ in plan}
    new = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _mount(f"/proc/self/fd/{new}", real_target, None, MS_BIND)
    except Unavailable:
        for fd in [new, *fds.values()]:
            os.close(fd)
        raise
    try:
        _mount(None, real_target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        for path, fd in fds.items():
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(path, exist_ok=True)
            elif not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            if os.path.realpath(path) != path:
                raise Unavailable(f"{path} lies behind a symlink in {directory}")
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            if not dict(plan)[path]:
                _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    except (Unavailable, OSError):
        _libc.umount2(real_target.encode(), MNT_DETACH)  # all or nothing: the host's folder as before
        raise
    finally:
        for fd in [new, *fds.values()]:
            os.close(fd)
    return len(plan)
