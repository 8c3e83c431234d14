"""Fuzzing the kernel's side of the wire: whatever the (hostile) worker sends, the decoder
either yields a schema-valid message or raises a WireError.  It never crashes with anything
else, never blocks past its timeout, and never holds more than one bounded frame in memory.
"""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jax_kernel.protocol import wire

MAX_FRAME = 4096
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    sorted({f for spec in wire.WORKER_MESSAGES.values() for f in spec} | {"type", "x"})
)


@st.composite
def type_confused(draw: st.DrawFn) -> dict:
    """A message of a real type whose fields are any JSON at all (often the wrong kind)."""
    kind = draw(st.sampled_from(sorted(wire.WORKER_MESSAGES)))
    msg = {"type": kind}
    for f in wire.WORKER_MESSAGES[kind]:
        if draw(st.booleans()):
            msg[f] = draw(json_values)
    msg.update(draw(st.dictionaries(field_names, json_values, max_size=3)))
    msg["type"] = draw(st.sampled_from([kind, kind, 5, None, "exec", ""]))
    return msg


def _check_decoded(body: bytes) -> None:
    try:
        msg = wire.decode(body)
        wire.validate_worker_message(msg)
    except wire.WireError:
        return
    # Whatever passed is exactly what the schema promises.
    spec = wire.WORKER_MESSAGES[msg["type"]]
    for f, kind in spec.items():
        assert isinstance(msg[f], kind) and not (isinstance(msg[f], bool) and kind is not bool)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(body: bytes) -> None:
    _check_decoded(body)


@FUZZ
@given(type_confused())
def test_type_confused_messages_are_rejected_or_valid(msg: dict) -> None:
    _check_decoded(json.dumps(msg).encode())


@FUZZ
@given(type_confused(), st.integers(min_value=0, max_value=200))
def test_truncated_frames_are_rejected_or_valid(msg: dict, cut: int) -> None:
    body = json.dumps(msg).encode()
    _check_decoded(body[: max(len(body) - cut, 0)])


def test_deep_nesting_is_a_wire_error_not_a_recursion_crash() -> None:
    with pytest.raises(wire.WireError):
        wire.decode(b"[" * 100_000 + b"]" * 100_000)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """A byte stream as a worker might send it: good frames, garbage, lies about lengths, cut anywhere."""
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            parts.append(
                wire.encode({"type": "stream", "name": "stdout", "text": draw(st.text(max_size=50))})
            )
        elif choice == 1:
            parts.append(wire.encode(draw(type_confused())))
        elif choice == 2:  # an oversized frame, announced and (partly) sent
            size = draw(st.integers(MAX_FRAME + 1, 1 << 31))
            parts.append(struct.pack(">I", size) + b"x" * min(size, draw(st.integers(0, 3 * MAX_FRAME))))
        else:
            parts.append(draw(st.binary(max_size=64)))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@FUZZ
@given(streams())
def test_connection_survives_any_byte_stream(chunks: list[bytes]) -> None:
    a, b = socket.socketpair()
    conn = wire.Connection(a, max_frame=MAX_FRAME)

    def write() -> None:
        for c in chunks:
            b.sendall(c)
        b.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(10_000):  # bounded: every call consumes input or ends
            try:
                msg = conn.recv(timeout=2.0)
            except EOFError:
                break
            except wire.WireError:
                continue
            assert msg is not None, "recv blocked for 2 s on a stream that was fully sent"
            try:
                wire.validate_worker_message(msg)
            except wire.WireError:
                pass
            # Memory stays bounded: at most one frame plus one read's worth is buffered.
            assert len(conn._buf) <= MAX_FRAME + wire.HEADER.size + (1 << 20)
        else:
            pytest.fail("the decoder did not reach the end of a finite stream")
    finally:
        writer.join(5)
        conn.close()
