"""Replies rebuilt from what the worker sent: the worker is untrusted, so every field a reply
to the frontend carries is taken from its answer by name and type, and a missing or mistyped
one turns into an error the user can read instead of a malformed Jupyter message.
"""

from __future__ import annotations

import typing as t

from ..protocol.checks import is_a
from ..protocol.schema import error_line
from ..supervision.manager import WorkerDied, WorkerError


class MalformedReply(WorkerError):
    """The worker answered with something that is not a valid reply."""


def require(content: dict[str, t.Any], field: str, kind: type | tuple[type, ...]) -> t.Any:
    """``content[field]`` if it has type ``kind`` (a bool is not an int here), else MalformedReply."""
    value = content.get(field)
    if not is_a(value, kind):
        raise MalformedReply(f"reply field {field!r} is missing or has the wrong type")
    return value


def execute_reply(content: dict[str, t.Any]) -> tuple[dict[str, t.Any], int]:
    """The execute_reply for the frontend and the execution count the next cell gets."""
    status = content.get("status")
    if status not in ("ok", "error"):
        raise MalformedReply("execute reply has no valid status")
    next_count = require(content, "next_execution_count", int)
    reply: dict[str, t.Any] = {
        "status": status,
        "execution_count": require(content, "execution_count", int),
        "user_expressions": require(content, "user_expressions", dict),
        "payload": [p for p in require(content, "payload", list) if isinstance(p, dict)],
    }
    if status == "error":
        reply["ename"] = require(content, "ename", str)
        reply["evalue"] = require(content, "evalue", str)
        reply["traceback"] = [s for s in require(content, "traceback", list) if isinstance(s, str)]
    return reply, next_count


def worker_error(error: WorkerError, ran: bool, variables: str | None = None) -> dict[str, t.Any]:
    """The ``error`` content that ends a cell the worker could not run: what happened to the
    worker and to the variables (``variables``: what a fresh worker restored, see
    :func:`restored_text`), with the tail of a dead worker's diagnostics."""
    if isinstance(error, WorkerDied):
        ename = "WorkerDied"
        when = "while running this cell" if ran else "after the previous cell ran"
        kept = variables or f"{error.fresh}; all variables were lost."
        evalue = f"{error.subject} {error.how} {when}. {kept}"
        if not ran:
            evalue += " This cell was not run: run it again."
        extra = error.diagnostics.strip().splitlines()[-30:]
    else:
        ename = type(error).__name__
        evalue = f"The worker could not run this cell: {error}"
        extra = []
    return {"ename": ename, "evalue": evalue, "traceback": [error_line(ename, evalue), *extra]}


def complete_reply(content: dict[str, t.Any] | None, cursor: int) -> dict[str, t.Any]:
    """A complete_reply; no matches when the worker had no valid answer."""
    empty = {"status": "ok", "matches": [], "cursor_start": cursor, "cursor_end": cursor, "metadata": {}}
    if content is None:
        return empty
    try:
        return {
            "status": "ok",
            "matches": [m for m in require(content, "matches", list) if isinstance(m, str)],
            "cursor_start": require(content, "cursor_start", int),
            "cursor_end": require(content, "cursor_end", int),
            "metadata": require(content, "metadata", dict),
        }
    except MalformedReply:
        return empty


def inspect_reply(
    content: dict[str, t.Any] | None, clean: t.Callable[[dict[str, t.Any]], dict[str, t.Any]]
) -> dict[str, t.Any]:
    """An inspect_reply whose bundle went through ``clean`` (the active-output policy)."""
    try:
        if content is None:
            raise MalformedReply("no reply")
        return {
            "status": "ok",
            "found": bool(content.get("found")),
            "data": clean(require(content, "data", dict)),
            "metadata": require(content, "metadata", dict),
        }
    except MalformedReply:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}


def is_complete_reply(content: dict[str, t.Any] | None) -> dict[str, t.Any]:
    status = content.get("status") if content else None
    if content is None or status not in ("complete", "incomplete", "invalid", "unknown"):
        return {"status": "unknown"}
    reply = {"status": status}
    if status == "incomplete" and isinstance(content.get("indent"), str):
        reply["indent"] = content["indent"]
    return reply


def history_reply(content: dict[str, t.Any] | None) -> dict[str, t.Any]:
    history = content.get("history") if content else None
    if not isinstance(history, list):
        history = []
    return {"status": "ok", "history": [h for h in history if isinstance(h, list) and len(h) == 3]}


def comm_info_reply(content: dict[str, t.Any] | None) -> dict[str, t.Any]:
    raw = content.get("comms") if content else None
    comms = {
        comm_id: {"target_name": info["target_name"]}
        for comm_id, info in (raw.items() if isinstance(raw, dict) else ())
        if isinstance(info, dict) and isinstance(info.get("target_name"), str)
    }
    return {"status": "ok", "comms": comms}


def _cells(first: int, last: int) -> str:
    return f"cell [{first}]" if first == last else f"cells [{first}]-[{last}]"


def restored_text(
    report: dict[str, t.Any] | None, last_cell: int, fresh: str = "A fresh worker was started"
) -> str | None:
    """What a fresh worker brought back, in one sentence for the cell's error: "A fresh worker
    restored 14 of 16 variables saved after cell [7] (0.4 s); not restored: `stream` (generator:
    not saveable); changes made by cells [8]-[9] are lost."  ``last_cell``: the last cell whose
    changes the dead worker held; ``fresh``: what replaced it (a set says so).  None if nothing
    was restored (no snapshot yet)."""
    if report is not None and report.get("refused"):
        return f"{report['refused'][:1].upper()}{report['refused'][1:]}; all variables were lost."
    if report is None or report.get("cell") is None:
        return None
    cell = int(report["cell"])
    restored, missing = report.get("restored") or [], report.get("not_restored") or {}
    total = len(restored) + len(missing)
    who = "A fresh worker" if fresh == "A fresh worker was started" else f"{fresh} and"
    text = (
        f"{who} restored {len(restored)} of {total} variable{'s' if total != 1 else ''} saved after "
        f"cell [{cell}] ({float(report.get('seconds') or 0):.1f} s)"
    )
    if missing:
        shown = [f"`{name}` ({why})" for name, why in list(missing.items())[:8]]
        more = len(missing) - len(shown)
        text += "; not restored: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    if last_cell > cell:
        text += f"; changes made by {_cells(cell + 1, last_cell)} are lost"
    notes = report.get("notes") or []
    return text + "." + ("".join(f" {n.rstrip('.')}." for n in notes[:4]) if notes else "")
