"""What ``usage_request`` reports: the worker's CPU and memory, where ipykernel reports its own.

Frontends (jupyter-resource-usage's "Kernel usage" panel) send ``usage_request`` on the control
channel and show ``pid``, ``kernel_cpu`` and ``kernel_memory``.  ipykernel answers for its own
process; here user code and its memory live in the worker, so the figures are the worker's and
its children's (``!`` commands, multiprocessing pools), read with psutil from the pid the kernel
started (never from what the worker says about itself).  Device memory, which only the worker
can read, is added from its ``usage`` reply, checked by :func:`wire.validate_usage_reply`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import psutil

from ..protocol import wire


def _memory(proc: psutil.Process) -> int:
    """PSS where it can be read (shared pages counted once), else RSS (the worker may be non-dumpable)."""
    try:
        return int(getattr(proc.memory_full_info(), "pss", None) or proc.memory_info().rss)
    except psutil.AccessDenied:
        return int(proc.memory_info().rss)


class UsageProbe:
    """psutil figures for one process tree; keeps its Process objects so cpu_percent has a baseline."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self, pid: int) -> list[psutil.Process]:
        cached = self._procs.get(pid)
        root = cached if cached is not None and cached.is_running() else psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        # Reuse known processes: cpu_percent measures from the previous call on the same object.
        self._procs = {p.pid: self._procs.get(p.pid, p) for p in procs}
        return list(self._procs.values())

    def process_usage(self, pid: int | None) -> dict[str, Any]:
        """``kernel_cpu`` (percent of one core, summed) and ``kernel_memory`` (bytes) of pid's tree."""
        cpu, memory = 0.0, 0
        try:
            procs = self._tree(pid) if pid is not None else []
        except psutil.Error:
            procs = []
        for proc in procs:
            try:
                cpu += proc.cpu_percent()
                memory += _memory(proc)
            except psutil.Error:
                continue  # it ended meanwhile
        return {"kernel_cpu": cpu, "kernel_memory": memory}


def host_usage() -> dict[str, Any]:
    """The host's figures, as ipykernel reports them."""
    content: dict[str, Any] = {
        "cpu_count": psutil.cpu_count(logical=True),
        "host_virtual_memory": dict(psutil.virtual_memory()._asdict()),
    }
    cpu_percent = psutil.cpu_percent()
    if cpu_percent:  # the first call measures nothing and returns 0.0
        content["host_cpu_percent"] = cpu_percent
    return content


def reply_content(probe: UsageProbe, worker_pid: int | None) -> dict[str, Any]:
    """The ``usage_reply`` content but for the devices: ``pid`` is the worker's, since the
    figures beside it are; ``kernel_pid`` is this process."""
    return {
        "hostname": socket.gethostname(),
        "pid": worker_pid,
        "kernel_pid": os.getpid(),
        **probe.process_usage(worker_pid),
        **host_usage(),
    }


async def usage_reply(manager: Any, probe: UsageProbe, timeout: float, log: Any) -> dict[str, Any]:
    """The whole ``usage_reply`` content; runs on the control thread.

    The question to the worker goes through the manager's loop, and the psutil figures are read
    while it is out; a worker that does not answer within ``timeout`` leaves the devices out.
    """
    worker, loop = manager.worker, manager.loop
    asked = None
    if loop is not None and not loop.is_closed():
        asked = asyncio.run_coroutine_threadsafe(manager.request_if_ready("usage", {}, timeout), loop)
    content = reply_content(probe, worker.pid if worker is not None else None)
    answer = None
    if asked is not None:
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(asked), timeout + 0.5)
        except TimeoutError:
            asked.cancel()
    devices, problem = device_part(answer)
    if problem:
        log.warning("Ignoring the worker's device figures: %s", problem)
    content.update(devices)
    return content


def device_part(answer: Any) -> tuple[dict[str, Any], str]:
    """The reply's device fields from the worker's answer, and what was wrong with it ('' if nothing).

    ``devices_status``: ``ok`` (``devices`` lists each local device, with memory fields where the
    device keeps statistics), ``jax_not_started``, or ``unavailable`` (no ready worker, or no
    valid answer in time).
    """
    if not isinstance(answer, dict):
        return {"devices_status": "unavailable"}, ""
    try:
        checked = wire.validate_usage_reply(answer)
    except wire.WireError as e:
        return {"devices_status": "unavailable"}, str(e)
    if checked["jax"] != "ok":
        return {"devices_status": "jax_not_started"}, ""
    return {"devices_status": "ok", "devices": checked["devices"]}, ""
