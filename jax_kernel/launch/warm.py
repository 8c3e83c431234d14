"""Server side: a kernel process started ahead of need, waiting on its link to become a kernel.

Both kinds of warm process are the same program (``python -m jax_kernel`` with
``JAX_KERNEL_SPARE`` set, see :mod:`.spare`): it waits, imports the kernel, reads the kernel's
config and starts its standby worker, then waits again, without binding a port, for ``go``.
A *spare* is started beside one kernel, with its very command line, for that kernel's next real
restart; a *pooled* one (:mod:`.pool`) for whichever launch comes next with the same command
template and environment, and is told at ``go`` which connection file, folder and session name
to take (``python -m jax_kernel`` reads its connection file only after ``go``).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from jupyter_client.launcher import launch_kernel

from .link import LINK_ENV, Link
from .spare import SPARE_ENV


class WarmProcess:
    """One waiting kernel process and the provisioner's end of its link."""

    def __init__(self, process: subprocess.Popen[bytes], link: Link, cwd: str) -> None:
        self.process = process
        self.link = link
        self.cwd = cwd

    @classmethod
    def start(cls, cmd: list[str], kwargs: dict[str, Any], delay: float) -> WarmProcess:
        """Launch ``cmd`` as jupyter_client would (its ``launch_kernel``), as a warm process that
        waits ``delay`` seconds before it imports anything (so it does not slow the kernel that
        was just started) and then for its ``go``."""
        link, theirs = Link.pair()
        env = dict(kwargs.get("env") or os.environ)
        env[SPARE_ENV] = f"{delay:g}"
        env[LINK_ENV] = str(theirs.fileno())
        try:
            process = launch_kernel(cmd, **{**kwargs, "env": env, "pass_fds": (theirs.fileno(),)})
        except BaseException:
            link.close()
            raise
        finally:
            theirs.close()
        if process.stdin is not None:  # launch_kernel's own pipe: the link carries everything
            _close_quietly(process.stdin)
        return cls(process, link, str(kwargs.get("cwd") or os.getcwd()))

    def alive(self) -> bool:
        return self.process.poll() is None

    def wake(self, **go: Any) -> bool:
        """Tell it to become the kernel (``go``: what a pooled process adopts); False if it can't."""
        return self.alive() and self.link.send(go=go)

    def discard(self) -> None:
        """End it: it holds no kernel's ports and no user state, so no need to be polite."""
        self.link.close()  # EOF on its link ends a waiting process by itself; the kill makes sure
        try:
            self.process.kill()
            self.process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _close_quietly(pipe: Any) -> None:
    try:
        pipe.close()
    except OSError:
        pass
