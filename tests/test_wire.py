"""The kernel treats the worker as hostile: floods, garbage and oversized frames never hurt it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


@pytest.mark.parametrize("kind", sorted(wire.REQUEST_TAGGED))
def test_outputs_may_name_the_request_they_answer(kind: str) -> None:
    """The optional ``request`` field: the id of the kernel request an output answers."""
    samples = {
        "stream": {"name": "stdout", "text": "x"},
        "display_data": {"data": {}, "metadata": {}},
        "update_display_data": {"data": {}, "metadata": {}},
        "clear_output": {"wait": False},
        "execute_result": {"execution_count": 1, "data": {}, "metadata": {}},
        "error": {"ename": "E", "evalue": "v", "traceback": []},
        "comm": {"msg_type": "comm_msg", "content": {"comm_id": "c"}, "metadata": {}, "buffers": []},
        "input_request": {"prompt": "?", "password": False},
    }
    msg = {"type": kind, **samples[kind]}
    assert wire.validate_worker_message(dict(msg)) == msg  # untagged, as before
    for request in (0, 7):
        assert wire.validate_worker_message({**msg, "request": request})["request"] == request
    for bad in ("7", True, False, -1, 1.0, None):
        with pytest.raises(wire.WireError, match="request"):
            wire.validate_worker_message({**msg, "request": bad})


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


def test_the_worker_checks_every_request_from_the_kernel() -> None:
    """The kernel -> worker direction is validated too: type known, fields of the right types."""
    assert wire.validate_kernel_request({"type": "execute", "id": 3, "code": "1", "silent": False})
    assert wire.validate_kernel_request({"type": "execute", "id": 3, "code": "1", "frontend_extra": []})
    bad = [
        {"type": "no_such_request", "id": 1},
        {"type": "execute", "code": "1"},  # no id
        {"type": "execute", "id": True, "code": "1"},
        {"type": "execute", "id": -1, "code": "1"},
        {"type": "execute", "id": 1, "code": 5},
        {"type": "execute", "id": 1, "code": "1", "silent": "no"},
        {"type": "comm", "id": 1, "msg_type": "comm_msg", "content": []},
        {"type": "activate", "id": 0, "config": "x"},
    ]
    for msg in bad:
        with pytest.raises(wire.WireError):
            wire.validate_kernel_request(msg)
    # An answered request gets an error reply (the kernel's wait ends); the others are only dropped.
    reply = wire.error_reply({"type": "complete", "id": 7}, wire.WireError("x"))
    assert reply is not None and reply["id"] == 7 and reply["content"]["status"] == "error"
    assert wire.validate_worker_message(reply) == reply
    assert wire.error_reply({"type": "input_reply", "id": 0}, wire.WireError("x")) is None
    assert wire.error_reply({"type": "complete", "id": "7"}, wire.WireError("x")) is None


def test_a_malformed_request_is_answered_with_an_error_and_the_worker_goes_on() -> None:
    parent, child = socket.socketpair()
    config_fd = os.memfd_create("config")
    os.write(config_fd, json.dumps({"parent_pid": os.getpid()}).encode())
    os.lseek(config_fd, 0, os.SEEK_SET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jax_kernel.worker", str(child.fileno()), f"@{config_fd}"],
        pass_fds=(child.fileno(), config_fd),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    child.close()
    os.close(config_fd)
    conn = wire.Connection(parent)
    try:
        while (msg := conn.recv(timeout=60)) is not None and msg["type"] != "ready":
            pass
        assert msg is not None
        conn.send({"type": "is_complete", "id": 5, "code": 42})
        reply = conn.recv(timeout=30)
        assert reply is not None and reply["id"] == 5 and reply["content"]["status"] == "error"
        assert "'code'" in reply["content"]["evalue"]
        conn.send({"type": "is_complete", "id": 6, "code": "for i in range(3):"})
        reply = conn.recv(timeout=30)
        assert reply is not None and reply["id"] == 6 and reply["content"]["status"] == "incomplete"
        conn.send({"type": "shutdown", "id": 7})
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "dropped a malformed 'is_complete' request" in proc.stderr.read().decode()
    finally:
        proc.kill()
        conn.close()


@pytest.mark.parametrize(
    ("config", "line"),
    [
        ({"flush_intervall": 1}, "config has an unknown key 'flush_intervall'"),
        ({"max_frame": "big"}, "config['max_frame'] has type str, not int"),
        ({"sandbox": {"profile": "standard", "fs": {"hidden": [3]}}}, "config['sandbox']['fs']['hidden'][0]"),
    ],
)
def test_a_worker_with_a_bad_config_exits_with_one_line_naming_the_key(config: dict, line: str) -> None:
    config_fd = os.memfd_create("config")
    os.write(config_fd, json.dumps(config).encode())
    os.lseek(config_fd, 0, os.SEEK_SET)
    a, b = socket.socketpair()
    with a, b:
        out = subprocess.run(
            [sys.executable, "-m", "jax_kernel.worker", str(b.fileno()), f"@{config_fd}"],
            pass_fds=(b.fileno(), config_fd),
            capture_output=True,
            text=True,
            timeout=60,
        )
    os.close(config_fd)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("jax-kernel worker: bad config from the kernel: ") and line in lines[0]


def test_the_worker_config_is_typed() -> None:
    from jax_kernel.protocol.config import ConfigError, check_worker_config

    good = {
        "parent_pid": 1,
        "standby": False,
        "memory_cap": 0,
        "cpu_affinity": [0, 1],
        "sandbox": {"profile": "off"},
        "member": {"index": 0, "count": 2, "heartbeat": 1.0, "table": [{"index": 0, "host": "h", "pid": 9}]},
    }
    assert check_worker_config(good) == good
    for bad in ({"standby": 1}, {"cpu_affinity": [True]}, {"sandbox": {"fs": {"private_tmp": {"dir": "x"}}}}):
        with pytest.raises(ConfigError):
            check_worker_config(bad)
