"""Kernel process: interrupting a cell, and killing the worker when the interrupt is ignored.

An interrupt is SIGINT to the worker; a cell has ``WorkerManager.interrupt_grace`` seconds to
stop, then its worker is killed (and replaced by the supervisor), because a jitted XLA loop never
sees KeyboardInterrupt.  The kill reason says which of the usual causes it looked like.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .handle import WorkerHandle
from .requests import WorkerRequests


def ignored_interrupt(worker: WorkerHandle, grace: float) -> str:
    """Why ``worker`` is killed after ``grace`` seconds: what it did since the interrupt."""
    within = f"did not stop within {grace:g} s of the interrupt"
    recent = grace / 2
    if worker.last_frame_at() > time.monotonic() - recent:
        why = (
            "though it went on sending output: the cell's code catches KeyboardInterrupt, or the "
            "output comes from threads or child processes that an interrupt does not stop"
        )
    else:
        why = f"and sent nothing in its last {recent:g} s: it was stuck in native code, such as a jitted XLA loop"
    return f"{within} ({why}), so it was killed"


class Interrupts:
    """SIGINT for the running cell and the grace timer of each interrupted request."""

    def __init__(
        self,
        requests: WorkerRequests,
        current: Callable[[], WorkerHandle | None],
        grace: Callable[[], float],
        log: logging.Logger,
    ) -> None:
        self._requests = requests
        self._current = current  # the supervisor's worker now: a timer outlives a replaced one
        self._grace = grace  # WorkerManager.interrupt_grace, read when it is needed
        self.log = log
        self._timers: set[int] = set()  # requests whose interrupt grace period is running

    def now(self) -> None:
        """Interrupt the running cell, if one runs; on the loop's thread."""
        running = self._requests.running_cell()
        if running is None:
            return  # nothing runs: an interrupt between cells is a no-op, as in ipykernel
        req_id, worker = running
        worker.interrupt()
        if req_id not in self._timers:
            self._timers.add(req_id)
            asyncio.get_running_loop().call_later(self._grace(), self._expired, worker, req_id)

    def _expired(self, worker: WorkerHandle, req_id: int) -> None:
        # The timer belongs to the interrupted cell: if that cell has ended, a later cell on the same
        # worker is none of its business.
        self._timers.discard(req_id)
        if worker is not self._current() or not self._requests.unanswered(req_id):
            return
        # What it sent and the loop has not read yet may hold its answer: read that before judging.
        worker.catch_up()
        if not self._requests.unanswered(req_id):
            return
        grace = self._grace()
        self.log.warning("Worker %s ignored the interrupt for %.1f s; killing it", worker.pid, grace)
        worker.kill(ignored_interrupt(worker, grace))
