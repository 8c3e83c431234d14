"""execute_jax_program and export_jax_program: serialized jax.export programs, validated before they run.

Runs in the worker process.  A program is refused, with a one-line reason, before anything of it runs:
over the size limit, not an artifact, exported for other platforms or more devices, inputs of other
shapes or dtypes, or a custom_call target that is not on JAX's list of stable targets (the only
allow-list: ``jax.export`` does not check again).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...protocol import jaxspec
from ...protocol.checks import is_count
from ...protocol.jaxspec import JaxSpecError
from .calls import Outcome, block, caller_namespace, resolve_args, resolve_function, time_calls
from .display import reports_bundle, show
from .errors import ProgramRejected, TransformError, one_line
from .settings import backend_platform, present_devices

#: Largest serialized program accepted (bytes).
MAX_PROGRAM_BYTES = 256 * 1024 * 1024


def stable_custom_call_targets() -> frozenset[str]:
    """JAX's own list of custom_call targets whose ABI it guarantees across versions."""
    from jax._src.export import _export

    return frozenset(getattr(_export, "_CUSTOM_CALL_TARGETS_GUARANTEED_STABLE", ()))


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
            f"not a valid jax.export artifact ({type(e).__name__}: {one_line(e)})"
        ) from None
    return exp


def _aval_str(shape: Sequence[Any], dtype: Any) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def check_program(exp: Any, args: tuple[Any, ...]) -> None:
    """Everything that must hold before a deserialized program may run here."""
    import jax
    import numpy as np

    platform = backend_platform()
    if platform not in exp.platforms:
        raise ProgramRejected(
            f"program was exported for {', '.join(exp.platforms)}, but this worker runs {platform} "
            f"(present: {present_devices()})"
        )
    if exp.nr_devices > len(jax.devices()):
        raise ProgramRejected(f"program needs {exp.nr_devices} devices; present: {present_devices()}")
    bad = sorted(custom_call_targets(exp.mlir_module()) - stable_custom_call_targets())
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
    return Outcome(block(fn(*call_args)), reports)


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
    outcome = run_program(program, args, options, caller_namespace())
    if outcome.reports:
        show(reports_bundle(outcome.reports))
    return outcome.value


def export_jax_program(
    function: str | Callable[..., Any],
    args: str | Sequence[Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    platforms: Sequence[str] | str | None = None,
    vjp_order: int = 0,
) -> bytes:
    """Export ``jit(function)`` for the shapes and dtypes of ``args``; returns (and writes to ``out``) the bytes."""
    return export_program(function, args, out, platforms, vjp_order, caller_namespace())


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
    if not is_count(vjp_order, 8):
        raise TransformError("vjp_order must be an integer between 0 and 8")
    specs = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(np.result_type(x))),
        call_args,
    )
    try:
        exp = export.export(jax.jit(fn), platforms=platforms)(*specs)
        data = bytes(exp.serialize(vjp_order=vjp_order))
    except (TypeError, ValueError, NotImplementedError) as e:
        raise TransformError(f"cannot export {getattr(fn, '__name__', 'function')}: {one_line(e)}") from None
    if out is not None:
        with open(os.fspath(out), "wb") as fh:
            fh.write(data)
    return data
