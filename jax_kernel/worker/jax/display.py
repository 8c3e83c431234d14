"""Results and reports as MIME bundles: what a transformation or a program returns, shown or sent.

Runs in the worker process.  Shared by the entry points (which display in the cell), the magics and
the ``jax_*_request`` replies (which carry the bundles to the kernel).  Large arrays are described,
never copied whole to the host.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from .errors import one_line

#: Array elements (over all leaves of a result) whose values go into ``application/json``.
DEFAULT_MAX_VALUES = 1000


def _json_number(x: Any) -> Any:
    if isinstance(x, bool | int) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, complex):
        return [_json_number(x.real), _json_number(x.imag)]
    if isinstance(x, list):
        return [_json_number(v) for v in x]
    return str(x)


def _is_array(x: Any) -> bool:
    import jax
    import numpy as np

    return isinstance(x, jax.Array | np.ndarray | np.generic)


def to_json(value: Any, max_values: int = DEFAULT_MAX_VALUES) -> Any:
    """A JSON view of a pytree: arrays as {shape, dtype, values} (values up to max_values in all)."""
    import numpy as np

    budget = [max_values]

    def conv(x: Any, depth: int = 0) -> Any:
        if depth > 50:
            return {"repr": "..."}
        if _is_array(x):
            out: dict[str, Any] = {"shape": list(np.shape(x)), "dtype": str(x.dtype)}
            size = int(np.size(x))
            try:
                if size <= budget[0]:
                    budget[0] -= size
                    arr = np.asarray(x)
                    if arr.dtype.kind == "V" or arr.dtype.name == "bfloat16":
                        arr = arr.astype(np.float32)
                    out["values"] = _json_number(arr.tolist())
                else:
                    # Only three numbers cross to the host: a large result may not fit there.
                    out["values"] = None
                    out["truncated"] = True
                    if np.dtype(x.dtype).kind in "biuf" and size:
                        out["summary"] = {
                            k: _json_number(float(getattr(x, k)())) for k in ("min", "max", "mean")
                        }
            except Exception as e:  # noqa: BLE001 - e.g. a PRNG key array or a deleted buffer
                out.pop("summary", None)
                out["values"] = None
                out["repr"] = f"<unreadable array: {one_line(e)}>"
            return out
        if isinstance(x, Mapping):
            return {str(k): conv(v, depth + 1) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [conv(v, depth + 1) for v in x]
        if x is None or isinstance(x, bool | int | float | complex):
            return _json_number(x)
        if isinstance(x, str):
            return x
        return {"repr": repr(x)[:1000]}

    return conv(value)


#: Array leaves with more elements than this are described, not copied to the host, in text and HTML.
LARGE_ARRAY = 100_000


def _is_large(x: Any) -> bool:
    import numpy as np

    return _is_array(x) and int(np.size(x)) > LARGE_ARRAY


class _Large:
    """Stands in for a large array in a result's text: its type, never its values."""

    def __init__(self, x: Any) -> None:
        self.text = f"<{type(x).__name__} {x.dtype}{list(x.shape)}: {int(x.size):,} elements, not shown>"

    def __repr__(self) -> str:
        return self.text


def result_bundle(value: Any, max_values: int = DEFAULT_MAX_VALUES) -> dict[str, Any]:
    """text/plain, text/html and application/json for a result pytree."""
    import jax
    import numpy as np

    # JAX's repr copies a whole array to the host: large leaves are described instead.
    text = repr(jax.tree_util.tree_map(lambda x: _Large(x) if _is_large(x) else x, value))
    if len(text) > 20_000:
        text = text[:20_000] + "\n... (truncated)"
    rows = []
    leaves, _ = jax.tree_util.tree_flatten_with_path(value)
    for path, leaf in leaves[:200]:
        where = jax.tree_util.keystr(path) or "(result)"
        if _is_array(leaf):
            shape, dtype = str(tuple(np.shape(leaf))), str(leaf.dtype)
            if _is_large(leaf):
                shown = f"{int(np.size(leaf)):,} elements, not shown"
            else:
                try:
                    shown = np.array2string(np.asarray(leaf), threshold=50, edgeitems=3, precision=6)
                except Exception as e:  # noqa: BLE001 - e.g. a PRNG key array
                    shown = repr(leaf)[:500] if "key" in str(leaf.dtype) else f"<unreadable: {one_line(e)}>"
        else:
            shape, dtype, shown = "", type(leaf).__name__, repr(leaf)[:500]
        rows.append(
            "<tr>"
            + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in (where, shape, dtype))
            + f"<td style='text-align:left'><pre>{html.escape(shown)}</pre></td></tr>"
        )
    more = f"<p>... {len(leaves) - 200} more leaves</p>" if len(leaves) > 200 else ""
    table = (
        "<table><tr><th>leaf</th><th>shape</th><th>dtype</th><th>value</th></tr>" + "".join(rows) + "</table>"
    )
    return {"text/plain": text, "text/html": table + more, "application/json": to_json(value, max_values)}


def reports_bundle(reports: Mapping[str, Any]) -> dict[str, Any]:
    """Display the reports (time, jaxpr, hlo, cost) as text and HTML."""
    texts, htmls = [], []
    if "time" in reports:
        line = describe_time(reports["time"])
        texts.append(line)
        htmls.append(f"<p><b>time</b>: {html.escape(line)}</p>")
    if "cost" in reports:
        line = ", ".join(f"{k} {v:,.0f}" for k, v in reports["cost"].items())
        texts.append(f"cost: {line}")
        htmls.append(f"<p><b>cost</b>: {html.escape(line)}</p>")
    for key in ("jaxpr", "hlo"):
        if key in reports:
            texts.append(f"{key}:\n{reports[key]}")
            htmls.append(
                f"<details open><summary>{key}</summary><pre>{html.escape(reports[key])}</pre></details>"
            )
    return {"text/plain": "\n".join(texts), "text/html": "".join(htmls), "application/json": dict(reports)}


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.3f} ms"


def describe_time(t: Mapping[str, Any]) -> str:
    parts = []
    if t.get("compile_s") is not None:
        parts.append(f"compile {_ms(t['compile_s'])} (trace+lower {_ms(t.get('lower_s'))})")
    parts.append(f"first call {_ms(t.get('first_call_s'))}")
    parts.append(
        f"run median {_ms(t.get('run_median_s'))} over {t.get('runs')} runs (min {_ms(t.get('run_min_s'))})"
    )
    return "; ".join(parts)


def show(bundle: Mapping[str, Any]) -> None:
    from IPython.display import display

    display(dict(bundle), raw=True)
