"""Kernel side: check a worker's sandbox from outside, in ``/proc``, before it runs a cell.

The worker applies its own sandbox and reports what it applied, but a report is only what the
worker says: code that ran in it before the sandbox (a module planted where it imports from)
can skip every step and send the strict report all the same.  What Linux shows about a process
can't be forged from inside it, so the kernel reads ``/proc/<pid>`` when the worker says it is
ready and kills a worker whose state does not match, naming what was missing.

What is checked, for the process and every thread of it:

- ``NoNewPrivs: 1`` and ``Seccomp: 2`` (a filter), wherever this host offers them;
- no capabilities left (effective, permitted, inheritable, ambient and, as root, bounding);
- the network namespace the kernel made for it (a set's private network, user-mode egress), or
  its own when the policy denies the network; its own mount namespace when the report says
  hidden paths are masked by one;
- membership of each cgroup the kernel made for it.

Landlock leaves no trace in ``/proc``: the file system rules are the one part taken on the
worker's word (and their effect is what the test battery attacks).
"""

from __future__ import annotations

import functools
import os
from typing import Any

#: Architectures the worker's seccomp filter has system call tables for (worker/sandbox/seccomp.py's _DENY):
#: elsewhere a worker reports seccomp unavailable, truthfully, and is not held to it.
SECCOMP_ARCHES = ("x86_64", "aarch64")
#: Capability sets in /proc/<pid>/status that must be empty (CapBnd only as root: see below).
CAP_FIELDS = ("CapEff", "CapPrm", "CapInh", "CapAmb")


def _status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@functools.cache
def host_offers() -> frozenset[str]:
    """The protections this host can give any process (read from the kernel's own status)."""
    own = _status("/proc/self/status")
    offered = {"capabilities"}
    if "NoNewPrivs" in own:
        offered.add("no_new_privs")
    if (
        "Seccomp" in own
        and os.path.exists("/proc/sys/kernel/seccomp/actions_avail")
        and os.uname().machine in SECCOMP_ARCHES
    ):
        offered.add("seccomp")
    return frozenset(offered)


def audit(pid: int, policy: dict[str, Any], report: Any, offered: frozenset[str] | None = None) -> list[str]:
    """What the policy asks of worker ``pid`` and ``/proc`` shows is not in force ([] if all is).

    A protection this host offers is required whatever the report says; one it may lack (the
    namespaces, cgroups) is required under ``strict`` or where the report claims it.
    """
    profile = policy.get("profile", "off")
    if profile == "off":
        return []
    offered = host_offers() if offered is None else offered
    claimed = report.get("active", {}) if isinstance(report, dict) else {}
    masking = report.get("masking", "") if isinstance(report, dict) else ""
    strict = profile == "strict"
    try:
        tasks = [os.path.join(f"/proc/{pid}/task", t, "status") for t in os.listdir(f"/proc/{pid}/task")]
        statuses = [_status(path) for path in tasks]
    except OSError as e:
        return [f"its /proc entry could not be read ({e.strerror or e})"]
    missing: list[str] = []

    def each_thread(field: str, ok: Any, what: str) -> None:
        bad = sum(1 for s in statuses if not ok(s.get(field, "")))
        if bad:
            missing.append(f"{what} ({bad} of {len(statuses)} threads without it)")

    if "no_new_privs" in offered:
        each_thread("NoNewPrivs", lambda v: v.strip() == "1", "no_new_privs")
    if "seccomp" in offered:
        each_thread("Seccomp", lambda v: v.strip() == "2", "a seccomp filter")
    caps = CAP_FIELDS + (("CapBnd",) if os.geteuid() == 0 else ())
    for field in caps:
        each_thread(field, lambda v: int(v or "0", 16) == 0, f"an empty {field} capability set")
    join = policy.get("join_netns")
    if join:  # made by the kernel (a set's private network, user-mode egress): always required
        if not _in_namespace(pid, "net", join):
            missing.append("the network namespace the kernel made for it (it is in another: the host's?)")
    elif not policy.get("allow_network", True) and (strict or "network" in claimed):
        if _same_namespace(pid, "net"):
            missing.append("its own network namespace (it shares the kernel's network)")
    if masking.startswith("mount namespace") and _same_namespace(pid, "mnt"):
        missing.append("its own mount namespace (hidden paths are not masked)")
    for controller, procs in (policy.get("cgroups") or {}).items():
        if not _in_cgroup(pid, procs):
            missing.append(f"its {controller} cgroup")
    return missing


def _same_namespace(pid: int, kind: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return False  # gone, or the kind is not offered here: nothing to compare


def _in_namespace(pid: int, kind: str, path: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(path).st_ino
    except OSError:
        return False  # the worker or the namespace's holder is gone: not in it


def _in_cgroup(pid: int, procs_file: str) -> bool:
    try:
        with open(procs_file) as f:
            return str(pid) in f.read().split()
    except OSError:
        return False
