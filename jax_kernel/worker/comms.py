"""Comms in the worker: widgets and progress bars talk to the frontend through the kernel.

ipykernel installs its own ``comm.create_comm``/``comm.get_comm_manager`` so that libraries
(ipywidgets, tqdm, bokeh...) reach the frontend without knowing about kernels; the worker
does the same, but a comm message becomes a wire message to the kernel, which publishes it
on IOPub. Binary buffers travel base64-encoded: the wire is JSON only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import comm
from comm.base_comm import BaseComm, CommManager

from ..protocol import wire
from ..protocol.wire import COMM_MSG_TYPES
from .jsonable import jsonable

#: Request ids a comm remembers the sending subshell of, until their replies come.
MAX_PENDING_REPLIES = 256


def _request_id(data: Any) -> str | None:
    """The id a widget protocol puts in a request (``{"content": {"id": ...}}``) and its reply."""
    content = data.get("content") if isinstance(data, dict) else None
    request = content.get("id") if isinstance(content, dict) else None
    return request if isinstance(request, str) else None


class WorkerComm(BaseComm):
    """A comm whose messages go over the kernel <-> worker wire.

    Like ipykernel's comm, it remembers which subshell sent each message (and each request id), so
    that the frontend's reply is served by the shell that waits for it (:func:`reply_route`)."""

    send_wire: Callable[[dict[str, Any]], None] | None = None  # set by install()
    sender_subshell: Callable[[], str | None] = staticmethod(lambda: None)  # set by install()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reply_lock = threading.Lock()
        self._reply_subshells: dict[str, str | None] = {}
        self._reply_subshell: str | None = None
        super().__init__(*args, **kwargs)

    def _reply_subshell_for(self, data: Any, default: str | None) -> str | None:
        """The subshell a frontend message on this comm is for (ipykernel's name and rule)."""
        request = _request_id(data)
        with self._reply_lock:
            if request is not None and request in self._reply_subshells:
                return self._reply_subshells.pop(request)
            return self._reply_subshell if self._spoken else default

    _spoken = False

    def publish_msg(
        self,
        msg_type: str,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
        **keys: Any,
    ) -> None:
        if self.send_wire is None:
            return
        subshell, request = self.sender_subshell(), _request_id(data)
        with self._reply_lock:
            self._reply_subshell, self._spoken = subshell, True
            if request is not None:
                self._reply_subshells[request] = subshell
                while len(self._reply_subshells) > MAX_PENDING_REPLIES:
                    self._reply_subshells.pop(next(iter(self._reply_subshells)))
        content = jsonable({"data": data or {}, "comm_id": self.comm_id, **keys})
        self.send_wire(
            {
                "type": "comm",
                "msg_type": msg_type,
                "content": content,
                "metadata": jsonable(metadata or {}),
                "buffers": wire.encode_buffers(buffers),
            }
        )


class WorkerCommManager(CommManager):
    """The registry of the worker's comms, fed with the frontend's messages by the server."""

    def handle(
        self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any], buffers: list[str]
    ) -> None:
        """Dispatch one frontend comm message as ipykernel's shell handlers would."""
        if msg_type not in COMM_MSG_TYPES:
            raise ValueError(f"not a comm message type: {msg_type!r}")
        msg = {
            "header": {"msg_type": msg_type},
            "parent_header": {},
            "content": content,
            "metadata": metadata,
            "buffers": wire.decode_buffers(buffers),
        }
        getattr(self, msg_type)(None, None, msg)

    def info(self, target_name: str | None) -> dict[str, dict[str, str]]:
        return {
            comm_id: {"target_name": c.target_name}
            for comm_id, c in self.comms.items()
            if target_name is None or c.target_name == target_name
        }


_manager = WorkerCommManager()


def reply_route(content: dict[str, Any], subshell: str | None, known: list[str]) -> str | None:
    """The subshell whose thread serves a frontend comm message: the one the comm's request (or
    last message) came from, if it still exists, else the one the message names."""
    comm_id = content.get("comm_id")
    target = _manager.comms.get(comm_id) if isinstance(comm_id, str) else None
    route = getattr(target, "_reply_subshell_for", None)
    if route is None:
        return subshell
    chosen = route(content.get("data"), subshell)
    return chosen if chosen is None or chosen in known or chosen == subshell else subshell


def install(
    send: Callable[[dict[str, Any]], None], sender_subshell: Callable[[], str | None]
) -> WorkerCommManager:
    """Make ``comm.create_comm`` and ``comm.get_comm_manager`` use the wire (as ipykernel does);
    ``sender_subshell``: the subshell of the request the calling thread serves (None: main)."""
    WorkerComm.send_wire = staticmethod(send)  # type: ignore[assignment]
    WorkerComm.sender_subshell = staticmethod(sender_subshell)  # type: ignore[method-assign]
    comm.create_comm = WorkerComm  # type: ignore[assignment]
    comm.get_comm_manager = lambda: _manager  # type: ignore[assignment]
    return _manager
