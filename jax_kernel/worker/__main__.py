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


def read_config(arg: str) -> dict:
    """The worker's config: ``@FD`` names the memfd the kernel wrote it to (see process.spawn)."""
    if not arg.startswith("@"):
        sys.exit(f"jax-kernel worker: the config argument must be @FD, not {arg[:40]!r}")
    with os.fdopen(int(arg[1:]), "rb") as f:
        return json.loads(f.read())


def main(argv: list[str] | None = None) -> None:
    """Start the worker on the socket descriptor the kernel passed us."""
    argv = sys.argv[1:] if argv is None else argv
    resume = None
    if argv[0] == "--member":  # a set member, re-executed by jax_kernel.worker.member
        fd = int(argv[1])
        with os.fdopen(int(argv[2]), "rb") as f:
            setup = json.loads(f.read())
        config, resume = setup["config"], setup["wire"]
    else:
        fd = int(argv[0])
        config = read_config(argv[1]) if len(argv) > 1 else {}
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
    sys.argv = [""]
    server = WorkerServer(conn, config)
    if not config.get("standby") or server.standby():
        server.serve_forever()
    conn.close()
    os._exit(0)  # skip interpreter teardown: XLA's threads can make it slow or hang


if __name__ == "__main__":
    main()
