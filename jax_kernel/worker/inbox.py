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

from ..protocol import wire
from .threads import service_thread


class Mailbox:
    """Requests waiting, in order, for the one thread that serves them (the main shell's, or a
    subshell's); ``waker`` lets that thread run its asyncio loop while it waits."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._closed = False
        self.waker: Callable[[], None] | None = None  # called (on the putting thread) after each put

    def put(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for the serving thread."""
        self._queue.put(msg)
        self._wake()

    def close(self) -> None:
        """No more requests: the serving thread's next :meth:`get` raises EOFError."""
        self._queue.put(None)
        self._wake()

    def _wake(self) -> None:
        waker = self.waker
        if waker is not None:
            try:
                waker()
            except RuntimeError:
                pass  # the loop it would wake is closed: the worker is ending

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next request; None on timeout; EOFError once closed."""
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


class Inbox(Mailbox):
    """Reads every frame from the kernel; :meth:`get` returns the ones for the main thread."""

    def __init__(
        self,
        conn: wire.Connection,
        routes: dict[str, Callable[[dict[str, Any]], None]],
        on_close: Callable[[], None] | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        """``routes``: request types handed to a callable on this thread instead of the queue.

        ``on_close`` runs on this thread when the kernel goes away, or has sent nothing for
        ``idle_timeout`` seconds (a set member, whose kernel sends heartbeats): it must not wait
        for the main thread, which may be stuck in XLA.
        """
        super().__init__()
        self._conn = conn
        self._routes = routes
        self._on_close = on_close
        self._idle_timeout = idle_timeout
        service_thread(self._read, "jax-kernel-wire-reader")

    def _read(self) -> None:
        while True:
            # recv returns None only when idle_timeout passes with no frame; without one it blocks.
            try:
                msg = self._conn.recv(timeout=self._idle_timeout)
            except wire.AuthenticationError:
                msg = None  # not from our kernel: the connection can't be trusted any more
            except wire.WireError:
                continue  # the kernel sent something unreadable: skip it rather than stop listening
            except (EOFError, OSError):
                msg = None
            if msg is None:  # closed, untrusted, or silent for idle_timeout: the kernel is gone
                self.close()
                if self._on_close is not None:
                    self._on_close()
                return
            route = self._routes.get(msg["type"])
            if route is not None:
                route(msg)
            else:
                self.put(msg)
