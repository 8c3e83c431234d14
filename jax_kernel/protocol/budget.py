"""Per-cell output budget, applied by the worker (to save the wire) and the kernel (to be safe).

One budget for everything a cell sends to the frontend: stream text counts its characters,
every other output (displays and their updates, results, comm messages) the characters of its
data.  The worker drops stream text past the budget before it crosses the wire; the kernel keeps
its own count of everything as a backstop, because it cannot trust the worker to do so: 200 M
characters of ``display()`` once reached the browser with the stream limit at 5 M.
"""

from __future__ import annotations

import threading

#: Characters of output one cell may send unless ``JaxKernel.output_limit`` says otherwise.
DEFAULT_OUTPUT_LIMIT = 20_000_000


class OutputBudget:
    """Counts the bytes of stream output a cell has sent and drops what exceeds the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self.dropped_messages = 0
        self.lock = threading.Lock()

    def reset(self, limit: int) -> None:
        """Start a new cell's budget."""
        with self.lock:
            self.limit, self.sent, self.dropped, self.dropped_messages = limit, 0, 0, 0

    def admit_message(self, size: int) -> bool:
        """Whether an output of ``size`` characters (a display, a comm message) still fits: it
        is sent whole or not at all, since half a display is no display."""
        with self.lock:
            if self.sent + size <= self.limit:
                self.sent += size
                return True
            self.dropped += size
            self.dropped_messages += 1
            return False

    def admit(self, text: str) -> str:
        """Return the part of ``text`` still within budget, counting the rest as dropped."""
        with self.lock:
            room = self.limit - self.sent
            if room >= len(text):
                self.sent += len(text)
                return text
            kept = text[: max(room, 0)]
            self.sent += len(kept)
            self.dropped += len(text) - len(kept)
            return kept

    def take_notice(self) -> str | None:
        """The truncation notice for this cell, once, or None if nothing was dropped."""
        with self.lock:
            if not self.dropped:
                return None
            whole = f" ({self.dropped_messages:,} outputs left out whole)" if self.dropped_messages else ""
            notice = (
                f"\n[jax-kernel] output truncated: {self.dropped:,} characters dropped after the "
                f"first {self.limit:,}{whole}. Raise JaxKernel.output_limit to see more.\n"
            )
            self.dropped = self.dropped_messages = 0
            return notice


def output_size(value: object) -> int:
    """Characters an output's data takes: the strings in it (base64 images, HTML, JSON text),
    and a little for every other value, without serializing it again."""
    stack, size = [value], 0
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            size += 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            size += 2 + len(item)
            stack.extend(item)
        else:
            size += 8
    return size


#: What the kernel-side budget counts besides stream text; an error is counted but always sent
#: (the cell's own traceback), and clear_output costs nothing.
COUNTED = frozenset({"display_data", "update_display_data", "execute_result", "comm"})
