"""Kernel process: the private folder each kernel keeps for its workers' state.

The workers' temp dir, IPython history, private ``/tmp`` and Matplotlib config live in one folder
per kernel, outside everything a worker may write: the mask file that hidden paths are bound to
lives there too, and a worker that could swap it (or the history) for its own would have the next
worker bind that.  Kernels killed before they could clean up leave theirs; the next kernel's
sweep removes them.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence

from ..host.cgroups import _left_by_dead_kernels


def state_base(writable_paths: Sequence[str], log: logging.Logger) -> str:
    """Where the state dir goes: the temp dir, unless a worker could write there (notebooks in
    /tmp, TMPDIR set to the notebook folder), since a worker that can swap the mask file or
    its history for its own has the next worker bind them.  Then the first of /var/tmp
    and ~/.cache that no worker writes (not /dev/shm: the worker's /dev is its own).
    ``writable_paths``: ``Sandbox.writable_paths``; ValueError if no folder will do."""
    roots = [os.path.realpath(p) for p in (os.getcwd(), *map(os.path.expanduser, writable_paths))]
    candidates = [tempfile.gettempdir(), "/var/tmp", os.path.expanduser("~/.cache")]
    for base in candidates:
        real = os.path.realpath(base)
        if (
            os.path.isdir(real)
            and os.access(real, os.W_OK)
            and not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)
        ):
            if base != candidates[0]:
                log.info("Sandbox state in %s: the temp dir %s is writable by workers", real, candidates[0])
            return real
    raise ValueError(
        "no folder for the sandbox's state outside what workers may write (tried "
        f"{', '.join(candidates)}): start the kernel with TMPDIR outside the notebook folder"
    )


def make_state_dir(base: str) -> str:
    """A new, empty state dir for this kernel in ``base`` (see :func:`fill_state_dir`)."""
    return tempfile.mkdtemp(prefix=f"jax-kernel-sandbox-{os.getpid()}-", dir=base)


def fill_state_dir(state: str) -> list[int]:
    """Sweep the state dirs of dead kernels next to ``state``, make its folders and mask file,
    and remove it at exit; the mask file's (device, inode)."""
    _sweep_stale_state(os.path.dirname(state))
    os.mkdir(os.path.join(state, "tmp"), 0o700)
    os.mkdir(os.path.join(state, "history"), 0o700)
    os.mkdir(os.path.join(state, "root-tmp"), 0o700)  # the workers' /tmp
    os.mkdir(os.path.join(state, "snapshots"), 0o700)  # the workers' saved variables
    # What a hidden file looks like inside the sandbox: empty and mode 000.  The worker
    # binds it only if it is still this very file (device, inode).
    fd = os.open(os.path.join(state, "mask"), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0)
    info = os.fstat(fd)
    os.close(fd)
    atexit.register(shutil.rmtree, state, True)
    return [info.st_dev, info.st_ino]


def _sweep_stale_state(parent: str) -> None:
    """Remove state dirs of kernels that died without cleaning up (SIGKILL)."""
    for path in _left_by_dead_kernels(parent, r"jax-kernel-sandbox-(\d+)-\w+"):
        try:
            if os.stat(path).st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def matplotlib_cache(state: str) -> str | None:
    """This kernel's Matplotlib config dir (MPLCONFIGDIR) in ``state``, seeded with the user's
    font cache; None if it can't be made.

    Not the shared one: a ``matplotlibrc`` there is read by every kernel's worker and by the
    user's own Python, and names programs and backends to run, so one notebook's cell could
    act in another (or outside).  The font list (JSON data, slow to rebuild) is copied in from
    the user's own config dir, plain files only, and nothing is ever copied back."""
    private = os.path.join(state, "matplotlib")
    if os.path.isdir(private):
        return private
    try:
        os.mkdir(private, 0o700)
    except OSError:
        return None
    shared = os.environ.get("MPLCONFIGDIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "matplotlib"
    )
    for source in glob.glob(os.path.join(glob.escape(shared), "fontlist-*.json")):
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > 16 << 20:
                continue
            data = f.read()
        with open(os.path.join(private, os.path.basename(source)), "wb") as out:
            out.write(data)
    return private
