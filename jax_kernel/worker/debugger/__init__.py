"""The worker's half of the visual debugger: DAP requests from the kernel, served with pydevd.

Modelled on ipykernel's ``debugger.py`` (the same request set, the same local answers for
``dumpCell``, ``debugInfo``, ``inspectVariables`` and ``richInspectVariables``), with two
differences that the worker's situation calls for:

* No debug adapter process and no TCP port: pydevd speaks DAP itself (debugpy's in-process
  mode) over one end of a ``socketpair`` (:mod:`.pydevd_link`).
* Everything runs on threads the debugger does not trace (:mod:`..threads`): while the
  main thread is stopped at a breakpoint inside a cell, requests keep being answered.

One module per job: :mod:`.session` answers the requests, :mod:`.pydevd_link` starts pydevd
and carries its DAP, :mod:`.variables` and :mod:`.sources` build what the frontend shows,
:mod:`.tracing` switches the main thread's tracing before each cell, :mod:`.dap` holds the
shapes they share.  debugpy is imported on the first ``initialize``, never at worker start:
importing this package imports none of it.
"""

from .dap import DebuggerUnavailable, Send
from .pydevd_link import MAX_FRAME, PYDEVD_TIMEOUT
from .session import DebugSession, session, stash
from .tracing import sync_tracing
from .variables import REPR_LIMIT, user_variable

__all__ = [
    "MAX_FRAME",
    "PYDEVD_TIMEOUT",
    "REPR_LIMIT",
    "DebugSession",
    "DebuggerUnavailable",
    "Send",
    "session",
    "stash",
    "sync_tracing",
    "user_variable",
]
