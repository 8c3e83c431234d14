"""The worker's half of the visual debugger: DAP requests from the kernel, served with pydevd.

Modelled on ipykernel's ``debugger.py`` (the same request set, the same local answers for
``dumpCell``, ``debugInfo``, ``inspectVariables`` and ``richInspectVariables``), with two
differences that the worker's situation calls for:

* No debug adapter process and no TCP port.  ipykernel runs ``debugpy.listen``, which
  spawns an adapter that pydevd and the kernel reach over 127.0.0.1; a sandboxed worker
  has no network (strict) or shares the host's, where any local user could connect to
  the port.  Here pydevd speaks DAP itself (debugpy's in-process mode) over one end of a
  ``socketpair``: nothing listens anywhere, and the seccomp filter allows socketpair.
* Everything runs on threads the debugger does not trace (:mod:`.threads`): while the
  main thread is stopped at a breakpoint inside a cell, requests keep being answered.

debugpy is imported on the first ``initialize``, never at worker start.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import queue
import re
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from .cellnames import HASH_METHOD, HASH_SEED, SUFFIX, CellNames
from .jsonable import jsonable
from .threads import mark_untraced, service_thread

Send = Callable[[dict[str, Any]], None]

#: Seconds to wait for pydevd's answer to one request.
PYDEVD_TIMEOUT = 30.0
#: Characters of a value's repr shown by inspectVariables.
REPR_LIMIT = 200
#: Largest DAP frame accepted from pydevd.
MAX_FRAME = 8 * 1024 * 1024

#: Names in the user namespace that are IPython's or the kernel's, not the user's.
_HIDDEN = frozenset(
    {
        "__name__", "__doc__", "__package__", "__loader__", "__spec__", "__annotations__",
        "__builtins__", "__builtin__", "__display__", "get_ipython", "exit", "quit", "In", "Out",
        "_oh", "_dh", "_", "__", "___", "load_jax_library", "execute_jax_transformation",
        "execute_jax_program", "export_jax_program",
    }
)  # fmt: skip
_MISSING = object()
_HIDDEN_PATTERN = re.compile(r"^(_i.*|_\d+)$")


def user_variable(name: str) -> bool:
    """Whether a variable listing shows this name (ipykernel hides the same bookkeeping names)."""
    return name not in _HIDDEN and not _HIDDEN_PATTERN.match(name)


class DebuggerUnavailable(Exception):
    """pydevd could not be started in this worker; the message says why, in one line."""


class _Slot:
    """One forwarded request waiting for pydevd's response."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: dict[str, Any] | None = None


class DebugSession:
    """Serves the kernel's ``debug`` requests, one at a time, on a thread of its own."""

    def __init__(self, send: Send, shell: Any, names: CellNames) -> None:
        self._send = send
        self._shell = shell
        self._names = names
        self._requests: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._sock: socket.socket | None = None  # our end of the socketpair pydevd talks on
        self._send_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._waiting: dict[int, _Slot] = {}
        self.started = False
        self.stopped_threads: set[int] = set()
        self.breakpoints: dict[str, list[dict[str, Any]]] = {}
        self._removed_cleanup: dict[int, Any] = {}
        self._stash: Any = None
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "initialize": self.initialize,
            "attach": self.attach,
            "configurationDone": self.configuration_done,
            "debugInfo": self.debug_info,
            "dumpCell": self.dump_cell,
            "setBreakpoints": self.set_breakpoints,
            "source": self.source,
            "variables": self.variables,
            "inspectVariables": self.inspect_variables,
            "richInspectVariables": self.rich_inspect_variables,
            "copyToGlobals": self.copy_to_globals,
            "modules": self.modules,
            "disconnect": self.disconnect,
        }
        service_thread(self._serve, "jax-kernel-debug-requests")

    # plumbing -----------------------------------------------------------------------
    def submit(self, msg: dict[str, Any]) -> None:
        """Queue one ``debug`` wire request; its ``debug_reply`` is sent when it is served."""
        self._requests.put(msg)

    def _serve(self) -> None:
        while True:
            msg = self._requests.get()
            if msg.get("id") is None:  # our own: resume everything so an interrupt can reach the cell
                for thread_id in sorted(self.stopped_threads):
                    self._forward(
                        {"type": "request", "command": "continue", "arguments": {"threadId": thread_id}}
                    )
                continue
            request = msg.get("content") if isinstance(msg.get("content"), dict) else {}
            try:
                reply = self.handle(request)
            except Exception as e:  # noqa: BLE001 - every request gets a reply
                reply = _response(request, False, message=f"{type(e).__name__}: {e}")
            try:
                self._send({"type": "debug_reply", "id": msg["id"], "content": jsonable(reply)})
            except OSError:
                return  # the kernel is gone

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one DAP request: here, or by pydevd once the debugger is started."""
        command = request.get("command")
        handler = self._handlers.get(command) if isinstance(command, str) else None
        if handler is not None:
            return handler(request)
        if not self.started:
            return _response(request, False, message="the debugger is not started (send initialize first)")
        return self._forward(request)

    def _forward(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request to pydevd under our own sequence number; answer with the frontend's."""
        if self._sock is None:
            return _response(request, False, message="the debugger is not started (send initialize first)")
        seq = next(self._seq)
        slot = self._waiting[seq] = _Slot()
        body = json.dumps({**request, "seq": seq}).encode()
        try:
            with self._send_lock:
                self._sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            if not slot.done.wait(PYDEVD_TIMEOUT):
                return _response(request, False, message=f"pydevd did not answer within {PYDEVD_TIMEOUT:g} s")
        finally:
            self._waiting.pop(seq, None)
        response = dict(slot.response or {})
        response["request_seq"] = request.get("seq", 0)
        response["command"] = request.get("command", response.get("command", ""))
        return response

    def _read_pydevd(self, sock: socket.socket) -> None:
        """pydevd's DAP stream: responses wake their request, events go to the kernel."""
        buf = b""
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                return
            buf += chunk
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                headers = dict(line.split(b":", 1) for line in buf[:end].split(b"\r\n") if b":" in line)
                size = int(headers.get(b"Content-Length", b"0").strip() or 0)
                if size > MAX_FRAME:
                    return  # pydevd is in our process: this does not happen short of memory corruption
                if len(buf) < end + 4 + size:
                    break
                body, buf = buf[end + 4 : end + 4 + size], buf[end + 4 + size :]
                try:
                    self._dispatch(json.loads(body))
                except (ValueError, OSError):
                    continue

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "response":
            slot = self._waiting.get(msg.get("request_seq", -1))
            if slot is not None:
                slot.response = msg
                slot.done.set()
            return
        if msg.get("type") != "event":
            return
        event, body = msg.get("event"), msg.get("body") or {}
        if event == "stopped" and isinstance(body.get("threadId"), int):
            self.stopped_threads.add(body["threadId"])
        elif event == "continued":
            if body.get("allThreadsContinued", True):
                self.stopped_threads.clear()
            else:
                self.stopped_threads.discard(body.get("threadId"))
        if event == "output" and "KeyboardInterrupt'> raised from within the callback" in str(
            body.get("output")
        ):
            return  # an interrupt while stopped: tracing comes back before the next cell (sync_tracing)
        msg.pop("pydevd_cmd_id", None)
        self._send({"type": "debug_event", "content": msg})

    # starting and stopping -------------------------------------------------------------
    def _start_pydevd(self) -> None:
        """Load debugpy's pydevd and connect it to a socketpair whose other end we read."""
        if self._sock is not None:
            return
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no frozen-modules note on stderr
        try:
            import debugpy
            from debugpy.server import api  # noqa: F401 - puts pydevd on sys.path, set up to speak DAP

            pydevd = importlib.import_module("pydevd")  # only importable after the line above
        except Exception as e:  # noqa: BLE001 - any failure means "no debugger", said in one line
            raise DebuggerUnavailable(
                f"debugpy could not be loaded in the worker ({type(e).__name__}: {e})"
            ) from None
        mine, theirs = socket.socketpair()
        # pydevd only knows how to dial out (or listen on TCP): hand it the socket it would dial.
        original = pydevd.start_client
        pydevd.start_client = lambda host, port: theirs
        try:
            pydevd.settrace(
                host="socketpair",
                port=0,
                suspend=False,
                block_until_connected=True,
                wait_for_ready_to_run=False,
                patch_multiprocessing=False,
                notify_stdin=False,
                dont_trace_start_patterns=(os.path.dirname(debugpy.__file__),),
            )
        except Exception as e:  # noqa: BLE001
            mine.close()
            theirs.close()
            raise DebuggerUnavailable(f"pydevd did not start ({type(e).__name__}: {e})") from None
        finally:
            pydevd.start_client = original
        for thread in threading.enumerate():
            if thread.name == "IPythonHistorySavingThread":
                mark_untraced(thread)
        self._sock = mine
        service_thread(self._read_pydevd, "jax-kernel-debug-pydevd", mine)

    def _keep_leading_blank_lines(self, keep: bool) -> None:
        """While debugging, the code that runs must have the lines of the file breakpoints are set in."""
        from IPython.core.inputtransformer2 import leading_empty_lines

        transforms = self._shell.input_transformer_manager.cleanup_transforms
        if keep and leading_empty_lines in transforms:
            index = transforms.index(leading_empty_lines)
            self._removed_cleanup[index] = transforms.pop(index)
        elif not keep:
            for index in sorted(self._removed_cleanup):
                transforms.insert(index, self._removed_cleanup.pop(index))

    # requests answered here ---------------------------------------------------------------
    def initialize(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            self._start_pydevd()
        except DebuggerUnavailable as e:
            return _response(request, False, message=str(e))
        self._keep_leading_blank_lines(True)
        self.started = True
        return self._forward(request)

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.started:
            return _response(request, False, message="the debugger is not started (send initialize first)")
        arguments = dict(request.get("arguments") or {})
        # Stepping out of a cell must not walk into the worker's or IPython's own code.
        import IPython

        internal = [os.path.dirname(os.path.dirname(__file__)), os.path.dirname(IPython.__file__)]
        arguments.setdefault("rules", [{"path": os.path.join(d, "**"), "include": False} for d in internal])
        reply = self._forward({**request, "arguments": arguments})
        # ipykernel's adapter sends configurationDone right after attach; pydevd waits for nothing,
        # but this makes a frontend that never sends one behave the same.
        self._forward({"type": "request", "command": "configurationDone", "seq": 0, "arguments": {}})
        return reply

    def configuration_done(self, request: dict[str, Any]) -> dict[str, Any]:
        return _response(request, True)

    def debug_info(self, request: dict[str, Any]) -> dict[str, Any]:
        return _response(
            request,
            True,
            body={
                "isStarted": self.started,
                "hashMethod": HASH_METHOD,
                "hashSeed": HASH_SEED,
                "tmpFilePrefix": self._names.prefix,
                "tmpFileSuffix": SUFFIX,
                "breakpoints": [{"source": s, "breakpoints": b} for s, b in self.breakpoints.items()],
                "stoppedThreads": sorted(self.stopped_threads),
                "richRendering": True,
                "exceptionPaths": ["Python Exceptions"],
                "copyToGlobals": True,
            },
        )

    def dump_cell(self, request: dict[str, Any]) -> dict[str, Any]:
        code = (request.get("arguments") or {}).get("code")
        if not isinstance(code, str):
            return _response(request, False, message="dumpCell needs arguments.code")
        path = self._names.path(code)
        os.makedirs(self._names.directory, mode=0o700, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        return _response(request, True, body={"sourcePath": path})

    def set_breakpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        source = ((request.get("arguments") or {}).get("source") or {}).get("path")
        reply = self.handle_forwarded(request)
        if reply.get("success") and isinstance(source, str):
            lines = [
                {"line": b["line"]} for b in (reply.get("body") or {}).get("breakpoints", []) if "line" in b
            ]
            self.breakpoints[source] = lines
            if not lines:
                self.breakpoints.pop(source)
        return reply

    def handle_forwarded(self, request: dict[str, Any]) -> dict[str, Any]:
        """Forward to pydevd if the debugger is started, else refuse."""
        if not self.started:
            return _response(request, False, message="the debugger is not started (send initialize first)")
        return self._forward(request)

    def source(self, request: dict[str, Any]) -> dict[str, Any]:
        path = ((request.get("arguments") or {}).get("source") or {}).get("path")
        if isinstance(path, str) and os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                return _response(request, True, body={"content": f.read()})
        return _response(request, False, message="source unavailable", body={})

    def variables(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.stopped_threads:
            # Between cells inspectVariables lists the namespace flat: there is nothing to expand.
            return _response(request, True, body={"variables": []})
        reply = self.handle_forwarded(request)
        body = reply.get("body")
        if isinstance(body, dict) and isinstance(body.get("variables"), list):
            body["variables"] = [
                v for v in body["variables"] if isinstance(v, dict) and user_variable(str(v.get("name", "")))
            ]
        return reply

    def inspect_variables(self, request: dict[str, Any]) -> dict[str, Any]:
        """The user namespace, for the variable explorer while nothing is stopped."""
        variables = []
        hidden = self._shell.user_ns_hidden  # what IPython itself put there (open, In, Out, ...), as %who
        for name, value in list(self._shell.user_ns.items()):
            if not user_variable(name) or name.startswith("__") or hidden.get(name, _MISSING) is value:
                continue
            try:
                text = repr(value)
            except Exception as e:  # noqa: BLE001 - a broken __repr__ must not hide the others
                text = f"<repr failed: {type(e).__name__}>"
            if len(text) > REPR_LIMIT:
                text = text[: REPR_LIMIT - 1] + "…"
            variables.append(
                {
                    "name": name,
                    "value": text,
                    "type": type(value).__name__,
                    "evaluateName": name,
                    "variablesReference": 0,
                }
            )
        return _response(request, True, body={"variables": variables})

    def rich_inspect_variables(self, request: dict[str, Any]) -> dict[str, Any]:
        """A variable's MIME bundle, from the namespace or (when stopped) from the stopped frame."""
        arguments = request.get("arguments") or {}
        name = arguments.get("variableName")
        if not isinstance(name, str) or not name.isidentifier():
            return _response(request, True, body={"data": {}, "metadata": {}})
        data: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        if not self.stopped_threads:
            result = self._shell.user_expressions({name: name})[name]
            if result.get("status") == "ok":
                data, metadata = result.get("data", {}), result.get("metadata", {})
        else:
            # Evaluated in the stopped frame; the bundle comes back through this module, not a repr.
            self._stash = None
            reply = self._forward(
                {
                    "type": "request",
                    "command": "evaluate",
                    "seq": request.get("seq", 0),
                    "arguments": {
                        "expression": f"__import__({__name__!r}, fromlist=['_']).stash("
                        f"get_ipython().display_formatter.format({name}))",
                        "frameId": arguments.get("frameId"),
                        "context": "repl",
                    },
                }
            )
            stashed = _CURRENT[0]._stash if _CURRENT else None
            if reply.get("success") and isinstance(stashed, tuple) and len(stashed) == 2:
                data, metadata = stashed
        body = {"data": data, "metadata": {k: v for k, v in metadata.items() if k in data}}
        return _response(request, True, body=body)

    def copy_to_globals(self, request: dict[str, Any]) -> dict[str, Any]:
        arguments = request.get("arguments") or {}
        dst, src = arguments.get("dstVariableName"), arguments.get("srcVariableName")
        if not (isinstance(dst, str) and dst.isidentifier() and isinstance(src, str) and src.isidentifier()):
            return _response(
                request, False, message="dstVariableName and srcVariableName must be valid identifiers"
            )
        return self.handle_forwarded(
            {
                "type": "request",
                "command": "setExpression",
                "seq": request.get("seq", 0),
                "arguments": {
                    "expression": f"globals()['{dst}']",
                    "value": src,
                    "frameId": arguments.get("srcFrameId"),
                },
            }
        ) | {"command": "copyToGlobals"}

    def modules(self, request: dict[str, Any]) -> dict[str, Any]:
        arguments = request.get("arguments") or {}
        loaded = list(sys.modules.values())
        start = arguments.get("startModule", 0) if isinstance(arguments.get("startModule"), int) else 0
        count = arguments.get("moduleCount") if isinstance(arguments.get("moduleCount"), int) else len(loaded)
        found = []
        for i, module in enumerate(loaded[start : start + count], start):
            path = getattr(getattr(module, "__spec__", None), "origin", None)
            if isinstance(path, str) and path.endswith(".py"):
                found.append({"id": i, "name": module.__name__, "path": path})
        return _response(request, True, body={"modules": found, "totalModules": len(loaded)})

    def disconnect(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = self.handle_forwarded(request) if self.started else _response(request, True)
        self.started = False
        self.breakpoints.clear()
        self.stopped_threads.clear()
        self._keep_leading_blank_lines(False)
        return reply


def sync_tracing() -> None:
    """Before a cell, on the main thread: trace it while a frontend debugs, and only then.

    After a disconnect pydevd stays loaded (a later initialize reuses it) but its trace function
    would stay on the main thread, and every pure-Python call would pay for it (1.2-1.8x slower
    loops): it comes off.  And an interrupt while the cell was stopped at a breakpoint raises
    KeyboardInterrupt inside pydevd's trace function, after which Python stops tracing that
    thread for good: while debugging, tracing goes back on, or no later breakpoint would stop."""
    if not _CURRENT:
        return
    pydevd = sys.modules.get("pydevd")
    py_db = pydevd.get_global_debugger() if pydevd is not None else None
    if py_db is None:
        return
    if not _CURRENT[0].started:
        if sys.gettrace() is not None:
            py_db.disable_tracing()
        return
    if sys.gettrace() is not None:
        return
    from _pydevd_bundle.pydevd_additional_thread_info import set_additional_thread_info
    from _pydevd_bundle.pydevd_constants import STATE_RUN

    # The interrupted wait left the thread marked suspended: traced again as it is, it would
    # wait for a continue that no frontend knows to send.
    info = set_additional_thread_info(threading.current_thread())
    info.pydev_state = STATE_RUN
    info.pydev_step_cmd = -1
    py_db.enable_tracing()


def _response(request: dict[str, Any], success: bool, **fields: Any) -> dict[str, Any]:
    return {
        "type": "response",
        "request_seq": request.get("seq", 0) if isinstance(request.get("seq"), int) else 0,
        "success": success,
        "command": request.get("command") if isinstance(request.get("command"), str) else "",
        **fields,
    }


#: The worker's one session, created by the first debug request (see :func:`session`).
_CURRENT: list[DebugSession] = []


def session(send: Send, shell: Any, names: CellNames) -> DebugSession:
    """The worker's debug session, created on first use."""
    if not _CURRENT:
        _CURRENT.append(DebugSession(send, shell, names))
    return _CURRENT[0]


def stash(value: Any) -> None:
    """Called by an expression pydevd evaluates in a stopped frame: hand a value to the session."""
    if _CURRENT:
        _CURRENT[0]._stash = value
