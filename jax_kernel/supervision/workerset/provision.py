"""Kernel process: what each member of a set is given once all have said hello.

Every member gets its worker config, its sandbox policy and its devices: the i-th process on a
host gets the i-th slice of ``devices_per_process`` devices, and the members on the kernel's own
host take theirs through the kernel's device lease (pinned cores, visible accelerators, a devices
cgroup) as one worker does.  Under a policy without network the members share a private network
namespace on this host, and nothing else.  A local member's sandbox is then checked from
outside once it says it is ready.  Apart from the set's life cycle because it is one message per
member, made from facts that are fixed once the set is complete.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ...host.netns import NetworkError, PrivateNetwork
from ...protocol.jaxspec import settings_env
from ..audit import audit
from .launcher import SetLauncher
from .rendezvous import Member
from .settings import ProcessSet

#: Why a set can't start when its members can't have a network namespace of their own.
NO_NETWORK = (
    "could not be given a network of its own ({}): under a policy without network "
    "a set's processes share a private network namespace on this host, and nothing else"
)


def number(members: list[Member], count: int) -> None:
    """Index the members: by launcher rank when the ranks are 0..count-1, else as they said hello."""
    if sorted(m.rank for m in members) == list(range(count)):
        members.sort(key=lambda m: m.rank)
    for i, m in enumerate(members):
        m.index = i


class SetNetwork:
    """The private network namespace a set's members share on this host (made on first use)."""

    def __init__(self, here: str) -> None:
        self.here = here
        self._network: PrivateNetwork | None = None

    def path_for(self, m: Member) -> str:
        """The namespace ``m`` joins; NetworkError if it can't be made, or ``m`` is on another host."""
        if m.host != self.here:
            raise NetworkError(f"{m.describe()} runs on another host, outside this host's namespaces")
        if self._network is None:
            self._network = PrivateNetwork()
        return self._network.path

    def close(self) -> None:
        if self._network is not None:
            self._network.close()


@dataclass
class Placement:
    """The set-wide facts a member's setup is made of (``here``: this host; ``local``: its members)."""

    count: int
    launcher: str
    platform: str
    devices_per_process: int
    options: ProcessSet
    config: dict[str, Any]
    env: dict[str, str]
    max_frame: int
    lease: Any
    here: str
    local: int
    members: list[Member]
    coordinator: str = field(init=False)
    table: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        first = self.members[0]
        host = f"[{first.peer_ip}]" if ":" in first.peer_ip else first.peer_ip
        self.coordinator = f"{host}:{first.port}"
        self.table = [{"index": m.index, "host": m.host, "pid": m.pid} for m in self.members]

    def ranks(self) -> Iterator[tuple[Member, int]]:
        """Each member with its local rank (the how-manyth on its host it is)."""
        per_host: dict[str, int] = {}
        for m in self.members:
            local_rank = per_host.get(m.host, 0)
            per_host[m.host] = local_rank + 1
            yield m, local_rank

    def isolate(self, ws: Any, m: Member, network: SetNetwork) -> None:
        """Fit ``m``'s sandbox policy to a set (NetworkError if it can't have its namespace)."""
        if ws.policy.get("join_netns") and self.local < self.count:
            # User-mode egress is NAT: members on other hosts could not reach the ones here.
            del ws.policy["join_netns"]
            ws.policy["egress"] = {
                "unavailable": "the host's network, loopback included: the set has members on other hosts"
            }
        if ws.policy.get("profile", "off") != "off" and not ws.policy.get("allow_network", True):
            # Members reach the coordinator and their peers (gloo) in a namespace of their own
            # (set on the policy itself: the audit checks that each member is in it).
            ws.policy["join_netns"] = network.path_for(m)

    def setup(self, m: Member, ws: Any, local_rank: int) -> dict[str, Any]:
        """The ``setup`` message for member ``m`` (the ``local_rank``-th on its host)."""
        member = {
            "index": m.index,
            "count": self.count,
            "coordinator": self.coordinator,
            "launcher": self.launcher,
            "devices_per_process": self.devices_per_process,
            "table": self.table,
            "heartbeat": self.options.heartbeat_interval,
            "silence": self.options.heartbeat_timeout,
            "timeout": int(self.options.start_timeout),
        }
        policy = dict(ws.policy)
        config = {**self.config, "max_frame": self.max_frame, "sandbox": policy, "member": member}
        env = {**self.env, **self._device_env(local_rank)}
        if self.lease is not None and m.host == self.here:
            config.update(self._leased(local_rank, env))
            if config.get("cpu_affinity"):  # its cpuset keeps every affinity it sets inside them
                ws.restrict_cpus(config["cpu_affinity"])
            ws.restrict_to_lease(self.lease.platform, self._slice(local_rank))
        return {"type": "setup", "id": 0, "config": config, "env": env}

    def _slice(self, local_rank: int) -> list[int]:
        k = self.devices_per_process
        return list(self.lease.devices[local_rank * k : (local_rank + 1) * k])

    def _device_env(self, local_rank: int) -> dict[str, str]:
        """The i-th process on a host gets the i-th slice of ``devices_per_process`` devices."""
        k = self.devices_per_process
        if self.platform == "cpu":
            return {"JAX_NUM_CPU_DEVICES": str(k)}
        ids = list(range(local_rank * k, (local_rank + 1) * k))
        return settings_env({"platform": self.platform, "devices": ids})

    def _leased(self, local_rank: int, env: dict[str, str]) -> dict[str, Any]:
        """The local member's slice of the lease: cores (pinned) or accelerators (made visible)."""
        from ...policy.accelerators import Lease, pin_env

        mine = self._slice(local_rank)
        unit = "cores" if self.lease.platform == "cpu" else f"{self.lease.platform} devices"
        extra: dict[str, Any] = {"lease": f"{unit} {', '.join(map(str, mine))} ({self.lease.mode})"}
        if self.lease.platform == "cpu":
            extra["cpu_affinity"] = mine
        else:
            env.update(pin_env(Lease(self.lease.platform, mine, self.lease.mode)))
        return extra


def audit_member(m: Member, msg: dict[str, Any], launcher: SetLauncher, log: logging.Logger) -> list[str]:
    """:func:`jax_kernel.supervision.audit.audit` for a member this kernel started on this host.

    Only those: another host's /proc is out of sight, and a pid a member names is checked only if
    it is one of the processes the launcher started here (else it could name any process)."""
    if m.sandbox is None or m.host != socket.gethostname():
        return []
    started = {p.pid for p in launcher.processes()}
    if m.pid not in started:
        return (
            []
            if not started
            else [f"a pid of its own (it named {m.pid}, not a process the launcher started)"]
        )
    missing = audit(m.pid, m.sandbox.policy, msg.get("sandbox"))
    log.info("Set member %s checked from outside: %s", m.describe(), "; ".join(missing) or "sandboxed")
    return missing
