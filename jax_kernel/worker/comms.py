"""Comms in the worker: widgets and progress bars talk to the frontend through the kernel.

ipykernel installs its own ``comm.create_comm``/``comm.get_comm_manager`` so that libraries
(ipywidgets, tqdm, bokeh...) reach the frontend without knowing about kernels; the worker
does the same, but a comm message becomes a wire message to the kernel, which publishes it
on IOPub. Binary buffers travel base64-encoded: the wire is JSON only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comm
from comm.base_comm import BaseComm, CommManager

from ..protocol import wire
from ..protocol.wire import COMM_MSG_TYPES
from .jsonable import jsonable


class WorkerComm(BaseComm):
    """A comm whose messages go over the kernel <-> worker wire."""

    send_wire: Callable[[dict[str, Any]], None] | None = None  # set by install()

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


def install(send: Callable[[dict[str, Any]], None]) -> WorkerCommManager:
    """Make ``comm.create_comm`` and ``comm.get_comm_manager`` use the wire (as ipykernel does)."""
    WorkerComm.send_wire = staticmethod(send)  # type: ignore[assignment]
    comm.create_comm = WorkerComm  # type: ignore[assignment]
    comm.get_comm_manager = lambda: _manager  # type: ignore[assignment]
    return _manager
