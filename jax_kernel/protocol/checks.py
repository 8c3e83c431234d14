"""Type checks for values decoded from JSON, the one rule every validator here shares.

``bool`` is a subclass of ``int`` in Python, but ``true`` is not a number in JSON: a field that
takes an int (a request id, a cursor position, a port) must refuse ``True``, and a bool field must
refuse ``1``.  ``isinstance`` alone gets both wrong, so every check goes through :func:`is_a`.
"""

from __future__ import annotations

from typing import Any


def is_a(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``isinstance(value, kind)``, except that a bool is only ever a bool."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def is_count(value: Any, limit: int | None = None) -> bool:
    """An int >= 0 (and <= ``limit`` when given), never a bool."""
    return is_a(value, int) and value >= 0 and (limit is None or value <= limit)
