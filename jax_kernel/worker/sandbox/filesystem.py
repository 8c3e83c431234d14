"""The Landlock step: the worker's one ruleset, built from the policy, then applied.

Runs in the worker process, after the capabilities are gone and before seccomp.  File system
read-only except the writable paths, hidden paths unreadable, and (ABI >= 6) signals and
abstract unix sockets scoped to the worker's own domain, so it can't signal the kernel or anyone
else even as uid 0; when the policy has ``net_rules`` (ABI >= 4), TCP bind and connect only to
the ports it names (checked and cut into rules by :mod:`.network`).  The primitives are in
:mod:`.landlock`.
"""

from __future__ import annotations

import os
from typing import Any

from .base import DEV_ALLOWED, Unavailable, _Report
from .landlock import (
    DEVICE,
    LL_NET_BIND_TCP,
    LL_NET_CONNECT_TCP,
    READ,
    SPECIAL_FILES,
    _grant,
    _Ruleset,
    landlock_abi,
)
from .network import _describe_ports, _net_rules, _port_spans

#: Checked ``net_rules``: (bind ports, connect ports, bind range, connect range).
NetRules = tuple[list[int], list[int], range | None, range | None]


def _apply_landlock(policy: dict[str, Any], report: _Report, abi: int | None = None) -> None:
    """File-system rules, scoping and, when the policy has ``net_rules``, TCP port rules.

    The network rules join the file-system ruleset (one Landlock layer); a failure of either
    leaves both unapplied and reported.  Only TCP can be restricted, and by port only: Landlock
    does not see addresses, UDP or other protocols.  ``abi``: the kernel's Landlock ABI
    (default: :func:`~.landlock.landlock_abi`; the package's ``apply`` passes its own, so that a
    test can pose as an older kernel).
    """
    abi = landlock_abi() if abi is None else abi
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


def _landlock(policy: dict[str, Any], report: _Report, abi: int, net: NetRules | None) -> None:
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
    _grant_devices(rs, fs, masked)
    # Symlinks, FIFOs, sockets and device nodes only in the worker's own temp dirs: in a folder
    # that anything outside reads (the notebook folder: the Jupyter server's save follows a
    # symlink, and a FIFO named like a notebook hangs its read), only ordinary files and folders.
    private = {os.path.realpath(p) for p in fs.get("private_writable", [])}
    writable = _grant_writable(rs, policy, hidden, masked, private)
    rs.restrict()
    report.active(
        "filesystem",
        f"Landlock ABI {abi}: read-only except {writable} (ordinary files and folders only: symlinks, "
        f"FIFOs, sockets and device nodes in {sorted(private)} alone); "
        f"hidden: {sorted((masked - {'/dev'}) | set(hidden))}",
    )
    if net is not None:
        _report_ports(report, abi, net)
    if rs.scoped:
        report.active(
            "signals", "Landlock scope: no signals to (or abstract sockets of) processes outside the sandbox"
        )
    else:
        report.unavailable("signals", f"signal scoping needs Landlock ABI 6, this kernel has {abi}")


def _grant_devices(rs: _Ruleset, fs: dict[str, Any], masked: set[str]) -> None:
    """The safe devices, the accelerators' devices the policy names, and shared memory."""
    for name in DEV_ALLOWED:
        rs.add(f"/dev/{name}", DEVICE | READ)
    for path in fs.get("devices", []):
        if path != "/dev/shm":
            rs.add(path, DEVICE | READ)
    # Where multiprocessing and NCCL make their shared memory: private when /dev is (see
    # masks._private_dev), the host's (when accelerators are allowed) otherwise.
    if "/dev" in masked or "/dev/shm" in fs.get("devices", []):
        rs.add("/dev/shm", rs.handled)


def _grant_writable(
    rs: _Ruleset, policy: dict[str, Any], hidden: list[str], masked: set[str], private: set[str]
) -> list[str]:
    """Write access to the writable paths (and the private /tmp, the cache over ~/.cache); return
    the real paths granted.

    Only the ``private`` ones may get symlinks, FIFOs, sockets and device nodes."""
    fs = policy.get("fs", {})
    writable = []
    ordinary = rs.handled & ~SPECIAL_FILES
    # The private /tmp and the notebook folder's cache over ~/.cache, where their binds are made.
    covered = [policy[key] for key in ("tmp_done", "cache_done") if policy.get(key)]
    for path in [*fs.get("writable", []), *covered]:
        # A writable folder that holds a hidden path (notebooks in ~) can't itself be listed or
        # get new entries; what is in it can.  Landlock can only allow, never carve out.
        # Without the mount namespace, what must stay read-only is carved out of the write grant.
        done = set(policy.get("readonly_done") or [])
        ro = [p for p in fs.get("readonly", []) if p not in done]
        access = rs.handled if os.path.realpath(path) in private else ordinary
        if _grant(rs, path, [*hidden, *ro], access, 0, masked):
            writable.append(os.path.realpath(path))
    return writable


def _report_ports(report: _Report, abi: int, net: NetRules) -> None:
    """Say in the report which TCP ports the worker may still bind and connect to."""
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
