"""Kernel process: what the supervisor may rely on in a worker, one process or a set of them.

:class:`~jax_kernel.supervision.local.WorkerProcess` (one local worker) and
:class:`~jax_kernel.supervision.workerset.WorkerSet` (a multi-controller JAX job over several
processes and hosts) stand in the same place for the :class:`WorkerManager`.  Before, they shared
these attributes by convention only and the manager asked ``isinstance`` where they differ; what
differs is now said by the handle itself (:attr:`processes`, :attr:`start_timeout_setting`), and
mypy checks that both keep the contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from ..protocol.budget import OutputBudget


class WorkerHandle(Protocol):
    """A started worker (or set) as its supervisor sees it: requests in, messages and an exit out."""

    #: How a report names it ("The worker process", "The set of 4 processes") and what replaced it.
    subject: str
    fresh: str
    #: The process the kernel signals for it (a set: its first member, for usage and debugging).
    pid: int
    #: Resolved with the ``ready`` message's content once it can take requests.
    ready: asyncio.Future[dict[str, Any]]
    #: Why the kernel ended it, once it did (shown to the user instead of an exit status).
    kill_reason: str | None
    #: The per-cell budget of stream output it may send.
    stream_budget: OutputBudget
    #: When it was started (``time.monotonic()``), for the start-up time the kernel logs.
    started_at: float
    #: The sandbox the policy prepared for it (released when it ends).
    sandbox: Any
    #: The device lease it holds itself (a set), or ``None`` when the manager's lease covers it.
    lease: Any

    @property
    def processes(self) -> int:
        """How many worker processes this handle is: 1 for a single worker."""
        ...

    @property
    def start_timeout_setting(self) -> str:
        """The setting that bounds its start, named in the error when it does not start in time."""
        ...

    def last_frame_at(self) -> float: ...

    def send(self, msg: Mapping[str, Any]) -> bool: ...

    def alive(self) -> bool: ...

    def interrupt(self) -> None: ...

    def kill(self, reason: str) -> None: ...

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): leave no process of it behind."""
        ...

    def wait(self, timeout: float) -> int | None: ...

    def diagnostics(self) -> str: ...

    def catch_up(self, turns: int = 16) -> None: ...
