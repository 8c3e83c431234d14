"""A warm kernel process's side of :mod:`jax_kernel.launch.warm`: wait, warm up, wait again.

Imports nothing heavy itself: the point of the delay is to leave the CPU to the kernel that was
just started.  A pooled process is told at ``go`` which connection file to read, which folder to
work in and which per-notebook variables to take (:mod:`jax_kernel.launch.pool`); a standby
worker it started for another folder is dropped then, since a worker's sandbox is made for its
folder.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .link import Link, LinkClosed

#: Set in a warm process's environment to its start delay in seconds (removed once read).
SPARE_ENV = "JAX_KERNEL_SPARE"


def wait_to_be_kernel(link: Link | None) -> None:
    """Return once this process is to become the kernel; exit if the provisioner went away.

    A ``go`` during the delay takes the process at once, cold; after it, it has imported the
    kernel and started its standby worker, and only reads its connection file and binds its
    ports once woken.
    """
    if link is None:  # started as a spare by something that gave it no link: nothing to wait for
        os.environ.pop(SPARE_ENV, None)
        return
    delay = float(os.environ.pop(SPARE_ENV, "0") or 0)
    if delay > 0:
        go = _next_go(link, delay)
        if go is not None:
            _adopt(go, warmed=False)
            return
    from ..kernel.app import JaxKernelApp

    JaxKernelApp.prepare_spare(sys.argv[1:])
    go = _next_go(link, None)
    assert go is not None  # None only on a timeout, and there is none
    _adopt(go, warmed=True)


def _next_go(link: Link, timeout: float | None) -> dict[str, Any] | None:
    """The ``go`` message's content, or None if none came within ``timeout``; exits on EOF (the
    provisioner, and with it the notebook server, is gone)."""
    try:
        message = link.read(timeout)
    except LinkClosed:
        os._exit(0)
    if message is None:
        return None
    go = message.get("go")
    if not isinstance(go, dict):
        os._exit(0)
    return go


def _adopt(go: dict[str, Any], warmed: bool) -> None:
    """Take over what a pooled process is given: the connection file in place of its placeholder,
    the notebook's folder and its session variables."""
    connection_file, cwd, env = go.get("connection_file"), go.get("cwd"), go.get("env")
    if isinstance(connection_file, str) and connection_file:
        from .pool import PLACEHOLDER_NAME

        sys.argv[:] = [connection_file if os.path.basename(a) == PLACEHOLDER_NAME else a for a in sys.argv]
    if isinstance(env, dict):
        os.environ.update({str(k): str(v) for k, v in env.items()})
    if isinstance(cwd, str) and cwd and os.path.realpath(cwd) != os.path.realpath(os.getcwd()):
        os.chdir(cwd)
        if warmed:
            from ..kernel.app import JaxKernelApp

            JaxKernelApp.drop_prepared_standby()
