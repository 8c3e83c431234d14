"""CurveZMQ: the kernel runs where the Jupyter server requires transport encryption.

jupyter_client (8.9+) refuses a kernelspec without ``metadata.supported_encryption`` when
``KernelManager.transport_encryption = "required"``; ipykernel (7.3+) then takes its Curve keys
from the connection file.  Without encryption any local process that reaches the ports reads
every cell (IOPub does not authenticate subscribers); with it, one without the keys gets nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import KERNEL_NAME, TIMEOUT, Kernel
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CurveZMQ")


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kernel, Path]]:
    log = tmp_path_factory.mktemp("curve") / "kernel.log"
    km = KernelManager(kernel_name=KERNEL_NAME, transport_encryption="required")
    with open(log, "wb") as f:  # open as long as the kernel: a restart launches with it again
        km.start_kernel(stderr=f)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=TIMEOUT)
        yield Kernel(km, kc), log
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_a_kernel_that_requires_encryption_starts_runs_and_restarts(encrypted: tuple[Kernel, Path]) -> None:
    k, log = encrypted
    assert "curve_secretkey" in json.loads(Path(k.km.connection_file).read_text())
    assert k.ok("print('over curve')").stdout == "over curve\n"
    k.km.restart_kernel()  # the spare kernel process takes the same keys
    k.kc.wait_for_ready(timeout=TIMEOUT)
    assert k.ok("import jax.numpy as jnp\nprint(int(jnp.arange(4).sum()))").stdout == "6\n"
    assert b"without encryption" not in log.read_bytes()


def test_a_subscriber_without_the_keys_reads_nothing(encrypted: tuple[Kernel, Path]) -> None:
    k, _log = encrypted
    info = json.loads(Path(k.km.connection_file).read_text())
    ctx = zmq.Context.instance()
    spy = ctx.socket(zmq.SUB)
    spy.setsockopt(zmq.SUBSCRIBE, b"")
    spy.setsockopt(zmq.LINGER, 0)
    spy.connect(f"tcp://{info['ip']}:{info['iopub_port']}")
    try:
        time.sleep(0.5)  # a plaintext subscriber would be connected by now
        k.ok("print('secret cell output')")
        got = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if spy.poll(100):
                got.append(spy.recv_multipart())
        assert got == []
    finally:
        spy.close()
