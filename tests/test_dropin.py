"""Habits that must feel as in the stock kernel, each compared with ``python3`` in the same test.

Issue 17's first pieces: what an interrupted cell's traceback shows, a result whose
``_repr_html_`` raises, and what ``sys.stdout`` says about itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel, stop_kernel


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
