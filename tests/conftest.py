"""Shared fixtures: the real `jax` kernel, started through jupyter_client as a frontend would.

The environment is isolated before any kernel starts: IPython's history database and
Jupyter's data/runtime dirs and the caches point into a temporary directory, so a kernelspec installed
by hand in ~/.local cannot shadow the one under test and tests never touch user files.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jupyter_client import KernelManager
from jupyter_client.blocking import BlockingKernelClient

_TMP = tempfile.mkdtemp(prefix="jax-kernel-tests-")
os.environ["IPYTHONDIR"] = os.path.join(_TMP, "ipython")
os.environ["JUPYTER_DATA_DIR"] = os.path.join(_TMP, "data")
os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(_TMP, "runtime")
# Caches too (the kernels' compilation cache, matplotlib's fonts): a run starts from nothing, as CI
# does, and never fills the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = os.path.join(_TMP, "cache")
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

TIMEOUT = 60
KERNEL_NAME = "jax"


@dataclass
class Result:
    """What a frontend saw for one execute_request: the reply and the IOPub messages."""

    reply: dict[str, Any]
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of(self, msg_type: str) -> list[dict[str, Any]]:
        return [c for t, c in self.outputs if t == msg_type]

    def stream(self, name: str) -> str:
        return "".join(c["text"] for t, c in self.outputs if t == "stream" and c["name"] == name)

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of("error")
        return errors[-1] if errors else None


def start_kernel(
    extra_arguments: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    **km_kwargs: Any,
) -> tuple[KernelManager, BlockingKernelClient]:
    km = KernelManager(**{"kernel_name": KERNEL_NAME, **km_kwargs})
    launch: dict[str, Any] = {"env": env} if env else {}
    if cwd:
        launch["cwd"] = cwd  # the notebook's folder, as a frontend would give it
    km.start_kernel(extra_arguments=extra_arguments or [], **launch)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    return km, kc


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


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def execute(
    kc: BlockingKernelClient,
    code: str,
    timeout: float = TIMEOUT,
    stdin: Callable[[dict[str, Any]], str] | None = None,
    on_output: Callable[[str, dict[str, Any], float], None] | None = None,
    **kwargs: Any,
) -> Result:
    """Run one cell and collect everything up to the idle status, answering input requests."""
    msg_id = kc.execute(code, allow_stdin=stdin is not None, **kwargs)
    outputs: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while True:
        if stdin is not None:
            try:
                req = kc.get_stdin_msg(timeout=0.01)
            except queue.Empty:
                pass
            else:
                if req["parent_header"].get("msg_id") == msg_id:
                    kc.input(stdin(req["content"]))
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no idle status within {timeout} s for {code!r}") from None
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status":
            if msg["content"]["execution_state"] == "idle":
                break
            continue
        if kind == "execute_input":
            continue
        if on_output is not None:
            on_output(kind, msg["content"], time.monotonic())
        outputs.append((kind, msg["content"]))
    while True:
        reply = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
        if reply["parent_header"].get("msg_id") == msg_id:
            return Result(reply["content"], outputs)


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
