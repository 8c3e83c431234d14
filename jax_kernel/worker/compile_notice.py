"""A transient "XLA is compiling f (4 s so far)" line while a cell waits on a long compile.

JAX reports the start of each backend compile as a scalar monitoring event (the start time,
with ``fun_name``) and its end as a duration event; both are public ``jax.monitoring`` hooks.
The listeners are registered the moment JAX's monitoring module is imported (an import hook,
so that the compile in the same cell as ``import jax`` is seen too); JAX itself is never
imported for this. The line is a display with a ``display_id``: updated while the compile
runs and emptied when it ends or when the cell ends, so nothing stays in the notebook.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

from . import importhooks
from .threads import service_thread

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
MONITORING_MODULE = "jax._src.monitoring"
TICK = 0.25


class CompileNotice:
    """Watches JAX's compile events and keeps one transient display line up to date."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self.send = send
        self.after = 2.0  # seconds of compiling before the line appears; <= 0 disables it
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float]] = {}  # thread id -> (function, start)
        self._shown: str | None = None  # display_id of the line in the frontend
        self._shown_text = ""
        self._serial = 0
        self._cell_active = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # JAX's listeners (called on the compiling thread) --------------------------------
    def on_scalar(self, event: str, value: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            with self._lock:
                self._running[threading.get_ident()] = (
                    str(kwargs.get("fun_name", "a function")),
                    time.monotonic(),
                )
            self._ensure_thread()
            self._wake.set()

    def on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            with self._lock:
                self._running.pop(threading.get_ident(), None)
            self._wake.set()

    # the cell ---------------------------------------------------------------------
    def cell_started(self, after: float) -> None:
        self.after = after
        with self._lock:
            self._cell_active = True

    def cell_finished(self) -> None:
        """Empty the line before the reply goes out, so it disappears with the cell."""
        with self._lock:
            self._cell_active = False
            self._hide_locked()

    # the line -----------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = service_thread(self._watch, "jax-kernel-compile-notice")

    def _watch(self) -> None:
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            with self._lock:
                self._refresh_locked()

    def _refresh_locked(self) -> None:
        now = time.monotonic()
        due = [(now - start, name) for name, start in self._running.values()]
        if not self._cell_active or self.after <= 0 or not due or max(due)[0] < self.after:
            if not due or not self._cell_active:
                self._hide_locked()
            return
        elapsed, name = max(due)
        text = f"XLA is compiling {name} ({elapsed:.0f} s so far)…"
        if text == self._shown_text:
            return
        self._shown_text = text
        page = f"<div class='jax-compile-notice' style='opacity:0.7'>⏳ {html.escape(text)}</div>"
        if self._shown is None:
            self._serial += 1
            self._shown = f"jax-kernel-compile-{self._serial}"
            kind = "display_data"
        else:
            kind = "update_display_data"
        self.send(
            {
                "type": kind,
                "data": {"text/plain": text, "text/html": page},
                "metadata": {},
                "transient": {"display_id": self._shown},
            }
        )

    def _hide_locked(self) -> None:
        if self._shown is not None:
            self.send(
                {
                    "type": "update_display_data",
                    "data": {"text/plain": "", "text/html": ""},
                    "metadata": {},
                    "transient": {"display_id": self._shown},
                }
            )
            self._shown = None
            self._shown_text = ""


def install(send: Callable[[dict[str, Any]], None]) -> CompileNotice:
    """Create the notice and hook it into JAX's monitoring, now or when JAX is imported."""
    notice = CompileNotice(send)

    def register(monitoring: Any) -> None:
        monitoring.register_scalar_listener(notice.on_scalar)
        monitoring.register_event_duration_secs_listener(notice.on_duration)

    importhooks.on_import(MONITORING_MODULE, after=register)
    return notice
