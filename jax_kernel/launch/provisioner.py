"""Restarts in place, a spare for the rare real restart, and a warm pool for first starts.

A frontend's restart is jupyter_client's ``KernelManager.restart_kernel``: ask the kernel to shut
down (or kill it, ``now=True``), poll the process until it is gone, launch a new one.  Our kernel
process never runs user code, so it need not go: it replaces its *worker* with the standby and
resets what a new kernel resets (:mod:`jax_kernel.kernel.restart`), and the frontend keeps its
connection.  This provisioner makes jupyter_client's sequence end there:

- after ``shutdown_request(restart=True)`` the kernel says on its link (:mod:`.link`) that it
  restarts in place; the provisioner then reports the process as exited, keeps it through
  cleanup, and hands it back as the "new" process at launch;
- a forced restart (``now=True``) kills nothing at first: the process is reported killed, and
  at the launch that follows the kernel is told to restart in place; if it does not say so within
  ``restart_wait`` (hung), or the launch differs (new ports, another environment), the process
  is killed and a new one launched.  A forced *shutdown* kills it at cleanup as before.

A real new process is still used when the kernel asks for one (it exits instead of restarting in
place: see ``JaxKernel.max_in_place_restarts``) and for any launch that differs: it comes from
the spare kept beside each kernel (``hot_spare``), else from the server's pool
(:mod:`.pool`, ``pool_size``), else it is started as the stock provisioner starts it.

Where the provisioner is not used (VS Code launches kernels itself) the kernel has no link and
restarts as any kernel does: it exits.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Float, Integer

from ..protocol.importpath import SAFE_PATH_ENV
from .link import LINK_ENV, Link
from .pool import ADOPTABLE_ENV, POOL, pool_key
from .warm import WarmProcess

#: What poll() says of a process that restarts in place (jupyter_client waits for it to "exit").
IN_PLACE = "restarted"
#: ... and of one whose forced kill is held back until the launch that follows.
HELD = "held"


class JaxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner plus restarts in place, a spare kernel process and a warm pool."""

    hot_spare = Bool(
        True,
        help="Keep a spare kernel process (with its standby worker) for a restart that needs a new "
        "process (after JaxKernel.max_in_place_restarts, or a changed launch). It costs the memory of "
        "an idle kernel and worker per open notebook; turn it off on tight hosts.",
    ).tag(config=True)

    spare_delay = Float(
        3.0,
        help="Seconds a new spare or pooled process waits before it imports anything, so that it does "
        "not slow down the kernel just started; a launch within that time takes it at once all the same.",
    ).tag(config=True)

    pool_size = Integer(
        1,
        help="Warm kernel processes (each with a JAX-ready standby worker) this server keeps for the "
        "next notebook opened with the same kernelspec and environment; 0 turns the pool off.",
    ).tag(config=True)

    restart_wait = Float(
        3.0,
        help="Seconds a restart waits for the kernel to say it restarts in place (or to exit) before "
        "jupyter_client's own wait, and a forced restart for it to start over before it is killed.",
    ).tag(config=True)

    shutdown_poll = Float(
        0.5,
        help="Seconds to watch, 5 ms apart, for the kernel to exit after a shutdown request. "
        "jupyter_client polls every 0.1 s once this returns; the kernel exits well before that.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link: Link | None = None  # to the current kernel process
        self._spare: WarmProcess | None = None
        self._spare_key: tuple[Any, ...] | None = None
        self._launched: tuple[Any, ...] | None = None  # the current process's launch, to compare
        self._state: str | None = None  # IN_PLACE or HELD while jupyter_client thinks it gone
        self.spares_used = 0
        self.pooled_used = 0
        self.in_place_restarts = 0

    @staticmethod
    def _key(cmd: list[str], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        # JPY_PARENT_PID is added by jupyter_client's launch_kernel itself, in place.
        env = {k: v for k, v in (kwargs.get("env") or {}).items() if k not in ("JPY_PARENT_PID", LINK_ENV)}
        return (tuple(cmd), tuple(sorted(env.items())), str(kwargs.get("cwd") or os.getcwd()))

    def _connection_file(self) -> str:
        return str(getattr(self.parent, "connection_file", "") or "")

    # launching ----------------------------------------------------------------------------------
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Hand back the process that restarted in place, else wake the spare or a pooled process
        started for exactly this launch, else launch as usual (with a link).

        All run with a safe import path even from a kernelspec written before it had ``-P``: their
        working directory is the notebook folder (see :mod:`jax_kernel.protocol.importpath`)."""
        kwargs["env"] = {**(kwargs.get("env") or os.environ), **SAFE_PATH_ENV}
        scrubbed = self._scrub_kwargs(kwargs)
        wanted = (self._key(cmd, scrubbed), tuple(sorted(self.connection_info.items())))
        if self._state is not None and await self._resume(wanted):
            return self.connection_info
        if self._take_spare(wanted[0]) or self._take_pooled(cmd, scrubbed):
            await self._bound()
        else:
            await self._launch_fresh(cmd, scrubbed)
        self._launched = wanted
        if self.hot_spare:
            self._start_spare(cmd, scrubbed, wanted[0])
        if self.pool_size > 0:
            key = pool_key(cmd, self._connection_file(), scrubbed)
            POOL.refill_later(key, cmd, self._connection_file(), scrubbed, self.pool_size, self.spare_delay)
        return self.connection_info

    def _adopt(self, warm: WarmProcess) -> None:
        self._drop_link()
        self.process, self.link = warm.process, warm.link
        self.pid = warm.process.pid
        try:
            self.pgid = os.getpgid(warm.process.pid)
        except OSError:
            self.pgid = None

    def _take_spare(self, wanted: tuple[Any, ...]) -> bool:
        spare, key = self._spare, self._spare_key
        self._spare = self._spare_key = None
        if spare is None:
            return False
        if key != wanted or not spare.wake():
            spare.discard()
            return False
        self._adopt(spare)
        self.cwd = spare.cwd
        self.spares_used += 1
        self.log.info("Kernel %s: restarted into spare process %s", self.kernel_id, spare.process.pid)
        return True

    def _take_pooled(self, cmd: list[str], kwargs: dict[str, Any]) -> bool:
        if self.pool_size <= 0:
            return False
        connection_file = self._connection_file()
        warm = POOL.take(pool_key(cmd, connection_file, kwargs))
        if warm is None:
            return False
        env = kwargs.get("env") or {}
        cwd = str(kwargs.get("cwd") or os.getcwd())
        adopted = {k: env[k] for k in ADOPTABLE_ENV if k in env}
        if not warm.wake(connection_file=connection_file, cwd=cwd, env=adopted):
            warm.discard()
            return False
        self._adopt(warm)
        self.cwd = cwd
        self.pooled_used += 1
        self.log.info("Kernel %s: started from pooled process %s", self.kernel_id, warm.process.pid)
        return True

    async def _bound(self) -> None:
        """Wait (briefly) for a woken warm process to say its ports are bound: a client that
        connects before then is refused and retries only after zmq's reconnect interval."""
        link, process = self.link, self.process
        deadline = asyncio.get_running_loop().time() + self.restart_wait
        while link is not None and process is not None and process.poll() is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                message = await link.receive(min(left, 0.05))
            except EOFError:
                return
            if message is not None and message.get("bound"):
                return

    async def _launch_fresh(self, cmd: list[str], kwargs: dict[str, Any]) -> None:
        link, theirs = Link.pair()
        env = {**kwargs["env"], LINK_ENV: str(theirs.fileno())}
        try:
            await super().launch_kernel(cmd, **{**kwargs, "env": env, "pass_fds": (theirs.fileno(),)})
        except BaseException:
            link.close()
            raise
        finally:
            theirs.close()
        self._drop_link()
        self.link = link

    def _start_spare(self, cmd: list[str], kwargs: dict[str, Any], key: tuple[Any, ...]) -> None:
        try:
            self._spare = WarmProcess.start(cmd, kwargs, self.spare_delay)
        except Exception as e:  # noqa: BLE001 - a missing spare only makes a real restart slower
            self.log.warning("No spare kernel process for the next restart: %s", e)
            return
        self._spare_key = key

    # restarts in place --------------------------------------------------------------------------
    async def _restarting(self, timeout: float) -> bool:
        """Whether the kernel says, within ``timeout`` seconds, that it restarts in place (False if
        it exits, closes its link or stays silent)."""
        link, process = self.link, self.process
        if link is None or process is None:
            return False
        deadline = asyncio.get_running_loop().time() + timeout
        while process.poll() is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            try:
                message = await link.receive(min(left, 0.05))
            except EOFError:
                return False
            if message is not None and "restarting" in message:
                self.in_place_restarts += 1
                return True
        return False

    async def shutdown_requested(self, restart: bool = False) -> None:
        """After a shutdown request: a restart the kernel takes in place is over as far as
        jupyter_client is concerned (it finds the process "exited" at its first poll); otherwise
        wait briefly for the kernel to exit, so that that poll finds it gone."""
        if self.process is None:
            return
        if restart and await self._restarting(self.restart_wait):
            self._state = IN_PLACE
            return
        deadline = asyncio.get_running_loop().time() + self.shutdown_poll
        while self.process.poll() is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)

    async def _resume(self, wanted: tuple[Any, ...]) -> bool:
        """At the launch after a restart: keep the same process if the launch is the same and it
        is (or, after a held kill, now goes) through its restart in place; else end it for real."""
        state, self._state = self._state, None
        same = wanted == self._launched and self.process is not None and self.process.poll() is None
        if same and state == HELD:
            same = self.link is not None and self.link.send(restart="now")
            same = same and await self._restarting(self.restart_wait)
        if same:
            self.log.info("Kernel %s: restarted in place (process %s)", self.kernel_id, self.pid)
            return True
        await self._end_for_real()
        return False

    async def _end_for_real(self) -> None:
        self._state = None
        if self.process is not None and self.process.poll() is None:
            await super().kill()
            await asyncio.to_thread(self.process.wait, 5)
        self._drop_link()

    def _drop_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    # what jupyter_client sees of the process ----------------------------------------------------
    async def poll(self) -> int | None:
        if self._state == IN_PLACE:
            return 0
        if self._state == HELD:
            return -9
        return await super().poll()

    async def wait(self) -> int | None:
        if self._state is not None:
            return await self.poll()  # the process stays: do not reap or forget it
        return await super().wait()

    async def kill(self, restart: bool = False) -> None:
        """A forced restart or shutdown: held back while the kernel can still restart in place (the
        launch that follows decides, or cleanup kills it); a hung kernel is killed at that point."""
        if self._state is None and self.link is not None and self.process is not None:
            if self.process.poll() is None:
                self._state = HELD
                return
        if self._state is None:
            await super().kill(restart=restart)

    async def terminate(self, restart: bool = False) -> None:
        if self._state is None:
            await super().terminate(restart=restart)

    async def send_signal(self, signum: int) -> None:
        if self._state is None:
            await super().send_signal(signum)

    async def cleanup(self, restart: bool = False) -> None:
        """A restart keeps the process (restarted in place or held) and the spare; a shutdown
        ends both."""
        if not restart:
            if self._state is not None:
                await self._end_for_real()
            self._drop_link()
            if self._spare is not None:
                self._spare.discard()
                self._spare = self._spare_key = None
        await super().cleanup(restart=restart)
