"""Frames on the kernel <-> worker wire: a 4-byte big-endian length, then UTF-8 JSON.

JSON only, because the kernel treats every byte from the worker as hostile: nothing here can execute
code on decode (no pickle), and every frame is size-bounded before it is read into memory.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

HEADER = struct.Struct(">I")
#: Largest frame either side will send or accept unless configured otherwise.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: Stream text is cut into chunks of at most this many characters per frame.
STREAM_CHUNK = 64 * 1024

#: What a receiving side runs on each decoded message before handing it on (see Connection.check).
Check = Callable[[dict[str, Any]], dict[str, Any]]


class WireError(ValueError):
    """A frame or message that breaks the wire format."""


class FrameTooLarge(WireError):
    """A frame whose announced length exceeds the limit; its bytes were discarded."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


def encode(msg: Mapping[str, Any]) -> bytes:
    """Serialize one message into a length-prefixed frame."""
    body = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """Parse a frame body; anything but a JSON object with a string ``type`` is a WireError."""
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise WireError(f"frame is not valid JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise WireError("frame is not a JSON object with a string 'type'")
    return msg


class Connection:
    """A framed, thread-safe-for-sending JSON channel over a connected stream socket.

    Receiving keeps its partial frame in ``self._buf`` between calls so that a
    ``KeyboardInterrupt`` raised between two reads never desynchronises the stream.
    ``check``, where set, validates every message received (the worker checks the kernel's
    requests with it) and raises WireError for one that breaks its schema.
    """

    check: Check | None = None

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self._send_lock = threading.Lock()
        self._buf = bytearray()
        self._discard = 0  # bytes of an oversized frame still to skip

    def fileno(self) -> int:
        """The socket's descriptor, for select()."""
        return self.sock.fileno()

    def send(self, msg: Mapping[str, Any]) -> None:
        """Send one message; safe to call from several threads."""
        frame = encode(msg)
        with self._send_lock:
            self.sock.sendall(self._seal(frame))

    def _seal(self, frame: bytes) -> bytes:
        return frame

    def _unseal(self, body: bytes) -> bytes:
        return body

    def _fill(self, timeout: float | None) -> bool:
        """Read more bytes into the buffer; False on timeout, EOFError on close."""
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("connection closed")
        self._buf += chunk
        return True

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Return the next message, None on timeout.

        Raises EOFError when the peer closed, FrameTooLarge after skipping an
        oversized frame, and WireError for a frame that is not a message.
        """
        while True:
            if self._discard:
                n = min(self._discard, len(self._buf))
                del self._buf[:n]
                self._discard -= n
                if self._discard:
                    if not self._fill(timeout):
                        return None
                    continue
            if len(self._buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buf)
                if size > self.max_frame:
                    del self._buf[: HEADER.size]
                    self._discard = size
                    n = min(self._discard, len(self._buf))
                    del self._buf[:n]
                    self._discard -= n
                    raise FrameTooLarge(size, self.max_frame)
                end = HEADER.size + size
                if len(self._buf) >= end:
                    body = bytes(self._buf[HEADER.size : end])
                    del self._buf[:end]
                    msg = decode(self._unseal(body))
                    return msg if self.check is None else self.check(msg)
            if not self._fill(timeout):
                return None

    def has_frame(self) -> bool:
        """Whether a whole frame (or the rest of an oversized one) is already buffered: ``recv``
        returns it without reading the socket, so a caller that waits for the socket to become
        readable must ask this first."""
        if self._discard:
            return bool(self._buf)
        if len(self._buf) < HEADER.size:
            return False
        (size,) = HEADER.unpack_from(self._buf)
        return size > self.max_frame or len(self._buf) >= HEADER.size + size

    def close(self) -> None:
        """Close the socket; pending sends in other threads fail with OSError."""
        try:
            self.sock.close()
        except OSError:
            pass
