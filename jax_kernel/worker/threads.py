"""The worker's own background threads, marked so that a debugger leaves them alone.

When the debugger stops at a breakpoint, pydevd suspends every thread it traces.  A
suspended output flusher or wire reader could hold the lock the debugger's replies need,
so the threads that serve the kernel (not the user) carry pydevd's two opt-out marks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def mark_untraced(thread: threading.Thread) -> threading.Thread:
    """Tell pydevd (if it is ever loaded) not to trace, list or suspend this thread."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    return thread


def service_thread(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """A started daemon thread that does the worker's own work, invisible to the debugger."""
    thread = mark_untraced(threading.Thread(target=target, name=name, args=args, daemon=True))
    thread.start()
    return thread
