"""JaxKernelApp: ipykernel's kernel application, wired to JaxKernel and its worker.

The app differs from ``IPKernelApp`` in what it must not do in the kernel process: it
runs no startup code, loads no extensions and sets up no matplotlib (all of that is
user code, which belongs in the worker), and SIGINT is forwarded to the worker instead
of raising ``KeyboardInterrupt`` in the kernel.
"""

from __future__ import annotations

import atexit
import os
import signal
import typing as t

from ipykernel.kernelapp import IPKernelApp, kernel_aliases, kernel_flags
from IPython.core.profiledir import ProfileDir
from jupyter_client.session import Session
from jupyter_core.paths import jupyter_config_path
from traitlets import Type, default
from traitlets.config import Application

from ..launch.link import Link
from ..policy.accelerators import Accelerators
from ..policy.sandbox import Sandbox
from ..supervision.manager import WorkerManager
from .jaxkernel import JaxKernel, installed_jax_version


class JaxKernelApp(IPKernelApp):
    """Launches the ``jax`` kernel (``python -m jax_kernel -f CONNECTION_FILE``)."""

    name = "jax-kernel"  # reads jax_kernel_config.py
    prepared_manager: WorkerManager | None = None  # made early by a warm kernel process
    link: Link | None = None  # to the provisioner that launched us (jax_kernel.launch.link), if it did
    description = "The jax-kernel Jupyter kernel: cells run in a supervised JAX worker process."
    classes = [JaxKernel, WorkerManager, Sandbox, Accelerators, Session, ProfileDir]  # type: ignore[assignment]
    kernel_class = Type(  # type: ignore[assignment]
        JaxKernel, klass="ipykernel.kernelbase.Kernel", help="The kernel class to launch."
    ).tag(config=True)

    @default("aliases")
    def _default_aliases(self) -> dict[str, t.Any]:
        return self._configurable_here(kernel_aliases)

    @default("flags")
    def _default_flags(self) -> dict[str, t.Any]:
        return self._configurable_here(kernel_flags)

    def _configurable_here(self, table: dict[str, t.Any]) -> dict[str, t.Any]:
        """ipykernel's shortcuts minus those for the in-process shell (colors, pylab, ...): here
        they would configure nothing (see init_gui_pylab below), and --help-all fails on a class
        the app does not list."""
        known = {c.__name__ for cls in [type(self), *self.classes] for c in t.cast(type, cls).mro()}
        known.discard("InteractiveShellApp")  # pylab, extensions, startup code: the worker's business

        def targets(value: t.Any) -> set[str]:
            if isinstance(value, tuple):  # an alias with help, or a flag: (what, help)
                value = value[0]
            if isinstance(value, str):
                return {value.split(".")[0]}
            return set(value)  # a flag's config dict, keyed by class name

        return {name: value for name, value in table.items() if targets(value) <= known}

    subcommands = {  # type: ignore[assignment]
        "install": ("jax_kernel.launch.kernelspec.InstallJaxKernelSpecApp", "Install the jax kernelspec"),
        "selftest": (
            "jax_kernel.selftest.SelfTestApp",
            "Run the sandbox's attack battery against the installed kernel and print what was contained",
        ),
    }

    @classmethod
    def prepare_spare(cls, argv: list[str]) -> None:
        """In a spare kernel process: read the config the kernel will run with and start its
        standby worker now, before any port is bound (see :mod:`jax_kernel.launch.provisioner`)."""
        app = cls.instance()
        app.parse_command_line(argv)
        Application.load_config_file(app, app.config_file_name, path=jupyter_config_path())
        app.prepared_manager = WorkerManager(config=app.config, log=app.log)
        app.prepared_manager.prespawn()
        installed_jax_version()  # the banner of the first kernel_info_reply

    @classmethod
    def drop_prepared_standby(cls) -> None:
        """A pooled process adopted another folder: its standby's sandbox was made for the old one."""
        app = cls.instance()
        if app.prepared_manager is not None:
            app.prepared_manager.drop_prespawned()

    def load_config_file(self, *args: t.Any, **kwargs: t.Any) -> None:
        """Also read ``jax_kernel_config.py`` from Jupyter's config path, after IPython's profile."""
        super().load_config_file(*args, **kwargs)
        Application.load_config_file(self, self.config_file_name, path=jupyter_config_path())

    def initialize(self, argv: t.Any = None) -> None:
        """ipykernel's initialize; then tell a provisioner that woke us (a warm process) that our
        ports are bound, so that the frontend it hands them to connects at once instead of
        retrying after zmq's reconnect interval (100 ms)."""
        super().initialize(argv)
        if self.link is not None:
            self.link.send(bound=True)

    def start(self) -> None:
        """Run the kernel; once it has been shut down, clean up and exit at once.

        Python's own exit first waits for ipykernel's channel threads to notice the end and then
        tears down every module, a few hundred milliseconds that a frontend's restart waits for.
        The atexit handlers (ipykernel's socket close, which flushes IOPub; no worker left behind;
        the sandbox's cleanup) are all that matters, so they run, and the process ends.
        """
        super().start()
        if self.subapp is None:
            atexit._run_exitfuncs()
            os._exit(0)

    def init_signal(self) -> None:
        """SIGINT (signal-mode interrupts, Ctrl-C) interrupts the worker's cell, never the kernel."""
        signal.signal(signal.SIGINT, self._forward_sigint)

    def _forward_sigint(self, signum: int, frame: t.Any) -> None:
        kernel = getattr(self, "kernel", None)
        if kernel is not None:
            kernel.manager.interrupt()

    # User code never runs in the kernel process: these belong to the worker.
    def init_gui_pylab(self) -> None:
        """No matplotlib in the kernel process; the worker defaults to the inline backend."""

    def init_extensions(self) -> None:
        """IPython extensions are user code: not loaded in the kernel process."""

    def init_code(self) -> None:
        """Startup code is user code: not run in the kernel process."""


launch_new_instance = JaxKernelApp.launch_instance
