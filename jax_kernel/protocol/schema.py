"""What the worker may send the kernel: message types, their fields, and the check of each.

The kernel acts on nothing from the (untrusted) worker before :func:`validate_worker_message` has
passed it; both sides import these tables, so a field added here is added for both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .checks import is_a, is_count
from .dap import check_dap
from .framing import WireError

#: Bumped whenever a message changes shape; both sides refuse a mismatch.
PROTOCOL_VERSION = 5

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
    # The worker's variables (jax_kernel.protocol.state): the snapshot it last committed, and what
    # a fresh worker restored from its predecessor's; summaries only, never the saved values.
    "state": {"summary": dict},
    "restored": {"report": dict},
}

OPTIONAL_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "display_data": {"transient": dict},
    "update_display_data": {"transient": dict},
    "ready": {"python": str, "jax_version": str, "sandbox": dict},
    "reply": {"output_mode": str},  # %jax_output in a set of processes: "all" or an index
    "state": {"enabled": bool},  # %jax_state --off / --on: whether this notebook's workers snapshot
}

#: Output messages the kernel publishes or relays, each of which may carry the optional field
#: ``request``: the ``id`` of the kernel request it answers (an int >= 0), so that output is routed
#: by what it answers rather than by which cell happens to be running.  Kept out of
#: :data:`OPTIONAL_FIELDS` because those are copied into the IOPub content; this one is the kernel's.
REQUEST_TAGGED = frozenset(
    {
        "stream",
        "display_data",
        "update_display_data",
        "clear_output",
        "execute_result",
        "error",
        "comm",
        "input_request",
    }
)
REQUEST_FIELD = "request"

STREAM_NAMES = frozenset({"stdout", "stderr"})


def error_line(ename: str, evalue: str) -> str:
    """The first line of an ``error`` message's traceback, coloured as IPython colours an
    exception's name; the kernel and the worker both end a failed request with one."""
    return f"\x1b[0;31m{ename}\x1b[0m: {evalue}"


def check_fields(msg: Mapping[str, Any], spec: Mapping[str, Any], required: bool) -> None:
    """Raise WireError for a field of ``spec`` that is missing (if ``required``) or of another type."""
    for field, kind in spec.items():
        if field not in msg:
            if required:
                raise WireError(f"{msg['type']!r} message lacks field {field!r}")
            continue
        value = msg[field]
        if not is_a(value, kind):
            raise WireError(f"field {field!r} of {msg['type']!r} has type {type(value).__name__}")


def _check_request_tag(msg: Mapping[str, Any]) -> None:
    tag = msg[REQUEST_FIELD]
    if not is_count(tag):
        raise WireError(f"field {REQUEST_FIELD!r} of {msg['type']!r} is not an integer >= 0")


def validate_worker_message(msg: dict[str, Any]) -> dict[str, Any]:
    """Check a decoded message from the (untrusted) worker against the schema."""
    spec = WORKER_MESSAGES.get(msg["type"])
    if spec is None:
        raise WireError(f"unknown message type {msg['type']!r}")
    check_fields(msg, spec, required=True)
    check_fields(msg, OPTIONAL_FIELDS.get(msg["type"], {}), required=False)
    if msg["type"] in REQUEST_TAGGED and REQUEST_FIELD in msg:
        _check_request_tag(msg)
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
