"""JupyterLab in a real browser: what a person sees when they use the ``jax`` kernel.

JupyterLab runs on 127.0.0.1 with a token, Debian's chromium is driven by Playwright
(Playwright's own browser download is not reachable from our machines, so it is launched
with ``executable_path``), and a notebook on kernel "JAX (sandboxed)" is run cell by cell.
Screenshots go to ``test-artifacts/browser/``. Without chromium or Playwright the tests
skip and say how to get them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is missing: pip install -e '.[test]'"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium on this machine: `apt-get install -y chromium` (Debian) to run the browser tests",
        allow_module_level=True,
    )

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
TOKEN = "jax-kernel-browser-test"
UI_TIMEOUT_MS = 60_000

CELLS = {
    "hello": "print('hello from the worker')",
    "plot": ("import matplotlib.pyplot as plt\nplt.plot([0, 1, 4, 9])\nplt.title('squares')\nplt.show()"),
    "slider": (
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=3, description='n')\n"
        "label = widgets.Label('not moved yet')\n"
        "slider.observe(lambda change: setattr(label, 'value', f'worker saw {change[\"new\"]}'), 'value')\n"
        "widgets.VBox([slider, label])"
    ),
    # Comms over a subshell (JupyterLab 4.4+ sends them so): the slider works while a cell runs.
    "busy_slider": (
        "import ipywidgets as widgets\n"
        "busy_slider = widgets.IntSlider(value=10, description='m')\n"
        "busy_label = widgets.Label('idle')\n"
        "busy_slider.observe(lambda c: setattr(busy_label, 'value', f'moved to {c[\"new\"]}'), 'value')\n"
        "widgets.VBox([busy_slider, busy_label])"
    ),
    "busy": (
        "import time\nt0 = time.monotonic()\n"
        "while busy_label.value == 'idle' and time.monotonic() - t0 < 60:\n    time.sleep(0.05)\n"
        "print('while the cell ran:', busy_label.value)"
    ),
    "long": "import time\nfor step in range(80):\n    time.sleep(0.25)\nprint('long cell done')",
    "plotly": "import plotly.graph_objects as go\ngo.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))",
    "tqdm": "from tqdm.auto import tqdm\nimport time\nfor i in tqdm(range(50)):\n    time.sleep(0.01)",
    "error": "1 / 0",
    "array": "import jax.numpy as jnp\njnp.arange(12.0).reshape(3, 4)",
    "load_jax": "%load_jax",
    "stuck": (
        "import jax\n"
        "spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, lambda i, v: jnp.sin(v) + 1.0, x))\n"
        "spin(jnp.zeros(4)).block_until_ready()"
    ),
    "after_restart": "'slider' in globals()",
    "restarted_jnp": "import jax.numpy as jnp\nprint('fresh', 'slider' in globals(), int(jnp.arange(5).sum()))",
    "usage_pid": "import os\nos.getpid()",
    "usage_alloc": "import numpy as np\nusage_block = np.ones(40_000_000)  # 320 MB, every page touched\nusage_block.nbytes",
    "debug": "def double(v):\n    w = v * 2\n    return w\nprint('answer', double(21))",
    # Uses the user's login (the page's token) to write a file through the server's REST API,
    # as a script in a trusted output can: an HTML handler, a script tag and a JavaScript bundle.
    "active": (
        "from IPython.display import HTML, Javascript, display\n"
        "attack = (\"const t = JSON.parse(document.getElementById('jupyter-config-data').textContent).token;\"\n"
        "          \"fetch('/api/contents/' + NAME + '?token=' + t, {method: 'PUT', body: JSON.stringify(\"\n"
        "          \"{type: 'file', format: 'text', content: 'written by a cell output'})});\")\n"
        "display(HTML('<b>html stays</b><img src=x onerror=\"' + attack.replace('NAME', \"'pwned-img.txt'\") + '\">'))\n"
        "display(HTML('<script>' + attack.replace('NAME', \"'pwned-script.txt'\") + '</script>'))\n"
        "display(Javascript(attack.replace('NAME', \"'pwned-js.txt'\")))"
    ),
}
ORDER = list(CELLS)
LAB_ROOT: Path | None = None  # the server's root folder, once the lab fixture has made it


#: jupyter-resource-usage's units: binary, as its labels use them.
UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JupyterLab server with one notebook on kernel ``jax``; yields the notebook's URL."""
    root = tmp_path_factory.mktemp("lab")
    cells = [
        {
            "cell_type": "code",
            "id": f"cell-{i}",
            "metadata": {},
            "source": src,
            "outputs": [],
            "execution_count": None,
        }
        for i, src in enumerate(CELLS.values())
    ]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "jax", "display_name": "JAX (sandboxed)", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "browser.ipynb").write_text(json.dumps(notebook))
    port = _free_port()
    (root / "config").mkdir()
    # Every browser test runs with active outputs sanitized: the widgets, plots, progress bars and
    # rich views below must work under it, and the "active" cell's scripts must not run.
    config = "c.Sandbox.active_outputs = 'sanitize'\n"
    if os.environ.get("JAX_KERNEL_BROWSER_DEBUG"):
        config += "c.Application.log_level = 'DEBUG'\n"
    (root / "config" / "jax_kernel_config.py").write_text(config)
    # And over CurveZMQ: the server refuses kernels that can't encrypt (jupyter_client 8.9+).
    (root / "config" / "jupyter_server_config.py").write_text(
        "c.KernelManager.transport_encryption = 'required'\n"
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
    }
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={TOKEN}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands by their id
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    log_text = (root / "lab.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start:\n{log_text}") from None
                time.sleep(0.2)
        global LAB_ROOT
        LAB_ROOT = root
        yield f"http://127.0.0.1:{port}/lab/tree/browser.ipynb?token={TOKEN}"
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "lab.log", ARTIFACTS / "lab.log")  # the server's and kernel's own logs


@pytest.fixture(scope="module")
def page(lab: str) -> Iterator[Any]:
    """The notebook open in chromium, its kernel started and idle."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(lab)
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        wait_idle(page)
        # The toolbar turns idle before JupyterLab's kernel connection accepts executions; the
        # status bar's "Idle" comes later, and a short settle after it avoids a dropped first run.
        playwright_api.expect(page.locator(".jp-StatusBar-Widget")).to_contain_text(
            re.compile(r"JAX \(sandboxed\) \| Idle")
        )
        page.wait_for_timeout(2000)
        yield page
        page.screenshot(path=str(ARTIFACTS / "final.png"), full_page=True)
        browser.close()


def wait_idle(page: Any) -> None:
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")


def cell(page: Any, name: str) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(ORDER.index(name))


def run(page: Any, name: str, wait: bool = True) -> Any:
    """Run one cell the way a person does: click into it, press Shift+Enter.

    Right after the notebook opens, JupyterLab can drop a Shift+Enter without a trace, so a run
    that has not started within 15 s is tried again; never sooner, because a run that JupyterLab
    merely delayed and that is then sent twice leaves its execution indicator busy for good.
    """
    target = cell(page, name)
    prompt = target.locator(".jp-InputPrompt")
    before = prompt.inner_text().strip()
    for _attempt in range(3):
        _no_dialog(page)
        target.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        if _started(page, prompt, before, within=15.0):
            break
    else:
        raise AssertionError(f"cell {name!r} did not start after 3 tries (prompt {prompt.inner_text()!r})")
    if wait:
        playwright_api.expect(prompt).to_have_text(re.compile(r"\[\d+\]:"), timeout=UI_TIMEOUT_MS)
        wait_idle(page)
    return target


def _no_dialog(page: Any) -> None:
    """A modal dialog (kernel died, kernel not found...) would swallow clicks: fail with its text."""
    dialogs = page.locator(".jp-Dialog")
    if dialogs.count():
        shot(page, "dialog")
        raise AssertionError(f"JupyterLab shows a dialog: {dialogs.first.inner_text()!r}")


def _started(page: Any, prompt: Any, before: str, within: float = 3.0) -> bool:
    """The cell is queued or running ([*]) or has a new execution count."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now = prompt.inner_text().strip()
        if now == "[*]:" or (re.fullmatch(r"\[\d+\]:", now) and now != before):
            return True
        page.wait_for_timeout(100)
    return False


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_text_output_appears(page: Any) -> None:
    out = run(page, "hello").locator(".jp-OutputArea-output")
    playwright_api.expect(out).to_contain_text("hello from the worker")
    shot(page, "hello")


def test_matplotlib_plot_is_an_inline_image(page: Any) -> None:
    image = run(page, "plot").locator(".jp-OutputArea-output img")
    playwright_api.expect(image).to_be_visible()
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert image.evaluate("img => img.naturalWidth") > 100
    shot(page, "plot")


def test_slider_moved_in_the_browser_reaches_the_worker(page: Any) -> None:
    out = run(page, "slider")
    handle = out.locator(".widget-slider .noUi-handle").first
    playwright_api.expect(handle).to_be_visible()
    playwright_api.expect(out.locator("div.widget-label")).to_contain_text("not moved yet")
    handle.focus()
    page.keyboard.press("ArrowRight")
    # The observer runs in the worker and sets the label, which the frontend re-renders.
    playwright_api.expect(out.locator("div.widget-label")).to_contain_text("worker saw 4")
    shot(page, "slider")


def test_a_slider_responds_while_a_cell_runs_through_a_subshell(page: Any) -> None:
    out = run(page, "busy_slider")
    handle = out.locator(".widget-slider .noUi-handle").first
    playwright_api.expect(handle).to_be_visible()
    busy = run(page, "busy", wait=False)  # loops until the slider's observer has run
    playwright_api.expect(busy.locator(".jp-InputPrompt")).to_have_text("[*]:")
    page.wait_for_timeout(500)
    handle.focus()
    page.keyboard.press("ArrowRight")
    # The move is served by the worker's subshell thread while the main shell's cell runs; the
    # cell sees the observer's effect and ends (it would wait 60 s otherwise).
    playwright_api.expect(out.locator("div.widget-label")).to_contain_text("moved to 11", timeout=20_000)
    playwright_api.expect(busy.locator(".jp-OutputArea-output")).to_contain_text(
        "while the cell ran: moved to 11", timeout=20_000
    )
    wait_idle(page)
    shot(page, "busy_slider")


def test_a_subshell_console_runs_while_the_notebooks_cell_runs(page: Any) -> None:
    # What the notebook's context menu "New Subshell Console for Notebook" runs.  (Opened before
    # the long cell: the console connects by a kernel_info_request to the main shell, which waits
    # for a running cell in the stock kernel too.)
    page.evaluate("window.jupyterapp.commands.execute('notebook:create-subshell-console')")
    console = page.locator(".jp-CodeConsole").last
    editor = console.locator(".jp-CodeConsole-promptCell .jp-InputArea-editor")
    playwright_api.expect(editor).to_be_visible()
    page.wait_for_timeout(1000)
    long = run(page, "long", wait=False)
    prompt = long.locator(".jp-InputPrompt")
    playwright_api.expect(prompt).to_have_text("[*]:")
    page.wait_for_timeout(1000)
    editor.click()
    page.keyboard.type("print('step', step, 'of the running cell')")
    page.keyboard.press("Shift+Enter")
    answer = console.locator(".jp-OutputArea-output").last
    playwright_api.expect(answer).to_contain_text(re.compile(r"step \d+ of the running cell"), timeout=20_000)
    step = int(re.search(r"step (\d+)", answer.inner_text()).group(1))
    assert step < 79, f"the console answered only after the notebook's cell (step {step})"
    shot(page, "subshell_console")
    playwright_api.expect(long.locator(".jp-OutputArea-output")).to_contain_text(
        "long cell done", timeout=60_000
    )
    wait_idle(page)


def test_a_plotly_figure_is_drawn_by_its_mime_renderer(page: Any) -> None:
    out = run(page, "plotly")
    plot = out.locator(".js-plotly-plot .main-svg").first
    playwright_api.expect(plot).to_be_visible()
    # One trace of three points, drawn by plotly's JupyterLab extension from the MIME bundle.
    playwright_api.expect(out.locator(".js-plotly-plot .scatterlayer .trace")).to_have_count(1)
    shot(page, "plotly")


def test_tqdm_progress_bar_renders_and_completes(page: Any) -> None:
    out = run(page, "tqdm")
    bar = out.locator(".widget-hprogress .progress-bar")
    playwright_api.expect(bar).to_be_visible()
    playwright_api.expect(bar).to_have_attribute("style", re.compile(r"width: 100%"))
    playwright_api.expect(out.locator(".jp-OutputArea-output")).to_contain_text("50/50")
    shot(page, "tqdm")


def test_error_shows_its_traceback(page: Any) -> None:
    out = run(page, "error").locator(".jp-OutputArea-output")
    playwright_api.expect(out).to_contain_text("ZeroDivisionError")
    playwright_api.expect(out).to_contain_text("division by zero")
    shot(page, "error")


def test_jax_array_has_its_rich_view(page: Any) -> None:
    out = run(page, "array").locator(".jp-OutputArea-output")
    view = out.locator(".jax-array")
    playwright_api.expect(view).to_be_visible()
    playwright_api.expect(view).to_contain_text("(3, 4)")
    playwright_api.expect(view).to_contain_text("float32")
    shot(page, "array")


def test_load_jax_shows_its_device_table(page: Any) -> None:
    tables = run(page, "load_jax").locator(".jp-OutputArea-output table")
    playwright_api.expect(tables.first).to_be_visible()
    playwright_api.expect(tables.first).to_contain_text("jax_version")
    playwright_api.expect(tables.first).to_contain_text("backend")
    devices = tables.filter(has_text="platform")  # one row per device: id, platform, kind, memory
    playwright_api.expect(devices).to_contain_text("cpu")
    shot(page, "load_jax")


def test_interrupt_button_ends_a_stuck_jitted_loop(page: Any) -> None:
    target = run(page, "stuck", wait=False)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='busy']")
    page.wait_for_timeout(1000)
    page.locator("[data-jp-item-name='interrupt'] button, [data-jp-item-name='interrupt']").first.click()
    out = target.locator(".jp-OutputArea-output")
    playwright_api.expect(out).to_contain_text("WorkerDied", timeout=30_000)
    # The variables: restored from the last snapshot, or lost if none was saved yet.
    playwright_api.expect(out).to_contain_text(
        re.compile(r"restored \d+ of \d+ variables?|all variables were lost")
    )
    wait_idle(page)
    shot(page, "interrupt")


def test_restart_button_gives_a_fresh_worker(page: Any, lab: str) -> None:
    run(page, "slider")  # the worker killed by the interrupt test lost it: define it again
    out = run(page, "after_restart").locator(".jp-OutputArea-output")
    playwright_api.expect(out).to_contain_text("True")
    # Twice in a row, each followed by a jnp cell, as in the "edit, restart, run" rhythm: the
    # kernel restarts in place (its process, and the page's connection, stay).
    kernel_pids = set()
    for _ in range(2):
        page.locator("[data-jp-item-name='restart'] button, [data-jp-item-name='restart']").first.click()
        page.locator(".jp-Dialog .jp-mod-accept").click()
        page.wait_for_timeout(500)
        wait_idle(page)
        out = run(page, "restarted_jnp").locator(".jp-OutputArea-output")
        playwright_api.expect(out).to_contain_text("fresh False 10")
        kernel_pids.add(_kernel_pid(lab))
    after = run(page, "after_restart")
    playwright_api.expect(after.locator(".jp-OutputArea-output")).to_contain_text("False")
    playwright_api.expect(after.locator(".jp-InputPrompt")).to_have_text("[2]:")  # counted from 1 again
    assert len(kernel_pids) == 1, f"the kernel process changed on a restart: {kernel_pids}"
    shot(page, "restart")


def _kernel_pid(lab: str) -> int:
    """The pid of the notebook's kernel process: the server names its kernel (REST API), whose
    command line names its connection file (a spare has the same line, and JAX_KERNEL_SPARE)."""
    import psutil

    base = lab.split("/lab/")[0]
    with urllib.request.urlopen(f"{base}/api/kernels?token={TOKEN}", timeout=10) as r:
        (kernel,) = json.load(r)
    mine = []
    for p in psutil.Process().children(recursive=True):
        try:  # a short-lived process (a worker's child) may be gone by the time it is asked
            if (
                f"kernel-{kernel['id']}.json" in " ".join(p.cmdline())
                and "JAX_KERNEL_SPARE" not in p.environ()
            ):
                mine.append(p)
        except psutil.Error:
            continue
    assert len(mine) == 1, f"kernel {kernel['id']}: processes {mine}"
    return mine[0].pid


def _bytes(text: str, label: str) -> int:
    """The figure after ``label`` in jupyter-resource-usage's text ("Memory: 123.45 MB"), in bytes."""
    m = re.search(re.escape(label) + r"\s*([\d.]+)\s*(?:/\s*[\d.]+\s*)?([KMGT]?B)\b", text)
    assert m is not None, f"no {label!r} figure in {text!r}"
    return int(float(m.group(1)) * UNITS[m.group(2)])


def _wait_for(read: Any, check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll read() until check(value) holds; both jupyter-resource-usage views refresh every 5 s."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(0.5)


def test_resource_usage_shows_the_worker_memory(page: Any) -> None:
    """jupyter-resource-usage's Kernel usage panel shows usage_reply: the worker's pid and memory.

    Its status bar "Mem:" is the Jupyter server's process tree (kernels and their workers are in
    it), not a per-kernel figure; it must at least hold the worker's.
    """
    pid = run(page, "usage_pid").locator(".jp-OutputArea-output").inner_text().strip()
    assert pid.isdigit(), pid
    page.locator(".jp-SideBar.jp-mod-right [data-id='kernelusage-panel-id']").click()
    panel = page.locator(".jp-KernelUsage-view")
    playwright_api.expect(panel).to_contain_text(f"Process ID: {pid}", timeout=30_000)
    status = page.locator(".jp-StatusBar-Widget")
    playwright_api.expect(status).to_contain_text("Mem:")
    panel_before = _bytes(panel.inner_text(), "Memory:")
    run(page, "usage_alloc")
    _wait_for(
        lambda: _bytes(panel.inner_text(), "Memory:"),
        lambda n: n - panel_before >= 200 * UNITS["MB"],  # PSS: other pages come and go meanwhile
        f"the Kernel usage panel's memory after a 320 MB array (it was {panel_before} before)",
    )
    shot(page, "resource_usage")
    # The status bar sums the server's whole process tree, where spare kernels and standby workers
    # come and go by hundreds of MB: it can only be checked to hold the worker's figure.
    worker = _bytes(panel.inner_text(), "Memory:")
    _wait_for(
        lambda: _bytes(status.inner_text(), "Mem:"),
        lambda n: n >= worker,
        f"the status bar's memory (the server's process tree) holding the worker's {worker} bytes",
    )


def test_visual_debugger_stops_at_a_breakpoint_and_shows_the_workers_variables(page: Any) -> None:
    """JupyterLab's own debugger UI: toggle it on, click the gutter, run, see the stop, continue."""
    toggle = page.locator(".jp-NotebookPanel-toolbar .jp-DebuggerBugButton")
    playwright_api.expect(toggle).to_be_visible()  # shown because kernel_info says debugger: true
    toggle.click()
    playwright_api.expect(toggle).to_have_attribute("aria-pressed", "true")
    target = cell(page, "debug")
    target.locator(".jp-InputArea-editor").click()
    # Line 2 (w = v * 2): JupyterLab's breakpoint gutter has one element per line.
    gutter = target.locator(".cm-breakpoint-gutter .cm-gutterElement")
    # The debugger session starts after the toggle: the sidebar's panels show once it has.
    playwright_api.expect(page.locator(".jp-DebuggerCallstack")).to_be_attached(timeout=30_000)
    page.wait_for_timeout(1000)
    line_2 = gutter.nth(2)  # the first element is CodeMirror's hidden spacer
    line_2.click()
    playwright_api.expect(line_2.locator(".cm-breakpoint-icon")).to_have_count(1)
    run(page, "debug", wait=False)
    variables = page.locator(".jp-DebuggerVariables")
    playwright_api.expect(variables).to_contain_text("v", timeout=30_000)
    playwright_api.expect(variables).to_contain_text("21")
    playwright_api.expect(page.locator(".jp-DebuggerCallstack")).to_contain_text("double")
    shot(page, "debugger_stopped")
    page.locator("[data-command='debugger:continue']").first.click()
    playwright_api.expect(target.locator(".jp-OutputArea-output")).to_contain_text(
        "answer 42", timeout=30_000
    )
    wait_idle(page)
    toggle.click()
    playwright_api.expect(toggle).to_have_attribute("aria-pressed", "false")
    shot(page, "debugger_done")


def test_a_cells_scripts_do_not_run_under_sanitize(page: Any) -> None:
    out = run(page, "active").locator(".jp-OutputArea-output")
    playwright_api.expect(out.first).to_contain_text("html stays")
    page.wait_for_timeout(3000)  # a fetch that ran would have written its file by now
    assert LAB_ROOT is not None
    assert sorted(p.name for p in LAB_ROOT.glob("pwned-*")) == []
    playwright_api.expect(out.last).to_contain_text("would run in the browser")
    shot(page, "active")


def test_the_kernel_ran_over_curve() -> None:
    """The server was told to require transport encryption, and this kernel met it."""
    assert LAB_ROOT is not None
    log = (LAB_ROOT / "lab.log").read_text()
    assert "without encryption" not in log, log[-2000:]
    assert "does not declare 'curve'" not in log
