"""Kernel process: which member a request goes to, and which member's output reaches the frontend.

Requests that run code go to every member (SPMD) and are answered once all have answered;
completion, inspection, history, the debugger and resource usage are process 0's.  Output is
routed here: stdout, displays and results from process 0 (``%jax_output`` changes that), stderr
and errors from every process, prefixed with its index; an error raised by several processes is
shown once, naming them.  Every process gets the frontend's answers to ``input()`` in the same
order, whether it asks before or after the frontend answered.

Pure bookkeeping, apart from the set's sockets and life cycle so that it can be read (and
reasoned about) alone: it decides, the set sends.  What reaches the frontend goes to ``emit``;
what must go to a member is returned as ``(member, message)`` pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...protocol import wire
from ...protocol.budget import COUNTED, OutputBudget, output_size

if TYPE_CHECKING:
    from .rendezvous import Member

#: Requests every member runs (user code, and what must reach every process' state).
BROADCAST = frozenset({"execute", "comm", "shutdown"} | wire.JAX_REQUESTS)
#: Messages that show a result: from the process(es) %jax_output names.
DISPLAYS = frozenset({"display_data", "update_display_data", "clear_output", "execute_result"})

Sends = list[tuple["Member", Mapping[str, Any]]]


@dataclass
class Gather:
    """A request sent to every member: their replies (by index) and the errors they displayed."""

    kind: str
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class Router:
    """Routing for one set of ``count`` members; ``emit`` takes what goes to the frontend."""

    def __init__(self, count: int, budget: OutputBudget, emit: Callable[[dict[str, Any]], None]) -> None:
        self.count = count
        self.budget = budget
        self.output_mode = "0"
        self._emit = emit
        self._answers: list[Mapping[str, Any]] = []  # the running cell's input_replies, in order
        self._gathers: dict[int, Gather] = {}

    # requests -----------------------------------------------------------------------
    def request(self, msg: Mapping[str, Any], live: list[Member]) -> Sends:
        """Where a request goes: every member if it runs code, else process 0."""
        kind = msg["type"]
        if kind == "selftest_done":  # every member ran %sandbox --selftest; process 0's asked for it
            return [(m, msg) for m in live]
        if kind == "input_reply":
            self._answers.append(msg)
            return [send for m in live for send in self._due_answers(m)]
        if kind not in BROADCAST:
            return [(live[0], msg)]
        if kind != "shutdown":
            self._gathers[msg["id"]] = Gather(kind)
        if kind == "execute":
            self._answers = []
            for m in live:
                m.inputs_asked = m.inputs_answered = 0
        return [(m, msg) for m in live]

    def _due_answers(self, m: Member) -> Sends:
        """The answers ``m`` has asked for and the frontend has given, not sent to it yet."""
        sends: Sends = []
        while m.inputs_answered < min(m.inputs_asked, len(self._answers)):
            sends.append((m, self._answers[m.inputs_answered]))
            m.inputs_answered += 1
        return sends

    # what members send --------------------------------------------------------------
    def message(self, m: Member, msg: dict[str, Any], live: int) -> Sends:
        """Route a message of member ``m`` (not hello, ready or heartbeat); ``live``: members left."""
        kind = msg["type"]
        if kind == "reply":
            self._reply(m, msg, live)
        elif kind == "stream":
            self._stream(m, msg)
        elif kind == "error":
            gather = self._running_gather()
            if gather is not None:
                gather.errors.append((m.index, msg))
            else:
                self._emit_error([m.index], msg)
        elif kind in DISPLAYS:
            if self.shows(m.index) and self.within_budget(msg):
                self._emit(msg)
        elif kind == "input_request":
            # The frontend is asked for process 0's input() calls only.
            m.inputs_asked += 1
            sends = self._due_answers(m)
            if m.index == 0 and m.inputs_asked > len(self._answers):
                self._emit(msg)
            return sends
        elif m.index == 0 and self.within_budget(msg):  # comm, debug: the frontend talks to process 0
            self._emit(msg)
        return []

    def shows(self, index: int) -> bool:
        """Whether stdout and displays of process ``index`` reach the frontend (``%jax_output``)."""
        return self.output_mode == "all" or self.output_mode == str(index)

    def within_budget(self, msg: dict[str, Any]) -> bool:
        """The cell's one output budget (jax_kernel.protocol.budget) for a display or comm message."""
        return msg["type"] not in COUNTED or self.budget.admit_message(output_size(msg))

    def _stream(self, m: Member, msg: dict[str, Any]) -> None:
        if msg["name"] == "stdout" and not self.shows(m.index):
            return
        text = msg["text"]
        if msg["name"] == "stderr" or self.output_mode == "all":
            text = self._prefixed(m, msg["name"], text)
        text = self.budget.admit(text)
        if text:
            self._emit({**msg, "text": text})

    @staticmethod
    def _prefixed(m: Member, name: str, text: str) -> str:
        out = []
        for line in text.splitlines(keepends=True):
            if m.line_start[name]:
                out.append(f"[{m.index}] ")
            out.append(line)
            m.line_start[name] = line.endswith(("\n", "\r"))
        return "".join(out)

    def _running_gather(self) -> Gather | None:
        for gather in self._gathers.values():
            if gather.kind == "execute":
                return gather
        return None

    def _emit_error(self, indices: list[int], msg: dict[str, Any]) -> None:
        who = f"process {indices[0]}" if len(indices) == 1 else f"processes {', '.join(map(str, indices))}"
        if len(indices) == self.count and self.count > 1:
            who = f"every process ({', '.join(map(str, indices))})"
        self._emit({**msg, "traceback": [f"[{who}]", *msg["traceback"]]})

    # replies ------------------------------------------------------------------------
    def _reply(self, m: Member, msg: dict[str, Any], live: int) -> None:
        gather = self._gathers.get(msg["id"])
        if gather is None:
            if m.index == 0:
                self._emit(msg)
            return
        gather.replies[m.index] = msg["content"]
        if len(gather.replies) < live:
            return
        del self._gathers[msg["id"]]
        # Errors shown once per distinct error, naming the processes that raised it.
        groups: dict[str, tuple[list[int], dict[str, Any]]] = {}
        for index, err in gather.errors:
            key = json.dumps([err["ename"], err["evalue"], err["traceback"]])
            groups.setdefault(key, ([], err))[0].append(index)
        for indices, err in groups.values():
            self._emit_error(sorted(indices), err)
        self._emit({"type": "reply", "id": msg["id"], "content": self._combine(gather)})

    def _combine(self, gather: Gather) -> dict[str, Any]:
        """Process 0's reply, unless another process failed where it did not: the cell failed."""
        content = dict(gather.replies.get(0) or next(iter(gather.replies.values())))
        if content.get("status") != "error":
            for index in sorted(gather.replies):
                other = gather.replies[index]
                if other.get("status") == "error":
                    for key in ("ename", "evalue", "traceback"):
                        if key in other:
                            content[key] = other[key]
                    content["status"] = "error"
                    if isinstance(content.get("evalue"), str):
                        content["evalue"] = f"[process {index}] {content['evalue']}"
                    break
        mode = content.pop("output_mode", None)
        if isinstance(mode, str) and (mode == "all" or (mode.isdigit() and int(mode) < self.count)):
            self.output_mode = mode
            what = "every process (prefixed with its index)" if mode == "all" else f"process {mode}"
            self._emit(
                {
                    "type": "stream",
                    "name": "stdout",
                    "text": f"[jax-kernel] stdout and displays from {what}\n",
                }
            )
        return content
