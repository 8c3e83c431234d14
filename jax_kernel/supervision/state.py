"""Kernel process: the worker's snapshots of its variables, carried from a dead worker to the next.

The worker saves its namespace while it is idle (:mod:`jax_kernel.worker.state`) into this
kernel's private state dir, which only this kernel's workers can reach, and reports each commit
(a summary: :mod:`jax_kernel.protocol.state`).  When a worker dies (a crash, an out-of-memory
kill, an interrupt it ignored, the CPU limit), its replacement is told to restore the last
snapshot whose digest the kernel recorded, and reports what came back; the cell's error says so.
A restart stays a restart: the snapshot is deleted.  The kernel never opens a snapshot file: it
keeps the summaries, hands the digest on, and removes the folder when it resets or shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Any

import psutil

from ..policy.sandbox import Sandbox
from ..protocol import state
from ..protocol.config import StatePolicy

#: A set's restore: each member checks its own part (the kernel heard only member 0's digest).
ANY = "any"
#: Share of the machine's RAM, and of the state dir's free disk, that snapshots may take at most.
RAM_SHARE = 0.25
DISK_SHARE = 0.5


class StateCarrier:
    """The summary of the current worker's last snapshot, and the restore of the next worker."""

    def __init__(self, settings: Any, sandbox: Sandbox, log: logging.Logger) -> None:
        self.settings = settings  # WorkerManager: keep_state and the budgets, read when needed
        self.sandbox = sandbox
        self.log = log
        self.summary: dict[str, Any] | None = None  # the last commit the current worker reported
        self.enabled: bool | None = None  # %jax_state --off/--on for this notebook (None: the setting)
        self._folder: str | None = None
        self._restoring: asyncio.Future[dict[str, Any]] | None = None
        self.layout: tuple[int, int] = (1, 0)  # (processes, devices per process) that saved it
        self.refused: str | None = None  # why the last start could not restore, if it could not
        self._current: tuple[int, int] = (1, 0)  # the layout of the worker started last

    @property
    def on(self) -> bool:
        """Whether this notebook's workers snapshot their variables."""
        return bool(self.settings.keep_state) if self.enabled is None else self.enabled

    def folder(self) -> str:
        """This kernel's snapshot folder, inside its private state dir (made on first use)."""
        if self._folder is None:
            self._folder = os.path.join(self.sandbox.state_dir(), "snapshots")
            os.makedirs(self._folder, mode=0o700, exist_ok=True)
        return self._folder

    def budgets(self) -> tuple[int, int]:
        """(total, per value) bytes: the settings, or a share of RAM and of the folder's free disk."""
        total = int(self.settings.state_bytes)
        if total <= 0:
            free = shutil.disk_usage(self.folder()).free
            total = int(min(psutil.virtual_memory().total * RAM_SHARE, free * DISK_SHARE))
        value = int(self.settings.state_value_bytes) or total // 2
        return total, min(value, total)

    def policy(self, restore: bool, layout: tuple[int, int] = (1, 0)) -> StatePolicy:
        """What a worker (or each member of a set) is told: where to snapshot, its budgets, and
        which snapshot to restore.  ``layout``: (processes, devices per process) of what starts;
        a set restores its members' own snapshots only into a set of the same layout."""
        total, value = self.budgets()
        digest = (self.summary or {}).get("digest") if restore and self.on else None
        self.refused = None
        self._current = layout  # what its commits will have been saved by
        if digest and layout != self.layout:
            self.refused = (
                f"the variables could not be carried over: they were saved by {_shape(self.layout)}, "
                f"and {_shape(layout)} replaces it"
            )
            digest = None
        elif digest and layout[0] > 1:
            digest = ANY  # each member checks its own part's digests; the kernel heard member 0's
        return {
            "dir": self.folder(),
            "enabled": self.on,
            "max_total_bytes": total,
            "max_value_bytes": value,
            "max_seconds": float(self.settings.state_seconds),
            "restore": digest or "",
            "member": "",  # a set member uses its index (its config's "member")
        }

    # what the workers say ------------------------------------------------------------------------
    def committed(self, raw: Any, enabled: Any = None) -> None:
        """The current worker committed a snapshot (or, with ``enabled``, was told --off/--on)."""
        if isinstance(enabled, bool):
            self.enabled = enabled
            if not enabled:
                self.forget()
                return
        self.summary = state.summary(raw)
        self.layout = self._current

    def expect_restore(self) -> None:
        """A worker that replaces a dead one is starting with a restore: its report is awaited."""
        self._restoring = asyncio.get_running_loop().create_future()

    def restored(self, raw: Any) -> None:
        """The new worker's report; its snapshot is the current one until it commits its own."""
        report = state.restore_report(raw)
        if self._restoring is not None and not self._restoring.done():
            self._restoring.set_result(report)

    async def restore_report(self, timeout: float) -> dict[str, Any] | None:
        """What the worker replacing a dead one restored (None if none was to be, or if it has
        not said within ``timeout`` seconds: the cell then says only that it died)."""
        if self.refused is not None:
            return {**state.restore_report({}), "refused": self.refused}
        waiting = self._restoring
        if waiting is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except (TimeoutError, asyncio.CancelledError):
            return None

    def no_restore(self) -> None:
        """The next worker starts empty (a restart, new settings without --keep-state)."""
        self._restoring = None

    def forget(self) -> None:
        """Delete the snapshot (a restart, --off, the kernel resetting): what was saved is gone."""
        self.summary = None
        self._restoring = None
        if self._folder is not None and os.path.isdir(self._folder):
            _empty(self._folder)


def _shape(layout: tuple[int, int]) -> str:
    processes, per = layout
    if processes <= 1:
        return "a single worker"
    return f"a set of {processes} processes" + (f" with {per} devices each" if per else "")


def _empty(folder: str) -> None:
    """Delete what ``folder`` holds, not the folder: the standby worker's sandbox has it bound (a
    new folder at the same path would not be the one it sees).  Nothing here follows a link the
    worker made: rmtree walks by file descriptor, and a link itself is only unlinked."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
