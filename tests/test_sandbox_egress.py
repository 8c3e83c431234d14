"""User-mode egress (``standard``): the network as before, but not the host's loopback.

Attack 5 of issue 14: a cell subscribed to another kernel's IOPub port over 127.0.0.1 and read
every cell it ran.  Under ``standard`` the worker now sits in a network namespace of its kernel's
own with slirp4netns (host loopback disabled): hosts on the network are reached, the host's own
loopback (other kernels' ports, the Jupyter server, local services) is not, except the ports
the deployer names in ``Sandbox.host_ports``, which the kernel forwards.

"Elsewhere on the network" is a test host this module makes (tests/testhost.py: a namespace and
a veth pair); loopback decoys are servers in this test process that record every connection, so
only code outside the sandbox can write what the assertions read.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel, stop_kernel
from testhost import TestHost, unavailable

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only"),
    pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="slirp4netns is not installed"),
]


class Trap:
    """A loopback server that writes down every connection (TCP) and datagram (UDP) it gets."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.seen: list[str] = []
        for target in (self._accept, self._datagrams):
            threading.Thread(target=target, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                return
            self.seen.append(f"tcp from {peer}")
            if self.reply is not None:
                data = conn.recv(100)
                conn.sendall(self.reply + data)
            conn.close()

    def _datagrams(self) -> None:
        while True:
            try:
                _, peer = self.udp.recvfrom(100)
            except OSError:
                return
            self.seen.append(f"udp from {peer}")

    def close(self) -> None:
        for s in (self.tcp, self.udp):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture(scope="module")
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


@pytest.fixture(scope="module")
def service() -> Iterator[Trap]:
    """A service on the host's loopback that the deployer lets cells reach (Sandbox.host_ports)."""
    t = Trap(reply=b"service:")
    yield t
    t.close()


@pytest.fixture(scope="module")
def test_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestHost, str]]:
    why = unavailable()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("test-host")
    token = uuid.uuid4().hex
    (folder / "token.txt").write_text(token)
    host = TestHost(folder)
    yield host, token
    host.close()


@pytest.fixture(scope="module")
def egress(service: Trap) -> Iterator[Kernel]:
    km, kc = start_kernel(extra_arguments=[f"--Sandbox.host_ports=[{service.port}]"])
    k = Kernel(km, kc)
    yield k
    stop_kernel(km, kc)


def connect_cell(targets: list[tuple[str, int]]) -> str:
    """A cell that tries TCP and UDP to each target and prints what happened, one JSON line."""
    return (
        "import json, socket\n"
        "out = {}\n"
        f"for host, port in {targets!r}:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3).close()\n"
        "        out[f'{host}:{port}'] = 'connected'\n"
        "    except OSError as e:\n"
        "        out[f'{host}:{port}'] = type(e).__name__\n"
        "    try:\n"
        "        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', (host, port))\n"
        "    except OSError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )


def test_sandbox_says_how_the_network_is_reached(egress: Kernel, service: Trap) -> None:
    out = egress.ok("%sandbox").stdout
    assert "user-mode egress" in out and f"host ports forwarded: {service.port}" in out, out


def test_a_cell_reaches_a_host_on_the_network(egress: Kernel, test_host: tuple[TestHost, str]) -> None:
    host, token = test_host
    res = egress.ok(
        f"import urllib.request\nprint(urllib.request.urlopen({host.url + 'token.txt'!r}, timeout=10).read().decode())"
    )
    assert res.stdout.strip() == token


def test_the_hosts_loopback_is_out_of_reach(egress: Kernel, trap: Trap) -> None:
    # 127.0.0.1 is the namespace's own loopback; 10.0.2.2 is slirp4netns's way to the host's
    # (disabled), 10.0.2.3 its DNS forwarder (off: it would carry any port to the host's resolver).
    targets = [("127.0.0.1", trap.port), ("10.0.2.2", trap.port), ("10.0.2.3", trap.port)]
    res = egress.ok(connect_cell(targets))
    results = json.loads(res.stdout)
    assert all(v != "connected" for v in results.values()), results
    egress.ok("import time; time.sleep(0.5)")  # give a datagram that got through time to arrive
    assert trap.seen == [], trap.seen
    assert egress.ok("6 * 7").of("execute_result")[0]["data"]["text/plain"] == "42"


def test_another_kernels_ports_are_out_of_reach(egress: Kernel, kernel: Kernel) -> None:
    """Notebook A's cell reads notebook B's IOPub (every cell B runs) if it can reach the port."""
    with open(kernel.km.connection_file) as f:
        info = json.load(f)
    ports = [info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
    results = json.loads(egress.ok(connect_cell([(info["ip"], p) for p in ports])).stdout)
    assert all(v != "connected" for v in results.values()), results
    kernel.ok("1 + 1")  # B is untouched


def test_named_host_ports_are_forwarded_and_no_other(egress: Kernel, service: Trap, trap: Trap) -> None:
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {service.port}), timeout=5)\n"
        "s.sendall(b'ping'); print(s.recv(100).decode()); s.close()\n"
    )
    assert egress.ok(code).stdout.strip() == "service:ping"
    assert any(seen.startswith("tcp") for seen in service.seen)
    results = json.loads(egress.ok(connect_cell([("127.0.0.1", trap.port)])).stdout)
    assert results == {f"127.0.0.1:{trap.port}": "ConnectionRefusedError"}


def test_the_next_worker_joins_the_same_egress(egress: Kernel, test_host: tuple[TestHost, str]) -> None:
    """A crash or %load_jax replacement takes the standby: it must be in the namespace too."""
    host, token = test_host
    egress.run("import os; os._exit(1)")
    res = egress.ok(
        f"import urllib.request\nprint(urllib.request.urlopen({host.url + 'token.txt'!r}, timeout=10).read().decode())"
    )
    assert res.stdout.strip() == token
    assert "user-mode egress" in egress.ok("%sandbox").stdout


def test_host_egress_is_the_deployers_choice(trap: Trap) -> None:
    """``Sandbox.egress = 'host'``: the old behaviour, and %sandbox says loopback is shared."""
    km, kc = start_kernel(extra_arguments=["--Sandbox.egress=host"])
    try:
        k = Kernel(km, kc)
        out = k.ok("%sandbox").stdout
        assert "loopback included" in out, out
        results = json.loads(k.ok(connect_cell([("127.0.0.1", trap.port)])).stdout)
        assert results == {f"127.0.0.1:{trap.port}": "connected"}
    finally:
        stop_kernel(km, kc)


def test_a_bad_host_port_is_refused_in_one_line(tmp_path: Path) -> None:
    from conftest import kernel_command_line

    code, out = kernel_command_line(str(tmp_path / "kernel.json"), "--Sandbox.host_ports=[70000]")
    assert code != 0
    assert "Sandbox.host_ports: 70000 is not a TCP port (1-65535)" in out, out


def test_a_loopback_resolver_is_forwarded_as_dns(tmp_path: Path) -> None:
    """Where the host's resolver listens on loopback (systemd-resolved, dnsmasq), the worker's
    resolv.conf names the namespace's 127.0.0.1:53, which the kernel carries to the resolver."""
    import subprocess

    from jax_kernel.host.netns import Egress

    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        resolver.bind(("127.0.0.53", 53))
    except OSError as e:
        pytest.skip(f"127.0.0.53:53 is taken on this host ({e.strerror})")
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.test\nnameserver 127.0.0.53\noptions edns0\n")

    def answer() -> None:
        data, peer = resolver.recvfrom(512)
        resolver.sendto(b"answer:" + data, peer)

    threading.Thread(target=answer, daemon=True).start()
    e = Egress(resolv_conf=str(conf))
    try:
        assert e.resolv_conf == "search example.test\nnameserver 127.0.0.1\noptions edns0\n"
        query = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
            "s.sendto(b'query', ('127.0.0.1', 53)); print(s.recv(100).decode())\n"
        )
        got = subprocess.run(
            ["nsenter", f"--net={e.path}", sys.executable, "-c", query],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert got.stdout.strip() == "answer:query", got
    finally:
        e.close()
        resolver.close()
    assert not os.path.exists(e.path)
