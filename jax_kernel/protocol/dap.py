"""Debug Adapter Protocol messages from the worker's debugger: known fields only, bounded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .checks import is_a
from .framing import WireError

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


def response(request: Mapping[str, Any], success: bool, **fields: Any) -> dict[str, Any]:
    """A DAP response to ``request``, numbered as the frontend numbered it (0 if it did not); both
    the kernel's relay and the worker's debugger answer with it when pydevd cannot."""
    seq, command = request.get("seq"), request.get("command")
    return {
        "type": "response",
        "request_seq": seq if is_a(seq, int) else 0,
        "success": success,
        "command": command if isinstance(command, str) else "",
        **fields,
    }


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
        if not is_a(value, ftype):
            raise WireError(f"field {field!r} of a DAP {kind} has type {type(value).__name__}")
        clean[field] = value
    try:
        size = len(json.dumps(clean, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise WireError(f"DAP {kind} is not plain JSON") from None
    if size > MAX_DAP_BYTES:
        raise WireError(f"DAP {kind} of {size} bytes exceeds the {MAX_DAP_BYTES}-byte limit")
    return clean
