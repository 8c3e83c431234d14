"""The one definition of the kernel <-> worker wire, imported by both sides.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
holding one object with a ``type`` field.  JSON only: the kernel treats every byte
from the worker as hostile, so nothing here can execute code on decode (no pickle),
every frame is size-bounded before it is read into memory, and every message is
checked against :data:`WORKER_MESSAGES` before the kernel acts on it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import select
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

#: Bumped whenever a message changes shape; both sides refuse a mismatch.
PROTOCOL_VERSION = 1

HEADER = struct.Struct(">I")
#: Largest frame either side will send or accept unless configured otherwise.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: Stream text is cut into chunks of at most this many characters per frame.
STREAM_CHUNK = 64 * 1024

_MIME = dict  # a MIME bundle: {mimetype: str | JSON}

#: Messages the worker may send, with their required fields and types.
#: Optional fields are listed in :data:`OPTIONAL_FIELDS`.
WORKER_MESSAGES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "ready": {"pid": int, "protocol": int, "execution_count": int},
    "standby": {"pid": int, "protocol": int},  # warmed up (JAX imported), waiting for "activate"
    "stream": {"name": str, "text": str},
    "display_data": {"data": _MIME, "metadata": dict},
    "update_display_data": {"data": _MIME, "metadata": dict},
    "clear_output": {"wait": bool},
    "execute_result": {"execution_count": int, "data": _MIME, "metadata": dict},
    "error": {"ename": str, "evalue": str, "traceback": list},
    "input_request": {"prompt": str, "password": bool},
    "reply": {"id": int, "content": dict},
    "comm": {"msg_type": str, "content": dict, "metadata": dict, "buffers": list},
    # The debugger: a DAP response to one "debug" request, and a DAP event (stopped, continued, ...).
    "debug_reply": {"id": int, "content": dict},
    "debug_event": {"content": dict},
    # A member of a set of processes (multi-controller JAX), on connecting over TCP: who it is,
    # where it runs, its launcher rank (-1: none) and a free port it would serve JAX's coordinator on.
    "hello": {"pid": int, "protocol": int, "host": str, "rank": int, "port": int},
    "heartbeat": {},  # a set member is alive (sent every ProcessSet.heartbeat_interval)
    # ``%sandbox --selftest``: run the attack battery (jax_kernel.selftest) in a process of the
    # kernel's and relay its table to the running cell; answered by "selftest_done".
    "selftest": {},
}

OPTIONAL_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "display_data": {"transient": dict},
    "update_display_data": {"transient": dict},
    "ready": {"python": str, "jax_version": str, "sandbox": dict},
    "reply": {"output_mode": str},  # %jax_output in a set of processes: "all" or an index
}

#: The JAX entry points' requests.  Each is also a custom Jupyter shell message:
#: ``<kind>_request`` from a frontend becomes the wire request ``<kind>``, answered by ``<kind>_reply``.
JAX_REQUESTS = frozenset({"jax_load", "jax_transform", "jax_program"})

#: Requests the kernel sends to the worker (the worker trusts the kernel).
KERNEL_REQUESTS = frozenset(
    {
        "execute",
        "complete",
        "inspect",
        "is_complete",
        "history",
        "info",
        "input_reply",
        "shutdown",
        "activate",
        "comm",
        "comm_info",
        "debug",  # content: one DAP request from the frontend's debug_request
        "usage",
        "interrupt",  # a set member: raise KeyboardInterrupt in the running cell (no signal crosses hosts)
        "heartbeat",  # a set member: the kernel is alive
        "setup",  # a set member: its config and environment, answered by the worker's "ready"
        "selftest_done",  # the self-test the worker asked for ended: its exit status
        "reap",  # pids the kernel killed after a cell hit the task limit: wait for them (no zombies)
    }
    | JAX_REQUESTS
)

#: Requests the worker answers on a thread of their own, even while a cell runs.
CONCURRENT_REQUESTS = frozenset({"usage"})

#: Bytes of the per-connection nonce the kernel sends first on a set member's TCP connection.
NONCE_BYTES = 16

STREAM_NAMES = frozenset({"stdout", "stderr"})


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


def _check_fields(msg: Mapping[str, Any], spec: Mapping[str, Any], required: bool) -> None:
    for field, kind in spec.items():
        if field not in msg:
            if required:
                raise WireError(f"{msg['type']!r} message lacks field {field!r}")
            continue
        value = msg[field]
        # bool is an int subclass: an int field must not accept True/False, and vice versa.
        if isinstance(value, bool) and kind is not bool:
            raise WireError(f"field {field!r} of {msg['type']!r} has type bool")
        if not isinstance(value, kind):
            raise WireError(f"field {field!r} of {msg['type']!r} has type {type(value).__name__}")


def validate_worker_message(msg: dict[str, Any]) -> dict[str, Any]:
    """Check a decoded message from the (untrusted) worker against the schema."""
    spec = WORKER_MESSAGES.get(msg["type"])
    if spec is None:
        raise WireError(f"unknown message type {msg['type']!r}")
    _check_fields(msg, spec, required=True)
    _check_fields(msg, OPTIONAL_FIELDS.get(msg["type"], {}), required=False)
    if msg["type"] == "stream" and msg["name"] not in STREAM_NAMES:
        raise WireError(f"unknown stream name {msg['name']!r}")
    if "data" in spec and not all(isinstance(k, str) for k in msg["data"]):
        raise WireError("MIME bundle keys must be strings")
    if msg["type"] == "error" and not all(isinstance(line, str) for line in msg["traceback"]):
        raise WireError("traceback entries must be strings")
    if msg["type"] == "comm":
        _check_comm(msg)
    if msg["type"] in ("debug_reply", "debug_event"):
        msg["content"] = check_dap(msg["content"], "response" if msg["type"] == "debug_reply" else "event")
    return msg


#: Largest DAP message (as JSON) either side passes on: a variables listing of a huge
#: namespace is cut by the debugger long before this.
MAX_DAP_BYTES = 4 * 1024 * 1024

#: The fields of a DAP response and of a DAP event, with their types; anything else
#: (pydevd adds its own) is dropped before the message reaches a frontend.
DAP_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "response": {
        "seq": int,
        "request_seq": int,
        "success": bool,
        "command": str,
        "message": str,
        "body": dict,
    },
    "event": {"seq": int, "event": str, "body": dict},
}
_DAP_REQUIRED = {"response": ("command", "success"), "event": ("event",)}


def check_dap(content: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A validated copy of one DAP response or event: known fields only, each of the right type.

    Raises WireError for a message of another kind, a missing or mistyped field, or one
    larger than :data:`MAX_DAP_BYTES`."""
    if content.get("type") != kind:
        raise WireError(f"debug message is not a DAP {kind}")
    clean: dict[str, Any] = {"type": kind}
    for field, ftype in DAP_FIELDS[kind].items():
        if field not in content:
            if field in _DAP_REQUIRED[kind]:
                raise WireError(f"DAP {kind} lacks field {field!r}")
            continue
        value = content[field]
        if isinstance(value, bool) is not (ftype is bool) or not isinstance(value, ftype):
            raise WireError(f"field {field!r} of a DAP {kind} has type {type(value).__name__}")
        clean[field] = value
    try:
        size = len(json.dumps(clean, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise WireError(f"DAP {kind} is not plain JSON") from None
    if size > MAX_DAP_BYTES:
        raise WireError(f"DAP {kind} of {size} bytes exceeds the {MAX_DAP_BYTES}-byte limit")
    return clean


COMM_MSG_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})


def encode_buffers(buffers: Any) -> list[str]:
    """Binary buffers (comm messages) as the wire carries them: base64 strings, JSON only."""
    return [
        base64.b64encode(b.bytes if hasattr(b, "bytes") else bytes(b)).decode("ascii") for b in buffers or []
    ]


def decode_buffers(buffers: Any) -> list[bytes]:
    """The inverse of encode_buffers; anything that is not strict base64 is a WireError."""
    try:
        return [base64.b64decode(b, validate=True) for b in buffers or []]
    except (binascii.Error, ValueError, TypeError):
        raise WireError("a comm buffer is not valid base64") from None


def _check_comm(msg: Mapping[str, Any]) -> None:
    if msg["msg_type"] not in COMM_MSG_TYPES:
        raise WireError(f"unknown comm message type {msg['msg_type']!r}")
    if not isinstance(msg["content"].get("comm_id"), str):
        raise WireError("comm message lacks a string comm_id")
    if msg["msg_type"] == "comm_open" and not isinstance(msg["content"].get("target_name"), str):
        raise WireError("comm_open lacks a string target_name")
    if not all(isinstance(b, str) for b in msg["buffers"]):
        raise WireError("comm buffers must be base64 strings")


#: Bounds on the worker's ``usage`` reply, which the kernel passes on to the frontend.
USAGE_MAX_DEVICES = 256
USAGE_MAX_TEXT = 200
USAGE_MAX_BYTES = 1 << 60  # an exabyte: no device memory figure is larger
USAGE_MEMORY_FIELDS = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
USAGE_JAX_STATES = frozenset({"ok", "not_started"})


def _bounded_int(value: Any, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise WireError(f"usage reply: {what} is not an integer in [0, {limit}]")
    return value


def _bounded_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > USAGE_MAX_TEXT:
        raise WireError(f"usage reply: {what} is not a string of at most {USAGE_MAX_TEXT} characters")
    return value


def validate_usage_reply(content: Mapping[str, Any]) -> dict[str, Any]:
    """Check the worker's ``usage`` reply and copy out only the known fields.

    ``{"jax": "ok" | "not_started", "devices": [{"id", "platform", "kind", "bytes_in_use",
    "peak_bytes_in_use", "bytes_limit"}]}``; the memory fields are absent where the device keeps
    no statistics (CPU).  Anything else, or anything out of bounds, is a WireError.
    """
    jax_state = content.get("jax")
    if jax_state not in USAGE_JAX_STATES:
        raise WireError(f"usage reply: unknown jax state {jax_state!r}")
    devices = content.get("devices", [])
    if not isinstance(devices, list) or len(devices) > USAGE_MAX_DEVICES:
        raise WireError(f"usage reply: devices is not a list of at most {USAGE_MAX_DEVICES}")
    checked = []
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            raise WireError(f"usage reply: device {i} is not an object")
        entry: dict[str, Any] = {
            "id": _bounded_int(device.get("id"), f"device {i} id", 1 << 31),
            "platform": _bounded_text(device.get("platform"), f"device {i} platform"),
            "kind": _bounded_text(device.get("kind"), f"device {i} kind"),
        }
        for field in USAGE_MEMORY_FIELDS:
            if device.get(field) is not None:
                entry[field] = _bounded_int(device[field], f"device {i} {field}", USAGE_MAX_BYTES)
        checked.append(entry)
    return {"jax": jax_state, "devices": checked}


class Connection:
    """A framed, thread-safe-for-sending JSON channel over a connected stream socket.

    Receiving keeps its partial frame in ``self._buf`` between calls so that a
    ``KeyboardInterrupt`` raised between two reads never desynchronises the stream.
    """

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
                    return decode(self._unseal(body))
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


class AuthenticationError(WireError):
    """A frame that fails authentication: not from the peer, altered, replayed or reordered."""


class SealedConnection(Connection):
    """A :class:`Connection` whose frames are encrypted and authenticated (ChaCha20-Poly1305).

    For set members, whose wire is TCP and may cross hosts: cells' code and outputs must not be
    readable or forgeable on the network.  Each connection has its own key, HMAC-SHA256(set key,
    nonce the kernel sends first), and each direction numbers its frames; the AEAD nonce is the
    side and the number, so a frame from another connection, an altered one, a replayed one, one
    out of order or one reflected back fails :class:`AuthenticationError`, which the kernel treats
    as the member being lost.  ``side`` is ``b"K"`` (kernel) or ``b"W"`` (worker).
    The AEAD is the ``cryptography`` package's, not ours: a cipher is not something to write.
    """

    TAG_BYTES = 16

    def __init__(
        self, sock: socket.socket, key: bytes, nonce: bytes, side: bytes, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        super().__init__(sock, max_frame=max_frame + self.TAG_BYTES)
        self._side = side
        self._peer = b"W" if side == b"K" else b"K"
        self._sent = 0
        self._received = 0
        self._set_key(hmac.new(key, nonce, hashlib.sha256).digest())

    def _set_key(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._key = key
        self._aead = ChaCha20Poly1305(key)

    @classmethod
    def resume(
        cls, sock: socket.socket, state: Mapping[str, Any], side: bytes, max_frame: int = DEFAULT_MAX_FRAME
    ) -> SealedConnection:
        """The same connection in a new process image (a member re-executes itself, see
        ``jax_kernel.worker.member``), from what :meth:`state` saved."""
        conn = cls(sock, b"", b"", side, max_frame=max_frame)
        conn._set_key(bytes.fromhex(state["key"]))
        conn._sent, conn._received = int(state["sent"]), int(state["received"])
        conn._buf = bytearray.fromhex(state["buffer"])
        return conn

    def state(self) -> dict[str, Any]:
        """What :meth:`resume` needs: the session key, both sequence numbers, unread bytes."""
        return {
            "key": self._key.hex(),
            "sent": self._sent,
            "received": self._received,
            "buffer": self._buf.hex(),
        }

    @staticmethod
    def _nonce(side: bytes, seq: int) -> bytes:
        return side + b"\0\0\0" + seq.to_bytes(8, "big")

    def _seal(self, frame: bytes) -> bytes:
        # Called under the send lock: the sequence number and the bytes on the wire stay in step.
        sealed = self._aead.encrypt(self._nonce(self._side, self._sent), frame[HEADER.size :], None)
        self._sent += 1
        return HEADER.pack(len(sealed)) + sealed

    def _unseal(self, body: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            payload = self._aead.decrypt(self._nonce(self._peer, self._received), body, None)
        except InvalidTag:
            raise AuthenticationError(f"frame {self._received} failed authentication") from None
        self._received += 1
        return payload


def new_nonce() -> bytes:
    """A fresh per-connection nonce (the kernel sends it raw as the first bytes of a connection)."""
    import secrets

    return secrets.token_bytes(NONCE_BYTES)
