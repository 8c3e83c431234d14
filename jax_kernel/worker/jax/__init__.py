"""The three JAX entry points, as plain functions over JAX: load, transform, run a program.

Runs in the worker process.  Each entry point is reachable three ways and all three end up here: a
magic (``magics.py``), a ``jax_*_request`` from the kernel (:func:`handle_request`), and a function
already defined in every worker namespace (also importable as ``from jax_kernel import ...``).

One module per job: :mod:`.settings` (what this process started JAX with), :mod:`.load` and
:mod:`.info` (load_jax_library), :mod:`.transform` (execute_jax_transformation), :mod:`.program`
(execute_jax_program, export_jax_program and the checks a program passes first), :mod:`.calls` and
:mod:`.display` (what those share: resolving arguments, timing, results as MIME bundles),
:mod:`.kernel_requests` (the kernel's requests) and :mod:`.errors`.

Every module imports JAX as ``import jax``, an absolute import (there are no implicit relative
imports in Python 3): this package's name never shadows the real JAX.  JAX itself is imported
lazily, inside the functions, so that load_jax_library can set what JAX reads only at import.
"""

from __future__ import annotations

from .calls import TIME_BUDGET_S, Outcome, resolve_args, resolve_function, time_calls
from .display import DEFAULT_MAX_VALUES, LARGE_ARRAY, describe_time, reports_bundle, result_bundle, to_json
from .errors import JaxEntryError, JaxLoadError, JaxRestartRequired, ProgramRejected, TransformError
from .info import JaxInfo, jax_info
from .kernel_requests import error_content, handle_request
from .load import load, load_jax_library
from .program import (
    MAX_PROGRAM_BYTES,
    check_program,
    custom_call_targets,
    deserialize,
    execute_jax_program,
    export_jax_program,
    export_program,
    read_program,
    run_program,
    stable_custom_call_targets,
)
from .settings import STATE, apply_environment, backend_started, configure, start_distributed
from .transform import build_transformed, execute_jax_transformation, transform

__all__ = [
    "DEFAULT_MAX_VALUES",
    "LARGE_ARRAY",
    "MAX_PROGRAM_BYTES",
    "STATE",
    "TIME_BUDGET_S",
    "JaxEntryError",
    "JaxInfo",
    "JaxLoadError",
    "JaxRestartRequired",
    "Outcome",
    "ProgramRejected",
    "TransformError",
    "apply_environment",
    "backend_started",
    "build_transformed",
    "check_program",
    "configure",
    "custom_call_targets",
    "describe_time",
    "deserialize",
    "error_content",
    "execute_jax_program",
    "execute_jax_transformation",
    "export_jax_program",
    "export_program",
    "handle_request",
    "jax_info",
    "load",
    "load_jax_library",
    "read_program",
    "reports_bundle",
    "resolve_args",
    "resolve_function",
    "result_bundle",
    "run_program",
    "stable_custom_call_targets",
    "start_distributed",
    "time_calls",
    "to_json",
    "transform",
]
