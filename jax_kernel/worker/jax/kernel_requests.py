"""The kernel's ``jax_load`` / ``jax_transform`` / ``jax_program`` requests, served in the worker process.

Every request gets a reply: a result bundle, a restart (settings only a new worker can take), or an
error with one line for the entry points' own errors and the traceback for others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...protocol import jaxspec
from ...protocol.jaxspec import JaxSpecError
from .display import DEFAULT_MAX_VALUES, result_bundle
from .errors import JaxEntryError, JaxRestartRequired, one_line
from .load import load
from .program import MAX_PROGRAM_BYTES, run_program
from .transform import transform


def error_content(e: BaseException) -> dict[str, Any]:
    """A reply for a failed request: one line for our own errors, the traceback for others."""
    import traceback

    ename = type(e).__name__
    evalue = one_line(e)
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
