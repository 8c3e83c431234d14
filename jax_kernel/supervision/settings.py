"""The settings users give ``WorkerManager`` (``c.WorkerManager.*``), apart from its life cycle.

Traitlets reads config by class name along the MRO, so ``c.WorkerManager.interrupt_grace`` still
reaches these; they live here so that :mod:`.manager` holds only what starting, replacing and
restarting a worker does.
"""

from __future__ import annotations

import os

from traitlets import Bool, Dict, Float, Instance, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from ..policy.accelerators import Accelerators
from ..policy.domains import xdg_dir
from ..policy.sandbox import Sandbox
from ..protocol import wire
from .local import default_worker_argv
from .workerset import ProcessSet


class WorkerSettings(LoggingConfigurable):
    """What a deployer configures about workers: their command, limits, standby, caches, policy."""

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

    standby_nice = Integer(
        19,
        help="Nice value a standby worker warms up at (restored when it takes up work); its warm-up also "
        "pauses while a cell runs. 0, or a kernel that may not restore the priority (not root, no "
        "CAP_SYS_NICE), leaves it at the kernel's.",
    ).tag(config=True)

    standby_delay = Float(
        0.0,
        help="Seconds after a worker is ready before the next standby starts (its warm-up pauses while "
        "cells run, so there is no need to wait).",
    ).tag(config=True)

    keep_state = Bool(
        True,
        help="Workers save their variables while idle (only what changed), and the worker that replaces "
        "one that died (crash, out-of-memory kill, an interrupt it ignored, the CPU limit) restores them; "
        "a restart deletes them. %jax_state --off/--on per notebook.",
    ).tag(config=True)

    state_bytes = Integer(
        0,
        help="Bytes all saved variables may take together; 0: a quarter of the RAM or half the free disk "
        "of the kernel's state dir, whichever is less. What does not fit is listed, not saved.",
    ).tag(config=True)

    state_value_bytes = Integer(
        0, help="Bytes one saved variable (its arrays included) may take; 0: half of state_bytes."
    ).tag(config=True)

    state_seconds = Float(
        60.0,
        help="Seconds of idle time one snapshot may take; values not saved by then are listed as skipped "
        "and tried again after the next cell.",
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
        return xdg_dir("XDG_CACHE_HOME", ".cache", "jax-kernel", "compilation")

    compilation_cache_min_compile_secs = Float(
        0.0,
        help="Compiles at least this long are cached (JAX's own default is 1 s). 0 caches every compile: "
        "reading one back is faster than compiling it, even a small one, which is most of a restarted "
        "notebook's first cells.",
    ).tag(config=True)

    compilation_cache_max_bytes = Integer(
        2 * 1024**3,
        help="Size the compilation cache is trimmed to (least recently used first); -1: no limit.",
    ).tag(config=True)

    user_packages = Bool(
        True,
        help="%pip install (and !pip install) in a cell installs into a folder of this notebook "
        "folder's own, on the worker's sys.path ahead of site-packages and kept across kernels (see "
        "user_packages_dir). False: %pip installs into the environment, which the sandbox keeps read-only.",
    ).tag(config=True)

    user_packages_dir = Unicode(
        help="Where the packages cells install live: one folder per notebook folder, sandbox profile "
        "and Python environment, written only by that folder's workers and never imported by the "
        "kernel (default: $XDG_DATA_HOME/jax-kernel/packages, i.e. ~/.local/share/jax-kernel/packages)."
    ).tag(config=True)

    @default("user_packages_dir")
    def _default_packages_dir(self) -> str:
        return xdg_dir("XDG_DATA_HOME", os.path.join(".local", "share"), "jax-kernel", "packages")

    user_cache = Bool(
        True,
        help="Give workers a cache that outlives the kernel, one per notebook folder and profile "
        "(XDG_CACHE_HOME, and ~/.cache in the worker's view): pip's, datasets' and models' downloads "
        "are kept. False: a temp dir per kernel, as before.",
    ).tag(config=True)

    user_cache_dir = Unicode(
        help="Where the workers' caches live, one folder per notebook folder and profile "
        "(default: $XDG_CACHE_HOME/jax-kernel/workers, i.e. ~/.cache/jax-kernel/workers)."
    ).tag(config=True)

    @default("user_cache_dir")
    def _default_user_cache_dir(self) -> str:
        return xdg_dir("XDG_CACHE_HOME", ".cache", "jax-kernel", "workers")

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
