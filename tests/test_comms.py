"""Comms through the kernel: widgets, progress bars and custom comm targets live in the worker.

The frontend's comm messages travel kernel -> worker, the worker's travel back on IOPub; a
slider moved in the frontend must run its observer in the worker, and a worker that dies
must not leave widgets behind that still look alive.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
from conftest import TIMEOUT, Kernel, request
from jupyter_client.blocking import BlockingKernelClient

ECHO_TARGET = """
import comm
def _echo_target(c, open_msg):
    c.send({'opened_with': open_msg['content']['data']})
    c.on_msg(lambda m: c.send({'echo': m['content']['data']}, buffers=m['buffers']))
comm.get_comm_manager().register_target('echo', _echo_target)
"""


def shell_message(
    kc: BlockingKernelClient, msg_type: str, content: dict[str, Any], buffers: list[bytes] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Send a shell message as a frontend would and collect its IOPub messages until idle."""
    msg = kc.session.msg(msg_type, content)
    msg["buffers"] = buffers or []
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    seen: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            out = kc.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            continue
        if out["parent_header"].get("msg_id") != msg_id:
            continue
        if out["msg_type"] == "status":
            if out["content"]["execution_state"] == "idle":
                return seen
            continue
        seen.append((out["msg_type"], {**out["content"], "buffers": [bytes(b) for b in out["buffers"]]}))
    raise TimeoutError(f"no idle after {msg_type}")


def test_moving_a_slider_runs_its_observer_in_the_worker(kernel: Kernel) -> None:
    res = kernel.ok(
        "import ipywidgets as widgets\n"
        "slider = widgets.IntSlider(value=3)\n"
        "moves = []\n"
        "slider.observe(lambda change: (moves.append(change['new']), print('moved to', change['new'])), 'value')\n"
        "slider"
    )
    view = res.of("execute_result")[0]["data"]["application/vnd.jupyter.widget-view+json"]
    opened = {c["comm_id"]: c for c in res.of("comm_open")}
    assert view["model_id"] in opened
    assert opened[view["model_id"]]["target_name"] == "jupyter.widget"
    assert opened[view["model_id"]]["data"]["state"]["value"] == 3

    # What JupyterLab sends when the user drags the slider to 7.
    outputs = shell_message(
        kernel.kc,
        "comm_msg",
        {
            "comm_id": view["model_id"],
            "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []},
        },
    )
    printed = "".join(c["text"] for t, c in outputs if t == "stream")
    assert printed == "moved to 7\n"  # published under the comm message, where the frontend shows it
    echo = kernel.ok("slider.value, moves").of("execute_result")[0]["data"]["text/plain"]
    assert echo == "(7, [7])"


def test_frontend_opened_comm_round_trips_data_and_buffers(kernel: Kernel) -> None:
    kernel.ok(ECHO_TARGET)
    comm_id = "frontend-echo-1"
    opened = shell_message(
        kernel.kc, "comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {"hello": 1}}
    )
    assert [(t, c["data"]) for t, c in opened] == [("comm_msg", {"opened_with": {"hello": 1}})]

    echoed = shell_message(
        kernel.kc, "comm_msg", {"comm_id": comm_id, "data": {"x": [1, 2]}}, buffers=[b"\x00\x01\xff"]
    )
    assert [(t, c["data"], c["buffers"]) for t, c in echoed] == [
        ("comm_msg", {"echo": {"x": [1, 2]}}, [b"\x00\x01\xff"])
    ]

    info = request(kernel.kc, "comm_info", target_name="echo")
    assert info["comms"] == {comm_id: {"target_name": "echo"}}
    shell_message(kernel.kc, "comm_close", {"comm_id": comm_id, "data": {}})
    assert request(kernel.kc, "comm_info", target_name="echo")["comms"] == {}


def test_comm_info_lists_the_workers_comms(kernel: Kernel) -> None:
    res = kernel.ok("import ipywidgets as widgets\nb = widgets.Button(description='go')\nb.model_id")
    model_id = res.of("execute_result")[0]["data"]["text/plain"].strip("'")
    everything = request(kernel.kc, "comm_info")["comms"]
    assert everything[model_id] == {"target_name": "jupyter.widget"}
    assert model_id not in request(kernel.kc, "comm_info", target_name="echo")["comms"]


def test_comm_open_to_an_unknown_target_is_closed_again(kernel: Kernel) -> None:
    outputs = shell_message(kernel.kc, "comm_open", {"comm_id": "nobody-1", "target_name": "no.such.target"})
    assert [c["comm_id"] for t, c in outputs if t.startswith("comm_")] == ["nobody-1"]
    assert [t for t, c in outputs if t.startswith("comm_")] == ["comm_close"]
    assert "No such comm target registered: no.such.target" in "".join(
        c["text"] for t, c in outputs if t == "stream"
    )


def test_tqdm_auto_is_a_widget_that_advances_during_the_cell(kernel: Kernel) -> None:
    res = kernel.ok(
        "from tqdm.auto import tqdm\ntotal = 0\nfor i in tqdm(range(1000)):\n    total += i\ntotal"
    )
    bar = [c for c in res.of("comm_open") if c["data"]["state"].get("_model_name") == "FloatProgressModel"]
    assert len(bar) == 1
    values = [
        c["data"]["state"]["value"]
        for c in res.of("comm_msg")
        if c["comm_id"] == bar[0]["comm_id"] and "value" in c["data"].get("state", {})
    ]
    assert values and values[-1] == 1000
    assert res.of("execute_result")[0]["data"]["text/plain"] == str(sum(range(1000)))


@pytest.mark.parametrize("death", ["import os; os._exit(1)", "import os, signal; os.kill(os.getpid(), 9)"])
def test_a_dead_worker_closes_its_widgets_in_the_frontend(fresh_kernel: Kernel, death: str) -> None:
    res = fresh_kernel.ok("import ipywidgets as widgets\nslider = widgets.IntSlider()\nslider")
    model_id = res.of("execute_result")[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    opened = {c["comm_id"] for c in res.of("comm_open")}
    crash = fresh_kernel.run(death)
    assert crash.reply["ename"] == "WorkerDied"
    closed = {c["comm_id"] for c in crash.of("comm_close")}
    assert model_id in closed and opened <= closed
    assert request(fresh_kernel.kc, "comm_info")["comms"] == {}
    # A message for the dead widget is ignored, and the new worker works.
    shell_message(
        fresh_kernel.kc, "comm_msg", {"comm_id": model_id, "data": {"method": "update", "state": {}}}
    )
    assert fresh_kernel.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"
