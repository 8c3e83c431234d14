"""The namespaces step: the worker's own mount (and, when the network is denied, network)
namespace, and, in order, everything mounted in it.

Runs in the worker process, after the rlimits and before the capabilities go (``unshare`` and
``mount`` need them, and a user namespace can't be made once a process has threads).  Not
root, a user namespace mapping our own ids comes first, so the interpreter keeps working.
The mounts themselves live in :mod:`.mounts`, :mod:`.private_tmp`, :mod:`.user_dirs` and
:mod:`.masks`, the network's part in :mod:`.network`; here is their order and what the report
says of them.
"""

from __future__ import annotations

import os
from typing import Any

from .base import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER, Unavailable, _err, _libc, _Report
from .masks import _mask_dev, _mask_hidden
from .mounts import MS_PRIVATE, MS_REC, _bind_readonly, _isolate_cache, _make_root_readonly, _mount
from .network import _dns, _network
from .private_tmp import _cover_tmp
from .user_dirs import _cover_home_cache, _isolate_user_dirs


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _namespaces(policy: dict[str, Any], report: _Report) -> list[str]:
    """New mount (and, if the network is denied, network) namespaces; return the masked paths.

    In its own mount namespace the worker covers each hidden path with an empty, read-only,
    mode-000 tmpfs (a directory) or file (a file), so the folders around it stay usable
    (notebooks in ``~`` beside ``~/.ssh``); Landlock carves out whatever could not be masked.
    Not root: a user namespace mapping our own ids comes first (the interpreter keeps working).
    """
    why = _unshare(policy, report)
    _network(policy, report)
    if why is not None:
        report.unavailable(
            "readonly_root", f"no mount namespace, so the host's files keep writable metadata ({why})"
        )
        return []
    return _mount_namespace(policy, report)


def _unshare(policy: dict[str, Any], report: _Report) -> Unavailable | None:
    """Make the namespaces; return why there is no mount namespace, None when there is one."""
    want_net = not policy.get("allow_network", True)
    join = policy.get("join_netns")
    uid, gid = os.getuid(), os.getgid()
    user = 0 if uid == 0 else CLONE_NEWUSER
    net = CLONE_NEWNET if want_net and not join else 0
    why = None
    if _libc.unshare(user | CLONE_NEWNS | net) != 0:
        why = _err("unshare(CLONE_NEWNS)")
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
    return why


def _mount_namespace(policy: dict[str, Any], report: _Report) -> list[str]:
    """Everything mounted in the new mount namespace, in order; return the masked paths.

    Records in ``policy`` what Landlock needs to know: ``readonly_done`` (the read-only binds
    made) and, from :func:`~.private_tmp._cover_tmp`, ``tmp_done``; from
    :func:`~.user_dirs._cover_home_cache`, ``cache_done`` (and the hidden paths it covered).
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    fs = policy.get("fs", {})
    _make_root_readonly(fs, report)
    readonly = _bind_readonly(fs, report)
    policy["readonly_done"] = readonly
    _isolate_cache(fs, report)
    _isolate_user_dirs(fs, report)
    tmp_note = _cover_tmp(policy, report)
    _cover_home_cache(policy, report)
    fs = policy.get("fs", {})
    _dns(fs, report)
    masked = _mask_hidden(fs)
    dev = _mask_dev(fs, masked)
    report.data["masking"] = (
        f"mount namespace: {len(masked)} paths covered by empty mode-000 mounts{dev}; "
        f"{len(readonly)} paths inside writable folders kept read-only (code, config, dot-files){tmp_note}"
    )
    # The working directory still points into the mount it started on, now read-only and under
    # the binds made since: look it up again, so that it is the topmost mount there (the writable
    # bind of the notebook folder, or a read-only bind on it), as for a process started now.
    os.chdir(os.getcwd())
    return masked
