"""Entry point of the worker process: ``python -m jax_kernel.worker FD CONFIG_JSON``.

(A member of a set of processes arrives here as ``--member FD SETUP_FD``, see ``member.py``.)

Order matters.  The first thing the worker does is arrange to die with the kernel
(``PR_SET_PDEATHSIG``), so that no orphan ever keeps an accelerator busy; only then does
it import IPython, and JAX is imported later still, by cell code.
"""

from __future__ import annotations

from ..protocol.importpath import drop_unsafe_entries

drop_unsafe_entries()  # before anything else is imported: see jax_kernel.protocol.importpath

import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import IO, Any  # noqa: E402

from ..protocol.config import ConfigError, WorkerConfig, check_worker_config  # noqa: E402

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def die_with_parent(expected_ppid: int) -> None:
    """Ask Linux to SIGKILL us when the kernel exits, and exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # Orphans of what a cell forks come to us, not to init (which may never reap them: a
        # zombie keeps counting against the worker's task limit); see the server's do_reap.
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if expected_ppid and os.getppid() != expected_ppid:
        os._exit(1)


def read_config(arg: str) -> WorkerConfig:
    """The worker's config: ``@FD`` names the memfd the kernel wrote it to (see process.spawn)."""
    if not arg.startswith("@"):
        sys.exit(f"jax-kernel worker: the config argument must be @FD, not {arg[:40]!r}")
    with os.fdopen(int(arg[1:]), "rb") as f:
        return checked_config(json.loads(f.read()))


def checked_config(obj: Any) -> WorkerConfig:
    """``obj`` as a WorkerConfig, or exit with one line on stderr (the kernel shows its tail)."""
    try:
        return check_worker_config(obj)
    except ConfigError as e:
        sys.exit(f"jax-kernel worker: bad config from the kernel: {e}")


def request_checker(conn: Any, diag: IO[str]) -> Any:
    """The check the worker runs on every request it receives (``Connection.check``).

    A malformed request is dropped with a line on the diagnostic stream (an answered one gets an
    error reply, so the kernel's wait ends); a standby's ``activate`` carries its job's config, and
    a bad one ends the worker as a bad config at start does.  Runs on the wire reader's thread."""
    from ..protocol import wire

    def check(msg: dict[str, Any]) -> dict[str, Any]:
        try:
            wire.validate_kernel_request(msg)
            if msg["type"] == "activate" and "config" in msg:
                check_worker_config(msg["config"])
        except ConfigError as e:
            diag.write(f"jax-kernel worker: bad config from the kernel: {e}\n")
            diag.flush()
            os._exit(1)
        except wire.WireError as e:
            diag.write(f"jax-kernel worker: dropped a malformed {str(msg.get('type'))[:40]!r} request: {e}\n")
            reply = wire.error_reply(msg, e)
            if reply is not None:
                conn.send(reply)
            raise
        return msg

    return check


def main(argv: list[str] | None = None) -> None:
    """Start the worker on the socket descriptor the kernel passed us."""
    argv = sys.argv[1:] if argv is None else argv
    resume = None
    if argv[0] == "--member":  # a set member, re-executed by jax_kernel.worker.member
        fd = int(argv[1])
        with os.fdopen(int(argv[2]), "rb") as f:
            setup = json.loads(f.read())
        config, resume = checked_config(setup["config"]), setup["wire"]
    else:
        fd = int(argv[0])
        config = read_config(argv[1]) if len(argv) > 1 else WorkerConfig()
    die_with_parent(int(config.get("parent_pid", 0)))
    # The sandbox goes on before anything else is imported and before any thread exists:
    # Landlock covers only threads created after it (XLA's pools among them).
    from .sandbox import apply as apply_sandbox

    apply_sandbox(config.get("sandbox"))
    # faulthandler writes to the kernel's diagnostic pipe (the original fd 2), which the
    # kernel keeps so that a segfault's Python stack can be shown on the cell that died.
    import faulthandler

    diag = os.fdopen(os.dup(2), "w", buffering=1)
    faulthandler.enable(file=diag)

    from ..protocol import wire
    from .server import WorkerServer

    sock = socket.socket(fileno=fd)
    max_frame = int(config.get("max_frame", wire.DEFAULT_MAX_FRAME))
    if resume is not None:
        conn: wire.Connection = wire.SealedConnection.resume(sock, resume, b"W", max_frame=max_frame)
    else:
        conn = wire.Connection(sock, max_frame=max_frame)
    conn.check = request_checker(conn, diag)
    sys.argv = [""]
    server = WorkerServer(conn, dict(config))
    if not config.get("standby") or server.standby():
        server.serve_forever()
    conn.close()
    os._exit(0)  # skip interpreter teardown: XLA's threads can make it slow or hang


if __name__ == "__main__":
    main()
