"""Which devices a worker gets, and how kernels on one host share them: leases and memory policy.

Kernels on a host coordinate through lock files in a shared directory, one per device and
sharing slot, held with ``flock`` by the kernel process (never by the untrusted worker).  The
OS drops a lock when its holder exits however it exits, so a crashed or SIGKILLed kernel frees
its devices at once and nobody has to clean up.  Each lock file names its holder (pid, notebook)
so that a refusal can say who has the device.

On a host without accelerators the leased units are CPU cores: a worker that asks for ``auto``
or ``N`` devices gets that many cores of its own (its affinity) and as many JAX host devices.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, Integer, Unicode, default, validate
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import TraitError

from ..protocol import jaxspec

VISIBLE_DEVICES_ENV = jaxspec.VISIBLE_DEVICES_ENV  # one table, shared with the worker side


class LeaseError(Exception):
    """A device request that cannot be met now; the message says who holds what."""


@dataclass
class Lease:
    """Devices a kernel holds for its worker, and the open lock files that hold them."""

    platform: str
    devices: list[int]
    mode: str
    files: list[Any] = field(default_factory=list, repr=False)

    def release(self) -> None:
        """Give the devices back (closing a file drops its flock)."""
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass
        self.files.clear()


class Accelerators(LoggingConfigurable):
    """The host's device policy: which devices a worker starts with, leasing, and memory limits."""

    devices = Unicode(
        "all",
        help="Devices a worker starts with unless load_jax_library asks otherwise: 'all' (every device "
        "the sandbox allows, no lease), 'auto' (one free device, leased), N (N free devices, leased) or "
        "ids such as '0,2' (those, leased). On a host without accelerators the leased units are CPU cores.",
    ).tag(config=True)

    @validate("devices")
    def _valid_devices(self, proposal: Any) -> str:
        value = proposal["value"].strip().lower()
        if value != "all":
            try:
                jaxspec.parse_devices(value)
            except jaxspec.JaxSpecError as e:
                raise TraitError(f"Accelerators.devices: {e}") from None
        return value

    mode = Unicode(
        "exclusive",
        help="'exclusive': a leased device belongs to one kernel. 'shared': up to max_sharing kernels "
        "lease the same device, each capped at memory_fraction of its memory.",
    ).tag(config=True)

    @validate("mode")
    def _valid_mode(self, proposal: Any) -> str:
        if proposal["value"] not in ("exclusive", "shared"):
            raise TraitError(f"Accelerators.mode must be 'exclusive' or 'shared', not {proposal['value']!r}")
        return proposal["value"]

    max_sharing = Integer(2, help="Kernels that may share one device in 'shared' mode.").tag(config=True)

    memory_fraction = Float(
        0.0,
        help="Fraction of each accelerator's memory a worker may use (XLA_PYTHON_CLIENT_MEM_FRACTION); "
        "0 means JAX's default when exclusive, and 0.9 / max_sharing when shared.",
    ).tag(config=True)

    preallocate = Unicode(
        "",
        help="'true' or 'false' for XLA_PYTHON_CLIENT_PREALLOCATE; empty means JAX's default "
        "(true) when exclusive, false when shared.",
    ).tag(config=True)

    allocator = Unicode(
        "",
        help="XLA_PYTHON_CLIENT_ALLOCATOR for workers ('platform', 'bfc', 'cuda_async'); empty: JAX's default.",
    ).tag(config=True)

    lease_dir = Unicode(help="Directory of the lock files all kernels on this host share.").tag(config=True)

    @default("lease_dir")
    def _default_lease_dir(self) -> str:
        from jupyter_core.paths import jupyter_runtime_dir

        return os.path.join(jupyter_runtime_dir(), "jax-kernel-leases")

    # inventory ----------------------------------------------------------------------
    def host_platform(self) -> str:
        """The accelerator platform this host has, judged from device files (JAX is not imported here)."""
        if glob.glob("/dev/nvidia[0-9]*"):
            return "cuda"
        if glob.glob("/dev/kfd"):
            return "rocm"
        if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):
            return "tpu"
        return "cpu"

    def inventory(self, platform: str, allowed: str = "all") -> list[int]:
        """Device ids (cores for CPU) a lease may draw from, within the sandbox's ``allowed`` list."""
        if platform == "cpu":
            ids = sorted(os.sched_getaffinity(0))
        elif platform == "cuda":
            ids = sorted(
                int(m.group(1)) for p in glob.glob("/dev/nvidia[0-9]*") if (m := re.search(r"(\d+)$", p))
            )
        elif platform == "tpu":
            ids = sorted(
                int(m.group(1)) for p in glob.glob("/dev/accel[0-9]*") if (m := re.search(r"(\d+)$", p))
            )
        else:
            ids = list(range(len(glob.glob("/dev/dri/renderD*"))))
        if platform != "cpu" and allowed not in ("all", ""):
            if allowed == "none":
                return []
            permitted = {int(i) for i in allowed.split(",")}
            ids = [i for i in ids if i in permitted]
        return ids

    # leasing ------------------------------------------------------------------------
    def _slots(self) -> int:
        return max(1, self.max_sharing) if self.mode == "shared" else 1

    def _path(self, platform: str, device: int, slot: int) -> str:
        return os.path.join(self.lease_dir, f"{platform}-{device}.{slot}.lock")

    def _holder(self, platform: str, device: int) -> str:
        """Who holds a device, read from the lock files its holders wrote."""
        for slot in range(max(1, self.max_sharing)):
            path = self._path(platform, device, slot)
            try:
                with open(path) as f:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free: its text is stale
                    fcntl.flock(f, fcntl.LOCK_UN)
                    continue
            except BlockingIOError:
                pass
            except OSError:
                continue
            try:
                with open(path) as f:
                    info = json.loads(f.read() or "{}")
            except (OSError, ValueError):
                info = {}
            who = f"kernel pid {info.get('pid', '?')}"
            if info.get("notebook"):
                who += f" ({info['notebook']})"
            return f"{who}, {info.get('mode', 'exclusive')}"
        return "another kernel"

    def _take_slot(self, platform: str, device: int, slot: int, mode: str) -> Any | None:
        path = self._path(platform, device, slot)
        f = open(path, "a+")  # noqa: SIM115 - the open file is the lease
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "notebook": os.environ.get("JPY_SESSION_NAME", ""),
                    "mode": mode,
                    "since": time.time(),
                }
            )
        )
        f.flush()
        return f

    def _take(self, platform: str, device: int) -> list[Any] | None:
        """Lock one device: every slot for an exclusive lease, one free slot for a shared one."""
        files: list[Any] = []
        if self.mode == "exclusive":
            # Every slot a sharing kernel might hold, so that exclusive and shared exclude each other.
            for slot in range(max(1, self.max_sharing)):
                f = self._take_slot(platform, device, slot, "exclusive")
                if f is None:
                    for held in files:
                        held.close()
                    return None
                files.append(f)
            return files
        for slot in range(self._slots()):
            f = self._take_slot(platform, device, slot, "shared")
            if f is not None:
                return [f]
        return None

    def acquire(self, platform: str, request: int | list[int], allowed: str = "all") -> Lease:
        """Lease ``request`` devices (a count, or these ids) of ``platform``; LeaseError if not free."""
        os.makedirs(self.lease_dir, mode=0o700, exist_ok=True)
        pool = self.inventory(platform, allowed)
        unit = "core" if platform == "cpu" else f"{platform} device"
        lease = Lease(platform, [], self.mode)
        if isinstance(request, list):
            missing = [d for d in request if d not in pool]
            if missing:
                lease.release()
                raise LeaseError(
                    f"{unit} {missing[0]} is not on this host or not allowed (available: {_ids(pool)})"
                )
            wanted, count = request, len(request)
        else:
            wanted, count = pool, request
            if count > len(pool):
                raise LeaseError(
                    f"{count} {unit}s asked for, but this host allows {len(pool)} ({_ids(pool)})"
                )
        busy: list[int] = []
        for device in wanted:
            files = self._take(platform, device)
            if files is None:
                busy.append(device)
                if isinstance(request, list):
                    break
                continue
            lease.devices.append(device)
            lease.files.extend(files)
            if len(lease.devices) == count:
                return lease
        lease.release()
        held = "; ".join(f"{unit} {d} is held by {self._holder(platform, d)}" for d in busy[:4])
        free = [d for d in pool if d not in busy]
        raise LeaseError(
            f"cannot lease {count if not isinstance(request, list) else _ids(request)} {unit}"
            f"{'s' if count != 1 else ''} ({self.mode}): {held}"
            + (f"; free now: {_ids(free)}" if free and isinstance(request, list) else "")
        )

    # what the worker gets -------------------------------------------------------------
    def memory_cap(self) -> float:
        """The most of a device's memory one worker may ask for: its share in 'shared' mode, else no cap (0)."""
        if self.mode != "shared":
            return 0.0
        return self.memory_fraction or 0.9 / max(1, self.max_sharing)

    def memory_env(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """The allocator variables a worker starts with: its own settings within this policy.

        In shared mode the policy's fraction is a ceiling, so no kernel can take more than its share
        by asking (JAX then ends an oversized allocation with RESOURCE_EXHAUSTED, in the cell).
        """
        env: dict[str, str] = {}
        cap = self.memory_cap()
        fraction = settings.get("memory_fraction") or cap or self.memory_fraction
        if cap:
            fraction = min(fraction, cap)
        if fraction:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:g}"
        prealloc = settings.get("preallocate")
        if prealloc is None and self.preallocate:
            prealloc = self.preallocate.strip().lower() in ("1", "true", "yes")
        if prealloc is None and self.mode == "shared":
            prealloc = False  # a preallocating neighbour would take the whole share at its first array
        if prealloc is not None:
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true" if prealloc else "false"
        if self.allocator:
            env["XLA_PYTHON_CLIENT_ALLOCATOR"] = self.allocator
        return env


def pin_env(lease: Lease) -> dict[str, str]:
    """Environment that shows a worker only its leased accelerators (renumbered from 0 by the runtime)."""
    ids = ",".join(str(d) for d in lease.devices)
    return {name: ids for name in VISIBLE_DEVICES_ENV.get(lease.platform, ())}


#: The device file of accelerator N, per platform, as ``inventory`` numbers them.  ROCm's render
#: nodes are not numbered like HIP's devices, so a ROCm lease is kept by its environment alone.
DEVICE_FILE = {"cuda": "/dev/nvidia{}", "tpu": "/dev/accel{}"}


def device_files(platform: str, ids: list[int]) -> list[str] | None:
    """The device files of accelerators ``ids``, or None where they can't be named (CPU, ROCm)."""
    pattern = DEVICE_FILE.get(platform)
    return None if pattern is None else [pattern.format(i) for i in ids]


def pin_tasks(pid: int, cores: list[int]) -> list[int]:
    """Pin every thread of worker ``pid`` to ``cores`` from the kernel; return the tids that refused.

    The worker's seccomp filter lets it set the affinity of itself only (pid 0 or its own pid: a
    filter can't tell the worker's thread ids from other processes' pids), so a standby worker
    can't pin the threads it already has when it takes up a lease.  The kernel, outside the
    sandbox, can; threads started later inherit the mask of the thread that starts them.
    """
    wanted, done, refused = {int(c) for c in cores}, set[int](), list[int]()
    for _ in range(3):  # again, for threads started while we pinned
        try:
            tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - done
        except OSError:
            break
        if not tids:
            break
        for tid in sorted(tids):
            done.add(tid)
            try:
                os.sched_setaffinity(tid, wanted)
            except ProcessLookupError:
                continue
            except OSError:
                refused.append(tid)
    return refused


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"
