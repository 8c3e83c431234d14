"""execute_jax_transformation: build ``jit(vmap(grad(f)))`` and the like, call it, and report.

Runs in the worker process.  JAX is imported lazily, inside the functions (see :mod:`.load`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ...protocol import jaxspec
from ...protocol.jaxspec import JaxSpecError
from .calls import Outcome, block, caller_namespace, resolve_args, resolve_function, time_calls
from .display import reports_bundle, show
from .errors import TransformError

if TYPE_CHECKING:
    from jax.stages import Wrapped

_GRAD_LIKE = ("grad", "value_and_grad", "jacfwd", "jacrev", "hessian")
_OPTION_USERS = {
    "argnums": _GRAD_LIKE,
    "has_aux": _GRAD_LIKE,
    "in_axes": ("vmap", "pmap"),
    "out_axes": ("vmap", "pmap"),
    "axis_name": ("vmap", "pmap"),
    "static_argnums": ("jit", "pmap"),
}


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


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    out = {}
    for key in ("flops", "transcendentals", "bytes accessed"):
        if isinstance(cost, Mapping) and isinstance(cost.get(key), int | float):
            out[key.replace(" ", "_")] = float(cost[key])
    return out


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
    # An outermost jit or pmap made an object with .lower; build_transformed says only "callable".
    lowerable = cast("Wrapped", transformed) if names[0] in ("jit", "pmap") else None
    if opts.get("time"):
        reports["time"] = time_calls(transformed, call_args, opts.get("runs"), lowerable)
    value = block(transformed(*call_args))
    if opts.get("jaxpr"):
        static = opts.get("static_argnums", ()) if names[0] == "jit" else ()
        jaxpr = jax.make_jaxpr(transformed, static_argnums=static)(*call_args)
        # Plain text: JAX colours jaxprs for a notebook shell (ours is one), not for a JSON report.
        reports["jaxpr"] = jaxpr.pretty_print(use_color=False)
    if opts.get("hlo") or opts.get("cost"):
        target = lowerable if lowerable is not None else jax.jit(transformed)
        lowered = target.lower(*call_args)
        if opts.get("hlo"):
            reports["hlo"] = lowered.as_text()
        if opts.get("cost"):
            reports["cost"] = _cost(lowered.compile())
    return Outcome(value, reports)


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
    ns = caller_namespace()
    outcome = transform(transformation, function, args, options, ns)
    if outcome.reports:
        show(reports_bundle(outcome.reports))
    return outcome.value
