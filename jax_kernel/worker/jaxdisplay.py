"""JAX-aware output in the worker: a rich view of ``jax.Array`` and debug output in the right cell.

Nothing here imports JAX: the formatter is registered by type name, so a worker whose cells
never touch JAX pays nothing, and the HTML view is built only when an array is displayed.

The card gives way to the user's own choice: a renderer registered for every object (treescope's
``basic_interactive_setup`` registers one for ``object``) renders arrays too, although IPython
would prefer our type-specific printer; ``JaxKernel.array_view`` and ``%jax_array_view`` turn the
card off (then arrays are JAX's text only, as in the stock kernel).
"""

from __future__ import annotations

import html
import sys
from typing import Any

#: Where jaxlib defines its concrete array type (the first is jaxlib >= 0.6, the second older).
ARRAY_TYPES = (("jaxlib._jax", "ArrayImpl"), ("jaxlib.xla_extension", "ArrayImpl"))

#: Elements per axis of the corner shown in the preview; the rest is never copied to the host.
PREVIEW_EDGE = 6
PREVIEW_NDIM = 3


class ArrayView:
    """Whether arrays get the card: the kernel's setting (per request), unless the notebook chose."""

    def __init__(self) -> None:
        self.kernel_default = True
        self.notebook: bool | None = None  # %jax_array_view on|off; None: follow the kernel

    @property
    def enabled(self) -> bool:
        return self.kernel_default if self.notebook is None else self.notebook


VIEW = ArrayView()


def register(shell: Any) -> None:
    """Give ``jax.Array`` results an HTML view; ``text/plain`` stays JAX's own repr."""
    formatter = shell.display_formatter.formatters["text/html"]

    def view(x: Any) -> Any:
        users = formatter.type_printers.get(object)
        if users is not None:  # the user's renderer for everything (treescope): theirs wins
            return users(x)
        return array_html(x) if VIEW.enabled else None

    for module, name in ARRAY_TYPES:
        formatter.for_type_by_name(module, name, view)


def _describe_placement(x: Any) -> str:
    sharding = x.sharding
    devices = sorted(x.devices(), key=lambda d: d.id)
    if len(devices) == 1:
        return str(devices[0])
    spec = getattr(sharding, "spec", None)
    kind = type(sharding).__name__
    where = f"{len(devices)} devices ({', '.join(str(d.id) for d in devices[:8])}{', …' if len(devices) > 8 else ''})"
    return f"{kind}{f' {spec}' if spec is not None else ''} over {where}"


def _preview(x: Any) -> str:
    """Values of a small corner of the array: only that corner is transferred to the host."""
    import numpy as np

    if x.ndim == 0:
        return np.array2string(np.asarray(x))
    if x.ndim > PREVIEW_NDIM or not x.is_fully_addressable:
        return (
            "(not shown: "
            + ("more than 3 dimensions" if x.ndim > PREVIEW_NDIM else "spans other processes")
            + ")"
        )
    # Slice the shard that holds the origin: it lives on one device, so the slice moves only the
    # corner, and slicing the global array could need collectives.
    origin = next(
        (
            sh.data
            for sh in x.addressable_shards
            if all((ix.start or 0) == 0 for ix in sh.index if isinstance(ix, slice))
        ),
        x,
    )
    corner = tuple(slice(0, PREVIEW_EDGE) for _ in range(x.ndim))
    values = np.asarray(origin[corner])
    text = np.array2string(values, threshold=PREVIEW_EDGE**PREVIEW_NDIM, precision=4, suppress_small=True)
    if values.shape != tuple(x.shape):
        text += f"\n… (showing {values.shape} of {tuple(x.shape)})"
    return text


def array_html(x: Any) -> str | None:
    """An HTML card for one array; None (plain text only) if the array can't be inspected."""
    try:
        if x.is_deleted():
            return None
        rows = [
            ("shape", str(tuple(x.shape))),
            ("dtype", str(x.dtype)),
            ("size", f"{x.size:,} elements, {x.nbytes:,} bytes"),
            ("placement", _describe_placement(x)),
            ("weak type", "yes") if getattr(x, "weak_type", False) else None,
        ]
        preview = _preview(x)
    except Exception:  # noqa: BLE001 - a display must never turn a good result into an error
        return None
    table = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in (r for r in rows if r is not None)
    )
    return (
        "<div class='jax-array'><table>"
        f"{table}</table><pre style='margin-top:0.3em'>{html.escape(preview)}</pre></div>"
    )


def settle_effects() -> None:
    """Wait for JAX's pending side effects (``jax.debug.print``/``callback``) so their output lands
    in the cell that ran them, not in a later one; on an accelerator they run asynchronously."""
    jax = sys.modules.get("jax")
    if jax is None:
        return
    try:
        from jax._src import xla_bridge

        if not xla_bridge.backends_are_initialized():
            return  # never start a backend just to wait on it
    except (ImportError, AttributeError):
        return
    jax.effects_barrier()
