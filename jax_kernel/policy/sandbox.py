"""Kernel side of the sandbox: the deployer's policy, resolved into what each worker gets.

:class:`Sandbox` is the one place the policy lives (traitlets, so ``jax_kernel_config.py``
or ``--Sandbox.profile=strict``).  The kernel reads it at start; nothing a cell sends can
change it, because the worker applies it to itself before any user code runs and then
can't undo it (no capabilities, ``no_new_privs``, Landlock and seccomp only tighten).

Per worker the kernel prepares: a scrubbed environment (no kernel secrets, tokens,
connection paths), the JSON policy the worker applies (see
:mod:`jax_kernel.worker.sandbox`), and, where the host offers them to us, cgroups for
memory and the number of tasks, which the kernel also uses to explain a death ("killed
by the memory limit") and to clean up processes the worker left behind.

Runs in the kernel process.  This module holds the settings and the entry points the
supervisor calls; the work is done next to it: :mod:`.paths`, :mod:`.devices`,
:mod:`.environment`, :mod:`.statedir`, :mod:`.limits`, :mod:`.network`, :mod:`.describe`,
:mod:`.kernel_process` and :mod:`jax_kernel.host.cgroups`.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, Union, default, validate
from traitlets.config import LoggingConfigurable

from ..host.cgroups import Cgroup, _make_cgroup, _own_cgroups  # noqa: F401 - re-exported
from ..host.netns import Egress
from ..protocol.config import SandboxPolicy
from . import describe, devices, environment, kernel_process, limits, paths, statedir
from .devices import ACCELERATOR_FILE  # noqa: F401 - re-exported
from .domains import UserDirs
from .environment import DEFAULT_ENV_ALLOW, DEFAULT_ENV_DENY  # noqa: F401 - re-exported
from .limits import WorkerSandbox, parse_size, total_memory  # noqa: F401 - re-exported
from .network import WorkerNetwork
from .paths import DEFAULT_HIDDEN


class Sandbox(LoggingConfigurable):
    """The isolation policy for the worker that runs cells (see the README's threat model).

    ``standard`` applies every protection the host offers and warns once about the rest;
    ``strict`` also cuts the network and refuses to start a worker if any protection is
    unavailable; ``off`` applies nothing (the worker still runs in its own process).
    """

    profile = Enum(
        ["strict", "standard", "off"],
        "standard",
        help="strict: every protection or no worker, no network; standard: what the host offers, "
        "network allowed; off: no sandbox.",
    ).tag(config=True)

    allow_network = Bool(
        None,
        allow_none=True,
        help="Whether cells may use the network. Default: True under standard, False under strict "
        "(a new network namespace: nothing reachable, not even loopback).",
    ).tag(config=True)

    egress = Enum(
        ["user-mode", "host"],
        "user-mode",
        help="How workers reach the network when it is allowed. user-mode: a network namespace of "
        "the kernel's own with slirp4netns (the internet, not the host's loopback: other kernels' "
        "ports, the Jupyter server, local services; those named in host_ports are forwarded). "
        "host: the host's network, loopback included. Where user-mode can't be had (no slirp4netns, "
        "no network namespaces) the worker shares the host's network and %sandbox says so.",
    ).tag(config=True)

    host_ports = List(
        Integer(),
        help="TCP ports of services on the host's loopback that cells may reach under user-mode "
        "egress (a local database, MLflow, a model server), at 127.0.0.1:PORT as outside. The "
        "kernel forwards each; no other host port is reachable.",
    ).tag(config=True)

    @validate("host_ports")
    def _valid_ports(self, proposal: Any) -> list[int]:
        bad = [p for p in proposal["value"] if not 0 < p < 65536]
        if bad:
            raise TraitError(f"Sandbox.host_ports: {bad[0]} is not a TCP port (1-65535)")
        return list(proposal["value"])

    active_outputs = Enum(
        ["allow", "sanitize"],
        None,
        allow_none=True,
        help="Outputs that run code in the browser (JavaScript, scripts and event handlers in HTML, "
        "script-bearing SVG): allow them, as the stock kernel does, or sanitize (drop JavaScript, clean "
        "HTML with nh3) before they reach the frontend, where JupyterLab runs the session's outputs with "
        "the user's login. Default: sanitize under strict, allow under standard.",
    ).tag(config=True)

    @property
    def active_outputs_mode(self) -> str:
        if self.active_outputs is not None:
            return self.active_outputs
        return "sanitize" if self.profile == "strict" else "allow"

    writable_paths = List(
        Unicode(),
        help="Extra paths the worker may write, beyond the kernel's working directory, its private "
        "temp dir and JAX's compilation cache dir.",
    ).tag(config=True)

    hidden_paths = List(
        Unicode(),
        help="Paths the worker can't read (~ and $VAR expanded, glob patterns such as '/tmp/tmux-*' "
        "matched when each worker starts: a path that appears later is hidden from the next worker). "
        "The connection file and Jupyter's runtime dir are always hidden, in addition to these.",
    ).tag(config=True)

    @default("hidden_paths")
    def _default_hidden(self) -> list[str]:
        return list(DEFAULT_HIDDEN)

    memory_limit = Union(
        [Integer(), Unicode()],
        default_value="75%",
        help="Memory the worker (and its children) may use: bytes, '4G', or a percentage of RAM "
        "('75%'); 0 for none. A cgroup where the host lets us make one, and RLIMIT_DATA.",
    ).tag(config=True)

    max_processes = Integer(
        4096,
        help="Tasks (processes and threads) the worker may have; 0 for no limit. XLA starts a "
        "thread pool per core: keep this well above the core count.",
    ).tag(config=True)

    max_open_files = Integer(4096, help="Open file descriptors per worker process (RLIMIT_NOFILE).").tag(
        config=True
    )

    max_file_size = Union(
        [Integer(), Unicode()],
        default_value=0,
        help="Largest file the worker may write (bytes or '10G'; RLIMIT_FSIZE); 0 for no limit.",
    ).tag(config=True)

    cpu_time_limit = Float(
        0.0,
        help="CPU seconds (all threads) one cell may use before the worker is killed; 0 for no limit.",
    ).tag(config=True)

    accelerators = Unicode(
        "all",
        help="Accelerators the worker may use: 'all', 'none' (CPU only), or device indices '0,1' "
        "(sets CUDA_VISIBLE_DEVICES and opens only those device files).",
    ).tag(config=True)

    protect_dotfiles = Bool(
        True,
        help="Keep every dot-entry at the top of a writable folder read-only (~/.bashrc, ~/.local, "
        ".git with its hooks): code planted there would run outside the sandbox.",
    ).tag(config=True)

    private_tmp = Bool(
        True,
        help="Give the worker a /tmp of its own (this kernel's, in its mount namespace): other "
        "notebooks' temp files, kernels' connection files and tmux/ssh-agent sockets in the host's "
        "/tmp are out of its sight; tempfile and literal /tmp paths work as usual.",
    ).tag(config=True)

    env_allow = List(
        Unicode(),
        help="The only environment variables (fnmatch patterns, case-insensitive) the worker gets "
        "from the kernel's environment; env_deny still removes any of them, and "
        "WorkerManager.worker_env is set whatever this says. Not applied under the off profile.",
    ).tag(config=True)

    @default("env_allow")
    def _default_env_allow(self) -> list[str]:
        return list(DEFAULT_ENV_ALLOW)

    env_deny = List(
        Unicode(),
        help="Environment variables (fnmatch patterns, case-insensitive) removed from the worker's "
        "environment, even when env_allow or WorkerManager.worker_env names them.",
    ).tag(config=True)

    @default("env_deny")
    def _default_env_deny(self) -> list[str]:
        return list(DEFAULT_ENV_DENY)

    @validate("memory_limit", "max_file_size")
    def _valid_size(self, proposal: Any) -> Any:
        try:
            parse_size(proposal["value"], f"Sandbox.{proposal['trait'].name}")
        except ValueError as e:
            raise TraitError(str(e)) from None
        return proposal["value"]

    @validate("accelerators")
    def _valid_accelerators(self, proposal: Any) -> str:
        value = proposal["value"].strip()
        if value not in ("all", "none") and not re.fullmatch(r"\d+(\s*,\s*\d+)*", value):
            raise TraitError(f"Sandbox.accelerators: {value!r} is not 'all', 'none' or indices like '0,1'")
        return value

    @validate("max_processes", "max_open_files")
    def _valid_count(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError(f"Sandbox.{proposal['trait'].name} must be >= 0")
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_dir: str | None = None
        self._mask_id: list[int] | None = None
        self._warned = False
        self.last_report: dict[str, Any] | None = None
        self._runtime: frozenset[str] | None = None
        self._cgroups = limits.CgroupKeeper(self.log)  # the workers' and the sets' cgroups
        self._config_made: list[str] = []  # config dirs made so that they are bound read-only
        self._network = WorkerNetwork(self.log)  # the workers' user-mode egress, made on first use
        atexit.register(self._release_all)

    def _release_all(self) -> None:
        self._cgroups.release_all()
        self._network.close()

    def protect_kernel(self) -> None:
        """Make the kernel process non-dumpable (:func:`.kernel_process.protect_kernel_process`)."""
        if self.enabled:
            kernel_process.protect_kernel_process(self.log)

    # policy ------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise TraitError (one line, naming the setting) if the policy can't be resolved."""
        for name in ("memory_limit", "max_file_size"):
            try:
                parse_size(getattr(self, name), f"Sandbox.{name}")
            except ValueError as e:
                raise TraitError(str(e)) from None
        if self.enabled:
            try:
                statedir.state_base(self.writable_paths, self.log)
            except ValueError as e:
                raise TraitError(f"Sandbox: {e}") from None

    @property
    def enabled(self) -> bool:
        return self.profile != "off"

    @property
    def network_allowed(self) -> bool:
        if self.allow_network is not None:
            return bool(self.allow_network)
        return self.profile != "strict"

    def state_dir(self) -> str:
        """A private directory for this kernel's workers: their temp dir and IPython history."""
        if self._state_dir is None:
            self._state_dir = statedir.make_state_dir(statedir.state_base(self.writable_paths, self.log))
            self._mask_id = statedir.fill_state_dir(self._state_dir)
        return self._state_dir

    def moved(self) -> None:
        """The kernel took over another notebook folder before any worker ran a cell (a pooled
        kernel process): the state dir made for the old one goes (the private /tmp in it holds
        that folder's mount point), and the next worker gets one made for the new folder."""
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        self._state_dir = self._mask_id = None
        self.check()

    def _runtime_paths(self) -> frozenset[str]:
        if self._runtime is None:  # they do not change while the kernel runs
            self._runtime = paths.runtime_paths()
        return self._runtime

    def prepare_group(self) -> dict[str, Cgroup]:
        """One parent cgroup per controller (memory, pids) for a set's members on this host, with the
        limits one worker gets: a set of N processes shares them instead of getting N times each
        (8 members x 4096 tasks was this host's pid_max).  Each member's own cgroup is made inside
        it (``prepare_worker(group=...)``); :meth:`release_group` when the set has ended."""
        if not self.enabled:
            return {}
        return self._cgroups.make_group(limits.cgroup_limits(self.memory_limit, self.max_processes))

    def release_group(self, group: dict[str, Cgroup]) -> None:
        """Remove a set's parent cgroups (what is left in them is killed first)."""
        self._cgroups.release_group(group)

    def prepare_worker(
        self,
        cwd: str | None = None,
        extra_writable: Sequence[str] = (),
        shared_cache: tuple[str, str] | None = None,
        group: dict[str, Cgroup] | None = None,
        user_dirs: UserDirs | None = None,
    ) -> WorkerSandbox:
        """Resolve the policy for one new worker (and make its cgroups, where we can).

        ``extra_writable``: folders the kernel itself gives workers, made if missing; unlike
        ``writable_paths`` they are not the deployer's to choose.  ``shared_cache``: (root, folder)
        of a cache that outlives the kernel (JAX's compilation cache): the worker may write its own
        folder and, in its mount namespace, sees nothing else of the root, since a cache entry is
        code and data the next reader trusts (``_shared_cache`` in the worker's sandbox).
        ``group``: a set's parent cgroups (:meth:`prepare_group`), to make this worker's inside.
        ``user_dirs``: the notebook folder's packages and cache folders (:mod:`.domains`), writable
        like the compilation cache's, the cache bound over ``~/.cache``.
        """
        if not self.enabled:
            return WorkerSandbox({"profile": "off"})
        resources = limits.resource_limits(
            self.memory_limit, self.max_processes, self.max_open_files, self.max_file_size
        )
        state = self.state_dir()
        fs, writable = paths.worker_fs(
            cwd,
            state,
            [*extra_writable, *(user_dirs.folders if user_dirs else [])],
            shared_cache,
            self.writable_paths,
            hidden=self.hidden_paths,
            devices=devices.accelerator_devices(self.accelerators),
            mask_id=self._mask_id,
            runtime=self._runtime_paths(),
            protect_dotfiles=self.protect_dotfiles,
            made=self._config_made,
            log=self.log,
        )
        policy: SandboxPolicy = {
            "profile": self.profile,
            "allow_network": self.network_allowed,
            "fs": fs,
            "limits": resources,
            "history_file": os.path.join(state, "history", "history.sqlite"),
            # strict: no new unix sockets at all (socketpair still works), so no path socket on
            # the host, hidden or not, can be reached.
            "deny_unix_sockets": self.profile == "strict",
            "kernel_side": describe.kernel_side(
                self.active_outputs_mode, self.cpu_time_limit, self._config_made
            ),
        }
        self._network.apply(policy, state, self.network_allowed, self.egress, self.host_ports)
        if user_dirs is not None:
            home = user_dirs.home_cache
            keep = paths.kept_under(home, [*writable, state], self._runtime_paths()) if home else []
            fs["user_dirs"] = user_dirs.policy(keep)
        if self.private_tmp:
            keep = paths.kept_in_tmp([*writable, state], self._runtime_paths())
            fs["private_tmp"] = {"dir": os.path.join(state, "root-tmp"), "keep": keep}
        wanted = limits.cgroup_limits(self.memory_limit, self.max_processes)
        return self._cgroups.give(WorkerSandbox(policy), wanted, group)

    def user_mode_egress(self) -> Egress | None:
        """This kernel's egress namespace, made on first use (None if it can't be: see the log)."""
        return self._network.user_mode_egress(self.host_ports)

    @property
    def _egress_error(self) -> str | None:
        """Why there is no user-mode egress, if there is none (bench/bench_sandbox.py shows it)."""
        return self._network.error

    def worker_exited(self, ws: WorkerSandbox | None) -> None:
        """The worker is gone: kill what it left behind and remove its cgroups."""
        if ws is not None:
            self._cgroups.worker_exited(ws)

    def cpu_seconds(self, pid: int) -> float | None:
        """CPU time (user + system, all threads) the process has used, None if it is gone."""
        return limits.cpu_seconds(pid)

    def explain_exit(self, ws: WorkerSandbox | None, returncode: int | None) -> str | None:
        """Name the limit that ended a worker, if one did."""
        if ws is None or not self.enabled:
            return None
        return describe.explain_exit(ws, returncode, self.profile)

    def worker_ready(self, report: Any) -> None:
        """Keep the worker's report of what it applied; warn (once) about what it could not."""
        if not isinstance(report, dict):
            return
        self.last_report = report
        missing = describe.unavailable(report)
        if missing and not self._warned:
            self._warned = True
            self.log.warning("Sandbox (%s profile): unavailable on this host: %s", self.profile, missing)

    def info(self) -> dict[str, Any]:
        """The policy and what the last worker reported, for kernel_info_reply."""
        return describe.policy_info(self)

    def refuse_device(self, platform: str, index: int | None = None) -> str | None:
        """Why a request for an accelerator (``jax_load_request``, a magic) is refused, or None.

        The policy is the ceiling: no request can reach a device it does not list.
        """
        if not self.enabled:
            return None
        return devices.refused_device(self.accelerators, platform, index)

    def worker_environment(self, env: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
        """What the kernel's ``env`` passes of the allowlist, plus ``extra`` (the deployer's own
        variables), minus the deny list, plus the worker's private temp dir
        (:func:`.environment.worker_environment`).  Under the off profile both pass whole."""
        if not self.enabled:
            return {**env, **(extra or {})}
        state = self.state_dir()
        return environment.worker_environment(
            env,
            extra,
            self.env_allow,
            self.env_deny,
            tmp=os.path.join(state, "tmp"),
            mplconfigdir=statedir.matplotlib_cache(state),
            accelerators=self.accelerators,
        )
