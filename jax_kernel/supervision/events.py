"""Kernel process: what a worker sends besides replies, handed to the kernel's handlers.

A ``ready`` message makes a worker usable only once its sandbox is seen in force from outside
(:func:`jax_kernel.supervision.audit.audit`); output, ``input()``, the self-test and debug events
reach the kernel only from the current worker, never from a standby or a replaced one, each with
the origin of the request it is tagged with (None when that is unknown or over).  A worker's
exit is the supervisor's (:meth:`WorkerManager._on_exit`): it reports and replaces.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..protocol import wire
from .audit import audit
from .handle import WorkerHandle
from .requests import WorkerRequests

if TYPE_CHECKING:
    from .manager import WorkerManager


class WorkerEvents:
    """Routes a worker's messages: replies to their requests, the rest to the manager's handlers."""

    def __init__(self, manager: WorkerManager, requests: WorkerRequests) -> None:
        self.manager = manager  # its handlers are set by the kernel after it is made
        self._requests = requests

    def message(self, worker: WorkerHandle, msg: dict[str, Any]) -> None:
        """One message from ``worker``, on the loop."""
        m = self.manager
        kind = msg["type"]
        if kind in ("reply", "debug_reply"):
            self._requests.deliver(worker, msg)
        elif kind == "ready":
            self._ready(worker, msg)
        elif kind == "restored" and worker is m.worker:
            m.state.restored(msg["report"])
        elif kind == "state" and worker is m.worker:
            m.state.committed(msg["summary"], msg.get("enabled"))
        elif kind == "standby":
            m.log.debug("Standby worker %s warm", worker.pid)
            m.standby_warmed(worker)
        elif worker is m.worker:
            if kind == "input_request":
                m.input_handler(msg, self._requests.origin_of(worker, msg))
            elif kind == "selftest":
                m.selftest_handler()
            elif kind == "debug_event":
                m.debug_event_handler(msg["content"])
            else:
                m.output_handler(msg, self._requests.origin_of(worker, msg))

    def problem(self, worker: WorkerHandle, text: str) -> None:
        """Something wrong with what ``worker`` sent, for the user to see if it is the current one."""
        if worker is self.manager.worker:
            self.manager.problem_handler(text)

    def _ready(self, worker: WorkerHandle, msg: dict[str, Any]) -> None:
        """A worker says it is ready: it may take requests once its sandbox is seen in force."""
        log, sandbox = self.manager.log, self.manager.sandbox
        if msg["protocol"] != wire.PROTOCOL_VERSION:
            worker.kill(f"it speaks wire protocol {msg['protocol']}, not {wire.PROTOCOL_VERSION}")
            return
        if worker.ready.done():
            return
        if worker.sandbox is not None:  # a set checks its members itself
            missing = audit(worker.pid, worker.sandbox.policy, msg.get("sandbox"))
            if missing:
                log.error("Worker %s is not sandboxed as it says: %s", worker.pid, "; ".join(missing))
                worker.kill(
                    "was stopped before it ran anything: its sandbox is not in force as it reported "
                    f"(seen from outside, it lacks {', '.join(missing)})"
                )
                return
        sandbox.worker_ready(msg.get("sandbox"))
        worker.ready.set_result(msg)
        log.info("Worker %s ready in %.3f s", worker.pid, time.monotonic() - worker.started_at)
