"""Kernel process: the standby worker, started ahead of need and handed to the next start.

A standby has its interpreter started, its sandbox applied and jax imported, but no backend and
no job: crash recovery and ``%load_jax`` with new settings take it and send it its job, which
costs a fraction of a second instead of a fresh start.  When to start one is the supervisor's
call (:meth:`WorkerManager._refill_standby`); this keeps the one there is.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from ..policy.sandbox import Sandbox
from . import priority
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
        self._lowered: int | None = None  # the standby's pid while it warms up at a low priority
        self._warm: int | None = None  # the standby's pid once it has warmed up
        self._paused = False  # stopped (SIGSTOP) while a cell runs

    def prespawn(self) -> None:
        """Start one now, before the kernel's event loop exists (a spare kernel process)."""
        if self._prespawned is None:
            self._prespawned = self._launch()

    def drop_prespawned(self) -> None:
        """Kill the standby started before the loop existed (made for a folder no longer ours)."""
        spawned, self._prespawned = self._prespawned, None
        if spawned is not None:
            spawned.sock.close()  # EOF on its wire ends it; the kill makes sure
            spawned.proc.kill()
            spawned.proc.wait()
            self.sandbox.worker_exited(spawned.sandbox)

    def take(self) -> WorkerProcess | None:
        """The standby, for a start now (it is no longer the standby), or None."""
        if self._prespawned is not None and self.spare is None:
            self.spare = self._watch(self._prespawned)
        self._prespawned = None
        self.resume()  # a paused standby goes on at once: it is needed now
        spare, self.spare = self.spare, None
        if spare is not None and spare.pid == self._lowered:
            priority.restore(spare.pid)  # before its job: the user's cells run at the normal priority
        self._lowered = None
        return spare

    def warmed(self, worker: object) -> None:
        """``worker`` said it has warmed up (imported jax): idle from now on, never paused."""
        if worker is self.spare and self.spare is not None:
            self._warm = self.spare.pid

    def pause(self) -> None:
        """A cell runs: a standby still warming up stops (SIGSTOP) until :meth:`resume`, so that it
        takes no CPU from the cell.  Niceness alone is not enough: a cell whose BLAS or XLA
        threads meet at a barrier yields the core to whatever else is runnable (measured: a
        two-core matmul loop ran 3.5x slower beside a standby at nice 19)."""
        spare = self.spare
        if spare is None or spare.pid == self._warm or self._paused:
            return
        try:
            os.kill(spare.pid, signal.SIGSTOP)
            self._paused = True
        except OSError:
            pass  # it just died: the supervisor hears of it

    def resume(self) -> None:
        """No cell runs any more: a paused standby goes on warming up."""
        if self._paused and self.spare is not None:
            try:
                os.kill(self.spare.pid, signal.SIGCONT)
            except OSError:
                pass
        self._paused = False

    def fill(self, nice: int = 0) -> WorkerProcess:
        """Start the next standby now, warming up at ``nice`` (:mod:`.priority`) if above 0."""
        self.spare = self._watch(self._launch())
        self._lowered = self.spare.pid if priority.lower(self.spare.pid, nice) else None
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
