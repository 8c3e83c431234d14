"""``input()`` and ``getpass()`` in a cell: the worker asks, the kernel asks the frontend on stdin.

The exchange blocks on the stdin socket, so it runs on a thread and the kernel's loop keeps
serving the worker (a cell may print while it waits for input).  A new prompt, or the end of
the cell, cancels the one before: a frontend that never answers must not leave a thread behind.
"""

from __future__ import annotations

import asyncio
import threading
import typing as t

import zmq

from .outputs import Origin


class InputRelay:
    """Relays the worker's input_request to the frontend that sent the cell, and the answer back."""

    def __init__(self, session: t.Any, stdin_socket: t.Any, answer: t.Callable[[str], None]) -> None:
        self.session = session
        self.stdin_socket = stdin_socket
        self._answer = answer
        self._cancel: threading.Event | None = None

    def ask(self, msg: dict[str, t.Any], origin: object = None) -> None:
        """The worker's input_request (validated), for the request it is tagged with."""
        self.cancel()
        cancel = self._cancel = threading.Event()
        where = origin if isinstance(origin, Origin) else Origin()
        asyncio.ensure_future(self._relay(msg["prompt"], msg["password"], where, cancel))

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    async def _relay(self, prompt: str, password: bool, origin: Origin, cancel: threading.Event) -> None:
        value = await asyncio.to_thread(self._ask_frontend, prompt, password, origin, cancel)
        if value is not None:
            self._answer(value)

    def _ask_frontend(
        self, prompt: str, password: bool, origin: Origin, cancel: threading.Event
    ) -> str | None:
        """Blocking input_request/input_reply exchange, run on a thread so the loop keeps going."""
        sock = self.stdin_socket
        while True:  # purge stale replies to an earlier, interrupted request
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self.session.send(
            sock, "input_request", {"prompt": prompt, "password": password}, origin.parent, ident=origin.ident
        )
        while not cancel.is_set():
            if sock.poll(50):
                _, reply = self.session.recv(sock)
                if reply is None:
                    continue
                value = reply.get("content", {}).get("value", "")
                return value if isinstance(value, str) else str(value)
        return None
