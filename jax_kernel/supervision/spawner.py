"""Kernel process: what a worker starts with, and starting it (one process, or a set).

A worker's job is its config (execution count, output limit, lease, JAX settings) and the
environment JAX reads (:func:`jax_kernel.policy.environment.job_environment`); a fresh process
gets its whole environment built on top (:func:`jax_kernel.policy.environment.build`), a standby
gets the job's part when it takes up work.  Each process gets a sandbox of its own, with the
folders of this notebook's trust domain (:mod:`jax_kernel.policy.domains`): its compilation cache,
its packages and its cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..policy import environment
from ..policy.domains import UserDirs, check_outside_runtime, trust_domain, user_dirs
from ..policy.paths import runtime_paths
from .handle import WorkerHandle
from .leases import DeviceLeases
from .local import Spawned, WorkerProcess, spawn
from .workerset import WorkerSet

if TYPE_CHECKING:
    from .manager import WorkerManager


class WorkerSpawner:
    """Starts workers as the manager's settings say, wired to the manager's callbacks."""

    def __init__(
        self,
        settings: WorkerManager,
        leases: DeviceLeases,
        on_message: Callable[[Any, dict[str, Any]], None],
        on_problem: Callable[[Any, str], None],
        on_exit: Callable[[Any, int | None], None],
    ) -> None:
        self.settings = settings  # read when a worker starts: the kernel sets some after init
        self.leases = leases
        self._callbacks = {"on_message": on_message, "on_problem": on_problem, "on_exit": on_exit}
        self._packages_refused: str | None = None  # why user_packages_dir can't be used, once known

    def job(self, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """What a worker is told when it takes up work: its config and the environment JAX reads."""
        m = self.settings
        cache = (
            environment.CompilationCache(
                self.cache_folder(), m.compilation_cache_min_compile_secs, m.compilation_cache_max_bytes
            )
            if m.compilation_cache
            else None
        )
        env = environment.job_environment(
            settings,
            m.accelerators.memory_env(settings),
            cache,
            self.leases.lease,
            no_devices=self.leases.withheld(settings),
        )
        config: dict[str, Any] = {
            "execution_count": m.execution_count,
            "output_limit": m.stream_limit,
            # JPY_* never reaches a worker's environment (Sandbox.env_deny); the notebook's path
            # is no secret, and cells read it as ipykernel gives it: __session__.
            "session_name": os.environ.get("JPY_SESSION_NAME", ""),
            "host_platform": m.accelerators.host_platform(),
            "memory_cap": m.accelerators.memory_cap(),
            **self.leases.job_config(),
            "jax_settings": settings,
        }
        return config, env

    def cache_folder(self) -> str:
        """This notebook's folder of the compilation cache: one per working directory and profile.

        JAX trusts what it reads from its cache (an entry is an executable), so a worker may write
        only the folder of its own trust domain: notebooks in the same folder under the same profile
        (which can write each other's files anyway) share one, and restarts keep their hits; an
        ``off`` kernel never shares with a sandboxed one."""
        m = self.settings
        return os.path.join(m.compilation_cache_dir, trust_domain(m.sandbox.profile))

    def user_dirs(self) -> UserDirs | None:
        """This notebook's packages and cache folders (``WorkerManager.user_packages*``,
        ``user_cache*``) for a sandboxed worker; None under the ``off`` profile, whose worker
        installs and caches where the stock kernel's would."""
        m = self.settings
        if not m.sandbox.enabled:
            return None
        packages = m.user_packages_dir if m.user_packages else None
        if packages and self._packages_refused is None:
            folder = os.path.join(packages, trust_domain(m.sandbox.profile, environment=True))
            self._packages_refused = check_outside_runtime(folder, runtime_paths()) or ""
            if self._packages_refused:
                m.log.warning(
                    "WorkerManager.user_packages_dir: %s; %%pip installs nothing", self._packages_refused
                )
        if self._packages_refused:
            packages = None
        cache = m.user_cache_dir if m.user_cache else None
        return user_dirs(m.sandbox.profile, packages, cache, m.sandbox.writable_paths)

    def prepare_sandbox(self, group: dict[str, Any] | None = None) -> Any:
        """One worker's sandbox: the policy, its cgroups (inside a set's ``group``), and the
        folders of its domain it may write: the compilation cache's, its packages and its cache."""
        m = self.settings
        shared = (m.compilation_cache_dir, self.cache_folder()) if m.compilation_cache else None
        return m.sandbox.prepare_worker(shared_cache=shared, group=group, user_dirs=self.user_dirs())

    def environment(self, job: dict[str, str] | None) -> dict[str, str]:
        """A worker process's environment (:func:`jax_kernel.policy.environment.build`), its
        ``XDG_CACHE_HOME`` the notebook folder's cache (the worker points it at ``~/.cache``
        once its mount namespace shows that folder there)."""
        m = self.settings
        env = environment.build(os.environ, m.worker_env, m.sandbox.worker_environment, job)
        dirs = self.user_dirs()
        if dirs is not None and dirs.cache is not None:
            env["XDG_CACHE_HOME"] = dirs.cache[1]
        return env

    def launch(self, config: dict[str, Any], env: dict[str, str] | None) -> Spawned:
        """Start a worker process: with its job (``env`` given) or as a standby (``env`` None)."""
        m = self.settings
        full_env = self.environment(env)
        sandbox = self.prepare_sandbox()
        config = {
            **config,
            "max_frame": m.max_message_bytes,
            "sandbox": sandbox.policy,
            "standby": env is None,
        }
        return spawn(list(m.worker_argv), full_env, config, sandbox)

    def watch(self, spawned: Spawned) -> WorkerProcess:
        """Read a started worker's wire on the manager's loop."""
        return WorkerProcess(spawned=spawned, **self._wiring())

    def start_set(
        self, settings: dict[str, Any], config: dict[str, Any], env: dict[str, str]
    ) -> WorkerHandle:
        """A set of worker processes placed by an ipyparallel launcher (see :mod:`jax_kernel.supervision.workerset`)."""
        m = self.settings
        options = m.processes
        group = m.sandbox.prepare_group()  # one memory and task budget for all its local members
        return WorkerSet(
            count=settings["processes"],
            launcher=settings.get("launcher") or options.launcher,
            devices_per_process=settings.get("devices_per_process") or options.devices_per_process,
            platform=settings.get("platform") or m.accelerators.host_platform(),
            config=config,
            env=self.environment(env),
            prepare_sandbox=lambda: self.prepare_sandbox(group),
            release_sandbox=m.sandbox.worker_exited,
            on_closed=lambda: m.sandbox.release_group(group),
            lease_local=self.leases.for_set,
            options=options,
            **self._wiring(),
        )

    def _wiring(self) -> dict[str, Any]:
        """What a worker (or a set) needs from the manager: limits, the loop, the callbacks."""
        m = self.settings
        assert m.loop is not None
        return {
            "max_frame": m.max_message_bytes,
            "stream_limit": m.stream_limit,
            "loop": m.loop,
            **self._callbacks,
            "log": m.log,
        }
