"""The notebooks under ``notebooks/`` run on the ``jax`` kernel and reproduce their stored outputs.

nbval runs in a pytest subprocess so that plain ``pytest`` covers the notebooks without
``--nbval`` applying to the rest of the suite.  The subprocess inherits the environment
that conftest isolated (IPython and Jupyter dirs in a temporary directory), so the
kernel it starts is the ``jax`` kernelspec installed in this environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

pytestmark = pytest.mark.timeout(300)


def test_notebooks_exist() -> None:
    assert sorted(NOTEBOOKS.glob("*.ipynb")), f"no notebooks in {NOTEBOOKS}"


def test_notebooks_pass_nbval() -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        str(NOTEBOOKS),
        "--nbval-kernel-name",
        "jax",
        "--nbval-cell-timeout",
        "60",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        # The notebooks' own cells, not this repository's tests/ and its conftest.
        "--rootdir",
        str(NOTEBOOKS),
        "-c",
        os.devnull,
    ]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL
    )
    output = f"$ {' '.join(cmd)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert " passed" in proc.stdout and " failed" not in proc.stdout, output
