"""Subshells (JEP 91), driven as JupyterLab drives them, compared with the stock kernel.

A subshell is a second shell of the same kernel: its own queue of requests, run while the main
shell's cell runs (JupyterLab's "New Subshell Console", and the subshell it sends widget comm
messages over).  Here each subshell is a thread in the *worker*: what it runs shares the notebook's
namespace, and a slider moved while a training loop runs reaches its observer at once.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT, Kernel, start_kernel, stop_kernel

from bench.harness import control_request, create_subshell, execute, send_to_subshell


@pytest.fixture(scope="module")
def stock() -> Iterator[Kernel]:
    km, kc = start_kernel(kernel_name="python3")
    yield Kernel(km, kc)
    stop_kernel(km, kc)


@pytest.fixture(scope="module")
def jax() -> Iterator[Kernel]:
    """A kernel of this module's own: its subshells outlive single tests."""
    km, kc = start_kernel()
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def _collect(kc: Any, msg_ids: list[str], timeout: float = TIMEOUT) -> dict[str, dict[str, Any]]:
    """Replies (with their arrival time) and outputs of several concurrent requests, by msg_id."""
    seen: dict[str, dict[str, Any]] = {m: {"outputs": [], "reply": None, "replied_at": None} for m in msg_ids}
    idle: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        len(idle) < len(msg_ids) or any(s["reply"] is None for s in seen.values())
    ):
        try:
            reply = kc.get_shell_msg(timeout=0.02)
        except queue.Empty:
            pass
        else:
            parent = reply["parent_header"].get("msg_id")
            if parent in seen:
                seen[parent]["reply"] = reply["content"]
                seen[parent]["replied_at"] = time.monotonic()
        try:
            msg = kc.get_iopub_msg(timeout=0.02)
        except queue.Empty:
            continue
        parent = msg["parent_header"].get("msg_id")
        if parent not in seen:
            continue
        if msg["msg_type"] == "status":
            if msg["content"]["execution_state"] == "idle":
                idle.add(parent)
            continue
        seen[parent]["outputs"].append((msg["msg_type"], msg["content"]))
    missing = [m for m in msg_ids if seen[m]["reply"] is None]
    assert not missing, f"no reply to {missing} within {timeout} s"
    return seen


def _text(outputs: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for kind, content in outputs:
        if kind == "stream":
            parts.append(content["text"])
        elif kind == "execute_result":
            parts.append(content["data"]["text/plain"] + "\n")
    return "".join(parts)


def _while_main_runs(k: Kernel, subshell: str, main_code: str, sub_code: str) -> tuple[dict, dict, float]:
    """Start ``main_code`` in the main shell, then ``sub_code`` in the subshell: both results and the
    seconds by which the subshell's reply came before the main one's."""
    main = k.kc.execute(main_code)
    time.sleep(0.3)  # the main cell is running
    sub = send_to_subshell(k.kc, subshell, sub_code)
    got = _collect(k.kc, [main, sub])
    return got[main], got[sub], got[main]["replied_at"] - got[sub]["replied_at"]


@pytest.mark.timeout(300)
def test_subshells_are_offered_made_listed_and_deleted_as_in_the_stock_kernel(
    jax: Kernel, stock: Kernel
) -> None:
    for k in (jax, stock):
        features = k.kc.kernel_info(reply=True)["content"]["supported_features"]
        assert "kernel subshells" in features and "debugger" in features
        before = control_request(k.kc, "list_subshell_request", {})["subshell_id"]
        made = create_subshell(k.kc)
        assert control_request(k.kc, "list_subshell_request", {}) == {
            "status": "ok",
            "subshell_id": [*before, made],
        }
        assert control_request(k.kc, "delete_subshell_request", {"subshell_id": made}) == {"status": "ok"}
        assert made not in control_request(k.kc, "list_subshell_request", {})["subshell_id"]
        # a request for a subshell that is gone is refused, and the kernel goes on
        gone = execute(k.kc, "1 + 1", subshell_id=made)
        assert gone.reply["status"] == "error"
        assert "unknown" in (gone.reply.get("evalue", "") + gone.reply.get("ename", "")).lower()
        assert execute(k.kc, "2 + 2").of("execute_result")[0]["data"]["text/plain"] == "4"
    assert control_request(jax.kc, "delete_subshell_request", {"subshell_id": "nope"})["status"] == "error"


@pytest.mark.timeout(300)
def test_a_subshells_cell_runs_while_the_main_shells_cell_runs(jax: Kernel, stock: Kernel) -> None:
    results = {}
    for name, k in (("jax", jax), ("stock", stock)):
        k.ok("shared = 41")
        sid = create_subshell(k.kc)
        main, sub, ahead = _while_main_runs(
            k, sid, "import time\ntime.sleep(4)\nprint('main done')", "print('from the subshell')\nshared + 1"
        )
        assert main["reply"]["status"] == sub["reply"]["status"] == "ok", (main, sub)
        assert ahead > 2.0, f"{name}: the subshell's cell waited for the main shell's ({ahead:.2f} s ahead)"
        results[name] = (_text(sub["outputs"]), _text(main["outputs"]))
        # the subshell's output is filed under its own request, never under the main cell's
        assert "from the subshell" not in _text(main["outputs"])
        control_request(k.kc, "delete_subshell_request", {"subshell_id": sid})
    assert results["jax"] == results["stock"] == ("from the subshell\n42\n", "main done\n")


def _slider_during_a_loop(k: Kernel, over_subshell: bool) -> str:
    """Move a slider from the frontend while a cell waits for its observer: what the cell printed."""
    k.ok(
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=3)\n"
        "moves = []\n"
        "slider.observe(lambda change: moves.append(change['new']), 'value')\n"
        "display(slider)"
    )
    slider = k.ok("slider.model_id").of("execute_result")[0]["data"]["text/plain"].strip("'")
    sid = create_subshell(k.kc) if over_subshell else None
    # The main cell waits for the observer: it sees the move only if it is served during the cell.
    main = k.kc.execute(
        "import time\nt0 = time.monotonic()\n"
        "while not moves and time.monotonic() - t0 < 8:\n    time.sleep(0.05)\n"
        "print('saw', moves, 'during the cell' if moves else 'only after it')"
    )
    time.sleep(0.5)
    move = k.kc.session.msg(
        "comm_msg",
        {"comm_id": slider, "data": {"method": "update", "state": {"value": 8}, "buffer_paths": []}},
    )
    if sid is not None:
        move["header"]["subshell_id"] = sid
    k.kc.shell_channel.send(move)
    printed = _text(_collect(k.kc, [main])[main]["outputs"])
    assert k.ok("moves").of("execute_result")[0]["data"]["text/plain"] == "[8]"  # served in the end
    if sid is not None:
        control_request(k.kc, "delete_subshell_request", {"subshell_id": sid})
    return printed


@pytest.mark.timeout(300)
def test_a_slider_moved_over_a_subshell_reaches_its_observer_while_a_cell_runs(
    jax: Kernel, stock: Kernel
) -> None:
    """What JupyterLab 4.4+ does: comm messages go over a subshell, so a widget works during a loop.

    The stock kernel (ipykernel 7.4) sends a comm message to the shell the comm last spoke from
    (here the main shell, which displayed the slider), where it waits for the running cell; the
    worker serves it in the subshell it came over while that shell runs a synchronous cell."""
    assert _slider_during_a_loop(jax, over_subshell=True) == "saw [8] during the cell\n"
    assert _slider_during_a_loop(stock, over_subshell=True) == "saw [] only after it\n"
    # Without a subshell (a frontend that does not use them) the move waits, in both kernels.
    assert _slider_during_a_loop(jax, over_subshell=False) == "saw [] only after it\n"


@pytest.mark.timeout(300)
def test_input_in_a_subshell_says_why_it_cannot_and_the_subshell_goes_on(jax: Kernel) -> None:
    sid = create_subshell(jax.kc)
    asked = execute(jax.kc, "input('name? ')", subshell_id=sid)
    assert asked.reply["status"] == "error"
    assert asked.reply["ename"] == "StdinNotImplementedError"
    assert "subshell" in asked.reply["evalue"]
    again = execute(jax.kc, "'still here'", subshell_id=sid)
    assert again.of("execute_result")[0]["data"]["text/plain"] == "'still here'"
    control_request(jax.kc, "delete_subshell_request", {"subshell_id": sid})


@pytest.mark.timeout(300)
def test_a_subshell_survives_the_worker_and_an_interrupt_ends_only_the_main_cell(jax: Kernel) -> None:
    sid = create_subshell(jax.kc)
    # The worker dies in the main shell: a fresh worker serves the subshell's next cell.
    died = jax.run("import os; os._exit(3)")
    assert died.reply["status"] == "error" and died.reply["ename"] == "WorkerDied"
    after = execute(jax.kc, "import threading; threading.current_thread().name", subshell_id=sid)
    assert after.reply["status"] == "ok", after.outputs
    assert after.of("execute_result")[0]["data"]["text/plain"] == f"'subshell-{sid}'"
    # An interrupt reaches the main shell's cell (SIGINT, as in ipykernel), not the subshell's.
    main = jax.kc.execute("import time\ntime.sleep(30)")
    time.sleep(0.5)
    sub = send_to_subshell(jax.kc, sid, "import time\ntime.sleep(2)\n'slept'")
    time.sleep(0.5)
    jax.km.interrupt_kernel()
    got = _collect(jax.kc, [main, sub])
    assert got[main]["reply"]["ename"] == "KeyboardInterrupt"
    assert got[sub]["reply"]["status"] == "ok" and "'slept'" in _text(got[sub]["outputs"])
    control_request(jax.kc, "delete_subshell_request", {"subshell_id": sid})


@pytest.mark.timeout(300)
def test_load_jax_with_new_settings_from_a_subshell_is_refused_and_the_main_cell_goes_on(jax: Kernel) -> None:
    jax.ok("import jax\nassert jax.device_count() != 3")  # JAX runs: new settings need a new worker
    sid = create_subshell(jax.kc)
    main = jax.kc.execute("import time\ntime.sleep(3)\n'main kept'")
    time.sleep(0.3)
    sub = send_to_subshell(jax.kc, sid, "%load_jax --host-devices 3")
    got = _collect(jax.kc, [main, sub])
    assert got[sub]["reply"]["status"] == "error"
    assert "main shell" in got[sub]["reply"]["evalue"]
    assert got[main]["reply"]["status"] == "ok" and "'main kept'" in _text(got[main]["outputs"])
    control_request(jax.kc, "delete_subshell_request", {"subshell_id": sid})


@pytest.mark.timeout(300)
def test_completion_over_a_subshell_answers_while_the_main_cell_runs(jax: Kernel) -> None:
    sid = create_subshell(jax.kc)
    jax.ok("progress_counter = 7")
    main = jax.kc.execute("import time\ntime.sleep(4)")
    time.sleep(0.3)
    ask = jax.kc.session.msg("complete_request", {"code": "progress_co", "cursor_pos": 11})
    ask["header"]["subshell_id"] = sid
    sent = time.monotonic()
    jax.kc.shell_channel.send(ask)
    while True:
        reply = jax.kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == ask["header"]["msg_id"]:
            break
    assert time.monotonic() - sent < 3.0, "the completion waited for the main shell's cell"
    assert "progress_counter" in reply["content"]["matches"]
    _collect(jax.kc, [main])
    control_request(jax.kc, "delete_subshell_request", {"subshell_id": sid})
