"""The worker's side of keeping variables across workers: when to snapshot, restore, report.

The engine (:mod:`jax_kernel.worker.state`) saves and loads; this decides when, with the worker's
life cycle: a successful cell makes a snapshot due, idle time writes it in short steps (a new
request pre-empts it, and it resumes when the worker is idle again, so a cell never waits for
it), a commit is reported to the kernel (a summary: names, sizes, skipped and why, the manifest's
digest), and a worker started to replace a dead one restores the snapshot before its first
request.  ``%jax_state`` shows and steers it; ``%jax_reset`` and ``%load_jax --keep-state`` save
everything now and have the kernel replace the worker with one that restores it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from . import memory

#: Seconds of work one idle step may take: a request that arrives meanwhile waits at most this.
STEP_SECONDS = 0.005


class KeepState:
    """One worker's snapshots, as its policy (the kernel's ``state`` config) says."""

    def __init__(self, shell: Any, send: Callable[[dict[str, Any]], None]) -> None:
        self.shell = shell
        self._send = send
        self.policy: dict[str, Any] = {}
        self.keeper: Any = None  # a StateKeeper while snapshots are on
        self._reported: str | None = None  # the digest last reported to the kernel
        self._due: int | None = None  # a cell succeeded since: its snapshot is to be taken
        self._busy: Callable[[], bool] = lambda: False

    def configure(self, policy: dict[str, Any] | None, busy: Callable[[], bool], member: Any = None) -> None:
        """Take the kernel's policy (at start, or when a standby takes up work); ``member``: a set
        member's index (each member keeps its own part of the folder)."""
        self.policy = dict(policy or {})
        if member is not None:
            self.policy["member"] = str(member)
        self._busy = busy
        if self.policy.get("enabled") and self.policy.get("dir"):
            try:
                self.keeper = self._make_keeper()
                if not self.policy.get("restore"):
                    # Nothing to carry over (a first start, a restart): what a worker of this
                    # kernel may have written since the kernel cleared the folder goes too.
                    self.keeper.discard()
            except OSError as e:  # no snapshots is a loss to report, not a reason for no worker
                print(f"jax-kernel: no snapshots of the variables in this worker: {e}", file=sys.stderr)
                self.keeper = None

    def _make_keeper(self) -> Any:
        from .state import Budgets, StateKeeper  # only workers that keep state import the engine

        p = self.policy
        budgets = Budgets(
            int(p["max_total_bytes"]),
            int(p["max_value_bytes"]),
            float(p["max_seconds"]),
            total_setting="WorkerManager.state_bytes",
            value_setting="WorkerManager.state_value_bytes",
            seconds_setting="WorkerManager.state_seconds",
        )
        return StateKeeper(p["dir"], budgets, member=str(p.get("member") or ""))

    # restore -------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Before the first request: bring back what the dead worker before us had saved."""
        digest = self.policy.get("restore")
        if not digest or not self.policy.get("dir"):
            return
        from .state import StateKeeper

        expected = None if digest == "any" else digest  # a set member: its own part's checks
        report = StateKeeper.restore(
            self.policy["dir"], self.shell.user_ns, expected, member=str(self.policy.get("member") or "")
        ).to_json()
        report["memory"] = memory.buffers_and_memory()  # after: %jax_reset says what it freed
        self._send({"type": "restored", "report": report})

    # snapshots -----------------------------------------------------------------------------------
    def cell_done(self, cell: int) -> None:
        """A cell succeeded: a snapshot as of that cell is due.  Only noted here, on the reply's
        path; the keeper looks at the namespace in idle time (nothing runs in between: another
        cell would have noted its own number)."""
        if self.keeper is not None:
            self._due = cell

    def pending(self) -> bool:
        """Whether a snapshot is due (and no subshell is running a cell that changes the namespace)."""
        if self.keeper is None or self._busy():
            return False
        return self._due is not None or bool(self.keeper.pending())

    def step(self) -> bool:
        """One short step of the due snapshot while no request waits; whether more is left."""
        if not self.pending():
            return False
        if self._due is not None:
            self.keeper.cell_done(self.shell.user_ns, self._due, set(self.shell.user_ns_hidden))
            self._due = None
        self.keeper.step(STEP_SECONDS)
        self._report()
        return self.pending()

    def _report(self) -> None:
        summary = self.keeper.summary() if self.keeper is not None else None
        if summary is not None and summary.digest and summary.digest != self._reported:
            self._reported = summary.digest
            self._send({"type": "state", "summary": summary.to_json()})

    def save_now(self) -> Any:
        """Save everything now (``%jax_state save``, before a replacement that keeps the state)."""
        if self.keeper is None:
            raise RuntimeError(
                "this notebook keeps no state (WorkerManager.keep_state is off, or %jax_state --off)"
            )
        shell = self.shell
        started = time.perf_counter()
        self._due = None
        summary = self.keeper.save_now(shell.user_ns, shell.execution_count - 1, set(shell.user_ns_hidden))
        self._report()
        return summary, time.perf_counter() - started

    def set_enabled(self, on: bool) -> None:
        """``%jax_state --on/--off``: for this worker and, through the kernel, the next ones."""
        if on and self.keeper is None and self.policy.get("dir"):
            self.policy["enabled"] = True
            self.keeper = self._make_keeper()
        elif not on and self.keeper is not None:
            self.keeper.discard()
            self.keeper = None
        self._reported = None
        self._send({"type": "state", "summary": {}, "enabled": on})
