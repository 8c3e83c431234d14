"""The worker's life cycle, seen from the kernel: start, request, interrupt, replace, stop.

One worker at a time.  When it dies (crash, OOM kill, or killed by us because it ignored
an interrupt) the request in flight fails with :class:`WorkerDied`, a replacement is
started at once, and the kernel goes on.  A death between cells is kept as a report for
the next cell.  All of this runs on the kernel's event loop thread; only
:meth:`WorkerManager.interrupt` may be called from another thread or a signal handler.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

from traitlets import Bool, Dict, Float, Instance, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from ..policy.accelerators import Accelerators, Lease, LeaseError, pin_env, pin_tasks
from ..policy.sandbox import Sandbox
from ..protocol import jaxspec, wire
from ..protocol.importpath import SAFE_PATH_ENV
from .audit import audit
from .handle import WorkerHandle
from .local import Spawned, WorkerProcess, default_worker_argv, describe_exit, spawn
from .workerset import ProcessSet, WorkerSet


class WorkerError(Exception):
    """The worker could not serve a request."""


#: Requests that run user code (cells, widget callbacks, the JAX entry points): an interrupt and
#: its grace period apply.
INTERRUPTIBLE = frozenset({"execute", "comm"} | wire.JAX_REQUESTS)


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


class WorkerManager(LoggingConfigurable):
    """Starts and supervises the worker process that runs every cell."""

    worker_argv = List(
        Unicode(),
        help="Command that starts a worker; the kernel appends the wire descriptor and a JSON config. "
        "Defaults to this interpreter running jax_kernel.worker.",
    ).tag(config=True)

    @default("worker_argv")
    def _default_worker_argv(self) -> list[str]:
        return default_worker_argv()

    worker_env = Dict(
        Unicode(),
        help="Environment variables set (or, with an empty value, removed) for the worker, "
        "on top of the kernel's own environment.",
    ).tag(config=True)

    jax_settings = Dict(
        help="load_jax_library settings every worker starts with (platform, devices, x64, host_device_count, "
        "memory_fraction, preallocate, compilation_cache_dir, matmul_precision): cells that import jax "
        "without calling it get these.",
    ).tag(config=True)

    start_timeout = Float(60.0, help="Seconds a new worker may take to become ready.").tag(config=True)

    interrupt_grace = Float(
        3.0,
        help="Seconds an interrupted cell has to stop before the worker is killed and replaced "
        "(a jitted XLA loop cannot see KeyboardInterrupt).",
    ).tag(config=True)

    request_timeout = Float(
        30.0, help="Seconds to wait for a reply to completion, inspection and history requests."
    ).tag(config=True)

    shutdown_timeout = Float(2.0, help="Seconds a worker has to exit cleanly before it is killed.").tag(
        config=True
    )

    max_message_bytes = Integer(
        wire.DEFAULT_MAX_FRAME,
        help="Largest single message accepted from the worker; larger ones are discarded with a notice.",
    ).tag(config=True)

    standby = Bool(
        True,
        help="Keep one standby worker ready (interpreter started, sandbox applied, jax imported, backend "
        "not started), swapped in on crash recovery and %load_jax with new settings so that those take "
        "a fraction of a second. It costs the memory of one idle worker; turn it off on tight hosts.",
    ).tag(config=True)

    standby_delay = Float(
        2.0, help="Seconds after a worker is ready before the next standby starts (when no request runs)."
    ).tag(config=True)

    compilation_cache = Bool(
        True,
        help="Give workers JAX's persistent compilation cache (in JaxKernel's cache dir, "
        "WorkerManager.compilation_cache_dir), so a function compiled before a restart is read back "
        "instead of compiled again.",
    ).tag(config=True)

    compilation_cache_dir = Unicode(
        help="Where the persistent compilation cache lives (default: ~/.cache/jax-kernel/compilation)."
    ).tag(config=True)

    @default("compilation_cache_dir")
    def _default_cache_dir(self) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "jax-kernel", "compilation")

    compilation_cache_min_compile_secs = Float(
        0.0,
        help="Compiles at least this long are cached (JAX's own default is 1 s). 0 caches every compile: "
        "reading a small one back is 2-4x faster than compiling it, which is most of a restarted "
        "notebook's first cells.",
    ).tag(config=True)

    compilation_cache_max_bytes = Integer(
        2 * 1024**3,
        help="Size the compilation cache is trimmed to (least recently used first); -1: no limit.",
    ).tag(config=True)

    sandbox = Instance(Sandbox, help="The isolation policy applied to every worker.")

    @default("sandbox")
    def _default_sandbox(self) -> Sandbox:
        return Sandbox(parent=self, log=self.log)

    accelerators = Instance(Accelerators, help="Device policy: default devices, leasing, memory limits.")

    @default("accelerators")
    def _default_accelerators(self) -> Accelerators:
        return Accelerators(parent=self, log=self.log)

    processes = Instance(ProcessSet, help="Settings of sets of worker processes (%load_jax --processes N).")

    @default("processes")
    def _default_processes(self) -> ProcessSet:
        return ProcessSet(parent=self, log=self.log)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker: WorkerHandle | None = None
        self.spare: WorkerProcess | None = None  # the standby, until a start takes it
        self._prespawned: Spawned | None = None  # a standby started before the loop existed
        self.lease: Lease | None = None  # devices this kernel holds for its workers
        self._lease_request: tuple[str, Any] | None = None
        self.execution_count = 1
        self.stream_limit = 5_000_000
        self.output_handler: Callable[[dict[str, Any]], None] = lambda msg: None
        self.problem_handler: Callable[[str], None] = lambda text: None
        self.exit_handler: Callable[[], None] = lambda: None  # the current worker is gone
        self.input_handler: Callable[[dict[str, Any]], None] = lambda msg: None
        self.selftest_handler: Callable[[], None] = lambda: self.send_selftest_done(2)
        self.debug_event_handler: Callable[[dict[str, Any]], None] = lambda event: None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[WorkerHandle, asyncio.Future[dict[str, Any]], str]] = {}
        self._grace_timers: set[int] = set()  # requests whose interrupt grace period is running
        self._death_report: WorkerDied | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.jax_overrides: dict[str, Any] = {}  # settings asked for by load_jax_library since start
        self.sandbox.check()  # a bad policy stops the kernel at start, not at the first cell
        self.accelerators.memory_cap()  # and so does a bad device policy (read when first made)
        self.sandbox.protect_kernel()

    # life cycle -------------------------------------------------------------------
    def start(self) -> WorkerHandle:
        """Give the kernel a worker now: the standby if one is warm(ing), else a fresh spawn.

        Either way it becomes usable once it says it is ready; a new standby is started once it is.
        """
        self._loop = asyncio.get_running_loop()
        if self.lease is None and self._lease_request is None:
            try:
                self.reserve(self._jax_settings())
            except LeaseError as e:
                self.log.warning("No device lease for this kernel's worker: %s", e)
                self.problem_handler(f"no accelerator for this worker: {e}")
        config, env = self._job()
        settings = self._jax_settings()
        if settings.get("processes", 1) > 1:
            worker: WorkerHandle = self._start_set(settings, config, env)
            self.worker = worker
            return worker
        if self._prespawned is not None and self.spare is None:
            self.spare = self._watch(self._prespawned)
        self._prespawned = None
        spare, self.spare = self.spare, None
        if spare is not None and spare.alive():
            self._restrict_devices(spare)  # before it can run a cell
            spare.send({"type": "activate", "id": 0, "config": config, "env": env})
            self.worker = spare
        else:
            if spare is not None:
                spare.kill("the standby worker was not usable")
            self.worker = self._spawn(config, env)
            self._restrict_devices(self.worker)
        self.worker.started_at = time.monotonic()
        cores = config.get("cpu_affinity")
        if cores:
            self._pin(self.worker, cores)
        self.log.info("Started worker %s%s", self.worker.pid, " (standby)" if spare is self.worker else "")
        self.worker.ready.add_done_callback(lambda _f: self._refill_standby())
        return self.worker

    def _start_set(self, settings: dict[str, Any], config: dict[str, Any], env: dict[str, str]) -> WorkerSet:
        """A set of worker processes placed by an ipyparallel launcher (see :mod:`jax_kernel.supervision.workerset`)."""
        assert self._loop is not None
        options = self.processes
        group = self.sandbox.prepare_group()  # one memory and task budget for all its local members
        return WorkerSet(
            count=settings["processes"],
            launcher=settings.get("launcher") or options.launcher,
            devices_per_process=settings.get("devices_per_process") or options.devices_per_process,
            platform=settings.get("platform") or self.accelerators.host_platform(),
            config=config,
            env={**self._base_env(), **env},
            prepare_sandbox=lambda: self._prepare_sandbox(group),
            release_sandbox=self.sandbox.worker_exited,
            on_closed=lambda: self.sandbox.release_group(group),
            lease_local=self._lease_for_set,
            options=options,
            **self._wiring(),
        )

    def _pin(self, worker: WorkerProcess, cores: list[int]) -> None:
        """Pin the worker's threads to its leased cores now and once it is ready (see pin_tasks)."""

        def pin(_f: Any = None) -> None:
            refused = pin_tasks(worker.pid, cores)
            if refused:
                self.log.warning(
                    "Could not pin threads %s of worker %s to cores %s", refused, worker.pid, cores
                )

        pin()
        worker.ready.add_done_callback(pin)
        if worker.sandbox is not None and not worker.sandbox.restrict_cpus(cores):
            self.log.debug("No cpuset for worker %s: its lease is kept by pinning alone", worker.pid)

    def _restrict_devices(self, worker: WorkerProcess) -> None:
        """Keep a worker with an accelerator lease out of the other accelerators' device files."""
        lease = self.lease
        if lease is None or worker.sandbox is None:
            return
        if not worker.sandbox.restrict_to_lease(lease.platform, lease.devices) and lease.platform != "cpu":
            self.log.debug(
                "No devices cgroup for worker %s: its lease is kept by its environment", worker.pid
            )

    def _lease_for_set(self, platform: str, count: int) -> Lease | None:
        """Lease ``count`` devices (cores on a CPU host) for a set's members on this host, when the
        policy leases devices at all (``Accelerators.devices`` other than ``all``); LeaseError if
        they are not free."""
        if self.accelerators.devices == "all" or count == 0:
            return None
        allowed = self.sandbox.accelerators if self.sandbox.enabled else "all"
        return self.accelerators.acquire(platform, count, allowed)

    def _prepare_sandbox(self, group: dict[str, Any] | None = None) -> Any:
        """One worker's sandbox: the policy, its cgroups (inside a set's ``group``), and the
        compilation cache it may write."""
        shared = (
            (self.compilation_cache_dir, self.compilation_cache_folder()) if self.compilation_cache else None
        )
        return self.sandbox.prepare_worker(shared_cache=shared, group=group)

    def compilation_cache_folder(self) -> str:
        """This notebook's folder of the compilation cache: one per working directory and profile.

        JAX trusts what it reads from its cache (an entry is an executable), so a worker may write
        only the folder of its own trust domain: notebooks in the same folder under the same profile
        (which can write each other's files anyway) share one, and restarts keep their hits; an
        ``off`` kernel never shares with a sandboxed one."""
        domain = f"{self.sandbox.profile}\0{os.path.realpath(os.getcwd())}"
        digest = hashlib.sha256(domain.encode()).hexdigest()[:20]
        return os.path.join(self.compilation_cache_dir, f"{self.sandbox.profile}-{digest}")

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The kernel's own safe import path (jax_kernel.protocol.importpath) is not the user's: the worker
        # runs with -P itself, and `!python script.py` in a cell finds the script's siblings as usual.
        for key in SAFE_PATH_ENV:
            env.pop(key, None)
        env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        extra = {}
        for key, value in self.worker_env.items():
            if value:
                extra[key] = value
            else:
                env.pop(key, None)
        # The deployer's worker_env passes the allowlist (they named it) but not the deny list:
        # secrets never pass, even by config.
        return self.sandbox.worker_environment(env, extra)

    def _launch(self, config: dict[str, Any], env: dict[str, str] | None) -> Spawned:
        """Start a worker process: with its job (``env`` given) or as a standby (``env`` None)."""
        full_env = self._base_env()
        if env is not None:
            full_env.update(env)
        sandbox = self._prepare_sandbox()
        config = {
            **config,
            "max_frame": self.max_message_bytes,
            "sandbox": sandbox.policy,
            "standby": env is None,
        }
        return spawn(list(self.worker_argv), full_env, config, sandbox)

    def _watch(self, spawned: Spawned) -> WorkerProcess:
        assert self._loop is not None
        return WorkerProcess(spawned=spawned, **self._wiring())

    def _wiring(self) -> dict[str, Any]:
        """What a worker (or a set) needs from the manager: limits, the loop, the callbacks."""
        return {
            "max_frame": self.max_message_bytes,
            "stream_limit": self.stream_limit,
            "loop": self._loop,
            "on_message": self._on_message,
            "on_problem": self._on_problem,
            "on_exit": self._on_exit,
            "log": self.log,
        }

    def _spawn(self, config: dict[str, Any], env: dict[str, str] | None) -> WorkerProcess:
        return self._watch(self._launch(config, env))

    def prespawn(self) -> None:
        """Start the standby now, before the kernel's event loop exists (a spare kernel process,
        see :mod:`jax_kernel.launch.provisioner`); the first :meth:`start` takes it."""
        if self.standby and self._prespawned is None:
            self._prespawned = self._launch({}, None)

    def _refill_standby(self, delay: float | None = None) -> None:
        """Start the next standby a little after the current worker is ready, and only between
        requests: its start-up (a second of CPU) must not slow down the first cells after a restart."""
        if not self.standby or self._stopping or self.spare is not None or self._loop is None:
            return
        if self.worker is None or not self.worker.ready.done() or self.worker.ready.exception():
            return
        if self.worker.processes > 1:
            return  # a set's processes need the CPU more than a standby for a later single worker
        if delay is None:
            delay = self.standby_delay
        if delay > 0 or any(not fut.done() for _w, fut, _k in self._pending.values()):
            self._loop.call_later(max(delay, 0.5), self._refill_standby, 0.0)
            return
        self.spare = self._spawn({}, None)
        self.log.debug("Started standby worker %s", self.spare.pid)

    def _job(self) -> tuple[dict[str, Any], dict[str, str]]:
        """What a worker is told when it takes up work: its config and the environment JAX reads."""
        settings = self._jax_settings()
        lease = self.lease
        env = jaxspec.settings_env(settings)
        env.update(self.accelerators.memory_env(settings))
        config: dict[str, Any] = {
            "execution_count": self.execution_count,
            "output_limit": self.stream_limit,
            "host_platform": self.accelerators.host_platform(),
            "memory_cap": self.accelerators.memory_cap(),
        }
        if self.compilation_cache and "compilation_cache_dir" not in settings:
            # The same path at every start: JAX's cache key includes it (a restart must hit).
            env["JAX_COMPILATION_CACHE_DIR"] = self.compilation_cache_folder()
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = f"{self.compilation_cache_min_compile_secs:g}"
            env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(self.compilation_cache_max_bytes)
        if lease is not None:
            unit = "cores" if lease.platform == "cpu" else f"{lease.platform} devices"
            config["lease"] = f"{unit} {', '.join(map(str, lease.devices))} ({lease.mode})"
            if lease.platform == "cpu":
                config["cpu_affinity"] = lease.devices
                if "host_device_count" not in settings:
                    env["JAX_NUM_CPU_DEVICES"] = str(len(lease.devices))
            else:
                env.update(pin_env(lease))
        elif self.accelerators.host_platform() != "cpu" and self._device_request(settings) is not None:
            # The default lease could not be had: no accelerator rather than one another kernel holds.
            env.update(
                {name: "" for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS")}
            )
        config["jax_settings"] = settings
        return config, env

    def reserve(self, settings: dict[str, Any]) -> Lease | None:
        """Lease the devices ``settings`` ask for (or the policy's default) before a worker starts.

        Raises LeaseError, saying who holds what, and keeps the current lease in that case, so a
        refused ``%load_jax`` leaves the running worker as it was.
        """
        request = self._device_request(settings)
        if request == self._lease_request:
            return self.lease
        old, old_request = self.lease, self._lease_request
        if old is not None:
            old.release()  # our own devices count as free for the new request
        self.lease, self._lease_request = None, None
        if request is None:
            return None
        platform, wanted = request
        allowed = self.sandbox.accelerators if self.sandbox.enabled else "all"
        # A set being replaced by one worker: its devices are ours too (flock counts each open file).
        leaving = self.worker if self.worker is not None and self.worker.processes > 1 else None
        set_lease = leaving.lease if leaving is not None else None
        if set_lease is not None:
            set_lease.release()
        try:
            self.lease = self.accelerators.acquire(platform, wanted, allowed)
        except LeaseError:
            if leaving is not None and set_lease is not None:
                try:
                    leaving.lease = self.accelerators.acquire(set_lease.platform, set_lease.devices, allowed)
                except LeaseError:
                    self.log.warning("Lost the lease of the set's processes while trying another")
            if old_request is not None:
                try:
                    self.lease = self.accelerators.acquire(old_request[0], old_request[1], allowed)
                except LeaseError:
                    self.log.warning("Lost the lease on %s while trying another", old_request)
                    self.lease = None
                else:
                    self._lease_request = old_request
            raise
        self._lease_request = request
        self.log.info("Leased %s %s (%s)", platform, self.lease.devices, self.lease.mode)
        return self.lease

    def reserve_for(self, jax_overrides: dict[str, Any]) -> Lease | None:
        """:meth:`reserve` for a worker started with these load_jax_library settings.

        A set of processes whose launcher can't be found is refused here too (JaxSpecError), before
        the running worker is replaced.
        """
        settings = {**self._jax_settings_defaults(), **jax_overrides}
        count = settings.get("processes", 1)
        if count > self.processes.max_processes:
            raise jaxspec.JaxSpecError(
                f"a set of {count} processes is more than this kernel allows "
                f"(ProcessSet.max_processes = {self.processes.max_processes}). The worker was kept as it was."
            )
        if count > 1:
            try:
                self.processes.launcher_class(settings.get("launcher") or self.processes.launcher)
            except ValueError as e:
                raise jaxspec.JaxSpecError(f"{e}. The worker was kept as it was.") from None
        return self.reserve(settings)

    def _device_request(self, settings: dict[str, Any]) -> tuple[str, Any] | None:
        """(platform, count or ids) to lease, or None when the worker takes devices unleased."""
        if settings.get("processes", 1) > 1:
            return None  # a set leases for its members on this host itself, once it knows how many
        devices = settings.get("devices")
        if devices is None and self.accelerators.devices != "all":
            devices = jaxspec.parse_devices(self.accelerators.devices)
        if devices is None:
            return None
        host = self.accelerators.host_platform()
        platform = settings.get("platform") or host
        if platform == "cpu" and isinstance(devices, list):
            return None  # ids of JAX's CPU devices: only checked by the worker, nothing to lease
        if platform != "cpu" and platform != host:
            return None  # no such devices here: the worker's load says so
        return platform, devices

    def _jax_settings_defaults(self) -> dict[str, Any]:
        try:
            return jaxspec.check_load_settings(self.jax_settings, from_strings=True)
        except jaxspec.JaxSpecError as e:
            self.log.error("Ignoring WorkerManager.jax_settings: %s", e)
            return {}

    def _jax_settings(self) -> dict[str, Any]:
        return {**self._jax_settings_defaults(), **self.jax_overrides}

    async def replace(self, jax_settings: dict[str, Any]) -> WorkerHandle:
        """Stop the current worker and start one whose JAX starts with these settings.

        JAX reads platform, visible devices, x64, host device count and allocator settings
        only when its backend starts, so a running worker cannot take new ones.  They stay in
        force for later replacements (a crash restart keeps them) until the kernel restarts.
        """
        self.reserve_for(jax_settings)
        self.jax_overrides = dict(jax_settings)
        old, self.worker = self.worker, None  # no death report and no automatic restart for it
        if old is not None:
            if old.ready.done() and not old.ready.exception() and old.alive():
                old.send({"type": "shutdown", "id": next(self._ids)})
                if await asyncio.to_thread(old.wait, self.shutdown_timeout) is None:
                    old.kill("it was replaced to apply new JAX settings")
            else:
                old.kill("it was replaced to apply new JAX settings")
        self.start()
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
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.kill("the kernel is shutting down")  # it holds nothing: no need to be polite
        worker, self.worker = self.worker, None
        if self.lease is not None:
            self.lease.release()
        if worker is None:
            return
        if worker.ready.done() and not worker.ready.exception():
            worker.send({"type": "shutdown", "id": next(self._ids)})
            if await asyncio.to_thread(worker.wait, self.shutdown_timeout) is not None:
                return
        worker.kill("the kernel is shutting down")
        await asyncio.to_thread(worker.wait, 5.0)

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): make sure no worker outlives the kernel."""
        self._stopping = True
        for worker in (self.worker, self.spare):
            if worker is not None:
                worker.kill_now()

    # requests ---------------------------------------------------------------------
    async def request(
        self, kind: str, content: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its reply (raises WorkerDied if the worker ends first)."""
        worker = await self.ready_worker()
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (worker, fut, kind)
        busy = any(k == "execute" for _w, _f, k in self._pending.values() if _f is not fut)
        if kind == "execute" or kind in wire.JAX_REQUESTS or (kind == "comm" and not busy):
            # A widget's message between cells is its own "cell": its replies get a fresh budget.
            worker.stream_budget.reset(self.stream_limit + 1024)  # room for the worker's own notice
        worker.send({"type": kind, "id": req_id, **content})
        watchdog = None
        if kind == "execute" and self.sandbox.enabled and self.sandbox.cpu_time_limit > 0:
            watchdog = asyncio.ensure_future(self._cpu_watchdog(worker, fut, self.sandbox.cpu_time_limit))
        try:
            return await asyncio.wait_for(fut, timeout) if timeout else await fut
        finally:
            self._pending.pop(req_id, None)
            if watchdog is not None:
                watchdog.cancel()
            if kind == "execute" and worker.sandbox and worker.sandbox.new_process_limit_hits() > 0:
                self._after_process_limit(worker)

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
            self.problem_handler(
                f"the cell hit the sandbox's process limit ({self.sandbox.max_processes} tasks, "
                f"Sandbox.max_processes): its {len(killed)} child processes were killed so that the next "
                "cell can run"
            )

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the manager runs on; other threads reach it with run_coroutine_threadsafe."""
        return self._loop

    async def request_if_ready(
        self, kind: str, content: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """A quick question for the current worker that must never wait on a start or a slow worker.

        None, at once, if no worker is ready; None too if it dies or does not answer within
        ``timeout``.  For requests the worker answers beside a running cell (resource usage).
        """
        worker = self.worker
        if worker is None or not worker.ready.done() or worker.ready.exception() is not None:
            return None
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (worker, fut, kind)
        try:
            if not worker.send({"type": kind, "id": req_id, **content}):
                return None
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, WorkerError):
            return None
        finally:
            self._pending.pop(req_id, None)

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

    def _running_cell(self) -> tuple[int, WorkerHandle] | None:
        for req_id, (worker, fut, kind) in self._pending.items():
            if kind in INTERRUPTIBLE and not fut.done():
                return req_id, worker
        return None

    def send_selftest_done(self, status: int) -> None:
        """Tell the worker waiting in ``%sandbox --selftest`` how the self-test ended."""
        if self.worker is not None:
            self.worker.send({"type": "selftest_done", "id": 0, "status": status})

    def send_input_reply(self, value: str) -> None:
        """Answer the worker's pending ``input()``."""
        if self.worker is not None:
            self.worker.send({"type": "input_reply", "id": 0, "value": value})

    # interrupt ----------------------------------------------------------------------
    def interrupt(self) -> None:
        """Interrupt the running cell; thread- and signal-safe."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        running = self._running_cell()
        if running is None:
            return  # nothing runs: an interrupt between cells is a no-op, as in ipykernel
        req_id, worker = running
        worker.interrupt()
        if req_id not in self._grace_timers:
            assert self._loop is not None
            self._grace_timers.add(req_id)
            self._loop.call_later(self.interrupt_grace, self._grace_expired, worker, req_id)

    def _grace_expired(self, worker: WorkerHandle, req_id: int) -> None:
        # The timer belongs to the interrupted cell: if that cell has ended, a later cell on the same
        # worker is none of its business.
        self._grace_timers.discard(req_id)
        entry = self._pending.get(req_id)
        if worker is not self.worker or entry is None or entry[1].done():
            return
        # What it sent and the loop has not read yet may hold its answer: read that before judging.
        worker.catch_up()
        if entry[1].done():
            return
        self.log.warning(
            "Worker %s ignored the interrupt for %.1f s; killing it", worker.pid, self.interrupt_grace
        )
        within = f"did not stop within {self.interrupt_grace:g} s of the interrupt"
        recent = self.interrupt_grace / 2
        if worker.last_frame_at() > time.monotonic() - recent:
            why = (
                "though it went on sending output: the cell's code catches KeyboardInterrupt, or the "
                "output comes from threads or child processes that an interrupt does not stop"
            )
        else:
            why = f"and sent nothing in its last {recent:g} s: it was stuck in native code, such as a jitted XLA loop"
        worker.kill(f"{within} ({why}), so it was killed")

    # callbacks from the worker's threads (on the loop) -----------------------------
    def _on_message(self, worker: WorkerHandle, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind in ("reply", "debug_reply"):
            # A debug reply arrives while the cell it stopped is still in flight: it has its own id.
            entry = self._pending.get(msg["id"])
            matches = entry is not None and (entry[2] == "debug") == (kind == "debug_reply")
            if entry is not None and matches and entry[0] is worker and not entry[1].done():
                entry[1].set_result(msg["content"])
        elif kind == "ready":
            if msg["protocol"] != wire.PROTOCOL_VERSION:
                worker.kill(f"it speaks wire protocol {msg['protocol']}, not {wire.PROTOCOL_VERSION}")
            elif not worker.ready.done():
                if worker.sandbox is not None:  # a set checks its members itself
                    missing = audit(worker.pid, worker.sandbox.policy, msg.get("sandbox"))
                    if missing:
                        self.log.error(
                            "Worker %s is not sandboxed as it says: %s", worker.pid, "; ".join(missing)
                        )
                        worker.kill(
                            "was stopped before it ran anything: its sandbox is not in force as it reported "
                            f"(seen from outside, it lacks {', '.join(missing)})"
                        )
                        return
                self.sandbox.worker_ready(msg.get("sandbox"))
                worker.ready.set_result(msg)
                self.log.info("Worker %s ready in %.3f s", worker.pid, time.monotonic() - worker.started_at)
        elif kind == "standby":
            self.log.debug("Standby worker %s warm", worker.pid)
        elif worker is self.worker:
            if kind == "input_request":
                self.input_handler(msg)
            elif kind == "selftest":
                self.selftest_handler()
            elif kind == "debug_event":
                self.debug_event_handler(msg["content"])
            else:
                self.output_handler(msg)

    def _on_problem(self, worker: WorkerHandle, text: str) -> None:
        if worker is self.worker:
            self.problem_handler(text)

    def _on_exit(self, worker: WorkerHandle, returncode: int | None) -> None:
        if worker is self.spare:  # a standby that died before it was needed: the next start spawns
            self.spare = None
            self.sandbox.worker_exited(worker.sandbox)
            self.log.warning(
                "Standby worker %s %s\n%s",
                worker.pid,
                worker.kill_reason or describe_exit(returncode),
                worker.diagnostics()[-2000:],
            )
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
        in_flight = False
        for w, fut, _kind in list(self._pending.values()):
            if w is worker and not fut.done():
                fut.set_exception(death)
                in_flight = True
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
        self.start()  # replace it at once so the next cell does not wait
