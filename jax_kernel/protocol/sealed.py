"""The sealed wire: frames encrypted and authenticated, for set members whose wire is TCP."""

from __future__ import annotations

import hashlib
import hmac
import socket
from collections.abc import Mapping
from typing import Any

from .framing import DEFAULT_MAX_FRAME, HEADER, Connection, WireError

#: Bytes of the per-connection nonce the kernel sends first on a set member's TCP connection.
NONCE_BYTES = 16


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
