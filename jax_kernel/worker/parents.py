"""Which frontend message the worker's output belongs to, per thread, as ipykernel 7 keeps it.

Every user-code request carries the frontend message it was made for (``wire.PARENT_FIELD``).
Serving it makes that message the *global* parent and the serving thread's own; a thread that
never set one prints under the global parent (the running cell), and
``get_ipython().set_thread_parent(p)`` / ``set_parent(p)`` move a thread (or everything) to an
earlier message, exactly the semantics of ipykernel's ``ZMQInteractiveShell``.  Output on the
wire names a parent by the id of the kernel request that brought it (``wire.REQUEST_FIELD``),
so a parent the kernel never sent (a header made up in a cell) routes like no parent at all.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from typing import Any

from ..protocol import wire


class Parent:
    """One frontend message as the worker knows it: the request id it came with and the message."""

    __slots__ = ("ident", "message", "request")

    def __init__(self, request: int | None, message: dict[str, Any], ident: list[bytes]) -> None:
        self.request = request
        self.message = message
        self.ident = ident


_NONE = Parent(None, {}, [])


class Parents:
    """The global parent, each thread's (a ContextVar, so asyncio tasks keep theirs), and the
    control channel's newest message."""

    def __init__(self) -> None:
        self._global = _NONE
        self._thread: contextvars.ContextVar[Parent] = contextvars.ContextVar("jax_kernel_parent")
        self._by_msg_id: OrderedDict[str, Parent] = OrderedDict()
        self._lock = threading.Lock()
        self.control = _NONE

    def begin(self, request: dict[str, Any], main: bool = True) -> None:
        """A user-code request arrives: its parent becomes the serving thread's, and the global one
        if the main shell serves it (a subshell's cell must not take the main cell's threads' output)."""
        field = request.get("parent")
        if not isinstance(field, dict):
            field = {}
        content = {k: v for k, v in request.items() if k not in ("type", "id", "parent")}
        message = {
            "header": dict(field.get("header") or {}),
            "parent_header": dict(field.get("parent_header") or {}),
            "metadata": dict(field.get("metadata") or {}),
            "msg_id": (field.get("header") or {}).get("msg_id", ""),
            "msg_type": (field.get("header") or {}).get("msg_type", ""),
            "content": content,
        }
        parent = Parent(request["id"], message, _idents(field.get("ident")))
        control = field.get("control")
        if isinstance(control, dict) and control.get("header"):
            self.control = Parent(None, {"header": dict(control["header"])}, _idents(control.get("ident")))
        with self._lock:
            self._by_msg_id[message["msg_id"]] = parent
            while len(self._by_msg_id) > wire.REMEMBERED_REQUESTS:  # set_parent(p) of an earlier one
                self._by_msg_id.popitem(last=False)
        if main:
            self._global = parent
        self._thread.set(parent)

    def global_parent(self) -> Parent:
        return self._global

    def restore_global(self, parent: Parent) -> None:
        """Put back the global parent a concurrent request (a comm during an awaiting cell) replaced."""
        self._global = parent

    def current(self) -> Parent:
        """The parent of output written now, on this thread."""
        return self._thread.get(self._global)

    def request_id(self) -> int | None:
        return self.current().request

    def lookup(self, message: Any) -> Parent:
        """The known parent whose header matches ``message`` (a message or a header); a message
        the kernel never sent keeps its header for get_parent() but routes to no request."""
        header = message.get("header", message) if isinstance(message, dict) else {}
        msg_id = header.get("msg_id") if isinstance(header, dict) else None
        with self._lock:
            known = self._by_msg_id.get(msg_id) if isinstance(msg_id, str) else None
        if known is not None:
            return known
        return Parent(None, dict(message) if isinstance(message, dict) else {}, [])

    def set_global(self, message: Any) -> None:
        """``set_parent``: this thread's and the global parent."""
        parent = self.lookup(message)
        self._global = parent
        self._thread.set(parent)

    def set_thread(self, message: Any) -> contextvars.Token[Parent]:
        """``set_thread_parent``: this thread's only; the token undoes it."""
        return self._thread.set(self.lookup(message))

    def reset_thread(self, token: contextvars.Token[Parent]) -> None:
        self._thread.reset(token)


class ParentAPI:
    """ipykernel 7's parent API (``get_parent``, ``set_parent``, ``set_thread_parent``, ...) on the
    shell and on the streams, as ipykernel has it on both; one :class:`Parents` keeps it."""

    def _kept_by(self) -> Parents | None:
        raise NotImplementedError

    @property
    def parent_header(self) -> dict[str, Any]:
        parents = self._kept_by()
        return parents.current().message.get("header", {}) if parents is not None else {}

    @parent_header.setter
    def parent_header(self, value: Any) -> None:
        parents = self._kept_by()
        if parents is not None:  # None while ipykernel's __init__ runs
            parents.set_global({"header": value})

    def get_parent(self) -> dict[str, Any]:
        """The request this thread's output belongs to (the running cell's unless set otherwise)."""
        parents = self._kept_by()
        return parents.current().message if parents is not None else {}

    def set_parent(self, parent: Any) -> None:
        """This thread's and every unset thread's parent, as ipykernel's ``set_parent``."""
        parents = self._kept_by()
        if parents is not None:
            parents.set_global(parent)

    def set_thread_parent(self, parent: Any) -> Any:
        """This thread's parent only; pass the result to :meth:`reset_thread_parent` to undo it."""
        parents = self._kept_by()
        return parents.set_thread(parent) if parents is not None else None

    def reset_thread_parent(self, token: Any) -> None:
        parents = self._kept_by()
        if parents is not None and token is not None:
            parents.reset_thread(token)


def _idents(raw: Any) -> list[bytes]:
    if not isinstance(raw, list):
        return []
    return [str(i).encode("latin-1", "replace") for i in raw]
