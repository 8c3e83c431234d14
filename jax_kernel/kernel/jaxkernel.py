"""JaxKernel: ipykernel's IPythonKernel, with every cell run in a supervised worker process.

The kernel keeps the Jupyter protocol and nothing else: each ``do_*`` hook forwards the
request to the worker over :mod:`jax_kernel.protocol.wire`, re-publishes what the worker sends
on IOPub under the right parent, and turns a dead worker into an error on the cell.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import sys
import threading
import typing as t
from importlib import metadata

import zmq
from ipykernel.ipkernel import IPythonKernel
from traitlets import Float, Instance, Integer, default

from .. import __version__
from ..protocol import wire
from ..supervision.manager import WorkerDied, WorkerError, WorkerManager
from . import usage
from .debug_relay import DebuggerRelay
from .jax_requests import JaxEntryPoints

#: Fields of each worker output message that become the IOPub message's content.
_OUTPUT_FIELDS = {
    kind: (*fields, *wire.OPTIONAL_FIELDS.get(kind, {}))
    for kind, fields in wire.WORKER_MESSAGES.items()
    if kind in {"stream", "display_data", "update_display_data", "clear_output", "execute_result", "error"}
}

_RED, _RESET = "\x1b[0;31m", "\x1b[0m"


def _installed_jax_version() -> str | None:
    try:
        return metadata.version("jax")
    except metadata.PackageNotFoundError:
        return None


class MalformedReply(WorkerError):
    """The worker answered with something that is not a valid reply."""


def _require(content: dict[str, t.Any], field: str, kind: type | tuple[type, ...]) -> t.Any:
    value = content.get(field)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedReply(f"reply field {field!r} is missing or has the wrong type")
    return value


class JaxKernel(DebuggerRelay, JaxEntryPoints, IPythonKernel):
    """A Jupyter kernel that never runs user code itself: a worker process runs every cell."""

    implementation = "jax-kernel"
    implementation_version = __version__

    output_limit = Integer(
        20_000_000,
        help="Characters of output one cell may send, everything counted: stream text, and the data "
        "of displays, results and comm messages; the rest is dropped with a notice (a runaway print "
        "or display loop must not take the browser or the kernel down).",
    ).tag(config=True)

    compile_notice_after = Float(
        2.0,
        help="Seconds an XLA compile may run before the cell shows a transient 'XLA is compiling f' "
        "line (removed when the compile or the cell ends); 0 turns the line off.",
    ).tag(config=True)

    usage_timeout = Float(
        1.0,
        help="Seconds a usage_request waits for the worker's device memory figures; past that the reply "
        "has the worker's CPU and memory without them (a busy worker must not stall a status bar).",
    ).tag(config=True)

    manager = Instance(WorkerManager)

    @default("manager")
    def _default_manager(self) -> WorkerManager:
        prepared = getattr(self.parent, "prepared_manager", None)  # a spare's, with its standby
        return prepared if prepared is not None else WorkerManager(parent=self, log=self.log)

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        # Comms live in the worker.  When the kernel has a comm manager, ipykernel's shell-channel
        # thread looks every comm_msg up in it (to route it to a subshell), and each miss logs a
        # "No such comm" warning record: 0.6 ms added to every widget round trip (measured).
        del self.comm_manager
        self._execution_count = 1
        self._jax_loaded_version: str | None = None
        self._output_parent: dict[str, t.Any] = {}
        self._output_ident: t.Any = None
        self._input_cancel: threading.Event | None = None
        self.manager.stream_limit = self.output_limit
        self._sanitize_outputs = self.manager.sandbox.active_outputs_mode == "sanitize"
        self._widget_sanitizer: t.Any = None
        if self._sanitize_outputs:
            from .active_outputs import WidgetSanitizer

            self._widget_sanitizer = WidgetSanitizer()
        self.manager.output_handler = self._publish_output
        self.manager.problem_handler = self._publish_problem
        self.manager.input_handler = self._relay_input_request
        self.manager.selftest_handler = self._start_selftest
        self._selftest: asyncio.Future[None] | None = None
        self._selftest_pid: int | None = None  # ended by an interrupt
        self.manager.exit_handler = self._worker_gone
        self._usage_probe = usage.UsageProbe()
        self._open_comms: dict[str, str] = {}  # comm_id -> target_name, as the frontend sees them
        for msg_type in wire.COMM_MSG_TYPES:
            self.shell_handlers[msg_type] = self._forward_comm
        atexit.register(self.manager.kill_now)
        self.register_jax_handlers()  # jax_load_request -> jax_load_reply, ...
        self.init_debug_relay()  # debug_request -> the worker's pydevd; debug_event back

    def start(self) -> None:
        super().start()
        # Start the worker in parallel with the frontend's kernel_info handshake.
        self.io_loop.add_callback(self.manager.start)

    # protocol surface ---------------------------------------------------------------
    @property
    def execution_count(self) -> int:  # type: ignore[override]
        return self._execution_count

    @execution_count.setter
    def execution_count(self, value: int) -> None:
        pass  # the worker's shell owns the counter, as the in-process shell does in ipykernel

    @property
    def banner(self) -> str:  # type: ignore[override]
        py = sys.version.split()[0]
        if self._jax_loaded_version:
            jax = f"JAX {self._jax_loaded_version} (loaded)"
        else:
            jax = f"JAX {_installed_jax_version() or 'not installed'} (not imported yet)"
        return (
            f"Python {py} | jax-kernel {__version__} | {jax}\n"
            "Cells run in a supervised worker process: a crash, an out-of-memory kill or a stuck "
            "XLA loop restarts the worker, not the kernel.\n"
        )

    @property
    def kernel_info(self) -> dict[str, t.Any]:
        info = super().kernel_info
        # ipykernel's own debugger and subshells would act on this process, which runs no user code:
        # the debugger offered is the worker's (debug_relay.py).
        debugger = self.debugger_unavailable() is None
        info["supported_features"] = ["debugger"] if debugger else []
        info["debugger"] = debugger
        info["sandbox"] = self.manager.sandbox.info()
        info["output_limit"] = self.output_limit  # what one cell may send (the self-test checks it)
        return info

    def pre_handler_hook(self) -> None:
        """Keep the app's SIGINT forwarding in place while a request is handled."""

    def post_handler_hook(self) -> None:
        """Nothing to restore: see pre_handler_hook."""

    def _send_interrupt_children(self) -> None:
        pid = self._selftest_pid
        if pid is not None:  # %sandbox --selftest: it cleans up its kernel and decoys on SIGTERM
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        self.manager.interrupt()

    async def create_subshell_request(self, socket: t.Any, ident: t.Any, parent: t.Any) -> None:
        """Subshells are not offered: the worker runs one cell at a time."""
        content = {
            "status": "error",
            "ename": "NotImplementedError",
            "evalue": "jax-kernel does not support subshells",
            "traceback": [],
        }
        self.session.send(socket, "create_subshell_reply", content, parent, ident)

    async def usage_request(self, stream: t.Any, ident: t.Any, parent: t.Any) -> None:
        """The worker's CPU and memory (the user's memory lives there, not here) and its devices'.

        Runs on the control thread: the question to the worker goes through the manager's loop,
        and the psutil figures are read while it is out.
        """
        worker, loop = self.manager.worker, self.manager.loop
        asked = None
        if loop is not None and not loop.is_closed():
            asked = asyncio.run_coroutine_threadsafe(
                self.manager.request_if_ready("usage", {}, self.usage_timeout), loop
            )
        content = usage.reply_content(self._usage_probe, worker.pid if worker is not None else None)
        answer = None
        if asked is not None:
            try:
                answer = await asyncio.wait_for(asyncio.wrap_future(asked), self.usage_timeout + 0.5)
            except TimeoutError:
                asked.cancel()
        devices, problem = usage.device_part(answer)
        if problem:
            self.log.warning("Ignoring the worker's device figures: %s", problem)
        content.update(devices)
        self.session.send(stream, "usage_reply", content, parent, ident)

    # outputs from the worker -------------------------------------------------------
    def _publish(self, msg_type: str, content: dict[str, t.Any], **extra: t.Any) -> None:
        """IOPub message under the current cell's (or comm message's) parent; extra: metadata, buffers."""
        self.session.send(
            self.iopub_socket,
            msg_type,
            content,
            parent=self._output_parent,
            ident=self._topic(msg_type),
            **extra,
        )

    def _publish_output(self, msg: dict[str, t.Any]) -> None:
        kind = msg["type"]
        if kind == "comm":
            self._publish_comm(msg)
            return
        fields = _OUTPUT_FIELDS.get(kind)
        if fields is None:
            return
        content = {f: msg[f] for f in fields if f in msg}
        if "data" in content and self._sanitize_outputs:
            content["data"] = self._sanitized(content["data"])
        self._publish(kind, content)

    def _sanitized(self, data: t.Any) -> t.Any:
        """A bundle without what would run in the browser (Sandbox.active_outputs, active_outputs.py)."""
        if not isinstance(data, dict):
            return data
        from .active_outputs import sanitize_bundle

        return sanitize_bundle(data)[0]

    def _publish_problem(self, text: str) -> None:
        self._publish("stream", {"name": "stderr", "text": f"[jax-kernel] {text}\n"})

    # comms (widgets, progress bars) --------------------------------------------------------
    def _publish_comm(self, msg: dict[str, t.Any]) -> None:
        try:
            buffers = wire.decode_buffers(msg["buffers"])
        except wire.WireError:
            self._publish_problem("dropped a comm message from the worker with a malformed buffer")
            return
        msg_type, content = msg["msg_type"], msg["content"]
        self._track_comm(msg_type, content)
        if self._widget_sanitizer is not None:
            content = self._widget_sanitizer.clean(msg_type, content)
        self._publish(msg_type, content, metadata=msg["metadata"], buffers=buffers)

    def _track_comm(self, msg_type: str, content: dict[str, t.Any]) -> None:
        if msg_type == "comm_open":
            self._open_comms[content["comm_id"]] = str(content.get("target_name", ""))
        elif msg_type == "comm_close":
            self._open_comms.pop(content["comm_id"], None)

    async def _forward_comm(self, stream: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """A comm message from the frontend: the comm lives in the worker, so its handlers run there."""
        msg_type, content = parent["header"]["msg_type"], parent.get("content") or {}
        if not isinstance(content.get("comm_id"), str):
            self.log.warning("Ignoring a %s without a comm_id", msg_type)
            return
        self._output_parent = parent
        self._track_comm(msg_type, content)
        buffers = wire.encode_buffers(parent.get("buffers"))
        request = {"msg_type": msg_type, "content": content, "metadata": parent.get("metadata") or {}}
        try:
            await self.manager.request("comm", {**request, "buffers": buffers})
        except WorkerDied as e:
            self._publish_problem(
                f"{e.subject} {e.how} while handling a widget message; all variables were lost."
            )
        except WorkerError as e:
            self.log.warning("Worker could not handle %s: %s", msg_type, e)

    def _worker_gone(self) -> None:
        self._close_worker_comms()
        self.debug_worker_gone()

    def _close_worker_comms(self) -> None:
        """A dead worker's comms are gone: tell the frontend, so no widget keeps accepting input."""
        for comm_id in list(self._open_comms):
            self._publish("comm_close", {"comm_id": comm_id, "data": {}})
        self._open_comms.clear()

    async def comm_info_request(self, stream: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """The comms that exist are the worker's."""
        target_name = (parent.get("content") or {}).get("target_name")
        content = await self._ask("comm_info", {"target_name": target_name})
        raw = content.get("comms") if content else None
        comms = {
            comm_id: {"target_name": info["target_name"]}
            for comm_id, info in (raw.items() if isinstance(raw, dict) else ())
            if isinstance(info, dict) and isinstance(info.get("target_name"), str)
        }
        self.session.send(stream, "comm_info_reply", {"status": "ok", "comms": comms}, parent, ident)

    # %sandbox --selftest -----------------------------------------------------------------
    def _start_selftest(self) -> None:
        if self._selftest is not None and not self._selftest.done():
            self._publish_problem("a self-test is already running; wait for its table")
            self.manager.send_selftest_done(2)
            return
        self._selftest = asyncio.ensure_future(self._run_selftest())

    async def _run_selftest(self) -> None:
        """Run ``python -m jax_kernel selftest`` with this kernel's profile, outside every sandbox
        and in a process of its own (the battery starts its own kernel: the user's worker and its
        variables are not attacked), and relay its lines to the cell that asked."""
        status = 2
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jax_kernel",
                "selftest",
                "--profile",
                self.manager.sandbox.profile,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            assert proc.stdout is not None
            self._selftest_pid = proc.pid
            async for line in proc.stdout:
                self._publish("stream", {"name": "stdout", "text": line.decode(errors="replace")})
            status = await proc.wait()
        except OSError as e:
            self._publish_problem(f"the self-test could not start: {e}")
        finally:
            self._selftest_pid = None
            self.manager.send_selftest_done(status)

    # stdin ------------------------------------------------------------------------------
    def _relay_input_request(self, msg: dict[str, t.Any]) -> None:
        if self._input_cancel is not None:
            self._input_cancel.set()
        cancel = self._input_cancel = threading.Event()
        asyncio.ensure_future(self._relay_input(msg["prompt"], msg["password"], cancel))

    async def _relay_input(self, prompt: str, password: bool, cancel: threading.Event) -> None:
        value = await asyncio.to_thread(
            self._ask_frontend, prompt, password, self._output_ident, self._output_parent, cancel
        )
        if value is not None:
            self.manager.send_input_reply(value)

    def _ask_frontend(
        self, prompt: str, password: bool, ident: t.Any, parent: t.Any, cancel: threading.Event
    ) -> str | None:
        """Blocking input_request/input_reply exchange, run on a thread so the loop keeps going."""
        sock = self.stdin_socket
        while True:  # purge stale replies to an earlier, interrupted request
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self.session.send(
            sock, "input_request", {"prompt": prompt, "password": password}, parent, ident=ident
        )
        while not cancel.is_set():
            if sock.poll(50):
                _, reply = self.session.recv(sock)
                if reply is None:
                    continue
                value = reply.get("content", {}).get("value", "")
                return value if isinstance(value, str) else str(value)
        return None

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
        self._output_parent = self.get_parent("shell")
        self._output_ident = self._get_shell_context_var(self._shell_parent_ident)
        death = None if silent else self.manager.take_death_report()
        if death is not None:
            return self._error_reply(death, ran=False)
        # If the worker dies mid-cell, its replacement continues the numbering after this cell.
        self.manager.execution_count = self._execution_count + (1 if store_history and not silent else 0)
        try:
            content = await self.manager.request(
                "execute",
                {
                    "code": code,
                    "silent": silent,
                    "store_history": store_history,
                    "user_expressions": user_expressions or {},
                    "allow_stdin": allow_stdin,
                    "output_limit": self.output_limit,
                    "compile_notice_after": self.compile_notice_after,
                },
            )
            reply = self._checked_execute_reply(content)
            if reply["status"] == "ok" and isinstance(content.get("jax_restart"), dict):
                reply = await self._replace_for_jax(content["jax_restart"], reply)
        except WorkerError as e:
            self._execution_count = self.manager.execution_count
            return self._error_reply(e, ran=True)
        except Exception as e:  # noqa: BLE001 - the frontend must get a reply, whatever went wrong
            self.log.exception("Internal error while running a cell")
            return self._error_reply(
                WorkerError(f"internal error in the kernel ({type(e).__name__}: {e})"), ran=True
            )
        finally:
            if self._input_cancel is not None:
                self._input_cancel.set()
            self._finish_stream_budget()
        return reply

    def _finish_stream_budget(self) -> None:
        worker = self.manager.worker
        notice = worker.stream_budget.take_notice() if worker is not None else None
        if notice:
            self._publish("stream", {"name": "stderr", "text": notice})

    def _checked_execute_reply(self, content: dict[str, t.Any]) -> dict[str, t.Any]:
        status = content.get("status")
        if status not in ("ok", "error"):
            raise MalformedReply("execute reply has no valid status")
        next_count = _require(content, "next_execution_count", int)
        reply: dict[str, t.Any] = {
            "status": status,
            "execution_count": _require(content, "execution_count", int),
            "user_expressions": _require(content, "user_expressions", dict),
            "payload": [p for p in _require(content, "payload", list) if isinstance(p, dict)],
        }
        if status == "error":
            reply["ename"] = _require(content, "ename", str)
            reply["evalue"] = _require(content, "evalue", str)
            reply["traceback"] = [s for s in _require(content, "traceback", list) if isinstance(s, str)]
        jax_version = content.get("jax_version")
        self._jax_loaded_version = jax_version if isinstance(jax_version, str) else None
        self._execution_count = self.manager.execution_count = next_count
        return reply

    def _error_reply(self, error: WorkerError, ran: bool) -> dict[str, t.Any]:
        """End the cell with an error that says what happened to the worker and to the variables."""
        if isinstance(error, WorkerDied):
            ename = "WorkerDied"
            when = "while running this cell" if ran else "after the previous cell ran"
            evalue = f"{error.subject} {error.how} {when}. {error.fresh}; all variables were lost."
            if not ran:
                evalue += " This cell was not run: run it again."
            extra = error.diagnostics.strip().splitlines()[-30:]
        else:
            ename = type(error).__name__
            evalue = f"The worker could not run this cell: {error}"
            extra = []
        traceback = [f"{_RED}{ename}{_RESET}: {evalue}", *extra]
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        self._publish("error", content)
        return {
            "status": "error",
            "execution_count": self._execution_count,
            "user_expressions": {},
            "payload": [],
            **content,
        }

    # introspection ------------------------------------------------------------------------
    async def _ask(self, kind: str, content: dict[str, t.Any]) -> dict[str, t.Any] | None:
        try:
            return await self.manager.request(kind, content, timeout=self.manager.request_timeout)
        except (TimeoutError, WorkerError) as e:
            self.log.warning("Worker could not answer %s: %s", kind, e or "timed out")
            return None

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, t.Any]:  # type: ignore[override]
        cursor = len(code) if cursor_pos is None else cursor_pos
        empty = {"status": "ok", "matches": [], "cursor_start": cursor, "cursor_end": cursor, "metadata": {}}
        content = await self._ask("complete", {"code": code, "cursor_pos": cursor})
        try:
            if content is None:
                return empty
            matches = [m for m in _require(content, "matches", list) if isinstance(m, str)]
            return {
                "status": "ok",
                "matches": matches,
                "cursor_start": _require(content, "cursor_start", int),
                "cursor_end": _require(content, "cursor_end", int),
                "metadata": _require(content, "metadata", dict),
            }
        except MalformedReply:
            return empty

    async def do_inspect(
        self,
        code: str,
        cursor_pos: int,
        detail_level: int = 0,  # type: ignore[override]
        omit_sections: t.Any = (),
    ) -> dict[str, t.Any]:
        content = await self._ask(
            "inspect",
            {
                "code": code,
                "cursor_pos": cursor_pos,
                "detail_level": detail_level,
                "omit_sections": list(omit_sections),
            },
        )
        try:
            if content is None:
                raise MalformedReply("no reply")
            return {
                "status": "ok",
                "found": bool(content.get("found")),
                "data": self._sanitized(_require(content, "data", dict))
                if self._sanitize_outputs
                else _require(content, "data", dict),
                "metadata": _require(content, "metadata", dict),
            }
        except MalformedReply:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    async def do_is_complete(self, code: str) -> dict[str, t.Any]:  # type: ignore[override]
        content = await self._ask("is_complete", {"code": code})
        status = content.get("status") if content else None
        if content is None or status not in ("complete", "incomplete", "invalid", "unknown"):
            return {"status": "unknown"}
        reply = {"status": status}
        if status == "incomplete" and isinstance(content.get("indent"), str):
            reply["indent"] = content["indent"]
        return reply

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
        content = await self._ask(
            "history",
            {
                "hist_access_type": hist_access_type,
                "output": output,
                "raw": raw,
                "session": session,
                "start": start,
                "stop": stop,
                "n": n,
                "pattern": pattern,
                "unique": unique,
            },
        )
        history = content.get("history") if content else None
        if not isinstance(history, list):
            history = []
        return {"status": "ok", "history": [h for h in history if isinstance(h, list) and len(h) == 3]}

    async def do_shutdown(self, restart: bool) -> dict[str, t.Any]:  # type: ignore[override]
        await self.manager.shutdown()
        return {"status": "ok", "restart": restart}
