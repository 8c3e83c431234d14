"""A write the sandbox refused says once which setting allows it.

A cell that writes outside the writable folders fails with ``PermissionError`` (Landlock: EACCES)
or ``OSError`` (a read-only mount: EROFS), which reads like a permission problem of the host.  So
the first such error a worker shows gains a note (Python 3.11's ``add_note``, which IPython's
tracebacks print) naming the folders a cell may write and the setting that adds one; later
refusals show the plain error.  What is writable comes from the policy the worker applied
(:data:`jax_kernel.worker.sandbox.PLACES`).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .sandbox import PLACES
from .sandbox.base import _is_within as _within

REFUSED = (errno.EACCES, errno.EROFS, errno.EPERM)


class Refusals:
    """Adds the note to the first refused write this worker shows."""

    def __init__(self, places: dict[str, Any] | None = None) -> None:
        self.places = PLACES if places is None else places
        self.notebook = os.path.realpath(os.getcwd())  # before any %cd
        self.noted = False

    def annotate(self, error: BaseException | None) -> None:
        """Add the note to ``error`` if it is the first write refusal outside the writable folders."""
        if self.noted or not isinstance(error, OSError) or error.errno not in REFUSED:
            return
        if not self.places.get("writable") or not isinstance(error.filename, str | bytes):
            return
        path = os.path.realpath(os.fsdecode(error.filename))
        if any(_within(path, p) for p in self.places["writable"]):
            return  # refused for another reason (a read-only dot-file, a special file)
        if any(_within(path, p) for p in self.places.get("hidden", [])):
            return  # hidden, not merely read-only: writable_paths would not help
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        error.add_note(
            f"jax-kernel's sandbox keeps {folder} read-only. Writable: {', '.join(self.writable_names())}. "
            f"To allow more: c.Sandbox.writable_paths = [{folder!r}] in jax_kernel_config.py, then "
            "restart the kernel."
        )
        self.noted = True

    def writable_names(self) -> list[str]:
        """The places a cell may write, as a user knows them."""
        names = ["the notebook folder", "/tmp" if "/tmp" in self.places["writable"] else None]
        if self.places.get("home_cache"):
            names.append("~/.cache")
        names.append("$TMPDIR")
        state = self.places.get("state")
        internal = set(self.places.get("internal", []))
        for path in self.places["writable"]:
            if path in internal or path in (self.notebook, "/tmp", self.places.get("home_cache")):
                continue
            if state and _within(path, state):
                continue
            names.append(path)  # the deployer's Sandbox.writable_paths
        return [n for n in dict.fromkeys(names) if n]
