"""What transformations and programs share: resolving a function and its arguments, calling, timing.

Runs in the worker process.  A string argument is evaluated in the namespace of the cell that called
the entry point (:func:`caller_namespace`), or in the worker namespace for a magic or a request.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...protocol import jaxspec
from ...protocol.jaxspec import JaxSpecError
from .errors import TransformError

#: Seconds of steady-state runs ``time`` aims for when no run count is given.
TIME_BUDGET_S = 1.0


def caller_namespace(depth: int = 2) -> dict[str, Any]:
    """The namespace a string argument is evaluated in: the caller's globals and locals."""
    frame = sys._getframe(depth)
    return {**frame.f_globals, **frame.f_locals}


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


def block(x: Any) -> Any:
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
    block(fn(*args))
    report["first_call_s"] = time.perf_counter() - t0
    times: list[float] = []
    deadline = time.perf_counter() + TIME_BUDGET_S
    while True:
        t0 = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - t0)
        if runs is not None:
            if len(times) >= runs:
                break
        elif len(times) >= 1000 or (len(times) >= 5 and time.perf_counter() > deadline):
            break
    report.update(run_median_s=statistics.median(times), run_min_s=min(times), runs=len(times))
    return report


@dataclass
class Outcome:
    """A result and the reports asked for."""

    value: Any
    reports: dict[str, Any]
