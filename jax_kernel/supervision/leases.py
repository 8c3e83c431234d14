"""Kernel process: the devices this kernel leases for its worker, and keeping the worker to them.

A lease is taken before a worker starts (so a refused ``%load_jax`` leaves the running worker as
it was), kept across restarts while the request stays the same, and applied to each new worker:
its threads pinned to leased cores, its device files narrowed to leased accelerators.
"""

from __future__ import annotations

import logging
from typing import Any

from ..policy.accelerators import Accelerators, Lease, LeaseError, pin_tasks
from ..policy.sandbox import Sandbox
from ..protocol import jaxspec
from .handle import WorkerHandle
from .local import WorkerProcess
from .workerset import ProcessSet


class DeviceLeases:
    """The lease of this kernel's worker: what was asked for, what is held, and how it is kept."""

    def __init__(
        self, accelerators: Accelerators, sandbox: Sandbox, processes: ProcessSet, log: logging.Logger
    ) -> None:
        self.accelerators = accelerators
        self.sandbox = sandbox
        self.processes = processes
        self.log = log
        self.lease: Lease | None = None  # devices this kernel holds for its workers
        self.request: tuple[str, Any] | None = None

    def _allowed(self) -> str:
        return self.sandbox.accelerators if self.sandbox.enabled else "all"

    def reserve(self, settings: dict[str, Any], current: WorkerHandle | None) -> Lease | None:
        """Lease the devices ``settings`` ask for (or the policy's default); ``current`` is the
        worker now running, whose set's lease counts as free.  LeaseError keeps the old lease."""
        request = self.device_request(settings)
        if request == self.request:
            return self.lease
        old, old_request = self.lease, self.request
        if old is not None:
            old.release()  # our own devices count as free for the new request
        self.lease, self.request = None, None
        if request is None:
            return None
        platform, wanted = request
        allowed = self._allowed()
        # A set being replaced by one worker: its devices are ours too (flock counts each open file).
        leaving = current if current is not None and current.processes > 1 else None
        set_lease = leaving.lease if leaving is not None else None
        if set_lease is not None:
            set_lease.release()
        try:
            self.lease = self.accelerators.acquire(platform, wanted, allowed)
        except LeaseError:
            if leaving is not None and set_lease is not None:
                try:
                    leaving.lease = self.accelerators.acquire(set_lease.platform, set_lease.devices, allowed)
                except LeaseError:
                    self.log.warning("Lost the lease of the set's processes while trying another")
            self._restore(old_request, allowed)
            raise
        self.request = request
        self.log.info("Leased %s %s (%s)", platform, self.lease.devices, self.lease.mode)
        return self.lease

    def _restore(self, old_request: tuple[str, Any] | None, allowed: str) -> None:
        """Take back the lease given up for a request that could not be met."""
        if old_request is None:
            return
        try:
            self.lease = self.accelerators.acquire(old_request[0], old_request[1], allowed)
        except LeaseError:
            self.log.warning("Lost the lease on %s while trying another", old_request)
            self.lease = None
        else:
            self.request = old_request

    def check_set(self, settings: dict[str, Any]) -> None:
        """Refuse (JaxSpecError) a set of processes this kernel may not start: too many, or a
        launcher that can't be found; before the running worker is replaced."""
        count = settings.get("processes", 1)
        if count > self.processes.max_processes:
            raise jaxspec.JaxSpecError(
                f"a set of {count} processes is more than this kernel allows "
                f"(ProcessSet.max_processes = {self.processes.max_processes}). The worker was kept as it was."
            )
        if count > 1:
            try:
                self.processes.launcher_class(settings.get("launcher") or self.processes.launcher)
            except ValueError as e:
                raise jaxspec.JaxSpecError(f"{e}. The worker was kept as it was.") from None

    def device_request(self, settings: dict[str, Any]) -> tuple[str, Any] | None:
        """(platform, count or ids) to lease, or None when the worker takes devices unleased."""
        if settings.get("processes", 1) > 1:
            return None  # a set leases for its members on this host itself, once it knows how many
        devices = settings.get("devices")
        if devices is None and self.accelerators.devices != "all":
            devices = jaxspec.parse_devices(self.accelerators.devices)
        if devices is None:
            return None
        host = self.accelerators.host_platform()
        platform = settings.get("platform") or host
        if platform == "cpu" and isinstance(devices, list):
            return None  # ids of JAX's CPU devices: only checked by the worker, nothing to lease
        if platform != "cpu" and platform != host:
            return None  # no such devices here: the worker's load says so
        return platform, devices

    def for_set(self, platform: str, count: int) -> Lease | None:
        """Lease ``count`` devices (cores on a CPU host) for a set's members on this host, when the
        policy leases devices at all (``Accelerators.devices`` other than ``all``); LeaseError if
        they are not free."""
        if self.accelerators.devices == "all" or count == 0:
            return None
        return self.accelerators.acquire(platform, count, self._allowed())

    def job_config(self) -> dict[str, Any]:
        """What a worker's config says of the lease: its devices in words, and the cores it is pinned to."""
        lease = self.lease
        if lease is None:
            return {}
        unit = "cores" if lease.platform == "cpu" else f"{lease.platform} devices"
        config: dict[str, Any] = {"lease": f"{unit} {', '.join(map(str, lease.devices))} ({lease.mode})"}
        if lease.platform == "cpu":
            config["cpu_affinity"] = lease.devices
        return config

    def withheld(self, settings: dict[str, Any]) -> bool:
        """Whether the default lease could not be had: the worker then gets no accelerator rather
        than one another kernel holds."""
        return (
            self.lease is None
            and self.accelerators.host_platform() != "cpu"
            and self.device_request(settings) is not None
        )

    def release(self) -> None:
        """Give the devices back (the kernel is shutting down)."""
        if self.lease is not None:
            self.lease.release()

    def forget(self) -> None:
        """Give the devices back and forget what was asked (a restart): the next worker leases
        what the policy says, as a new kernel's would."""
        self.release()
        self.lease, self.request = None, None

    def restrict(self, worker: WorkerProcess) -> None:
        """Keep a worker with an accelerator lease out of the other accelerators' device files."""
        lease = self.lease
        if lease is None or worker.sandbox is None:
            return
        if not worker.sandbox.restrict_to_lease(lease.platform, lease.devices) and lease.platform != "cpu":
            self.log.debug(
                "No devices cgroup for worker %s: its lease is kept by its environment", worker.pid
            )

    def pin(self, worker: WorkerProcess, cores: list[int]) -> None:
        """Pin the worker's threads to its leased cores now and once it is ready (see pin_tasks)."""

        def pin(_f: Any = None) -> None:
            refused = pin_tasks(worker.pid, cores)
            if refused:
                self.log.warning(
                    "Could not pin threads %s of worker %s to cores %s", refused, worker.pid, cores
                )

        pin()
        worker.ready.add_done_callback(pin)
        if worker.sandbox is not None and not worker.sandbox.restrict_cpus(cores):
            self.log.debug("No cpuset for worker %s: its lease is kept by pinning alone", worker.pid)
