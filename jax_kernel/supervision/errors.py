"""Kernel process: how a worker fails a request, for the kernel to tell the user.

Apart from :mod:`.manager` so that the request client and the supervisor raise the same
errors without importing each other; :mod:`.manager` re-exports them (the kernel imports
them from there).
"""

from __future__ import annotations


class WorkerError(Exception):
    """The worker could not serve a request."""


class WorkerDied(WorkerError):
    """The worker process ended while (or before) serving a request."""

    def __init__(
        self,
        how: str,
        diagnostics: str = "",
        during_request: bool = True,
        subject: str = "The worker process",
        fresh: str = "A fresh worker was started",
    ) -> None:
        super().__init__(how)
        self.how = how
        self.diagnostics = diagnostics
        self.during_request = during_request
        self.subject = subject  # what died: one worker, or a set of them
        self.fresh = fresh  # what replaced it


class WorkerStartFailed(WorkerError):
    """A fresh worker did not become ready."""
