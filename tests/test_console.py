"""The real terminal frontend, ``jupyter console --kernel jax``, driven through a pseudo-terminal.

The console finds the ``jax`` kernelspec installed in this environment (conftest points
Jupyter's user data dir into a temporary directory, so only the installed one is seen),
runs cells in the worker, and on exit leaves no kernel and no worker process behind.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator

import pexpect
import psutil
import pytest

pytestmark = pytest.mark.timeout(180)

STARTUP_TIMEOUT = 60
CELL_TIMEOUT = 60
PROMPT = re.compile(r"In \[(\d+)\]: ")
WORKER_MODULE = "jax_kernel.worker"


def _console_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "jupyter-console")
    argv = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "jupyter_console"]
    return [*argv, "--kernel", "jax", "--ZMQTerminalInteractiveShell.simple_prompt=True"]


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return any(WORKER_MODULE in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """The pids still alive (and not zombies) after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if _alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if _alive(pid)}
    return left


class Console:
    """A running ``jupyter console`` and the transcript of what it printed."""

    def __init__(self) -> None:
        cmd = _console_command()
        env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
        self.child = pexpect.spawn(
            cmd[0],
            cmd[1:],
            env=env,
            encoding="utf-8",
            codec_errors="replace",
            timeout=CELL_TIMEOUT,
            dimensions=(50, 200),
        )
        self.prompt_number = 0

    @property
    def transcript(self) -> str:
        """What the console printed since the last match."""
        return self.child.before if isinstance(self.child.before, str) else ""

    def wait_prompt(self, timeout: float = CELL_TIMEOUT) -> str:
        """Wait for the next ``In [n]:`` prompt; return everything printed since the last one."""
        try:
            self.child.expect(PROMPT, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            raise AssertionError(
                f"no prompt within {timeout} s ({type(e).__name__}); console printed:\n{self.transcript}"
            ) from None
        number = int(self.child.match.group(1))
        assert number > self.prompt_number, f"prompt went from {self.prompt_number} to {number}"
        self.prompt_number = number
        return self.child.before

    def run(self, code: str) -> str:
        """Type one single-line cell; return what it printed before the next prompt."""
        self.child.sendline(code)
        output = self.wait_prompt()
        # The pty echoes the typed line first; drop it so the output cannot match the code itself.
        echoed, _, rest = output.partition("\n")
        assert code in echoed, f"echo of {code!r} not found in {output!r}"
        return rest.replace("\r\n", "\n")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.child.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close(force=True)


@pytest.fixture
def console() -> Iterator[Console]:
    con = Console()
    try:
        yield con
    finally:
        spawned = {p.pid for p in con.descendants()}
        con.close()
        for pid in _wait_gone(spawned, 5):  # a failed test must not leak its kernel or worker
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


@pytest.mark.parametrize("how", ["exit", "ctrl-d"])
def test_console_runs_cells_and_leaves_no_worker(console: Console, how: str) -> None:
    banner = console.wait_prompt(timeout=STARTUP_TIMEOUT)
    assert "jax-kernel" in banner, banner
    assert console.prompt_number == 1

    out = console.run("print(6*7)")
    assert re.search(r"^42$", out, re.MULTILINE), out

    out = console.run("import jax.numpy as jnp; float(jnp.arange(5).sum())")
    assert re.search(r"^Out\[\d+\]: 10\.0$", out, re.MULTILINE), out

    out = console.run("import os; print('worker pid', os.getpid())")
    match = re.search(r"^worker pid (\d+)$", out, re.MULTILINE)
    assert match, out
    cell_pid = int(match.group(1))

    # The cell ran in a worker process started by the console's kernel, not in the kernel.
    descendants = console.descendants()
    workers = {p.pid for p in descendants if _is_worker(p)}
    assert cell_pid in workers, (cell_pid, [(p.pid, p.cmdline()) for p in descendants])
    kernels = {p.pid for p in descendants} - workers
    assert kernels, "the console started no kernel process"
    assert cell_pid != console.child.pid

    if how == "exit":
        console.child.sendline("exit")
    else:
        console.child.sendcontrol("d")
        # jupyter console asks for confirmation on EOF (confirm_exit is on by default).
        index = console.child.expect([r"exit \(\[y\]/n\)\?", pexpect.EOF], timeout=CELL_TIMEOUT)
        if index == 0:
            console.child.sendline("y")
    try:
        console.child.expect(pexpect.EOF, timeout=CELL_TIMEOUT)
    except pexpect.TIMEOUT:
        raise AssertionError(f"the console did not exit; it printed:\n{console.transcript}") from None
    console.child.close()
    assert console.child.exitstatus == 0, (console.child.exitstatus, console.child.signalstatus)

    left = _wait_gone(workers | kernels, 10)
    assert not left, f"processes left behind after the console exited: {left}"
