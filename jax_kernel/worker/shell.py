"""The IPython shell that runs cells in the worker, publishing over the wire instead of ZMQ.

Modelled on ipykernel's ``ZMQInteractiveShell``: the same display hook, display
publisher, traceback, pager and exit behaviour, so cells behave exactly as in the stock
kernel, but every message goes to the kernel process as a plain JSON wire message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from IPython.core import page
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Any as AnyTrait
from traitlets import Type

from ..protocol.schema import error_line
from .cellnames import CellCompiler
from .jsonable import jsonable

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


class WorkerShell(InteractiveShell):
    """InteractiveShell whose outputs, errors and pager go over the kernel <-> worker wire."""

    displayhook_class = Type(WorkerDisplayHook)
    compiler_class = Type(CellCompiler)  # cell file names a debugger frontend can compute
    display_pub_class = Type(WorkerDisplayPublisher)
    send = AnyTrait(help="Callable sending one wire message to the kernel.")

    # Pipe-based like ipykernel: there is no terminal to hand a subprocess.
    system = InteractiveShell.system_piped

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.displayhook.send = self.send
        self.display_pub.send = self.send
        self.last_error: dict[str, Any] | None = None
        self.display_error = False  # the result's formatting raised during the running cell
        self._init_jax_entry_points()

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

    def init_environment(self) -> None:
        """Colour and paging settings for subprocesses, as ipykernel sets them."""
        env = os.environ
        env["TERM"] = "xterm-color"
        env["CLICOLOR"] = "1"
        env["FORCE_COLOR"] = "1"
        env["CLICOLOR_FORCE"] = "1"
        env["PAGER"] = "cat"
        env["GIT_PAGER"] = "cat"

    def init_hooks(self) -> None:
        super().init_hooks()
        self.set_hook("show_in_pager", page.as_hook(self._payload_page), 99)

    def _payload_page(self, strg: Any, start: int = 0, screen_lines: int = 0, pager_cmd: Any = None) -> None:
        # `obj?` in a notebook opens the pager through a payload, not a terminal pager.
        data = strg if isinstance(strg, dict) else {"text/plain": strg}
        self._write_payload({"source": "page", "data": data, "start": max(0, start)})

    def ask_exit(self) -> None:
        """`exit` / `quit` in a cell ask the frontend to shut the kernel down."""
        self.exit_now = True
        self._write_payload({"source": "ask_exit", "keepkernel": False})

    def set_next_input(self, text: str, replace: bool = False) -> None:
        self._write_payload({"source": "set_next_input", "text": text, "replace": replace})

    def _write_payload(self, payload: dict[str, Any]) -> None:
        # Payloads ride on the running cell's execute_reply; IPython's __init__ made the manager.
        assert self.payload_manager is not None
        self.payload_manager.write_payload(payload)

    def enable_gui(self, gui: Any = None) -> None:
        # There is no GUI event loop in a headless worker; inline is the only backend.
        if gui not in (None, "inline"):
            from IPython.core.error import UsageError

            raise UsageError(f"GUI event loop {gui!r} is not available in the jax worker; use inline output")

    def run_cell(self, *args: Any, **kwargs: Any) -> Any:
        self.last_error = None
        self.display_error = False
        return super().run_cell(*args, **kwargs)

    def _showtraceback(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        _flush_std()
        content = {"ename": str(etype.__name__), "evalue": str(evalue), "traceback": list(stb)}
        self.last_error = content
        if getattr(self.displayhook, "msg", None) is not None:
            # Formatting the cell's result failed (a broken _repr_html_): the cell failed, as in
            # ipykernel, so nbclient and papermill stop there.
            self.display_error = True
        self.send({"type": "error", **content})
