"""The worker's network: the namespace the kernel made for it, DNS there, and TCP port rules.

Runs in the worker process, as part of the namespaces step (:mod:`.namespaces`: joining the
kernel-made network namespace with ``setns``, binding the kernel's ``resolv.conf``) and of the
Landlock step (:mod:`.filesystem`: checking the policy's ``net_rules`` and turning them into
port rules).  A network namespace the worker makes itself (no network at all) is
:mod:`.namespaces`' ``unshare``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from ...protocol.checks import is_count
from .base import CLONE_NEWNET, Unavailable, _err, _libc, _Report
from .landlock import LL_NET_BIND_TCP, LL_NET_CONNECT_TCP
from .mounts import _bind_regular_file


def _network(policy: dict[str, Any], report: _Report) -> None:
    """Join the namespace the kernel made, if any, and say in the report what network the worker has.

    The namespace the kernel made: a set's private network, or this kernel's user-mode egress
    (jax_kernel.host.netns); either way the kernel checks from /proc that we joined it.
    """
    want_net = not policy.get("allow_network", True)
    join = policy.get("join_netns")
    egress = policy.get("egress") or {}
    if join:
        what = "the set's network namespace" if want_net else "the kernel's user-mode egress"
        try:
            _join_network(join)
            report.active(
                "network",
                "the set's own network namespace: loopback shared by its processes, nothing else"
                if want_net
                else egress.get("describe", "user-mode egress"),
            )
            if not want_net:
                report.data["network"] = (
                    "allowed by policy, through user-mode egress (not the host's loopback)"
                )
        except (Unavailable, OSError) as e:
            report.unavailable("network", f"could not join {what} ({e})")
    elif not want_net and egress.get("unavailable"):
        report.unavailable("network", egress["unavailable"])
        report.data["network"] = "allowed by policy, on the host's network (loopback included)"


def _join_network(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise _err("setns(CLONE_NEWNET)")
    finally:
        os.close(fd)


def _dns(fs: dict[str, Any], report: _Report) -> None:
    """With a network in force, the kernel's ``resolv.conf`` (if it wrote one) over the host's."""
    resolv = fs.get("resolv_conf")
    if resolv and "network" in report.data["active"]:
        # The host's resolver listens on its loopback, which egress does not reach: the kernel
        # forwards it to our 127.0.0.1:53 and wrote the resolv.conf that says so.
        try:
            _bind_regular_file(resolv, os.path.realpath("/etc/resolv.conf"))
        except (Unavailable, OSError) as e:
            report.unavailable("dns", f"the host's resolver is on its loopback, out of reach ({e})")


# --- TCP port rules (Landlock ABI 4) -----------------------------------------------------


def _net_rules(raw: Any) -> tuple[list[int], list[int], range | None, range | None]:
    """Check the policy's ``net_rules``: (bind ports, connect ports, bind range, connect range)."""

    def port(p: Any) -> int:
        if not is_count(p, 65535):
            raise Unavailable(f"net_rules: {p!r} is not a TCP port")
        return p

    def span(r: Any) -> range | None:
        if r is None:
            return None
        if not isinstance(r, (list, tuple)) or len(r) != 2 or port(r[0]) > port(r[1]):
            raise Unavailable(f"net_rules: {r!r} is not a [low, high] port range")
        return range(r[0], r[1] + 1)

    if not isinstance(raw, dict):
        raise Unavailable(f"net_rules: {raw!r} is not a dict")
    bind = sorted({port(p) for p in raw.get("bind") or []})
    connect = sorted({port(p) for p in raw.get("connect") or []})
    return bind, connect, span(raw.get("bind_range")), span(raw.get("connect_range"))


def _port_spans(bind: range | None, connect: range | None) -> list[tuple[range, int]]:
    """Disjoint pieces of the two ranges with the rights of each: where they overlap, one rule
    per port carries both (28k rules for the ephemeral range, not 56k)."""
    ranges = [(r, a) for r, a in ((bind, LL_NET_BIND_TCP), (connect, LL_NET_CONNECT_TCP)) if r]
    cuts = sorted({x for r, _ in ranges for x in (r.start, r.stop)})
    spans = []
    for lo, hi in itertools.pairwise(cuts):
        access = 0
        for r, a in ranges:
            if lo in r:
                access |= a
        if access:
            spans.append((range(lo, hi), access))
    return spans


def _describe_ports(ports: list[int], span: range | None) -> str:
    """For the report: `port 0 (an ephemeral one)`, `ports 8476 and 32768-60999`, `no port`."""
    parts = ["0 (an ephemeral one)" if p == 0 else str(p) for p in ports]
    if span:
        parts.append(f"{span.start}-{span.stop - 1}")
    if not parts:
        return "no port"
    noun = "port" if len(parts) == 1 and not span else "ports"
    return f"{noun} " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
