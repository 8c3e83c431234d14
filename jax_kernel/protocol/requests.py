"""What the kernel may send the worker: request types, their fields, and the check of each.

The worker trusts the kernel, but not every byte that reaches it: a request of a shape the worker
does not expect (a kernel of another version, a bug) must become an error reply or a logged drop,
never a crash of the reader thread or of the cell loop.  The worker runs
:func:`validate_kernel_request` on every frame it receives (``Connection.check``).
"""

from __future__ import annotations

from typing import Any

from .checks import is_count
from .framing import WireError
from .schema import check_fields

_Spec = dict[str, type | tuple[type, ...]]
_NONE = type(None)

#: The JAX entry points' requests.  Each is also a custom Jupyter shell message:
#: ``<kind>_request`` from a frontend becomes the wire request ``<kind>``, answered by ``<kind>_reply``.
#: Their fields are checked by :mod:`jax_kernel.protocol.jaxspec` on both sides.
JAX_REQUESTS = frozenset({"jax_load", "jax_transform", "jax_program"})

#: Requests the kernel sends to the worker, with their required fields and types (every request
#: also has an integer ``id``: 0 for those that get no reply).  Optional fields are in
#: :data:`KERNEL_OPTIONAL_FIELDS`; other fields (a frontend's own) pass unchecked.
KERNEL_REQUESTS: dict[str, _Spec] = {
    "execute": {"code": str},
    "complete": {"code": str},
    "inspect": {"code": str},
    "is_complete": {"code": str},
    "history": {},
    "info": {},
    "input_reply": {},
    "shutdown": {},
    "activate": {},  # a standby worker takes up a job: its config (a WorkerConfig) and environment
    "comm": {"msg_type": str, "content": dict},
    "comm_info": {},
    "debug": {"content": dict},  # one DAP request from the frontend's debug_request
    "usage": {},
    "interrupt": {},  # a set member: raise KeyboardInterrupt in the running cell (no signal crosses hosts)
    "heartbeat": {},  # a set member: the kernel is alive
    "setup": {"config": dict, "env": dict},  # a set member: its config and environment, answered by "ready"
    "selftest_done": {},  # the self-test the worker asked for ended: its exit status
    "reap": {},  # pids the kernel killed after a cell hit the task limit: wait for them (no zombies)
    "subshell": {"action": str, "subshell_id": str},  # JEP 91: start ("create") or stop its thread
    **{kind: {} for kind in JAX_REQUESTS},
}

#: The optional field of a user-code request that carries the frontend message it was made for
#: (:func:`parent_for_worker`): ``get_ipython().get_parent()`` in the worker returns it, so Output
#: widgets, ``interact`` and thread-local parents work as in ipykernel.
PARENT_FIELD = "parent"

#: Requests that run user code (cells, widget callbacks, the JAX entry points): they carry their
#: frontend parent, an interrupt and its grace period apply to them, and what is printed later
#: (a thread, a late flush) belongs to one of them, never to a completion or history request.
USER_CODE_REQUESTS = frozenset({"execute", "comm"} | JAX_REQUESTS)

#: How many answered user-code requests each side remembers: the kernel their origins, the worker
#: their parents, so that a thread or task that chose an earlier cell still prints there.
REMEMBERED_REQUESTS = 256

KERNEL_OPTIONAL_FIELDS: dict[str, _Spec] = {
    "execute": {
        "silent": bool,
        "store_history": bool,
        "user_expressions": dict,
        "allow_stdin": bool,
        "output_limit": int,
        "compile_notice_after": (int, float),
        "array_view": bool,
    },
    "complete": {"cursor_pos": (int, _NONE)},
    "inspect": {"cursor_pos": int, "detail_level": int, "omit_sections": list},
    "history": {
        "hist_access_type": (str, _NONE),
        "output": (bool, _NONE),
        "raw": (bool, _NONE),
        "session": (int, _NONE),
        "start": (int, _NONE),
        "stop": (int, _NONE),
        "n": (int, _NONE),
        "pattern": (str, _NONE),
        "unique": (bool, _NONE),
    },
    "input_reply": {"value": str},
    "activate": {"config": dict, "env": dict},
    "comm": {"metadata": dict, "buffers": list},
    "comm_info": {"target_name": (str, _NONE)},
    "selftest_done": {"status": int},
    "reap": {"pids": list},
}

for _kind in USER_CODE_REQUESTS:
    KERNEL_OPTIONAL_FIELDS.setdefault(_kind, {})[PARENT_FIELD] = dict

#: Questions a subshell may ask beside a running cell: ``subshell_id`` names the worker thread that
#: answers them (user-code requests name theirs in the parent's header).
SUBSHELL_QUESTIONS = frozenset({"complete", "inspect", "is_complete", "history", "comm_info"})
for _kind in SUBSHELL_QUESTIONS:
    KERNEL_OPTIONAL_FIELDS.setdefault(_kind, {})["subshell_id"] = str

#: What a ``subshell`` request may ask.
SUBSHELL_ACTIONS = frozenset({"create", "delete"})

#: Requests the worker answers on a thread of their own, even while a cell runs.
CONCURRENT_REQUESTS = frozenset({"usage", "subshell"})

#: Requests whose reply is a ``reply`` message carrying their ``id``; a malformed one is answered
#: with an error reply, so that the kernel's wait for it ends.  (The others are dropped.)
ANSWERED_REQUESTS = frozenset(
    {"execute", "complete", "inspect", "is_complete", "history", "info", "comm", "comm_info"}
    | {"shutdown", "reap", "usage", "subshell"}
    | JAX_REQUESTS
)


def validate_kernel_request(msg: dict[str, Any]) -> dict[str, Any]:
    """Check a decoded request from the kernel against :data:`KERNEL_REQUESTS`; WireError if it breaks it."""
    spec = KERNEL_REQUESTS.get(msg["type"])
    if spec is None:
        raise WireError(f"unknown request type {msg['type']!r}")
    check_fields(msg, {"id": int, **spec}, required=True)
    check_fields(msg, KERNEL_OPTIONAL_FIELDS.get(msg["type"], {}), required=False)
    if msg["id"] < 0:
        raise WireError(f"{msg['type']!r} request has a negative id")
    if PARENT_FIELD in msg:
        _check_parent(msg[PARENT_FIELD])
    return msg


def parent_for_worker(
    header: dict[str, Any],
    parent_header: dict[str, Any],
    metadata: dict[str, Any],
    ident: list[bytes],
    control: tuple[dict[str, Any], list[bytes]] | None = None,
) -> dict[str, Any]:
    """The ``parent`` field of a user-code request: the frontend message's header, its parent
    header and metadata (JSON: dates as ISO strings) and the routing identities, latin-1 decoded.
    Not the content: the request carries that itself, once."""
    out = {
        "header": _json_header(header),
        "parent_header": _json_header(parent_header),
        "metadata": metadata,
        "ident": [bytes(i).decode("latin-1") for i in ident],
    }
    if control is not None:
        out["control"] = {
            "header": _json_header(control[0]),
            "ident": [bytes(i).decode("latin-1") for i in control[1]],
        }
    return out


def _json_header(header: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in (header or {}).items()}


def _check_parent(parent: dict[str, Any]) -> None:
    for key in ("header", "parent_header", "metadata"):
        if not isinstance(parent.get(key, {}), dict):
            raise WireError(f"field {PARENT_FIELD!r}.{key} is not an object")
    if not isinstance(parent.get("header", {}).get("msg_id", ""), str):
        raise WireError(f"field {PARENT_FIELD!r}.header.msg_id is not a string")
    for where in (parent, parent.get("control") or {}):
        if not isinstance(where, dict) or not all(isinstance(i, str) for i in where.get("ident", [])):
            raise WireError(f"field {PARENT_FIELD!r} has a malformed ident")


def error_reply(msg: dict[str, Any], error: WireError) -> dict[str, Any] | None:
    """The error reply a malformed request gets, or None where none is due (no usable id, or a
    request that is not answered by a ``reply``)."""
    req_id = msg.get("id")
    if msg.get("type") not in ANSWERED_REQUESTS or not is_count(req_id) or req_id == 0:
        return None
    content = {"status": "error", "ename": "WireError", "evalue": str(error), "traceback": []}
    return {"type": "reply", "id": req_id, "content": content}
