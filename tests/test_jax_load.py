"""load_jax_library: settings before JAX starts, worker replacement after, clear errors.

The module's kernel starts workers with ``x64`` on (``WorkerManager.jax_settings``), so a
cell that just imports JAX gets the kernel's defaults.  The tests run in file order: the
first loads JAX into a fresh worker, later ones ask for settings that need a new worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import jax
import pytest
from conftest import Kernel, start_kernel, stop_kernel

from jax_kernel.client import JaxClient


@pytest.fixture(scope="module")
def lk() -> Iterator[Kernel]:
    km, kc = start_kernel(extra_arguments=["--WorkerManager.jax_settings=x64=true"])
    yield Kernel(km, kc)
    stop_kernel(km, kc)


@pytest.fixture(scope="module")
def client(lk: Kernel) -> JaxClient:
    return JaxClient(lk.kc, timeout=60)


def _text(res) -> str:
    return res.of("execute_result")[0]["data"]["text/plain"]


def test_first_load_applies_settings_without_replacing(lk: Kernel) -> None:
    lk.ok("kept = 'before load'")
    pid = lk.worker_pid()
    # The worker's own temp dir: the sandbox lets a worker write only where its policy says.
    res = lk.ok("import os, tempfile\ncache = os.path.join(tempfile.mkdtemp(), 'cache')\ncache")
    cache = res.of("execute_result")[0]["data"]["text/plain"].strip("'")
    res = lk.ok("%load_jax --host-devices 2 --cache-dir $cache --matmul-precision highest")
    data = res.of("execute_result")[0]["data"]
    assert "<table>" in data["text/html"] and "jax_version" in data["text/html"]
    text = data["text/plain"]
    assert f"jax_version: {jax.__version__}" in text
    assert "device_count: 2" in text and "x64: True" in text  # x64 from the kernel's jax_settings
    assert f"compilation_cache_dir: {cache}" in text and "matmul_precision: highest" in text
    assert "  1: cpu (cpu)" in text
    assert lk.worker_pid() == pid
    assert (
        _text(lk.ok("import jax.numpy as jnp\nkept, str(jnp.ones(1).dtype)")) == "('before load', 'float64')"
    )


def test_message_load_reports_versions_and_devices(client: JaxClient) -> None:
    reply = client.load_jax()
    assert reply["status"] == "ok", reply
    assert "worker_replaced" not in reply
    info = reply["info"]
    assert info["jax_version"] == jax.__version__ and info["backend"] == "cpu"
    assert [d["id"] for d in info["devices"]] == [0, 1]
    assert {"id", "platform", "kind", "memory"} <= set(info["devices"][0])
    assert set(reply["data"]) == {"text/plain", "text/html", "application/json"}


@pytest.mark.parametrize(
    "settings, ename, fragment",
    [
        ({"platform": "cuda"}, "JaxLoadError", "platform 'cuda' is not available"),
        ({"devices": [0, 7]}, "JaxLoadError", "device 7 not present; present: cpu: 2 devices (0, 1)"),
        ({"platform": "quantum"}, "JaxRequestError", "unknown platform 'quantum'"),
        ({"host_device_count": "two"}, "JaxRequestError", "must be int"),
        ({"host_device_count": 0}, "JaxRequestError", "between 1 and 1024"),
        ({"gpus": 2}, "JaxRequestError", "unknown jax_load_request field(s) gpus"),
    ],
)
def test_load_errors_keep_the_worker(
    lk: Kernel, client: JaxClient, settings: dict, ename: str, fragment: str
) -> None:
    pid = lk.worker_pid()
    reply = client.load_jax(**settings)
    assert reply["status"] == "error" and reply["ename"] == ename, reply
    assert fragment in reply["evalue"]
    assert lk.worker_pid() == pid
    assert _text(lk.ok("kept")) == "'before load'"


def test_magic_and_function_errors(lk: Kernel) -> None:
    res = lk.run("%load_jax --platform cuda")
    assert res.reply["ename"] == "JaxLoadError" and "present: cpu: 2 devices" in res.reply["evalue"]
    assert len(res.reply["traceback"]) == 1
    res = lk.run("%load_jax --host-devices many")
    assert res.reply["ename"] == "UsageError"
    res = lk.run("load_jax_library(devices='0,x')")
    assert res.reply["ename"] == "JaxLoadError" and "ids such as '0,2'" in res.reply["evalue"]
    res = lk.run("load_jax_library(compilation_cache_dir='/proc/no-cache-here')")
    assert res.reply["ename"] == "JaxLoadError" and "is not writable here" in res.reply["evalue"]


def test_new_startup_settings_replace_the_worker_with_a_warning(lk: Kernel) -> None:
    pid = lk.worker_pid()
    before = lk.ok("1").reply["execution_count"]
    res = lk.ok("%load_jax --host-devices 3")
    assert "all variables are lost" in res.stderr and "host_device_count 2 -> 3" in res.stderr
    assert "device_count: 3" in res.of("display_data")[0]["data"]["text/plain"]
    assert res.reply["execution_count"] == before + 1
    assert lk.worker_pid() != pid
    assert lk.run("kept").reply["ename"] == "NameError"
    # Settings applied before still hold (x64 from the kernel's defaults).
    assert _text(lk.ok("import jax\nlen(jax.devices()), jax.config.jax_enable_x64")) == "(3, True)"


def test_message_replacement_survives_a_crash_restart(lk: Kernel, client: JaxClient) -> None:
    pid = lk.worker_pid()
    reply = client.load_jax(host_device_count=4, x64=False)
    assert reply["status"] == "ok", reply
    assert reply["worker_replaced"] is True and "all variables are lost" in reply["warning"]
    assert reply["info"]["device_count"] == 4 and reply["info"]["x64"] is False
    assert lk.worker_pid() != pid
    assert lk.run("import os; os._exit(3)").reply["ename"] == "WorkerDied"
    # The replacement worker that took over after the crash starts JAX the same way.
    assert _text(lk.ok("import jax\nlen(jax.devices()), jax.config.jax_enable_x64")) == "(4, False)"


def test_load_in_cell_code_stops_the_rest_of_the_cell(lk: Kernel) -> None:
    res = lk.ok("load_jax_library(host_device_count=1)\nnot_run = True")
    assert "Code after it in this cell did not run" in res.stderr
    assert lk.run("not_run").reply["ename"] == "NameError"
    assert _text(lk.ok("import jax\nlen(jax.devices())")) == "1"


def test_missing_platform_before_jax_starts() -> None:
    # JAX_PLATFORMS=cuda without a GPU fails with a bare AssertionError inside JAX: explained here.
    km, kc = start_kernel()
    try:
        reply = JaxClient(kc, timeout=60).load_jax(platform="cuda")
        assert reply["ename"] == "JaxLoadError", reply
        assert "platform 'cuda' is not available" in reply["evalue"] and "present: cpu" in reply["evalue"]
        # JAX stays usable on what is there.
        assert _text(Kernel(km, kc).ok("import jax.numpy as jnp\nfloat(jnp.ones(3).sum())")) == "3.0"
    finally:
        stop_kernel(km, kc)


def test_worker_death_during_a_request_is_an_error_reply(lk: Kernel, client: JaxClient) -> None:
    reply = client.transform("jit", "lambda x: __import__('os')._exit(3)", "1.0")
    assert reply["status"] == "error" and reply["ename"] == "WorkerDied", reply
    assert "exited with code 3" in reply["evalue"]
    assert re.search(r"restored \d+ of \d+ variables?|all variables were lost", reply["evalue"]), reply[
        "evalue"
    ]
    again = client.transform("grad", "lambda x: x * x", "3.0")
    assert again["status"] == "ok" and again["data"]["application/json"]["values"] == 6.0
    assert lk.ok("1").reply["status"] == "ok"  # no stale death report for the next cell


def test_functions_are_in_every_namespace_even_after_reset(lk: Kernel) -> None:
    res = lk.ok(
        "%reset -f\n[callable(globals().get(n)) for n in ('load_jax_library', 'execute_jax_transformation', "
        "'execute_jax_program', 'export_jax_program')]"
    )
    assert _text(res) == "[True, True, True, True]"
    assert "load_jax_library" not in lk.ok("%who_ls").of("execute_result")[0]["data"]["text/plain"]
