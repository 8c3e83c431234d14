"""What the engine is given (budgets) and what it hands back (summaries, restore reports).

Both results travel to the kernel over the JSON-only wire: the kernel shows them to the user and
records ``Summary.digest`` (the trust anchor it passes back to the next worker's restore), but it
never unpickles anything, so they are plain dataclasses of JSON values with ``to_json()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Names the stock kernel puts into every namespace besides ``user_ns_hidden``: never user state.
SHELL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})


def saveable_name(name: Any, hidden: set[str] | frozenset[str]) -> bool:
    """Whether ``name`` is a user variable, as ``%who`` decides (hidden and ``_``-names are not)."""
    return (
        isinstance(name, str) and not name.startswith("_") and name not in hidden and name not in SHELL_NAMES
    )


def human_bytes(n: float) -> str:
    """``3.2 GiB``: sizes in the reasons users read, in the binary units RAM and budgets use."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Budgets:
    """How much one snapshot may take; what does not fit is listed in ``Summary.skipped``.

    The ``*_setting`` names are what the reasons quote so users know which knob to turn (the
    integration passes its traitlets' names, e.g. ``WorkerManager.state_value_bytes``).
    """

    max_total_bytes: int  # all saved values together
    max_value_bytes: int  # one value (its arrays included)
    max_seconds: float  # step time one pass may spend per idle period; the rest waits for the next one
    total_setting: str = "max_total_bytes"
    value_setting: str = "max_value_bytes"
    seconds_setting: str = "max_seconds"

    def over_value(self, size: str) -> str:
        return f"{size}, over the {human_bytes(self.max_value_bytes)} budget ({self.value_setting})"

    def over_total(self, size: str) -> str:
        total = human_bytes(self.max_total_bytes)
        return f"{size}, over what is left of the {total} total budget ({self.total_setting})"

    def too_slow(self, what: str) -> str:
        return f"{what}, over the {self.max_seconds:g} s time budget ({self.seconds_setting})"


@dataclass
class Summary:
    """The last committed snapshot, small enough to send to the kernel after every commit."""

    cell: int | None = None  # the cell the committed snapshot reflects
    digest: str | None = None  # sha256 of the committed manifest file's bytes
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "kind"}
    skipped: dict[str, str] = field(default_factory=dict)  # name -> one-line reason
    bytes: int = 0  # stored bytes (files shared by several names counted once)
    seconds: float = 0.0  # step time the committed pass took
    error: str | None = None  # why the last pass could not finish (disk full, ...), if it could not

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RestoreReport:
    """What a fresh worker got back from the snapshot, for the cell's error message."""

    cell: int | None = None
    restored: list[str] = field(default_factory=list)
    not_restored: dict[str, str] = field(default_factory=dict)  # name -> reason
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Unsaveable(Exception):
    """A value that is listed in ``skipped`` with this exception's one-line message."""


class Corrupt(Exception):
    """A file or manifest that failed its check; what it held is not used."""
