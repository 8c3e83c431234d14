"""The kernel side of the visual debugger: ``debug_request`` in, DAP to the worker, ``debug_event`` out.

ipykernel runs debugpy in the kernel process; here the code being debugged is in the
worker, so :class:`DebuggerRelay` (a mixin of ``JaxKernel``) carries each DAP request to
the worker's pydevd (see ``worker/debugger/``) and publishes what comes back.  What the
worker sends is checked by :func:`jax_kernel.protocol.wire.check_dap` before it reaches IOPub.

``debug_request`` arrives on the control channel, which ipykernel serves on its own
thread and event loop; the worker manager lives on the shell's loop, so every exchange
with the worker is handed over to that loop.  It must not wait for the cell in flight:
the worker answers debug requests on a thread of their own, with their own wire ids.

When the worker dies (or is replaced) while a frontend debugs, the frontend still thinks
the debugger is on, with its breakpoints: the relay tells it the stopped threads are gone
and starts the debugger again in the new worker, with the same breakpoints, before the
next request.  Cell files keep their names across workers (see ``worker/cellnames.py``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import typing as t

from ..protocol import dap, wire
from ..supervision.manager import WorkerError


def _response(request: dict[str, t.Any], message: str) -> dict[str, t.Any]:
    """A failed DAP response saying why in one line."""
    return dap.response(request, False, message=message)


class DebuggerRelay:
    """Serves debug_request for the kernel: the worker's pydevd answers, its events go to IOPub."""

    def __init__(
        self,
        manager: t.Any,
        session: t.Any,
        iopub_socket: t.Any,
        topic: t.Callable[[str], bytes],
        shell_loop: t.Callable[[], asyncio.AbstractEventLoop],
        control_parent: t.Callable[[], dict[str, t.Any]],
        enabled: bool,
        log: t.Any,
    ) -> None:
        self.manager = manager
        self.session = session
        self.iopub_socket = iopub_socket
        self._topic = topic
        self._shell_loop = shell_loop
        self._control_parent = control_parent
        self.enabled = enabled
        self.log = log
        self._debug_parent: dict[str, t.Any] = {}
        self._debug_setup: dict[str, dict[str, t.Any]] = {}  # initialize/attach requests to replay
        self._debug_breakpoints: dict[str, dict[str, t.Any]] = {}  # source path -> setBreakpoints request
        self._debug_worker: t.Any = None  # the worker the frontend's debug session runs in
        manager.debug_event_handler = self._publish_debug_event

    def debugger_unavailable(self) -> str | None:
        """Why the debugger can't be offered, or None when it can."""
        if not self.enabled:
            return "the debugger is turned off (JaxKernel.enable_debugger = False)"
        if importlib.util.find_spec("debugpy") is None:
            return "debugpy is not installed in the kernel's environment"
        return None

    async def handle(self, msg: dict[str, t.Any]) -> dict[str, t.Any]:
        """One DAP request from the frontend (on the control thread), answered by the worker's debugger."""
        why = self.debugger_unavailable()
        if why is not None:
            return _response(msg, why)
        if not isinstance(msg, dict) or not isinstance(msg.get("command"), str):
            return _response(msg if isinstance(msg, dict) else {}, "a debug_request needs a DAP command")
        self._debug_parent = self._control_parent()
        future = asyncio.run_coroutine_threadsafe(self._debug_in_worker(msg), self._shell_loop())
        return await asyncio.wrap_future(future)

    async def _debug_in_worker(self, request: dict[str, t.Any]) -> dict[str, t.Any]:
        """On the shell's loop: send one DAP request to the worker, starting its debugger again if needed."""
        command = request["command"]
        try:
            worker = await self.manager.ready_worker()
            if (
                self._debug_worker is not None
                and worker is not self._debug_worker
                and command != "initialize"
            ):
                await self._restart_worker_debugger()
            reply = await self._ask_worker(request)
        except WorkerError as e:
            return _response(request, f"the worker could not serve the debugger: {e}")
        except TimeoutError:
            return _response(request, "the worker's debugger did not answer in time")
        if reply.get("success"):
            self._remember(request, reply, worker)
        return reply

    async def _ask_worker(self, request: dict[str, t.Any]) -> dict[str, t.Any]:
        content = await self.manager.request(
            "debug", {"content": request}, timeout=self.manager.request_timeout + 5
        )
        return wire.check_dap(content, "response")  # the manager validated it; checked again for safety

    def _remember(self, request: dict[str, t.Any], reply: dict[str, t.Any], worker: t.Any) -> None:
        """What a replacement worker needs to be debugged as this one was."""
        command = request["command"]
        if command in ("initialize", "attach"):
            self._debug_setup[command] = request
            self._debug_worker = worker
        elif command == "setBreakpoints":
            source = ((request.get("arguments") or {}).get("source") or {}).get("path")
            if isinstance(source, str):
                self._debug_breakpoints[source] = request
        elif command == "disconnect":
            self._debug_setup.clear()
            self._debug_breakpoints.clear()
            self._debug_worker = None

    async def _restart_worker_debugger(self) -> None:
        """The worker was replaced: start its debugger as the frontend had started the old one's."""
        self.log.info("Starting the debugger again in the replacement worker")
        self._debug_worker = None
        for command in ("initialize", "attach"):
            if command in self._debug_setup:
                await self._ask_worker(self._debug_setup[command])
        for request in self._debug_breakpoints.values():
            await self._ask_worker(request)
        self._debug_worker = self.manager.worker

    def worker_gone(self) -> None:
        """The worker died: whatever was stopped in it is not any more."""
        if self._debug_worker is not None:
            self._publish_debug_event(
                {
                    "type": "event",
                    "seq": 0,
                    "event": "continued",
                    "body": {"threadId": 1, "allThreadsContinued": True},
                }
            )

    def forget(self) -> None:
        """A restart in place: as with a new process, no debug session, breakpoint or stopped
        thread is left (the frontend starts the debugger again if it wants it)."""
        self.worker_gone()
        self._debug_setup.clear()
        self._debug_breakpoints.clear()
        self._debug_worker = None

    def _publish_debug_event(self, event: dict[str, t.Any]) -> None:
        """A DAP event from the worker (validated by the wire) as a debug_event on IOPub."""
        self.session.send(
            self.iopub_socket,
            "debug_event",
            wire.check_dap(event, "event"),
            parent=self._debug_parent,
            ident=self._topic("debug_event"),
        )
