"""Resource usage: ``usage_request`` reports the worker (where the user's memory is), and ``%jax_memory``.

Driven through jupyter_client as jupyter-resource-usage's "Kernel usage" panel drives it: a
``usage_request`` on the control channel, answered by ``usage_reply``.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest
from conftest import TIMEOUT, Kernel, shell_replies
from jupyter_client.blocking import BlockingKernelClient

from jax_kernel.protocol import wire

MB = 1 << 20


def usage(kc: BlockingKernelClient, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send a usage_request on the control channel and return the usage_reply's content."""
    msg = kc.session.msg("usage_request", {})
    kc.control_channel.send(msg)
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.control_channel.get_msg(timeout=max(deadline - time.monotonic(), 0.1))
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["msg_type"] == "usage_reply"
            return reply["content"]


def kernel_rss(kernel: Kernel) -> int:
    return psutil.Process(kernel.km.provisioner.process.pid).memory_info().rss


def test_usage_reply_is_the_worker_memory_not_the_kernel(kernel: Kernel) -> None:
    worker = kernel.worker_pid()
    before, kernel_before = usage(kernel.kc), kernel_rss(kernel)
    assert before["pid"] == worker
    assert before["kernel_pid"] == kernel.km.provisioner.process.pid
    for field in ("kernel_cpu", "kernel_memory", "cpu_count", "host_virtual_memory"):
        assert field in before, before
    kernel.ok("import numpy as np\n_usage_block = np.ones(25_000_000)  # 200 MB, every page touched")
    try:
        after = usage(kernel.kc)
        assert after["kernel_memory"] - before["kernel_memory"] >= 150 * MB, (before, after)
        assert kernel_rss(kernel) - kernel_before < 50 * MB  # the kernel process itself did not grow
    finally:
        kernel.ok("del _usage_block")


def test_usage_reply_comes_while_a_cell_runs(kernel: Kernel) -> None:
    kernel.ok("import jax.numpy as jnp\n_usage_x = jnp.ones(4)")
    cell = kernel.kc.execute("import time\ntime.sleep(4)")
    time.sleep(0.5)
    start = time.monotonic()
    reply = usage(kernel.kc, timeout=3)
    assert time.monotonic() - start < 2
    assert reply["kernel_memory"] > 0
    # The worker's usage thread answered beside the sleeping cell: the device part is there.
    assert reply["devices_status"] == "ok"
    (done,) = shell_replies(kernel.kc, cell)
    assert done["status"] == "ok"
    kernel.ok("del _usage_x")


def test_usage_lists_devices_once_jax_runs(kernel: Kernel) -> None:
    kernel.ok("import jax.numpy as jnp\n_usage_x = jnp.ones(4)")
    reply = usage(kernel.kc)
    assert reply["devices_status"] == "ok"
    (device,) = reply["devices"]  # the tests run JAX_PLATFORMS=cpu
    assert device["platform"] == "cpu" and device["id"] == 0
    assert "bytes_in_use" not in device  # CPU devices keep no statistics: nothing is made up
    kernel.ok("del _usage_x")


def test_a_worker_that_answers_badly_or_late_costs_only_the_device_part(kernel: Kernel) -> None:
    patch = "import jax_kernel.worker.memory as _m\n_usage_orig = _m.device_memory\n_m.device_memory = {}"
    restore = "_m.device_memory = _usage_orig\ndel _m, _usage_orig"
    hostile = "lambda: {'jax': 'ok', 'devices': [{'id': 0, 'platform': 'x' * 10**6, 'kind': 'k'}]}"
    kernel.ok(patch.format(hostile))
    try:
        reply = usage(kernel.kc)
        assert reply["devices_status"] == "unavailable" and "devices" not in reply
        assert reply["kernel_memory"] > 0
    finally:
        kernel.ok(restore)
    kernel.ok(patch.format("lambda: __import__('time').sleep(3) or _usage_orig()"))
    try:
        start = time.monotonic()
        reply = usage(kernel.kc)
        assert time.monotonic() - start < 2.5  # JaxKernel.usage_timeout is 1 s
        assert reply["devices_status"] == "unavailable" and reply["kernel_memory"] > 0
    finally:
        time.sleep(2.5)  # let the slow answer finish before the original comes back
        kernel.ok(restore)
    assert usage(kernel.kc)["devices_status"] in ("ok", "jax_not_started")


def test_usage_and_jax_memory_never_start_jax(fresh_kernel: Kernel) -> None:
    assert usage(fresh_kernel.kc)["devices_status"] in ("jax_not_started", "unavailable")
    out = fresh_kernel.ok("%jax_memory").of("display_data")[0]["data"]["text/plain"]
    assert "JAX has not started" in out and "host RSS" in out
    res = fresh_kernel.ok("import sys\n'jax' in sys.modules")
    assert res.of("execute_result")[0]["data"]["text/plain"] == "False"
    fresh_kernel.ok("import jax")  # imported, but no backend yet
    assert usage(fresh_kernel.kc)["devices_status"] == "jax_not_started"
    fresh_kernel.ok("%jax_memory")
    res = fresh_kernel.ok("from jax._src import xla_bridge\nxla_bridge.backends_are_initialized()")
    assert res.of("execute_result")[0]["data"]["text/plain"] == "False"


def test_jax_memory_shows_live_arrays_and_rss(kernel: Kernel) -> None:
    kernel.ok("import jax.numpy as jnp\n_mem_probe, _mem_small = jnp.zeros((256, 1024)), jnp.ones(3)")
    try:
        (shown,) = kernel.ok("%jax_memory --top 50").of("display_data")
        text, page = shown["data"]["text/plain"], shown["data"]["text/html"]
        assert "(256, 1024)" in text and "float32" in text and "1.0 MiB" in text
        assert "host RSS" in text and "MiB" in text.split("host RSS")[1]
        assert "keep no memory statistics" in text  # CPU: memory_stats() is None, and it says so
        assert "<table>" in page and "(256, 1024)" in page
        top1 = kernel.ok("%jax_memory --top 1").of("display_data")[0]["data"]["text/plain"]
        assert "the 1 largest shown" in top1
    finally:
        kernel.ok("del _mem_probe, _mem_small")


GPU = {
    "id": 0,
    "platform": "gpu",
    "kind": "H100",
    "bytes_in_use": 10,
    "peak_bytes_in_use": 20,
    "bytes_limit": 30,
}


def test_wire_keeps_only_known_bounded_usage_fields() -> None:
    checked = wire.validate_usage_reply(
        {"jax": "ok", "devices": [{**GPU, "extra": "x" * 10**6}, {"id": 1, "platform": "cpu", "kind": "cpu"}]}
    )
    assert checked == {"jax": "ok", "devices": [GPU, {"id": 1, "platform": "cpu", "kind": "cpu"}]}
    assert wire.validate_usage_reply({"jax": "not_started"}) == {"jax": "not_started", "devices": []}


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"jax": "maybe", "devices": []},
        {"jax": "ok", "devices": {}},
        {"jax": "ok", "devices": [GPU] * (wire.USAGE_MAX_DEVICES + 1)},
        {"jax": "ok", "devices": ["gpu"]},
        {"jax": "ok", "devices": [{**GPU, "id": True}]},
        {"jax": "ok", "devices": [{**GPU, "id": -1}]},
        {"jax": "ok", "devices": [{**GPU, "bytes_in_use": 1.5}]},
        {"jax": "ok", "devices": [{**GPU, "bytes_limit": 1 << 70}]},
        {"jax": "ok", "devices": [{**GPU, "kind": "k" * (wire.USAGE_MAX_TEXT + 1)}]},
        {"jax": "ok", "devices": [{**GPU, "platform": None}]},
    ],
)
def test_wire_rejects_a_bad_usage_reply(content: dict[str, Any]) -> None:
    with pytest.raises(wire.WireError):
        wire.validate_usage_reply(content)
