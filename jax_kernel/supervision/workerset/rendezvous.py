"""Kernel process: where a set's members find the kernel, and how it tells them from strangers.

The kernel listens on a TCP port of its own for each set and writes a connection file (mode
0600, in the set's private folder) with the port and a per-set key.  Each member connects back
on the kernel's own wire (:mod:`jax_kernel.protocol.wire`): JSON frames, size-bounded, validated,
never unpickled, and encrypted and authenticated (ChaCha20-Poly1305) under that key, with a nonce
the kernel sends first.  Its first message must be a hello in the same protocol version; anything
else (no key, another protocol, one connection too many) is turned away and the set goes on.
Apart from the set's life cycle because this is the part a stranger on the network reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...protocol import wire
from ..local import WireReader
from .settings import ProcessSet


@dataclass
class Member:
    """One connected member, as the kernel knows it (nothing it says is trusted beyond its wire)."""

    conn: wire.SealedConnection
    peer_ip: str
    index: int = -1
    pid: int = 0
    host: str = ""
    rank: int = -1
    port: int = 0
    hello: bool = False
    ready: dict[str, Any] | None = None
    gone: bool = False
    inputs_asked: int = 0  # input() calls in the running cell, and how many got their answer
    inputs_answered: int = 0
    sandbox: Any = None
    last_seen: float = field(default_factory=time.monotonic)
    line_start: dict[str, bool] = field(default_factory=lambda: {"stdout": True, "stderr": True})
    reader: WireReader = field(init=False)  # set as soon as it connects

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}" if self.pid else f"from {self.peer_ip}, before it said hello"
        return f"process {self.index if self.index >= 0 else '?'} ({where})"


class Rendezvous:
    """A set's listening port and connection file; connections become :class:`Member` s in ``members``.

    ``on_frame`` and ``on_error`` get each member's messages and wire failures (``WireReader``);
    ``closing`` says whether the set is ending (then nobody is let in)."""

    def __init__(
        self,
        *,
        options: ProcessSet,
        count: int,
        max_frame: int,
        directory: str,
        loop: asyncio.AbstractEventLoop,
        members: list[Member],
        on_frame: Callable[[Member, dict[str, Any]], None],
        on_error: Callable[[Member, Exception], None],
        on_problem: Callable[[str], None],
        closing: Callable[[], bool],
        log: logging.Logger,
    ) -> None:
        self.count = count
        self.members = members
        self.log = log
        self._max_frame = max_frame
        self._loop = loop
        self._on_frame, self._on_error, self._on_problem = on_frame, on_error, on_problem
        self._closing = closing
        self._key = secrets.token_bytes(32)
        self._listener = socket.create_server((options.listen_ip, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.conn_file = self._write_connection_file(options, directory)
        loop.add_reader(self._listener.fileno(), self._accept)

    def _write_connection_file(self, options: ProcessSet, directory: str) -> str:
        path = os.path.join(directory, "connection.json")
        info = {
            "host": options.connect_ip or options.listen_ip,
            "port": self.port,
            "key": self._key.hex(),
            "timeout": options.start_timeout,
            "max_frame": self._max_frame,
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return path

    def joined(self) -> int:
        """How many connections have said hello."""
        return sum(1 for m in self.members if m.hello)

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if self.joined() >= self.count or len(self.members) >= 4 * self.count or self._closing():
            sock.close()  # a set has exactly its members; anyone else is turned away
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nonce = wire.new_nonce()
        try:
            sock.sendall(nonce)
        except OSError:
            sock.close()
            return
        member = Member(wire.SealedConnection(sock, self._key, nonce, b"K", self._max_frame), addr[0])
        self.members.append(member)
        member.reader = WireReader(
            self._loop,
            member.conn,
            functools.partial(self._on_frame, member),
            functools.partial(self._on_error, member),
        )

    def turn_away(self, m: Member, why: str) -> None:
        """A connection that never became a member (no key, wrong protocol, one too many): drop it."""
        self.log.warning("Turned away a connection to the set's port from %s: it %s", m.peer_ip, why)
        m.reader.close()
        if m in self.members:
            self.members.remove(m)

    def turn_away_strangers(self) -> None:
        """The set is complete: whoever has not said hello by now never will be a member."""
        for m in [x for x in self.members if not x.hello]:
            self.turn_away(m, "did not say hello before the set was complete")

    def admit(self, m: Member, msg: dict[str, Any]) -> bool:
        """Take ``m``'s (first) hello: True if it is a member now, False if it was turned away."""
        if msg["protocol"] != wire.PROTOCOL_VERSION:
            self.turn_away(m, f"speaks wire protocol {msg['protocol']}, not {wire.PROTOCOL_VERSION}")
            self._on_problem(
                f"a set member speaks wire protocol {msg['protocol']}, not {wire.PROTOCOL_VERSION}"
            )
            return False
        if self.joined() >= self.count:
            self.turn_away(m, "said hello after the set was complete")
            return False
        m.hello, m.pid, m.host, m.rank = True, msg["pid"], msg["host"][:200], msg["rank"]
        m.port = msg["port"] if 0 < msg["port"] < 65536 else 0
        return True

    def before_hello(self, m: Member, msg: dict[str, Any] | None, error: Exception | None) -> None:
        """Turn away a connection whose first message (``msg``) or wire failure (``error``) came
        before any hello: it is not one of ours (no key), or not a member that works."""
        if msg is not None:
            self.turn_away(m, f"failed authentication (first message is {msg['type']!r}, not hello)")
        elif isinstance(error, wire.AuthenticationError):
            self.turn_away(m, f"failed authentication ({error})")
        elif isinstance(error, wire.WireError):
            self.turn_away(m, f"sent a malformed first message ({error})")
        else:
            self.turn_away(m, "closed its connection before it said hello")

    def close(self) -> None:
        """Stop listening (idempotent); the members' connections are the set's to close."""
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
