"""Kernel process: the settings of sets of worker processes (``%load_jax --processes N``).

Apart from the set itself because the manager owns one :class:`ProcessSet` (its ``processes``
trait) for the kernel's whole life, while a :class:`~jax_kernel.supervision.workerset.lifecycle.WorkerSet`
lives as long as one set; and because the deployer's config (``c.ProcessSet.*``) is read here
and nowhere else.  It also says which launcher class a name means, importing nothing for a name
the deployer did not allow (the name comes from a cell).
"""

from __future__ import annotations

import os

from traitlets import Float, Integer, List, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from ...protocol.importpath import python_module_command


class ProcessSet(LoggingConfigurable):
    """Settings of sets of worker processes (``%load_jax --processes N``)."""

    launcher = Unicode(
        "local",
        help="The ipyparallel engine-set launcher that places a set's processes when %load_jax does not "
        "name one: local, mpi, slurm, pbs, sge, lsf, htcondor, ssh, or any name registered in the "
        "ipyparallel.engine_launchers entry-point group (or module:Class). Its own settings come from "
        "this config (e.g. c.MPIEngineSetLauncher.mpi_args) or from ipyparallel_profile.",
    ).tag(config=True)

    max_processes = Integer(
        help="Most processes one set may have. Every per-worker limit of the sandbox (memory, tasks) "
        "is per member, so a set of N takes N times each: a cell must not multiply them past what "
        "the host has. Default: this host's cores (at least 2).",
    ).tag(config=True)

    @default("max_processes")
    def _default_max_processes(self) -> int:
        return max(
            2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
        )

    allowed_launchers = List(
        Unicode(),
        ["local", "mpi"],
        help="Launchers a cell may name with %load_jax --launcher (besides ProcessSet.launcher): names "
        "of ipyparallel's engine launchers or entry points, or module:Class. A cell can't add to it: "
        "the kernel imports a launcher outside the sandbox, and batch launchers (slurm, pbs, ...) submit "
        "jobs on the user's account, so each one is the deployer's choice.",
    ).tag(config=True)

    ipyparallel_profile = Unicode(
        "",
        help="Name or path of an ipyparallel profile whose ipcluster_config.py configures the launcher "
        "(batch templates, mpiexec arguments, SSH hosts), so a cluster already set up for ipyparallel is "
        "reused as it is. Empty: only this kernel's config.",
    ).tag(config=True)

    listen_ip = Unicode(
        "127.0.0.1",
        help="Address the kernel listens on for its set's members. Loopback (the default) admits only "
        "members on this host; for a set on other hosts give this host's address on the cluster network.",
    ).tag(config=True)

    connect_ip = Unicode(
        "",
        help="Address members connect to, when it differs from listen_ip (NAT, 0.0.0.0). Empty: listen_ip.",
    ).tag(config=True)

    member_command = List(
        Unicode(),
        help="Command that starts a member on a host; the connection file's path is appended. Defaults "
        "to this interpreter running jax_kernel.worker.member (the same path must exist on every host).",
    ).tag(config=True)

    @default("member_command")
    def _default_member_command(self) -> list[str]:
        return python_module_command("jax_kernel.worker.member")

    devices_per_process = Integer(
        1,
        help="Devices each process gets when %load_jax does not say: CPU devices on a CPU host, or "
        "accelerators (the i-th process on a host gets the i-th slice of its devices).",
    ).tag(config=True)

    heartbeat_interval = Float(1.0, help="Seconds between heartbeats, each way.").tag(config=True)

    heartbeat_timeout = Float(
        15.0,
        help="Seconds of silence after which a member is taken for lost (its host or the network is "
        "down) and the set is replaced; a member stops on its own after as long without the kernel.",
    ).tag(config=True)

    start_timeout = Float(
        120.0, help="Seconds a set may take from launch until every member is ready (batch queues wait)."
    ).tag(config=True)

    def allowed(self) -> list[str]:
        """The launchers a set may use: the deployer's list and the configured default."""
        return list(dict.fromkeys([self.launcher, *self.allowed_launchers]))

    def launcher_class(self, name: str) -> type:
        """The launcher class for ``name``; a ValueError that says why not otherwise.

        Nothing is imported for a name the deployer did not allow: the name comes from a cell."""
        allowed = self.allowed()
        if name not in allowed:
            raise ValueError(
                f"launcher {name[:60]!r} is not allowed here (allowed: {', '.join(allowed)}); the "
                "deployer adds launchers with c.ProcessSet.allowed_launchers"
            )
        from ipyparallel.cluster.launcher import find_launcher_class

        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(__import__(module, fromlist=[attr]), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"launcher {name!r} could not be imported ({e})") from None
        try:
            return find_launcher_class(name, "engine")
        except KeyError:
            from importlib.metadata import entry_points

            known = sorted(ep.name for ep in entry_points(group="ipyparallel.engine_launchers"))
            raise ValueError(f"unknown launcher {name!r}; known: {', '.join(known)}") from None

    def launcher_config(self) -> Config:
        """This kernel's config, on top of the ipyparallel profile's ipcluster_config.py if one is named."""
        config = Config()
        if self.ipyparallel_profile:
            from IPython.paths import locate_profile
            from traitlets.config.loader import PyFileConfigLoader

            path = self.ipyparallel_profile
            if not os.path.isdir(path):
                path = locate_profile(path)
            config.merge(PyFileConfigLoader("ipcluster_config.py", path=path).load_config())
        config.merge(self.config)
        return config
