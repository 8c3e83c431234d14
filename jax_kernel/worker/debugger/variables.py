"""What the variable explorer shows: the user's names, not IPython's or the kernel's.

Between cells ``inspectVariables`` and ``richInspectVariables`` are answered here from the user
namespace (as ipykernel answers them); while a cell is stopped, pydevd's frame variables are
filtered by the same rule, so the two views list the same names.
"""

from __future__ import annotations

import re
from typing import Any

#: Characters of a value's repr shown by inspectVariables.
REPR_LIMIT = 200

#: Names in the user namespace that are IPython's or the kernel's, not the user's.
_HIDDEN = frozenset(
    {
        "__name__", "__doc__", "__package__", "__loader__", "__spec__", "__annotations__",
        "__builtins__", "__builtin__", "__display__", "get_ipython", "exit", "quit", "In", "Out",
        "_oh", "_dh", "_", "__", "___", "load_jax_library", "execute_jax_transformation",
        "execute_jax_program", "export_jax_program",
    }
)  # fmt: skip
_MISSING = object()
_HIDDEN_PATTERN = re.compile(r"^(_i.*|_\d+)$")


def user_variable(name: str) -> bool:
    """Whether a variable listing shows this name (ipykernel hides the same bookkeeping names)."""
    return name not in _HIDDEN and not _HIDDEN_PATTERN.match(name)


def keep_user_variables(reply: dict[str, Any]) -> dict[str, Any]:
    """pydevd's ``variables`` reply, without the names :func:`user_variable` hides."""
    body = reply.get("body")
    if isinstance(body, dict) and isinstance(body.get("variables"), list):
        body["variables"] = [
            v for v in body["variables"] if isinstance(v, dict) and user_variable(str(v.get("name", "")))
        ]
    return reply


def namespace_variables(shell: Any) -> list[dict[str, Any]]:
    """The user namespace as DAP variables, each value's repr cut to :data:`REPR_LIMIT`."""
    variables = []
    hidden = shell.user_ns_hidden  # what IPython itself put there (open, In, Out, ...), as %who
    for name, value in list(shell.user_ns.items()):
        if not user_variable(name) or name.startswith("__") or hidden.get(name, _MISSING) is value:
            continue
        try:
            text = repr(value)
        except Exception as e:  # noqa: BLE001 - a broken __repr__ must not hide the others
            text = f"<repr failed: {type(e).__name__}>"
        if len(text) > REPR_LIMIT:
            text = text[: REPR_LIMIT - 1] + "…"
        variables.append(
            {
                "name": name,
                "value": text,
                "type": type(value).__name__,
                "evaluateName": name,
                "variablesReference": 0,
            }
        )
    return variables


def namespace_bundle(shell: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A user variable's MIME bundle and metadata, as IPython would display it (empty if it can't)."""
    result = shell.user_expressions({name: name})[name]
    if result.get("status") == "ok":
        return result.get("data", {}), result.get("metadata", {})
    return {}, {}
