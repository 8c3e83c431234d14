"""Interrupts, crashes, restarts and shutdown: the worker dies, the kernel never does."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import Kernel, execute, process_gone, start_kernel, stop_kernel


@pytest.fixture(scope="module")
def crash_kernel() -> Iterator[Kernel]:
    """One kernel whose worker the tests in this module crash over and over; without snapshots of
    its variables, so that a crash loses them as it says (their restore: tests/test_keep_state.py)."""
    km, kc = start_kernel(["--WorkerManager.keep_state=False"])
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def _interrupt_by_message(kernel: Kernel) -> None:
    msg = kernel.kc.session.msg("interrupt_request", {})
    kernel.kc.control_channel.send(msg)


def _interrupt_by_signal(kernel: Kernel) -> None:
    kernel.km.interrupt_kernel()  # the kernelspec has no interrupt_mode: SIGINT to the kernel


@pytest.mark.parametrize(
    "interrupt", [_interrupt_by_message, _interrupt_by_signal], ids=["message", "signal"]
)
def test_interrupt_python_loop_keeps_state(crash_kernel: Kernel, interrupt) -> None:
    crash_kernel.ok("kept_through_interrupt = 'still here'")
    pid = crash_kernel.worker_pid()
    threading.Timer(1.0, interrupt, (crash_kernel,)).start()
    started = time.monotonic()
    res = crash_kernel.run("import time\nwhile True:\n    time.sleep(0.01)")
    assert time.monotonic() - started < 5
    assert res.reply["status"] == "error"
    assert res.reply["ename"] == "KeyboardInterrupt"
    assert crash_kernel.worker_pid() == pid
    out = crash_kernel.ok("kept_through_interrupt").of("execute_result")[0]["data"]["text/plain"]
    assert out == "'still here'"


def test_grace_period_belongs_to_the_interrupted_cell_only() -> None:
    # The interrupted cell stops at once; the next cell outlives the grace period and must not be killed.
    km, kc = start_kernel(extra_arguments=["--WorkerManager.interrupt_grace=1"])
    kernel = Kernel(km, kc)
    try:
        kernel.ok("survivor = 'here'")
        threading.Timer(0.5, _interrupt_by_message, (kernel,)).start()
        assert (
            kernel.run("import time\nwhile True:\n    time.sleep(0.01)").reply["ename"] == "KeyboardInterrupt"
        )
        res = kernel.ok("time.sleep(1.5)\nsurvivor")
        assert res.of("execute_result")[0]["data"]["text/plain"] == "'here'"
    finally:
        stop_kernel(km, kc)


def test_grace_error_says_the_cell_went_on_printing() -> None:
    # A cell that swallows KeyboardInterrupt is Python, not native code: the error says what it saw.
    km, kc = start_kernel(extra_arguments=["--WorkerManager.interrupt_grace=1"])
    kernel = Kernel(km, kc)
    try:
        threading.Timer(0.5, _interrupt_by_message, (kernel,)).start()
        res = kernel.run(
            "import time\nwhile True:\n    try:\n        print('tick', flush=True)\n        time.sleep(0.05)\n"
            "    except KeyboardInterrupt:\n        pass"
        )
        assert res.reply["ename"] == "WorkerDied"
        assert "went on sending output" in res.reply["evalue"] and "native code" not in res.reply["evalue"]
        assert kernel.ok("'next cell'").of("execute_result")
    finally:
        stop_kernel(km, kc)


def test_interrupt_during_input_ends_the_cell(crash_kernel: Kernel) -> None:
    asked = threading.Event()

    def never_answer(content: dict) -> str:
        asked.set()
        _interrupt_by_message(crash_kernel)
        time.sleep(1.0)
        return "too late"

    res = crash_kernel.run("input('waiting forever')", stdin=never_answer)
    assert asked.is_set()
    assert res.reply["ename"] == "KeyboardInterrupt"
    assert crash_kernel.ok("'input still usable'").of("execute_result")


def test_interrupt_of_jitted_xla_loop_kills_and_replaces_worker(crash_kernel: Kernel) -> None:
    crash_kernel.ok("lost_variable = 1")
    pid = crash_kernel.worker_pid()
    crash_kernel.ok(
        "import jax, jax.numpy as jnp\n"
        "spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, lambda i, v: jnp.sin(v) + 1.0, x))"
    )
    threading.Timer(1.5, _interrupt_by_message, (crash_kernel,)).start()
    started = time.monotonic()
    res = crash_kernel.run("spin(jnp.zeros(16)).block_until_ready()")
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 3.0 + 4.0, "grace period (3 s) plus a few seconds"
    assert res.reply["ename"] == "WorkerDied"
    assert "interrupt" in res.reply["evalue"] and "variables were lost" in res.reply["evalue"]
    assert "native code" in res.reply["evalue"]
    assert process_gone(pid, 5)
    assert crash_kernel.km.is_alive()
    assert crash_kernel.run("lost_variable").reply["ename"] == "NameError"
    assert crash_kernel.worker_pid() != pid


CRASHES = {
    "exit-code": ("import os; os._exit(3)", "exited with code 3"),
    "segfault": ("import ctypes; ctypes.string_at(0)", "SIGSEGV"),
    "oom-kill": ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "likely out of memory"),
    "abort": ("import os; os.abort()", "SIGABRT"),
}


@pytest.mark.parametrize("kind", list(CRASHES))
def test_crash_during_cell_is_reported_and_next_cell_runs(crash_kernel: Kernel, kind: str) -> None:
    code, expected = CRASHES[kind]
    crash_kernel.ok("doomed = True")
    pid = crash_kernel.worker_pid()
    res = crash_kernel.run(code)
    assert res.reply["status"] == "error"
    assert res.reply["ename"] == "WorkerDied"
    assert expected in res.reply["evalue"]
    assert "while running this cell" in res.reply["evalue"]
    assert res.error is not None and res.error["evalue"] == res.reply["evalue"]
    assert crash_kernel.km.is_alive()
    assert crash_kernel.ok("6 * 7").of("execute_result")[0]["data"]["text/plain"] == "42"
    assert crash_kernel.run("doomed").reply["ename"] == "NameError"
    assert crash_kernel.worker_pid() != pid


def test_segfault_report_quotes_the_python_stack(crash_kernel: Kernel) -> None:
    res = crash_kernel.run(
        "import ctypes\ndef dereference_null():\n    ctypes.string_at(0)\ndereference_null()"
    )
    assert res.reply["ename"] == "WorkerDied"
    assert "dereference_null" in "\n".join(res.reply["traceback"])


def test_crash_between_cells_is_reported_on_the_next_cell(crash_kernel: Kernel) -> None:
    crash_kernel.ok("import os, threading; threading.Timer(0.2, os._exit, (5,)).start()")
    time.sleep(1.5)
    res = crash_kernel.run("print('should not run')")
    assert res.reply["ename"] == "WorkerDied"
    assert "exited with code 5" in res.reply["evalue"]
    assert "not run" in res.reply["evalue"]
    assert "should not run" not in res.stdout
    assert crash_kernel.ok("'works again'").of("execute_result")


def test_execution_count_continues_after_a_crash(crash_kernel: Kernel) -> None:
    before = crash_kernel.ok("1").reply["execution_count"]
    crashed = crash_kernel.run("import os; os._exit(1)")
    after = crash_kernel.ok("1").reply["execution_count"]
    # The crashed cell keeps its own number (the one its execute_input showed), as frontends
    # pair In [n] with the reply; the next cell takes the one after it.
    assert crashed.reply["execution_count"] == before + 1
    assert after == before + 2


def test_restart_gives_a_fresh_worker_and_leaves_no_process(fresh_kernel: Kernel) -> None:
    fresh_kernel.ok("before_restart = 1")
    pid = fresh_kernel.worker_pid()
    fresh_kernel.km.restart_kernel(now=False)
    fresh_kernel.kc.wait_for_ready(timeout=60)
    assert fresh_kernel.run("before_restart").reply["ename"] == "NameError"
    assert fresh_kernel.worker_pid() != pid
    assert process_gone(pid, 5)


def test_shutdown_leaves_no_process_behind() -> None:
    km, kc = start_kernel()
    kernel = Kernel(km, kc)
    pid = kernel.worker_pid()
    kernel_pid = km.provisioner.process.pid
    stop_kernel(km, kc)
    assert process_gone(kernel_pid, 10)
    assert process_gone(pid, 5)


def test_worker_exits_when_the_kernel_is_killed() -> None:
    km, kc = start_kernel()
    kernel = Kernel(km, kc)
    pid = kernel.worker_pid()
    kc.execute("import time; time.sleep(60)")  # busy in a cell, not waiting on the wire
    time.sleep(0.5)
    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    try:
        assert process_gone(pid, 3), "the worker must not outlive its kernel"
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_interrupt_between_cells_is_harmless(crash_kernel: Kernel) -> None:
    crash_kernel.ok("idle_state = 'kept'")
    _interrupt_by_message(crash_kernel)
    _interrupt_by_signal(crash_kernel)
    time.sleep(0.5)
    assert execute(crash_kernel.kc, "idle_state").of("execute_result")[0]["data"]["text/plain"] == "'kept'"
