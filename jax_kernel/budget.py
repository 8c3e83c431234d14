"""Per-cell output budget, applied by the worker (to save the wire) and the kernel (to be safe).

The worker drops stream text past the budget before it crosses the wire; the kernel keeps
its own count as a backstop because it cannot trust the worker to do so.
"""

from __future__ import annotations

import threading


class OutputBudget:
    """Counts the bytes of stream output a cell has sent and drops what exceeds the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def reset(self, limit: int) -> None:
        """Start a new cell's budget."""
        with self.lock:
            self.limit, self.sent, self.dropped = limit, 0, 0

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
            notice = (
                f"\n[jax-kernel] output truncated: {self.dropped:,} characters dropped after the "
                f"first {self.limit:,}. Raise JaxKernel.output_limit to see more.\n"
            )
            self.dropped = 0
            return notice
