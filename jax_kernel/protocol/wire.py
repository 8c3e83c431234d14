"""The one definition of the kernel <-> worker wire, imported by both sides.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
holding one object with a ``type`` field.  JSON only: the kernel treats every byte
from the worker as hostile, so nothing here can execute code on decode (no pickle),
every frame is size-bounded before it is read into memory, and every message is
checked against :data:`WORKER_MESSAGES` before the kernel acts on it; the worker checks
every request against :data:`KERNEL_REQUESTS` in turn.

The parts live next to this module: :mod:`.framing` (frames, :class:`Connection`),
:mod:`.sealed` (the encrypted wire of set members), :mod:`.schema` (the worker's messages),
:mod:`.requests` (the kernel's requests), :mod:`.dap` and :mod:`.usage` (two replies' contents).
Everyone imports them from here, ``from jax_kernel.protocol import wire``.
"""

from __future__ import annotations

from .dap import DAP_FIELDS, MAX_DAP_BYTES, check_dap
from .framing import (
    DEFAULT_MAX_FRAME,
    HEADER,
    STREAM_CHUNK,
    Check,
    Connection,
    FrameTooLarge,
    WireError,
    decode,
    encode,
)
from .requests import (
    ANSWERED_REQUESTS,
    CONCURRENT_REQUESTS,
    JAX_REQUESTS,
    KERNEL_OPTIONAL_FIELDS,
    KERNEL_REQUESTS,
    PARENT_FIELD,
    REMEMBERED_REQUESTS,
    SUBSHELL_ACTIONS,
    SUBSHELL_QUESTIONS,
    USER_CODE_REQUESTS,
    error_reply,
    parent_for_worker,
    validate_kernel_request,
)
from .schema import (
    COMM_MSG_TYPES,
    OPTIONAL_FIELDS,
    PROTOCOL_VERSION,
    REQUEST_FIELD,
    REQUEST_TAGGED,
    STREAM_NAMES,
    WORKER_MESSAGES,
    check_fields,
    decode_buffers,
    encode_buffers,
    validate_worker_message,
)
from .sealed import NONCE_BYTES, AuthenticationError, SealedConnection, new_nonce
from .usage import (
    USAGE_JAX_STATES,
    USAGE_MAX_BYTES,
    USAGE_MAX_DEVICES,
    USAGE_MAX_TEXT,
    USAGE_MEMORY_FIELDS,
    validate_usage_reply,
)

__all__ = [
    "ANSWERED_REQUESTS",
    "COMM_MSG_TYPES",
    "CONCURRENT_REQUESTS",
    "DAP_FIELDS",
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "JAX_REQUESTS",
    "KERNEL_OPTIONAL_FIELDS",
    "KERNEL_REQUESTS",
    "MAX_DAP_BYTES",
    "NONCE_BYTES",
    "OPTIONAL_FIELDS",
    "PARENT_FIELD",
    "PROTOCOL_VERSION",
    "SUBSHELL_ACTIONS",
    "SUBSHELL_QUESTIONS",
    "REMEMBERED_REQUESTS",
    "REQUEST_FIELD",
    "REQUEST_TAGGED",
    "STREAM_CHUNK",
    "STREAM_NAMES",
    "USAGE_JAX_STATES",
    "USAGE_MAX_BYTES",
    "USAGE_MAX_DEVICES",
    "USAGE_MAX_TEXT",
    "USAGE_MEMORY_FIELDS",
    "USER_CODE_REQUESTS",
    "WORKER_MESSAGES",
    "AuthenticationError",
    "Check",
    "Connection",
    "FrameTooLarge",
    "SealedConnection",
    "WireError",
    "check_dap",
    "check_fields",
    "decode",
    "decode_buffers",
    "encode",
    "encode_buffers",
    "parent_for_worker",
    "error_reply",
    "new_nonce",
    "validate_kernel_request",
    "validate_usage_reply",
    "validate_worker_message",
]
