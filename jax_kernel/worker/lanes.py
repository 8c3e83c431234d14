"""The worker's shells: the main one (the main thread) and each subshell (JEP 91: a thread each).

A *lane* is one shell's requests, served in order by one thread with an asyncio loop of its own,
as each of ipykernel's subshell threads has: the main lane's loop is IPython's (it runs async
cells and, between requests, the tasks cells left), a subshell's is made with its thread.  A
subshell's cell runs while the main shell's cell runs, so a widget callback or a quick look at
a variable does not wait for a training loop.  What that shares with the main cell is what it
shares in ipykernel: the namespace, the execution counter and the history.  Only the main
thread gets SIGINT, so an interrupt stops the main shell's cell, never a subshell's (as in
ipykernel, whose interrupt is SIGINT too).

Matplotlib's pyplot from a subshell is the known hazard of ipykernel's subshells too: pyplot's
current figure is global, so a subshell plotting while the main cell plots may draw into the
other's figure.  We chose to leave pyplot alone (no lock: a lock would make a subshell wait for
the main cell, which is what subshells are for) and to say so in the README.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .inbox import Mailbox

#: Seconds a deleted subshell's thread is waited for, if it is not running a cell.
JOIN_TIMEOUT = 2.0
#: Seconds without a request before idle work (a snapshot of the variables) begins.
IDLE_DELAY = 0.25


class IdleWork(Protocol):
    """Work a lane does while no request waits, a short step at a time."""

    def pending(self) -> bool: ...

    def step(self) -> bool:
        """Do one short step; whether more is left."""
        ...


class Lane:
    """One shell's requests and the loop its thread runs them (and their async cells) on."""

    def __init__(self, mailbox: Mailbox, loop: asyncio.AbstractEventLoop, subshell_id: str | None) -> None:
        self.mailbox = mailbox
        self.loop = loop
        self.subshell_id = subshell_id  # None: the main shell
        self.awaiting = False  # an async cell of this lane awaits: its comms are served on its loop now
        self.serving = False  # a request of this lane is being answered
        self.thread: threading.Thread | None = None
        #: Work for idle time (the main lane: snapshots of the variables), done in short steps
        #: once the lane has been idle a moment; a request that arrives ends the idle time.
        self.idle: IdleWork | None = None


class Lanes:
    """The main lane and the subshells' lanes, each subshell's made on its first mention."""

    def __init__(self, main: Lane, serve: Callable[[Lane], None]) -> None:
        self.main = main
        self._serve = serve  # runs a lane's requests until its mailbox closes
        self._subshells: dict[str, Lane] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def current(self) -> Lane:
        """The lane of the calling thread (the main lane for any thread that is not a subshell's)."""
        lane = getattr(self._local, "lane", None)
        return lane if lane is not None else self.main

    def of(self, subshell_id: str | None) -> Lane:
        """The lane for ``subshell_id``: a subshell the kernel knows but this worker has not seen
        yet (it started after the subshell was made) gets its thread now."""
        if subshell_id is None:
            return self.main
        with self._lock:
            lane = self._subshells.get(subshell_id)
            if lane is None:
                lane = self._subshells[subshell_id] = self._start(subshell_id)
            return lane

    def busy(self) -> bool:
        """Whether any shell (the main one or a subshell) is answering a request."""
        with self._lock:
            lanes = [self.main, *self._subshells.values()]
        return any(lane.serving for lane in lanes)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._subshells)

    def _start(self, subshell_id: str) -> Lane:
        lane = Lane(Mailbox(), asyncio.new_event_loop(), subshell_id)
        lane.thread = threading.Thread(
            target=self._run, args=(lane,), name=f"subshell-{subshell_id}", daemon=True
        )
        lane.thread.start()
        return lane

    def _run(self, lane: Lane) -> None:
        self._local.lane = lane
        asyncio.set_event_loop(lane.loop)
        try:
            self._serve(lane)
        finally:
            lane.loop.close()

    def delete(self, subshell_id: str) -> bool:
        """End a subshell's thread after what it runs now; whether it existed.  An idle thread is
        waited for, so that the next request sees it gone; a busy one finishes its cell first."""
        with self._lock:
            lane = self._subshells.pop(subshell_id, None)
        if lane is None:
            return False
        lane.mailbox.close()
        if lane.thread is not None and not lane.serving:
            lane.thread.join(JOIN_TIMEOUT)
        return True


def next_request(lane: Lane) -> dict[str, Any] | None:
    """The lane's next request; while none is there, the lane's asyncio loop runs.

    As in ipykernel, whose cells share their shell's running loop: a task a cell created
    (``asyncio.get_event_loop().create_task(...)``) goes on between cells, printing to the
    cell that made it (the task copied that cell's parent), and top-level ``await`` in a
    cell runs on this same loop (IPython's, for the main lane)."""
    mailbox, loop = lane.mailbox, lane.loop
    msg = mailbox.get(timeout=0)
    if msg is not None:
        return msg
    idle = lane.idle
    if idle is not None and idle.pending() and _loop_is_idle(loop):
        # Idle work starts only once no request has come for a moment: cells run back to back
        # (Run All) never meet it, and one that comes while it runs waits one short step at most.
        msg = mailbox.get(timeout=IDLE_DELAY)
        while msg is None and idle.step():
            msg = mailbox.get(timeout=0)
        if msg is not None:
            return msg
    if _loop_is_idle(loop):
        # Nothing for the loop to do: wait on the queue itself.  Waking a loop costs a widget
        # round trip about 0.8 ms (bench_frontends: 1.15 -> 1.25 x stock); a callback another
        # thread schedules with call_soon_threadsafe waits for the next request meanwhile.
        return mailbox.get()
    arrived = loop.create_future()

    def arrive() -> None:
        if not arrived.done():
            arrived.set_result(None)

    def wake() -> None:
        loop.call_soon_threadsafe(arrive)

    mailbox.waker = wake
    try:
        msg = mailbox.get(timeout=0)  # one may have come before the waker was set
        if msg is None:
            loop.run_until_complete(arrived)
    finally:
        mailbox.waker = None
    return msg if msg is not None else mailbox.get(timeout=0)


def _loop_is_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """No task, ready callback or timer on ``loop`` (asyncio's BaseEventLoop keeps the last two in
    ``_ready`` and ``_scheduled``; a loop without them is treated as busy)."""
    if asyncio.all_tasks(loop):
        return False
    return not getattr(loop, "_ready", True) and not getattr(loop, "_scheduled", True)
