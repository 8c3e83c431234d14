"""The link between the provisioner (in the Jupyter server) and a kernel process it launched.

One ``socketpair`` per process, a JSON object per line, used by both sides: the provisioner's
end lives in the server's process, the other is inherited by the kernel process (its number in
``JAX_KERNEL_LINK_FD``, removed from the environment once read, and close-on-exec from then on:
a worker never holds it).

Why a link of our own beside the Jupyter channels: jupyter_client restarts a kernel by asking
it to shut down, polling the process until it exits and launching a new one.  A kernel that
restarts *in place* must tell the provisioner so before that poll (the provisioner then reports
the old process as gone and hands it back as the new one), and a warm kernel process that has
bound no port yet (the spare, a pooled kernel) must be told when, and as what, to become the
kernel.  Neither can go over the kernel's own channels: the first happens while they are being
torn down, the second before they exist.

Messages, provisioner to kernel process: ``{"go": {"argv": [...], "cwd": ..., "env": {...}}}``
(become the kernel; a pooled process gets the launch's command line, folder and variables),
``{"restart": "now"}`` (a forced restart: replace the worker in place, without a reply on
control).  Kernel process to provisioner: ``{"restarting": N}`` (the Nth restart in place has
begun: the process stays).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import time
from typing import Any

#: The variable that names the kernel process's end of its link.
LINK_ENV = "JAX_KERNEL_LINK_FD"
#: Largest line either side accepts: messages are small (a command line, a folder, a few variables).
MAX_LINE = 1 << 20


class LinkClosed(EOFError):
    """The other side went away (or sent something that is not a message)."""


class Link:
    """One end of a provisioner <-> kernel link."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(False)
        self._buffer = b""

    @classmethod
    def pair(cls) -> tuple[Link, socket.socket]:
        """A new link: the provisioner's end, and the socket to hand to the child (``pass_fds``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        return cls(ours), theirs

    @classmethod
    def from_environment(cls) -> Link | None:
        """The kernel process's end, if its provisioner gave it one (and only once)."""
        raw = os.environ.pop(LINK_ENV, "")
        if not raw.isdigit():
            return None
        fd = int(raw)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return None  # not open (a launcher that did not pass it on): no link
        sock.set_inheritable(False)  # a worker, or anything a worker starts, must never hold it
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, **message: Any) -> bool:
        """Send one message; False if the other side is gone."""
        data = json.dumps(message).encode() + b"\n"
        try:
            self._sock.setblocking(True)
            self._sock.sendall(data)
        except OSError:
            return False
        finally:
            try:
                self._sock.setblocking(False)
            except OSError:
                pass
        return True

    def _take_line(self) -> dict[str, Any] | None:
        line, sep, rest = self._buffer.partition(b"\n")
        if not sep:
            if len(self._buffer) > MAX_LINE:
                raise LinkClosed("a message on the link was too long")
            return None
        self._buffer = rest
        try:
            message = json.loads(line)
        except ValueError:
            raise LinkClosed("a message on the link was not JSON") from None
        if not isinstance(message, dict):
            raise LinkClosed("a message on the link was not an object")
        return message

    def _fill(self) -> None:
        """Read what is there now (the socket is ready); LinkClosed at EOF."""
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            raise LinkClosed(str(e)) from None
        if not data:
            raise LinkClosed("the other side closed the link")
        self._buffer += data

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message, waiting up to ``timeout`` seconds (None: for ever); None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._take_line()
            if message is not None:
                return message
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                return None
            self._fill()

    def poll(self) -> dict[str, Any] | None:
        """A message that has arrived already, or None (never waits)."""
        return self.read(0)

    async def receive(self, timeout: float) -> dict[str, Any] | None:
        """:meth:`read` for an asyncio loop (the Jupyter server's): None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = self._take_line()
            if message is not None:
                return message
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._sock.fileno(), _resolve, ready)
            try:
                await asyncio.wait_for(ready, max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(self._sock.fileno())
            self._fill()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
