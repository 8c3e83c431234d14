"""The worker asking the kernel from a running cell: ``input()``, ``getpass()``, the self-test.

The answer comes over the wire on the main shell's queue (an ``input_reply``, ``selftest_done``),
so only the main shell's cell may ask: the frontend's stdin belongs to it, and a subshell's cell,
which runs beside it, could never be answered.  Output written so far goes out first, and an
interrupt ends the wait (the gate records SIGINT while the worker is not in user code).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from IPython.core.error import StdinNotImplementedError


class KernelQuestions:
    """What a cell asks the kernel, and waits for."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        stdout: Any,
        stderr: Any,
        gate: Any,
        inbox: Callable[[], Any],
    ) -> None:
        self._emit = emit
        self._streams = (stdout, stderr)
        self._gate = gate
        self._inbox = inbox  # the main shell's queue (made after this)
        self.allow_stdin: Callable[[], bool] = lambda: False  # the running cell's frontend answers

    def ask(self, request: dict[str, Any], answer: str) -> dict[str, Any]:
        """Send ``request`` from the running cell and wait for the kernel's ``answer``."""
        _main_shell_only()
        for stream in self._streams:
            stream.flush_now()
        self._gate.close()
        try:
            self._emit(request)
            while True:
                if self._gate.pending:
                    self._gate.pending = False
                    raise KeyboardInterrupt("Interrupted by user")
                msg = self._inbox().get(timeout=0.1)
                if msg is not None and msg["type"] == answer:
                    return msg
        finally:
            self._gate.open()

    def selftest(self) -> int:
        """``%sandbox --selftest``: the kernel runs it and prints its table into this cell; its exit status."""
        return int(self.ask({"type": "selftest"}, "selftest_done").get("status", 2))

    def _input_request(self, prompt: str, password: bool) -> str:
        _main_shell_only()
        if not self.allow_stdin():
            raise StdinNotImplementedError(
                "input was called, but this frontend does not support input requests."
            )
        request = {"type": "input_request", "prompt": str(prompt), "password": password}
        value = str(self.ask(request, "input_reply").get("value", ""))
        if value == "\x04":
            raise EOFError
        return value

    def raw_input(self, prompt: object = "") -> str:
        """``input()`` for cell code: an ``input_request`` to the frontend."""
        return self._input_request(str(prompt), password=False)

    def getpass(self, prompt: str = "Password: ", stream: Any = None) -> str:
        """``getpass.getpass()`` for cell code: a password ``input_request``."""
        return self._input_request(prompt, password=True)


def _main_shell_only() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise StdinNotImplementedError(
            "input() and %sandbox --selftest work in the main shell only, not in a subshell "
            "(run that cell in the notebook)"
        )
