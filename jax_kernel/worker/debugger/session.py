"""The worker's debug session: each ``debug`` request from the kernel, answered on a thread of its own.

The requests ipykernel answers itself (``dumpCell``, ``debugInfo``, ``inspectVariables``,
``richInspectVariables``, ...) are answered here too; every other one goes to pydevd once
``initialize`` started it.  The session's thread is not traced (:mod:`..threads`), so while the
main thread is stopped at a breakpoint inside a cell, requests keep being answered.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from typing import Any

from ..cellnames import HASH_METHOD, HASH_SEED, SUFFIX, CellNames
from ..jsonable import jsonable
from ..threads import service_thread
from . import sources, variables
from .dap import NOT_STARTED, DebuggerUnavailable, Send, response
from .pydevd_link import PydevdLink

#: The package stepping out of a cell must not walk into (``jax_kernel/``), beside IPython's.
_OWN_CODE = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


class DebugSession:
    """Serves the kernel's ``debug`` requests, one at a time, on a thread of its own."""

    def __init__(self, send: Send, shell: Any, names: CellNames) -> None:
        self._send = send
        self._shell = shell
        self._names = names
        self._requests: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._pydevd = PydevdLink(send)
        self._blank_lines = sources.LeadingBlankLines(shell)
        self.started = False
        self.breakpoints: dict[str, list[dict[str, Any]]] = {}
        self._stash: Any = None
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "initialize": self.initialize,
            "attach": self.attach,
            "configurationDone": self.configuration_done,
            "debugInfo": self.debug_info,
            "dumpCell": self.dump_cell,
            "setBreakpoints": self.set_breakpoints,
            "source": self.source,
            "variables": self.variables,
            "inspectVariables": self.inspect_variables,
            "richInspectVariables": self.rich_inspect_variables,
            "copyToGlobals": self.copy_to_globals,
            "modules": self.modules,
            "disconnect": self.disconnect,
        }
        service_thread(self._serve, "jax-kernel-debug-requests")

    @property
    def stopped_threads(self) -> set[int]:
        """The threads pydevd said are stopped and has not said continued."""
        return self._pydevd.stopped_threads

    # plumbing -----------------------------------------------------------------------
    def submit(self, msg: dict[str, Any]) -> None:
        """Queue one ``debug`` wire request; its ``debug_reply`` is sent when it is served."""
        self._requests.put(msg)

    def _serve(self) -> None:
        while True:
            msg = self._requests.get()
            if msg.get("id") is None:  # our own: resume everything so an interrupt can reach the cell
                for thread_id in sorted(self.stopped_threads):
                    self._pydevd.forward(
                        {"type": "request", "command": "continue", "arguments": {"threadId": thread_id}}
                    )
                continue
            content = msg.get("content")
            request: dict[str, Any] = content if isinstance(content, dict) else {}
            try:
                reply = self.handle(request)
            except Exception as e:  # noqa: BLE001 - every request gets a reply
                reply = response(request, False, message=f"{type(e).__name__}: {e}")
            try:
                self._send({"type": "debug_reply", "id": msg["id"], "content": jsonable(reply)})
            except OSError:
                return  # the kernel is gone

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one DAP request: here, or by pydevd once the debugger is started."""
        command = request.get("command")
        handler = self._handlers.get(command) if isinstance(command, str) else None
        if handler is not None:
            return handler(request)
        if not self.started:
            return response(request, False, message=NOT_STARTED)
        return self._pydevd.forward(request)

    def handle_forwarded(self, request: dict[str, Any]) -> dict[str, Any]:
        """Forward to pydevd if the debugger is started, else refuse."""
        if not self.started:
            return response(request, False, message=NOT_STARTED)
        return self._pydevd.forward(request)

    # starting and stopping ----------------------------------------------------------------
    def initialize(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start pydevd (the first time: this imports debugpy) and pass it the request."""
        try:
            self._pydevd.start()
        except DebuggerUnavailable as e:
            return response(request, False, message=str(e))
        self._blank_lines.keep(True)
        self.started = True
        return self._pydevd.forward(request)

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Attach with rules that keep stepping inside the user's code."""
        if not self.started:
            return response(request, False, message=NOT_STARTED)
        arguments = dict(request.get("arguments") or {})
        # Stepping out of a cell must not walk into the worker's or IPython's own code.
        import IPython

        internal = [_OWN_CODE, os.path.dirname(IPython.__file__)]
        arguments.setdefault("rules", [{"path": os.path.join(d, "**"), "include": False} for d in internal])
        reply = self._pydevd.forward({**request, "arguments": arguments})
        # ipykernel's adapter sends configurationDone right after attach; pydevd waits for nothing,
        # but this makes a frontend that never sends one behave the same.
        self._pydevd.forward({"type": "request", "command": "configurationDone", "seq": 0, "arguments": {}})
        return reply

    def configuration_done(self, request: dict[str, Any]) -> dict[str, Any]:
        """Already sent to pydevd by :meth:`attach`: only acknowledged."""
        return response(request, True)

    def disconnect(self, request: dict[str, Any]) -> dict[str, Any]:
        """Stop debugging; pydevd stays loaded for a later ``initialize``."""
        reply = self.handle_forwarded(request) if self.started else response(request, True)
        self.started = False
        self.breakpoints.clear()
        self.stopped_threads.clear()
        self._blank_lines.keep(False)
        return reply

    # state and sources ---------------------------------------------------------------------
    def debug_info(self, request: dict[str, Any]) -> dict[str, Any]:
        """What a frontend that (re)connects needs to show this session as it is."""
        return response(
            request,
            True,
            body={
                "isStarted": self.started,
                "hashMethod": HASH_METHOD,
                "hashSeed": HASH_SEED,
                "tmpFilePrefix": self._names.prefix,
                "tmpFileSuffix": SUFFIX,
                "breakpoints": [{"source": s, "breakpoints": b} for s, b in self.breakpoints.items()],
                "stoppedThreads": sorted(self.stopped_threads),
                "richRendering": True,
                "exceptionPaths": ["Python Exceptions"],
                "copyToGlobals": True,
            },
        )

    def dump_cell(self, request: dict[str, Any]) -> dict[str, Any]:
        """Write a cell to the file its code will run as, so breakpoints can be set in it."""
        code = (request.get("arguments") or {}).get("code")
        if not isinstance(code, str):
            return response(request, False, message="dumpCell needs arguments.code")
        return response(request, True, body={"sourcePath": sources.dump_cell(self._names, code)})

    def set_breakpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        """Set them in pydevd and remember them, for ``debugInfo``."""
        source = ((request.get("arguments") or {}).get("source") or {}).get("path")
        reply = self.handle_forwarded(request)
        if reply.get("success") and isinstance(source, str):
            lines = [
                {"line": b["line"]} for b in (reply.get("body") or {}).get("breakpoints", []) if "line" in b
            ]
            self.breakpoints[source] = lines
            if not lines:
                self.breakpoints.pop(source)
        return reply

    def source(self, request: dict[str, Any]) -> dict[str, Any]:
        """A source file's text (a cell's file or a module's), for the frontend's editor."""
        text = sources.read_source(((request.get("arguments") or {}).get("source") or {}).get("path"))
        if text is not None:
            return response(request, True, body={"content": text})
        return response(request, False, message="source unavailable", body={})

    def modules(self, request: dict[str, Any]) -> dict[str, Any]:
        """The loaded modules that have a source file."""
        return response(request, True, body=sources.loaded_modules(request.get("arguments") or {}))

    # variables ------------------------------------------------------------------------------
    def variables(self, request: dict[str, Any]) -> dict[str, Any]:
        """A stopped frame's variables from pydevd, the user's names only."""
        if not self.stopped_threads:
            # Between cells inspectVariables lists the namespace flat: there is nothing to expand.
            return response(request, True, body={"variables": []})
        return variables.keep_user_variables(self.handle_forwarded(request))

    def inspect_variables(self, request: dict[str, Any]) -> dict[str, Any]:
        """The user namespace, for the variable explorer while nothing is stopped."""
        return response(request, True, body={"variables": variables.namespace_variables(self._shell)})

    def rich_inspect_variables(self, request: dict[str, Any]) -> dict[str, Any]:
        """A variable's MIME bundle, from the namespace or (when stopped) from the stopped frame."""
        arguments = request.get("arguments") or {}
        name = arguments.get("variableName")
        if not isinstance(name, str) or not name.isidentifier():
            return response(request, True, body={"data": {}, "metadata": {}})
        if not self.stopped_threads:
            data, metadata = variables.namespace_bundle(self._shell, name)
        else:
            data, metadata = self._frame_bundle(request, name, arguments.get("frameId"))
        body = {"data": data, "metadata": {k: v for k, v in metadata.items() if k in data}}
        return response(request, True, body=body)

    def _frame_bundle(
        self, request: dict[str, Any], name: str, frame_id: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Evaluated in the stopped frame; the bundle comes back through :func:`stash`, not a repr."""
        self._stash = None
        reply = self._pydevd.forward(
            {
                "type": "request",
                "command": "evaluate",
                "seq": request.get("seq", 0),
                "arguments": {
                    "expression": f"__import__({__name__!r}, fromlist=['_']).stash("
                    f"get_ipython().display_formatter.format({name}))",
                    "frameId": frame_id,
                    "context": "repl",
                },
            }
        )
        stashed = _CURRENT[0]._stash if _CURRENT else None
        if reply.get("success") and isinstance(stashed, tuple) and len(stashed) == 2:
            return stashed
        return {}, {}

    def copy_to_globals(self, request: dict[str, Any]) -> dict[str, Any]:
        """A stopped frame's variable, copied into the user namespace."""
        arguments = request.get("arguments") or {}
        dst, src = arguments.get("dstVariableName"), arguments.get("srcVariableName")
        if not (isinstance(dst, str) and dst.isidentifier() and isinstance(src, str) and src.isidentifier()):
            return response(
                request, False, message="dstVariableName and srcVariableName must be valid identifiers"
            )
        return self.handle_forwarded(
            {
                "type": "request",
                "command": "setExpression",
                "seq": request.get("seq", 0),
                "arguments": {
                    "expression": f"globals()['{dst}']",
                    "value": src,
                    "frameId": arguments.get("srcFrameId"),
                },
            }
        ) | {"command": "copyToGlobals"}


#: The worker's one session, created by the first debug request (see :func:`session`).
_CURRENT: list[DebugSession] = []


def session(send: Send, shell: Any, names: CellNames) -> DebugSession:
    """The worker's debug session, created on first use."""
    if not _CURRENT:
        _CURRENT.append(DebugSession(send, shell, names))
    return _CURRENT[0]


def current() -> DebugSession | None:
    """The worker's debug session if a debug request created it, else None."""
    return _CURRENT[0] if _CURRENT else None


def stash(value: Any) -> None:
    """Called by an expression pydevd evaluates in a stopped frame: hand a value to the session."""
    if _CURRENT:
        _CURRENT[0]._stash = value
