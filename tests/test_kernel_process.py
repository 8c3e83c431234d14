"""The kernel process builds nothing that runs user code: no IPython shell, comm manager or debugger.

Those live in the worker; ipykernel's ``IPythonKernel`` would build all three in the kernel process
(and a frontend's messages could reach them).  The kernel app is initialised as ``python -m
jax_kernel`` does, in a process of its own, and asked what it holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, os, sys
from IPython.core.interactiveshell import InteractiveShell
from jax_kernel.kernel.app import JaxKernelApp

app = JaxKernelApp.instance()
app.initialize(["-f", sys.argv[1]])
kernel = app.kernel
found = {
    "kernel_class": sorted(
        {c.__module__ + "." + c.__name__ for c in type(kernel).__mro__}
        & {"ipykernel.kernelbase.Kernel", "ipykernel.ipkernel.IPythonKernel"}
    ),
    "shell": InteractiveShell.initialized() or getattr(app, "shell", None) is not None,
    "comm_manager": hasattr(kernel, "comm_manager"),
    "debugger": hasattr(kernel, "debugger"),
}
with open(sys.argv[2], "w") as f:  # the app has sent sys.stdout to IOPub
    json.dump(found, f)
os._exit(0)
"""


def test_the_kernel_process_builds_no_shell_comm_manager_or_debugger(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "kernel.json"), str(tmp_path / "found.json")],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (tmp_path / "found.json").exists(), proc.stdout + proc.stderr
    found = json.loads((tmp_path / "found.json").read_text())
    assert found == {
        "kernel_class": ["ipykernel.kernelbase.Kernel"],  # the protocol class, not IPython's kernel
        "shell": False,
        "comm_manager": False,
        "debugger": False,
    }
