"""The worker's transport: requests off the wire, one at a time, one reply each.

SIGINT raises ``KeyboardInterrupt`` only while user code runs (:class:`.interpreter.InterruptGate`).
Anywhere else (waiting for a request, sending a reply, waiting for an ``input_reply``) it is
recorded and acted on at a safe point, so an interrupt can never tear a frame or lose a reply.

A reader thread takes every frame off the wire.  Requests the kernel needs answered while a
cell runs (``wire.CONCURRENT_REQUESTS``: resource usage, subshells made and deleted) go to a
thread of their own; the rest queue, in order, for the shell they are for (:mod:`.lanes`): the
main thread, or a subshell's thread, each running user code (:mod:`.interpreter`).  Every
output sent while a request is served carries that request's id (``wire.REQUEST_FIELD``), so
the kernel publishes it under the frontend message the request was made for.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import getpass
import os
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Any

from IPython.core.async_helpers import get_asyncio_loop
from traitlets.config import Config

from ..protocol import wire
from ..protocol.budget import DEFAULT_OUTPUT_LIMIT, OutputBudget
from . import cellnames, comms, compile_notice, jax_ops, jaxdisplay, kernelface, memory, sandbox
from .affinity import pin_cpus
from .asks import KernelQuestions
from .inbox import Inbox
from .interpreter import Interpreter, InterruptGate
from .jsonable import jsonable
from .keepstate import KeepState
from .lanes import Lane, Lanes, next_request
from .parents import Parents
from .shell import WorkerShell
from .state_magics import StateMagics
from .streams import FdCapture, OutStream
from .threads import service_thread

#: Seconds a stream buffers text before it is sent: fewer, larger messages from a printing loop.
FLUSH_INTERVAL = 0.05


class WorkerServer:
    """Carries the kernel's requests to the :class:`Interpreter` and its replies and outputs back."""

    def __init__(self, conn: wire.Connection, config: dict[str, Any]) -> None:
        self.conn = conn
        self.parents = Parents()  # which request each thread's output belongs to
        self.budget = OutputBudget(int(config.get("output_limit", DEFAULT_OUTPUT_LIMIT)))
        interval = FLUSH_INTERVAL
        self.stdout = OutStream("stdout", self.emit, self.budget, interval, self.parents)
        self.stderr = OutStream("stderr", self.emit, self.budget, interval, self.parents)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        self.fd_capture = FdCapture({1: self.stdout, 2: self.stderr})
        self.shell = self._make_shell(config)
        self.comm_manager = comms.install(self.emit, self._sender_subshell)
        self.kernel = kernelface.install(
            self.parents, self.emit, self._write_stream, self.shell, self.comm_manager
        )
        jaxdisplay.register(self.shell)
        self.compile_notice = compile_notice.install(self.emit)
        sandbox.register_magic(self.shell, selftest=lambda: self.asks.selftest())
        self.gate = InterruptGate()
        self.interpreter = Interpreter(
            self.shell,
            self.comm_manager,
            self.budget,
            self.fd_capture,
            self.compile_notice,
            self.gate,
            self.emit,
        )
        self.keepstate = KeepState(self.shell, self.conn.send)
        self.shell.keepstate = self.keepstate  # %load_jax --keep-state saves through it
        self.shell.register_magics(StateMagics(self.shell, self.keepstate))
        self._configure(config)
        self.asks = KernelQuestions(self.emit, self.stdout, self.stderr, self.gate, lambda: self.inbox)
        self.asks.allow_stdin = lambda: self.interpreter.allow_stdin
        builtins.input = self.asks.raw_input
        getpass.getpass = self.asks.getpass
        self.kernel.raw_input, self.kernel.getpass = self.asks.raw_input, self.asks.getpass

        self.concurrent: queue.Queue[dict[str, Any]] = queue.Queue()
        self.concurrent_handlers = {"usage": lambda msg: memory.device_memory(), "subshell": self.do_subshell}
        self.running = True
        self.gate.install()
        self.member: dict[str, Any] = dict(config.get("member") or {})
        self.loop = get_asyncio_loop()  # IPython's, which runs async cells: one loop for both
        asyncio.set_event_loop(self.loop)
        self.inbox = self._make_inbox()
        self.lanes = Lanes(Lane(self.inbox, self.loop, None), self._serve_lane)
        self.interpreter.lanes = self.lanes
        self.lanes.main.idle = self.keepstate
        self.interpreter.after_cell = self.keepstate.cell_done
        self.handlers = {**self.interpreter.handlers(), "shutdown": self.do_shutdown}
        # As in ipykernel (IPKernelApp.init_path): cells import modules from the notebook folder.
        # Only now, with the worker's own modules imported; the kernel never imports from there.
        if "" not in sys.path:
            sys.path.insert(0, "")

    def _make_shell(self, config: dict[str, Any]) -> WorkerShell:
        # Libraries tell a notebook frontend from a terminal by what the stock kernel always has: an
        # IPKernelApp section in the shell's config (tqdm, ...) and a ZMQInteractiveShell from
        # ipykernel.zmqshell (rich, plotly, JAX's pretty-printer).  ipykernel's import (~0.13 s:
        # jupyter_client, zmq) is paid by the standby worker, before a job.
        shell_config = Config(IPKernelApp=Config())
        history_file = (config.get("sandbox") or {}).get("history_file")
        if history_file:  # the IPython profile dir is read-only in the sandbox
            shell_config.HistoryManager.hist_file = history_file
        # Cells are compiled under names a debugger frontend can compute (see cellnames).
        cellnames.NAMES = cellnames.CellNames(int(config.get("parent_pid", 0)))
        with warnings.catch_warnings():
            # A read-only IPython dir is the sandbox at work, not news for the first cell's stderr.
            # (Only an IPython dir under the host's /tmp is mounted read-only, by the private /tmp;
            # IPython then takes a temp dir instead, so that profile's startup files do not run.)
            warnings.filterwarnings("ignore", message="IPython dir .* is not a writable location")
            shell = WorkerShell.instance(send=self.emit, parents=self.parents, config=shell_config)
        _as_in_ipykernel(shell, history_file)
        return shell

    def _make_inbox(self) -> Inbox:
        routes: dict[str, Any] = {"debug": self._on_debug_request, "comm": self._on_comm_request}
        # A cell, a JAX request or a question may be for a subshell: its thread's queue, not main's.
        routes.update(dict.fromkeys(wire.USER_CODE_REQUESTS - {"comm"}, self._route))
        routes.update(dict.fromkeys(wire.SUBSHELL_QUESTIONS, self._route))
        routes.update(dict.fromkeys(wire.CONCURRENT_REQUESTS, self.concurrent.put))
        if not self.member:
            return Inbox(self.conn, routes)
        # A set member: no signal crosses hosts, so interrupts come over the wire; the kernel
        # sends heartbeats, and its silence or a closed wire ends us even mid-XLA (no orphans).
        routes["interrupt"] = lambda msg: os.kill(os.getpid(), signal.SIGINT)
        routes["heartbeat"] = lambda msg: None
        silence = float(self.member["silence"])
        return Inbox(self.conn, routes, on_close=lambda: os._exit(0), idle_timeout=silence)

    def _configure(self, config: dict[str, Any]) -> None:
        """What the kernel decides per job: numbering, output budget, JAX settings, cores."""
        self.shell.execution_count = int(config.get("execution_count", 1))
        if config.get("session_name"):  # as ipykernel's shell has it (IPythonKernel.__init__)
            self.shell.user_ns["__session__"] = str(config["session_name"])
        self.budget.reset(int(config.get("output_limit", self.budget.limit)))
        jax_ops.configure(config)
        cores = config.get("cpu_affinity")
        if cores:
            pin_cpus(cores)
        member = (config.get("member") or {}).get("index")  # a set member keeps its own part
        self.keepstate.configure(config.get("state"), busy=lambda: self.lanes.busy(), member=member)

    def standby(self) -> bool:
        """Warm up as the kernel's standby worker, then wait for a job; False if told to stop instead.

        JAX is imported but its backend is not started, so the platform, devices and allocator
        can still be chosen when the kernel activates us (restart, crash recovery, %load_jax).
        """
        import jax.numpy  # noqa: F401 - the first import of nearly every notebook

        self.conn.send({"type": "standby", "pid": os.getpid(), "protocol": wire.PROTOCOL_VERSION})
        while True:
            try:
                msg = self.inbox.get()
            except EOFError:
                return False
            if msg is None:
                continue
            if msg["type"] == "activate":
                jax_ops.apply_environment(msg.get("env") or {})
                self._configure(msg.get("config") or {})
                return True
            if msg["type"] == "shutdown":
                return False

    # plumbing ---------------------------------------------------------------
    def emit(self, msg: dict[str, Any]) -> None:
        """Send an output, tagged with the user-code request it belongs to: the sending thread's
        parent (the running request unless the thread set another, :mod:`.parents`)."""
        if wire.REQUEST_FIELD not in msg and msg.get("type") in wire.REQUEST_TAGGED:
            request = self.parents.request_id()
            if request is not None:
                msg[wire.REQUEST_FIELD] = request
        self.conn.send(msg)

    def _sender_subshell(self) -> str | None:
        """The subshell of the frontend message this thread's output belongs to, as ipykernel's
        comm reads it from ``get_parent()``: a comm message sent from there is answered there."""
        header = self.parents.current().message.get("header") or {}
        subshell = header.get("subshell_id") if isinstance(header, dict) else None
        return subshell if isinstance(subshell, str) else None

    def _write_stream(self, name: str, text: str, request: int | None) -> None:
        """Stream text published through ``kernel.session`` (ipykernel's API) joins the stream."""
        (self.stdout if name == "stdout" else self.stderr).write_for(text, request)

    def _on_debug_request(self, msg: dict[str, Any]) -> None:
        """On the wire reader's thread: the debugger serves it even while a cell runs or is stopped."""
        from . import debugger  # debugpy itself is imported only by the first initialize

        debugger.session(self.conn.send, self.shell, cellnames.NAMES).submit(msg)

    def _lane_for(self, msg: dict[str, Any]) -> Lane:
        """The shell a request is for: the ``subshell_id`` it names (a question's field, else its
        parent's header); a frontend's comm message goes where that comm last spoke from, as in
        ipykernel (a reply reaches the shell that waits for it)."""
        subshell = msg.get("subshell_id")
        if subshell is None:
            header = (msg.get(wire.PARENT_FIELD) or {}).get("header") or {}
            subshell = header.get("subshell_id")
        chosen = subshell if isinstance(subshell, str) else None
        if msg["type"] != "comm":
            return self.lanes.of(chosen)
        route = comms.reply_route(msg.get("content") or {}, chosen, self.lanes.ids())
        lane = self.lanes.of(route)
        if route != chosen and lane.serving and not lane.awaiting:
            # That shell runs a (synchronous) cell, which would hold the message until it ends:
            # the subshell the frontend sent it over serves it now (JupyterLab sends comms over a
            # subshell so that a slider works during a training loop).  ipykernel 7.4 queues it
            # behind the cell; an awaiting async cell still gets its replies on its own loop.
            return self.lanes.of(chosen)
        return lane

    def _route(self, msg: dict[str, Any]) -> None:
        """On the wire reader's thread: queue a request for its shell's thread."""
        self._lane_for(msg).mailbox.put(msg)

    def _on_comm_request(self, msg: dict[str, Any]) -> None:
        """On the wire reader's thread: a comm message waits for its shell's thread, unless an async
        cell of that shell is awaiting; then it is served on that cell's loop at once, as ipykernel
        dispatches comms concurrently with an awaiting cell (a widget reply the cell waits for)."""
        lane = self._lane_for(msg)
        if lane.awaiting:
            lane.loop.call_soon_threadsafe(self._serve_comm_now, msg, lane)
        else:
            lane.mailbox.put(msg)

    def _serve_comm_now(self, msg: dict[str, Any], lane: Lane) -> None:
        if not lane.awaiting:
            lane.mailbox.put(msg)  # the cell ended first: serve it in order with the rest
            return
        running = self.parents.global_parent()
        try:
            contextvars.copy_context().run(self._serve_in_context, msg, lane)
        finally:
            self.parents.restore_global(running)  # the cell's own output stays the cell's

    def _serve_in_context(self, msg: dict[str, Any], lane: Lane) -> None:
        self.parents.begin(msg, main=lane.subshell_id is None)
        self._answer(self.handlers["comm"], msg)

    def _heartbeat(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            try:
                self.conn.send({"type": "heartbeat"})
            except OSError:
                return

    def serve_forever(self) -> None:
        """Answer requests until the kernel asks us to stop or goes away."""
        if self.member:
            service_thread(self._heartbeat, "jax-kernel-heartbeat", float(self.member["heartbeat"]))
            jax_ops.start_distributed(self.member)
        self.keepstate.restore()  # a dead worker's variables, before the first request
        self.conn.send(
            {
                "type": "ready",
                "pid": os.getpid(),
                "protocol": wire.PROTOCOL_VERSION,
                "execution_count": self.shell.execution_count,
                "python": sys.version.split()[0],
                "sandbox": sandbox.REPORT,
            }
        )
        threading.Thread(target=self._serve_concurrent, name="jax-kernel-usage", daemon=True).start()
        self._serve_lane(self.lanes.main)

    def _serve_lane(self, lane: Lane) -> None:
        """Answer one shell's requests, in order, on this thread, until the worker stops."""
        main = lane.subshell_id is None
        while self.running:
            try:
                msg = next_request(lane)
            except EOFError:
                break
            if msg is None:
                continue
            handler = self.handlers.get(msg["type"])
            if handler is None:
                continue  # a stale input_reply after an interrupted input(), for one
            if msg["type"] in wire.USER_CODE_REQUESTS:
                self.parents.begin(msg, main=main)
            lane.serving = True
            try:
                self._answer(handler, msg)
            finally:
                lane.serving = False

    def do_subshell(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Start or stop a subshell's thread (JEP 91), on the concurrent thread: a cell may run."""
        action, subshell_id = msg["action"], msg["subshell_id"]
        if action not in wire.SUBSHELL_ACTIONS:
            raise ValueError(f"unknown subshell action {action!r}")
        if action == "create":
            self.lanes.of(subshell_id)
        else:
            self.lanes.delete(subshell_id)
        return {"status": "ok", "subshells": self.lanes.ids()}

    def _answer(self, handler: Any, msg: dict[str, Any]) -> None:
        try:
            content = handler(msg)
        except BaseException as e:  # noqa: BLE001 - a request must always get a reply
            content = {
                "status": "error",
                "ename": type(e).__name__,
                "evalue": str(e),
                "traceback": traceback.format_exception(e),
            }
        self.conn.send({"type": "reply", "id": msg["id"], "content": jsonable(content)})

    def _serve_concurrent(self) -> None:
        """Answer requests that must not wait for the running cell (they never run user code)."""
        while True:
            msg = self.concurrent.get()
            self._answer(self.concurrent_handlers[msg["type"]], msg)

    def do_shutdown(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.running = False
        return {"status": "ok"}


def _as_in_ipykernel(shell: WorkerShell, history_file: str | None) -> None:
    """What IPKernelApp adds to its shell: IPython's interruptible pdb, ``%store``, and a writable
    ``shell.db`` (``%cd`` and ``%store`` write it) that is this kernel's own, next to its history,
    never the profile's: an unsandboxed IPython would unpickle what a cell wrote there."""
    import pdb  # noqa: T100 - replaced, as ipykernel's init_pdb replaces it

    from IPython.core import debugger

    if hasattr(debugger, "InterruptiblePdb"):
        debugger.Pdb = debugger.InterruptiblePdb  # type: ignore[misc]
        pdb.Pdb = debugger.Pdb  # type: ignore[assignment,misc]
        pdb.set_trace = debugger.set_trace
    if history_file:
        from IPython.external.pickleshare import PickleShareDB

        shell.db = PickleShareDB(os.path.join(os.path.dirname(history_file), "db"))
    assert shell.extension_manager is not None  # InteractiveShell.__init__ made it
    shell.extension_manager.load_extension("storemagic")  # IPython apps load it by default
