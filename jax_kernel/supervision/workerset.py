"""A set of worker processes for multi-controller JAX, placed by an ipyparallel launcher.

``%load_jax --processes N`` replaces the kernel's one worker with N of them.  Placing processes
on hosts is a cluster engine's job, so this module never does it: an ipyparallel *engine set
launcher* (local processes, ``mpiexec``, SLURM, PBS, SGE, LSF, HTCondor, SSH, or any class
registered in the ``ipyparallel.engine_launchers`` entry-point group) starts jax-kernel's member
command (:mod:`jax_kernel.worker.member`) instead of ``ipengine``.  Each member connects back to
the kernel over TCP, on the kernel's own wire (:mod:`jax_kernel.protocol.wire`): JSON frames, size-bounded,
validated, never unpickled, and encrypted and authenticated (ChaCha20-Poly1305) under a per-set
key that only the connection file (mode 0600) holds.  The kernel numbers the members (by launcher rank when there is
one), gives each its worker config, sandbox policy and devices, and every member joins JAX's
distributed runtime (coordinator on process 0, gloo for CPU collectives) before it says ready.

:class:`WorkerSet` stands where a :class:`~jax_kernel.supervision.local.WorkerProcess` stands for the
:class:`~jax_kernel.supervision.manager.WorkerManager`: the same requests, replies and life cycle, so crash
recovery, interrupts and restarts work for a set as for one process.  Requests that run code
go to every member (SPMD) and are answered once all have answered; completion, inspection,
history, the debugger and resource usage are process 0's.  Output is routed here (see
:meth:`WorkerSet.shows`): stdout, displays and results from process 0 (``%jax_output`` changes
that), stderr and errors from every process, prefixed with its index.  A set can't lose a member
(JAX's collectives would hang), so any member's death, silence or bad frame ends the whole set,
with a report naming the member and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, Integer, List, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from ..host.netns import NetworkError, PrivateNetwork
from ..protocol import wire
from ..protocol.budget import COUNTED, OutputBudget, output_size
from ..protocol.importpath import python_module_command
from .audit import audit
from .local import WireReader, describe_exit

#: Launchers that ship with ipyparallel, by the names ``--launcher`` takes (README lists them).
SHIPPED_LAUNCHERS = ("local", "mpi", "slurm", "pbs", "sge", "lsf", "htcondor", "ssh", "sshproxy", "batch")

#: Requests every member runs (user code, and what must reach every process' state).
BROADCAST = frozenset({"execute", "comm", "shutdown"} | wire.JAX_REQUESTS)
#: Messages that show a result: from the process(es) %jax_output names.
DISPLAYS = frozenset({"display_data", "update_display_data", "clear_output", "execute_result"})
#: How much of the launcher's output (the members' original stderr) a crash report quotes.
DIAG_TAIL = 4000

_ids = itertools.count(1)


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


@dataclass
class Member:
    """One connected member, as the kernel knows it (nothing it says is trusted beyond its wire)."""

    conn: wire.SealedConnection
    peer_ip: str
    index: int = -1
    pid: int = 0
    host: str = ""
    rank: int = -1
    port: int = 0
    hello: bool = False
    ready: dict[str, Any] | None = None
    gone: bool = False
    inputs_asked: int = 0  # input() calls in the running cell, and how many got their answer
    inputs_answered: int = 0
    sandbox: Any = None
    last_seen: float = field(default_factory=time.monotonic)
    line_start: dict[str, bool] = field(default_factory=lambda: {"stdout": True, "stderr": True})
    reader: WireReader = field(init=False)  # set as soon as it connects

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}" if self.pid else f"from {self.peer_ip}, before it said hello"
        return f"process {self.index if self.index >= 0 else '?'} ({where})"


@dataclass
class _Gather:
    """A request sent to every member: their replies (by index) and the errors they displayed."""

    kind: str
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class WorkerSet:
    """N workers that the manager drives as one (see the module docstring)."""

    def __init__(
        self,
        *,
        count: int,
        launcher: str,
        devices_per_process: int,
        platform: str,
        config: dict[str, Any],
        env: dict[str, str],
        prepare_sandbox: Callable[[], Any],
        release_sandbox: Callable[[Any], None],
        on_closed: Callable[[], None] = lambda: None,
        lease_local: Callable[[str, int], Any],
        options: ProcessSet,
        max_frame: int,
        stream_limit: int,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any, dict[str, Any]], None],
        on_problem: Callable[[Any, str], None],
        on_exit: Callable[[Any, int | None], None],
        log: logging.Logger,
    ) -> None:
        self.count = count
        self.launcher_name = launcher
        self.devices_per_process = devices_per_process
        self.platform = platform
        self.subject = f"The set of {count} worker processes"
        self.fresh = f"A fresh set of {count} processes was started"
        self.log = log
        self._config, self._env = config, env
        self._prepare_sandbox, self._release_sandbox = prepare_sandbox, release_sandbox
        self._on_closed = on_closed  # after the members' sandboxes: the set's parent cgroups
        self._lease_local = lease_local
        self.lease: Any = None  # devices leased on this host for the members that run here
        self._options = options
        self._max_frame = max_frame
        self._loop = loop
        self._on_message, self._on_problem, self._on_exit = on_message, on_problem, on_exit
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.stream_budget = OutputBudget(stream_limit)
        self.started_at = time.monotonic()
        self.kill_reason: str | None = None
        self.sandbox: Any = None  # each member has its own; the set releases them
        self.pid = 0  # process 0's, once known
        self.output_mode = "0"
        self.members: list[Member] = []
        self._answers: list[dict[str, Any]] = []  # the running cell's input_replies, in order
        self._gathers: dict[int, _Gather] = {}
        self._stopping = False  # a shutdown was sent: members leaving is expected
        self._ending = False
        self._unexplained: Member | None = None  # lost without a reason yet: its exit status says
        self._diag = ""  # the launcher's output, read once the set has ended
        self._closed = threading.Event()
        self._key = secrets.token_bytes(32)
        self._network: PrivateNetwork | None = None  # under a policy without network (see _setup)
        self._dir = self._make_dir()
        self._listener = socket.create_server((options.listen_ip, 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._conn_file = self._write_connection_file()
        loop.add_reader(self._listener.fileno(), self._accept)
        self._timers = [
            loop.call_later(options.start_timeout, self._start_timed_out),
            loop.call_later(options.heartbeat_interval, self._tick),
        ]
        self._launcher: Any = None
        try:
            self._launch()
        except Exception as e:  # noqa: BLE001 - any launcher failure is reported, never raised
            self.log.warning("The %s launcher failed: %s", launcher, e, exc_info=True)
            loop.call_soon(self._end, f"could not be started by the {launcher!r} launcher ({e})")

    # starting -----------------------------------------------------------------------
    def _make_dir(self) -> str:
        """A private folder for the connection file and the launcher's logs (its "profile dir")."""
        from jupyter_core.paths import jupyter_runtime_dir

        base = jupyter_runtime_dir()
        os.makedirs(base, exist_ok=True)
        for stale in os.listdir(base):  # left by kernels that were killed
            parts = stale.split("-")
            if stale.startswith("jax-set-") and len(parts) == 4 and parts[2].isdigit():
                if not _pid_alive(int(parts[2])):
                    shutil.rmtree(os.path.join(base, stale), ignore_errors=True)
        path = os.path.join(base, f"jax-set-{os.getpid()}-{next(_ids)}")
        os.makedirs(os.path.join(path, "log"), mode=0o700)
        os.chmod(path, 0o700)
        return path

    def _write_connection_file(self) -> str:
        path = os.path.join(self._dir, "connection.json")
        info = {
            "host": self._options.connect_ip or self._options.listen_ip,
            "port": self.port,
            "key": self._key.hex(),
            "timeout": self._options.start_timeout,
            "max_frame": self._max_frame,
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return path

    def _launch(self) -> None:
        cls = self._options.launcher_class(self.launcher_name)
        launcher = cls(
            config=self._options.launcher_config(),
            log=self.log,
            profile_dir=self._dir,
            cluster_id=os.path.basename(self._dir),
            work_dir=os.getcwd(),
        )
        launcher.engine_cmd = list(self._options.member_command)
        launcher.engine_args = [self._conn_file]
        self._launcher = launcher
        self.log.info("Starting a set of %d processes with %s: %s", self.count, cls.__name__, launcher.args)
        started = launcher.start(self.count)
        if inspect.isawaitable(started):
            asyncio.ensure_future(started)
        launcher.on_stop(self._launcher_stopped)

    def _launcher_stopped(self, data: Any) -> None:
        if not self.ready.done() and not self._ending:
            code = data.get("exit_code") if isinstance(data, dict) else None
            self._end(
                f"was not started: the {self.launcher_name!r} launcher's processes exited (code {code})"
            )

    def _start_timed_out(self) -> None:
        if not self.ready.done():
            joined = sum(1 for m in self.members if m.hello)
            self._end(
                f"did not start within {self._options.start_timeout:g} s ({joined} of {self.count} processes "
                "connected; raise ProcessSet.start_timeout if the launcher queues jobs)"
            )

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        joined = sum(1 for m in self.members if m.hello)
        if joined >= self.count or len(self.members) >= 4 * self.count or self._ending:
            sock.close()  # a set has exactly its members; anyone else is turned away
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nonce = wire.new_nonce()
        try:
            sock.sendall(nonce)
        except OSError:
            sock.close()
            return
        member = Member(wire.SealedConnection(sock, self._key, nonce, b"K", self._max_frame), addr[0])
        self.members.append(member)
        member.reader = WireReader(
            self._loop,
            member.conn,
            functools.partial(self._frame, member),
            functools.partial(self._wire_error, member),
        )

    def _turn_away(self, m: Member, why: str) -> None:
        """A connection that never became a member (no key, wrong protocol, one too many): drop it."""
        self.log.warning("Turned away a connection to the set's port from %s: it %s", m.peer_ip, why)
        m.reader.close()
        if m in self.members:
            self.members.remove(m)

    def _setup(self) -> None:
        """Every member said hello: number them, then give each its config, sandbox and devices."""
        for m in [x for x in self.members if not x.hello]:
            self._turn_away(m, "did not say hello before the set was complete")
        ranks = sorted(m.rank for m in self.members)
        if ranks == list(range(self.count)):
            self.members.sort(key=lambda m: m.rank)
        for i, m in enumerate(self.members):
            m.index = i
        first = self.members[0]
        coordinator = f"{_host_part(first.peer_ip)}:{first.port}"
        table = [{"index": m.index, "host": m.host, "pid": m.pid} for m in self.members]
        self.pid = first.pid
        here = socket.gethostname()
        try:  # the members on this host take their devices through the kernel's leases, as one worker does
            local = sum(1 for m in self.members if m.host == here)
            self.lease = self._lease_local(self.platform, local * self.devices_per_process)
        except Exception as e:  # noqa: BLE001 - a LeaseError says who holds what
            self._end(f"could not lease devices for its processes on this host: {e}")
            return
        per_host: dict[str, int] = {}
        for m in self.members:
            local_rank = per_host.get(m.host, 0)
            per_host[m.host] = local_rank + 1
            ws = m.sandbox = self._prepare_sandbox()
            if ws.policy.get("join_netns") and local < len(self.members):
                # User-mode egress is NAT: members on other hosts could not reach the ones here.
                del ws.policy["join_netns"]
                ws.policy["egress"] = {
                    "unavailable": "the host's network, loopback included: the set has members on other hosts"
                }
            if ws.policy.get("profile", "off") != "off" and not ws.policy.get("allow_network", True):
                # Members reach the coordinator and their peers (gloo) in a namespace of their own
                # (set on the policy itself: the audit checks that each member is in it).
                try:
                    ws.policy["join_netns"] = self._private_network(m, here)
                except NetworkError as e:
                    self._end(
                        f"could not be given a network of its own ({e}): under a policy without network "
                        "a set's processes share a private network namespace on this host, and nothing else"
                    )
                    return
            policy = dict(ws.policy)
            member = {
                "index": m.index,
                "count": self.count,
                "coordinator": coordinator,
                "launcher": self.launcher_name,
                "devices_per_process": self.devices_per_process,
                "table": table,
                "heartbeat": self._options.heartbeat_interval,
                "silence": self._options.heartbeat_timeout,
                "timeout": int(self._options.start_timeout),
            }
            config = {**self._config, "max_frame": self._max_frame, "sandbox": policy, "member": member}
            env = {**self._env, **self._device_env(local_rank)}
            if self.lease is not None and m.host == here:
                config.update(self._leased(local_rank, env))
                if config.get("cpu_affinity"):  # its cpuset keeps every affinity it sets inside them
                    ws.restrict_cpus(config["cpu_affinity"])
                self._restrict_devices(ws, local_rank)
            self._send(m, {"type": "setup", "id": 0, "config": config, "env": env})

    def _private_network(self, m: Member, here: str) -> str:
        """The namespace this set's members join (made once per set); NetworkError if it can't be."""
        if m.host != here:
            raise NetworkError(f"{m.describe()} runs on another host, outside this host's namespaces")
        if self._network is None:
            self._network = PrivateNetwork()
        return self._network.path

    def _device_env(self, local_rank: int) -> dict[str, str]:
        """The i-th process on a host gets the i-th slice of ``devices_per_process`` devices."""
        k = self.devices_per_process
        if self.platform == "cpu":
            return {"JAX_NUM_CPU_DEVICES": str(k)}
        from ..protocol.jaxspec import settings_env

        ids = list(range(local_rank * k, (local_rank + 1) * k))
        return settings_env({"platform": self.platform, "devices": ids})

    def _leased(self, local_rank: int, env: dict[str, str]) -> dict[str, Any]:
        """The local member's slice of the lease: cores (pinned) or accelerators (made visible)."""
        from ..policy.accelerators import Lease, pin_env

        k = self.devices_per_process
        mine = self.lease.devices[local_rank * k : (local_rank + 1) * k]
        unit = "cores" if self.lease.platform == "cpu" else f"{self.lease.platform} devices"
        extra: dict[str, Any] = {"lease": f"{unit} {', '.join(map(str, mine))} ({self.lease.mode})"}
        if self.lease.platform == "cpu":
            extra["cpu_affinity"] = mine
        else:
            env.update(pin_env(Lease(self.lease.platform, mine, self.lease.mode)))
        return extra

    def _restrict_devices(self, ws: Any, local_rank: int) -> None:
        """A local member opens only its own slice's accelerator device files (a devices cgroup)."""
        if self.lease is None:
            return
        k = self.devices_per_process
        ws.restrict_to_lease(self.lease.platform, self.lease.devices[local_rank * k : (local_rank + 1) * k])

    # reading ------------------------------------------------------------------------
    def _frame(self, m: Member, msg: dict[str, Any]) -> None:
        if not m.hello and msg["type"] != "hello":
            self._turn_away(m, f"failed authentication (first message is {msg['type']!r}, not hello)")
            return
        m.last_seen = time.monotonic()
        self._handle(m, msg)

    def _wire_error(self, m: Member, error: Exception) -> None:
        if isinstance(error, wire.AuthenticationError):
            if not m.hello:  # not one of ours (no key): turned away, the set goes on
                self._turn_away(m, f"failed authentication ({error})")
            else:
                self._lost(m, f"sent a message that failed authentication ({error})")
        elif isinstance(error, wire.WireError):
            if not m.hello:
                self._turn_away(m, f"sent a malformed first message ({error})")
                return
            self.log.warning("Dropped a bad frame from %s: %s", m.describe(), error)
            self._on_problem(self, f"dropped a malformed message from {m.describe()} ({error})")
        elif m.hello:
            self._lost(m, None)
        else:
            self._turn_away(m, "closed its connection before it said hello")

    def _handle(self, m: Member, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "hello":
            if m.hello:
                self._lost(m, "said hello twice")
                return
            if msg["protocol"] != wire.PROTOCOL_VERSION:
                self._turn_away(m, f"speaks wire protocol {msg['protocol']}, not {wire.PROTOCOL_VERSION}")
                self._on_problem(
                    self, f"a set member speaks wire protocol {msg['protocol']}, not {wire.PROTOCOL_VERSION}"
                )
                return
            if sum(1 for x in self.members if x.hello) >= self.count:
                self._turn_away(m, "said hello after the set was complete")
                return
            m.hello, m.pid, m.host, m.rank = True, msg["pid"], msg["host"][:200], msg["rank"]
            m.port = msg["port"] if 0 < msg["port"] < 65536 else 0
            if sum(1 for x in self.members if x.hello) == self.count:
                self._setup()
        elif kind == "ready":
            missing = self._audit(m, msg)
            if missing:
                self._lost(
                    m, f"is not sandboxed as it reported (seen from outside, it lacks {', '.join(missing)})"
                )
                return
            m.ready = msg
            if all(x.ready is not None for x in self.members) and len(self.members) == self.count:
                self.log.info(
                    "Set of %d processes ready in %.2f s", self.count, time.monotonic() - self.started_at
                )
                self._on_message(self, dict(self.members[0].ready or msg))
        elif kind == "heartbeat" or kind == "standby":
            pass
        elif kind == "reply":
            self._reply(m, msg)
        elif kind == "stream":
            self._stream(m, msg)
        elif kind == "error":
            gather = self._running_gather()
            if gather is not None:
                gather.errors.append((m.index, msg))
            else:
                self._emit_error([m.index], msg)
        elif kind in DISPLAYS:
            if self.shows(m.index) and self._within_budget(msg):
                self._on_message(self, msg)
        elif kind == "input_request":
            # The frontend is asked for process 0's input() calls only; every process gets the
            # same answers in the same order, whether it asks before or after the frontend answered.
            m.inputs_asked += 1
            self._answer_inputs(m)
            if m.index == 0 and m.inputs_asked > len(self._answers):
                self._on_message(self, msg)
        elif m.index == 0 and self._within_budget(msg):  # comm, debug: the frontend talks to process 0
            self._on_message(self, msg)

    def catch_up(self, turns: int = 16) -> None:
        """Handle now what the members have sent and the loop has not read yet (a bounded amount)."""
        for m in list(self.members):
            for _ in range(turns):
                if not m.reader.pending():
                    break
                m.reader.turn()

    def last_frame_at(self) -> float:
        """When the last message of any member was read (time.monotonic())."""
        return max((m.reader.last_frame_at for m in self.members), default=0.0)

    def shows(self, index: int) -> bool:
        """Whether stdout and displays of process ``index`` reach the frontend (``%jax_output``)."""
        return self.output_mode == "all" or self.output_mode == str(index)

    def _within_budget(self, msg: dict[str, Any]) -> bool:
        """The cell's one output budget (jax_kernel.protocol.budget) for a display or comm message."""
        return msg["type"] not in COUNTED or self.stream_budget.admit_message(output_size(msg))

    def _stream(self, m: Member, msg: dict[str, Any]) -> None:
        if msg["name"] == "stdout" and not self.shows(m.index):
            return
        text = msg["text"]
        if msg["name"] == "stderr" or self.output_mode == "all":
            text = self._prefixed(m, msg["name"], text)
        text = self.stream_budget.admit(text)
        if text:
            self._on_message(self, {**msg, "text": text})

    @staticmethod
    def _prefixed(m: Member, name: str, text: str) -> str:
        out = []
        for line in text.splitlines(keepends=True):
            if m.line_start[name]:
                out.append(f"[{m.index}] ")
            out.append(line)
            m.line_start[name] = line.endswith(("\n", "\r"))
        return "".join(out)

    def _running_gather(self) -> _Gather | None:
        for gather in self._gathers.values():
            if gather.kind == "execute":
                return gather
        return None

    def _emit_error(self, indices: list[int], msg: dict[str, Any]) -> None:
        who = f"process {indices[0]}" if len(indices) == 1 else f"processes {', '.join(map(str, indices))}"
        if len(indices) == self.count and self.count > 1:
            who = f"every process ({', '.join(map(str, indices))})"
        self._on_message(self, {**msg, "traceback": [f"[{who}]", *msg["traceback"]]})

    def _reply(self, m: Member, msg: dict[str, Any]) -> None:
        gather = self._gathers.get(msg["id"])
        if gather is None:
            if m.index == 0:
                self._on_message(self, msg)
            return
        gather.replies[m.index] = msg["content"]
        if len(gather.replies) < sum(1 for x in self.members if not x.gone):
            return
        del self._gathers[msg["id"]]
        # Errors shown once per distinct error, naming the processes that raised it.
        groups: dict[str, tuple[list[int], dict[str, Any]]] = {}
        for index, err in gather.errors:
            key = json.dumps([err["ename"], err["evalue"], err["traceback"]])
            groups.setdefault(key, ([], err))[0].append(index)
        for indices, err in groups.values():
            self._emit_error(sorted(indices), err)
        self._on_message(self, {"type": "reply", "id": msg["id"], "content": self._combine(gather)})

    def _combine(self, gather: _Gather) -> dict[str, Any]:
        """Process 0's reply, unless another process failed where it did not: the cell failed."""
        content = dict(gather.replies.get(0) or next(iter(gather.replies.values())))
        if content.get("status") != "error":
            for index in sorted(gather.replies):
                other = gather.replies[index]
                if other.get("status") == "error":
                    for key in ("ename", "evalue", "traceback"):
                        if key in other:
                            content[key] = other[key]
                    content["status"] = "error"
                    if isinstance(content.get("evalue"), str):
                        content["evalue"] = f"[process {index}] {content['evalue']}"
                    break
        mode = content.pop("output_mode", None)
        if isinstance(mode, str) and (mode == "all" or (mode.isdigit() and int(mode) < self.count)):
            self.output_mode = mode
            what = "every process (prefixed with its index)" if mode == "all" else f"process {mode}"
            self._on_message(
                self,
                {
                    "type": "stream",
                    "name": "stdout",
                    "text": f"[jax-kernel] stdout and displays from {what}\n",
                },
            )
        return content

    # sending ------------------------------------------------------------------------
    def _send(self, m: Member, msg: dict[str, Any]) -> bool:
        if m.gone:
            return False
        try:
            m.conn.send(msg)
            return True
        except OSError:
            return False

    def send(self, msg: dict[str, Any]) -> bool:
        """Send a request: to every member if it runs code, else to process 0."""
        kind = msg["type"]
        live = [m for m in self.members if not m.gone and m.index >= 0]
        if not live or self._ending:
            return False
        if kind == "shutdown":
            self._stopping = True
        if kind == "selftest_done":  # every member ran %sandbox --selftest; process 0's asked for it
            return all([self._send(m, msg) for m in live])
        if kind == "input_reply":
            self._answers.append(msg)
            ok = True
            for m in live:
                ok = self._answer_inputs(m) and ok
            return ok
        if kind in BROADCAST:
            targets = live
            if kind != "shutdown":
                self._gathers[msg["id"]] = _Gather(kind)
            if kind == "execute":
                self._answers = []
                for m in live:
                    m.inputs_asked = m.inputs_answered = 0
        else:
            targets = live[:1]
        ok = True
        for m in targets:
            ok = self._send(m, msg) and ok
        return ok

    def _answer_inputs(self, m: Member) -> bool:
        """Give ``m`` the answers it has asked for and the frontend has given."""
        ok = True
        while m.inputs_answered < min(m.inputs_asked, len(self._answers)):
            ok = self._send(m, self._answers[m.inputs_answered]) and ok
            m.inputs_answered += 1
        return ok

    def interrupt(self) -> None:
        """Interrupt the running cell in every member (over the wire: signals don't cross hosts)."""
        for m in self.members:
            self._send(m, {"type": "interrupt", "id": 0})

    # life and death ------------------------------------------------------------------
    def _tick(self) -> None:
        if self._ending:
            return
        now = time.monotonic()
        for m in list(self.members):
            if m.gone:
                continue
            # Before it is ready a member is busy importing and joining (it sends no heartbeats yet):
            # start_timeout covers that part.
            if m.ready is not None and now - m.last_seen > self._options.heartbeat_timeout:
                self._lost(
                    m,
                    f"went silent: no heartbeat for {self._options.heartbeat_timeout:g} s "
                    "(its host or the network may be down)",
                )
                return
            self._send(m, {"type": "heartbeat", "id": 0})
        self._timers.append(self._loop.call_later(self._options.heartbeat_interval, self._tick))

    def _lost(self, m: Member, how: str | None) -> None:
        """A member's wire closed (or failed): the set can't go on without it."""
        if m.gone:
            return
        m.gone = True
        m.reader.close()
        if self._stopping or self._ending:
            if all(x.gone for x in self.members):
                self._end(None)
            return
        if how is None:
            # Why it closed shows in its exit status, known once the reaper has waited for it
            # (off the event loop): see _finish.
            self.log.warning("Set member %s closed its connection", m.describe())
            self._unexplained = m
            self._end(None)
            return
        self.log.warning("Set member %s %s", m.describe(), how)
        self._end(self._lost_reason(m, how))

    @staticmethod
    def _lost_reason(m: Member, how: str) -> str:
        return (
            f"lost {m.describe()}, which {how}. A multi-controller JAX job cannot lose a member, so the "
            f"whole set was stopped"
        )

    def _end(self, reason: str | None) -> None:
        """Stop every member and the launcher, then report the set's exit (once)."""
        if self._ending:
            return
        self._ending = True
        if reason is not None and self.kill_reason is None:
            self.kill_reason = reason
        for timer in self._timers:
            timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        for m in self.members:
            if not m.gone:
                m.gone = True
                m.reader.close()  # a member whose kernel is gone exits, even in the middle of XLA
        threading.Thread(target=self._reap, name="jax-set-reap", daemon=True).start()

    def _audit(self, m: Member, msg: dict[str, Any]) -> list[str]:
        """:func:`jax_kernel.supervision.audit.audit` for a member this kernel started on this host.

        Only those: another host's /proc is out of sight, and a pid a member names is checked only
        if it is one of the processes the launcher started here (else it could name any process)."""
        if m.sandbox is None or m.host != socket.gethostname():
            return []
        local = {p.pid for p in self._local_processes()}
        if m.pid not in local:
            return (
                []
                if not local
                else [f"a pid of its own (it named {m.pid}, not a process the launcher started)"]
            )
        missing = audit(m.pid, m.sandbox.policy, msg.get("sandbox"))
        self.log.info(
            "Set member %s checked from outside: %s", m.describe(), "; ".join(missing) or "sandboxed"
        )
        return missing

    def _local_processes(self) -> list[Any]:
        """The processes this kernel started for the set (launchers' and everything under them)."""
        launcher = self._launcher
        if launcher is None:
            return []
        roots = [el.process for el in (getattr(launcher, "launchers", {}) or {}).values()]
        if getattr(launcher, "process", None) is not None:
            roots.append(launcher.process)
        procs = []
        for root in roots:
            if root is None:
                continue
            with contextlib.suppress(Exception):
                procs.extend(root.children(recursive=True))
            procs.append(root)
        return procs

    def _reap(self) -> None:
        import psutil

        procs = self._local_processes()
        gone, alive = psutil.wait_procs(procs, timeout=2.0 if self._stopping else 0.5)
        # Exit statuses of what the kernel started itself (the local launcher's members): the
        # ones that ended before being killed here say how a lost member died.
        codes = {p.pid: p.returncode for p in gone if p.returncode is not None}
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5.0)
        if self._launcher is not None and not procs:
            # Nothing of the set runs under this kernel (a batch job, ...): the launcher's stop
            # cancels it (scancel, qdel, bkill, ...); the members exit on their own anyway once
            # the wire is closed.
            with contextlib.suppress(Exception):
                stopped = self._launcher.stop()
                if inspect.isawaitable(stopped):
                    asyncio.run_coroutine_threadsafe(_awaited(stopped), self._loop).result(30)
        if self._network is not None:
            self._network.close()
        try:
            self._loop.call_soon_threadsafe(self._finish, codes)
        except RuntimeError:
            self._closed.set()  # the loop is closed: the kernel is exiting

    def _finish(self, codes: dict[int, int]) -> None:
        lost = self._unexplained
        if lost is not None and self.kill_reason is None:
            code = codes.get(lost.pid, self._launcher_exit_code(lost.pid))
            how = "closed its connection (it exited)" if code is None else describe_exit(int(code))
            self.kill_reason = self._lost_reason(lost, how)
        for m in self.members:
            if m.sandbox is not None:
                self._release_sandbox(m.sandbox)
        self._on_closed()
        if self.lease is not None:
            self.lease.release()
        self._diag = self._read_output()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._closed.set()
        if not self.ready.done() and self.kill_reason is None:
            self.kill_reason = "stopped before it was ready"
        self._on_exit(self, None)

    def _launcher_exit_code(self, pid: int) -> int | None:
        """A member's exit status as the launcher saw it: ipyparallel's process launchers wait for
        their process on a thread of their own, and whichever waits first gets the status.  A
        stopped engine's launcher leaves the set launcher's ``launchers`` and its stop data goes to
        the set launcher's ``stop_data["engines"]``."""
        launcher = self._launcher
        if launcher is None:
            return None
        seen = [getattr(el, "stop_data", None) for el in (getattr(launcher, "launchers", {}) or {}).values()]
        stop_data = getattr(launcher, "stop_data", None)
        if isinstance(stop_data, dict) and isinstance(stop_data.get("engines"), dict):
            seen += list(stop_data["engines"].values())
        for data in seen:
            if isinstance(data, dict) and data.get("pid") == pid and data.get("exit_code") is not None:
                return int(data["exit_code"])
        return None

    def _read_output(self) -> str:
        try:
            text = self._launcher.get_output() if self._launcher is not None else ""
        except Exception:  # noqa: BLE001 - diagnostics are best effort
            text = ""
        return (text or "")[-DIAG_TAIL:]

    def diagnostics(self) -> str:
        """The tail of what the members wrote to their original stderr (faulthandler, launcher errors)."""
        return self._diag or self._read_output()

    def alive(self) -> bool:
        """Whether the set is still running (no member lost, not stopped)."""
        return not self._ending

    def kill(self, reason: str) -> None:
        """Stop the whole set now (SIGKILL for what runs here; closing the wire ends the rest)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._end(reason)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._end, reason)
        else:
            self.kill_now()

    def wait(self, timeout: float) -> int | None:
        """Wait until every member and the launcher are gone; None if they are not yet."""
        return 0 if self._closed.wait(timeout) else None

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): SIGKILL what runs on this host."""
        for p in self._local_processes():
            with contextlib.suppress(Exception):
                p.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _host_part(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
