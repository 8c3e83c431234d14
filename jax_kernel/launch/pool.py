"""Server side: a small pool of warm kernel processes, so that opening a notebook is instant.

One pool per Jupyter server process (every ``JaxProvisioner`` in it shares it), keyed by what a
launch must agree on to take a pooled process: the kernel's command line with its connection file
left out, and its environment but for the variables a kernel may adopt when it is handed over
(:data:`ADOPTABLE_ENV`: jupyter_server's ``JPY_SESSION_NAME``, the notebook's path).  A different
kernelspec command, another config directory or any other variable (one that may change the
sandbox) finds no match and launches a fresh process, as the stock provisioner would.

A pooled process is started in the folder of the launch that refilled the pool (notebooks are
mostly opened beside the last one).  It adopts the folder of the launch that takes it; its
standby worker, whose sandbox was made for the folder it started in, is replaced by a fresh one
when the folders differ (:mod:`.spare`): the kernel process's start is still saved.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import tempfile
from typing import Any

from .warm import WarmProcess

#: Variables a pooled kernel takes over from the launch that takes it (they differ per notebook
#: and never reach a worker: ``Sandbox.env_deny`` drops ``JPY_*``).
ADOPTABLE_ENV = ("JPY_SESSION_NAME",)
#: What stands for the connection file in a pooled process's command line until its ``go``.
PLACEHOLDER_NAME = "jax-kernel-pooled-connection.json"


def _template(cmd: list[str], connection_file: str) -> tuple[str, ...]:
    return tuple("{connection_file}" if a == connection_file else a for a in cmd)


def pool_key(cmd: list[str], connection_file: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What a launch and a pooled process must share: command template and fixed environment."""
    env = kwargs.get("env") or {}
    fixed = {k: v for k, v in env.items() if k not in ADOPTABLE_ENV and k != "JPY_PARENT_PID"}
    return (_template(cmd, connection_file), tuple(sorted(fixed.items())))


class KernelPool:
    """The warm kernel processes of this server, by :func:`pool_key`."""

    def __init__(self) -> None:
        self._warm: dict[tuple[Any, ...], list[WarmProcess]] = {}
        self._filling: set[tuple[Any, ...]] = set()
        self._placeholder_dir: str | None = None
        atexit.register(self.discard_all)

    def take(self, key: tuple[Any, ...]) -> WarmProcess | None:
        """A live pooled process for ``key`` (the one started in the newest folder first), or None."""
        entries = self._warm.get(key, [])
        while entries:
            entry = entries.pop()
            if entry.alive():
                return entry
            entry.discard()
        return None

    def placeholder(self) -> str:
        """The connection-file path a pooled process is started with (never written)."""
        if self._placeholder_dir is None:
            self._placeholder_dir = tempfile.mkdtemp(prefix="jax-kernel-pool-")
        return os.path.join(self._placeholder_dir, PLACEHOLDER_NAME)

    def refill(
        self,
        key: tuple[Any, ...],
        cmd: list[str],
        connection_file: str,
        kwargs: dict[str, Any],
        size: int,
        delay: float,
    ) -> None:
        """Bring the pool for ``key`` back to ``size`` processes, started like ``cmd`` (in its
        folder), each waiting ``delay`` seconds before it imports anything."""
        entries = self._warm.setdefault(key, [])
        for entry in [e for e in entries if not e.alive()]:
            entries.remove(entry)
            entry.discard()
        placeholder = self.placeholder()
        warm_cmd = [placeholder if a == connection_file else a for a in cmd]
        env = {k: v for k, v in (kwargs.get("env") or {}).items() if k not in ADOPTABLE_ENV}
        while len(entries) < size:
            entries.insert(0, WarmProcess.start(warm_cmd, {**kwargs, "env": env}, delay))
        while len(entries) > size:
            entries.pop(0).discard()

    def refill_later(self, key: tuple[Any, ...], *args: Any) -> None:
        """:meth:`refill` (``key`` and its other arguments) on the server's loop, soon: never in
        the way of the launch asking."""
        if key in self._filling:
            return
        self._filling.add(key)

        def fill() -> None:
            self._filling.discard(key)
            try:
                self.refill(key, *args)
            except OSError:
                pass  # a pool that can't be filled only makes the next start slower

        asyncio.get_running_loop().call_soon(fill)

    def discard_all(self) -> None:
        """End every pooled process (the server is exiting; their links' EOF would end them too)."""
        for entries in self._warm.values():
            for entry in entries:
                entry.discard()
        self._warm.clear()


#: This server's pool.
POOL = KernelPool()
