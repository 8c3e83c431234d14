"""``get_ipython().kernel`` in the worker: the part of ipykernel's ``Kernel`` that libraries use.

The real kernel is another process; libraries still reach for it here.  ipywidgets' ``Output``
asks it for the running request's parent, ``ipykernel.comm.Comm`` sends through its ``session``
to its ``iopub_socket``, code routes output with ``set_parent``/``_parent_ident``.  This facade
is a (never started) ``ipykernel.kernelbase.Kernel`` registered as the singleton, so
``Kernel.initialized()`` is true as in a stock kernel, and its session's ``send`` turns IOPub
messages into wire messages: it opens no socket and runs no loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipykernel.kernelbase import Kernel
from jupyter_client.session import Session

from ..protocol import wire
from .jsonable import jsonable
from .parents import Parents

Send = Callable[[dict[str, Any]], None]

#: IOPub message types a cell may publish through the kernel's session (besides streams and comms),
#: and the wire fields of each: the wire schema's, required and optional.
_OUTPUT_FIELDS = {
    kind: (*wire.WORKER_MESSAGES[kind], *wire.OPTIONAL_FIELDS.get(kind, {}))
    for kind in ("display_data", "update_display_data", "execute_result", "clear_output", "error")
}


class IOPub:
    """Stands where ipykernel's IOPub socket stands; what is sent "to" it goes over the wire."""

    def __repr__(self) -> str:
        return "<jax-kernel IOPub: over the worker's wire>"


class WireSession(Session):
    """A jupyter_client ``Session`` whose ``send`` publishes on the wire instead of a socket."""

    def __init__(
        self, emit: Send, write_stream: Callable[[str, str, int | None], None], parents: Parents
    ) -> None:
        super().__init__(key=b"", username="kernel")
        self._emit = emit
        self._write_stream = write_stream
        self._parents = parents

    def send(  # type: ignore[override]
        self,
        stream: Any,
        msg_or_type: Any,
        content: Any = None,
        parent: Any = None,
        ident: Any = None,
        buffers: Any = None,
        track: bool = False,
        header: Any = None,
        metadata: Any = None,
    ) -> dict[str, Any] | None:
        msg = (
            msg_or_type
            if isinstance(msg_or_type, dict)
            else self.msg(msg_or_type, content, parent, header, metadata)
        )
        msg_type = msg["header"]["msg_type"]
        content = msg.get("content") or {}
        request = self._parents.lookup(parent).request if parent else self._parents.request_id()
        if msg_type in wire.COMM_MSG_TYPES:
            out: dict[str, Any] = {
                "type": "comm",
                "msg_type": msg_type,
                "content": jsonable(content),
                "metadata": jsonable(msg.get("metadata") or {}),
                "buffers": wire.encode_buffers(buffers),
            }
        elif msg_type == "stream" and content.get("name") in wire.STREAM_NAMES:
            self._write_stream(content["name"], str(content.get("text", "")), request)
            return msg
        elif msg_type in _OUTPUT_FIELDS:
            out = {
                "type": msg_type,
                **{f: jsonable(content[f]) for f in _OUTPUT_FIELDS[msg_type] if f in content},
            }
            if "data" in out:
                out.setdefault("metadata", {})
            if msg_type in ("display_data", "update_display_data"):
                out.setdefault("transient", {})
        else:
            return msg  # status, execute_input...: the kernel publishes its own
        if request is not None:
            out[wire.REQUEST_FIELD] = request
        self._emit(out)
        return msg


class WorkerKernel(Kernel):
    """The kernel as seen from inside the worker (see the module docstring)."""

    implementation = "jax-kernel"

    def __init__(
        self, parents: Parents, session: WireSession, shell: Any, comm_manager: Any, **kw: Any
    ) -> None:
        super().__init__(session=session, iopub_socket=IOPub(), **kw)
        self._parents = parents
        self.shell = shell
        self.comm_manager = comm_manager
        self._parent_ident = _Idents(parents)
        self.raw_input: Callable[..., str] = input
        self.getpass: Callable[..., str] = input

    def get_parent(self, channel: str | None = None) -> dict[str, Any]:
        """The request being served on this thread (``channel="control"``: the newest control one)."""
        if channel == "control":
            return self._parents.control.message
        return self._parents.current().message

    def set_parent(self, ident: Any, parent: Any, channel: str = "shell") -> None:
        if channel == "shell":
            self._parents.set_global(parent)


class _Idents(dict):  # type: ignore[type-arg]
    """``kernel._parent_ident["shell"|"control"]``: kept by ipykernel for JupyterLab's sake."""

    def __init__(self, parents: Parents) -> None:
        super().__init__()
        self._parents = parents

    def __getitem__(self, channel: str) -> list[bytes]:
        if channel == "control":
            return self._parents.control.ident
        if channel == "shell":
            return self._parents.current().ident
        raise KeyError(channel)


def install(
    parents: Parents,
    emit: Send,
    write_stream: Callable[[str, str, int | None], None],
    shell: Any,
    comm_manager: Any,
) -> WorkerKernel:
    """Make the facade ``get_ipython().kernel`` and ipykernel's ``Kernel.instance()``."""
    kernel = WorkerKernel(parents, WireSession(emit, write_stream, parents), shell, comm_manager)
    for cls in WorkerKernel.__mro__:
        if issubclass(cls, Kernel):
            cls._instance = kernel  # type: ignore[assignment]  # as SingletonConfigurable.instance() records it
    shell.kernel = kernel
    return kernel
