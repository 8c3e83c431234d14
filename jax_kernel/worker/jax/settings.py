"""What this worker process started JAX with, and the JAX settings taken before the first cell.

Runs in the worker process.  The worker server calls :func:`configure` with the kernel's settings,
:func:`apply_environment` for a standby worker that imported JAX early, and :func:`start_distributed`
for a member of a set; :data:`STATE` is what loading, the magics and the server read afterwards.
JAX is imported lazily, inside the functions, so that importing this module starts nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...protocol import jaxspec
from ...protocol.jaxspec import JaxSpecError


@dataclass
class _State:
    in_worker: bool = False  # set by the worker server: restarts are possible
    applied: dict[str, Any] = field(default_factory=dict)  # settings this process started JAX with
    host_platform: str = "cpu"  # what the kernel found on the host, to know which requests need a lease
    lease: str = ""  # the kernel's description of the devices it leased for this worker
    memory_cap: float = 0.0  # the most memory_fraction the host's policy allows (0: no cap)
    # This worker's place in a set of processes (multi-controller JAX); empty for a lone worker:
    # {"index", "count", "launcher", "coordinator", "table": [{"index", "host", "pid"}]}.
    member: dict[str, Any] = field(default_factory=dict)
    output_mode: str | None = None  # a %jax_output the kernel has not been told of yet


STATE = _State()


def configure(config: Mapping[str, Any]) -> None:
    """Called by the worker at start with the settings the kernel started it with."""
    STATE.in_worker = True
    settings = config.get("jax_settings") or {}
    try:
        STATE.applied = jaxspec.check_load_settings(settings)
    except JaxSpecError:
        STATE.applied = {}
    STATE.host_platform = str(config.get("host_platform") or "cpu")
    STATE.lease = str(config.get("lease") or "")
    cap = config.get("memory_cap")
    STATE.memory_cap = float(cap) if isinstance(cap, (int, float)) and 0 < cap <= 1 else 0.0
    STATE.member = dict(config.get("member") or {})


def start_distributed(member: Mapping[str, Any]) -> None:
    """Join the set's JAX distributed runtime and start the backend, before the first cell.

    Process 0 serves the coordinator; on CPU, collectives across processes go through gloo
    (JAX's default CPU collectives are in-process only).  Starting the backend here means a
    set is ready when every member can run a cross-process collective, and a member that can't
    fails the start, with its reason, instead of the user's first cell.
    """
    import jax

    if (STATE.applied.get("platform") or STATE.host_platform) == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=str(member["coordinator"]),
        num_processes=int(member["count"]),
        process_id=int(member["index"]),
        initialization_timeout=int(member.get("timeout", 120)),
    )
    # One all-reduce over every device: gloo connects its peers on the first collective (and says
    # so on stdout, which would land in the user's first cell), and a member whose peers it can't
    # reach fails here, at start, rather than hanging in a cell.
    import jax.numpy as jnp

    saved = os.dup(1)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")(
            jnp.ones(jax.local_device_count())
        ).block_until_ready()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


#: JAX options read from the environment at import, for a worker that imported JAX before it
#: was given its settings (the standby worker).
_IMPORT_TIME_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "JAX_PLATFORMS": ("jax_platforms", str),
    "JAX_ENABLE_X64": ("jax_enable_x64", lambda v: v.strip().lower() in ("1", "true", "yes")),
    "JAX_NUM_CPU_DEVICES": ("jax_num_cpu_devices", int),
    "JAX_COMPILATION_CACHE_DIR": ("jax_compilation_cache_dir", str),
    "JAX_DEFAULT_MATMUL_PRECISION": ("jax_default_matmul_precision", str),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": ("jax_persistent_cache_min_compile_time_secs", float),
    "JAX_COMPILATION_CACHE_MAX_SIZE": ("jax_compilation_cache_max_size", int),
}


def apply_environment(env: Mapping[str, str]) -> None:
    """Take on environment variables as if they had been set before JAX was imported.

    Allocator and visible-device variables are read when the backend starts, so setting them is
    enough; JAX's own options were read at import and are updated in its config.
    """
    os.environ.update(env)
    if "jax" not in sys.modules:
        return
    import jax

    for var, (option, convert) in _IMPORT_TIME_OPTIONS.items():
        if var in env:
            jax.config.update(option, convert(env[var]))


def backend_started() -> bool:
    """Whether JAX's backend is running (after which startup settings cannot change)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def backend_platform() -> str:
    import jax
    from jax._src import xla_bridge

    return xla_bridge.canonicalize_platform(jax.default_backend())


def present_devices() -> str:
    """A short account of the platforms and devices this process has, for error messages."""
    import jax

    parts = []
    for platform in ("cpu", "gpu", "tpu"):
        try:
            devs = jax.devices(platform)
        except RuntimeError:
            continue
        ids = ", ".join(str(d.id) for d in devs)
        parts.append(f"{devs[0].platform}: {len(devs)} device{'s' if len(devs) != 1 else ''} ({ids})")
    return "; ".join(parts) or "no devices"
