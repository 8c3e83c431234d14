"""Landlock TCP port rules (``net_rules``): what a multi-process worker may still reach.

Each test starts a real process that applies the worker sandbox to itself, then tries to
connect and bind.  The listeners it connects to live in this (unsandboxed) test process, on
127.0.0.1 only: a refused connect must be Landlock's EACCES, not a missing listener's
ECONNREFUSED.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jax_kernel.worker import sandbox

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

ROOT = Path(__file__).resolve().parent.parent
ABI = sandbox.landlock_abi() if sys.platform.startswith("linux") else 0
needs_net_abi = pytest.mark.skipif(
    ABI < 4, reason=f"Landlock TCP port rules need Landlock ABI 4, this kernel has {ABI}"
)

#: Runs in the child: apply the policy (argv[1]), try each action (argv[2]), print what happened.
CHILD = r"""
import errno, json, socket, sys
from jax_kernel.worker import sandbox

policy, actions = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if len(sys.argv) > 3:  # pose as an older kernel
    fake = int(sys.argv[3])
    sandbox.landlock_abi = lambda: fake
report = sandbox.apply(policy)


def attempt(kind, port):
    kinds = {"udp_bind": socket.SOCK_DGRAM}
    s = socket.socket(socket.AF_INET, kinds.get(kind, socket.SOCK_STREAM))
    try:
        if kind == "connect":
            s.connect(("127.0.0.1", port))
        elif kind == "peer":  # listen on an ephemeral port, as gloo does, and let a peer connect
            s.bind(("127.0.0.1", 0))
            s.listen()
            with socket.create_connection(s.getsockname(), timeout=5):
                pass
        else:
            s.bind(("127.0.0.1", port))
        return "ok"
    except OSError as e:
        return f"{type(e).__name__}:{errno.errorcode.get(e.errno, e.errno)}"
    finally:
        s.close()


print(json.dumps({"report": report, "results": [attempt(k, p) for k, p in actions]}))
"""

DENIED = "PermissionError:EACCES"


def ephemeral_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
    return lo, hi


def free_fixed_ports(n: int) -> list[int]:
    """``n`` free loopback ports outside the ephemeral range (so no ephemeral rule covers them)."""
    lo, hi = ephemeral_range()
    held: list[socket.socket] = []
    try:
        for port in [*range(20000, 21000), *range(1025, 2025)]:
            if len(held) == n:
                break
            if lo <= port <= hi:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        else:
            pytest.skip("no free loopback ports outside the ephemeral range")
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


@pytest.fixture
def listen() -> Iterator[Any]:
    """``listen(port=0)``: a TCP listener on 127.0.0.1 in this process; returns its port."""
    socks: list[socket.socket] = []

    def make(port: int = 0) -> int:
        s = socket.socket()
        socks.append(s)
        s.bind(("127.0.0.1", port))
        s.listen()
        return s.getsockname()[1]

    yield make
    for s in socks:
        s.close()


def run_child(
    tmp_path: Path,
    actions: list[tuple[str, int]],
    net_rules: dict[str, Any] | None = None,
    profile: str = "standard",
    fake_abi: int | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    policy: dict[str, Any] = {
        "profile": profile,
        "fs": {"writable": [str(tmp_path)], "hidden": [], "devices": [], "readonly": []},
    }
    if net_rules is not None:
        policy["net_rules"] = net_rules
    argv = [sys.executable, "-c", CHILD, json.dumps(policy), json.dumps(actions)]
    if fake_abi is not None:
        argv.append(str(fake_abi))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    out = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc, out


def test_port_spans_share_one_rule_where_ranges_overlap() -> None:
    bind, connect = sandbox.LL_NET_BIND_TCP, sandbox.LL_NET_CONNECT_TCP
    spans = sandbox._port_spans(range(100, 201), range(150, 301))
    assert spans == [(range(100, 150), bind), (range(150, 201), bind | connect), (range(201, 301), connect)]
    assert sandbox._port_spans(None, range(5, 6)) == [(range(5, 6), connect)]
    assert sandbox._port_spans(None, None) == []
    assert sandbox._describe_ports([0, 8476], None) == "ports 0 (an ephemeral one) and 8476"
    assert sandbox._describe_ports([], range(1, 3)) == "ports 1-2"
    assert sandbox._describe_ports([], None) == "no port"


@needs_net_abi
def test_connect_and_bind_only_to_the_allowed_ports(tmp_path: Path, listen: Any) -> None:
    allowed, other = listen(), listen()
    bind_ok, bind_bad = free_fixed_ports(2)
    proc, out = run_child(
        tmp_path,
        [
            ("connect", allowed),
            ("connect", other),
            ("bind", 0),
            ("bind", bind_ok),
            ("bind", bind_bad),
            ("udp_bind", bind_bad),
        ],
        {"bind": [0, bind_ok], "connect": [allowed], "connect_range": None, "bind_range": None},
    )
    assert proc.returncode == 0, proc.stderr
    assert out["results"] == ["ok", DENIED, "ok", "ok", DENIED, "ok"], out
    detail = out["report"]["active"]["network"]
    assert f"TCP connect only to port {allowed}," in detail, detail
    assert f"bind only to ports 0 (an ephemeral one) and {bind_ok}," in detail, detail
    assert "UDP" in detail and "not covered" in detail, detail
    assert "network" not in out["report"]["unavailable"], out["report"]
    assert "filesystem" in out["report"]["active"], out["report"]


@needs_net_abi
def test_ephemeral_range_lets_peers_meet_and_nothing_else(tmp_path: Path, listen: Any) -> None:
    """The multi-controller case: peers listen on ephemeral ports (gloo) and reach each other."""
    lo, hi = ephemeral_range()
    coordinator, outside = (listen(p) for p in free_fixed_ports(2))
    peer = listen()
    assert lo <= peer <= hi
    proc, out = run_child(
        tmp_path,
        [("connect", coordinator), ("connect", peer), ("connect", outside), ("peer", 0), ("bind", hi)],
        {"bind": [0], "connect": [coordinator], "connect_range": [lo, hi], "bind_range": None},
    )
    assert proc.returncode == 0, proc.stderr
    assert out["results"] == ["ok", "ok", DENIED, "ok", DENIED], out
    detail = out["report"]["active"]["network"]
    assert f"TCP connect only to ports {coordinator} and {lo}-{hi}," in detail, detail
    assert "bind only to port 0 (an ephemeral one)," in detail, detail


def test_without_net_rules_the_network_is_untouched(tmp_path: Path, listen: Any) -> None:
    fixed, unused = free_fixed_ports(2)
    ports = [listen(), listen(fixed)]
    proc, out = run_child(tmp_path, [("connect", p) for p in ports] + [("bind", unused), ("bind", 0)])
    assert proc.returncode == 0, proc.stderr
    assert out["results"] == ["ok", "ok", "ok", "ok"], out
    assert "network" not in out["report"]["active"] and "network" not in out["report"]["unavailable"]


@pytest.mark.skipif(ABI < 3, reason=f"needs a Landlock ABI of at least 3 to pose as 3, this kernel has {ABI}")
def test_without_landlock_abi_4_the_network_is_reported_unavailable(tmp_path: Path, listen: Any) -> None:
    other = listen()
    rules = {"bind": [0], "connect": [], "connect_range": None, "bind_range": None}
    proc, out = run_child(tmp_path, [("connect", other)], rules, fake_abi=3)
    assert proc.returncode == 0, proc.stderr
    assert out["report"]["unavailable"]["network"] == "TCP port rules need Landlock ABI 4, this kernel has 3"
    assert "filesystem" in out["report"]["active"], out["report"]  # the file rules still apply
    assert out["results"] == ["ok"]  # and the network is not restricted
    proc, _ = run_child(tmp_path, [], rules, profile="strict", fake_abi=3)
    assert proc.returncode == sandbox.EXIT_STRICT, proc.stderr
    assert "network: TCP port rules need Landlock ABI 4, this kernel has 3" in proc.stderr, proc.stderr


@needs_net_abi
def test_bad_net_rules_are_reported_and_the_file_rules_still_apply(tmp_path: Path) -> None:
    proc, out = run_child(tmp_path, [], {"bind": [70000], "connect": []})
    assert proc.returncode == 0, proc.stderr
    assert out["report"]["unavailable"]["network"] == "net_rules: 70000 is not a TCP port"
    assert "filesystem" in out["report"]["active"], out["report"]
