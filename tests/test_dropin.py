"""Habits that must feel as in the stock kernel, each compared with ``python3`` in the same test.

What an interrupted cell's traceback shows, a result whose ``_repr_html_`` raises, what
``sys.stdout`` and ``get_ipython()`` say about themselves (libraries decide by them whether they
run in a notebook: rich, plotly, JAX's pretty-printer), Output widgets and ``interact``, thread
parents, ``%cd``/``%store``, pdb and ``exit()``.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel, stop_kernel
from test_comms import shell_message


@pytest.fixture(scope="module")
def stock() -> Iterator[Kernel]:
    """The stock IPython kernel, the baseline a user compares with."""
    km, kc = start_kernel(kernel_name="python3")
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _interrupted(kernel: Kernel) -> list[str]:
    threading.Timer(1.0, kernel.km.interrupt_kernel).start()
    res = kernel.run("import time\nfor _ in range(3000):\n    time.sleep(0.01)")
    assert res.reply["status"] == "error"
    assert res.reply["ename"] == "KeyboardInterrupt"
    return res.reply["traceback"]


def test_an_interrupted_cells_traceback_shows_only_the_users_frames(kernel: Kernel, stock: Kernel) -> None:
    ours, theirs = _interrupted(kernel), _interrupted(stock)
    text, stock_text = (_plain("\n".join(tb)) for tb in (ours, theirs))
    assert "jax_kernel" not in text and "_on_sigint" not in text and "_record" not in text
    assert "time.sleep(0.01)" in text  # the user's line is there, as in the stock kernel's
    assert "time.sleep(0.01)" in stock_text
    assert kernel.ok("'after'").of("execute_result")[0]["data"]["text/plain"] == "'after'"


def test_a_cell_whose_result_cannot_be_formatted_fails_as_in_the_stock_kernel(
    kernel: Kernel, stock: Kernel
) -> None:
    code = "class Broken:\n    def _repr_html_(self):\n        raise ValueError('no html today')\nBroken()"
    theirs, ours = stock.run(code), kernel.run(code)
    assert theirs.reply["status"] == "error"
    assert ours.reply["status"] == "error"  # nbclient and papermill stop here, as with ipykernel
    assert ours.reply["ename"] == "ValueError" and "no html today" in ours.reply["evalue"]
    assert ours.error is not None and "no html today" in "\n".join(ours.error["traceback"])
    # A formatting error inside display() is not the cell's failure, in either kernel.
    shown = "from IPython.display import display\ndisplay(Broken())\n'went on'"
    assert stock.run(shown).reply["status"] == kernel.run(shown).reply["status"] == "ok"


def test_sys_stdout_describes_itself_as_the_stock_kernels_does(kernel: Kernel, stock: Kernel) -> None:
    code = (
        "import sys\n(sys.stdout.encoding, sys.stderr.encoding, sys.stdout.isatty(), sys.stdout.writable())"
    )
    expected = stock.ok(code).of("execute_result")[0]["data"]["text/plain"]
    assert kernel.ok(code).of("execute_result")[0]["data"]["text/plain"] == expected


def test_a_cell_imports_modules_from_the_notebook_folder_and_sees_a_kernels_environment(
    tmp_path: Path,
) -> None:
    (tmp_path / "dropin_local_module.py").write_text("VALUE = 42\n")
    code = (
        "import os, sys\n"
        "import dropin_local_module\n"
        "(dropin_local_module.VALUE, '' in sys.path, 'JPY_PARENT_PID' in os.environ)"
    )
    seen = []
    for name in ("python3", "jax"):
        km, kc = start_kernel(kernel_name=name, cwd=str(tmp_path))  # the notebook's folder
        try:
            seen.append(Kernel(km, kc).ok(code).of("execute_result")[0]["data"]["text/plain"])
        finally:
            stop_kernel(km, kc)
    assert seen == ["(42, True, True)"] * 2


def _value(kernel: Kernel, code: str) -> str:
    return kernel.ok(code).of("execute_result")[0]["data"]["text/plain"]


def test_libraries_see_a_jupyter_kernel_as_in_the_stock_kernel(kernel: Kernel, stock: Kernel) -> None:
    probe = (
        "import sys, os, ipykernel.iostream\n"
        "ip = get_ipython()\n"
        "(type(ip).__name__, type(ip).__module__, hasattr(ip, 'kernel'), 'ipykernel' in sys.modules,\n"
        " isinstance(sys.stdout, ipykernel.iostream.OutStream), 'JPY_PARENT_PID' in os.environ)"
    )
    assert (
        _value(kernel, probe)
        == _value(stock, probe)
        == ("('ZMQInteractiveShell', 'ipykernel.zmqshell', True, True, True, True)")
    )
    # rich renders HTML for a notebook, not ANSI text
    table = "from rich.console import Console\nfrom rich.table import Table\nConsole().print(Table('a', 'b'))"
    for k in (kernel, stock):
        shown = k.ok(table).of("display_data")
        assert shown and "text/html" in shown[0]["data"], k.ok(table).outputs
    # plotly picks its MIME renderer: a few KB of JSON, not 4.9 MB of embedded plotly.js
    fig = (
        "import plotly.graph_objects as go, plotly.io as pio\n"
        "fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))\n"
        "print(pio.renderers.default)\nfig.show()"
    )
    ours, theirs = kernel.ok(fig), stock.ok(fig)
    assert ours.stdout == theirs.stdout == "plotly_mimetype\n"
    bundle = ours.of("display_data")[0]["data"]
    assert sorted(bundle) == sorted(theirs.of("display_data")[0]["data"])
    assert "application/vnd.plotly.v1+json" in bundle and len(json.dumps(bundle)) < 100_000
    # JAX's pretty-printer colours jaxprs in a notebook
    jaxpr = "import jax\nprint(jax.make_jaxpr(lambda x: x * 2.0)(1.0))"
    assert "\x1b[" in kernel.ok(jaxpr).stdout and "\x1b[" in stock.ok(jaxpr).stdout


def test_an_output_widget_captures_what_its_with_block_prints(kernel: Kernel) -> None:
    res = kernel.ok(
        "import ipywidgets as widgets\n"
        "out = widgets.Output()\n"
        "display(out)\n"
        "with out:\n"
        "    captured_under = out.msg_id\n"
        "    print('inside the widget')\n"
        "print('after', repr(out.msg_id))"
    )
    assert _value(kernel, "captured_under") == repr(res.msg_id)  # the frontend files it in the widget
    assert "inside the widget" in res.stdout and "after ''" in res.stdout


def _interact(k: Kernel) -> list[tuple[str, dict]]:
    k.ok(
        "from ipywidgets import interactive\n"
        "def show(x):\n"
        "    print('x is', x)\n"
        "w = interactive(show, x=5)\n"
        "display(w)\n"
        "slider, out = w.children[0], w.children[-1]"
    )
    slider = _value(k, "slider.model_id").strip("'")
    out_id = _value(k, "out.model_id").strip("'")
    moved = shell_message(
        k.kc,
        "comm_msg",
        {"comm_id": slider, "data": {"method": "update", "state": {"value": 8}, "buffer_paths": []}},
    )
    return [(t, c) for t, c in moved if t == "stream" or c.get("comm_id") == out_id]


def test_interact_output_after_a_slider_move_goes_to_its_widget(kernel: Kernel, stock: Kernel) -> None:
    def claimed(seen: list[tuple[str, dict]]) -> tuple[list[str], bool]:
        texts = [c["text"] for t, c in seen if t == "stream"]
        ids = [
            c["data"]["state"].get("msg_id")
            for t, c in seen
            if t == "comm_msg" and "state" in c.get("data", {})
        ]
        return texts, any(ids)  # the Output widget claimed the callback's request before it printed

    ours, theirs = claimed(_interact(kernel)), claimed(_interact(stock))
    assert ours == theirs == (["x is 8\n"], True)


def test_a_thread_prints_to_the_cell_it_chose_as_with_ipykernel(kernel: Kernel, stock: Kernel) -> None:
    start = (
        "import threading, time\n"
        "go = threading.Event()\n"
        "parent = get_ipython().get_parent()\n"
        "def work():\n"
        "    token = get_ipython().set_thread_parent(parent)\n"
        "    go.wait(20)\n"
        "    print('for the first cell', flush=True)\n"
        "    get_ipython().reset_thread_parent(token)\n"
        "    print('for the running cell', flush=True)\n"
        "t = threading.Thread(target=work)\n"
        "t.start()"
    )
    for k in (kernel, stock):
        first = k.kc.execute(start)
        k.kc.get_shell_msg(timeout=30)
        second = k.kc.execute("go.set(); t.join(20)")
        printed: dict[str, str] = {}
        idle = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (idle and first in printed):
            try:
                msg = k.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            parent = msg["parent_header"].get("msg_id", "")
            if msg["msg_type"] == "stream":
                printed[parent] = printed.get(parent, "") + msg["content"]["text"]
            idle = idle or (parent == second and msg["content"].get("execution_state") == "idle")
        k.kc.get_shell_msg(timeout=30)
        assert printed.get(first) == "for the first cell\n", (k.km.kernel_name, printed)
        assert printed.get(second) == "for the running cell\n", (k.km.kernel_name, printed)


def test_cd_store_and_pdb_work_as_in_the_stock_kernel(kernel: Kernel, stock: Kernel, tmp_path: Path) -> None:
    code = f"import os, pdb\nbefore = os.getcwd()\n%cd {tmp_path}\nkept = 41\n%store kept\ndel kept\n%store -r kept\n(kept + 1, pdb.Pdb.__name__)"
    for k in (kernel, stock):
        res = k.ok(code)
        assert res.of("execute_result")[0]["data"]["text/plain"] == "(42, 'InterruptiblePdb')"
        assert str(tmp_path) in res.stdout
        k.ok("os.chdir(before)")


def test_exit_ends_the_kernel_as_in_the_stock_kernel() -> None:
    for name in ("python3", "jax"):
        km, kc = start_kernel(kernel_name=name)
        try:
            res = Kernel(km, kc).ok("exit()")
            assert {"source": "ask_exit", "keepkernel": False} in res.reply["payload"]
            deadline = time.monotonic() + 20
            while km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not km.is_alive(), f"the {name} kernel is still running after exit()"
        finally:
            stop_kernel(km, kc)
