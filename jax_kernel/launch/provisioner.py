"""Restarts in a fraction of a second: a kernel provisioner that keeps a spare kernel process.

A frontend's restart always ends the kernel process and launches a new one (jupyter_client's
``KernelManager.restart_kernel``), and a new Python that imports ipykernel, then starts a worker
that imports JAX, takes seconds.  jupyter_client lets a kernelspec name the provisioner that
launches it (``metadata.kernel_provisioner``), so ours launches, next to each kernel, a spare
started with the same command, environment and directory: it has imported everything, started
its standby worker (sandboxed, ``jax`` imported, backend not started) and waits, without binding
any port, for one line on its stdin.  On restart the provisioner sends that line instead of
launching a process; the spare binds the kernel's ports and is the kernel.  A launch that differs
in any way (new ports, another environment) gets a fresh process, as with the stock provisioner.

Where the provisioner is not used (VS Code launches kernels itself), nothing changes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.launcher import launch_kernel
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Float

from ..protocol.importpath import SAFE_PATH_ENV
from .spare import GO, SPARE_ENV


class JaxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner plus one spare kernel process, used by the next restart."""

    hot_spare = Bool(
        True,
        help="Keep a spare kernel process (with its standby worker) for the next restart. It costs the "
        "memory of an idle kernel and worker per open notebook; turn it off on tight hosts.",
    ).tag(config=True)

    spare_delay = Float(
        3.0,
        help="Seconds a new spare waits before it imports anything, so that it does not slow down "
        "the kernel just started; a restart within that time takes it at once all the same.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spare: subprocess.Popen[bytes] | None = None
        self._spare_key: tuple[Any, ...] | None = None
        self.spares_used = 0

    @staticmethod
    def _key(cmd: list[str], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        # JPY_PARENT_PID is added by jupyter_client's launch_kernel itself, in place.
        env = {k: v for k, v in (kwargs.get("env") or {}).items() if k != "JPY_PARENT_PID"}
        return (tuple(cmd), tuple(sorted(env.items())), str(kwargs.get("cwd") or os.getcwd()))

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Wake the spare if it was started for exactly this launch, else launch as usual.

        Both run with a safe import path even from a kernelspec written before it had ``-P``: their
        working directory is the notebook folder (see :mod:`jax_kernel.protocol.importpath`)."""
        kwargs["env"] = {**(kwargs.get("env") or os.environ), **SAFE_PATH_ENV}
        scrubbed = self._scrub_kwargs(kwargs)
        wanted = self._key(cmd, scrubbed)
        spare, key = self._spare, self._spare_key
        self._spare = self._spare_key = None
        if spare is not None and key == wanted and self._wake(spare):
            self.process = spare
            self.pid = spare.pid
            try:
                self.pgid = os.getpgid(spare.pid)
            except OSError:
                self.pgid = None
            self.cwd = kwargs.get("cwd", os.getcwd())
            self.spares_used += 1
            self.log.info("Kernel %s: restarted into spare process %s", self.kernel_id, spare.pid)
            info = self.connection_info
        else:
            if spare is not None:
                self._discard(spare)
            info = await super().launch_kernel(cmd, **kwargs)
        if self.hot_spare:
            self._start_spare(cmd, scrubbed, wanted)
        return info

    def _wake(self, spare: subprocess.Popen[bytes]) -> bool:
        if spare.poll() is not None or spare.stdin is None:
            return False
        try:
            spare.stdin.write(GO)
            spare.stdin.flush()
        except OSError:
            return False
        finally:
            _close_quietly(spare.stdin)
        return True

    def _start_spare(self, cmd: list[str], kwargs: dict[str, Any], key: tuple[Any, ...]) -> None:
        env = dict(kwargs.get("env") or os.environ)
        env[SPARE_ENV] = f"{self.spare_delay:g}"
        try:
            # Our own stdin pipe: launch_kernel closes the one it makes, and this one carries the word.
            self._spare = launch_kernel(cmd, **{**kwargs, "env": env, "stdin": subprocess.PIPE})
        except Exception as e:  # noqa: BLE001 - a missing spare only makes the next restart slower
            self.log.warning("No spare kernel process for the next restart: %s", e)
            return
        self._spare_key = key

    def _discard(self, spare: subprocess.Popen[bytes]) -> None:
        _close_quietly(spare.stdin)  # our end of its pipe: an unclosed file otherwise (ResourceWarning)
        try:
            spare.kill()
            spare.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    shutdown_poll = Float(
        0.5,
        help="Seconds to watch, 5 ms apart, for the kernel to exit after a shutdown request. "
        "jupyter_client polls every 0.1 s once this returns; the kernel exits well before that.",
    ).tag(config=True)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """Wait (briefly) for the kernel to exit, so KernelManager finds it gone at its first poll.

        A restart otherwise sleeps out jupyter_client's 0.1 s poll interval for a process that
        exits well within one poll (bench/RESULTS.md, "Measurements behind design choices"); a kernel slower than ``shutdown_poll`` is left to the
        manager's usual wait.
        """
        if self.process is None:
            return
        deadline = asyncio.get_running_loop().time() + self.shutdown_poll
        while self.process.poll() is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)

    async def cleanup(self, restart: bool = False) -> None:
        """The spare lives through restarts (that is what it is for) and ends with the kernel."""
        if not restart and self._spare is not None:
            self._discard(self._spare)
            self._spare = self._spare_key = None
        await super().cleanup(restart=restart)


def _close_quietly(pipe: Any) -> None:
    if pipe is not None:
        try:
            pipe.close()
        except OSError:
            pass  # the spare already exited: a broken pipe on the final flush
