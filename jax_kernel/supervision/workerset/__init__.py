"""Kernel process: a set of worker processes for multi-controller JAX, placed by an ipyparallel launcher.

``%load_jax --processes N`` replaces the kernel's one worker with N of them.  Placing processes
on hosts is a cluster engine's job, so this package never does it: an ipyparallel *engine set
launcher* (local processes, ``mpiexec``, SLURM, PBS, SGE, LSF, HTCondor, SSH, or any class
registered in the ``ipyparallel.engine_launchers`` entry-point group) starts jax-kernel's member
command (:mod:`jax_kernel.worker.member`) instead of ``ipengine``.  Each member connects back to
the kernel over TCP, on the kernel's own wire (:mod:`jax_kernel.protocol.wire`), encrypted and
authenticated under a per-set key that only the connection file (mode 0600) holds.  The kernel
numbers the members (by launcher rank when there is one), gives each its worker config, sandbox
policy and devices, and every member joins JAX's distributed runtime (coordinator on process 0,
gloo for CPU collectives) before it says ready.

One module per part, each in the kernel process:

- :mod:`.settings`: :class:`ProcessSet`, the deployer's settings (``c.ProcessSet.*``);
- :mod:`.launcher`: the adapter to ipyparallel's launchers (making one, its processes, exit
  statuses and output);
- :mod:`.rendezvous`: the port members connect to, the connection file, the hello handshake;
- :mod:`.provision`: what each member is given (config, sandbox, devices);
- :mod:`.router`: where requests go and which member's output reaches the frontend (no sockets);
- :mod:`.lifecycle`: :class:`WorkerSet` itself, its life cycle, heartbeat and reaper.

This package's namespace keeps the names the flat module had.
"""

from __future__ import annotations

from .launcher import DIAG_TAIL
from .lifecycle import WorkerSet
from .rendezvous import Member
from .router import BROADCAST, DISPLAYS
from .settings import ProcessSet

__all__ = ["BROADCAST", "DIAG_TAIL", "DISPLAYS", "Member", "ProcessSet", "WorkerSet"]
