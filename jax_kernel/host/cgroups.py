"""Kernel process: the cgroups the kernel makes for its workers, where the host delegates them.

A host facility like the network namespaces next door: what a cgroup is on this host (v1 or v2,
which controllers are ours), how one is made under ours with its limits written, and how one
is emptied and removed, including those a killed kernel left behind.  What limits a worker
gets is the policy's (:mod:`jax_kernel.policy.limits`); this module only carries them out.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass


def _own_cgroups() -> dict[str, str]:
    """controller -> our cgroup path, from /proc/self/cgroup (``""`` is the v2 hierarchy)."""
    found = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    found[c] = path
    except OSError:
        pass
    return found


@dataclass
class Cgroup:
    """One cgroup the kernel made for one worker."""

    controller: str
    path: str
    version: int

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name)) as f:
                return f.read()
        except OSError:
            return ""

    def counter(self, file: str, key: str) -> int:
        for line in self.read(file).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
                return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        if self.version == 1:
            return self.counter("memory.oom_control", "oom_kill")
        return self.counter("memory.events", "oom_kill")

    def release(self, tries: int = 50) -> None:
        """Kill what the worker left in it, then remove it (and first the workers' cgroups in it,
        for a set's parent cgroup)."""
        try:
            children = [e.path for e in os.scandir(self.path) if e.is_dir(follow_symlinks=False)]
        except OSError:
            children = []
        for child in children:
            if os.path.basename(child).startswith("jax-kernel-"):
                Cgroup(self.controller, child, self.version).release(tries)
        for _ in range(tries):
            pids = [int(p) for p in self.read("cgroup.procs").split() if p.isdigit()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _parent_cpuset() -> tuple[str, str] | None:
    """This kernel's cpuset (v1): (cpus, mems) to start a worker's with, None where there is none."""
    own = _own_cgroups().get("cpuset")
    if own is None:
        return None
    base = f"/sys/fs/cgroup/cpuset{own}"
    try:
        with open(os.path.join(base, "cpuset.cpus")) as f:
            cpus = f.read().strip()
        with open(os.path.join(base, "cpuset.mems")) as f:
            mems = f.read().strip()
    except OSError:
        return None
    return (cpus, mems) if cpus and mems else None


def _candidate_parents(controller: str, parent: Cgroup | None) -> list[tuple[int, str]]:
    """(version, folder) where a cgroup for ``controller`` could be made, in the order to try."""
    own = _own_cgroups()
    candidates = []
    if parent is not None:
        candidates.append((parent.version, parent.path))
    elif controller in own:
        candidates.append((1, f"/sys/fs/cgroup/{controller}{own[controller]}"))
    if "" in own:
        for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            if os.path.exists(os.path.join(base, "cgroup.controllers")):
                candidates.append((2, f"{base}{own['']}"))
                break
    return candidates


def _write_settings(path: str, version: int, controller: str, settings: dict[str, int | str]) -> None:
    """Write a new cgroup's limits (v1 names, translated for v2); OSError if one can't be."""
    for file, value in settings.items():
        if version == 2:
            file = {"memory.limit_in_bytes": "memory.max"}.get(file, file)
        with open(os.path.join(path, file), "w") as f:
            f.write(str(value))
    if version == 2 and controller == "memory" and os.path.exists(os.path.join(path, "memory.swap.max")):
        with open(os.path.join(path, "memory.swap.max"), "w") as f:
            f.write("0")


def _make_cgroup(
    controller: str, name: str, settings: dict[str, int | str], parent: Cgroup | None = None
) -> Cgroup:
    """Make a child of ``parent`` (a set's cgroup), else of our own cgroup, for ``controller``
    (v1, else v2); OSError if we can't."""
    reasons = []
    for version, folder in _candidate_parents(controller, parent):
        path = os.path.join(folder, name)
        _sweep_stale(folder)
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            reasons.append(f"v{version} {folder}: {e.strerror}")
            continue
        cg = Cgroup(controller, path, version)
        try:
            _write_settings(path, version, controller, settings)
            return cg
        except OSError as e:
            reasons.append(f"v{version} {path}: {e.strerror} (controller not delegated here?)")
            cg.release()
    raise OSError(", ".join(reasons) or f"no {controller} cgroup hierarchy on this host")


def _left_by_dead_kernels(parent: str, pattern: str) -> Iterator[str]:
    """Entries of ``parent`` named (by ``pattern``, group 1) after a kernel pid that no longer runs."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(pattern, name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            yield os.path.join(parent, name)


def _sweep_stale(parent: str) -> None:
    """Remove cgroups left by kernels that were killed (SIGKILL leaves no time to clean up)."""
    for path in _left_by_dead_kernels(parent, r"jax-kernel-(\d+)-\d+"):
        Cgroup("", path, 1).release(tries=3)
