"""CPU pinning of the worker's own threads to the cores its lease gives it."""

from __future__ import annotations

import os
import sys


def pin_cpus(cores: list[int]) -> None:
    """Keep every thread of this process (and the ones it starts later) on the leased cores.

    Affinity is per thread and inherited at creation, so the threads that exist are set one by one.
    The sandbox's seccomp filter allows this thread (0) and the main one (our pid) only; the kernel
    pins the others from outside (``jax_kernel.policy.accelerators.pin_tasks``), so a refusal for them is
    expected and not reported.
    """
    wanted = {int(c) for c in cores}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = []
    for tid in [0, *tids]:
        try:
            os.sched_setaffinity(tid, wanted)
        except PermissionError:
            continue
        except OSError as e:
            print(
                f"[jax-kernel] could not pin thread {tid} to cores {sorted(wanted)}: {e}", file=sys.__stderr__
            )
