"""Kernel side: outputs that would run code in the browser, cleaned before they reach IOPub.

JupyterLab runs the current session's outputs as trusted: a ``text/html`` output with a
script, an ``onerror`` attribute or an ``application/javascript`` bundle runs in the user's
logged-in page and can call the Jupyter server's REST API (open a terminal, write files), which
is code outside every sandbox.  The worker is hostile, so under ``Sandbox.active_outputs =
"sanitize"`` the kernel cleans every display, result and inspection bundle it relays:

- MIME types that are code to run (JavaScript, bokeh's exec/load bundles) are dropped;
- ``text/html`` is cleaned by nh3 (the Rust ammonia sanitizer): no scripts, no event-handler
  attributes, no ``javascript:`` URLs, no iframes, forms or styles;
- ``image/svg+xml`` and ``text/markdown`` (both can carry live HTML) are dropped when they hold
  anything script-like; plain figures and prose pass;
- everything else (images, JSON, plotly, vega, widget views) passes: installed extensions render
  those as data.

A bundle left with nothing rich gets a ``text/plain`` line saying what was removed and why.
"""

from __future__ import annotations

import re
from typing import Any

#: Code for the browser to run, whatever extension would run it.
CODE_MIME_TYPES = frozenset(
    {
        "application/javascript",
        "application/x-javascript",
        "text/javascript",
        "application/ecmascript",
        "text/ecmascript",
        "application/vnd.bokehjs_exec.v0+json",
        "application/vnd.bokehjs_load.v0+json",
    }
)

#: What makes an SVG or a Markdown text live rather than data.
_LIVE = re.compile(
    r"<\s*(script|iframe|object|embed|foreignobject|form|meta|link|base|style)\b"
    r"|\bon[a-z]+\s*="
    r"|(javascript|vbscript)\s*:"
    r"|<\s*[a-z][^>]*\bhref\s*=\s*[\"']?\s*data\s*:",
    re.IGNORECASE,
)

#: Attributes kept by the HTML cleaner besides nh3's defaults (``class`` for pandas and friends).
_ATTRIBUTES = {
    "*": {"class", "title", "lang", "dir"},
    "a": {"href", "hreflang"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type"},
}
_URL_SCHEMES = {"http", "https", "mailto", "data"}


def _clean_html(html: str) -> str:
    import nh3

    return nh3.clean(html, attributes=_ATTRIBUTES, url_schemes=_URL_SCHEMES, link_rel="noopener noreferrer")


def sanitize_bundle(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The bundle with its active parts removed, and the MIME types dropped or cleaned."""
    out: dict[str, Any] = {}
    changed: list[str] = []
    for mime, value in data.items():
        if mime in CODE_MIME_TYPES:
            changed.append(mime)
            continue
        if mime == "text/html" and isinstance(value, str):
            clean = _clean_html(value)
            if clean != value:
                changed.append(mime)
            out[mime] = clean
        elif mime in ("image/svg+xml", "text/markdown") and isinstance(value, str) and _LIVE.search(value):
            changed.append(mime)
        else:
            out[mime] = value
    dropped = [m for m in changed if m not in out]
    if dropped and set(out) <= {"text/plain"}:  # nothing rich is left: say what went and why
        note = (
            f"[jax-kernel] output removed: {', '.join(dropped)} would run in the browser "
            "(Sandbox.active_outputs = 'sanitize')"
        )
        text = out.get("text/plain")
        out["text/plain"] = f"{text}\n{note}" if isinstance(text, str) and text else note
    return out, changed
