"""The worker's request hooks: what each kernel request does to the IPython shell, without the wire.

Each hook takes a request's fields (already validated against :data:`wire.KERNEL_REQUESTS`)
and returns its reply's content; :mod:`.server` carries them.  User code runs in
``execute``, ``comm`` and the jax_* requests, and only there is SIGINT a ``KeyboardInterrupt``
(:class:`InterruptGate`): anywhere else an interrupt waits for a safe point.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core import release
from IPython.core.async_helpers import get_asyncio_loop
from IPython.core.completer import provisionalcompleter, rectify_completions
from IPython.utils.tokenutil import token_at_cursor

from ..protocol.budget import OutputBudget
from . import jax_ops, jaxdisplay
from .lanes import Lanes
from .streams import FdCapture

EXPERIMENTAL_TYPES_KEY = "_jupyter_types_experimental"


class InterruptGate:
    """Where SIGINT may raise: while user code runs, a pending interrupt recorded otherwise.

    While the gate is open Python's own ``default_int_handler`` is installed, as in a plain
    interpreter: it raises ``KeyboardInterrupt`` with no frame of ours, so an interrupted cell's
    traceback shows only the user's code.  A handler the cell installed itself is left alone.
    """

    def __init__(self) -> None:
        self.interruptible = False
        self.pending = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        if self.interruptible:  # opened off the main thread, where handlers cannot be swapped
            raise KeyboardInterrupt
        self.pending = True

    def open(self) -> None:
        self.interruptible = True
        self._swap(self._record, signal.default_int_handler)

    def close(self) -> None:
        self.interruptible = False
        self._swap(signal.default_int_handler, self._record)

    @staticmethod
    def _swap(expected: Any, handler: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) == expected:
            signal.signal(signal.SIGINT, handler)

    @contextmanager
    def user_code(self) -> Iterator[None]:
        if self.interruptible or threading.current_thread() is not threading.main_thread():
            # Nested (a comm served while an async cell awaits), or a subshell's thread, which
            # SIGINT never reaches: opening the gate there would let an interrupt raise in the
            # main thread outside its user code.
            yield
            return
        self.pending = False
        self.open()
        try:
            yield
        finally:
            self.close()


class Interpreter:
    """Serves the kernel's requests against one IPython shell."""

    def __init__(
        self,
        shell: Any,
        comm_manager: Any,
        budget: OutputBudget,
        fd_capture: FdCapture,
        compile_notice: Any,
        gate: InterruptGate,
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        self.shell = shell
        self.comm_manager = comm_manager
        self.budget = budget
        self.fd_capture = fd_capture
        self.compile_notice = compile_notice
        self.gate = gate
        self._emit = emit
        self.allow_stdin = False  # the main shell's running cell's frontend can answer input_request
        self.lanes: Lanes | None = None  # the shells (main, subshells): set by the server
        self.after_cell: Callable[[int], None] = lambda cell: None  # a main-shell cell succeeded
        shell.loop_runner = self._await_cell  # IPython calls it for cells with top-level await

    def _await_cell(self, coro: Any) -> Any:
        """Run an async cell's coroutine on its shell's loop (IPython's for the main shell), as
        IPython's own asyncio runner does, marking the time it awaits (the server then serves that
        shell's comms on that loop)."""
        lane = self.lanes.current() if self.lanes is not None else None
        if lane is None:
            return get_asyncio_loop().run_until_complete(coro)
        lane.awaiting = True
        try:
            return lane.loop.run_until_complete(coro)
        finally:
            lane.awaiting = False

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "execute": self.do_execute,
            "complete": self.do_complete,
            "inspect": self.do_inspect,
            "is_complete": self.do_is_complete,
            "history": self.do_history,
            "info": self.do_info,
            "comm": self.do_comm,
            "comm_info": self.do_comm_info,
            "reap": self.do_reap,
            "jax_load": self.do_jax,
            "jax_transform": self.do_jax,
            "jax_program": self.do_jax,
        }

    # user code ---------------------------------------------------------------
    def do_execute(self, msg: dict[str, Any]) -> dict[str, Any]:
        shell = self.shell
        main = threading.current_thread() is threading.main_thread()
        if main or not self.gate.interruptible:
            # The output budget is per cell; a subshell's cell beside a running one shares it.
            self.budget.reset(int(msg.get("output_limit", self.budget.limit)))
        if main:
            self.allow_stdin = bool(msg.get("allow_stdin", False))
        jaxdisplay.VIEW.kernel_default = bool(msg.get("array_view", True))
        err, success, restart = self._run_cell(msg, main)
        self.fd_capture.drain()
        notice = self.budget.take_notice()
        if notice:
            self._emit({"type": "stream", "name": "stderr", "text": notice})

        reply: dict[str, Any] = {"execution_count": shell.execution_count - 1}
        if success and main and restart is None and not msg.get("silent"):
            self.after_cell(shell.execution_count - 1)  # its variables: saved while the worker idles
        if success:
            reply["status"] = "ok"
            reply["user_expressions"] = shell.user_expressions(msg.get("user_expressions") or {})
        else:
            last = shell.last_error or {}
            reply.update(
                status="error",
                ename=type(err).__name__ if err is not None else last.get("ename", "Error"),
                evalue=str(err) if err is not None else last.get("evalue", ""),
                traceback=last.get("traceback", []),
                user_expressions={},
            )
        reply["payload"] = shell.payload_manager.read_payload()
        shell.payload_manager.clear_payload()
        reply["next_execution_count"] = shell.execution_count
        reply["jax_version"] = getattr(sys.modules.get("jax"), "__version__", None)
        if restart is not None:
            reply["jax_restart"] = {
                "settings": restart.settings,
                "reason": restart.reason,
                "keep_state": restart.keep_state,
                "memory": restart.memory,
            }
        if jax_ops.STATE.output_mode is not None:  # %jax_output ran: the kernel routes output
            reply["output_mode"], jax_ops.STATE.output_mode = jax_ops.STATE.output_mode, None
        return reply

    def _run_cell(self, msg: dict[str, Any], main: bool) -> tuple[BaseException | None, bool, Any]:
        """Run the cell: (its error, whether it succeeded, a request to restart with new JAX settings)."""
        shell = self.shell
        if main:  # the compile notice and the debugger's tracing follow the main shell's cell
            self.compile_notice.cell_started(float(msg.get("compile_notice_after", 2.0)))
            debugger = sys.modules.get("jax_kernel.worker.debugger")  # loaded by the first debug request
            if debugger is not None:
                debugger.sync_tracing()
        try:
            with self.gate.user_code():
                res = shell.run_cell(
                    msg["code"], store_history=msg.get("store_history", True), silent=msg.get("silent", False)
                )
                err = res.error_before_exec or res.error_in_exec
                success = res.success and not shell.display_error
                restart = err if isinstance(err, jax_ops.JaxRestartRequired) else None
                if restart is not None:  # not a failure: the kernel replaces the worker and goes on
                    success = True
                try:
                    jaxdisplay.settle_effects()
                except Exception as e:  # noqa: BLE001 - the cell ran; say what went wrong after it
                    print(f"jax-kernel: waiting for JAX's pending callbacks failed: {e}", file=sys.stderr)
        except KeyboardInterrupt as e:  # outside user code proper, e.g. in a post-execute hook
            shell.showtraceback()
            return e, False, None
        finally:
            if main:
                self.compile_notice.cell_finished()
        return err, success, restart

    def do_jax(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A jax_load / jax_transform / jax_program request: user code, so interruptible."""
        self.budget.reset(self.budget.limit)
        try:
            with self.gate.user_code():
                return jax_ops.handle_request(msg, self.shell.user_ns)
        finally:
            try:
                jaxdisplay.settle_effects()  # jax.debug output belongs to this request
            except Exception:  # noqa: BLE001 - the reply matters more than late debug output
                pass
            self.fd_capture.drain()

    def do_comm(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A comm message from the frontend: widget observers and callbacks run here, like a cell."""
        try:
            with self.gate.user_code():
                self.comm_manager.handle(
                    msg["msg_type"], msg["content"], msg.get("metadata") or {}, msg.get("buffers") or []
                )
        finally:
            self.fd_capture.drain()
        return {"status": "ok"}

    # introspection ---------------------------------------------------------------
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
        assert hm is not None  # the worker's shell always has one
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
