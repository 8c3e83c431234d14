"""The visual debugger, driven as JupyterLab drives it: debug_request on the control channel.

The message sequence follows JupyterLab's debugger service (and ipykernel's own
tests/test_debugger.py): initialize, attach, debugInfo, dumpCell, setBreakpoints,
configurationDone, then a cell that stops, inspected with stackTrace, scopes and
variables, and continued.  One kernel for the module; the sandbox's strict profile and a
kernel with the debugger turned off get their own.
"""

from __future__ import annotations

import queue
import random
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Kernel, Result, execute, request, start_kernel, stop_kernel
from jupyter_client.blocking import BlockingKernelClient

from jax_kernel.protocol import wire
from jax_kernel.worker.cellnames import HASH_SEED, murmur2

CELL = "a = 10\nb = a + 32\nprint('b is', b)\n"
BREAK_LINE = 2


class Frontend:
    """A DAP client over a kernel's control channel, collecting the debug_events on IOPub."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.seq = 0
        self.events: list[dict[str, Any]] = []

    def __call__(self, command: str, **arguments: Any) -> dict[str, Any]:
        self.seq += 1
        content = {"type": "request", "seq": self.seq, "command": command, "arguments": arguments}
        msg = self.kc.session.msg("debug_request", content)
        self.kc.control_channel.send(msg)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = self.kc.control_channel.get_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                assert reply["msg_type"] == "debug_reply"
                return reply["content"]
        raise TimeoutError(f"no debug_reply to {command}")

    def ok(self, command: str, **arguments: Any) -> dict[str, Any]:
        reply = self(command, **arguments)
        assert reply["success"], reply
        assert reply["command"] == command and reply["request_seq"] == self.seq
        return reply

    def wait_event(self, event: str, timeout: float = 20) -> dict[str, Any]:
        """The next debug_event of this kind (other IOPub traffic of running cells is left alone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            if msg["msg_type"] == "debug_event":
                self.events.append(msg["content"])
                if msg["content"]["event"] == event:
                    return msg["content"]
        raise TimeoutError(f"no {event!r} debug_event within {timeout} s")

    def start(self) -> None:
        self.ok(
            "initialize",
            clientID="test",
            clientName="test",
            adapterID="python",
            pathFormat="path",
            linesStartAt1=True,
            columnsStartAt1=True,
            supportsVariableType=True,
            supportsVariablePaging=True,
            supportsRunInTerminalRequest=True,
            locale="en",
        )
        self.ok("attach")

    def break_in(self, code: str, line: int) -> str:
        source = self.ok("dumpCell", code=code)["body"]["sourcePath"]
        reply = self.ok(
            "setBreakpoints", source={"path": source}, breakpoints=[{"line": line}], sourceModified=False
        )
        assert reply["body"]["breakpoints"][0]["verified"]
        self.ok("configurationDone")
        return source


def finish(kc: BlockingKernelClient, msg_id: str) -> Result:
    """Collect a cell sent with kc.execute up to its idle status and reply."""
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        if msg["msg_type"] not in ("status", "execute_input"):
            outputs.append((msg["msg_type"], msg["content"]))
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return Result(reply["content"], outputs)


@pytest.fixture(scope="module")
def dbg() -> Iterator[tuple[Kernel, Frontend]]:
    km, kc = start_kernel()
    kernel = Kernel(km, kc)
    kernel.ok("pass")
    yield kernel, Frontend(kc)
    stop_kernel(km, kc)


def test_cell_file_names_hash_as_frontends_do() -> None:
    from ipykernel.compiler import get_tmp_hash_seed, murmur2_x86

    assert HASH_SEED == get_tmp_hash_seed()
    rng = random.Random(8)
    for _ in range(300):
        text = "".join(rng.choice(string.printable + "éλ€😀") for _ in range(rng.randint(0, 50)))
        assert murmur2(text) == murmur2_x86(text, HASH_SEED), text


def test_dap_messages_from_the_worker_are_checked() -> None:
    event = wire.check_dap(
        {"type": "event", "seq": 3, "event": "stopped", "body": {}, "pydevd_cmd_id": 1}, "event"
    )
    assert event == {"type": "event", "seq": 3, "event": "stopped", "body": {}}
    for bad in (
        {"type": "response", "seq": 1, "event": "stopped"},
        {"type": "event", "seq": True, "event": "stopped"},
        {"type": "event", "event": 5},
        {"type": "event", "event": "x", "body": []},
        {"type": "event", "event": "x", "body": {"text": "y" * (wire.MAX_DAP_BYTES + 1)}},
    ):
        with pytest.raises(wire.WireError):
            wire.check_dap(bad, "event")
    with pytest.raises(wire.WireError):
        wire.validate_worker_message({"type": "debug_reply", "id": 1, "content": {"type": "response"}})


def test_kernel_info_advertises_the_debugger(dbg: tuple[Kernel, Frontend]) -> None:
    kernel, _ = dbg
    info = request(kernel.kc, "kernel_info")
    assert "debugger" in info["supported_features"] and info["debugger"] is True
    # Offering it costs the worker nothing until a frontend starts it.
    kernel.ok("import sys\nassert not {'debugpy', 'pydevd'} & sys.modules.keys()")


def test_breakpoint_stops_the_cell_and_shows_the_workers_variables(dbg: tuple[Kernel, Frontend]) -> None:
    kernel, dap = dbg
    dap.start()
    info = dap.ok("debugInfo")["body"]
    assert info["isStarted"] and info["hashMethod"] == "Murmur2" and info["tmpFileSuffix"] == ".py"
    source = dap.break_in(CELL, BREAK_LINE)
    assert source == f"{info['tmpFilePrefix']}{murmur2(CELL, info['hashSeed'])}.py"

    msg_id = kernel.kc.execute(CELL)
    stopped = dap.wait_event("stopped")["body"]
    assert stopped["reason"] == "breakpoint"
    assert dap.ok("debugInfo")["body"]["stoppedThreads"] == [stopped["threadId"]]
    frames = dap.ok("stackTrace", threadId=stopped["threadId"])["body"]["stackFrames"]
    assert frames[0]["source"]["path"] == source and frames[0]["line"] == BREAK_LINE
    assert [f["source"]["path"] for f in frames] == [source]  # the worker's and IPython's frames are hidden
    scopes = dap.ok("scopes", frameId=frames[0]["id"])["body"]["scopes"]
    variables = dap.ok("variables", variablesReference=scopes[0]["variablesReference"])["body"]["variables"]
    values = {v["name"]: v["value"] for v in variables}
    assert values.get("a") == "10" and "b" not in values  # line 2 has not run yet
    assert "In" not in values and "load_jax_library" not in values
    rich = dap.ok("richInspectVariables", variableName="a", frameId=frames[0]["id"])["body"]
    assert rich["data"]["text/plain"] == "10"

    dap.ok("continue", threadId=stopped["threadId"])
    res = finish(kernel.kc, msg_id)
    assert res.reply["status"] == "ok" and res.stdout == "b is 42\n"
    breakpoints = dap.ok("debugInfo")["body"]["breakpoints"]
    assert breakpoints == [{"source": source, "breakpoints": [{"line": BREAK_LINE}]}]


def test_variables_between_cells(dbg: tuple[Kernel, Frontend]) -> None:
    kernel, dap = dbg
    kernel.ok("import numpy as np\nweights = np.arange(3)")
    listed = {v["name"]: v for v in dap.ok("inspectVariables")["body"]["variables"]}
    assert listed["weights"]["value"] == "array([0, 1, 2])" and listed["weights"]["type"] == "ndarray"
    assert listed["b"]["value"] == "42"
    assert not {"In", "Out", "open", "get_ipython", "load_jax_library"} & listed.keys()
    rich = dap.ok("richInspectVariables", variableName="weights")["body"]
    assert rich["data"]["text/plain"] == "array([0, 1, 2])"
    modules = dap.ok("modules", startModule=0, moduleCount=10_000)["body"]
    assert any(m["name"] == "numpy" for m in modules["modules"])


def test_interrupt_while_stopped_ends_the_cell_and_breakpoints_still_stop(
    dbg: tuple[Kernel, Frontend],
) -> None:
    kernel, dap = dbg
    code = "import time\nx = 1\ntime.sleep(0)\nprint('not reached')\n"
    dap.break_in(code, 2)
    for _ in range(2):  # the second round shows the interrupt did not turn tracing off
        msg_id = kernel.kc.execute(code)
        dap.wait_event("stopped")
        kernel.km.interrupt_kernel()
        res = finish(kernel.kc, msg_id)
        assert res.reply["status"] == "error" and res.reply["ename"] == "KeyboardInterrupt"
        assert "not reached" not in res.stdout
        kernel.ok("pass")
    dap.ok(
        "setBreakpoints", source={"path": dap.ok("dumpCell", code=code)["body"]["sourcePath"]}, breakpoints=[]
    )


def test_a_replacement_worker_keeps_the_breakpoints(dbg: tuple[Kernel, Frontend]) -> None:
    kernel, dap = dbg
    res = kernel.run("import os; os._exit(3)")
    assert res.reply["ename"] == "WorkerDied"
    info = dap.ok("debugInfo")["body"]
    assert info["isStarted"] and info["breakpoints"][0]["breakpoints"] == [{"line": BREAK_LINE}]
    msg_id = kernel.kc.execute(CELL)
    stopped = dap.wait_event("stopped")["body"]
    dap.ok("continue", threadId=stopped["threadId"])
    assert finish(kernel.kc, msg_id).stdout == "b is 42\n"


def test_disconnect_stops_debugging(dbg: tuple[Kernel, Frontend]) -> None:
    kernel, dap = dbg
    dap.ok("disconnect", restart=False, terminateDebuggee=False)
    assert dap.ok("debugInfo")["body"]["isStarted"] is False
    assert kernel.ok(CELL).stdout == "b is 42\n"  # the breakpoint is gone: the cell runs through
    assert dap("stackTrace", threadId=1)["success"] is False
    # And the code runs untraced again, at full speed (the next test debugs in it once more).
    assert (
        kernel.ok("import sys\nsys.gettrace() is None").of("execute_result")[0]["data"]["text/plain"]
        == "True"
    )


def test_restart_while_stopped(dbg: tuple[Kernel, Frontend]) -> None:
    kernel, dap = dbg
    dap.start()
    dap.break_in(CELL, BREAK_LINE)
    kernel.kc.execute(CELL)
    dap.wait_event("stopped")
    started = time.monotonic()
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"
    assert time.monotonic() - started < 30
    assert dap.ok("debugInfo")["body"]["isStarted"] is False  # a new kernel: the frontend starts it again


def test_strict_sandbox_debugs_without_any_network() -> None:
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=strict"])
    try:
        first = execute(kc, "1")
        if first.reply["status"] != "ok":
            pytest.skip(f"no worker starts under the strict profile here: {first.reply.get('evalue')}")
        dap = Frontend(kc)
        dap.start()
        dap.break_in(CELL, BREAK_LINE)
        msg_id = kc.execute(CELL)
        stopped = dap.wait_event("stopped")["body"]
        dap.ok("continue", threadId=stopped["threadId"])
        assert finish(kc, msg_id).stdout == "b is 42\n"
        assert (
            execute(kc, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)").reply["status"]
            == "error"
        )
    finally:
        stop_kernel(km, kc)


def test_a_kernel_without_the_debugger_says_so() -> None:
    km, kc = start_kernel(extra_arguments=["--JaxKernel.enable_debugger=False"])
    try:
        info = request(kc, "kernel_info")
        assert info["debugger"] is False and "debugger" not in info["supported_features"]
        reply = Frontend(kc)("initialize", adapterID="python")
        assert reply["success"] is False and "JaxKernel.enable_debugger" in reply["message"]
        assert "\n" not in reply["message"]
    finally:
        stop_kernel(km, kc)
