"""The self-test a deployer runs: ``python -m jax_kernel selftest`` and ``%sandbox --selftest``.

On this machine every attack must be contained under both profiles (the self-test is part of CI),
and with the sandbox off it must say so and fail.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import Kernel

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only"),
    pytest.mark.timeout(600),  # a kernel of its own and a fork bomb, on a loaded 2-core machine
]

ATTACKS = 13


def selftest(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "jax_kernel", "selftest", *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout + proc.stderr


def rows(output: str) -> dict[str, str]:
    """attack -> result, from the printed table."""
    table = output.split("-- --------\n", 1)[1].split("\n\n", 1)[0]
    found = {}
    for line in table.splitlines():
        for result in ("NOT contained", "allowed by policy", "contained"):
            if f"  {result} " in line:
                found[line.split(f"  {result} ")[0].strip()] = result
                break
    return found


def test_strict_contains_every_attack() -> None:
    code, out = selftest("--profile", "strict")
    assert code == 0, out
    got = rows(out)
    assert len(got) == ATTACKS, out
    # strict sanitizes active outputs: nothing is left to policy
    assert set(got.values()) == {"contained"}, out


def test_with_the_sandbox_off_it_says_what_gets_out() -> None:
    code, out = selftest("--profile", "off")
    assert code == 1, out
    got = rows(out)
    for attack in (
        "write a file outside the notebook folder",
        "change a host file's ACL, xattrs, times or mode",
        "read the kernel's connection file (its signing key)",
    ):
        assert got[attack] == "NOT contained", out
    assert "NOT contained: " in out.splitlines()[-1]


def test_a_notebook_runs_it_through_the_kernel(kernel: Kernel) -> None:
    """``%sandbox --selftest`` in the default (standard) profile: the kernel runs the battery in
    a process of its own and the cell shows the table; the cell's own kernel is not attacked."""
    before = kernel.worker_pid()
    res = kernel.run("%sandbox --selftest", timeout=600)
    assert res.reply["status"] == "ok", res.outputs
    got = rows(res.stdout)
    assert len(got) == ATTACKS, res.stdout
    assert "NOT contained" not in got.values(), res.stdout
    assert f"{ATTACKS} of {ATTACKS} contained or allowed by policy" in res.stdout
    assert kernel.worker_pid() == before


def test_a_bad_option_gets_one_line() -> None:
    code, out = selftest("--profile", "lax")
    assert code == 2
    assert "invalid choice: 'lax'" in out


def test_an_interrupt_ends_the_battery_and_its_kernel(kernel: Kernel) -> None:
    """Interrupting ``%sandbox --selftest`` ends the cell, and the self-test's own process, its
    kernel, bystander and decoy folder go with it (the kernel sends it SIGTERM)."""
    import glob
    import os
    import threading
    import time

    def selftests() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"jax_kernel\0selftest" in f.read():
                        found.append(int(entry))
            except (OSError, ValueError):
                continue
        return found

    def interrupt_request() -> None:
        # As a frontend with interrupt_mode "message" sends it: no SIGINT reaches the kernel's
        # process group (with a signal, the self-test's process would get it directly).
        kernel.kc.control_channel.send(kernel.kc.session.msg("interrupt_request", {}))

    before = set(glob.glob("/var/tmp/jax-kernel-selftest-*"))
    timer = threading.Timer(3, interrupt_request)  # the battery takes 20 s or more
    timer.start()
    try:
        res = kernel.run("%sandbox --selftest", timeout=120)
    finally:
        timer.cancel()
    assert res.reply["status"] == "error" and res.reply["ename"] == "KeyboardInterrupt", res.reply
    deadline = time.monotonic() + 10  # it ends at once, well before the battery would have
    while (
        selftests() or set(glob.glob("/var/tmp/jax-kernel-selftest-*")) - before
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not selftests()
    assert not set(glob.glob("/var/tmp/jax-kernel-selftest-*")) - before
    assert kernel.ok("6 * 7").of("execute_result")[0]["data"]["text/plain"] == "42"
