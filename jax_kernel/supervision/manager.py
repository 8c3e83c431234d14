"""The worker's life cycle, seen from the kernel: start, replace, report, stop.

One worker at a time.  When it dies (crash, OOM kill, or killed by us because it ignored
an interrupt) the request in flight fails with :class:`WorkerDied`, a replacement is
started at once, and the kernel goes on.  A death between cells is kept as a report for
the next cell.  All of this runs on the kernel's event loop thread; only
:meth:`WorkerManager.interrupt` may be called from another thread or a signal handler.

``WorkerManager`` holds the settings users configure and decides when a worker starts, is
replaced and is reported dead; each other job is a part it holds: requests and replies
(:mod:`.requests`), interrupts (:mod:`.interrupts`), a worker's messages (:mod:`.events`), its
job and start (:mod:`.spawner`, its environment built by :mod:`jax_kernel.policy.environment`),
the standby (:mod:`.standby`), the device lease (:mod:`.leases`).  The errors live in
:mod:`.errors` and are re-exported here, where the kernel imports them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..policy.accelerators import Lease, LeaseError
from ..protocol import jaxspec, wire
from ..protocol.budget import DEFAULT_OUTPUT_LIMIT
from . import priority
from .errors import WorkerDied, WorkerError, WorkerStartFailed
from .events import WorkerEvents
from .handle import WorkerHandle
from .interrupts import Interrupts
from .leases import DeviceLeases
from .local import describe_exit
from .requests import WorkerRequests
from .settings import WorkerSettings
from .spawner import WorkerSpawner
from .standby import Standby
from .state import StateCarrier

__all__ = ["WorkerDied", "WorkerError", "WorkerManager", "WorkerStartFailed"]


class WorkerManager(WorkerSettings):
    """Starts and supervises the worker process that runs every cell."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker: WorkerHandle | None = None
        self.execution_count = 1
        self.stream_limit = DEFAULT_OUTPUT_LIMIT  # JaxKernel sets its output_limit
        # Output and input() requests come with the origin of the request they answer (or None).
        self.output_handler: Callable[[dict[str, Any], object], None] = lambda msg, origin: None
        self.problem_handler: Callable[[str], None] = lambda text: None
        self.exit_handler: Callable[[], None] = lambda: None  # the current worker is gone
        self.input_handler: Callable[[dict[str, Any], object], None] = lambda msg, origin: None
        self.selftest_handler: Callable[[], None] = lambda: self.send_selftest_done(2)
        self.debug_event_handler: Callable[[dict[str, Any]], None] = lambda event: None
        self._requests = WorkerRequests(self.sandbox, self.log, lambda text: self.problem_handler(text))
        self._interrupts = Interrupts(
            self._requests, lambda: self.worker, lambda: self.interrupt_grace, self.log
        )
        self._leases = DeviceLeases(self.accelerators, self.sandbox, self.processes, self.log)
        events = WorkerEvents(self, self._requests)
        self._spawner = WorkerSpawner(self, self._leases, events.message, events.problem, self._on_exit)
        spawner = self._spawner
        self._standby = Standby(lambda: spawner.launch({}, None), spawner.watch, self.sandbox, self.log)
        self._death_report: WorkerDied | None = None
        self._cells_running = 0  # user-code requests in flight: the standby's warm-up waits for 0
        self.state = StateCarrier(self, self.sandbox, self.log)  # the workers' saved variables
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.jax_overrides: dict[str, Any] = {}  # settings asked for by load_jax_library since start
        self.sandbox.check()  # a bad policy stops the kernel at start, not at the first cell
        self.accelerators.memory_cap()  # and so does a bad device policy (read when first made)
        self.sandbox.protect_kernel()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the manager runs on; other threads reach it with run_coroutine_threadsafe."""
        return self._loop

    # life cycle -------------------------------------------------------------------
    def start(self, restore: bool = False) -> WorkerHandle:
        """Give the kernel a worker now: the standby if one is warm(ing), else a fresh spawn;
        ``restore``: it restores the last snapshot of its predecessor's variables first.

        Either way it becomes usable once it says it is ready; a new standby is started once it is.
        """
        self._loop = asyncio.get_running_loop()
        if self._leases.lease is None and self._leases.request is None:
            try:
                self.reserve(self._jax_settings())
            except LeaseError as e:
                self.log.warning("No device lease for this kernel's worker: %s", e)
                self.problem_handler(f"no accelerator for this worker: {e}")
        settings = self._jax_settings()
        config, env = self._spawner.job(settings)
        layout = (int(settings.get("processes", 1)), int(settings.get("devices_per_process") or 0))
        config["state"] = self.state.policy(restore, layout)
        if config["state"].get("restore"):
            self.state.expect_restore()
        else:
            self.state.no_restore()
        if settings.get("processes", 1) > 1:
            worker = self._spawner.start_set(settings, config, env)
            self.worker = worker
            return worker
        spare = self._standby.take()
        if spare is not None and spare.alive():
            self._leases.restrict(spare)  # before it can run a cell
            spare.send({"type": "activate", "id": 0, "config": config, "env": env})
            self.worker = started = spare
        else:
            if spare is not None:
                spare.kill("the standby worker was not usable")
            self.worker = started = self._spawner.watch(self._spawner.launch(config, env))
            self._leases.restrict(started)
        started.started_at = time.monotonic()
        cores = config.get("cpu_affinity")
        if cores:
            self._leases.pin(started, cores)
        self.log.info("Started worker %s%s", started.pid, " (standby)" if spare is started else "")
        started.ready.add_done_callback(lambda _f: self._refill_standby())
        return started

    def prespawn(self) -> None:
        """Start the standby now, before the kernel's event loop exists (a spare kernel process,
        see :mod:`jax_kernel.launch.provisioner`); the first :meth:`start` takes it."""
        if self.standby:
            self._standby.prespawn()

    def drop_prespawned(self) -> None:
        """Forget the standby :meth:`prespawn` started (a pooled kernel moved to another folder):
        its sandbox, and the state dir it used, were made for the old folder."""
        self._standby.drop_prespawned()
        self.sandbox.moved()

    def restart(self) -> WorkerHandle:
        """A kernel restart that keeps the kernel process: the worker (or set) is killed at once,
        its requests in flight fail with :class:`WorkerDied`, the lease is returned, and a fresh
        worker (the standby) starts with the configured settings and execution count 1, as a new
        kernel's would.  Synchronous, so that no request handled after it reaches the old worker."""
        old, self.worker = self.worker, None  # no death report and no automatic replacement for it
        self._death_report = None
        self.jax_overrides = {}
        self.execution_count = 1
        if old is not None:
            old.kill("the kernel was restarted")
        self._leases.forget()
        self.state.forget()  # a restart is a restart: the new worker starts empty
        self.state.enabled = None  # and %jax_state --off/--on goes back to the setting
        return self.start()

    def _refill_standby(self, delay: float | None = None) -> None:
        """Start the next standby once the current worker is ready (after ``standby_delay``), so
        that a second restart soon after the first finds one warm.  Its warm-up (a second of CPU)
        pauses while user code runs and, where the kernel may restore the priority later, runs
        at a low one (:meth:`Standby.pause`, :mod:`.priority`): the user's cells don't pay for it."""
        if not self.standby or self._stopping or self._standby.spare is not None or self._loop is None:
            return
        if self.worker is None or not self.worker.ready.done() or self.worker.ready.exception():
            return
        if self.worker.processes > 1:
            return  # a set's processes need the CPU more than a standby for a later single worker
        delay = self.standby_delay if delay is None else delay
        if delay > 0:
            self._loop.call_later(delay, self._refill_standby, 0.0)
            return
        nice = self.standby_nice if priority.can_restore() else 0
        self.log.debug("Started standby worker %s", self._standby.fill(nice).pid)
        if self._cells_running:
            self._standby.pause()

    def reserve(self, settings: dict[str, Any]) -> Lease | None:
        """Lease the devices ``settings`` ask for (or the policy's default) before a worker starts.

        Raises LeaseError, saying who holds what, and keeps the current lease in that case, so a
        refused ``%load_jax`` leaves the running worker as it was.
        """
        return self._leases.reserve(settings, self.worker)

    def reserve_for(self, jax_overrides: dict[str, Any]) -> Lease | None:
        """:meth:`reserve` for a worker started with these load_jax_library settings.

        A set of processes whose launcher can't be found is refused here too (JaxSpecError), before
        the running worker is replaced.
        """
        settings = {**self._jax_settings_defaults(), **jax_overrides}
        self._leases.check_set(settings)
        return self.reserve(settings)

    def _jax_settings_defaults(self) -> dict[str, Any]:
        try:
            return jaxspec.check_load_settings(self.jax_settings, from_strings=True)
        except jaxspec.JaxSpecError as e:
            self.log.error("Ignoring WorkerManager.jax_settings: %s", e)
            return {}

    def _jax_settings(self) -> dict[str, Any]:
        return {**self._jax_settings_defaults(), **self.jax_overrides}

    async def replace(self, jax_settings: dict[str, Any], keep_state: bool = False) -> WorkerHandle:
        """Stop the current worker and start one whose JAX starts with these settings.

        JAX reads platform, visible devices, x64, host device count and allocator settings
        only when its backend starts, so a running worker cannot take new ones.  They stay in
        force for later replacements (a crash restart keeps them) until the kernel restarts.
        ``keep_state``: the new worker restores the snapshot the old one committed (it saved
        everything before asking: ``%load_jax --keep-state``, ``%jax_reset``); else it is deleted.
        """
        self.reserve_for(jax_settings)
        self.jax_overrides = dict(jax_settings)
        old, self.worker = self.worker, None  # no death report and no automatic restart for it
        if old is not None:
            if old.ready.done() and not old.ready.exception() and old.alive():
                old.send({"type": "shutdown", "id": self._requests.next_id()})
                if await asyncio.to_thread(old.wait, self.shutdown_timeout) is None:
                    old.kill("it was replaced to apply new JAX settings")
            else:
                old.kill("it was replaced to apply new JAX settings")
        if not keep_state:
            self.state.forget()
        self.start(restore=keep_state)
        return await self.ready_worker()

    async def ready_worker(self) -> WorkerHandle:
        """The current worker once ready, starting one if there is none."""
        worker = self.worker if self.worker is not None else self.start()
        ready = worker.ready
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            return worker  # the usual case: no wait_for, which costs a turn of the loop per request
        # A set has its own, longer limit (a batch queue may hold it) and reports it itself.
        is_set = worker.processes > 1
        timeout = self.processes.start_timeout + 5 if is_set else self.start_timeout
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), timeout)
        except TimeoutError:
            worker.kill("it did not become ready in time")
            self.worker = None
            setting = worker.start_timeout_setting
            raise WorkerStartFailed(
                f"the worker did not start within {timeout:g} s (raise {setting} if the machine is slow)"
            ) from None
        except WorkerDied as e:
            what = e.subject[:1].lower() + e.subject[1:]
            raise WorkerStartFailed(f"{what} {e.how} while starting.\n{e.diagnostics}".rstrip()) from None
        return worker

    def take_death_report(self) -> WorkerDied | None:
        """A death that happened between cells, reported once to the next cell."""
        report, self._death_report = self._death_report, None
        return report

    async def shutdown(self) -> None:
        """Stop the worker, politely first; no process is left behind."""
        self._stopping = True
        self._standby.discard()
        worker, self.worker = self.worker, None
        self._leases.release()
        if worker is None:
            return
        if worker.ready.done() and not worker.ready.exception():
            worker.send({"type": "shutdown", "id": self._requests.next_id()})
            if await asyncio.to_thread(worker.wait, self.shutdown_timeout) is not None:
                return
        worker.kill("the kernel is shutting down")
        await asyncio.to_thread(worker.wait, 5.0)

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): make sure no worker outlives the kernel."""
        self._stopping = True
        if self.worker is not None:
            self.worker.kill_now()
        self._standby.kill_now()

    # requests and interrupts (see .requests, .interrupts) --------------------------
    async def request(
        self, kind: str, content: dict[str, Any], timeout: float | None = None, origin: object = None
    ) -> dict[str, Any]:
        """Send one request and wait for its reply (raises WorkerDied if the worker ends first).

        ``origin`` is what the kernel made it for: the handlers get it with the output it causes."""
        worker = await self.ready_worker()
        if kind not in wire.USER_CODE_REQUESTS:
            return await self._requests.send(worker, kind, content, timeout, self.stream_limit, origin)
        self._cells_running += 1
        self._standby.pause()  # its warm-up waits while user code runs (see Standby.pause)
        try:
            return await self._requests.send(worker, kind, content, timeout, self.stream_limit, origin)
        finally:
            self._cells_running -= 1
            if not self._cells_running:
                self._standby.resume()

    def standby_warmed(self, worker: WorkerHandle) -> None:
        """The standby finished warming up (it is idle now, and not paused again)."""
        self._standby.warmed(worker)

    async def request_if_ready(
        self, kind: str, content: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """A quick question for the current worker that must never wait on a start or a slow worker.

        None, at once, if no worker is ready; None too if it dies or does not answer within
        ``timeout``.  For requests the worker answers beside a running cell (resource usage).
        """
        return await self._requests.send_if_ready(self.worker, kind, content, timeout)

    def send_selftest_done(self, status: int) -> None:
        """Tell the worker waiting in ``%sandbox --selftest`` how the self-test ended."""
        if self.worker is not None:
            self.worker.send({"type": "selftest_done", "id": 0, "status": status})

    def send_input_reply(self, value: str) -> None:
        """Answer the worker's pending ``input()``."""
        if self.worker is not None:
            self.worker.send({"type": "input_reply", "id": 0, "value": value})

    def interrupt(self) -> None:
        """Interrupt the running cell; thread- and signal-safe."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._interrupts.now)

    # callbacks from the worker's threads (on the loop) -----------------------------
    def _on_exit(self, worker: WorkerHandle, returncode: int | None) -> None:
        if self._standby.lost(worker, returncode):
            return
        how = (
            worker.kill_reason
            or self.sandbox.explain_exit(worker.sandbox, returncode)
            or describe_exit(returncode)
        )
        self.sandbox.worker_exited(worker.sandbox)
        expected = self._stopping or worker is not self.worker
        (self.log.info if expected else self.log.warning)("Worker %s %s", worker.pid, how)
        subject, fresh = worker.subject, worker.fresh
        death = WorkerDied(how, worker.diagnostics(), subject=subject, fresh=fresh)
        was_ready = worker.ready.done() and worker.ready.exception() is None
        if not worker.ready.done():
            worker.ready.set_exception(death)
            worker.ready.exception()  # mark retrieved: a failed start is reported by ready_worker
        in_flight = self._requests.fail(worker, death)
        if worker is self.worker:
            self.exit_handler()
        if worker is not self.worker or self._stopping:
            return
        self.worker = None
        if not was_ready:
            return  # a failed start: the next request starts another and reports why it fails
        if not in_flight:
            self._death_report = WorkerDied(
                how, worker.diagnostics(), during_request=False, subject=subject, fresh=fresh
            )
        self.start(restore=True)  # at once, so the next cell does not wait; with the saved variables
