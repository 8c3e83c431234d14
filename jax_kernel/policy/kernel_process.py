"""Kernel process: what the sandbox does to the kernel itself, beside what it does to workers."""

from __future__ import annotations

import logging
import sys


def protect_kernel_process(log: logging.Logger) -> None:
    """Make the kernel process non-dumpable: a same-uid process then can't read its memory,
    environment or open files through /proc, nor ptrace it, without CAP_SYS_PTRACE (which
    the worker drops).  Defence in depth where Landlock's scoping is missing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError) as e:
        log.debug("Could not make the kernel non-dumpable: %s", e)
