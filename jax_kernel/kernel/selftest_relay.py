"""``%sandbox --selftest``: the worker asks, the kernel runs the attack battery outside every sandbox.

The battery starts its own kernel (the user's worker and its variables are not attacked), in a
process of its own with this kernel's profile; its lines go to the cell that asked, and the
worker's cell ends when the battery does.  An interrupt of that cell ends the battery too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import typing as t

from .outputs import Origin, OutputPublisher


class SelfTestRunner:
    """One self-test at a time, relayed to the cell that started it."""

    def __init__(self, publisher: OutputPublisher, profile: str, done: t.Callable[[int], None]) -> None:
        self.publisher = publisher
        self.profile = profile
        self._done = done
        self._task: asyncio.Future[None] | None = None
        self._pid: int | None = None

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            self.publisher.problem("a self-test is already running; wait for its table")
            self._done(2)
            return
        self._task = asyncio.ensure_future(self._run(self.publisher.latest))

    def interrupt(self) -> None:
        """The cell was interrupted: the battery cleans up its kernel and decoys on SIGTERM."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGTERM)
            except OSError:
                pass

    async def _run(self, origin: Origin) -> None:
        status = 2
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jax_kernel",
                "selftest",
                "--profile",
                self.profile,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            assert proc.stdout is not None
            self._pid = proc.pid
            async for line in proc.stdout:
                text = line.decode(errors="replace")
                self.publisher.publish("stream", {"name": "stdout", "text": text}, origin)
            status = await proc.wait()
        except OSError as e:
            self.publisher.problem(f"the self-test could not start: {e}", origin)
        finally:
            self._pid = None
            self._done(status)
