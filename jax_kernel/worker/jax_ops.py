"""The three JAX entry points, as plain functions over JAX: load, transform, run a program.

Each is reachable three ways and all three end up here: a magic (``magics.py``), a
``jax_*_request`` from the kernel (``handle_request``), and a function already defined in
every worker namespace (also importable as ``from jax_kernel import ...``).

JAX is imported lazily, inside the functions: ``load_jax_library`` must be able to set
what JAX reads only once, when it is imported or when its backend starts (platform,
visible devices, x64, host device count, allocator).  When the backend already runs with
other settings, :class:`JaxRestartRequired` asks the kernel for a new worker instead of
silently ignoring them (JAX would) or failing.
"""

from __future__ import annotations

import html
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import jaxspec
from ..protocol.jaxspec import JaxSpecError

#: Largest serialized program accepted (bytes).
MAX_PROGRAM_BYTES = 256 * 1024 * 1024
#: Array elements (over all leaves of a result) whose values go into ``application/json``.
DEFAULT_MAX_VALUES = 1000
#: Seconds of steady-state runs ``time`` aims for when no run count is given.
TIME_BUDGET_S = 1.0


class JaxEntryError(Exception):
    """A clear, one-line error from an entry point (shown without a traceback)."""


class JaxLoadError(JaxEntryError):
    """load_jax_library could not give JAX the platform or devices asked for."""


class TransformError(JaxEntryError):
    """execute_jax_transformation could not build or call the transformed function."""


class ProgramRejected(JaxEntryError):
    """execute_jax_program refused a program before running it."""


class JaxRestartRequired(BaseException):
    """JAX's backend already started with other settings: only a new worker can apply them.

    A BaseException so that a cell's ``except Exception`` does not swallow it: the rest of
    the cell must not run in a worker that is about to be replaced.
    """

    def __init__(self, settings: dict[str, Any], reason: str) -> None:
        super().__init__(reason)
        self.settings = settings
        self.reason = reason


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


def _set_conflicts(settings: Mapping[str, Any]) -> list[str]:
    """Set settings asked for that differ from the set (or lone worker) this process belongs to."""
    current = {
        "processes": int(STATE.member.get("count", 1)),
        "launcher": STATE.member.get("launcher"),
        "devices_per_process": STATE.member.get("devices_per_process"),
    }
    out = []
    wanted = settings.get("processes")
    if wanted is not None and wanted != current["processes"]:
        out.append(f"processes {current['processes']} -> {wanted}")
    elif current["processes"] > 1:
        for key in ("launcher", "devices_per_process"):
            if settings.get(key) is not None and settings[key] != current[key]:
                out.append(f"{key} {current[key]} -> {settings[key]}")
    return out


#: JAX options read from the environment at import, for a worker that imported JAX before it
#: was given its settings (the standby worker).
_IMPORT_TIME_OPTIONS = {
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


def _needs_lease(settings: Mapping[str, Any]) -> bool:
    """A device count, or accelerator ids: only the kernel can lease them, to a new worker."""
    devices = settings.get("devices")
    if isinstance(devices, int):
        return True
    return isinstance(devices, list) and (settings.get("platform") or STATE.host_platform) != "cpu"


def _caller_namespace(depth: int = 2) -> dict[str, Any]:
    """The namespace a string argument is evaluated in: the caller's globals and locals."""
    frame = sys._getframe(depth)
    return {**frame.f_globals, **frame.f_locals}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:2000]


# ---------------------------------------------------------------------------------------
# load_jax_library
# ---------------------------------------------------------------------------------------
def backend_started() -> bool:
    """Whether JAX's backend is running (after which startup settings cannot change)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def _platform() -> str:
    import jax
    from jax._src import xla_bridge

    return xla_bridge.canonicalize_platform(jax.default_backend())


def _env_float(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes")


def _present() -> str:
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


def _conflicts(settings: Mapping[str, Any]) -> list[str]:
    """Startup settings asked for that differ from what the running backend has."""
    import jax

    out = []
    platform = _platform()
    if settings.get("platform") and settings["platform"] != platform:
        out.append(f"platform {platform} -> {settings['platform']}")
    if settings.get("x64") is not None and bool(settings["x64"]) != bool(jax.config.jax_enable_x64):
        out.append(f"x64 {bool(jax.config.jax_enable_x64)} -> {settings['x64']}")
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

    before = jax.config.jax_platforms
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
        detail = _one_line(e) if str(e).strip() else "its backend did not start"
        if settings.get("platform"):
            jax.config.update("jax_platforms", before if before != settings["platform"] else None)
            os.environ.pop("JAX_PLATFORMS", None)
        try:
            present = _present()
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
            f"jax[{'cuda12' if platform == 'cuda' else 'rocm'}]); present: {_present()}"
        )


def _check_devices(settings: Mapping[str, Any]) -> None:
    import jax

    devices = settings.get("devices")
    if devices is None:
        return
    if isinstance(devices, int):
        if len(jax.devices()) < devices:
            raise JaxLoadError(f"{devices} devices asked for; present: {_present()}")
        return
    present = [d.id for d in jax.devices()]
    missing = [d for d in devices if d not in present] if _platform() == "cpu" else []
    if _platform() != "cpu" and len(jax.devices()) < len(devices):
        missing = devices[len(jax.devices()) :]
    if missing:
        raise JaxLoadError(
            f"device{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} not present; "
            f"present: {_present()}"
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
            settings["platform"] = _platform()
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


class JaxInfo(dict):
    """What load_jax_library reports; a plain dict that also displays as a table."""

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>{esc(str(v))}</td></tr>"
            for k, v in self.items()
            if k not in ("devices", "processes")
        )
        devices = _html_table(
            ("id", "platform", "kind", "memory"),
            ("id", "platform", "kind", "memory"),
            self.get("devices", []),
        )
        processes = ""
        if self.get("processes"):
            processes = _html_table(
                ("process", "host", "pid", "devices"), ("index", "host", "pid", "devices"), self["processes"]
            )
        return f"<table>{rows}</table>{devices}{processes}"

    def text(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.items() if k not in ("devices", "processes")]
        if self.get("processes"):
            lines.append("processes:")
            for p in self["processes"]:
                lines.append(f"  {p['index']}: {p['host']} pid {p['pid']}, devices {p['devices']}")
        lines.append("devices:")
        for d in self.get("devices", []):
            mem = f", memory {d['memory']}" if d.get("memory") else ""
            lines.append(f"  {d['id']}: {d['platform']} ({d['kind']}){mem}")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def bundle(self) -> dict[str, Any]:
        return {"text/plain": self.text(), "text/html": self._repr_html_(), "application/json": dict(self)}


def _html_table(headers: Sequence[str], keys: Sequence[str], items: Sequence[Mapping[str, Any]]) -> str:
    """One HTML table: a header row, then one row per item with its values under ``keys``."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(i.get(k, '')))}</td>" for k in keys) + "</tr>" for i in items
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def jax_info() -> JaxInfo:
    """Versions, backend and devices of the JAX running in this process."""
    import jax
    import jaxlib

    devices = []
    for d in jax.devices():
        entry: dict[str, Any] = {"id": d.id, "platform": d.platform, "kind": d.device_kind, "memory": None}
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - CPU devices and some plugins have none
            stats = {}
        if stats.get("bytes_limit"):
            entry["memory"] = _fmt_bytes(stats["bytes_limit"])
        devices.append(entry)
    return JaxInfo(
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        backend=_platform(),
        device_count=len(devices),
        x64=bool(jax.config.jax_enable_x64),
        compilation_cache_dir=jax.config.jax_compilation_cache_dir,
        matmul_precision=jax.config.jax_default_matmul_precision,
        **({"lease": STATE.lease} if STATE.lease else {}),
        **_process_info(),
        devices=devices,
    )


def _process_info() -> dict[str, Any]:
    """For a set member: where every process of the set runs and which devices it has."""
    if not STATE.member:
        return {}
    import jax

    by_process: dict[int, list[int]] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d.id)
    table = [{**p, "devices": by_process.get(p["index"], [])} for p in STATE.member.get("table", [])]
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "launcher": STATE.member.get("launcher", ""),
        "processes": table,
    }


# ---------------------------------------------------------------------------------------
# values -> MIME bundles
# ---------------------------------------------------------------------------------------
def _json_number(x: Any) -> Any:
    if isinstance(x, bool | int) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, complex):
        return [_json_number(x.real), _json_number(x.imag)]
    if isinstance(x, list):
        return [_json_number(v) for v in x]
    return str(x)


def _is_array(x: Any) -> bool:
    import jax
    import numpy as np

    return isinstance(x, jax.Array | np.ndarray | np.generic)


def to_json(value: Any, max_values: int = DEFAULT_MAX_VALUES) -> Any:
    """A JSON view of a pytree: arrays as {shape, dtype, values} (values up to max_values in all)."""
    import numpy as np

    budget = [max_values]

    def conv(x: Any, depth: int = 0) -> Any:
        if depth > 50:
            return {"repr": "..."}
        if _is_array(x):
            out: dict[str, Any] = {"shape": list(np.shape(x)), "dtype": str(x.dtype)}
            size = int(np.size(x))
            try:
                if size <= budget[0]:
                    budget[0] -= size
                    arr = np.asarray(x)
                    if arr.dtype.kind == "V" or arr.dtype.name == "bfloat16":
                        arr = arr.astype(np.float32)
                    out["values"] = _json_number(arr.tolist())
                else:
                    # Only three numbers cross to the host: a large result may not fit there.
                    out["values"] = None
                    out["truncated"] = True
                    if np.dtype(x.dtype).kind in "biuf" and size:
                        out["summary"] = {
                            k: _json_number(float(getattr(x, k)())) for k in ("min", "max", "mean")
                        }
            except Exception as e:  # noqa: BLE001 - e.g. a PRNG key array or a deleted buffer
                out.pop("summary", None)
                out["values"] = None
                out["repr"] = f"<unreadable array: {_one_line(e)}>"
            return out
        if isinstance(x, Mapping):
            return {str(k): conv(v, depth + 1) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [conv(v, depth + 1) for v in x]
        if x is None or isinstance(x, bool | int | float | complex):
            return _json_number(x)
        if isinstance(x, str):
            return x
        return {"repr": repr(x)[:1000]}

    return conv(value)


#: Array leaves with more elements than this are described, not copied to the host, in text and HTML.
LARGE_ARRAY = 100_000


def _is_large(x: Any) -> bool:
    import numpy as np

    return _is_array(x) and int(np.size(x)) > LARGE_ARRAY


class _Large:
    """Stands in for a large array in a result's text: its type, never its values."""

    def __init__(self, x: Any) -> None:
        self.text = f"<{type(x).__name__} {x.dtype}{list(x.shape)}: {int(x.size):,} elements, not shown>"

    def __repr__(self) -> str:
        return self.text


def result_bundle(value: Any, max_values: int = DEFAULT_MAX_VALUES) -> dict[str, Any]:
    """text/plain, text/html and application/json for a result pytree."""
    import jax
    import numpy as np

    # JAX's repr copies a whole array to the host: large leaves are described instead.
    text = repr(jax.tree_util.tree_map(lambda x: _Large(x) if _is_large(x) else x, value))
    if len(text) > 20_000:
        text = text[:20_000] + "\n... (truncated)"
    rows = []
    leaves, _ = jax.tree_util.tree_flatten_with_path(value)
    for path, leaf in leaves[:200]:
        where = jax.tree_util.keystr(path) or "(result)"
        if _is_array(leaf):
            shape, dtype = str(tuple(np.shape(leaf))), str(leaf.dtype)
            if _is_large(leaf):
                shown = f"{int(np.size(leaf)):,} elements, not shown"
            else:
                try:
                    shown = np.array2string(np.asarray(leaf), threshold=50, edgeitems=3, precision=6)
                except Exception as e:  # noqa: BLE001 - e.g. a PRNG key array
                    shown = repr(leaf)[:500] if "key" in str(leaf.dtype) else f"<unreadable: {_one_line(e)}>"
        else:
            shape, dtype, shown = "", type(leaf).__name__, repr(leaf)[:500]
        rows.append(
            "<tr>"
            + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in (where, shape, dtype))
            + f"<td style='text-align:left'><pre>{html.escape(shown)}</pre></td></tr>"
        )
    more = f"<p>... {len(leaves) - 200} more leaves</p>" if len(leaves) > 200 else ""
    table = (
        "<table><tr><th>leaf</th><th>shape</th><th>dtype</th><th>value</th></tr>" + "".join(rows) + "</table>"
    )
    return {"text/plain": text, "text/html": table + more, "application/json": to_json(value, max_values)}


def reports_bundle(reports: Mapping[str, Any]) -> dict[str, Any]:
    """Display the reports (time, jaxpr, hlo, cost) as text and HTML."""
    texts, htmls = [], []
    if "time" in reports:
        line = describe_time(reports["time"])
        texts.append(line)
        htmls.append(f"<p><b>time</b>: {html.escape(line)}</p>")
    if "cost" in reports:
        line = ", ".join(f"{k} {v:,.0f}" for k, v in reports["cost"].items())
        texts.append(f"cost: {line}")
        htmls.append(f"<p><b>cost</b>: {html.escape(line)}</p>")
    for key in ("jaxpr", "hlo"):
        if key in reports:
            texts.append(f"{key}:\n{reports[key]}")
            htmls.append(
                f"<details open><summary>{key}</summary><pre>{html.escape(reports[key])}</pre></details>"
            )
    return {"text/plain": "\n".join(texts), "text/html": "".join(htmls), "application/json": dict(reports)}


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.3f} ms"


def describe_time(t: Mapping[str, Any]) -> str:
    parts = []
    if t.get("compile_s") is not None:
        parts.append(f"compile {_ms(t['compile_s'])} (trace+lower {_ms(t.get('lower_s'))})")
    parts.append(f"first call {_ms(t.get('first_call_s'))}")
    parts.append(
        f"run median {_ms(t.get('run_median_s'))} over {t.get('runs')} runs (min {_ms(t.get('run_min_s'))})"
    )
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------
# execute_jax_transformation
# ---------------------------------------------------------------------------------------
_GRAD_LIKE = ("grad", "value_and_grad", "jacfwd", "jacrev", "hessian")
_OPTION_USERS = {
    "argnums": _GRAD_LIKE,
    "has_aux": _GRAD_LIKE,
    "in_axes": ("vmap", "pmap"),
    "out_axes": ("vmap", "pmap"),
    "axis_name": ("vmap", "pmap"),
    "static_argnums": ("jit", "pmap"),
}
_REPORT_OPTIONS = ("time", "runs", "jaxpr", "hlo", "cost", "out", "max_values")


def _axes(value: Any) -> Any:
    # JSON and magics give lists; JAX wants a tuple at the top of in_axes/out_axes.
    return tuple(value) if isinstance(value, list) else value


def _apply(name: str, f: Callable[..., Any], opts: Mapping[str, Any]) -> Callable[..., Any]:
    import jax

    if name in _GRAD_LIKE:
        kw = {k: opts[k] for k in ("argnums", "has_aux") if k in opts}
        return getattr(jax, name)(f, **kw)
    if name == "jit":
        return jax.jit(f, **({"static_argnums": opts["static_argnums"]} if "static_argnums" in opts else {}))
    if name in ("vmap", "pmap"):
        kw = {k: _axes(opts[k]) for k in ("in_axes", "out_axes") if k in opts}
        if "axis_name" in opts:
            kw["axis_name"] = opts["axis_name"]
        if name == "pmap" and "static_argnums" in opts:
            kw["static_broadcasted_argnums"] = opts["static_argnums"]
        return getattr(jax, name)(f, **kw)
    if name == "jvp":

        def jvp_fn(primals: Any, tangents: Any) -> Any:
            return jax.jvp(f, tuple(primals), tuple(tangents))

        return jvp_fn
    if name == "vjp":

        def vjp_fn(primals: Any, cotangent: Any) -> Any:
            out, pullback = jax.vjp(f, *primals)
            return out, pullback(cotangent)

        return vjp_fn
    raise TransformError(f"unknown transformation {name!r}")  # the parser lets none through


def build_transformed(
    names: Sequence[str], f: Callable[..., Any], opts: Mapping[str, Any]
) -> Callable[..., Any]:
    """Apply ``names`` (outermost first) to ``f``; options go to the transformations that take them."""
    for key, users in _OPTION_USERS.items():
        if key in opts and not any(n in users for n in names):
            raise TransformError(
                f"option {key!r} applies to {'/'.join(users)}, which {'('.join(names)}{')' * (len(names) - 1)} "
                "does not use"
            )
    for name in reversed(names):
        f = _apply(name, f, opts)
    return f


def resolve_function(function: Any, ns: Mapping[str, Any]) -> Callable[..., Any]:
    """A callable, a (dotted) name in ``ns``, or a lambda's source evaluated in ``ns``."""
    if callable(function):
        return function
    try:
        src = jaxspec.check_function(function)
    except JaxSpecError as e:
        raise TransformError(str(e)) from None
    if src.startswith("lambda"):
        try:
            fn = eval(compile(src, "<function>", "eval"), dict(ns))  # noqa: S307 - cell code, by design
        except SyntaxError as e:
            raise TransformError(f"function: invalid lambda ({e.msg})") from None
    else:
        head, *rest = src.split(".")
        if head in ns:
            fn = ns[head]
        elif hasattr(__builtins__, head) or (isinstance(__builtins__, dict) and head in __builtins__):
            fn = __builtins__[head] if isinstance(__builtins__, dict) else getattr(__builtins__, head)
        else:
            raise TransformError(f"function {src!r} is not defined in the worker namespace")
        for part in rest:
            try:
                fn = getattr(fn, part)
            except AttributeError:
                raise TransformError(f"function {src!r}: no attribute {part!r}") from None
    if not callable(fn):
        raise TransformError(f"function {src!r} is a {type(fn).__name__}, not a callable")
    return fn


def resolve_args(args: Any, ns: Mapping[str, Any]) -> tuple[Any, ...]:
    """Argument-list source (``"xs, 2.0"``) evaluated in ``ns``, or a tuple/list of values as given."""
    if args is None:
        return ()
    if isinstance(args, tuple | list):
        return tuple(args)
    try:
        src = jaxspec.check_args(args)
    except JaxSpecError as e:
        raise TransformError(str(e)) from None
    if not src.strip():
        return ()
    try:
        code = compile(f"({src},)", "<args>", "eval")
    except SyntaxError as e:
        raise TransformError(f"args {src[:80]!r} is not a valid argument list ({e.msg})") from None
    try:
        return eval(code, dict(ns))  # noqa: S307 - cell code, by design
    except NameError as e:
        raise TransformError(f"args: {e}") from None


def _block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def time_calls(
    fn: Callable[..., Any], args: tuple[Any, ...], runs: int | None, lowerable: Any = None
) -> dict[str, Any]:
    """Compile time apart from steady-state time: median of N calls, each waited for with block_until_ready."""
    report: dict[str, Any] = {"compile_s": None, "lower_s": None}
    if lowerable is not None:
        t0 = time.perf_counter()
        lowered = lowerable.lower(*args)
        t1 = time.perf_counter()
        lowered.compile()
        report["lower_s"], report["compile_s"] = t1 - t0, time.perf_counter() - t1
    t0 = time.perf_counter()
    _block(fn(*args))
    report["first_call_s"] = time.perf_counter() - t0
    times: list[float] = []
    deadline = time.perf_counter() + TIME_BUDGET_S
    while True:
        t0 = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - t0)
        if runs is not None:
            if len(times) >= runs:
                break
        elif len(times) >= 1000 or (len(times) >= 5 and time.perf_counter() > deadline):
            break
    report.update(run_median_s=statistics.median(times), run_min_s=min(times), runs=len(times))
    return report


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    out = {}
    for key in ("flops", "transcendentals", "bytes accessed"):
        if isinstance(cost, Mapping) and isinstance(cost.get(key), int | float):
            out[key.replace(" ", "_")] = float(cost[key])
    return out


@dataclass
class Outcome:
    """A result and the reports asked for."""

    value: Any
    reports: dict[str, Any]


def transform(
    transformation: str,
    function: Any,
    args: Any,
    options: Mapping[str, Any] | None,
    ns: Mapping[str, Any],
) -> Outcome:
    """Parse, build, call, and report: the work behind every route of execute_jax_transformation."""
    import jax

    try:
        names = jaxspec.parse_transformation(transformation)
        opts = jaxspec.check_options(options, jaxspec.TRANSFORM_OPTIONS, "transformation")
    except JaxSpecError as e:
        raise TransformError(str(e)) from None
    fn = resolve_function(function, ns)
    call_args = resolve_args(args, ns)
    transformed = build_transformed(names, fn, opts)
    reports: dict[str, Any] = {}
    lowerable = transformed if names[0] in ("jit", "pmap") else None
    if opts.get("time"):
        reports["time"] = time_calls(transformed, call_args, opts.get("runs"), lowerable)
    value = _block(transformed(*call_args))
    if opts.get("jaxpr"):
        static = opts.get("static_argnums", ()) if names[0] == "jit" else ()
        reports["jaxpr"] = str(jax.make_jaxpr(transformed, static_argnums=static)(*call_args))
    if opts.get("hlo") or opts.get("cost"):
        target = lowerable
        if target is None:
            target = jax.jit(transformed)
        lowered = target.lower(*call_args)
        if opts.get("hlo"):
            reports["hlo"] = lowered.as_text()
        if opts.get("cost"):
            reports["cost"] = _cost(lowered.compile())
    return Outcome(value, reports)


def _display(bundle: Mapping[str, Any]) -> None:
    from IPython.display import display

    display(dict(bundle), raw=True)


def execute_jax_transformation(
    transformation: str,
    function: str | Callable[..., Any],
    args: str | Sequence[Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Apply a transformation (``"grad"``, ``"jit(vmap(grad))"``, ...) to a function and call it.

    ``function`` is a callable, a name in the caller's namespace or a lambda's source;
    ``args`` the source of the argument list (``"xs, 2.0"``) or a sequence of values.
    ``options``: argnums, has_aux, in_axes, out_axes, static_argnums, axis_name, and the
    reports time (runs), jaxpr, hlo, cost, which are displayed.  Returns the result as
    JAX values (pytrees stay pytrees).
    """
    ns = _caller_namespace()
    outcome = transform(transformation, function, args, options, ns)
    if outcome.reports:
        _display(reports_bundle(outcome.reports))
    return outcome.value


# ---------------------------------------------------------------------------------------
# execute_jax_program / export_jax_program
# ---------------------------------------------------------------------------------------
def stable_custom_call_targets() -> frozenset[str]:
    """JAX's own list of custom_call targets whose ABI it guarantees across versions."""
    from jax._src.export import _export

    return frozenset(getattr(_export, "_CUSTOM_CALL_TARGETS_GUARANTEED_STABLE", ()))


#: Extra custom_call targets accepted on top of JAX's stable list (set from the worker config).
EXTRA_ALLOWED_TARGETS: set[str] = set()

_CUSTOM_CALL = re.compile(r"custom_call\s*@([A-Za-z0-9_.$\-]+)|call_target_name\s*=\s*\"([^\"]*)\"")


def custom_call_targets(mlir_text: str) -> set[str]:
    """Every custom_call target named in a StableHLO module's text."""
    return {a or b for a, b in _CUSTOM_CALL.findall(mlir_text)}


def read_program(program: Any, max_bytes: int = MAX_PROGRAM_BYTES) -> bytes:
    """The artifact's bytes, from bytes or a path, refusing anything over ``max_bytes``."""
    if isinstance(program, bytes | bytearray | memoryview):
        data = bytes(program)
    elif isinstance(program, str | os.PathLike):
        path = os.fspath(program)
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise ProgramRejected(f"cannot read program {path!r}: {e.strerror}") from None
        if size > max_bytes:
            raise ProgramRejected(f"program {path!r} is {size:,} bytes, over the {max_bytes:,}-byte limit")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    else:
        raise ProgramRejected(f"program must be a path or bytes, not {type(program).__name__}")
    if len(data) > max_bytes:
        raise ProgramRejected(f"program is {len(data):,} bytes, over the {max_bytes:,}-byte limit")
    return data


def deserialize(data: bytes) -> Any:
    """An Exported from bytes, or ProgramRejected when they are not a jax.export artifact."""
    from jax import export

    if len(data) < 16:
        raise ProgramRejected(f"not a jax.export artifact ({len(data)} bytes)")
    try:
        exp = export.deserialize(bytearray(data))
        exp.in_avals, exp.out_avals, exp.platforms  # noqa: B018 - touch what validation reads
    except Exception as e:  # noqa: BLE001 - flatbuffers raises anything on garbage
        raise ProgramRejected(
            f"not a valid jax.export artifact ({type(e).__name__}: {_one_line(e)})"
        ) from None
    return exp


def _aval_str(shape: Sequence[Any], dtype: Any) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def check_program(exp: Any, args: tuple[Any, ...]) -> None:
    """Everything that must hold before a deserialized program may run here."""
    import jax
    import numpy as np

    platform = _platform()
    if platform not in exp.platforms:
        raise ProgramRejected(
            f"program was exported for {', '.join(exp.platforms)}, but this worker runs {platform} "
            f"(present: {_present()})"
        )
    if exp.nr_devices > len(jax.devices()):
        raise ProgramRejected(f"program needs {exp.nr_devices} devices; present: {_present()}")
    allowed = stable_custom_call_targets() | EXTRA_ALLOWED_TARGETS
    bad = sorted(custom_call_targets(exp.mlir_module()) - allowed)
    if bad:
        raise ProgramRejected(f"program calls custom_call target(s) not on the allowlist: {', '.join(bad)}")
    try:
        expected_args = len(exp.in_tree.children()[0].children())
    except Exception:  # noqa: BLE001
        expected_args = None
    if expected_args is not None and expected_args != len(args):
        raise ProgramRejected(f"program takes {expected_args} argument(s), got {len(args)}")
    leaves, tree = jax.tree_util.tree_flatten_with_path(args)
    if len(leaves) != len(exp.in_avals):
        raise ProgramRejected(f"program takes {len(exp.in_avals)} array input(s), got {len(leaves)}")
    if (tree_in := jax.tree_util.tree_structure((args, {}))) != exp.in_tree:
        raise ProgramRejected(f"arguments have structure {tree_in}, program expects {exp.in_tree}")
    for (path, leaf), aval in zip(leaves, exp.in_avals, strict=True):
        shape = tuple(np.shape(leaf))
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(leaf))
        want_dtype = np.dtype(aval.dtype)
        fits = len(shape) == len(aval.shape) and all(
            not isinstance(w, int) or w == g for w, g in zip(aval.shape, shape, strict=True)
        )
        if not fits or dtype != want_dtype:
            where = jax.tree_util.keystr(path)
            m = re.match(r"\[(\d+)\](.*)", where)
            name = f"argument {int(m.group(1)) + 1}{m.group(2)}" if m else f"input {where}"
            raise ProgramRejected(
                f"{name}: expected {_aval_str(aval.shape, want_dtype)}, got {_aval_str(shape, dtype)}"
            )


def run_program(
    program: Any,
    args: Any,
    options: Mapping[str, Any] | None,
    ns: Mapping[str, Any],
    max_bytes: int = MAX_PROGRAM_BYTES,
) -> Outcome:
    """Validate, then run, a serialized jax.export program on this worker's devices."""
    import jax

    try:
        opts = jaxspec.check_options(options, jaxspec.PROGRAM_OPTIONS, "program")
    except JaxSpecError as e:
        raise ProgramRejected(str(e)) from None
    exp = deserialize(read_program(program, max_bytes))
    try:
        call_args = resolve_args(args, ns)
    except TransformError as e:
        raise ProgramRejected(str(e)) from None
    check_program(exp, call_args)
    reports: dict[str, Any] = {}
    fn = jax.jit(exp.call)
    if opts.get("time"):
        reports["time"] = time_calls(fn, call_args, opts.get("runs"), fn)
    return Outcome(_block(fn(*call_args)), reports)


def execute_jax_program(
    program: str | os.PathLike[str] | bytes,
    args: str | Sequence[Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Run a serialized jax.export program (a path or the bytes) after validating it.

    Refused, with a one-line reason, before anything runs: not an artifact, exported for
    other platforms, wrong number/shapes/dtypes of inputs, a custom_call target not on the
    allowlist (JAX's stable targets; ``jax.export`` does not check again), over the size
    limit.  ``options``: time (runs).  Returns the outputs as JAX values.
    """
    outcome = run_program(program, args, options, _caller_namespace())
    if outcome.reports:
        _display(reports_bundle(outcome.reports))
    return outcome.value


def export_jax_program(
    function: str | Callable[..., Any],
    args: str | Sequence[Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    platforms: Sequence[str] | str | None = None,
    vjp_order: int = 0,
) -> bytes:
    """Export ``jit(function)`` for the shapes and dtypes of ``args``; returns (and writes to ``out``) the bytes."""
    return export_program(function, args, out, platforms, vjp_order, _caller_namespace())


def export_program(
    function: Any, args: Any, out: Any, platforms: Any, vjp_order: int, ns: Mapping[str, Any]
) -> bytes:
    import jax
    import numpy as np
    from jax import export

    fn = resolve_function(function, ns)
    call_args = resolve_args(args, ns)
    if isinstance(platforms, str):
        platforms = [p.strip() for p in platforms.split(",") if p.strip()]
    if platforms is not None:
        platforms = ["cuda" if p == "gpu" else p for p in platforms]
        unknown = [p for p in platforms if p not in ("cpu", "cuda", "rocm", "tpu")]
        if unknown:
            raise TransformError(f"unknown platform(s) {', '.join(unknown)}; known: cpu, cuda, rocm, tpu")
    if not isinstance(vjp_order, int) or isinstance(vjp_order, bool) or not 0 <= vjp_order <= 8:
        raise TransformError("vjp_order must be an integer between 0 and 8")
    specs = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(np.result_type(x))),
        call_args,
    )
    try:
        exp = export.export(jax.jit(fn), platforms=platforms)(*specs)
        data = bytes(exp.serialize(vjp_order=vjp_order))
    except (TypeError, ValueError, NotImplementedError) as e:
        raise TransformError(f"cannot export {getattr(fn, '__name__', 'function')}: {_one_line(e)}") from None
    if out is not None:
        with open(os.fspath(out), "wb") as fh:
            fh.write(data)
    return data


# ---------------------------------------------------------------------------------------
# jax_*_request from the kernel
# ---------------------------------------------------------------------------------------
def error_content(e: BaseException) -> dict[str, Any]:
    """A reply for a failed request: one line for our own errors, the traceback for others."""
    import traceback

    ename = type(e).__name__
    evalue = _one_line(e)
    if isinstance(e, JaxEntryError | KeyboardInterrupt):
        tb = [f"{ename}: {evalue}"]
    else:
        tb = traceback.format_exception(e)[-20:]
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": tb}


def handle_request(msg: Mapping[str, Any], ns: dict[str, Any]) -> dict[str, Any]:
    """Serve one ``jax_load`` / ``jax_transform`` / ``jax_program`` request against ``ns``."""
    kind = msg["type"]
    try:
        if kind == "jax_load":
            info = load(jaxspec.check_load_settings(msg.get("settings") or {}))
            return {"status": "ok", "info": dict(info), "data": info.bundle()}
        options = dict(msg.get("options") or {})
        max_values = int(options.get("max_values", DEFAULT_MAX_VALUES))
        if kind == "jax_transform":
            outcome = transform(msg["transformation"], msg["function"], msg.get("args"), options, ns)
        else:
            program = msg.get("program")
            if msg.get("program_base64") is not None:
                import base64

                program = base64.b64decode(msg["program_base64"])
            max_bytes = int(msg.get("max_bytes") or MAX_PROGRAM_BYTES)
            outcome = run_program(program, msg.get("args"), options, ns, max_bytes)
        if options.get("out"):
            ns[options["out"]] = outcome.value
        return {"status": "ok", "data": result_bundle(outcome.value, max_values), "reports": outcome.reports}
    except JaxRestartRequired as e:
        return {"status": "restart", "settings": e.settings, "reason": e.reason}
    except JaxSpecError as e:
        return error_content(JaxEntryError(str(e)))
    except BaseException as e:  # noqa: BLE001 - every request gets a reply
        return error_content(e)
