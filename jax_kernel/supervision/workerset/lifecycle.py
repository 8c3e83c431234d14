"""Kernel process: a set of worker processes as one worker, from its launch to its last exit status.

:class:`WorkerSet` stands where a :class:`~jax_kernel.supervision.local.WorkerProcess` stands for
the :class:`~jax_kernel.supervision.manager.WorkerManager`: the same requests, replies and life
cycle, so crash recovery, interrupts and restarts work for a set as for one process.  The other
modules of this package decide or do the rest for it (see the package docstring).  A set can't
lose a member (JAX's collectives would hang), so any member's death, silence or bad frame ends the
whole set, with a report naming the member and the cause: this module keeps the heartbeat, and the
reaper that learns how a member died.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ...host.netns import NetworkError
from ...protocol import wire
from ...protocol.budget import OutputBudget
from ..local import describe_exit
from .launcher import SetLauncher, make_dir
from .provision import NO_NETWORK, Placement, SetNetwork, audit_member, number
from .rendezvous import Member, Rendezvous
from .router import Router
from .settings import ProcessSet

#: How long the report of a lost member waits for its launcher to say how it exited, and how often
#: it looks (see WorkerSet._finish).
EXIT_CODE_WAIT = 5.0
EXIT_CODE_POLL = 0.05


class WorkerSet:
    """N workers that the manager drives as one (see the package docstring)."""

    #: What the manager's start limit names when a set does not start in time.
    start_timeout_setting = "ProcessSet.start_timeout"

    def __init__(
        self,
        *,
        count: int,
        launcher: str,
        devices_per_process: int,
        platform: str,
        config: dict[str, Any],
        env: dict[str, str],
        prepare_sandbox: Callable[[], Any],
        release_sandbox: Callable[[Any], None],
        on_closed: Callable[[], None] = lambda: None,
        lease_local: Callable[[str, int], Any],
        options: ProcessSet,
        max_frame: int,
        stream_limit: int,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any, dict[str, Any]], None],
        on_problem: Callable[[Any, str], None],
        on_exit: Callable[[Any, int | None], None],
        log: logging.Logger,
    ) -> None:
        self.count = count
        self.launcher_name = launcher
        self.devices_per_process = devices_per_process
        self.platform = platform
        self.subject = f"The set of {count} worker processes"
        self.fresh = f"A fresh set of {count} processes was started"
        self.log = log
        self._config, self._env = config, env
        self._prepare_sandbox, self._release_sandbox = prepare_sandbox, release_sandbox
        self._on_closed = on_closed  # after the members' sandboxes: the set's parent cgroups
        self._lease_local = lease_local
        self.lease: Any = None  # devices leased on this host for the members that run here
        self._options = options
        self._max_frame = max_frame
        self._loop = loop
        self._on_message, self._on_problem, self._on_exit = on_message, on_problem, on_exit
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.stream_budget = OutputBudget(stream_limit)
        self.started_at = time.monotonic()
        self.kill_reason: str | None = None
        self.sandbox: Any = None  # each member has its own; the set releases them
        self.pid = 0  # process 0's, once known
        self.members: list[Member] = []
        self._router = Router(count, self.stream_budget, lambda msg: self._on_message(self, msg))
        self._stopping = False  # a shutdown was sent: members leaving is expected
        self._ending = False
        self._unexplained: Member | None = None  # lost without a reason yet: its exit status says
        self._diag = ""  # the launcher's output, read once the set has ended
        self._closed = threading.Event()
        self._network: SetNetwork | None = None  # under a policy without network (see _setup)
        self._start()

    def _start(self) -> None:
        """Open the set's port, start its timers, then have the launcher start its members."""
        self._dir = make_dir()
        self._rendezvous = Rendezvous(
            options=self._options,
            count=self.count,
            max_frame=self._max_frame,
            directory=self._dir,
            loop=self._loop,
            members=self.members,
            on_frame=self._frame,
            on_error=self._wire_error,
            on_problem=lambda text: self._on_problem(self, text),
            closing=lambda: self._ending,
            log=self.log,
        )
        self.port = self._rendezvous.port
        self._timers = [
            self._loop.call_later(self._options.start_timeout, self._start_timed_out),
            self._loop.call_later(self._options.heartbeat_interval, self._tick),
        ]
        self._launcher = SetLauncher(self._options, self.launcher_name, self._dir, self.log)
        try:
            self._launcher.start(self.count, self._rendezvous.conn_file, self._launcher_stopped)
        except Exception as e:  # noqa: BLE001 - any launcher failure is reported, never raised
            self.log.warning("The %s launcher failed: %s", self.launcher_name, e, exc_info=True)
            self._loop.call_soon(
                self._end, f"could not be started by the {self.launcher_name!r} launcher ({e})"
            )

    @property
    def processes(self) -> int:
        """How many worker processes the set is."""
        return self.count

    # starting -----------------------------------------------------------------------
    def _launcher_stopped(self, data: Any) -> None:
        if not self.ready.done() and not self._ending:
            code = data.get("exit_code") if isinstance(data, dict) else None
            self._end(
                f"was not started: the {self.launcher_name!r} launcher's processes exited (code {code})"
            )

    def _start_timed_out(self) -> None:
        if not self.ready.done():
            joined = self._rendezvous.joined()
            self._end(
                f"did not start within {self._options.start_timeout:g} s ({joined} of {self.count} processes "
                "connected; raise ProcessSet.start_timeout if the launcher queues jobs)"
            )

    def _setup(self) -> None:
        """Every member said hello: number them, then give each its config, sandbox and devices."""
        self._rendezvous.turn_away_strangers()
        number(self.members, self.count)
        self.pid = self.members[0].pid
        here = socket.gethostname()
        local = sum(1 for m in self.members if m.host == here)
        try:  # the members on this host take their devices through the kernel's leases, as one worker does
            self.lease = self._lease_local(self.platform, local * self.devices_per_process)
        except Exception as e:  # noqa: BLE001 - a LeaseError says who holds what
            self._end(f"could not lease devices for its processes on this host: {e}")
            return
        placement = Placement(
            count=self.count,
            launcher=self.launcher_name,
            platform=self.platform,
            devices_per_process=self.devices_per_process,
            options=self._options,
            config=self._config,
            env=self._env,
            max_frame=self._max_frame,
            lease=self.lease,
            here=here,
            local=local,
            members=self.members,
        )
        self._network = SetNetwork(here)
        for m, local_rank in placement.ranks():
            ws = m.sandbox = self._prepare_sandbox()
            try:
                placement.isolate(ws, m, self._network)
            except NetworkError as e:
                self._end(NO_NETWORK.format(e))
                return
            self._send(m, placement.setup(m, ws, local_rank))

    # reading ------------------------------------------------------------------------
    def _frame(self, m: Member, msg: dict[str, Any]) -> None:
        if not m.hello and msg["type"] != "hello":
            self._rendezvous.before_hello(m, msg, None)
            return
        m.last_seen = time.monotonic()
        self._handle(m, msg)

    def _wire_error(self, m: Member, error: Exception) -> None:
        if not m.hello:  # not one of ours (no key), or not working: turned away, the set goes on
            self._rendezvous.before_hello(m, None, error)
        elif isinstance(error, wire.AuthenticationError):
            self._lost(m, f"sent a message that failed authentication ({error})")
        elif isinstance(error, wire.WireError):
            self.log.warning("Dropped a bad frame from %s: %s", m.describe(), error)
            self._on_problem(self, f"dropped a malformed message from {m.describe()} ({error})")
        else:
            self._lost(m, None)

    def _handle(self, m: Member, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "hello":
            if m.hello:
                self._lost(m, "said hello twice")
            elif self._rendezvous.admit(m, msg) and self._rendezvous.joined() == self.count:
                self._setup()
        elif kind == "ready":
            missing = audit_member(m, msg, self._launcher, self.log)
            if missing:
                self._lost(
                    m, f"is not sandboxed as it reported (seen from outside, it lacks {', '.join(missing)})"
                )
                return
            m.ready = msg
            if all(x.ready is not None for x in self.members) and len(self.members) == self.count:
                self.log.info(
                    "Set of %d processes ready in %.2f s", self.count, time.monotonic() - self.started_at
                )
                self._on_message(self, dict(self.members[0].ready or msg))
        elif kind != "heartbeat" and kind != "standby":
            live = sum(1 for x in self.members if not x.gone)
            for member, answer in self._router.message(m, msg, live):
                self._send(member, answer)

    def catch_up(self, turns: int = 16) -> None:
        """Handle now what the members have sent and the loop has not read yet (a bounded amount)."""
        for m in list(self.members):
            for _ in range(turns):
                if not m.reader.pending():
                    break
                m.reader.turn()

    def last_frame_at(self) -> float:
        """When the last message of any member was read (time.monotonic())."""
        return max((m.reader.last_frame_at for m in self.members), default=0.0)

    def shows(self, index: int) -> bool:
        """Whether stdout and displays of process ``index`` reach the frontend (``%jax_output``)."""
        return self._router.shows(index)

    # sending ------------------------------------------------------------------------
    def _send(self, m: Member, msg: Mapping[str, Any]) -> bool:
        if m.gone:
            return False
        try:
            m.conn.send(msg)
            return True
        except OSError:
            return False

    def send(self, msg: Mapping[str, Any]) -> bool:
        """Send a request: to every member if it runs code, else to process 0."""
        live = [m for m in self.members if not m.gone and m.index >= 0]
        if not live or self._ending:
            return False
        if msg["type"] == "shutdown":
            self._stopping = True
        ok = True
        for m, out in self._router.request(msg, live):
            ok = self._send(m, out) and ok
        return ok

    def interrupt(self) -> None:
        """Interrupt the running cell in every member (over the wire: signals don't cross hosts)."""
        for m in self.members:
            self._send(m, {"type": "interrupt", "id": 0})

    # life and death ------------------------------------------------------------------
    def _tick(self) -> None:
        if self._ending:
            return
        now = time.monotonic()
        for m in list(self.members):
            if m.gone:
                continue
            # Before it is ready a member is busy importing and joining (it sends no heartbeats yet):
            # start_timeout covers that part.
            if m.ready is not None and now - m.last_seen > self._options.heartbeat_timeout:
                self._lost(
                    m,
                    f"went silent: no heartbeat for {self._options.heartbeat_timeout:g} s "
                    "(its host or the network may be down)",
                )
                return
            self._send(m, {"type": "heartbeat", "id": 0})
        self._timers.append(self._loop.call_later(self._options.heartbeat_interval, self._tick))

    def _lost(self, m: Member, how: str | None) -> None:
        """A member's wire closed (or failed): the set can't go on without it."""
        if m.gone:
            return
        m.gone = True
        m.reader.close()
        if self._stopping or self._ending:
            if all(x.gone for x in self.members):
                self._end(None)
            return
        if how is None:
            # Why it closed shows in its exit status, known once the reaper has waited for it
            # (off the event loop): see _finish.
            self.log.warning("Set member %s closed its connection", m.describe())
            self._unexplained = m
            self._end(None)
            return
        self.log.warning("Set member %s %s", m.describe(), how)
        self._end(self._lost_reason(m, how))

    @staticmethod
    def _lost_reason(m: Member, how: str) -> str:
        return (
            f"lost {m.describe()}, which {how}. A multi-controller JAX job cannot lose a member, so the "
            f"whole set was stopped"
        )

    def _end(self, reason: str | None) -> None:
        """Stop every member and the launcher, then report the set's exit (once)."""
        if self._ending:
            return
        self._ending = True
        if reason is not None and self.kill_reason is None:
            self.kill_reason = reason
        for timer in self._timers:
            timer.cancel()
        self._rendezvous.close()
        for m in self.members:
            if not m.gone:
                m.gone = True
                m.reader.close()  # a member whose kernel is gone exits, even in the middle of XLA
        threading.Thread(target=self._reap, name="jax-set-reap", daemon=True).start()

    def _reap(self) -> None:
        """The reaper's thread: end the members' processes, then finish on the loop (see _finish)."""
        codes = self._launcher.reap(2.0 if self._stopping else 0.5, self._loop)
        if self._network is not None:
            self._network.close()
        try:
            self._loop.call_soon_threadsafe(self._finish, codes)
        except RuntimeError:
            self._closed.set()  # the loop is closed: the kernel is exiting

    def _finish(self, codes: dict[int, int], deadline: float | None = None) -> None:
        lost = self._unexplained
        if lost is not None and self.kill_reason is None:
            code = codes.get(lost.pid, self._launcher.exit_code(lost.pid))
            # The local launcher's wait thread may have reaped the member before _reap did (then
            # ``codes`` lacks it), and hands the status to the loop only after that (notify_stop):
            # until its callback has run, the status is nowhere.  Look again shortly, for a bounded
            # time; a launcher that did not start the member itself (MPI, batch) is not waited for.
            if code is None and self._launcher.exit_code_pending(lost.pid):
                deadline = time.monotonic() + EXIT_CODE_WAIT if deadline is None else deadline
                if time.monotonic() < deadline:
                    self._loop.call_later(EXIT_CODE_POLL, self._finish, codes, deadline)
                    return
            how = "closed its connection (it exited)" if code is None else describe_exit(int(code))
            self.kill_reason = self._lost_reason(lost, how)
        for m in self.members:
            if m.sandbox is not None:
                self._release_sandbox(m.sandbox)
        self._on_closed()
        if self.lease is not None:
            self.lease.release()
        self._diag = self._launcher.output()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._closed.set()
        if not self.ready.done() and self.kill_reason is None:
            self.kill_reason = "stopped before it was ready"
        self._on_exit(self, None)

    def diagnostics(self) -> str:
        """The tail of what the members wrote to their original stderr (faulthandler, launcher errors)."""
        return self._diag or self._launcher.output()

    def alive(self) -> bool:
        """Whether the set is still running (no member lost, not stopped)."""
        return not self._ending

    def kill(self, reason: str) -> None:
        """Stop the whole set now (SIGKILL for what runs here; closing the wire ends the rest)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._end(reason)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._end, reason)
        else:
            self.kill_now()

    def wait(self, timeout: float) -> int | None:
        """Wait until every member and the launcher are gone; None if they are not yet."""
        return 0 if self._closed.wait(timeout) else None

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): SIGKILL what runs on this host."""
        self._launcher.kill_now()
        shutil.rmtree(self._dir, ignore_errors=True)
