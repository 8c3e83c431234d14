"""``%jax_state`` and ``%jax_reset``: the snapshot of a notebook's variables, seen and used.

``%jax_state`` shows what the last snapshot holds (each name's kind and size, the cell it was
saved after, what was skipped and why); ``save`` takes one now, ``--off``/``--on`` stop and start
them for this notebook.  ``%jax_reset`` frees every device buffer and keeps the variables: it
saves everything now and has the kernel replace the worker with one that restores it, so device
memory is back to what the restored arrays need and XLA's allocator and caches start over.
"""

from __future__ import annotations

import html
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display

from ..protocol.state import sized
from . import jax_ops, memory
from .keepstate import KeepState


def _table(summary: Any) -> dict[str, str]:
    """A MIME bundle (text and HTML) of a snapshot summary."""
    values, skipped = summary.values or {}, summary.skipped or {}
    if summary.cell is None:
        head = "No snapshot yet: one is saved while the worker is idle after a cell succeeds."
    else:
        head = (
            f"Snapshot after cell [{summary.cell}]: {len(values)} variables, {sized(summary.bytes)} "
            f"({summary.seconds:.2f} s to save)."
        )
    error = getattr(summary, "error", None)
    if error:
        head += f" The last attempt since stopped: {error}."
    lines = [head] + [
        f"  {n}: {v.get('kind', '?')}, {sized(int(v.get('bytes', 0)))}" for n, v in values.items()
    ]
    lines += [f"  not saved: {n} ({why})" for n, why in skipped.items()]
    rows = "".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(str(v.get('kind', '?')))}</td>"
        f"<td>{sized(int(v.get('bytes', 0)))}</td></tr>"
        for n, v in values.items()
    )
    rows += "".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td colspan=2>not saved: {html.escape(why)}</td></tr>"
        for n, why in skipped.items()
    )
    table = f"<table><tr><th>name</th><th>kind</th><th>size</th></tr>{rows}</table>" if rows else ""
    return {"text/plain": "\n".join(lines), "text/html": f"<p>{html.escape(head)}</p>{table}"}


@magics_class
class StateMagics(Magics):
    """The worker's snapshot of its variables (:mod:`.keepstate`), for the notebook's user."""

    def __init__(self, shell: Any, keepstate: KeepState) -> None:
        super().__init__(shell)
        self.keepstate = keepstate

    @line_magic
    def jax_state(self, line: str = "") -> None:
        """Show the last snapshot of this notebook's variables.

        %jax_state [save] [--off|--on]

        ``save`` saves everything now; ``--off`` stops snapshots for this notebook (and deletes
        the last one), ``--on`` starts them again (``WorkerManager.keep_state`` is the default).
        """
        words = line.split()
        unknown = set(words) - {"save", "--off", "--on"}
        if unknown or ("--off" in words and "--on" in words):
            raise UsageError("%jax_state takes save, --off or --on")
        if "--off" in words or "--on" in words:
            self.keepstate.set_enabled("--on" in words)
            print(f"Snapshots of this notebook's variables are {'on' if '--on' in words else 'off'}.")
            if "--off" in words:
                return
        keeper = self.keepstate.keeper
        if keeper is None:
            print("This notebook keeps no snapshot of its variables (%jax_state --on starts them).")
            return
        if "save" in words:
            summary, seconds = self.keepstate.save_now()
            print(f"Saved in {seconds:.2f} s.")
        else:
            summary = keeper.summary()
        display(_table(summary), raw=True)

    @line_magic
    def jax_reset(self, line: str = "") -> None:
        """Free every device buffer and keep the variables: save them all, replace the worker
        (same JAX settings), restore them.  XLA's allocator state and caches start over."""
        if line.strip():
            raise UsageError("%jax_reset takes no arguments")
        if self.keepstate.keeper is None:
            raise UsageError(
                "%jax_reset needs snapshots (WorkerManager.keep_state, %jax_state --on): without them "
                "the variables would be lost"
            )
        before = memory.buffers_and_memory()
        self.keepstate.save_now()
        settings = dict(jax_ops.STATE.applied)
        raise jax_ops.JaxRestartRequired(
            settings, "%jax_reset: a fresh worker frees every device buffer", keep_state=True, memory=before
        )
