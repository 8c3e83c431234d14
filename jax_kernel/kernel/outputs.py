"""What the worker prints, displays and sends on comms, published on IOPub under the request it answers.

Every output on the wire carries the id of the kernel request it answers (``request``), and the
kernel sent that request on behalf of one frontend message: its :class:`Origin`.  Publishing under
the origin, never under "the current cell", is what keeps a widget callback's print with the
widget's message and a late flush with the cell that printed it, and what lets more than one
request be in flight (subshells).  An output without a known origin (an older worker's, or one
whose request is long gone) goes under the newest origin, as a single-threaded kernel would.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ..protocol import wire

#: Fields of each worker output message that become the IOPub message's content.
_OUTPUT_FIELDS = {
    kind: (*fields, *wire.OPTIONAL_FIELDS.get(kind, {}))
    for kind, fields in wire.WORKER_MESSAGES.items()
    if kind in {"stream", "display_data", "update_display_data", "clear_output", "execute_result", "error"}
}


@dataclass(frozen=True)
class Origin:
    """The frontend message a worker request was made for: its header is the outputs' parent,
    its routing identity is where an ``input_request`` goes."""

    parent: dict[str, t.Any] = field(default_factory=dict)
    ident: t.Any = None
    control: t.Any = None  # the newest control message and its identities, for get_parent("control")

    def for_worker(self) -> dict[str, t.Any]:
        """The request's ``parent`` field: what ``get_ipython().get_parent()`` returns in the worker."""
        control = None
        if self.control and self.control[0].get("header"):
            control = (self.control[0]["header"], list(self.control[1] or []))
        return wire.parent_for_worker(
            self.parent.get("header") or {},
            self.parent.get("parent_header") or {},
            self.parent.get("metadata") or {},
            list(self.ident or []) if isinstance(self.ident, list) else [],
            control,
        )


class OutputPublisher:
    """Publishes the worker's outputs (and the kernel's own notices) on IOPub.

    Holds what the frontend knows about the worker's comms too, so that a dead worker's widgets
    are closed in the frontend instead of accepting input nobody reads.
    """

    def __init__(
        self,
        session: t.Any,
        iopub_socket: t.Any,
        topic: t.Callable[[str], bytes],
        sanitize: bool,
    ) -> None:
        self.session = session
        self.iopub_socket = iopub_socket
        self._topic = topic
        self.latest = Origin()
        self.open_comms: dict[str, str] = {}  # comm_id -> target_name, as the frontend sees them
        self.sanitize = sanitize
        self._widgets: t.Any = None
        if sanitize:
            from .active_outputs import WidgetSanitizer

            self._widgets = WidgetSanitizer()

    def begin(self, origin: Origin) -> Origin:
        """A request is about to be made for ``origin``: it becomes the fallback for untagged output."""
        self.latest = origin
        return origin

    def publish(
        self, msg_type: str, content: dict[str, t.Any], origin: Origin | None = None, **extra: t.Any
    ) -> None:
        """One IOPub message under ``origin``'s parent (the newest one when None); extra: metadata, buffers."""
        self.session.send(
            self.iopub_socket,
            msg_type,
            content,
            parent=(origin or self.latest).parent,
            ident=self._topic(msg_type),
            **extra,
        )

    def problem(self, text: str, origin: Origin | None = None) -> None:
        """A kernel notice on the cell's stderr, marked as the kernel's."""
        self.publish("stream", {"name": "stderr", "text": f"[jax-kernel] {text}\n"}, origin)

    def worker_output(self, msg: dict[str, t.Any], origin: object = None) -> None:
        """A validated output message from the worker, for the request it is tagged with."""
        where = origin if isinstance(origin, Origin) else None
        kind = msg["type"]
        if kind == "comm":
            self._comm(msg, where)
            return
        fields = _OUTPUT_FIELDS.get(kind)
        if fields is None:
            return
        content = {f: msg[f] for f in fields if f in msg}
        if "data" in content:
            content["data"] = self.clean(content["data"])
        self.publish(kind, content, where)

    def clean(self, data: t.Any) -> t.Any:
        """A bundle without what would run in the browser, when the policy says so (active_outputs.py)."""
        if not self.sanitize or not isinstance(data, dict):
            return data
        from .active_outputs import sanitize_bundle

        return sanitize_bundle(data)[0]

    # comms (widgets, progress bars) ---------------------------------------------------------
    def _comm(self, msg: dict[str, t.Any], origin: Origin | None) -> None:
        try:
            buffers = wire.decode_buffers(msg["buffers"])
        except wire.WireError:
            self.problem("dropped a comm message from the worker with a malformed buffer", origin)
            return
        msg_type, content = msg["msg_type"], msg["content"]
        self.track_comm(msg_type, content)
        if self._widgets is not None:
            content = self._widgets.clean(msg_type, content)
        self.publish(msg_type, content, origin, metadata=msg["metadata"], buffers=buffers)

    def track_comm(self, msg_type: str, content: dict[str, t.Any]) -> None:
        if msg_type == "comm_open":
            self.open_comms[content["comm_id"]] = str(content.get("target_name", ""))
        elif msg_type == "comm_close":
            self.open_comms.pop(content["comm_id"], None)

    def close_worker_comms(self) -> None:
        """A dead worker's comms are gone: tell the frontend, so no widget keeps accepting input."""
        for comm_id in list(self.open_comms):
            self.publish("comm_close", {"comm_id": comm_id, "data": {}})
        self.open_comms.clear()
