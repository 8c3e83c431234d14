"""A safe import path for every process jax-kernel starts: nothing is imported from a writable folder.

``python -m pkg`` puts the current directory first on ``sys.path``, and the current directory of the
kernel, its spare, the provisioner's launches, a worker before its sandbox is on and a set member is
the notebook folder, which a cell can write: a ``json.py`` planted there ran outside the sandbox in
each of them.  So every command the project builds runs Python with ``-P`` (3.11+: no unsafe path
entry), the environments it hands on carry ``PYTHONSAFEPATH=1`` (for launchers that build their own
command line, such as mpiexec's), and each entry point calls :func:`drop_unsafe_entries` first, for
launchers that bypass the kernelspec.

Imports only what the interpreter has loaded before any ``__main__`` runs (``os``, ``sys``), so
importing it cannot itself go through an unsafe entry.
"""

from __future__ import annotations

import os
import sys

#: The interpreter flag that leaves the current directory (or the script's) off ``sys.path``.
SAFE_PATH_FLAG = "-P"
#: The environment variable with the same meaning, for processes started by other programs.
SAFE_PATH_ENV = {"PYTHONSAFEPATH": "1"}


def python_module_command(module: str, python: str | None = None) -> list[str]:
    """``[python, -P, -m, module]``: the command line of every Python process the project starts."""
    return [python or sys.executable, SAFE_PATH_FLAG, "-m", module]


def drop_unsafe_entries() -> None:
    """Remove the implicit current-directory entry and relative entries from ``sys.path``, in place.

    Called first in each ``__main__`` of the project: ``-P`` and ``PYTHONSAFEPATH`` already keep
    the implicit entry out, but a launcher that runs ``python -m jax_kernel`` itself (an old
    kernelspec, a frontend's own command) would otherwise import from the notebook folder.  Relative
    entries (``PYTHONPATH=.``) resolve against the notebook folder too.  An absolute entry that a
    ``.pth`` file or ``PYTHONPATH`` names stays, even when it is the current directory.
    """
    if sys.path and not sys.flags.safe_path:
        first = sys.path[0]
        try:
            implicit = not first or os.path.realpath(first) == os.path.realpath(os.getcwd())
        except OSError:  # the current directory was removed
            implicit = not first
        if implicit:
            del sys.path[0]
    sys.path[:] = [entry for entry in sys.path if entry and os.path.isabs(entry)]
