"""The kernel treats the worker as hostile: floods, garbage and oversized frames never hurt it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Kernel, start_kernel, stop_kernel

from jax_kernel.protocol import wire

# Cell code that finds the worker's end of the wire (its fd from the command line) and writes raw frames on it.
INJECT = """
import os, json, struct, sys
sys.stdout.flush(); sys.stderr.flush()
def _socket_fd() -> int:
    # The worker is started as `python -m jax_kernel.worker FD CONFIG`: FD is its end of the wire.
    args = open('/proc/self/cmdline').read().split('\\0')
    return int(args[args.index('jax_kernel.worker') + 1])
_fd = _socket_fd()
def frame(body: bytes) -> None:
    os.write(_fd, struct.pack('>I', len(body)) + body)
"""

SMALL_LIMIT = 200_000


@pytest.fixture(scope="module")
def small_kernel() -> Iterator[Kernel]:
    """A kernel with small output and message limits, so floods are quick to provoke."""
    km, kc = start_kernel(
        extra_arguments=[
            f"--JaxKernel.output_limit={SMALL_LIMIT}",
            "--WorkerManager.max_message_bytes=1000000",
        ]
    )
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def test_huge_print_is_truncated_with_a_notice(kernel: Kernel) -> None:
    res = kernel.ok("print('x' * 300_000_000)", timeout=120)
    assert 19_000_000 <= len(res.stdout) <= 20_000_000
    assert "output truncated" in res.stderr and "JaxKernel.output_limit" in res.stderr
    assert kernel.ok("'alive'").of("execute_result")


def test_output_limit_is_configurable(small_kernel: Kernel) -> None:
    res = small_kernel.ok("for i in range(100_000):\n    print('line', i)")
    assert len(res.stdout) <= SMALL_LIMIT
    assert "output truncated" in res.stderr


def _display_chars(res) -> int:  # noqa: ANN001 - a conftest Result
    return sum(len(d["data"].get("text/plain", "")) for d in res.of("display_data"))


def test_displays_and_streams_share_one_output_budget(small_kernel: Kernel) -> None:
    # 100 displays of 10,000 characters: five times the budget, once through display() and
    # once through frames a worker that ignores the budget writes straight on the wire.
    res = small_kernel.ok("for i in range(100):\n    display({'text/plain': 'x' * 10_000}, raw=True)")
    assert 0 < _display_chars(res) <= SMALL_LIMIT
    assert "outputs left out whole" in res.stderr and "JaxKernel.output_limit" in res.stderr
    res = small_kernel.ok(
        INJECT + "body = json.dumps({'type': 'display_data', 'data': {'text/plain': 'z' * 10_000}, "
        "'metadata': {}, 'transient': {}}).encode()\n"
        "for _ in range(100):\n    frame(body)\n"
    )
    assert 0 < _display_chars(res) <= SMALL_LIMIT and "outputs left out whole" in res.stderr
    # Text already printed counts too: a cell near its limit in prints gets fewer displays.
    res = small_kernel.ok(
        "print('p' * 150_000)\nfor i in range(10):\n    display({'text/plain': 'x' * 10_000}, raw=True)"
    )
    assert len(res.stdout) + _display_chars(res) <= SMALL_LIMIT + 1024  # the room for the notice
    assert small_kernel.ok("display({'text/plain': 'next cell'}, raw=True)").of("display_data")


def test_a_widget_message_after_a_flooded_cell_still_gets_through(small_kernel: Kernel) -> None:
    small_kernel.ok("for i in range(100):\n    display({'text/plain': 'x' * 10_000}, raw=True)")
    res = small_kernel.ok("display({'text/plain': 'fine'}, raw=True)")
    assert [d["data"]["text/plain"] for d in res.of("display_data")] == ["fine"]


def test_kernel_backstop_limits_a_worker_that_ignores_the_budget(small_kernel: Kernel) -> None:
    res = small_kernel.ok(
        INJECT + "chunk = json.dumps({'type': 'stream', 'name': 'stdout', 'text': 'y' * 60000}).encode()\n"
        "for _ in range(40):\n    frame(chunk)\n"
    )
    assert SMALL_LIMIT <= res.stdout.count("y") <= SMALL_LIMIT + 1024
    assert "output truncated" in res.stderr


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b"[1, 2, 3]",
        b'{"no_type": 1}',
        b'{"type": "exec", "code": "print(1)"}',
        b'{"type": "stream", "name": "stdout", "text": 5}',
        b'{"type": "stream", "name": "/etc/passwd", "text": "x"}',
        b'{"type": "display_data", "data": "not a bundle", "metadata": {}}',
        b'{"type": "reply", "id": true, "content": {}}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe\x00 binary garbage",
        b'{"type": "comm", "msg_type": "comm_exec", "content": {"comm_id": "c"}, "metadata": {}, "buffers": []}',
        b'{"type": "comm", "msg_type": "comm_msg", "content": {}, "metadata": {}, "buffers": []}',
        b'{"type": "comm", "msg_type": "comm_msg", "content": {"comm_id": "c"}, "metadata": {}, "buffers": [1]}',
    ],
    ids=[
        "text",
        "list",
        "no-type",
        "unknown-type",
        "bad-field",
        "bad-stream",
        "bad-bundle",
        "bool-id",
        "deep-nesting",
        "binary",
        "comm-type",
        "comm-no-id",
        "comm-buffer",
    ],
)
def test_malformed_frames_are_dropped_and_reported(kernel: Kernel, body: bytes) -> None:
    kernel.ok("wire_state = 'intact'")
    res = kernel.ok(INJECT + f"frame({body!r})\nprint('after garbage')")
    assert "after garbage" in res.stdout
    assert "dropped a malformed message" in res.stderr
    assert kernel.ok("wire_state").of("execute_result")[0]["data"]["text/plain"] == "'intact'"


def test_oversized_frame_is_discarded_without_losing_the_stream(small_kernel: Kernel) -> None:
    res = small_kernel.ok(
        INJECT + "frame(json.dumps({'type': 'stream', 'name': 'stdout', 'text': 'z' * 2_000_000}).encode())\n"
        "print('still in sync')"
    )
    assert "still in sync" in res.stdout
    assert "z" * 1000 not in res.stdout
    assert "exceeds the 1000000-byte limit" in res.stderr
    assert small_kernel.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"


def test_forged_reply_to_an_unknown_request_is_ignored(kernel: Kernel) -> None:
    res = kernel.ok(
        INJECT + "frame(json.dumps({'type': 'reply', 'id': 999999, 'content': {}}).encode())\n'ok'"
    )
    assert res.of("execute_result")[0]["data"]["text/plain"] == "'ok'"


def test_wire_round_trip_and_schema() -> None:
    msg = {"type": "stream", "name": "stdout", "text": "héllo"}
    frame = wire.encode(msg)
    assert wire.HEADER.unpack_from(frame)[0] == len(frame) - wire.HEADER.size
    assert wire.validate_worker_message(wire.decode(frame[wire.HEADER.size :])) == msg
    with pytest.raises(wire.WireError):
        wire.validate_worker_message(
            {"type": "execute_result", "execution_count": True, "data": {}, "metadata": {}}
        )


def test_comm_with_a_buffer_that_is_not_base64_is_dropped(kernel: Kernel) -> None:
    bad = {
        "type": "comm",
        "msg_type": "comm_msg",
        "content": {"comm_id": "c"},
        "metadata": {},
        "buffers": ["%%"],
    }
    res = kernel.ok(INJECT + f"frame(json.dumps({bad!r}).encode())\n'still here'")
    assert "malformed buffer" in res.stderr
    assert not res.of("comm_msg")
    assert res.of("execute_result")[0]["data"]["text/plain"] == "'still here'"


def test_sealed_wire_hides_and_authenticates_every_frame() -> None:
    """A set member's TCP wire: nothing readable on the network, and no frame accepted out of place."""
    import socket

    key, nonce = b"k" * 32, b"n" * wire.NONCE_BYTES
    a, b = socket.socketpair()
    kernel = wire.SealedConnection(a, key, nonce, b"K")
    worker = wire.SealedConnection(b, key, nonce, b"W")
    kernel.send({"type": "execute", "id": 1, "code": "secret_token = 42"})
    raw = b.recv(1 << 16)
    assert b"secret_token" not in raw and b"execute" not in raw
    worker._buf += raw
    assert worker.recv(timeout=1)["code"] == "secret_token = 42"
    # The same bytes again (a replay), a flipped bit, and the worker's own frame reflected back all fail.
    for forged in (raw, raw[:-1] + bytes([raw[-1] ^ 1])):
        worker._buf += forged
        with pytest.raises(wire.AuthenticationError):
            worker.recv(timeout=1)
    worker.send({"type": "heartbeat"})
    echoed = a.recv(1 << 16)
    other = wire.SealedConnection(*socket.socketpair()[:1], key, nonce, b"W")
    other._buf += echoed
    with pytest.raises(wire.AuthenticationError):
        other.recv(timeout=1)  # a worker does not accept a worker's frame
    stranger = wire.SealedConnection(*socket.socketpair()[:1], b"x" * 32, nonce, b"K")
    stranger._buf += echoed
    with pytest.raises(wire.AuthenticationError):
        stranger.recv(timeout=1)  # nor does anyone without the key


def test_what_a_cell_writes_to_the_workers_stderr_fills_no_log(tmp_path) -> None:  # noqa: ANN001
    """The worker's own fd 2 goes to the kernel's log: a cell must not fill the server's log
    (20 MB once added 27.8 MB of WARNING lines) nor drive the terminal reading it."""
    from conftest import KERNEL_NAME, TIMEOUT
    from jupyter_client.manager import KernelManager

    log = tmp_path / "kernel.log"
    km = KernelManager(kernel_name=KERNEL_NAME)
    with open(log, "wb") as f:
        km.start_kernel(stderr=f)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        k = Kernel(km, kc)
        # fd 2 is the cell's stderr stream; the original, the kernel's diagnostic pipe, is a dup
        # (for faulthandler) that a cell finds among its open pipes.
        k.ok(
            "import os\n"
            "def writable_pipe(fd):\n"
            "    try:\n"
            "        flags = int(open(f'/proc/self/fdinfo/{fd}').read().split()[3], 8)\n"
            "        return os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:') and flags & 3 == 1\n"
            "    except OSError:\n"
            "        return False\n"
            "fds = [int(fd) for fd in os.listdir('/proc/self/fd') if int(fd) > 2 and writable_pipe(fd)]\n"
            "assert fds\n"
            "for i in range(20_000):\n"
            "    for fd in fds:\n"
            "        os.write(fd, b'\\x1b[31mflood ' + b'y' * 1000 + b'\\n')\n"
        )
        assert k.ok("6 * 7").of("execute_result")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    text = log.read_bytes()
    assert text.count(b"flood ") <= 5, len(text)
    assert len(text) < 64 * 1024, len(text)
    assert b"\x1b[31m" not in text
    assert b"more bytes of stderr were not logged" in text or b"further stderr is not logged" in text
