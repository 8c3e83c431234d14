"""Tracing on the main thread, set before each cell: on while a frontend debugs, and only then."""

from __future__ import annotations

import sys
import threading

from .session import current


def sync_tracing() -> None:
    """Before a cell, on the main thread: trace it while a frontend debugs, and only then.

    After a disconnect pydevd stays loaded (a later initialize reuses it) but its trace function
    would stay on the main thread, and every pure-Python call would pay for it (1.2-1.8x slower
    loops): it comes off.  And an interrupt while the cell was stopped at a breakpoint raises
    KeyboardInterrupt inside pydevd's trace function, after which Python stops tracing that
    thread for good: while debugging, tracing goes back on, or no later breakpoint would stop."""
    debug_session = current()
    if debug_session is None:
        return
    pydevd = sys.modules.get("pydevd")
    py_db = pydevd.get_global_debugger() if pydevd is not None else None
    if py_db is None:
        return
    if not debug_session.started:
        if sys.gettrace() is not None:
            py_db.disable_tracing()
        return
    if sys.gettrace() is not None:
        return
    from _pydevd_bundle.pydevd_additional_thread_info import set_additional_thread_info
    from _pydevd_bundle.pydevd_constants import STATE_RUN

    # The interrupted wait left the thread marked suspended: traced again as it is, it would
    # wait for a continue that no frontend knows to send.
    info = set_additional_thread_info(threading.current_thread())
    info.pydev_state = STATE_RUN
    info.pydev_step_cmd = -1
    py_db.enable_tracing()
