"""What the JAX entry points accept, checked without importing JAX.

Both sides use this module: the kernel validates ``jax_*_request`` fields before a worker
sees them (bad input gets a one-line error, never a worker round trip), and the worker
applies the same rules to magics and function calls.  Nothing here imports JAX: the
kernel process never does.

Transformation strings (``"jit(vmap(grad))"``) are parsed by a small recursive parser
over a fixed set of names, never by ``eval``: the string is data, not code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .checks import is_a, is_count

#: Transformations a transformation string may name, innermost applied first.
TRANSFORMS = (
    "grad",
    "value_and_grad",
    "jit",
    "vmap",
    "pmap",
    "jacfwd",
    "jacrev",
    "hessian",
    "jvp",
    "vjp",
)

#: Options of execute_jax_transformation and the types they take.
TRANSFORM_OPTIONS: dict[str, tuple[type, ...]] = {
    "argnums": (int, list, tuple),
    "has_aux": (bool,),
    "in_axes": (int, list, tuple, dict, type(None)),
    "out_axes": (int, list, tuple, dict, type(None)),
    "static_argnums": (int, list, tuple),
    "axis_name": (str,),
    "time": (bool,),
    "runs": (int,),
    "jaxpr": (bool,),
    "hlo": (bool,),
    "cost": (bool,),
    "out": (str,),
    "max_values": (int,),
}

#: Options of execute_jax_program.
PROGRAM_OPTIONS: dict[str, tuple[type, ...]] = {
    "time": (bool,),
    "runs": (int,),
    "out": (str,),
    "max_values": (int,),
}

#: Settings of load_jax_library and the types they take (None: leave as configured).
LOAD_SETTINGS: dict[str, tuple[type, ...]] = {
    "platform": (str,),
    "devices": (list, tuple, str, int),
    "x64": (bool,),
    "host_device_count": (int,),
    "memory_fraction": (float, int),
    "preallocate": (bool,),
    "compilation_cache_dir": (str,),
    "matmul_precision": (str,),
    # A set of worker processes (multi-controller JAX): how many, placed by which launcher,
    # with how many devices each.
    "processes": (int,),
    "launcher": (str,),
    "devices_per_process": (int,),
}

#: Settings JAX reads only when its backend starts; changing them means a new worker.
STARTUP_SETTINGS = (
    "platform",
    "devices",
    "x64",
    "host_device_count",
    "memory_fraction",
    "preallocate",
    "processes",
    "launcher",
    "devices_per_process",
)

_LAUNCHER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")

PLATFORMS = ("cpu", "cuda", "gpu", "rocm", "tpu")
MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MAX_SOURCE = 100_000


class JaxSpecError(ValueError):
    """Input that the entry points cannot accept; the message is the one-line error users see."""


#: Environment variables each accelerator runtime reads for the devices it may use: the one table
#: for the kernel's leases (policy/accelerators.py) and for a worker started with JAX settings.
VISIBLE_DEVICES_ENV: dict[str, tuple[str, ...]] = {
    "cuda": ("CUDA_VISIBLE_DEVICES",),
    "rocm": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
    "tpu": ("TPU_VISIBLE_CHIPS",),
}


# transformations -------------------------------------------------------------------------
def parse_transformation(text: str) -> list[str]:
    """Parse ``"jit(vmap(grad))"`` into ``["jit", "vmap", "grad"]`` (outermost first).

    A bare name is one transformation; ``f(g)`` applies ``f`` to the result of ``g``.
    Anything else (unknown names, arguments, unbalanced parentheses) is a JaxSpecError.
    """
    if not isinstance(text, str) or not text.strip():
        raise JaxSpecError("transformation must be a non-empty string such as 'grad' or 'jit(vmap(grad))'")
    if len(text) > 500:
        raise JaxSpecError("transformation string is longer than 500 characters")
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\(|\)|\S", text)
    names: list[str] = []
    pos = 0
    depth = 0
    while True:
        if pos >= len(tokens) or not _NAME.fullmatch(tokens[pos]):
            got = tokens[pos] if pos < len(tokens) else "end of string"
            raise JaxSpecError(f"bad transformation {text!r}: expected a transformation name, got {got!r}")
        name = tokens[pos]
        if name not in TRANSFORMS:
            raise JaxSpecError(f"unknown transformation {name!r}; known: {', '.join(TRANSFORMS)}")
        names.append(name)
        pos += 1
        if pos < len(tokens) and tokens[pos] == "(":
            depth += 1
            pos += 1
            continue
        break
    for _ in range(depth):
        if pos >= len(tokens) or tokens[pos] != ")":
            got = tokens[pos] if pos < len(tokens) else "end of string"
            raise JaxSpecError(f"bad transformation {text!r}: expected ')', got {got!r}")
        pos += 1
    if pos != len(tokens):
        raise JaxSpecError(f"bad transformation {text!r}: unexpected {tokens[pos]!r}")
    return names


def check_function(function: str) -> str:
    """A function is a (dotted) name in the worker's namespace or the source of a lambda."""
    if not isinstance(function, str) or not function.strip():
        raise JaxSpecError("function must be a name in the worker namespace or a lambda's source")
    function = function.strip()
    if len(function) > MAX_SOURCE:
        raise JaxSpecError(f"function source is longer than {MAX_SOURCE} characters")
    if not (_DOTTED.fullmatch(function) or function.startswith("lambda")):
        raise JaxSpecError(f"function must be a name or a lambda, not {function[:60]!r}")
    return function


def check_args(args: Any) -> str:
    """``args`` is the Python source of an argument list (``"xs, 2.0"``), possibly empty."""
    if args is None:
        return ""
    if not isinstance(args, str):
        raise JaxSpecError("args must be the Python source of an argument list, e.g. 'xs, 2.0'")
    if len(args) > MAX_SOURCE:
        raise JaxSpecError(f"args source is longer than {MAX_SOURCE} characters")
    return args


def check_options(options: Any, allowed: Mapping[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    """Known option names with values of the right type; None values are dropped."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise JaxSpecError(f"{what} options must be an object (a dict)")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in allowed:
            raise JaxSpecError(f"unknown {what} option {key!r}; known: {', '.join(allowed)}")
        if value is None and type(None) not in allowed[key]:
            continue
        kinds = allowed[key]
        if not is_a(value, kinds):
            names = "/".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise JaxSpecError(f"option {key!r} must be {names}, not {type(value).__name__}")
        out[key] = value
    for key in ("argnums", "static_argnums"):
        if key in out:
            nums = [out[key]] if isinstance(out[key], int) else list(out[key])
            if not all(is_a(n, int) for n in nums):
                raise JaxSpecError(f"option {key!r} must be an int or a list of ints")
            out[key] = nums[0] if isinstance(out[key], int) else tuple(nums)
    for key in ("runs", "max_values"):
        if key in out and not 1 <= out[key] <= 100_000:
            raise JaxSpecError(f"option {key!r} must be between 1 and 100000")
    if "out" in out and not _NAME.fullmatch(out["out"]):
        raise JaxSpecError(f"option 'out' must be a Python identifier, not {out['out']!r}")
    return out


# load_jax_library ------------------------------------------------------------------------
def parse_devices(devices: Any) -> list[int] | int | None:
    """Devices asked for: a count of free ones to lease (``"auto"`` is 1, ``2``, ``"2"``) or
    these ids (``"0,2"``, ``[0, 2]``; one id is ``"1,"`` or ``[1]``)."""
    if devices is None:
        return None
    if isinstance(devices, bool):
        raise JaxSpecError("devices must be 'auto', a count such as 2, or ids such as '0,2' or [0, 2]")
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "auto":
            return 1
        if text.isdigit():
            devices = int(text)
        else:
            parts = [p.strip() for p in text.split(",")]
            if parts and parts[-1] == "" and len(parts) > 1:
                parts.pop()  # "1," names device 1
            if not parts or not all(p.isdigit() for p in parts):
                raise JaxSpecError(
                    f"devices must be 'auto', a count such as 2, or ids such as '0,2', not {devices!r}"
                )
            devices = [int(p) for p in parts]
    if isinstance(devices, int):
        if not 1 <= devices <= 1024:
            raise JaxSpecError(
                f"a device count must be between 1 and 1024, not {devices} (one id: '{devices},')"
            )
        return devices
    if not isinstance(devices, list | tuple) or not devices:
        raise JaxSpecError("devices must be a non-empty list of device ids")
    if not all(is_count(d) for d in devices):
        raise JaxSpecError("device ids must be non-negative integers")
    if len(set(devices)) != len(devices):
        raise JaxSpecError("device ids must not repeat")
    return list(devices)


def _from_string(value: str, kinds: tuple[type, ...]) -> Any:
    """A command-line value ("4", "true", "0.5") as the type a setting takes."""
    if bool in kinds and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def check_load_settings(settings: Mapping[str, Any], from_strings: bool = False) -> dict[str, Any]:
    """Validate load_jax_library's settings; returns them normalised, Nones dropped.

    ``from_strings`` accepts "4" for 4 and "true" for True, as traitlets' command line gives them.
    """
    if not isinstance(settings, Mapping):
        raise JaxSpecError("load settings must be an object (a dict)")
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in LOAD_SETTINGS:
            raise JaxSpecError(f"unknown load_jax_library setting {key!r}; known: {', '.join(LOAD_SETTINGS)}")
        if value is None:
            continue
        kinds = LOAD_SETTINGS[key]
        if from_strings and isinstance(value, str):
            value = _from_string(value, kinds)
        if not is_a(value, kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise JaxSpecError(f"setting {key!r} must be {names}, not {type(value).__name__}")
        out[key] = value
    if "platform" in out:
        platform = out["platform"].strip().lower()
        if platform not in PLATFORMS:
            raise JaxSpecError(f"unknown platform {out['platform']!r}; known: {', '.join(PLATFORMS)}")
        out["platform"] = "cuda" if platform == "gpu" else platform
    if "devices" in out:
        out["devices"] = parse_devices(out["devices"])
    for key in ("processes", "devices_per_process"):
        if key in out and not 1 <= out[key] <= 1024:
            raise JaxSpecError(f"{key} must be between 1 and 1024, not {out[key]}")
    if "launcher" in out and not _LAUNCHER_NAME.fullmatch(out["launcher"]):
        raise JaxSpecError(
            f"launcher must be a launcher name such as 'local', 'mpi' or 'slurm' "
            f"(or module:Class), not {out['launcher'][:60]!r}"
        )
    if out.get("processes", 1) > 1:
        for key, flag in (("host_device_count", "--host-devices"), ("devices", "--devices")):
            if key in out:
                raise JaxSpecError(
                    f"{key} ({flag}) counts one worker's devices; a set of processes takes "
                    "devices_per_process (--devices-per-process K) instead"
                )
    if "host_device_count" in out and not 1 <= out["host_device_count"] <= 1024:
        raise JaxSpecError("host_device_count must be between 1 and 1024")
    if "memory_fraction" in out:
        out["memory_fraction"] = float(out["memory_fraction"])
        if not 0.0 < out["memory_fraction"] <= 1.0:
            raise JaxSpecError("memory_fraction must be in (0, 1]")
    if "matmul_precision" in out and out["matmul_precision"] not in MATMUL_PRECISIONS:
        raise JaxSpecError(
            f"unknown matmul_precision {out['matmul_precision']!r}; known: {', '.join(MATMUL_PRECISIONS)}"
        )
    return out


def settings_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables that give a fresh worker these settings before JAX is imported.

    JAX reads ``JAX_<OPTION>`` for each config option at import, and its GPU allocator reads
    ``XLA_PYTHON_CLIENT_*`` when the backend starts, so a new worker needs nothing else.
    """
    env: dict[str, str] = {}
    platform = settings.get("platform")
    if platform:
        env["JAX_PLATFORMS"] = platform
    devices = settings.get("devices")
    if isinstance(devices, list) and platform != "cpu":
        # CPU devices cannot be hidden (only checked); accelerators are hidden by their runtimes,
        # which renumber what is left from 0.  No platform given: whichever GPU runtime is there.
        ids = ",".join(str(d) for d in devices)
        any_gpu = (*VISIBLE_DEVICES_ENV["cuda"], *VISIBLE_DEVICES_ENV["rocm"])
        for name in VISIBLE_DEVICES_ENV.get(platform or "", any_gpu):
            env[name] = ids
    if settings.get("x64") is not None:
        env["JAX_ENABLE_X64"] = "1" if settings["x64"] else "0"
    if settings.get("host_device_count") is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(settings["host_device_count"])
    if settings.get("memory_fraction") is not None:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{settings['memory_fraction']:g}"
    if settings.get("preallocate") is not None:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true" if settings["preallocate"] else "false"
    if settings.get("compilation_cache_dir"):
        env["JAX_COMPILATION_CACHE_DIR"] = settings["compilation_cache_dir"]
    if settings.get("matmul_precision"):
        env["JAX_DEFAULT_MATMUL_PRECISION"] = settings["matmul_precision"]
    return env
