"""Kernel process: a restart that keeps the kernel process (and the frontend's connection).

A new kernel process is what a restart has always meant, and all it brings here is a fresh
*worker*: the kernel process never runs user code, so it has nothing to lose.  Replacing the
process costs a frontend its sockets' reconnection (100-250 ms) and, without a warm spare, a
Python and ipykernel start.  So when jax-kernel's provisioner launched this process (it then has
a link to it, :mod:`jax_kernel.launch.link`), a restart replaces the worker with the standby and
resets everything a new kernel would have fresh: the execution count, the history session (a
new worker), the frontend's comms (closed), the debugger, ``%load_jax`` settings (back to the
configured ones), the device lease (returned, then taken again), subshells, a pending ``input()``
and the self-test.  Requests queued before the restart are aborted, as a new process would never
have answered them.  IOPub shows ``restarting``, then ``starting`` and ``idle``.

The process is replaced all the same after ``JaxKernel.max_in_place_restarts`` restarts, or once
its own memory has grown past ``JaxKernel.max_kernel_memory`` (it then exits, and the provisioner
takes its spare).  Without the provisioner (VS Code launches kernels itself) the kernel exits on
a restart as any kernel does.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t

import psutil

from ..launch.link import Link, LinkClosed
from .subshells import on_loop


class InPlaceRestarts:
    """Decides whether a restart can keep this process, and carries it out."""

    def __init__(self, kernel: t.Any, link: Link | None, log: logging.Logger) -> None:
        self.kernel = kernel
        self.link = link
        self.log = log
        self.count = 0
        self._lock: asyncio.Lock | None = None  # made on the shell's loop, where restarts run

    def refusal(self) -> str | None:
        """Why the next restart must replace the process, or None if it can keep it."""
        kernel = self.kernel
        if self.link is None:
            return "the kernel was not launched by jax-kernel's provisioner"
        if kernel.max_in_place_restarts >= 0 and self.count >= kernel.max_in_place_restarts:
            return f"{self.count} restarts in place (JaxKernel.max_in_place_restarts)"
        limit = kernel.max_kernel_memory
        if limit > 0:
            rss = psutil.Process().memory_info().rss
            if rss > limit:
                return f"the kernel process uses {rss >> 20} MiB (JaxKernel.max_kernel_memory)"
        return None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve what the provisioner sends (a forced restart) on the shell's loop."""
        if self.link is not None:
            loop.add_reader(self.link.fileno(), self._on_link, loop)

    def _on_link(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.link is not None
        try:
            while (message := self.link.poll()) is not None:
                if message.get("restart") == "now":
                    loop.create_task(self.restart(None))
        except LinkClosed:
            loop.remove_reader(self.link.fileno())  # the server is gone; the parent poller ends us

    async def restart(self, parent: dict[str, t.Any] | None) -> None:
        """Restart in place, from the control thread (a shutdown request) or the shell's loop (a
        forced restart): subshells go first (ipykernel keeps them on the control thread), then the
        reset on the shell's loop; only then is the provisioner told, so that jupyter_client's wait
        for the process to exit ends once no request can reach the old worker."""
        kernel = self.kernel
        await on_loop(self._reset(parent), kernel.io_loop.asyncio_loop)

    async def _reset(self, parent: dict[str, t.Any] | None) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one restart at a time: a second waits for the first to be done
            self.count += 1
            kernel = self.kernel
            self.log.info("Restarting in place (%d)", self.count)
            kernel._publish_status("restarting", "shell", parent)
            await on_loop(kernel.subshells.delete_all(), kernel.control_thread.io_loop.asyncio_loop)
            kernel.reset_for_restart()  # synchronous: the old worker is gone before the next request
            assert self.link is not None
            self.link.send(restarting=self.count)
            kernel._publish_status("starting", "shell")
            kernel._publish_status("idle", "shell")
