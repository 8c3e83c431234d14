"""Kernel process: subshells (JEP 91), as ipykernel 7 has them, for cells that run in the worker.

ipykernel's kernel base already gives each subshell a thread of this process that takes its
shell messages in order (``create_subshell_request`` makes one, the shell channel routes by the
header's ``subshell_id``).  Here that thread runs no user code either: what it handles goes to
the worker, whose own subshell thread runs it beside the main shell's cell.  So the worker is
told of each subshell as it is made and deleted (``subshell`` requests, answered even while a
cell runs); a worker that starts later (a crash, a restart of the worker) makes a subshell's
thread when the first request for it arrives.

Everything a request needs of the worker happens on the shell's event loop, which owns the
worker's wire: :func:`on_loop` carries a coroutine there from a subshell's (or the control
channel's) thread, keeping the caller's context (ipykernel's parent ContextVars) with it.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t
from collections.abc import Awaitable, Callable, Coroutine

from ..supervision.manager import WorkerManager

T = t.TypeVar("T")

#: Seconds a create or delete waits for the worker's answer: it only starts or stops a thread.
WORKER_ANSWER_TIMEOUT = 5.0


async def on_loop(coro: Coroutine[t.Any, t.Any, T], loop: asyncio.AbstractEventLoop | None) -> T:
    """Await ``coro`` on ``loop`` (the shell's), from whichever loop runs now (None: this one)."""
    if loop is None or asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def subshell_of(parent: t.Any) -> str | None:
    """The subshell a frontend message is addressed to (None: the main shell)."""
    header = parent.get("header") if isinstance(parent, dict) else None
    subshell = header.get("subshell_id") if isinstance(header, dict) else None
    return subshell if isinstance(subshell, str) else None


class SubshellRelay:
    """Creates, deletes and lists subshells with ipykernel's subshell manager, and tells the worker."""

    def __init__(
        self,
        kernel: t.Any,
        manager: WorkerManager,
        shell_loop: Callable[[], asyncio.AbstractEventLoop],
        log: logging.Logger,
    ) -> None:
        self.kernel = kernel
        self.manager = manager
        self._shell_loop = shell_loop
        self.log = log

    @property
    def supported(self) -> bool:
        """ipykernel made a shell channel thread (its subshell manager) for this kernel."""
        thread = getattr(self.kernel, "shell_channel_thread", None)
        return thread is not None and hasattr(getattr(thread, "manager", None), "control_to_shell_channel")

    def _ask_ipykernel(self, request: dict[str, t.Any]) -> dict[str, t.Any]:
        """ipykernel's own subshell bookkeeping (its threads and routing), on the control thread."""
        socket = self.kernel.shell_channel_thread.manager.control_to_shell_channel.from_socket
        socket.send_json(request)
        return t.cast(dict[str, t.Any], socket.recv_json())

    async def _tell_worker(self, action: str, subshell_id: str) -> None:
        """Start or stop the worker's thread for ``subshell_id`` before the frontend hears of it, so
        that the next request finds it; a worker not running yet makes it on first use instead."""
        request = self.manager.request_if_ready(
            "subshell", {"action": action, "subshell_id": subshell_id}, WORKER_ANSWER_TIMEOUT
        )
        answer = await on_loop(request, self._shell_loop())
        if answer is None:
            self.log.debug("No worker to %s subshell %s in now", action, subshell_id)

    async def handle(self, socket: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """A create/delete/list_subshell_request, on the control channel."""
        msg_type = parent["header"]["msg_type"]
        reply_type = msg_type.replace("_request", "_reply")
        action = msg_type.split("_")[0]
        if not self.supported:
            reply = _error("NotImplementedError", "this kernel was started without subshell support")
        elif action == "delete" and not isinstance((parent.get("content") or {}).get("subshell_id"), str):
            reply = _error("ValueError", "delete_subshell_request needs a subshell_id (a string)")
        else:
            request: dict[str, t.Any] = {"type": action}
            if action == "delete":
                request["subshell_id"] = parent["content"]["subshell_id"]
            reply = self._ask_ipykernel(request)
            if reply.get("status") == "ok" and action in ("create", "delete"):
                await self._tell_worker(action, reply.get("subshell_id") or request["subshell_id"])
        self.kernel.session.send(socket, reply_type, reply, parent, ident)

    async def delete_all(self) -> None:
        """A restart in place: the subshells go, as they would with the old process (on the
        control thread, where ipykernel keeps them; the worker's threads died with the worker)."""
        if not self.supported:
            return
        listed = self._ask_ipykernel({"type": "list"}).get("subshell_id") or []
        for subshell_id in listed:
            self._ask_ipykernel({"type": "delete", "subshell_id": subshell_id})

    def register(self, handlers: dict[str, Callable[..., Awaitable[None]]]) -> None:
        for msg_type in ("create_subshell_request", "delete_subshell_request", "list_subshell_request"):
            handlers[msg_type] = self.handle


def _error(ename: str, evalue: str) -> dict[str, t.Any]:
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": []}
