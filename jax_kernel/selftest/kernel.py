"""The kernel under test: the installed kernelspec, started and driven as a frontend would.

This is the client side, in the self-test's own process; the kernel it starts applies the
sandbox to its worker, and only the cells sent by :meth:`KernelUnderTest.run` run in there.
"""

from __future__ import annotations

import os
import queue
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Any

#: Seconds for the kernel to start and for one cell to answer (unless the attack says more).
TIMEOUT = 120.0


@dataclass
class Outcome:
    """What one cell sent back: its reply and the IOPub messages under it."""

    reply: dict[str, Any]
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        """Everything the cell printed."""
        return "".join(c["text"] for k, c in self.outputs if k == "stream" and c["name"] == "stdout")

    def error(self) -> str:
        """``ename: evalue`` of a failed cell; empty if it succeeded."""
        if self.reply.get("status") == "ok":
            return ""
        return f"{self.reply.get('ename')}: {self.reply.get('evalue')}"


class KernelUnderTest:
    """One kernel of the kernelspec ``kernel_name``, with the sandbox profile given (or as configured)."""

    def __init__(self, kernel_name: str, profile: str | None, log_path: str) -> None:
        self.kernel_name = kernel_name
        self.profile = profile
        self.log_path = log_path
        self.km: Any = None
        self.kc: Any = None
        self.log: IO[str] | None = None
        self.report: dict[str, Any] = {}  # kernel_info's "sandbox": what the worker says it applied
        self.output_limit: int | None = None

    def start(self, cwd: str, env: dict[str, str]) -> None:
        """Start it in ``cwd`` with ``env`` added to ours, run a first cell, read its kernel_info."""
        from jupyter_client.manager import KernelManager

        args = [f"--Sandbox.profile={self.profile}"] if self.profile else []
        self.km = KernelManager(kernel_name=self.kernel_name)
        # The kernel's own log goes to a file (shown if it fails), not between the table's lines.
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.km.start_kernel(
            extra_arguments=args,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.run("1")
        msg_id = self.kc.kernel_info()
        while True:
            reply = self.kc.get_shell_msg(timeout=TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                self.report = reply["content"].get("sandbox") or {}
                self.output_limit = reply["content"].get("output_limit")
                break

    def run(self, code: str, timeout: float = TIMEOUT) -> Outcome:
        """Run one cell; its reply and outputs once the kernel is idle again."""
        msg_id = self.kc.execute(code, allow_stdin=False)
        outcome = Outcome({})
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer within {timeout:g} s") from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
            elif msg["msg_type"] != "execute_input":
                outcome.outputs.append((msg["msg_type"], msg["content"]))
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                outcome.reply = reply["content"]
                return outcome

    def next_cell_works(self) -> bool:
        """Whether the kernel still runs a cell after an attack."""
        return self.run("6 * 7").reply.get("status") == "ok"

    def restart(self) -> None:
        """Restart it as a frontend's restart does, and wait until it answers."""
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def is_alive(self) -> bool:
        """Whether its process still runs."""
        return bool(self.km.is_alive())

    def kernel_log(self) -> str:
        """What the kernel wrote to stdout and stderr ("" if it wrote nothing yet)."""
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the channels and the kernel, and close its log."""
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None and self.km.has_kernel:
            self.km.shutdown_kernel(now=True)
        if self.log is not None:
            self.log.close()
