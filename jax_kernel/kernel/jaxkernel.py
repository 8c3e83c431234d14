"""JaxKernel: the Jupyter protocol, served by a supervised worker process that runs every cell.

Built on ipykernel's ``kernelbase.Kernel`` (the protocol: channels, dispatch, busy/idle, the shell
parent in a ContextVar), not on ``IPythonKernel``: that class builds an IPython shell, a comm
manager and a debugger in this process, which never runs user code.  Each ``do_*`` hook forwards
the request to the worker over :mod:`jax_kernel.protocol.wire`, tagged with its :class:`Origin`,
and what the worker sends back is published under the request it answers (``outputs.py``); a
dead worker becomes an error on the cell.  The parts: ``outputs`` (IOPub), ``stdin``
(input_request), ``debug_relay`` (debug_request), ``jax_requests`` (the jax_* messages),
``selftest_relay`` (``%sandbox --selftest``), ``usage`` (usage_request), ``replies`` (what the
untrusted worker's answers may contain), ``execute`` (a cell), ``subshells`` (JEP 91: a subshell's
requests run in the worker beside the main shell's cell).
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
import typing as t
from importlib import metadata

from ipykernel._version import kernel_protocol_version
from traitlets import Any, Instance, default

from .. import __version__
from ..protocol import wire
from ..supervision.manager import WorkerDied, WorkerError, WorkerManager
from . import replies, usage
from .debug_relay import DebuggerRelay
from .execute import CellRunner
from .jax_requests import JaxRequests
from .outputs import Origin, OutputPublisher
from .restart import InPlaceRestarts
from .selftest_relay import SelfTestRunner
from .settings import KernelSettings
from .stdin import InputRelay
from .subshells import SubshellRelay, on_loop, subshell_of


@functools.cache
def installed_jax_version() -> str | None:
    """JAX's version as installed (importlib.metadata reads the dist-info: ~40 ms the first time,
    which a warm kernel process pays before it is needed, see ``JaxKernelApp.prepare_spare``)."""
    try:
        return metadata.version("jax")
    except metadata.PackageNotFoundError:
        return None


class JaxKernel(KernelSettings):
    """A Jupyter kernel that never runs user code itself: a worker process runs every cell."""

    manager = Instance(WorkerManager)
    debugpy_stream = Any(allow_none=True, help="ipykernel's in-process debugger socket: unused here.")

    @default("manager")
    def _default_manager(self) -> WorkerManager:
        prepared = getattr(self.parent, "prepared_manager", None)  # a spare's, with its standby
        return prepared if prepared is not None else WorkerManager(parent=self, log=self.log)

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.cells = CellRunner(self)
        manager = self.manager
        manager.stream_limit = self.output_limit
        sanitize = manager.sandbox.active_outputs_mode == "sanitize"
        self.outputs = OutputPublisher(self.session, self.iopub_socket, self._topic, sanitize)
        self.stdin = InputRelay(self.session, self.stdin_socket, manager.send_input_reply)
        self.selftest = SelfTestRunner(self.outputs, manager.sandbox.profile, manager.send_selftest_done)
        self.debugger_relay = DebuggerRelay(
            manager,
            self.session,
            self.iopub_socket,
            self._topic,
            lambda: self.io_loop.asyncio_loop,
            lambda: self.get_parent("control"),
            self.enable_debugger,
            self.log,
        )
        self.jax = JaxRequests(
            manager, self.session, self.outputs, self.log, self.jax_reply_limit, self.max_program_bytes
        )
        manager.output_handler = self.outputs.worker_output
        manager.problem_handler = self.outputs.problem
        manager.input_handler = self.stdin.ask
        manager.selftest_handler = self.selftest.start
        manager.exit_handler = self._worker_gone
        self._usage_probe = usage.UsageProbe()
        for msg_type in wire.COMM_MSG_TYPES:
            self.shell_handlers[msg_type] = self._forward_comm
        self.subshells = SubshellRelay(self, manager, lambda: self.io_loop.asyncio_loop, self.log)
        self.subshells.register(self.control_handlers)
        self.restarts = InPlaceRestarts(self, getattr(self.parent, "link", None), self.log)
        atexit.register(manager.kill_now)
        self.jax.register(self.shell_handlers)  # jax_load_request -> jax_load_reply, ...

    def start(self) -> None:
        super().start()
        # Start the worker in parallel with the frontend's kernel_info handshake.
        self.io_loop.add_callback(self.manager.start)
        self.restarts.watch(self.io_loop.asyncio_loop)

    def _reply(
        self, stream: t.Any, msg_type: str, content: dict[str, t.Any], parent: t.Any, ident: t.Any
    ) -> None:
        assert self.session is not None  # the app gives the kernel its session before any request
        self.session.send(stream, msg_type, content, parent, ident)

    def _origin(self, parent: t.Any = None, ident: t.Any = None) -> Origin:
        """The origin of a request for ``parent`` (default: the shell request being handled, which
        ipykernel keeps in a ContextVar per request), with the newest control message."""
        if parent is None:
            parent, ident = self.get_parent("shell"), self._get_shell_context_var(self._shell_parent_ident)
        return Origin(parent, ident, (self._control_parent, self._control_parent_ident))

    # protocol surface ---------------------------------------------------------------
    @property
    def execution_count(self) -> int:  # type: ignore[override]
        return self.cells.execution_count

    @execution_count.setter
    def execution_count(self, value: int) -> None:
        pass  # the worker's shell owns the counter, as the in-process shell does in ipykernel

    @property
    def banner(self) -> str:  # type: ignore[override]
        py = sys.version.split()[0]
        if self.cells.jax_loaded_version:
            jax = f"JAX {self.cells.jax_loaded_version} (loaded)"
        else:
            jax = f"JAX {installed_jax_version() or 'not installed'} (not imported yet)"
        return (
            f"Python {py} | jax-kernel {__version__} | {jax}\n"
            "Cells run in a supervised worker process: a crash, an out-of-memory kill or a stuck "
            "XLA loop restarts the worker, not the kernel.\n"
        )

    @property
    def kernel_info(self) -> dict[str, t.Any]:
        # The debugger offered is the worker's (debug_relay.py), and so are the subshells' threads.
        debugger = self.debugger_relay.debugger_unavailable() is None
        features = ["debugger"] if debugger else []
        if self.subshells.supported:
            features.append("kernel subshells")
        return {
            "protocol_version": kernel_protocol_version,
            "implementation": self.implementation,
            "implementation_version": self.implementation_version,
            "language_info": self.language_info,
            "banner": self.banner,
            "help_links": self.help_links,
            "supported_features": features,
            "debugger": debugger,
            "sandbox": self.manager.sandbox.info(),
            "output_limit": self.output_limit,  # what one cell may send (the self-test checks it)
        }

    def pre_handler_hook(self) -> None:
        """Keep the app's SIGINT forwarding in place while a request is handled."""

    def post_handler_hook(self) -> None:
        """Nothing to restore: see pre_handler_hook."""

    def _send_interrupt_children(self) -> None:
        self.selftest.interrupt()
        self.manager.interrupt()

    async def usage_request(self, stream: t.Any, ident: t.Any, parent: t.Any) -> None:
        """The worker's CPU and memory (the user's memory lives there, not here) and its devices'."""
        content = await usage.usage_reply(self.manager, self._usage_probe, self.usage_timeout, self.log)
        self._reply(stream, "usage_reply", content, parent, ident)

    async def do_debug_request(self, msg: dict[str, t.Any]) -> dict[str, t.Any]:  # type: ignore[override]
        return await self.debugger_relay.handle(msg)

    # comms (widgets, progress bars) --------------------------------------------------------
    async def _forward_comm(self, stream: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """A comm message from the frontend: the comm lives in the worker, so its handlers run there
        (in the worker's thread for the message's subshell, or for the one the comm last spoke from)."""
        await on_loop(self._forward_comm_here(ident, parent), self.io_loop.asyncio_loop)

    async def _forward_comm_here(self, ident: t.Any, parent: dict[str, t.Any]) -> None:
        msg_type, content = parent["header"]["msg_type"], parent.get("content") or {}
        if not isinstance(content.get("comm_id"), str):
            self.log.warning("Ignoring a %s without a comm_id", msg_type)
            return
        origin = self._origin(parent, ident)
        if subshell_of(parent) is None:
            self.outputs.begin(origin)
        self.outputs.track_comm(msg_type, content)
        buffers = wire.encode_buffers(parent.get("buffers"))
        request = {
            "msg_type": msg_type,
            "content": content,
            "metadata": parent.get("metadata") or {},
            wire.PARENT_FIELD: origin.for_worker(),
        }
        try:
            await self.manager.request("comm", {**request, "buffers": buffers}, origin=origin)
        except WorkerDied as e:
            report = await self.manager.state.restore_report(self.manager.start_timeout)
            kept = replies.restored_text(report, (report or {}).get("cell") or 0)
            self.outputs.problem(
                f"{e.subject} {e.how} while handling a widget message. {kept or e.fresh + '; all variables were lost.'}",
                origin,
            )
        except WorkerError as e:
            self.log.warning("Worker could not handle %s: %s", msg_type, e)

    def _worker_gone(self) -> None:
        self.outputs.close_worker_comms()
        self.debugger_relay.worker_gone()

    async def comm_info_request(self, stream: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """The comms that exist are the worker's."""
        target_name = (parent.get("content") or {}).get("target_name")
        content = await self._ask("comm_info", {"target_name": target_name})
        self._reply(stream, "comm_info_reply", replies.comm_info_reply(content), parent, ident)

    # execute ----------------------------------------------------------------------------
    async def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, t.Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: t.Any = None,
        cell_id: t.Any = None,
    ) -> dict[str, t.Any]:
        if threading.current_thread() is self.control_thread:
            # An execute_request on the control channel (ipykernel runs those too): served on the
            # shell's loop, which owns the worker's requests, under the control message.
            origin = Origin(self.get_parent("control"), self._control_parent_ident)
        else:  # the main shell's, or a subshell's (its thread's parent)
            origin = self._origin()
        cell = self.cells.run(origin, code, silent, store_history, user_expressions, allow_stdin)
        return await on_loop(cell, self.io_loop.asyncio_loop)

    # introspection ------------------------------------------------------------------------
    async def _ask(self, kind: str, content: dict[str, t.Any]) -> dict[str, t.Any] | None:
        """A question that runs no user code (completion, history, ...): whatever the worker prints
        meanwhile is tagged with the last cell's request, and goes there."""
        subshell = subshell_of(self.get_parent("shell"))
        if subshell is not None:  # answered by that subshell's thread, beside a running cell
            content = {**content, "subshell_id": subshell}
        request = self.manager.request(kind, content, timeout=self.manager.request_timeout)
        try:
            return await on_loop(request, self.io_loop.asyncio_loop)
        except (TimeoutError, WorkerError) as e:
            self.log.warning("Worker could not answer %s: %s", kind, e or "timed out")
            return None

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, t.Any]:  # type: ignore[override]
        cursor = len(code) if cursor_pos is None else cursor_pos
        content = await self._ask("complete", {"code": code, "cursor_pos": cursor})
        return replies.complete_reply(content, cursor)

    async def do_inspect(
        self,
        code: str,
        cursor_pos: int,
        detail_level: int = 0,  # type: ignore[override]
        omit_sections: t.Any = (),
    ) -> dict[str, t.Any]:
        request = {
            "code": code,
            "cursor_pos": cursor_pos,
            "detail_level": detail_level,
            "omit_sections": list(omit_sections),
        }
        return replies.inspect_reply(await self._ask("inspect", request), self.outputs.clean)

    async def do_is_complete(self, code: str) -> dict[str, t.Any]:  # type: ignore[override]
        return replies.is_complete_reply(await self._ask("is_complete", {"code": code}))

    async def do_history(
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: int = 0,  # type: ignore[override]
        start: int = 0,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
    ) -> dict[str, t.Any]:
        request = {
            "hist_access_type": hist_access_type,
            "output": output,
            "raw": raw,
            "session": session,
            "start": start,
            "stop": stop,
            "n": n,
            "pattern": pattern,
            "unique": unique,
        }
        return replies.history_reply(await self._ask("history", request))

    # restarts and shutdown ---------------------------------------------------------------
    async def shutdown_request(self, stream: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """A restart keeps this process when it can (:mod:`.restart`); else the process exits."""
        restart = bool((parent.get("content") or {}).get("restart"))
        why = self.restarts.refusal() if restart else "a shutdown"
        if why is not None:
            if restart:
                self.log.info("Restarting into a new process: %s", why)
            await super().shutdown_request(stream, ident, parent)
            return
        await self.restarts.restart(parent)
        self._reply(stream, "shutdown_reply", {"status": "ok", "restart": True}, parent, ident)

    def reset_for_restart(self) -> None:
        """What a new kernel process would have fresh (:mod:`.restart`), on the shell's loop and
        synchronously: no request served after this reaches the old worker."""
        self._abort_queues()  # requests queued before the restart: a new process never saw them
        self.selftest.interrupt()
        self.stdin.cancel()
        self.outputs.close_worker_comms()
        self.debugger_relay.forget()
        self.manager.restart()
        self.cells.reset()
        self._usage_probe = usage.UsageProbe()

    async def do_shutdown(self, restart: bool) -> dict[str, t.Any]:  # type: ignore[override]
        await self.manager.shutdown()
        return {"status": "ok", "restart": restart}
