"""The IPython shell that runs cells in the worker: ipykernel's ``ZMQInteractiveShell``, over the wire.

It *is* a ``ZMQInteractiveShell`` (a subclass, named so, reporting module ``ipykernel.zmqshell``),
because that is how libraries tell a notebook from a terminal: rich renders HTML, plotly picks
its MIME renderer, JAX's pretty-printer colours, only for that class name and module.  Its pager,
exit, payload and subprocess behaviour are ipykernel's own; the display hook, the display
publisher, tracebacks and the thread parents (:mod:`.parents`) send wire messages to the kernel
process instead of ZMQ frames.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ipykernel import zmqshell
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from traitlets import Any as AnyTrait
from traitlets import Type

from ..protocol.schema import error_line
from .cellnames import CellCompiler
from .jsonable import jsonable
from .parents import ParentAPI, Parents

Send = Callable[[dict[str, Any]], None]


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            getattr(stream, "flush_now", stream.flush)()  # a cell may have replaced sys.stdout


class WorkerDisplayHook(DisplayHook):
    """Sends ``execute_result`` for the value of a cell's last expression."""

    send = AnyTrait()

    def start_displayhook(self) -> None:
        self.msg: dict[str, Any] | None = {"type": "execute_result", "data": {}, "metadata": {}}

    def write_output_prompt(self) -> None:
        assert self.msg is not None
        self.msg["execution_count"] = self.prompt_count

    def write_format_data(self, format_dict: dict, md_dict: dict | None = None) -> None:
        assert self.msg is not None
        self.msg["data"] = jsonable(format_dict)
        self.msg["metadata"] = jsonable(md_dict or {})

    def finish_displayhook(self) -> None:
        _flush_std()
        msg, self.msg = self.msg, None
        if msg and msg["data"]:
            self.send(msg)


class WorkerDisplayPublisher(DisplayPublisher):
    """Sends ``display_data``, ``update_display_data`` and ``clear_output``."""

    send = AnyTrait()

    def publish(  # type: ignore[override]
        self,
        data: dict,
        metadata: dict | None = None,
        *,
        transient: dict | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        _flush_std()
        self._validate_data(data, metadata)
        self.send(
            {
                "type": "update_display_data" if update else "display_data",
                "data": jsonable(data),
                "metadata": jsonable(metadata or {}),
                "transient": jsonable(transient or {}),
            }
        )

    def clear_output(self, wait: bool = False) -> None:
        _flush_std()
        self.send({"type": "clear_output", "wait": bool(wait)})


def _jax_exc_handler(
    shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None
) -> list[str]:
    from .jax_ops import JaxRestartRequired

    if isinstance(value, JaxRestartRequired):
        return []
    stb = [error_line(etype.__name__, str(value))]
    shell._showtraceback(etype, value, stb)
    return stb


class ZMQInteractiveShell(ParentAPI, zmqshell.ZMQInteractiveShell):  # type: ignore[misc]
    """ipykernel's shell, whose outputs, errors and parents go over the kernel <-> worker wire."""

    __module__ = "ipykernel.zmqshell"  # what plotly and others check, with the class name

    displayhook_class = Type(WorkerDisplayHook)  # type: ignore[assignment]
    compiler_class = Type(CellCompiler)  # cell file names a debugger frontend can compute
    display_pub_class = Type(WorkerDisplayPublisher)  # type: ignore[assignment]
    send = AnyTrait(help="Callable sending one wire message to the kernel.")
    parents = AnyTrait(help="The worker's Parents: which request output belongs to, per thread.")
    keepstate = AnyTrait(help="The worker's snapshots of the variables (KeepState), set by the server.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.displayhook.send = self.send
        self.display_pub.send = self.send
        self.last_error: dict[str, Any] | None = None
        self.display_error = False  # the result's formatting raised during the running cell
        self._init_jax_entry_points()
        self._init_sandbox_habits()

    def init_user_ns(self) -> None:
        """Every namespace, including one after %reset, has the JAX entry points' functions (hidden from %who)."""
        super().init_user_ns()
        from . import jax_ops

        self.push(
            {
                "load_jax_library": jax_ops.load_jax_library,
                "execute_jax_transformation": jax_ops.execute_jax_transformation,
                "execute_jax_program": jax_ops.execute_jax_program,
                "export_jax_program": jax_ops.export_jax_program,
            },
            interactive=False,
        )

    def _init_jax_entry_points(self) -> None:
        """The JAX magics, and one-line errors for the entry points."""
        from . import jax_ops
        from .magics import JaxMagics

        self.register_magics(JaxMagics)
        # Our errors are one clear line, not a traceback into jax_kernel; a restart request
        # shows nothing here: the kernel reports it.
        self.set_custom_exc((jax_ops.JaxEntryError, jax_ops.JaxRestartRequired), _jax_exc_handler)

    def _init_sandbox_habits(self) -> None:
        """``%pip`` into the notebook folder's packages (on ``sys.path`` from now on: the worker's own
        modules are imported), and a note on the first write the sandbox refuses."""
        from . import pipmagic
        from .refusals import Refusals

        self.refusals = Refusals()
        pipmagic.register(self)

    def showtraceback(self, exc_tuple: Any = None, *args: Any, **kwargs: Any) -> None:
        """IPython's, after the first write the sandbox refused gained its note (:mod:`.refusals`):
        the error a cell shows is the one place a user looks for why a write failed."""
        try:
            error = self._get_exc_info(exc_tuple)[1]
        except ValueError:
            error = None
        refusals = getattr(self, "refusals", None)
        if refusals is not None:
            refusals.annotate(error)
        super().showtraceback(exc_tuple, *args, **kwargs)

    def enable_gui(self, gui: Any = None) -> None:
        # There is no GUI event loop in a headless worker; inline is the only backend.
        if gui not in (None, "inline"):
            from IPython.core.error import UsageError

            raise UsageError(f"GUI event loop {gui!r} is not available in the jax worker; use inline output")

    def _kept_by(self) -> Parents | None:
        return self.parents  # type: ignore[no-any-return]

    def run_cell(self, *args: Any, **kwargs: Any) -> Any:
        self.last_error = None
        self.display_error = False
        return super().run_cell(*args, **kwargs)

    def _showtraceback(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        _flush_std()
        content = {"ename": str(etype.__name__), "evalue": str(evalue), "traceback": list(stb)}
        self.last_error = content
        self._last_traceback = list(stb)  # as ipykernel keeps it
        if getattr(self.displayhook, "msg", None) is not None:
            # Formatting the cell's result failed (a broken _repr_html_): the cell failed, as in
            # ipykernel, so nbclient and papermill stop there.
            self.display_error = True
        self.send({"type": "error", **content})


#: The name the rest of the worker uses; the class keeps ipykernel's name for libraries' sake.
WorkerShell = ZMQInteractiveShell
