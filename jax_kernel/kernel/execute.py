"""Kernel process: one cell, run by the worker, and the execute_reply that says how it went.

The worker's shell owns the execution counter (as the in-process shell does in ipykernel); the
kernel keeps the number the frontend was last told, so that a cell whose worker died still
replies with the number its ``execute_input`` showed and the next worker carries on after it.
A cell from a subshell runs beside the main shell's: it gets no ``input()`` (the frontend has
one stdin channel, which the main shell's cell may be using) and cannot replace the worker
(``%load_jax`` with new settings), which would end the main shell's cell.
"""

from __future__ import annotations

import typing as t

from ..protocol import wire
from ..supervision.manager import WorkerDied, WorkerError
from . import replies
from .outputs import Origin
from .subshells import subshell_of

#: What a subshell's ``%load_jax`` that needs a new worker says instead of replacing it.
SUBSHELL_RESTART = (
    "%load_jax with new settings replaces the worker, which would end what the main shell runs: "
    "run it in the main shell (a notebook cell)"
)


class CellRunner:
    """Runs execute requests in the worker for one :class:`~.jaxkernel.JaxKernel`."""

    def __init__(self, kernel: t.Any) -> None:
        self.kernel = kernel
        self.execution_count = 1  # the next cell's number, as the frontend was last told
        self.jax_loaded_version: str | None = None

    def reset(self) -> None:
        """A restart in place: numbering starts again at 1, and JAX is not loaded yet."""
        self.execution_count = 1
        self.jax_loaded_version = None

    async def run(
        self,
        origin: Origin,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, t.Any] | None,
        allow_stdin: bool,
    ) -> dict[str, t.Any]:
        """The cell's execute_reply content; on the shell's loop."""
        kernel, manager = self.kernel, self.kernel.manager
        subshell = subshell_of(origin.parent)
        if subshell is None:  # untagged output goes to the main shell's newest cell
            origin = kernel.outputs.begin(origin)
        death = None if silent else manager.take_death_report()
        if death is not None:
            variables = await self._restored(death, last_cell=self.execution_count - 1)
            return self.error_reply(death, origin, ran=False, variables=variables)
        # If the worker dies mid-cell, its replacement continues the numbering after this cell.
        cell_count = self.execution_count  # what execute_input said: the reply says the same
        manager.execution_count = self.execution_count + (1 if store_history and not silent else 0)
        request = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions or {},
            "allow_stdin": allow_stdin and subshell is None,
            "output_limit": kernel.output_limit,
            "compile_notice_after": kernel.compile_notice_after,
            "array_view": kernel.array_view,
            wire.PARENT_FIELD: origin.for_worker(),
        }
        try:
            content = await manager.request("execute", request, origin=origin)
            reply, next_count = replies.execute_reply(content)
            jax_version = content.get("jax_version")
            self.jax_loaded_version = jax_version if isinstance(jax_version, str) else None
            self.execution_count = manager.execution_count = next_count
            if reply["status"] == "ok" and isinstance(content.get("jax_restart"), dict):
                if subshell is not None:
                    return self.error_reply(WorkerError(SUBSHELL_RESTART), origin, ran=True, count=cell_count)
                reply = await kernel.jax.replace_for_cell(content["jax_restart"], reply, origin)
            if any(p.get("source") == "ask_exit" and not p.get("keepkernel") for p in reply["payload"]):
                # exit() / quit(): the kernel ends, as ipykernel's does 0.1 s after the reply, and
                # the frontend's restarter (JupyterLab, VS Code) starts a fresh one.
                kernel.io_loop.call_later(0.1, kernel.io_loop.stop)
        except WorkerError as e:
            self.execution_count = manager.execution_count
            variables = await self._restored(e, last_cell=cell_count)
            return self.error_reply(e, origin, ran=True, count=cell_count, variables=variables)
        except Exception as e:  # noqa: BLE001 - the frontend must get a reply, whatever went wrong
            kernel.log.exception("Internal error while running a cell")
            error = WorkerError(f"internal error in the kernel ({type(e).__name__}: {e})")
            return self.error_reply(error, origin, ran=True, count=cell_count)
        finally:
            if subshell is None:  # a subshell's cell never asked for input
                kernel.stdin.cancel()
            self._finish_stream_budget(origin)
        return reply

    async def _restored(self, error: WorkerError, last_cell: int) -> str | None:
        """For a dead worker: what its replacement restored, once it says (up to its start limit)."""
        if not isinstance(error, WorkerDied):
            return None
        manager = self.kernel.manager
        report = await manager.state.restore_report(manager.start_timeout)
        return replies.restored_text(report, last_cell, error.fresh)

    def _finish_stream_budget(self, origin: Origin) -> None:
        worker = self.kernel.manager.worker
        notice = worker.stream_budget.take_notice() if worker is not None else None
        if notice:
            self.kernel.outputs.publish("stream", {"name": "stderr", "text": notice}, origin)

    def error_reply(
        self,
        error: WorkerError,
        origin: Origin,
        ran: bool,
        count: int | None = None,
        variables: str | None = None,
    ) -> dict[str, t.Any]:
        """End the cell with an error that says what happened to the worker and to the variables;
        ``count``: the cell's own number (its execute_input's), when it ran and the next cell's moved on."""
        content = replies.worker_error(error, ran, variables)
        self.kernel.outputs.publish("error", content, origin)
        return {
            "status": "error",
            "execution_count": self.execution_count if count is None else count,
            "user_expressions": {},
            "payload": [],
            **content,
        }
