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


#: ipywidgets models whose ``value`` is HTML the frontend puts into the page as is.
HTML_WIDGET_MODELS = frozenset({"HTMLModel", "HTMLMathModel"})


class WidgetSanitizer:
    """Clean what widget comm messages carry into the page, under ``sanitize``.

    A widget's state reaches the browser over comms, not as a MIME bundle: an ``HTML`` widget's
    ``value`` (``<img src=x onerror=...>`` runs: it is set as innerHTML), a description with
    ``description_allow_html``, and an ``Output`` widget's ``outputs`` (bundles its output area
    renders, scripts included).  The model a comm holds is named only in its ``comm_open``, so
    the sanitizer remembers it per comm for the updates that follow."""

    def __init__(self) -> None:
        self._models: dict[str, str] = {}
        self._html_descriptions: set[str] = set()

    def clean(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        comm_id = content.get("comm_id")
        if msg_type == "comm_close":
            self._models.pop(comm_id, None)  # type: ignore[arg-type]
            self._html_descriptions.discard(comm_id)  # type: ignore[arg-type]
            return content
        data = content.get("data")
        state = data.get("state") if isinstance(data, dict) else None
        if not isinstance(comm_id, str) or not isinstance(state, dict):
            return content
        if msg_type == "comm_open" and isinstance(state.get("_model_name"), str):
            self._models[comm_id] = state["_model_name"]
        if "description_allow_html" in state:
            if state["description_allow_html"]:
                self._html_descriptions.add(comm_id)
            else:
                self._html_descriptions.discard(comm_id)
        clean = self._clean_state(comm_id, state)
        if clean is state:
            return content
        return {**content, "data": {**(data or {}), "state": clean}}

    def _clean_state(self, comm_id: str, state: dict[str, Any]) -> dict[str, Any]:
        out = state
        model = self._models.get(comm_id)

        def put(key: str, value: Any) -> None:
            nonlocal out
            if out is state:
                out = dict(state)
            out[key] = value

        if model in HTML_WIDGET_MODELS and isinstance(state.get("value"), str):
            clean = _clean_html(state["value"])
            if clean != state["value"]:
                put("value", clean)
        if comm_id in self._html_descriptions and isinstance(state.get("description"), str):
            clean = _clean_html(state["description"])
            if clean != state["description"]:
                put("description", clean)
        if model == "OutputModel" and isinstance(state.get("outputs"), list):
            outputs = [
                {**o, "data": sanitize_bundle(o["data"])[0]}
                if isinstance(o, dict) and isinstance(o.get("data"), dict)
                else o
                for o in state["outputs"]
            ]
            if outputs != state["outputs"]:
                put("outputs", outputs)
        return out
