"""The worker's request loop: one request at a time from the kernel, one reply each.

SIGINT raises ``KeyboardInterrupt`` only while user code runs.  Anywhere else (waiting
for a request, sending a reply, waiting for an ``input_reply``) it is recorded and acted
on at a safe point, so an interrupt can never tear a frame or lose a reply.

A reader thread takes every frame off the wire.  Requests the kernel needs answered while a
cell runs (``wire.CONCURRENT_REQUESTS``: resource usage) go to a thread of their own; the
rest queue, in order, for the main thread, which runs user code.
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

from IPython.core import release
from IPython.core.completer import provisionalcompleter, rectify_completions
from IPython.core.error import StdinNotImplementedError
from IPython.utils.tokenutil import token_at_cursor
from traitlets.config import Config

from ..protocol import wire
from ..protocol.budget import OutputBudget
from . import cellnames, comms, compile_notice, importhooks, jax_ops, jaxdisplay, memory, sandbox
from .inbox import Inbox
from .jsonable import jsonable
from .shell import WorkerShell
from .streams import FdCapture, OutStream
from .threads import service_thread

EXPERIMENTAL_TYPES_KEY = "_jupyter_types_experimental"


class WorkerServer:
    """Runs the kernel's requests against one IPython shell."""

    def __init__(self, conn: wire.Connection, config: dict[str, Any]) -> None:
        self.conn = conn
        self.budget = OutputBudget(int(config.get("output_limit", 5_000_000)))
        interval = float(config.get("flush_interval", 0.05))
        self.stdout = OutStream("stdout", conn.send, self.budget, interval)
        self.stderr = OutStream("stderr", conn.send, self.budget, interval)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        self.fd_capture = FdCapture({1: self.stdout, 2: self.stderr})

        # Libraries tell a notebook frontend from a terminal by what the stock kernel always has: an
        # IPKernelApp section in the shell's config (plotly, ...) or ipykernel.zmqshell imported
        # (tqdm.auto). The worker has the first always and the second once tqdm is imported: ipykernel
        # pulls in jupyter_client and zmq, ~0.25 s that every worker start would pay otherwise.
        importhooks.on_import(
            "tqdm.autonotebook", before=lambda: importlib.import_module("ipykernel.zmqshell")
        )
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
            self.shell = WorkerShell.instance(send=self._send_output, config=shell_config)
        self.comm_manager = comms.install(conn.send)
        jaxdisplay.register(self.shell)
        self.compile_notice = compile_notice.install(conn.send)
        sandbox.register_magic(self.shell, selftest=self.selftest)
        self.shell.user_ns.update(config.get("user_ns", {}))
        self._configure(config)
        builtins.input = self.raw_input
        getpass.getpass = self.getpass

        self.concurrent: queue.Queue[dict[str, Any]] = queue.Queue()
        self.concurrent_handlers = {"usage": lambda msg: memory.device_memory()}
        self.allow_stdin = False
        self.interruptible = False
        self.pending_interrupt = False
        self.running = True
        signal.signal(signal.SIGINT, self._on_sigint)
        routes: dict[str, Any] = {"debug": self._on_debug_request}
        routes.update(dict.fromkeys(wire.CONCURRENT_REQUESTS, self.concurrent.put))
        self.member: dict[str, Any] = dict(config.get("member") or {})
        if self.member:
            # A set member: no signal crosses hosts, so interrupts come over the wire; the kernel
            # sends heartbeats, and its silence or a closed wire ends us even mid-XLA (no orphans).
            routes["interrupt"] = lambda msg: os.kill(os.getpid(), signal.SIGINT)
            routes["heartbeat"] = lambda msg: None
            self.inbox = Inbox(
                conn, routes, on_close=lambda: os._exit(0), idle_timeout=float(self.member["silence"])
            )
        else:
            self.inbox = Inbox(conn, routes)

        self.handlers = {
            "execute": self.do_execute,
            "complete": self.do_complete,
            "inspect": self.do_inspect,
            "is_complete": self.do_is_complete,
            "history": self.do_history,
            "info": self.do_info,
            "comm": self.do_comm,
            "comm_info": self.do_comm_info,
            "shutdown": self.do_shutdown,
            "reap": self.do_reap,
            "jax_load": self.do_jax,
            "jax_transform": self.do_jax,
            "jax_program": self.do_jax,
        }

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

    def do_reap(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Wait for the processes the kernel killed after a fork bomb: until their parent (us, or
        us as their subreaper) reaps them, they still count against the task limit."""
        reaped = 0
        for pid in msg.get("pids", [])[:100_000]:
            if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
                continue
            try:
                os.waitpid(pid, 0)
                reaped += 1
            except ChildProcessError:
                pass
        return {"status": "ok", "reaped": reaped}

    # plumbing ---------------------------------------------------------------
    def _send_output(self, msg: dict[str, Any]) -> None:
        self.conn.send(msg)

    def _on_debug_request(self, msg: dict[str, Any]) -> None:
        """On the wire reader's thread: the debugger serves it even while a cell runs or is stopped."""
        from . import debugger  # debugpy itself is imported only by the first initialize

        debugger.session(self.conn.send, self.shell, cellnames.NAMES).submit(msg)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interruptible:
            raise KeyboardInterrupt
        self.pending_interrupt = True

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
        self.interruptible = False
        try:
            self.conn.send(request)
            while True:
                if self.pending_interrupt:
                    self.pending_interrupt = False
                    raise KeyboardInterrupt("Interrupted by user")
                msg = self.inbox.get(timeout=0.1)
                if msg is not None and msg["type"] == answer:
                    return msg
        finally:
            self.interruptible = True

    # %sandbox --selftest ----------------------------------------------------
    def selftest(self) -> int:
        """Ask the kernel to run the self-test (it prints the table into this cell); its exit status."""
        return int(self._ask_kernel({"type": "selftest"}, "selftest_done").get("status", 2))

    # stdin ------------------------------------------------------------------
    def _input_request(self, prompt: str, password: bool) -> str:
        if not self.allow_stdin:
            raise StdinNotImplementedError(
                "input was called, but this frontend does not support input requests."
            )
        request = {"type": "input_request", "prompt": str(prompt), "password": password}
        value = str(self._ask_kernel(request, "input_reply").get("value", ""))
        if value == "\x04":
            raise EOFError
        return value

    def raw_input(self, prompt: str = "") -> str:
        """``input()`` for cell code: an ``input_request`` to the frontend."""
        return self._input_request(prompt, password=False)

    def getpass(self, prompt: str = "Password: ", stream: Any = None) -> str:
        """``getpass.getpass()`` for cell code: a password ``input_request``."""
        return self._input_request(prompt, password=True)

    # requests ---------------------------------------------------------------
    def do_execute(self, msg: dict[str, Any]) -> dict[str, Any]:
        shell = self.shell
        self.budget.reset(int(msg.get("output_limit", self.budget.limit)))
        self.allow_stdin = bool(msg.get("allow_stdin", False))
        self.pending_interrupt = False
        self.compile_notice.cell_started(float(msg.get("compile_notice_after", 2.0)))
        debugger = sys.modules.get("jax_kernel.worker.debugger")  # loaded by the first debug request
        if debugger is not None:
            debugger.sync_tracing()
        self.interruptible = True
        try:
            res = shell.run_cell(
                msg["code"], store_history=msg.get("store_history", True), silent=msg.get("silent", False)
            )
            err = res.error_before_exec or res.error_in_exec
            success = res.success
            restart = err if isinstance(err, jax_ops.JaxRestartRequired) else None
            if restart is not None:  # not a failure: the kernel replaces the worker and goes on
                success = True
            try:
                jaxdisplay.settle_effects()
            except Exception as e:  # noqa: BLE001 - the cell ran; say what went wrong after it
                print(f"jax-kernel: waiting for JAX's pending callbacks failed: {e}", file=sys.stderr)
        except KeyboardInterrupt as e:  # outside user code proper, e.g. in a post-execute hook
            shell.showtraceback()
            err, success, restart = e, False, None
        finally:
            self.interruptible = False
            self.compile_notice.cell_finished()
        self.fd_capture.drain()
        notice = self.budget.take_notice()
        if notice:
            self.conn.send({"type": "stream", "name": "stderr", "text": notice})

        reply: dict[str, Any] = {"execution_count": shell.execution_count - 1}
        if success:
            reply["status"] = "ok"
            reply["user_expressions"] = shell.user_expressions(msg.get("user_expressions") or {})
        else:
            last = shell.last_error or {}
            reply.update(
                status="error",
                ename=type(err).__name__,
                evalue=str(err),
                traceback=last.get("traceback", []),
                user_expressions={},
            )
        reply["payload"] = shell.payload_manager.read_payload()
        shell.payload_manager.clear_payload()
        reply["next_execution_count"] = shell.execution_count
        reply["jax_version"] = getattr(sys.modules.get("jax"), "__version__", None)
        if restart is not None:
            reply["jax_restart"] = {"settings": restart.settings, "reason": restart.reason}
        if jax_ops.STATE.output_mode is not None:  # %jax_output ran: the kernel routes output
            reply["output_mode"], jax_ops.STATE.output_mode = jax_ops.STATE.output_mode, None
        return reply

    def do_jax(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A jax_load / jax_transform / jax_program request: user code, so interruptible."""
        self.budget.reset(self.budget.limit)
        self.pending_interrupt = False
        self.interruptible = True
        try:
            return jax_ops.handle_request(msg, self.shell.user_ns)
        finally:
            self.interruptible = False
            try:
                jaxdisplay.settle_effects()  # jax.debug output belongs to this request
            except Exception:  # noqa: BLE001 - the reply matters more than late debug output
                pass
            self.fd_capture.drain()

    def do_complete(self, msg: dict[str, Any]) -> dict[str, Any]:
        code = msg["code"]
        cursor_pos = msg.get("cursor_pos")
        if cursor_pos is None:
            cursor_pos = len(code)
        with provisionalcompleter():
            raw = self.shell.Completer.completions(code, cursor_pos)
            completions = list(rectify_completions(code, raw))
            types = [
                {"start": c.start, "end": c.end, "text": c.text, "type": c.type, "signature": c.signature}
                for c in completions
            ]
        start = completions[0].start if completions else cursor_pos
        end = completions[0].end if completions else cursor_pos
        return {
            "status": "ok",
            "matches": [c.text for c in completions],
            "cursor_start": start,
            "cursor_end": end,
            "metadata": {EXPERIMENTAL_TYPES_KEY: types},
        }

    def do_inspect(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = token_at_cursor(msg["code"], msg.get("cursor_pos", len(msg["code"])))
        reply: dict[str, Any] = {"status": "ok", "data": {}, "metadata": {}, "found": False}
        try:
            bundle = self.shell.object_inspect_mime(
                name, detail_level=msg.get("detail_level", 0), omit_sections=msg.get("omit_sections", ())
            )
        except KeyError:
            return reply
        if not self.shell.enable_html_pager:
            bundle.pop("text/html", None)
        reply["data"] = bundle
        reply["found"] = True
        return reply

    def do_is_complete(self, msg: dict[str, Any]) -> dict[str, Any]:
        status, indent = self.shell.input_transformer_manager.check_complete(msg["code"])
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    def do_history(self, msg: dict[str, Any]) -> dict[str, Any]:
        hm = self.shell.history_manager
        kind = msg.get("hist_access_type", "tail")
        raw, output = msg.get("raw", True), msg.get("output", False)
        if kind == "tail":
            hist = hm.get_tail(msg.get("n") or 10, raw=raw, output=output, include_latest=True)
        elif kind == "range":
            hist = hm.get_range(
                msg.get("session", 0), msg.get("start", 0), msg.get("stop"), raw=raw, output=output
            )
        elif kind == "search":
            hist = hm.search(
                msg.get("pattern", "*"),
                raw=raw,
                output=output,
                n=msg.get("n"),
                unique=msg.get("unique", False),
            )
        else:
            hist = []
        # IPython reports the live session as session 0; frontends (and the spec) expect real numbers.
        current = hm.session_number
        return {"status": "ok", "history": [[h[0] or current, *h[1:]] for h in hist]}

    def do_comm(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A comm message from the frontend: widget observers and callbacks run here, like a cell."""
        self.pending_interrupt = False
        self.interruptible = True
        try:
            self.comm_manager.handle(
                msg["msg_type"], msg["content"], msg.get("metadata") or {}, msg.get("buffers") or []
            )
        finally:
            self.interruptible = False
            self.fd_capture.drain()
        return {"status": "ok"}

    def do_comm_info(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "comms": self.comm_manager.info(msg.get("target_name"))}

    def do_info(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "ok",
            "python": sys.version.split()[0],
            "ipython": release.version,
            "jax_version": getattr(sys.modules.get("jax"), "__version__", None),
            "execution_count": self.shell.execution_count,
        }

    def do_shutdown(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.running = False
        return {"status": "ok"}


def pin_cpus(cores: list[int]) -> None:
    """Keep every thread of this process (and the ones it starts later) on the leased cores.

    Affinity is per thread and inherited at creation, so the threads that exist are set one by one.
    The sandbox's seccomp filter allows this thread (0) and the main one (our pid) only; the kernel
    pins the others from outside (``jax_kernel.policy.accelerators.pin_tasks``), so a refusal for them is
    expected and not reported.
    """
    wanted = {int(c) for c in cores}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = []
    for tid in [0, *tids]:
        try:
            os.sched_setaffinity(tid, wanted)
        except PermissionError:
            continue
        except OSError as e:
            print(
                f"[jax-kernel] could not pin thread {tid} to cores {sorted(wanted)}: {e}", file=sys.__stderr__
            )
