"""The worker's reading end of the wire, on a thread: the main thread may be busy in a cell.

Most requests wait in a queue for the main thread, which serves them one at a time as
before.  Some can't wait: while a cell is stopped at a breakpoint, the main thread is the
one stopped, and the frontend's stackTrace or continue must still get through; a resource
usage poll must be answered while a cell runs.  The reader hands those to their own
handlers at once.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from .. import wire
from .threads import service_thread


class Inbox:
    """Reads every frame from the kernel; :meth:`get` returns the ones for the main thread."""

    def __init__(self, conn: wire.Connection, routes: dict[str, Callable[[dict[str, Any]], None]]) -> None:
        """``routes``: request types handed to a callable on this thread instead of the queue."""
        self._conn = conn
        self._routes = routes
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._closed = False
        service_thread(self._read, "jax-kernel-wire-reader")

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv(timeout=None)
            except wire.WireError:
                continue  # the kernel sent something unreadable: skip it rather than stop listening
            except (EOFError, OSError):
                self._queue.put(None)
                return
            if msg is None:
                continue
            route = self._routes.get(msg["type"])
            if route is not None:
                route(msg)
            else:
                self._queue.put(msg)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next request for the main thread; None on timeout; EOFError once the kernel is gone."""
        if self._closed:
            raise EOFError("connection closed")
        try:
            msg = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if msg is None:
            self._closed = True
            raise EOFError("connection closed")
        return msg
