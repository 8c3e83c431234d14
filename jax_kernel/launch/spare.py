"""The spare kernel process's side of :mod:`jax_kernel.launch.provisioner`: wait, warm up, wait again.

Imports nothing heavy itself: the point of the delay is to leave the CPU to the kernel that was
just started.
"""

from __future__ import annotations

import os
import select
import sys

#: Set in a spare's environment to its start delay in seconds (removed once read).
SPARE_ENV = "JAX_KERNEL_SPARE"
#: The line that turns a spare into the kernel.
GO = b"go\n"


def wait_to_be_kernel() -> None:
    """Return once this spare is to become the kernel; exit if the provisioner went away.

    A restart during the delay takes the spare at once, cold; after it, the spare has imported
    the kernel and started its standby worker, and only binds its ports when woken.
    """
    delay = float(os.environ.pop(SPARE_ENV, "0") or 0)
    if delay > 0:
        line = _stdin_line(delay)
        if line is not None:
            _go_or_exit(line)
            return
    from ..kernel.app import JaxKernelApp

    JaxKernelApp.prepare_spare(sys.argv[1:])
    _go_or_exit(_stdin_line(None) or b"")


def _go_or_exit(line: bytes) -> None:
    if line != GO:  # EOF: the provisioner (and with it the notebook server) is gone
        os._exit(0)


def _stdin_line(timeout: float | None) -> bytes | None:
    """One line from stdin (b"" at EOF), or None if nothing came within ``timeout`` seconds."""
    ready, _, _ = select.select([sys.stdin.buffer], [], [], timeout)
    return sys.stdin.buffer.readline() if ready else None
