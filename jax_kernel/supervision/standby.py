"""Kernel process: the standby worker, started ahead of need and handed to the next start.

A standby has its interpreter started, its sandbox applied and jax imported, but no backend and
no job: crash recovery and ``%load_jax`` with new settings take it and send it its job, which
costs a fraction of a second instead of a fresh start.  When to start one is the supervisor's
call (:meth:`WorkerManager._refill_standby`); this keeps the one there is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..policy.sandbox import Sandbox
from .local import Spawned, WorkerProcess, describe_exit


class Standby:
    """The standby worker, if any: watched once the loop runs, or spawned before it existed."""

    def __init__(
        self,
        launch: Callable[[], Spawned],
        watch: Callable[[Spawned], WorkerProcess],
        sandbox: Sandbox,
        log: logging.Logger,
    ) -> None:
        self._launch, self._watch = launch, watch
        self.sandbox = sandbox
        self.log = log
        self.spare: WorkerProcess | None = None  # the standby, until a start takes it
        self._prespawned: Spawned | None = None  # a standby started before the loop existed

    def prespawn(self) -> None:
        """Start one now, before the kernel's event loop exists (a spare kernel process)."""
        if self._prespawned is None:
            self._prespawned = self._launch()

    def take(self) -> WorkerProcess | None:
        """The standby, for a start now (it is no longer the standby), or None."""
        if self._prespawned is not None and self.spare is None:
            self.spare = self._watch(self._prespawned)
        self._prespawned = None
        spare, self.spare = self.spare, None
        return spare

    def fill(self) -> WorkerProcess:
        """Start the next standby now."""
        self.spare = self._watch(self._launch())
        return self.spare

    def lost(self, worker: object, returncode: int | None) -> bool:
        """Whether ``worker`` was the standby: one that died before it was needed (the next start
        spawns), released and logged here."""
        if worker is not self.spare or self.spare is None:
            return False
        spare, self.spare = self.spare, None
        self.sandbox.worker_exited(spare.sandbox)
        self.log.warning(
            "Standby worker %s %s\n%s",
            spare.pid,
            spare.kill_reason or describe_exit(returncode),
            spare.diagnostics()[-2000:],
        )
        return True

    def discard(self) -> None:
        """End the standby: the kernel is shutting down (it holds nothing: no need to be polite)."""
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.kill("the kernel is shutting down")

    def kill_now(self) -> None:
        """Synchronous last resort (atexit)."""
        if self.spare is not None:
            self.spare.kill_now()
