"""The kernel -> worker contract: the config the kernel writes for a worker, typed and checked.

The kernel writes a :class:`WorkerConfig` to the worker's config memfd (``@FD``), or sends one in
a standby's ``activate`` request and a set member's ``setup``; its ``sandbox`` part is the
:class:`SandboxPolicy` the worker applies to itself before any user code runs.  The worker runs
:func:`check_worker_config` before anything reads the config, as the kernel runs
``validate_worker_message`` on what the worker sends: a key of another name or type is a bug
(or a kernel of another version), and a worker that guessed would run under a policy nobody wrote.
"""

from __future__ import annotations

import types
import typing
from typing import Any, TypedDict

from .checks import is_a


class ConfigError(ValueError):
    """A worker config that breaks :class:`WorkerConfig`; the message is one line naming the key."""


class FsPrivateTmp(TypedDict):
    """The worker's own ``/tmp``: its folder on the host, and the host paths under /tmp kept visible."""

    dir: str
    keep: list[str]


class FsSharedCache(TypedDict):
    """A cache that outlives the kernel (JAX's compilation cache): the worker sees only its folder."""

    root: str
    folder: str


class FsUserDirs(TypedDict, total=False):
    """The notebook folder's own folders that outlive the kernel (``jax_kernel.policy.domains``):
    ``packages``, the prefix ``%pip`` installs into (on the worker's ``sys.path``); ``cache``, its
    XDG cache, bound over ``home_cache`` (the real ``~/.cache``) with the paths in ``keep`` (what
    of the real one the worker needs) bound back at their own paths.  Each root is narrowed to
    its folder in the worker's mount namespace."""

    packages: FsSharedCache
    cache: FsSharedCache
    home_cache: str
    keep: list[str]


class FsPolicy(TypedDict, total=False):
    """The ``fs`` part of a policy (:func:`jax_kernel.policy.paths.fs_policy`)."""

    writable: list[str]
    hidden: list[str]
    devices: list[str]
    mask_file: str
    mask_id: list[int] | None
    private_writable: list[str]
    readonly: list[str]
    shared_cache: FsSharedCache
    resolv_conf: str  # the egress namespace's resolver, bound over /etc/resolv.conf
    private_tmp: FsPrivateTmp
    user_dirs: FsUserDirs


class ResourceLimits(TypedDict, total=False):
    """The ``limits`` part of a policy (:func:`jax_kernel.policy.limits.resource_limits`), in bytes."""

    memory_limit: int
    max_processes: int
    max_open_files: int
    max_file_size: int


class Egress(TypedDict, total=False):
    """Where an allowed network comes from: a user-mode egress (``describe``) or, where there is
    none, the host's network (``unavailable``: why)."""

    describe: str
    unavailable: str


class NetRules(TypedDict, total=False):
    """Landlock TCP port rules (:mod:`jax_kernel.worker.sandbox.network`): ports and ``[low, high]``."""

    bind: list[int]
    connect: list[int]
    bind_range: list[int]
    connect_range: list[int]


class SandboxPolicy(TypedDict, total=False):
    """What :meth:`jax_kernel.policy.sandbox.Sandbox.prepare_worker` resolves for one worker and
    :func:`jax_kernel.worker.sandbox.apply` applies (``{"profile": "off"}``: nothing)."""

    profile: str
    allow_network: bool
    fs: FsPolicy
    limits: ResourceLimits
    history_file: str
    deny_unix_sockets: bool
    kernel_side: dict[str, str]  # what the kernel enforces itself, for the worker's report
    egress: Egress
    join_netns: str  # the network namespace to join (a user-mode egress, a set's own)
    cgroups: dict[str, str]  # controller -> its cgroup.procs file
    net_rules: NetRules


class MemberConfig(TypedDict, total=False):
    """A set member's place in its set (``jax_kernel.supervision.workerset.provision``)."""

    index: int
    count: int
    coordinator: str
    launcher: str
    devices_per_process: int
    table: list[dict[str, Any]]  # each member: index, host, pid
    heartbeat: float
    silence: float
    timeout: int


class StatePolicy(TypedDict, total=False):
    """Where and how a worker snapshots its variables (:mod:`jax_kernel.protocol.state`)."""

    dir: str  # the kernel's private snapshot dir (only its own workers can reach it)
    enabled: bool
    max_total_bytes: int
    max_value_bytes: int
    max_seconds: float
    restore: str  # the digest of the snapshot to restore before the first request ("": none)
    member: str  # a set member's index ("": a single worker): its own part of the dir


class WorkerConfig(TypedDict, total=False):
    """Everything the kernel tells a worker at start (and a standby when it takes up a job)."""

    parent_pid: int  # the kernel: the worker exits if its parent is another process
    max_frame: int
    sandbox: SandboxPolicy
    standby: bool  # warm up and wait for ``activate`` instead of taking up work
    execution_count: int
    output_limit: int
    session_name: str  # the notebook's path as the server names it (JPY_SESSION_NAME): __session__
    host_platform: str
    memory_cap: float
    lease: str  # the devices this worker leases, in words
    cpu_affinity: list[int]
    jax_settings: dict[str, Any]  # checked by jax_kernel.protocol.jaxspec where it is applied
    state: StatePolicy
    member: MemberConfig


def check_worker_config(obj: Any) -> WorkerConfig:
    """``obj`` as a :class:`WorkerConfig`; ConfigError, naming the key, for an unknown key or a
    value of another type (nested parts included)."""
    _check(obj, WorkerConfig, "config")
    return typing.cast(WorkerConfig, obj)


def _is_typeddict(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, dict) and hasattr(kind, "__required_keys__")


def _check(value: Any, kind: Any, where: str) -> None:
    """Raise ConfigError unless ``value`` (decoded JSON) is of ``kind`` (an annotation above)."""
    if kind is Any:
        return
    if _is_typeddict(kind):
        _check_typeddict(value, kind, where)
        return
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                _check(value, option, where)
            except ConfigError:
                continue
            return
        raise ConfigError(f"{where} has type {type(value).__name__}, not {_name(kind)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} has type {type(value).__name__}, not a list")
        for i, item in enumerate(value):
            _check(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} has type {type(value).__name__}, not an object")
        for key, item in value.items():
            _check(key, args[0], f"a key of {where}")
            _check(item, args[1], f"{where}[{key!r}]")
        return
    _check_scalar(value, kind, where)


def _check_scalar(value: Any, kind: type, where: str) -> None:
    # JSON has one number type: a float field takes an int; bool is an int subclass and takes neither.
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if kind is type(None):
        ok = value is None
    else:
        ok = is_a(value, accepted)
    if not ok:
        raise ConfigError(f"{where} has type {type(value).__name__}, not {_name(kind)}")


def _check_typeddict(value: Any, kind: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} has type {type(value).__name__}, not an object")
    fields = typing.get_type_hints(kind)
    for key in value:
        if key not in fields:
            raise ConfigError(f"{where} has an unknown key {key!r}")
    for key in kind.__required_keys__:
        if key not in value:
            raise ConfigError(f"{where} lacks the key {key!r}")
    for key, item in value.items():
        _check(item, fields[key], f"{where}[{key!r}]")


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
