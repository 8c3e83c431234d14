"""load_jax_library: start JAX with the settings asked for, or say why only a new worker can.

Runs in the worker process.  Platform, visible devices, x64, host device count and allocator are read
by JAX only when it is imported or its backend starts: when the backend already runs with others,
:class:`~.errors.JaxRestartRequired` asks the kernel for a new worker instead of silently ignoring
them (JAX would) or failing.  JAX is imported lazily, inside the functions, for the same reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ...protocol import jaxspec
from ...protocol.jaxspec import JaxSpecError
from .errors import JaxLoadError, JaxRestartRequired, one_line
from .info import JaxInfo, jax_info
from .settings import STATE, backend_platform, backend_started, present_devices


def _set_conflicts(settings: Mapping[str, Any]) -> list[str]:
    """Set settings asked for that differ from the set (or lone worker) this process belongs to."""
    processes = int(STATE.member.get("count", 1))
    current = {
        "processes": processes,
        "launcher": STATE.member.get("launcher"),
        "devices_per_process": STATE.member.get("devices_per_process"),
    }
    out = []
    wanted = settings.get("processes")
    if wanted is not None and wanted != processes:
        out.append(f"processes {processes} -> {wanted}")
    elif processes > 1:
        for key in ("launcher", "devices_per_process"):
            if settings.get(key) is not None and settings[key] != current[key]:
                out.append(f"{key} {current[key]} -> {settings[key]}")
    return out


def _needs_lease(settings: Mapping[str, Any]) -> bool:
    """A device count, or accelerator ids: only the kernel can lease them, to a new worker."""
    devices = settings.get("devices")
    if isinstance(devices, int):
        return True
    return isinstance(devices, list) and (settings.get("platform") or STATE.host_platform) != "cpu"


def _env_float(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes")


def _conflicts(settings: Mapping[str, Any]) -> list[str]:
    """Startup settings asked for that differ from what the running backend has."""
    import jax

    config = cast(Any, jax.config)  # options are attributes made at run time: the stubs declare none
    out = []
    platform = backend_platform()
    if settings.get("platform") and settings["platform"] != platform:
        out.append(f"platform {platform} -> {settings['platform']}")
    if settings.get("x64") is not None and bool(settings["x64"]) != bool(config.jax_enable_x64):
        out.append(f"x64 {bool(config.jax_enable_x64)} -> {settings['x64']}")
    if settings.get("host_device_count") is not None:
        count = len(jax.local_devices(backend="cpu"))
        if count != settings["host_device_count"]:
            out.append(f"host_device_count {count} -> {settings['host_device_count']}")
    if isinstance(settings.get("devices"), int) or (
        settings.get("devices") is not None and (settings.get("platform") or platform) != "cpu"
    ):
        if settings["devices"] != STATE.applied.get("devices", [d.id for d in jax.devices()]):
            out.append(f"devices -> {settings['devices']}")
    for key, var, read in (
        ("memory_fraction", "XLA_PYTHON_CLIENT_MEM_FRACTION", _env_float),
        ("preallocate", "XLA_PYTHON_CLIENT_PREALLOCATE", _env_bool),
    ):
        if settings.get(key) is not None and read(var) != settings[key]:
            out.append(f"{key} {read(var)} -> {settings[key]}")
    return out


def _apply_runtime(settings: Mapping[str, Any]) -> None:
    """Settings JAX accepts at any time."""
    import jax

    if settings.get("compilation_cache_dir"):
        cache = settings["compilation_cache_dir"]
        try:
            os.makedirs(cache, exist_ok=True)
            if not os.access(cache, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as e:
            raise JaxLoadError(
                f"compilation cache dir {cache!r} is not writable here ({e.strerror}); in a sandboxed "
                "worker use one under Sandbox.writable_paths or the worker's temp dir"
            ) from None
        jax.config.update("jax_compilation_cache_dir", cache)
    if settings.get("matmul_precision"):
        jax.config.update("jax_default_matmul_precision", settings["matmul_precision"])


def _start(settings: Mapping[str, Any]) -> None:
    """Apply startup settings, import JAX and start its backend; explain a missing platform."""
    os.environ.update(jaxspec.settings_env(settings))
    import jax

    before = cast(
        Any, jax.config
    ).jax_platforms  # options are attributes made at run time: the stubs declare none
    if settings.get("platform"):
        jax.config.update("jax_platforms", settings["platform"])
    if settings.get("x64") is not None:
        jax.config.update("jax_enable_x64", bool(settings["x64"]))
    if settings.get("host_device_count") is not None:
        jax.config.update("jax_num_cpu_devices", int(settings["host_device_count"]))
    try:
        jax.devices()
    except (AssertionError, RuntimeError) as e:
        # JAX_PLATFORMS=cuda without a GPU fails with a bare AssertionError: start what is there
        # instead, so the error can say what is present and JAX stays usable in this worker.
        detail = one_line(e) if str(e).strip() else "its backend did not start"
        if settings.get("platform"):
            jax.config.update("jax_platforms", before if before != settings["platform"] else None)
            os.environ.pop("JAX_PLATFORMS", None)
        try:
            present = present_devices()
        except Exception:  # noqa: BLE001 - the error below is what matters
            present = "nothing"
        what = settings.get("platform") or "the default platform"
        raise JaxLoadError(f"platform {what!r} is not available ({detail}); present: {present}") from None


def _check_plugin(platform: str | None) -> None:
    """A GPU platform whose plugin is not installed cannot appear in a new worker either: say so now."""
    from jax._src import xla_bridge

    if platform in ("cuda", "rocm") and platform not in xla_bridge._backend_factories:
        raise JaxLoadError(
            f"platform {platform!r} is not available (no {platform} plugin is installed, e.g. "
            f"jax[{'cuda12' if platform == 'cuda' else 'rocm'}]); present: {present_devices()}"
        )


def _check_devices(settings: Mapping[str, Any]) -> None:
    import jax

    devices = settings.get("devices")
    if devices is None:
        return
    if isinstance(devices, int):
        if len(jax.devices()) < devices:
            raise JaxLoadError(f"{devices} devices asked for; present: {present_devices()}")
        return
    present = [d.id for d in jax.devices()]
    missing = [d for d in devices if d not in present] if backend_platform() == "cpu" else []
    if backend_platform() != "cpu" and len(jax.devices()) < len(devices):
        missing = devices[len(jax.devices()) :]
    if missing:
        raise JaxLoadError(
            f"device{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} not present; "
            f"present: {present_devices()}"
        )


def load(settings: Mapping[str, Any]) -> JaxInfo:
    """load_jax_library's work, on already-validated settings."""
    settings = dict(settings)
    fraction = settings.get("memory_fraction")
    if STATE.memory_cap and fraction is not None and fraction > STATE.memory_cap:
        # The kernel's environment holds the worker to its share anyway; say so, and do not restart
        # for a setting it would not get.
        print(
            f"[jax-kernel] memory_fraction {fraction:g} is over this kernel's share of a shared device; "
            f"using {STATE.memory_cap:g} (Accelerators.mode = 'shared')",
            file=sys.stderr,
        )
        settings["memory_fraction"] = STATE.memory_cap
    if STATE.in_worker and _needs_lease(settings) and settings["devices"] != STATE.applied.get("devices"):
        # Devices are leased by the kernel (so that kernels on one host do not collide) and pinned
        # before JAX starts: a worker cannot take them itself.
        raise JaxRestartRequired(
            {**STATE.applied, **settings},
            f"devices {settings['devices']!r} are leased by the kernel and given to a new worker",
        )
    changes = _set_conflicts(settings)
    if changes:
        if not STATE.in_worker:
            raise JaxLoadError("a set of processes needs the jax kernel (%load_jax --processes N)")
        count = settings.get("processes") or STATE.member.get("count", 1)
        what = f"a set of {count} processes" if count > 1 else "a single worker process"
        carried = dict(STATE.applied)
        if count != int(STATE.member.get("count", 1)):
            # Devices are counted per process in a set (devices_per_process) and per worker
            # otherwise: what this worker was started with does not carry over to the other shape.
            for key in ("host_device_count", "devices", "devices_per_process", "launcher"):
                carried.pop(key, None)
        raise JaxRestartRequired({**carried, **settings}, f"{what} asked for ({', '.join(changes)})")
    if backend_started():
        if settings.get("devices") is not None and not settings.get("platform"):
            settings["platform"] = backend_platform()
        _check_plugin(settings.get("platform"))
        conflicts = _conflicts(settings)
        if conflicts:
            wanted = {**STATE.applied, **settings}
            reason = (
                "JAX's backend already started with other settings ("
                + ", ".join(conflicts)
                + "); JAX reads them only when it starts"
            )
            if STATE.in_worker:
                raise JaxRestartRequired(wanted, reason)
            raise JaxLoadError(reason + ": restart Python to apply them")
    else:
        _start(settings)
        STATE.applied = {
            **STATE.applied,
            **{k: settings[k] for k in jaxspec.STARTUP_SETTINGS if k in settings},
        }
    _apply_runtime(settings)
    _check_devices(settings)
    return jax_info()


def load_jax_library(
    platform: str | None = None,
    devices: Sequence[int] | str | int | None = None,
    x64: bool | None = None,
    host_device_count: int | None = None,
    memory_fraction: float | None = None,
    preallocate: bool | None = None,
    compilation_cache_dir: str | None = None,
    matmul_precision: str | None = None,
    processes: int | None = None,
    launcher: str | None = None,
    devices_per_process: int | None = None,
) -> JaxInfo:
    """Start JAX with these settings (None: as configured) and describe what it has.

    Platform, devices, x64, host device count and allocator settings take effect only before
    JAX's backend starts; in the kernel, asking for different ones replaces the worker (all
    variables are lost, and the kernel says so first).  ``processes`` > 1 makes the worker a set
    of processes placed by ``launcher`` (ipyparallel's: local, mpi, slurm, ...), each with
    ``devices_per_process`` devices, joined by JAX's distributed runtime; every cell then runs in
    every process (SPMD).  Returns a dict (rich display in a
    notebook) of versions, backend, devices, x64 and the compilation cache directory.
    """
    try:
        settings = jaxspec.check_load_settings(
            {
                "platform": platform,
                "devices": list(devices) if isinstance(devices, tuple) else devices,
                "x64": x64,
                "host_device_count": host_device_count,
                "memory_fraction": memory_fraction,
                "preallocate": preallocate,
                "compilation_cache_dir": compilation_cache_dir,
                "matmul_precision": matmul_precision,
                "processes": processes,
                "launcher": launcher,
                "devices_per_process": devices_per_process,
            }
        )
    except JaxSpecError as e:
        raise JaxLoadError(str(e)) from None
    return load(settings)
