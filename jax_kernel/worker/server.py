"""The worker's transport: requests off the wire, one at a time, one reply each.

SIGINT raises ``KeyboardInterrupt`` only while user code runs (:class:`.interpreter.InterruptGate`).
Anywhere else (waiting for a request, sending a reply, waiting for an ``input_reply``) it is
recorded and acted on at a safe point, so an interrupt can never tear a frame or lose a reply.

A reader thread takes every frame off the wire.  Requests the kernel needs answered while a
cell runs (``wire.CONCURRENT_REQUESTS``: resource usage) go to a thread of their own; the
rest queue, in order, for the main thread, which runs user code (:mod:`.interpreter`).  Every
output sent while a request is served carries that request's id (``wire.REQUEST_FIELD``), so
the kernel publishes it under the frontend message the request was made for.
"""

from __future__ import annotations

import builtins
import getpass
import importlib
import os
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Any

from IPython.core.error import StdinNotImplementedError
from traitlets.config import Config

from ..protocol import wire
from ..protocol.budget import DEFAULT_OUTPUT_LIMIT, OutputBudget
from . import cellnames, comms, compile_notice, importhooks, jax_ops, jaxdisplay, memory, sandbox
from .affinity import pin_cpus
from .inbox import Inbox
from .interpreter import USER_CODE_REQUESTS, Interpreter, InterruptGate
from .jsonable import jsonable
from .shell import WorkerShell
from .streams import FdCapture, OutStream
from .threads import service_thread

#: Seconds a stream buffers text before it is sent: fewer, larger messages from a printing loop.
FLUSH_INTERVAL = 0.05


class WorkerServer:
    """Carries the kernel's requests to the :class:`Interpreter` and its replies and outputs back."""

    def __init__(self, conn: wire.Connection, config: dict[str, Any]) -> None:
        self.conn = conn
        self.current_request: int | None = None  # the request outputs are tagged with
        self.budget = OutputBudget(int(config.get("output_limit", DEFAULT_OUTPUT_LIMIT)))
        interval = FLUSH_INTERVAL
        self.stdout = OutStream("stdout", self.emit, self.budget, interval)
        self.stderr = OutStream("stderr", self.emit, self.budget, interval)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        self.fd_capture = FdCapture({1: self.stdout, 2: self.stderr})
        self.shell = self._make_shell(config)
        self.comm_manager = comms.install(self.emit)
        jaxdisplay.register(self.shell)
        self.compile_notice = compile_notice.install(self.emit)
        sandbox.register_magic(self.shell, selftest=self.selftest)
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
        self._configure(config)
        builtins.input = self.raw_input
        getpass.getpass = self.getpass

        self.concurrent: queue.Queue[dict[str, Any]] = queue.Queue()
        self.concurrent_handlers = {"usage": lambda msg: memory.device_memory()}
        self.running = True
        self.gate.install()
        self.member: dict[str, Any] = dict(config.get("member") or {})
        self.inbox = self._make_inbox()
        self.handlers = {**self.interpreter.handlers(), "shutdown": self.do_shutdown}
        # As in ipykernel (IPKernelApp.init_path): cells import modules from the notebook folder.
        # Only now, with the worker's own modules imported; the kernel never imports from there.
        if "" not in sys.path:
            sys.path.insert(0, "")

    def _make_shell(self, config: dict[str, Any]) -> WorkerShell:
        # Libraries tell a notebook frontend from a terminal by what the stock kernel always has: an
        # IPKernelApp section in the shell's config (plotly, ...) or ipykernel.zmqshell imported
        # (tqdm.auto). The worker has the first always and the second once tqdm is imported: ipykernel
        # pulls in jupyter_client and zmq, which every worker start would pay for otherwise.
        importhooks.on_import("tqdm.autonotebook", before=_import_zmqshell)
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
            return WorkerShell.instance(send=self.emit, config=shell_config)

    def _make_inbox(self) -> Inbox:
        routes: dict[str, Any] = {"debug": self._on_debug_request}
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
        self.budget.reset(int(config.get("output_limit", self.budget.limit)))
        jax_ops.configure(config)
        cores = config.get("cpu_affinity")
        if cores:
            pin_cpus(cores)

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
        """Send an output, tagged with the user-code request it comes from (the running one, or the
        last one for a late flush or a thread's print)."""
        if self.current_request is not None and msg.get("type") in wire.REQUEST_TAGGED:
            msg[wire.REQUEST_FIELD] = self.current_request
        self.conn.send(msg)

    def _on_debug_request(self, msg: dict[str, Any]) -> None:
        """On the wire reader's thread: the debugger serves it even while a cell runs or is stopped."""
        from . import debugger  # debugpy itself is imported only by the first initialize

        debugger.session(self.conn.send, self.shell, cellnames.NAMES).submit(msg)

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
        while self.running:
            try:
                msg = self.inbox.get()
            except EOFError:
                break
            if msg is None:
                continue
            handler = self.handlers.get(msg["type"])
            if handler is None:
                continue  # a stale input_reply after an interrupted input(), for one
            if msg["type"] in USER_CODE_REQUESTS:
                self.current_request = msg["id"]
            self._answer(handler, msg)

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

    def _ask_kernel(self, request: dict[str, Any], answer: str) -> dict[str, Any]:
        """Send ``request`` from the running cell and wait for the kernel's ``answer`` (input(),
        the self-test); output written so far goes first, and an interrupt ends the wait."""
        self.stdout.flush_now()
        self.stderr.flush_now()
        self.gate.close()
        try:
            self.emit(request)
            while True:
                if self.gate.pending:
                    self.gate.pending = False
                    raise KeyboardInterrupt("Interrupted by user")
                msg = self.inbox.get(timeout=0.1)
                if msg is not None and msg["type"] == answer:
                    return msg
        finally:
            self.gate.open()

    # %sandbox --selftest ----------------------------------------------------
    def selftest(self) -> int:
        """Ask the kernel to run the self-test (it prints the table into this cell); its exit status."""
        return int(self._ask_kernel({"type": "selftest"}, "selftest_done").get("status", 2))

    # stdin ------------------------------------------------------------------
    def _input_request(self, prompt: str, password: bool) -> str:
        if not self.interpreter.allow_stdin:
            raise StdinNotImplementedError(
                "input was called, but this frontend does not support input requests."
            )
        request = {"type": "input_request", "prompt": str(prompt), "password": password}
        value = str(self._ask_kernel(request, "input_reply").get("value", ""))
        if value == "\x04":
            raise EOFError
        return value

    def raw_input(self, prompt: object = "") -> str:
        """``input()`` for cell code: an ``input_request`` to the frontend."""
        return self._input_request(str(prompt), password=False)

    def getpass(self, prompt: str = "Password: ", stream: Any = None) -> str:
        """``getpass.getpass()`` for cell code: a password ``input_request``."""
        return self._input_request(prompt, password=True)

    def do_shutdown(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.running = False
        return {"status": "ok"}


def _import_zmqshell() -> None:
    importlib.import_module("ipykernel.zmqshell")
