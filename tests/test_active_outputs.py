"""Outputs that would run code in the browser (``Sandbox.active_outputs``).

JupyterLab runs the session's outputs as trusted, with the user's login: a script in a cell's
HTML output can call the server's REST API (a terminal, file writes), outside every sandbox.
Under ``sanitize`` (strict's default) the kernel cleans what it relays; under ``allow`` (standard's
default) outputs pass as the stock kernel passes them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Kernel, request, start_kernel, stop_kernel

SCRIPTED_HTML = (
    "<b>bold</b><script>fetch('/api/terminals', {method: 'POST'})</script>"
    "<img src=x onerror=\"fetch('/api/contents/x', {method: 'PUT'})\">"
    '<a href="javascript:alert(1)">link</a><iframe src="/lab"></iframe>'
    '<table class="dataframe"><tr><td>1</td></tr></table>'
)
SVG_OK = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
SVG_LIVE = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.fixture(scope="module")
def sanitizing() -> Iterator[Kernel]:
    km, kc = start_kernel(extra_arguments=["--Sandbox.active_outputs=sanitize"])
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def _bundles(res) -> list[dict]:  # noqa: ANN001 - a conftest Result
    return [c["data"] for kind, c in res.outputs if kind in ("display_data", "execute_result")]


def test_scripts_and_handlers_are_cleaned_from_html(sanitizing: Kernel) -> None:
    res = sanitizing.ok(f"from IPython.display import HTML, display\ndisplay(HTML({SCRIPTED_HTML!r}))")
    (bundle,) = _bundles(res)
    html = bundle["text/html"]
    assert "<b>bold</b>" in html and 'class="dataframe"' in html and "<td>1</td>" in html
    for live in ("<script", "onerror", "javascript:", "<iframe", "fetch("):
        assert live not in html, html


def test_javascript_outputs_are_dropped_with_a_note(sanitizing: Kernel) -> None:
    res = sanitizing.ok(
        "from IPython.display import Javascript, display\n"
        "display(Javascript(\"fetch('/api/terminals', {method: 'POST'})\"))\n"
        "display({'application/javascript': 'x()', 'text/plain': 'the text'}, raw=True)"
    )
    first, second = _bundles(res)
    assert list(first) == ["text/plain"] and "application/javascript would run" in first["text/plain"]
    assert "Sandbox.active_outputs" in first["text/plain"]
    assert list(second) == ["text/plain"] and second["text/plain"].startswith("the text\n[jax-kernel]")


def test_figures_data_and_results_pass(sanitizing: Kernel) -> None:
    res = sanitizing.ok(
        "from IPython.display import SVG, display\n"
        f"display(SVG({SVG_OK!r}))\n"
        f"display({{'image/svg+xml': {SVG_LIVE!r}, 'text/plain': 'svg'}}, raw=True)\n"
        "display({'application/vnd.plotly.v1+json': {'data': [{'y': [1, 2]}]}, 'image/png': 'iVBORw0KGgo='}, raw=True)\n"
        "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\n"
        "6 * 7"
    )
    svg, live, plotly, png, result = _bundles(res)
    assert "<rect" in svg["image/svg+xml"]
    assert list(live) == ["text/plain"] and live["text/plain"].startswith("svg\n[jax-kernel] output removed")
    assert plotly["application/vnd.plotly.v1+json"] == {"data": [{"y": [1, 2]}]}
    assert "image/png" in png
    assert result["text/plain"] == "42"


def test_sandbox_reports_the_mode(sanitizing: Kernel) -> None:
    assert request(sanitizing.kc, "kernel_info")["sandbox"]["active_outputs"] == "sanitize"
    assert "active_outputs: sanitized by the kernel" in sanitizing.ok("%sandbox").stdout


def test_standard_allows_them_as_the_stock_kernel_does(kernel: Kernel) -> None:
    assert request(kernel.kc, "kernel_info")["sandbox"]["active_outputs"] == "allow"
    res = kernel.ok("from IPython.display import Javascript, display\ndisplay(Javascript('x()'))")
    assert _bundles(res)[0]["application/javascript"] == "x()"


def test_strict_sanitizes_by_default() -> None:
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=strict"])
    try:
        k = Kernel(km, kc)
        res = k.ok(f"from IPython.display import HTML, display\ndisplay(HTML({SCRIPTED_HTML!r}))")
        assert "<script" not in _bundles(res)[0]["text/html"]
    finally:
        stop_kernel(km, kc)


def _widget_states(res) -> dict[str, dict]:  # noqa: ANN001 - a conftest Result
    """comm_id -> the widget state the frontend was sent (its comm_open, then its updates)."""
    states: dict[str, dict] = {}
    for kind, c in res.outputs:
        state = (c.get("data") or {}).get("state") if kind in ("comm_open", "comm_msg") else None
        if isinstance(state, dict):
            states.setdefault(c["comm_id"], {}).update(state)
    return states


WIDGETS = (
    "import ipywidgets as w\nfrom IPython.display import HTML, display\n"
    f"h = w.HTML({SCRIPTED_HTML!r})\n"
    "b = w.Checkbox(description='<b>go</b><img src=x onerror=alert(1)>', description_allow_html=True)\n"
    "s = w.IntSlider(3, description='a < b')\n"
    "out = w.Output()\n"
    f"out.append_display_data(HTML({SCRIPTED_HTML!r}))\n"
    "display(h, b, s, out)\n"
    f"h.value = {SCRIPTED_HTML!r} + '<i>again</i>'"
)


def _by_model(res) -> dict[str, dict]:  # noqa: ANN001
    return {s.get("_model_name"): s for s in _widget_states(res).values()}


def test_widget_html_is_cleaned_and_widgets_still_work(sanitizing: Kernel) -> None:
    """An HTML widget's value is put into the page as innerHTML (an onerror handler runs), and so
    are a description with description_allow_html and an Output widget's outputs."""
    models = _by_model(sanitizing.ok(WIDGETS))
    html = models["HTMLModel"]["value"]
    assert "<b>bold</b>" in html and "<i>again</i>" in html  # the update after display, cleaned too
    button = models["CheckboxModel"]["description"]
    assert "<b>go</b>" in button
    shown = [o["data"]["text/html"] for o in models["OutputModel"]["outputs"]]
    for text in (html, button, *shown):
        for live in ("<script", "onerror", "javascript:", "<iframe"):
            assert live not in text, text
    assert models["IntSliderModel"]["description"] == "a < b"  # plain text is left alone
    assert models["IntSliderModel"]["value"] == 3
    assert sanitizing.ok("s.value = 5; s.value").of("execute_result")[0]["data"]["text/plain"] == "5"


def test_standard_relays_widget_html_as_is(kernel: Kernel) -> None:
    models = _by_model(kernel.ok(WIDGETS))
    assert "onerror" in models["HTMLModel"]["value"]
