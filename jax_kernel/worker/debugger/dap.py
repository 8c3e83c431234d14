"""The few DAP shapes the worker's debugger builds itself, shared by its modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...protocol.dap import response

__all__ = ["NOT_STARTED", "DebuggerUnavailable", "Send", "response"]

#: How the debugger hands a message to the kernel (the wire's ``send``).
Send = Callable[[dict[str, Any]], None]

#: The answer to any request that needs pydevd before ``initialize`` started it.
NOT_STARTED = "the debugger is not started (send initialize first)"


class DebuggerUnavailable(Exception):
    """pydevd could not be started in this worker; the message says why, in one line."""
