"""Shared fixtures: the real `jax` kernel, started through jupyter_client as a frontend would.

The environment is isolated before any kernel starts: IPython's history database and
Jupyter's data/runtime dirs and the caches point into a temporary directory, so a kernelspec installed
by hand in ~/.local cannot shadow the one under test and tests never touch user files.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager
from jupyter_client.blocking import BlockingKernelClient

# The plumbing the benches share (bench/harness.py), importable from a fresh clone however pytest
# was started (``python -m pytest`` puts the root on sys.path, the ``pytest`` script does not).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.harness import (  # noqa: E402
    KERNEL_NAME,
    TIMEOUT,
    Result,
    execute,
    isolate_environment,
    process_gone,
    start_kernel,
    stop_kernel,
    worker_pids,
)

_TMP = isolate_environment()

# What the test modules import from here (``from conftest import ...``), the harness's names among them.
__all__ = [
    "KERNEL_NAME",
    "TIMEOUT",
    "Kernel",
    "Result",
    "execute",
    "kernel_command_line",
    "process_gone",
    "request",
    "shell_replies",
    "start_kernel",
    "stop_kernel",
    "worker_pids",
]


def kernel_command_line(connection_file: str, *args: str) -> tuple[int, str]:
    """Run ``python -m jax_kernel`` with these arguments as a launcher would: (exit code, output).

    For settings that must stop the kernel before any frontend could connect.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "jax_kernel", *args, "-f", connection_file],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout + proc.stderr


def shell_replies(kc: BlockingKernelClient, *msg_ids: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """The reply contents to these shell requests, in the order asked; other replies are skipped."""
    got: dict[str, dict[str, Any]] = {}
    while not set(msg_ids) <= got.keys():
        reply = kc.get_shell_msg(timeout=timeout)
        msg_id = reply["parent_header"].get("msg_id")
        if msg_id in msg_ids:
            got[msg_id] = reply["content"]
    return [got[m] for m in msg_ids]


def request(kc: BlockingKernelClient, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Send a shell request (complete, inspect, history, ...) and return its reply content."""
    return shell_replies(kc, getattr(kc, method)(*args, **kwargs))[0]


@dataclass
class Kernel:
    km: KernelManager
    kc: BlockingKernelClient

    def run(self, code: str, **kwargs: Any) -> Result:
        return execute(self.kc, code, **kwargs)

    def ok(self, code: str, **kwargs: Any) -> Result:
        """Run a cell that must succeed."""
        res = execute(self.kc, code, **kwargs)
        assert res.reply["status"] == "ok", (res.reply, res.outputs)
        return res

    def worker_pid(self) -> int:
        return int(self.ok("import os; os.getpid()").of("execute_result")[0]["data"]["text/plain"])


@pytest.fixture(scope="session")
def kernel() -> Iterator[Kernel]:
    """One `jax` kernel shared by the tests that leave it as they found it."""
    km, kc = start_kernel()
    yield Kernel(km, kc)
    stop_kernel(km, kc)


@pytest.fixture
def fresh_kernel() -> Iterator[Kernel]:
    """A kernel of its own, for tests that crash, kill or reconfigure it."""
    km, kc = start_kernel()
    yield Kernel(km, kc)
    if km.is_alive():
        stop_kernel(km, kc)
