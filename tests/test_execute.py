"""execute_request through the worker: outputs, errors, counters, stdin, magics."""

from __future__ import annotations

import base64
import re
import time

import pytest
from conftest import Kernel, shell_replies


def test_state_persists_between_cells(kernel: Kernel) -> None:
    kernel.ok("persisted_value = 41")
    res = kernel.ok("persisted_value + 1")
    assert res.of("execute_result")[0]["data"]["text/plain"] == "42"


def test_cells_do_not_run_in_the_kernel_process(kernel: Kernel) -> None:
    worker = kernel.worker_pid()
    assert worker != kernel.km.provisioner.process.pid


def test_stdout_streams_while_the_cell_runs(kernel: Kernel) -> None:
    seen: list[tuple[str, float]] = []
    kernel.ok(
        "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.4)",
        on_output=lambda kind, content, t: seen.append((content.get("text", ""), t)),
    )
    ticks = [(text, t) for text, t in seen if "tick" in text]
    assert "".join(text for text, _ in ticks) == "tick 0\ntick 1\ntick 2\n"
    assert len(ticks) == 3, "each print should arrive as it happens, not batched at the end"
    assert ticks[-1][1] - ticks[0][1] > 0.6


def test_stdout_and_stderr_keep_their_names_and_order(kernel: Kernel) -> None:
    res = kernel.ok("import sys\nprint('out1')\nprint('err1', file=sys.stderr)\nprint('out2')")
    assert res.stdout == "out1\nout2\n"
    assert res.stderr == "err1\n"


def test_fd_level_output_is_forwarded(kernel: Kernel) -> None:
    res = kernel.ok("import os\nos.write(1, b'from fd 1\\n')\nos.write(2, b'from fd 2\\n');")
    assert "from fd 1" in res.stdout
    assert "from fd 2" in res.stderr


def test_execute_result_has_rich_mime_types(kernel: Kernel) -> None:
    res = kernel.ok(
        "class Rich:\n"
        "    def _repr_html_(self): return '<b>bold</b>'\n"
        "    def _repr_markdown_(self): return '**md**'\n"
        "    def __repr__(self): return 'Rich()'\n"
        "Rich()"
    )
    data = res.of("execute_result")[0]["data"]
    assert data == {"text/plain": "Rich()", "text/html": "<b>bold</b>", "text/markdown": "**md**"}
    assert res.of("execute_result")[0]["execution_count"] == res.reply["execution_count"]


def test_display_update_and_clear_output(kernel: Kernel) -> None:
    res = kernel.ok(
        "from IPython.display import display, clear_output, HTML\n"
        "h = display(HTML('<i>one</i>'), display_id='d1')\n"
        "h.update(HTML('<i>two</i>'))\n"
        "clear_output(wait=True)\n"
    )
    kinds = [k for k, _ in res.outputs]
    assert kinds == ["display_data", "update_display_data", "clear_output"]
    assert res.outputs[0][1]["transient"] == {"display_id": "d1"}
    assert res.outputs[1][1]["data"]["text/html"] == "<i>two</i>"
    assert res.outputs[2][1] == {"wait": True}


def test_matplotlib_plot_shows_inline_as_png(kernel: Kernel) -> None:
    res = kernel.ok("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()")
    pngs = [d["data"]["image/png"] for d in res.of("display_data") if "image/png" in d["data"]]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG")


def test_error_has_name_value_and_ipython_traceback(kernel: Kernel) -> None:
    res = kernel.run("def inner():\n    raise ValueError('bad value')\ninner()")
    assert res.reply["status"] == "error"
    assert res.reply["ename"] == "ValueError"
    assert res.reply["evalue"] == "bad value"
    assert res.error == {k: res.reply[k] for k in ("ename", "evalue", "traceback")}
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(res.reply["traceback"]))
    assert "inner()" in text and "raise ValueError" in text


def test_syntax_error_is_reported(kernel: Kernel) -> None:
    res = kernel.run("def broken(:\n    pass")
    assert res.reply["status"] == "error"
    assert res.reply["ename"] == "SyntaxError"


def test_execution_count_increments_and_silent_does_not(kernel: Kernel) -> None:
    first = kernel.ok("1").reply["execution_count"]
    silent = kernel.ok("2", silent=True)
    assert silent.outputs == []  # silent: no execute_result
    unstored = kernel.ok("3", store_history=False)
    assert unstored.of("execute_result")
    assert kernel.ok("4").reply["execution_count"] == first + 1


def test_user_expressions_are_evaluated_in_the_worker(kernel: Kernel) -> None:
    kernel.ok("ue_base = 20")
    res = kernel.ok("pass", user_expressions={"double": "ue_base * 2", "bad": "1/0"})
    ue = res.reply["user_expressions"]
    assert ue["double"]["status"] == "ok"
    assert ue["double"]["data"]["text/plain"] == "40"
    assert ue["bad"]["status"] == "error" and ue["bad"]["ename"] == "ZeroDivisionError"


def test_stop_on_error_aborts_queued_cells(kernel: Kernel) -> None:
    kc = kernel.kc
    bad = kc.execute("raise RuntimeError('stop here')")
    queued = kc.execute("never_defined_by_queued_cell = 1")
    bad_reply, queued_reply = shell_replies(kc, bad, queued)
    assert bad_reply["status"] == "error"
    assert queued_reply["status"] == "aborted"
    res = kernel.run("never_defined_by_queued_cell")
    assert res.reply["ename"] == "NameError"


def test_stop_on_error_false_keeps_going(kernel: Kernel) -> None:
    kc = kernel.kc
    bad = kc.execute("raise RuntimeError('carry on')", stop_on_error=False)
    after = kc.execute("ran_after_error = True")
    bad_reply, after_reply = shell_replies(kc, bad, after)
    assert bad_reply["status"] == "error"
    assert after_reply["status"] == "ok"


@pytest.mark.parametrize(
    "code, answer, request_, result",
    [
        ("answer = input('Your answer? ')\nanswer", "forty-two", ("Your answer? ", False), "'forty-two'"),
        ("import getpass\nlen(getpass.getpass('Token: '))", "s3cret", ("Token: ", True), "6"),
    ],
    ids=["input", "getpass"],
)
def test_input_round_trips_through_the_frontend(
    kernel: Kernel, code: str, answer: str, request_: tuple[str, bool], result: str
) -> None:
    prompts = []

    def frontend(content: dict) -> str:
        prompts.append(content)
        return answer

    res = kernel.ok(code, stdin=frontend)
    assert prompts == [{"prompt": request_[0], "password": request_[1]}]
    assert res.of("execute_result")[0]["data"]["text/plain"] == result


def test_input_without_stdin_support_is_a_clear_error(kernel: Kernel) -> None:
    res = kernel.run("input('nobody will answer')")
    assert res.reply["status"] == "error"
    assert res.reply["ename"] == "StdinNotImplementedError"


def test_magics_and_shell_commands(kernel: Kernel) -> None:
    res = kernel.ok("%time magic_total = sum(range(10))")
    assert "Wall time" in res.stdout
    assert kernel.ok("magic_total").of("execute_result")[0]["data"]["text/plain"] == "45"
    assert "shell says hi" in kernel.ok("!echo shell says hi").stdout
    res = kernel.ok("%%bash\necho from bash cell magic")
    assert "from bash cell magic" in res.stdout
    res = kernel.ok("files = !echo a b\nfiles")
    assert "a b" in res.of("execute_result")[0]["data"]["text/plain"]


def test_pager_output_comes_back_as_a_payload(kernel: Kernel) -> None:
    res = kernel.ok("len?")
    pages = [p for p in res.reply["payload"] if p["source"] == "page"]
    assert pages and "Return the number of items" in pages[0]["data"]["text/plain"]


def test_jax_runs_in_the_worker(kernel: Kernel) -> None:
    res = kernel.ok(
        "import jax, jax.numpy as jnp\n"
        "f = jax.jit(jax.grad(lambda x: (x ** 2).sum()))\n"
        "f(jnp.arange(3.0)).tolist()"
    )
    assert res.of("execute_result")[0]["data"]["text/plain"] == "[0.0, 2.0, 4.0]"


def test_display_values_that_json_cannot_carry_are_cleaned(kernel: Kernel) -> None:
    res = kernel.ok(
        "import datetime\nfrom IPython.display import display\n"
        "display({'application/json': {'nan': float('nan'), 'raw': b'\\x00\\x01', 'set': {3}}}, raw=True,\n"
        "        metadata={'when': datetime.date(2026, 1, 2)})\n"
        "'after'"
    )
    shown = res.of("display_data")[0]
    assert shown["data"]["application/json"] == {"nan": None, "raw": "AAE=", "set": [3]}
    assert shown["metadata"] == {"when": "2026-01-02"}
    assert res.of("execute_result")[0]["data"]["text/plain"] == "'after'"


def test_a_threads_late_print_goes_to_the_cell_that_started_it_not_to_a_completion(kernel: Kernel) -> None:
    """Outputs are published under the request they answer: a thread's print that arrives after
    its cell ended, while the frontend asks for completions, still belongs to that cell."""
    kc = kernel.kc
    cell = kc.execute("import threading\nthreading.Timer(0.6, lambda: print('late line')).start()")
    assert shell_replies(kc, cell)[0]["status"] == "ok"
    complete = kc.complete("threading.Tim", 13)
    assert shell_replies(kc, complete)[0]["status"] == "ok"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and "late line" in msg["content"]["text"]:
            assert msg["parent_header"]["msg_id"] == cell
            break
    else:
        raise AssertionError("the thread's print never arrived")
    assert kernel.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"
