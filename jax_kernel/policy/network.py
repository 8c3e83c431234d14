"""Kernel process: where a worker's network comes from, when the policy allows it one.

Under the default user-mode egress the kernel keeps one network namespace of its own with
slirp4netns (:class:`jax_kernel.host.netns.Egress`: the internet and the forwarded host ports,
not the host's loopback) and every worker joins it; with ``Sandbox.egress = 'host'``, or where
that can't be had, the worker shares the host's network and its policy says why.  Without
network the worker makes an empty namespace itself and nothing here is involved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from ..host.netns import Egress, NetworkError
from ..protocol.config import SandboxPolicy


class WorkerNetwork:
    """This kernel's user-mode egress for its workers, made on first use, and what each
    worker's policy says of its network."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.egress: Egress | None = None
        self.error: str | None = None  # why there is no user-mode egress (then never retried)
        self._resolv_written_for: Egress | None = None  # the egress whose resolv.conf is on disk

    def user_mode_egress(self, host_ports: Sequence[int]) -> Egress | None:
        """The egress namespace, made (forwarding ``host_ports``) on first use, and again if it
        stopped; None if it can't be (see the log)."""
        if self.egress is not None and not self.egress.alive():
            self.log.warning("The workers' user-mode egress stopped; making a new one")
            self.egress.close()
            self.egress = None
        if self.egress is None and self.error is None:
            try:
                self.egress = Egress(host_ports)
            except (NetworkError, OSError) as e:
                self.error = str(e)
                self.log.warning("No user-mode egress for the workers: %s", e)
            else:
                self.log.debug("User-mode egress up in %.0f ms", self.egress.setup_seconds * 1000)
        return self.egress

    def apply(
        self, policy: SandboxPolicy, state: str, allowed: bool, mode: str, host_ports: Sequence[int]
    ) -> None:
        """Say in ``policy`` where the worker's network comes from: user-mode egress (``mode``,
        ``Sandbox.egress``), or the host's (and why); its resolv.conf goes in ``state``."""
        if not allowed:
            return  # the worker makes an empty namespace of its own (a set: jax_kernel.host.netns)
        if mode == "host":
            policy["egress"] = {
                "unavailable": "the host's network, loopback included (Sandbox.egress = 'host')"
            }
            return
        egress = self.user_mode_egress(host_ports)
        if egress is None:
            policy["egress"] = {
                "unavailable": f"the host's network, loopback included: no user-mode egress ({self.error})"
            }
            return
        policy["join_netns"] = egress.path
        policy["egress"] = {"describe": egress.describe()}
        if egress.resolv_conf is not None:
            path = os.path.join(state, "resolv.conf")
            if self._resolv_written_for is not egress:  # once per egress, not per worker
                with open(path, "w") as f:
                    f.write(egress.resolv_conf)
                self._resolv_written_for = egress
            policy["fs"]["resolv_conf"] = path

    def close(self) -> None:
        """Stop the egress namespace, if there is one."""
        if self.egress is not None:
            self.egress.close()
            self.egress = None
