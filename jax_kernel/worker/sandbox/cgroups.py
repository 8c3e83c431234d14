"""Joining the cgroups the kernel made for this worker (memory, pids).

Runs in the worker process, first of the sandbox's steps (see :mod:`.limits`), while it can
still write the kernel-made ``cgroup.procs`` files: the mount namespace and Landlock come later.
The kernel made and sized the cgroups (:mod:`jax_kernel.host.cgroups`); the worker only moves
itself in.
"""

from __future__ import annotations

import os

from .base import _Report


def _join_cgroups(cgroups: dict[str, str], report: _Report) -> dict[str, str]:
    """Write our pid to each controller's ``cgroup.procs``; return controller -> cgroup folder.

    A cgroup that can't be joined is reported unavailable (``cgroup_<controller>``); the limits
    it would have enforced fall back to rlimits where one exists (see :mod:`.limits`).
    """
    joined = {}
    for controller, procs in cgroups.items():
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            joined[controller] = os.path.dirname(procs)
        except OSError as e:
            report.unavailable(f"cgroup_{controller}", f"could not join {procs}: {e.strerror}")
    return joined
