"""Make anything a cell hands to a display or a reply fit the JSON-only wire.

ipykernel's ``json_clean`` is a no-op since jupyter_client 7 (its Session serializes with a
``default=`` hook instead), and importing ipykernel pulls in jupyter_client and zmq on every
worker start (bench/RESULTS.md, "Measurements behind design choices"). The wire has no ``default=`` hook on purpose,
so the worker cleans values itself: bytes become base64 (what frontends expect for
``image/png`` and other binary MIME types), non-finite floats become null (JSON has no
NaN), dates become ISO strings, and anything else its ``repr``.
"""

from __future__ import annotations

import base64
import datetime
import math
import numbers
from typing import Any

#: Deeper structures (or cycles) are cut off here rather than overflowing the stack.
MAX_DEPTH = 64


def jsonable(obj: Any, _depth: int = 0) -> Any:
    """A JSON-serializable copy of ``obj``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if _depth >= MAX_DEPTH:
        return "<nested too deeply>"
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in obj]
    return repr(obj)
