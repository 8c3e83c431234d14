"""complete, inspect, is_complete, history and kernel_info, answered from the worker's state."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from conftest import Kernel, request

import jax_kernel


def test_completion_sees_worker_namespace(kernel: Kernel) -> None:
    kernel.ok("import jax.numpy as jnp\nmy_worker_variable = 3")
    reply = request(kernel.kc, "complete", "jnp.", 4)
    assert {"arange", "zeros", "einsum", "linalg"} <= set(m.split(".")[-1] for m in reply["matches"])
    assert reply["cursor_end"] == 4
    reply = request(kernel.kc, "complete", "my_worker_v", 11)
    assert "my_worker_variable" in reply["matches"]
    assert reply["cursor_start"] == 0


def test_inspection_sees_worker_objects(kernel: Kernel) -> None:
    kernel.ok("def documented_in_worker(a, b=2):\n    '''Adds with care.'''\n    return a + b")
    reply = request(kernel.kc, "inspect", "documented_in_worker", 5, 0)
    assert reply["found"] is True
    text = re.sub(r"\x1b\[[0-9;]*m", "", reply["data"]["text/plain"])
    assert "Adds with care." in text and "a, b=2" in text
    assert request(kernel.kc, "inspect", "no_such_name_anywhere", 3, 0)["found"] is False


def test_is_complete(kernel: Kernel) -> None:
    assert request(kernel.kc, "is_complete", "x = 1")["status"] == "complete"
    reply = request(kernel.kc, "is_complete", "for i in range(3):")
    assert reply["status"] == "incomplete" and reply["indent"] == "    "
    assert request(kernel.kc, "is_complete", "x = )")["status"] == "invalid"


def test_history_comes_from_the_worker(kernel: Kernel) -> None:
    kernel.ok("history_marker_cell = 'hm'")
    reply = request(kernel.kc, "history", hist_access_type="tail", n=5, output=False, raw=True)
    assert any(entry[2] == "history_marker_cell = 'hm'" for entry in reply["history"])
    reply = request(
        kernel.kc, "history", hist_access_type="search", pattern="history_marker*", output=False, raw=True
    )
    assert reply["history"]


def test_kernel_info(kernel: Kernel) -> None:
    info = request(kernel.kc, "kernel_info")
    assert info["implementation"] == "jax-kernel"
    assert info["implementation_version"] == jax_kernel.__version__
    lang = info["language_info"]
    assert lang["name"] == "python"
    assert lang["version"] == sys.version.split()[0]
    assert lang["mimetype"] == "text/x-python"
    assert lang["file_extension"] == ".py"
    assert lang["pygments_lexer"] == "ipython3"
    assert lang["codemirror_mode"] == {"name": "ipython", "version": 3}
    assert (
        "debugger" in info["supported_features"] and info["debugger"] is True
    )  # the worker's, see test_debugger


def test_banner_names_jax_version_once_loaded(kernel: Kernel) -> None:
    kernel.ok("import jax")
    banner = request(kernel.kc, "kernel_info")["banner"]
    assert f"JAX {metadata.version('jax')} (loaded)" in banner
