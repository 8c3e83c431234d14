"""A test host on this machine: its own network namespace, joined to ours by a veth pair.

Network tests and the egress benchmark need a server that is "elsewhere on the network", not on
the host's loopback (which user-mode egress is there to keep workers from), and must never
reach out to any other address.  ``TestHost`` makes one: a namespace with a /30 link to the
host, serving a folder over HTTP.  Root (or CAP_NET_ADMIN) and iproute2 are needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def unavailable() -> str | None:
    """Why no test host can be made here (None if one can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "making a network namespace with a veth pair needs root"
    return None


class TestHost:
    """``http://{address}:{port}/`` serves ``folder`` from a namespace of its own."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, tag: str | None = None) -> None:
        n = (os.getpid() + int(time.monotonic() * 1000)) % 250 + 1
        self.name = tag or f"jaxk-th-{os.getpid()}-{n}"
        self.host_if, self.peer_if = f"jxh{n}-{os.getpid() % 1000}", f"jxp{n}-{os.getpid() % 1000}"
        self.address, self.gateway = f"10.231.{n}.2", f"10.231.{n}.1"
        self.port = 8000
        self.folder = folder
        self._server: subprocess.Popen[bytes] | None = None
        try:
            self._ip("netns", "add", self.name)
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            self._ip("link", "set", self.peer_if, "netns", self.name)
            self._ip("addr", "add", f"{self.gateway}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.peer_if)
            self._ip("-n", self.name, "link", "set", self.peer_if, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
            self._server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.name,
                    sys.executable,
                    "-m",
                    "http.server",
                    str(self.port),
                    "--bind",
                    self.address,
                    "--directory",
                    str(folder),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _wait(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline or (self._server and self._server.poll() is not None):
                    raise RuntimeError(f"the test host's server at {self.url} did not come up") from None
                time.sleep(0.1)

    def close(self) -> None:
        if self._server is not None:
            self._server.kill()
            self._server.wait()
            self._server = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
