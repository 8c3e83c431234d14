"""Entry point of a set member as a launcher starts it: ``python -m jax_kernel.worker.member FILE``.

ipyparallel's launchers (local processes, ``mpiexec``, SLURM, SSH, ...) start this command on
each host with the kernel's environment (and add flags of their own, such as ``--mpi``, which
are ignored).  It does as little as it can before it is sandboxed:

1. arrange to die with its parent (the launcher's process: ``mpiexec``'s daemon, or the kernel);
2. read the set's connection file (address and key, mode 0600) and connect back to the kernel
   over TCP; the kernel's first bytes are a nonce, from which both sides derive this
   connection's key (encrypted and authenticated frames, :class:`jax_kernel.protocol.wire.SealedConnection`);
3. say ``hello`` (pid, host, launcher rank, a free port for JAX's coordinator) and wait for
   ``setup``: the worker config and the scrubbed environment the kernel gives every worker;
4. re-execute itself as an ordinary worker with that environment, so that nothing of the
   kernel's environment (tokens, secrets) is left even in ``/proc/self/environ``; the socket
   and the connection's state (key, sequence numbers, unread bytes) pass on a memfd.

The worker then applies the sandbox before importing anything else, as a local worker does.
"""

from __future__ import annotations

from ..protocol.importpath import drop_unsafe_entries, python_module_command

drop_unsafe_entries()  # before anything else is imported: see jax_kernel.protocol.importpath

import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from ..protocol import wire  # noqa: E402
from ..protocol.config import ConfigError, check_worker_config  # noqa: E402
from .__main__ import die_with_parent  # noqa: E402

#: Environment variables that carry a launcher's rank for this process (MPI, PMIx, SLURM).
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    """The rank the launcher gave this process, or -1: the kernel numbers processes by it."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return -1


def free_port() -> int:
    """A TCP port free on this host now, for JAX's coordinator should this become process 0."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the kernel closed the connection")
        data += chunk
    return data


def main(argv: list[str] | None = None) -> None:
    """Connect to the kernel named in the connection file, then become a sandboxed worker."""
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent(0)
    paths = [a for a in argv if not a.startswith("-")]
    if not paths:
        sys.exit("usage: python -m jax_kernel.worker.member CONNECTION_FILE")
    with open(paths[0]) as f:
        info = json.load(f)
    sock = socket.create_connection((info["host"], int(info["port"])), timeout=float(info.get("timeout", 60)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    nonce = _recv_exactly(sock, wire.NONCE_BYTES)
    sock.settimeout(None)
    max_frame = int(info.get("max_frame", wire.DEFAULT_MAX_FRAME))
    conn = wire.SealedConnection(sock, bytes.fromhex(info["key"]), nonce, b"W", max_frame=max_frame)
    conn.send(
        {
            "type": "hello",
            "pid": os.getpid(),
            "protocol": wire.PROTOCOL_VERSION,
            "host": socket.gethostname(),
            "rank": launcher_rank(),
            "port": free_port(),
        }
    )
    msg = conn.recv(timeout=float(info.get("timeout", 60)))
    if msg is None or msg.get("type") != "setup" or not isinstance(msg.get("config"), dict):
        sys.exit("jax-kernel member: the kernel did not send a setup")
    env = msg.get("env")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        sys.exit("jax-kernel member: the setup's environment is not a string mapping")
    try:
        config = check_worker_config(msg["config"])
    except ConfigError as e:
        sys.exit(f"jax-kernel member: {e}")
    cores = config.get("cpu_affinity")
    if cores:
        # Pinned now, while this is the only thread: the worker image keeps the mask across exec
        # and every thread it starts inherits it.  Once sandboxed it may pin only itself.
        try:
            os.sched_setaffinity(0, {int(c) for c in cores})
        except (OSError, ValueError, TypeError) as e:
            print(f"jax-kernel member: could not pin to cores {cores}: {e}", file=sys.stderr)
    setup = os.memfd_create("jax-kernel-member", 0)  # no MFD_CLOEXEC: the new image reads it
    os.write(setup, json.dumps({"wire": conn.state(), "config": msg["config"]}).encode())
    os.lseek(setup, 0, os.SEEK_SET)
    os.set_inheritable(sock.fileno(), True)
    argv = [*python_module_command("jax_kernel.worker"), "--member", str(sock.fileno()), str(setup)]
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
