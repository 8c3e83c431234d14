"""Kernel process: requests to the worker and their replies, apart from who starts the worker.

Each request gets an id and a future; the reply with that id, from the worker it was sent to,
resolves it, and that worker's death fails every request it had.  Output the worker tags with a
request's id (``wire.REQUEST_FIELD``) belongs to that request's origin, the frontend message the
kernel made it for.  A cell (``execute``) also runs
under the sandbox's per-cell CPU time and process limits: they belong to one request, so they
are kept here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..policy.sandbox import Sandbox
from ..protocol import wire
from .errors import WorkerDied, WorkerError
from .handle import WorkerHandle

#: Requests that run user code: an interrupt and its grace period apply.
INTERRUPTIBLE = wire.USER_CODE_REQUESTS

Pending = tuple[WorkerHandle, "asyncio.Future[dict[str, Any]]", str, object]


class WorkerRequests:
    """The requests in flight to the current worker (or set), matched to their replies by id."""

    def __init__(self, sandbox: Sandbox, log: logging.Logger, report: Callable[[str], None]) -> None:
        self.sandbox = sandbox
        self.log = log
        self._report = report  # a problem the user should see, on the cell's stderr
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._recent: OrderedDict[int, tuple[WorkerHandle, object]] = OrderedDict()

    def next_id(self) -> int:
        """A fresh id, for messages that get no reply (shutdown, reap) as for requests."""
        return next(self._ids)

    async def send(
        self,
        worker: WorkerHandle,
        kind: str,
        content: dict[str, Any],
        timeout: float | None,
        stream_limit: int,
        origin: object = None,
    ) -> dict[str, Any]:
        """Send one request to ``worker`` and wait for its reply (WorkerDied if it ends first);
        the output tagged with it goes to ``origin``."""
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (worker, fut, kind, origin)
        busy = any(k == "execute" for _w, _f, k, _o in self._pending.values() if _f is not fut)
        if kind == "execute" or kind in wire.JAX_REQUESTS or (kind == "comm" and not busy):
            # A widget's message between cells is its own "cell": its replies get a fresh budget.
            worker.stream_budget.reset(stream_limit + 1024)  # room for the worker's own notice
        worker.send({"type": kind, "id": req_id, **content})
        watchdog = None
        if kind == "execute" and self.sandbox.enabled and self.sandbox.cpu_time_limit > 0:
            watchdog = asyncio.ensure_future(self._cpu_watchdog(worker, fut, self.sandbox.cpu_time_limit))
        try:
            return await asyncio.wait_for(fut, timeout) if timeout else await fut
        finally:
            self._pending.pop(req_id, None)
            self._remember(req_id, worker, kind, origin)
            if watchdog is not None:
                watchdog.cancel()
            if kind == "execute" and worker.sandbox and worker.sandbox.new_process_limit_hits() > 0:
                self._after_process_limit(worker)

    async def send_if_ready(
        self, worker: WorkerHandle | None, kind: str, content: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """A quick question that never waits on a start: None if ``worker`` is not ready, dies,
        or does not answer within ``timeout``."""
        if worker is None or not worker.ready.done() or worker.ready.exception() is not None:
            return None
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (worker, fut, kind, None)
        try:
            if not worker.send({"type": kind, "id": req_id, **content}):
                return None
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, WorkerError):
            return None
        finally:
            self._pending.pop(req_id, None)

    def deliver(self, worker: WorkerHandle, msg: dict[str, Any]) -> None:
        """Resolve the request a ``reply`` or ``debug_reply`` answers, if ``worker`` was asked it."""
        # A debug reply arrives while the cell it stopped is still in flight: it has its own id.
        entry = self._pending.get(msg["id"])
        matches = entry is not None and (entry[2] == "debug") == (msg["type"] == "debug_reply")
        if entry is not None and matches and entry[0] is worker and not entry[1].done():
            entry[1].set_result(msg["content"])

    def origin_of(self, worker: WorkerHandle, msg: dict[str, Any]) -> object:
        """The origin of the request ``msg`` is tagged with, if ``worker`` was sent it (running, or
        one of the last ``wire.REMEMBERED_REQUESTS`` answered); else None."""
        req_id = msg.get(wire.REQUEST_FIELD, -1)
        entry = self._pending.get(req_id)
        if entry is not None:
            return entry[3] if entry[0] is worker else None
        recent = self._recent.get(req_id)
        return recent[1] if recent is not None and recent[0] is worker else None

    def _remember(self, req_id: int, worker: WorkerHandle, kind: str, origin: object) -> None:
        if origin is None or kind not in INTERRUPTIBLE:
            return
        self._recent[req_id] = (worker, origin)
        while len(self._recent) > wire.REMEMBERED_REQUESTS:
            self._recent.popitem(last=False)

    def fail(self, worker: WorkerHandle, death: WorkerDied) -> bool:
        """Fail every request ``worker`` had not answered; whether there was one."""
        in_flight = False
        for w, fut, _kind, _origin in list(self._pending.values()):
            if w is worker and not fut.done():
                fut.set_exception(death)
                in_flight = True
        return in_flight

    def running_cell(self) -> tuple[int, WorkerHandle] | None:
        """The request running user code now (an interrupt's target), and its worker."""
        for req_id, (worker, fut, kind, _origin) in self._pending.items():
            if kind in INTERRUPTIBLE and not fut.done():
                return req_id, worker
        return None

    def unanswered(self, req_id: int) -> bool:
        """Whether request ``req_id`` still waits for its reply."""
        entry = self._pending.get(req_id)
        return entry is not None and not entry[1].done()

    def busy(self) -> bool:
        """Whether any request waits for its reply."""
        return any(not fut.done() for _w, fut, _k, _o in self._pending.values())

    async def _cpu_watchdog(self, worker: WorkerHandle, fut: asyncio.Future[Any], limit: float) -> None:
        """Kill the worker once the cell has used ``limit`` CPU seconds (all threads together).

        Kernel-side, because RLIMIT_CPU counts the worker's whole life, not one cell, and
        XLA threads never run a SIGXCPU handler.
        """
        start = self.sandbox.cpu_seconds(worker.pid)
        while start is not None and not fut.done():
            await asyncio.sleep(0.2)
            used = self.sandbox.cpu_seconds(worker.pid)
            if used is None:
                return
            if used - start > limit:
                worker.kill(
                    f"exceeded the sandbox's CPU time limit ({limit:g} CPU seconds per cell, "
                    "Sandbox.cpu_time_limit), so it was killed"
                )
                return

    def _after_process_limit(self, worker: WorkerHandle) -> None:
        """The cell ran into the task limit: end what it forked, so that the next cell can start
        threads again (XLA needs them), and say so."""
        killed = worker.sandbox.kill_children(worker.pid)
        if killed:
            # Ahead of any next request: the worker reaps them first (a zombie still counts).
            worker.send({"type": "reap", "id": next(self._ids), "pids": killed})
            self.log.warning(
                "Worker %s hit its process limit; killed %d of its child processes", worker.pid, len(killed)
            )
            self._report(
                f"the cell hit the sandbox's process limit ({self.sandbox.max_processes} tasks, "
                f"Sandbox.max_processes): its {len(killed)} child processes were killed so that the next "
                "cell can run"
            )
