"""pydevd in this process, speaking DAP over a socketpair whose other end the worker reads.

ipykernel runs ``debugpy.listen``, which spawns an adapter that pydevd and the kernel reach over
127.0.0.1; a sandboxed worker has no network (strict) or shares the host's, where any local user
could connect to the port.  Here nothing listens anywhere, and the seccomp filter allows
socketpair.  debugpy is imported by :meth:`PydevdLink.start`, never when this module is.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import socket
import threading
from typing import Any

from ..threads import mark_untraced, service_thread
from .dap import NOT_STARTED, DebuggerUnavailable, Send, response

#: Seconds to wait for pydevd's answer to one request.
PYDEVD_TIMEOUT = 30.0
#: Largest DAP frame accepted from pydevd.
MAX_FRAME = 8 * 1024 * 1024


class _Slot:
    """One forwarded request waiting for pydevd's response."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: dict[str, Any] | None = None


class PydevdLink:
    """Requests to pydevd and its answers; its events (and the threads they stop) to the kernel."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._sock: socket.socket | None = None  # our end of the socketpair pydevd talks on
        self._send_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._waiting: dict[int, _Slot] = {}
        self.stopped_threads: set[int] = set()

    @property
    def connected(self) -> bool:
        """Whether pydevd was started (it stays loaded, and connected, once it was)."""
        return self._sock is not None

    def start(self) -> None:
        """Load debugpy's pydevd and connect it to a socketpair whose other end we read."""
        if self._sock is not None:
            return
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no frozen-modules note on stderr
        debugpy_dir, pydevd = _load_pydevd()
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
                dont_trace_start_patterns=(debugpy_dir,),
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
        service_thread(self._read, "jax-kernel-debug-pydevd", mine)

    def forward(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request to pydevd under our own sequence number; answer with the frontend's."""
        if self._sock is None:
            return response(request, False, message=NOT_STARTED)
        seq = next(self._seq)
        slot = self._waiting[seq] = _Slot()
        body = json.dumps({**request, "seq": seq}).encode()
        try:
            with self._send_lock:
                self._sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            if not slot.done.wait(PYDEVD_TIMEOUT):
                return response(request, False, message=f"pydevd did not answer within {PYDEVD_TIMEOUT:g} s")
        finally:
            self._waiting.pop(seq, None)
        reply = dict(slot.response or {})
        reply["request_seq"] = request.get("seq", 0)
        reply["command"] = request.get("command", reply.get("command", ""))
        return reply

    def _read(self, sock: socket.socket) -> None:
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


def _load_pydevd() -> tuple[str, Any]:
    """debugpy's folder (pydevd must not trace it) and its pydevd module, which has no stubs."""
    try:
        import debugpy
        from debugpy.server import api  # noqa: F401 - puts pydevd on sys.path, set up to speak DAP

        pydevd: Any = importlib.import_module("pydevd")  # only importable after the line above
    except Exception as e:  # noqa: BLE001 - any failure means "no debugger", said in one line
        raise DebuggerUnavailable(
            f"debugpy could not be loaded in the worker ({type(e).__name__}: {e})"
        ) from None
    return os.path.dirname(debugpy.__file__), pydevd
