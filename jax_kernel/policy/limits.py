"""Kernel process: the limits a worker runs under, and the handle on what the kernel set up for it.

Memory and task limits are settings (:class:`~jax_kernel.policy.sandbox.Sandbox`) in bytes, sizes
such as ``"4G"`` or a share of RAM; the kernel carries them out with cgroups where the host lets
it (:mod:`jax_kernel.host.cgroups`).  :class:`WorkerSandbox` is what one worker got: its policy
and its cgroups, which the kernel narrows to a lease, reads to explain a death ("killed by the
memory limit") and empties of what the worker left behind.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..host.cgroups import Cgroup, _make_cgroup, _own_cgroups, _parent_cpuset
from ..protocol.config import ResourceLimits, SandboxPolicy
from .devices import ACCELERATOR_FILE

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def total_memory() -> int:
    """Physical memory of the host in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(value: int | str, what: str) -> int:
    """``1073741824``, ``"4G"``, ``"512MiB"`` or ``"75%"`` (of RAM) -> bytes; 0 means no limit."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must be >= 0, not {value}")
        return value
    text = str(value).strip()
    if text in ("", "0", "none", "None"):
        return 0
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not a percentage like '75%'") from None
        if not 0 < pct <= 100:
            raise ValueError(f"{what}: {value!r} must be between 0% and 100%")
        return int(total_memory() * pct / 100)
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{what}: {value!r} is not a size (bytes, '4G', '512MiB' or '75%')")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(eq=False)
class WorkerSandbox:
    """What the kernel set up for one worker: its policy and its cgroups."""

    policy: SandboxPolicy
    cgroups: dict[str, Cgroup] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    limit_hits_seen: int = 0  # pids.events "max" when last read (see new_process_limit_hits)

    def restrict_cpus(self, cores: list[int]) -> bool:
        """Narrow the worker's cpuset to its leased cores: Linux then keeps every affinity it sets
        (its own, its threads', its children's) inside them.  False where it has no cpuset."""
        cg = self.cgroups.get("cpuset")
        if cg is None:
            return False
        try:
            with open(os.path.join(cg.path, "cpuset.cpus"), "w") as f:
                f.write(",".join(str(c) for c in cores))
        except OSError:
            return False
        return True

    def process_limit_hits(self) -> int:
        """How often the worker's tasks have hit the pids cgroup's limit so far."""
        cg = self.cgroups.get("pids")
        return cg.counter("pids.events", "max") if cg is not None else 0

    def new_process_limit_hits(self) -> int:
        """Hits of the task limit since the last call: one read of pids.events per cell, after it
        (a fork refused between cells, from a widget's callback, is counted after the next cell)."""
        now = self.process_limit_hits()
        new, self.limit_hits_seen = now - self.limit_hits_seen, now
        return new

    def kill_children(self, worker_pid: int, rounds: int = 20) -> list[int]:
        """Kill every process in the worker's cgroups but the worker itself; the pids killed.

        After a fork bomb the processes it left fill the worker's task limit, and the next cell
        can't even start a thread; they are the cell's, and the worker keeps its variables."""
        killed: set[int] = set()
        for _ in range(rounds):
            found = False
            for cg in self.cgroups.values():
                for p in cg.read("cgroup.procs").split():
                    pid = int(p) if p.isdigit() else worker_pid
                    if pid == worker_pid:
                        continue
                    found = True
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    except ProcessLookupError:
                        pass
            if not found:
                break
            time.sleep(0.01)  # children forked while we killed are in the cgroup too: again
        return sorted(killed)

    def restrict_to_lease(self, platform: str, devices: Sequence[int]) -> bool:
        """Keep the worker out of every accelerator but ``devices`` of ``platform`` (its lease, or a
        set member's slice of it); False where that can't be enforced from outside (CPU, ROCm, no
        devices cgroup) and the lease is kept by the environment alone."""
        from .accelerators import device_files

        keep = device_files(platform, list(devices))
        return keep is not None and self.restrict_devices(keep)

    def restrict_devices(self, keep: list[str]) -> bool:
        """Deny the worker every accelerator device file it was given except ``keep`` (its lease).

        The worker's private /dev holds every accelerator the policy allows, since a standby
        worker is made before anyone knows its lease; the devices cgroup (v1) then refuses to
        open the others, from outside, whatever the worker does with its environment.  False
        where there is no devices cgroup."""
        cg = self.cgroups.get("devices")
        if cg is None or cg.version != 1:
            return False
        try:
            with open(os.path.join(cg.path, "devices.deny"), "w") as f:
                for path in self.policy.get("fs", {}).get("devices", []):
                    if path in keep or not ACCELERATOR_FILE.fullmatch(path):
                        continue
                    try:
                        info = os.stat(path)
                    except OSError:
                        continue
                    if stat.S_ISCHR(info.st_mode):
                        f.write(f"c {os.major(info.st_rdev)}:{os.minor(info.st_rdev)} rwm\n")
                        f.flush()  # one rule per write: the controller parses each write alone
        except OSError:
            return False
        return True

    def release(self, wait: bool = False) -> None:
        """Kill leftovers and remove the cgroups (in a thread unless ``wait``: it may wait for exits)."""
        cgroups = list(self.cgroups.values())
        self.cgroups = {}
        if not cgroups:
            return
        if wait:
            for c in cgroups:
                c.release()
        else:
            threading.Thread(target=_release_cgroups, args=(cgroups,), daemon=True).start()


def _release_cgroups(cgroups: list[Cgroup]) -> None:
    for c in cgroups:
        c.release()


def resource_limits(
    memory_limit: int | str, max_processes: int, max_open_files: int, max_file_size: int | str
) -> ResourceLimits:
    """The ``limits`` part of a worker's policy (the settings of the same names, sizes in bytes)."""
    return {
        "memory_limit": parse_size(memory_limit, "Sandbox.memory_limit"),
        "max_processes": max_processes,
        "max_open_files": max_open_files,
        "max_file_size": parse_size(max_file_size, "Sandbox.max_file_size"),
    }


def cgroup_limits(memory_limit: int | str, max_processes: int) -> dict[str, dict[str, int | str]]:
    """The memory and task limits one worker gets, and a set's local members share."""
    memory = parse_size(memory_limit, "Sandbox.memory_limit")
    wanted: dict[str, dict[str, int | str]] = {}
    if memory:
        wanted["memory"] = {"memory.limit_in_bytes": memory}
    if max_processes:
        wanted["pids"] = {"pids.max": max_processes}
    return wanted


def _may_make_cgroups() -> bool:
    return os.geteuid() == 0 or os.access("/sys/fs/cgroup", os.W_OK)


def make_group_cgroups(
    name: str, wanted: dict[str, dict[str, int | str]], log: logging.Logger
) -> dict[str, Cgroup]:
    """A set's parent cgroups, one per controller of ``wanted`` that the host lets us make, each
    able to hold its members' own (v2: the controller enabled for its children)."""
    group: dict[str, Cgroup] = {}
    for controller, settings in wanted.items():
        if not _may_make_cgroups():
            break
        try:
            cg = _make_cgroup(controller, name, settings)
        except OSError as e:
            log.debug("No %s cgroup for the set: %s", controller, e)
            continue
        if cg.version == 2:  # its children may use the controller
            try:
                with open(os.path.join(cg.path, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{controller}")
            except OSError as e:
                log.debug("The set's %s cgroup can't have children: %s", controller, e)
                cg.release()
                continue
        group[controller] = cg
    return group


def make_worker_cgroups(
    name: str,
    wanted: dict[str, dict[str, int | str]],
    devices: Sequence[str],
    group: dict[str, Cgroup] | None,
    log: logging.Logger,
) -> dict[str, Cgroup]:
    """One worker's cgroups (inside ``group``'s, for a set's member): the limits of ``wanted``,
    a devices cgroup where its ``devices`` include accelerators, a cpuset where we have one."""
    wanted = dict(wanted)
    if "devices" in _own_cgroups() and any(ACCELERATOR_FILE.fullmatch(p) for p in devices):
        wanted["devices"] = {}  # v1 only; narrowed to the lease once there is one (restrict_devices)
    parent_cpuset = _parent_cpuset()
    if parent_cpuset is not None:  # every core of ours for now; a lease narrows it (restrict_cpus)
        wanted["cpuset"] = {"cpuset.cpus": parent_cpuset[0], "cpuset.mems": parent_cpuset[1]}
    made: dict[str, Cgroup] = {}
    for controller, settings in wanted.items():
        if not _may_make_cgroups():
            break
        try:
            cg = _make_cgroup(controller, name, settings, parent=(group or {}).get(controller))
        except OSError as e:
            log.debug("No %s cgroup for the worker: %s", controller, e)
            continue
        made[controller] = cg
    return made


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) the process has used, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CgroupKeeper:
    """The cgroups one ``Sandbox`` made: its workers' and its sets' parents, named after this
    kernel, and removed when they end (or, at the latest, when the kernel exits)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._ids = itertools.count(1)
        self._live: set[WorkerSandbox] = set()
        self._groups: list[dict[str, Cgroup]] = []  # sets' parent cgroups (make_group)

    def _name(self) -> str:
        return f"jax-kernel-{os.getpid()}-{next(self._ids)}"

    def make_group(self, wanted: dict[str, dict[str, int | str]]) -> dict[str, Cgroup]:
        """A set's parent cgroups (see ``Sandbox.prepare_group``)."""
        group = make_group_cgroups(self._name(), wanted, self.log)
        if group:
            self._groups.append(group)
        return group

    def release_group(self, group: dict[str, Cgroup]) -> None:
        """Remove a set's parent cgroups (what is left in them is killed first)."""
        for cg in group.values():
            cg.release()
        if group in self._groups:
            self._groups.remove(group)

    def give(
        self, ws: WorkerSandbox, wanted: dict[str, dict[str, int | str]], group: dict[str, Cgroup] | None
    ) -> WorkerSandbox:
        """Give the worker its cgroups, where we can, and name them in its policy."""
        ws.cgroups = make_worker_cgroups(self._name(), wanted, ws.policy["fs"]["devices"], group, self.log)
        ws.policy["cgroups"] = {c: os.path.join(cg.path, "cgroup.procs") for c, cg in ws.cgroups.items()}
        if ws.cgroups:
            self._live.add(ws)
        return ws

    def worker_exited(self, ws: WorkerSandbox) -> None:
        """Kill what the worker left behind and remove its cgroups."""
        self._live.discard(ws)
        ws.release()

    def release_all(self) -> None:
        """At exit: every cgroup still held, waiting for what is in them to end."""
        for ws in list(self._live):
            ws.release(wait=True)
        for group in list(self._groups):
            self.release_group(group)
