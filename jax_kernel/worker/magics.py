"""``%load_jax``, ``%jax``, ``%jax_program``, ``%jax_export`` and ``%jax_memory``: the entry points for
notebook users.

A magic line is ``POSITIONALS ... [--flags]``.  Positionals are taken verbatim up to the
first known ``--flag`` so that argument lists keep their Python source (``xs, -1.0``,
``"a b"``); only the transformation and the function (or path) are single tokens, and
may be quoted (``"lambda x: x ** 2"``).  Flags are parsed with argparse.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class, no_var_expand
from IPython.display import display

from . import jax_ops, memory


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line in the cell) instead of exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"%{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        raise UsageError(message or f"%{self.prog}: bad arguments")


def _literal(text: str) -> Any:
    """A flag value as a Python literal (``0``, ``(0, None)``, ``{'a': 0}``), or a bare word."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[\d\s,]+", text):
            return tuple(int(p) for p in text.split(",") if p.strip())
        raise UsageError(f"{text!r} is not a Python literal") from None


def _take_token(text: str) -> tuple[str, str]:
    """The first token (quoted, or up to whitespace outside brackets) and the rest."""
    text = text.lstrip()
    if not text:
        return "", ""
    if text[0] in "'\"":
        quote, i = text[0], 1
        while i < len(text) and text[i] != quote:
            i += 2 if text[i] == "\\" else 1
        if i >= len(text):
            raise UsageError("unterminated quote")
        return ast.literal_eval(text[: i + 1]), text[i + 1 :]
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch.isspace() and depth <= 0:
            return text[:i], text[i:]
    return text, ""


def _split_flags(rest: str, parser: argparse.ArgumentParser) -> tuple[str, list[str]]:
    """Source before the first known ``--flag``, and the flags' tokens."""
    known = sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")}, key=len)
    pattern = r"(?:^|\s)(" + "|".join(re.escape(k) for k in reversed(known)) + r")(?=\s|=|$)"
    m = re.search(pattern, rest)
    if m is None:
        return rest.strip(), []
    return rest[: m.start(1)].strip(), shlex.split(rest[m.start(1) :])


def _show(outcome: jax_ops.Outcome, max_values: int) -> None:
    display(jax_ops.result_bundle(outcome.value, max_values), raw=True)
    if outcome.reports:
        display(jax_ops.reports_bundle(outcome.reports), raw=True)


@magics_class
class JaxMagics(Magics):
    """Magics for the JAX entry points; each wraps the function of the same purpose."""

    @property
    def _user_ns(self) -> dict[str, Any]:
        """The namespace cells run in (these magics are only registered with a shell)."""
        assert self.shell is not None
        return self.shell.user_ns

    def _load_parser(self) -> _Parser:
        p = _Parser(prog="load_jax", add_help=False)
        p.add_argument("--platform")
        p.add_argument("--devices")
        p.add_argument("--x64", action="store_const", const=True, default=None)
        p.add_argument("--no-x64", dest="x64", action="store_const", const=False)
        p.add_argument("--host-devices", type=int, dest="host_device_count")
        p.add_argument("--memory-fraction", type=float)
        p.add_argument("--preallocate", action="store_const", const=True, default=None)
        p.add_argument("--no-preallocate", dest="preallocate", action="store_const", const=False)
        p.add_argument("--cache-dir", dest="compilation_cache_dir")
        p.add_argument("--matmul-precision")
        p.add_argument("--processes", type=int)
        p.add_argument("--launcher")
        p.add_argument("--devices-per-process", type=int)
        p.add_argument("--keep-state", action="store_true")
        return p

    @line_magic
    def load_jax(self, line: str) -> jax_ops.JaxInfo:
        """Start JAX with these settings and show versions, backend and devices.

        %load_jax [--platform cpu|cuda|rocm|tpu] [--devices 0,1] [--x64|--no-x64] [--host-devices N]
                  [--memory-fraction F] [--preallocate|--no-preallocate] [--cache-dir DIR]
                  [--matmul-precision P] [--processes N [--launcher NAME] [--devices-per-process K]]
                  [--keep-state]

        Settings JAX reads only at start (platform, devices, x64, host devices, allocator) replace
        the worker if JAX already runs with others: all variables are lost (the kernel says so),
        unless ``--keep-state``: they are saved first and the new worker restores them (arrays onto
        their devices where those still exist).
        ``--processes N`` replaces it with a set of N processes (multi-controller JAX), placed by an
        ipyparallel launcher (local, mpi, slurm, ...); every cell then runs in each of them.
        """
        options = vars(self._load_parser().parse_args(shlex.split(line)))
        keep = options.pop("keep_state")
        try:
            return jax_ops.load_jax_library(**options)
        except jax_ops.JaxRestartRequired as restart:
            if keep:  # saved now; the kernel has the replacement restore it
                keeper = getattr(self.shell, "keepstate", None)
                if keeper is None:
                    raise UsageError("%load_jax --keep-state: this worker keeps no state") from None
                keeper.save_now()
                restart.keep_state = True
            raise

    def _transform_parser(self) -> _Parser:
        p = _Parser(prog="jax", add_help=False)
        p.add_argument("--argnums", type=_literal)
        p.add_argument("--has-aux", action="store_true", default=None)
        p.add_argument("--in-axes", type=_literal)
        p.add_argument("--out-axes", type=_literal)
        p.add_argument("--static-argnums", type=_literal)
        p.add_argument("--axis-name")
        p.add_argument("--time", action="store_true", default=None)
        p.add_argument("--runs", type=int)
        p.add_argument("--jaxpr", action="store_true", default=None)
        p.add_argument("--hlo", action="store_true", default=None)
        p.add_argument("--cost", action="store_true", default=None)
        p.add_argument("--out")
        p.add_argument("--max-values", type=int)
        return p

    @no_var_expand  # ARGS are Python source: {...} and $ must reach Python as written
    @line_magic
    def jax(self, line: str) -> None:
        """Apply a JAX transformation to a function, call it, and show the result.

        %jax TRANSFORMATION FUNCTION [ARGS ...] [--argnums N] [--has-aux] [--in-axes AXES]
             [--out-axes AXES] [--static-argnums N] [--axis-name NAME] [--time] [--runs N]
             [--jaxpr] [--hlo] [--cost] [--out NAME]

        TRANSFORMATION: grad, value_and_grad, jit, vmap, pmap, jacfwd, jacrev, hessian, jvp, vjp, or
        nested calls such as jit(vmap(grad)).  FUNCTION: a name or a quoted lambda.  ARGS: Python
        source of the argument list, before any flag.  The result goes into ``_`` (and NAME).
        """
        parser = self._transform_parser()
        transformation, rest = _take_token(line)
        function, rest = _take_token(rest)
        if not transformation or not function:
            raise UsageError("usage: %jax TRANSFORMATION FUNCTION [ARGS ...] [--flags]; see %jax?")
        args, flags = _split_flags(rest, parser)
        options = {k: v for k, v in vars(parser.parse_args(flags)).items() if v is not None}
        outcome = jax_ops.transform(transformation, function, args, options, self._user_ns)
        self._store(outcome.value, options.get("out"))
        _show(outcome, options.get("max_values", jax_ops.DEFAULT_MAX_VALUES))

    def _store(self, value: Any, out: str | None) -> None:
        self._user_ns["_"] = value
        if out:
            self._user_ns[out] = value

    @no_var_expand  # ARGS are Python source: {...} and $ must reach Python as written
    @line_magic
    def jax_program(self, line: str) -> None:
        """Validate and run a serialized jax.export program.

        %jax_program PATH [ARGS ...] [--time] [--runs N] [--out NAME]

        PATH may also name a variable holding the path or the bytes.  The program is refused with a one-line reason if it is not an artifact, was exported
        for other platforms, gets inputs of the wrong number/shape/dtype, calls a custom_call
        target not on the allowlist, or is too large.  Outputs go into ``_`` (and NAME).
        """
        p = _Parser(prog="jax_program", add_help=False)
        p.add_argument("--time", action="store_true", default=None)
        p.add_argument("--runs", type=int)
        p.add_argument("--out")
        p.add_argument("--max-values", type=int)
        path, rest = _take_token(line)
        if not path:
            raise UsageError("usage: %jax_program PATH [ARGS ...] [--time]")
        args, flags = _split_flags(rest, p)
        options = {k: v for k, v in vars(p.parse_args(flags)).items() if v is not None}
        ns = self._user_ns
        if (
            not os.path.exists(path)
            and re.fullmatch(r"[A-Za-z_]\w*", path)
            and isinstance(ns.get(path), str | bytes | os.PathLike)
        ):
            path = ns[path]  # a variable holding the path (or the bytes)
        outcome = jax_ops.run_program(path, args, options, ns)
        self._store(outcome.value, options.get("out"))
        _show(outcome, options.get("max_values", jax_ops.DEFAULT_MAX_VALUES))

    @no_var_expand  # ARGS are Python source: {...} and $ must reach Python as written
    @line_magic
    def jax_export(self, line: str) -> None:
        """Export jit(FUNCTION) for the shapes/dtypes of ARGS to a file.

        %jax_export FUNCTION ARGS --out PATH [--platforms cpu,cuda] [--vjp-order N]
        """
        p = _Parser(prog="jax_export", add_help=False)
        p.add_argument("--out", required=True)
        p.add_argument("--platforms")
        p.add_argument("--vjp-order", type=int, default=0)
        function, rest = _take_token(line)
        if not function:
            raise UsageError(
                "usage: %jax_export FUNCTION ARGS --out PATH [--platforms cpu,cuda] [--vjp-order N]"
            )
        args, flags = _split_flags(rest, p)
        ns = p.parse_args(flags)
        data = jax_ops.export_program(function, args, ns.out, ns.platforms, ns.vjp_order, self._user_ns)
        print(f"wrote {len(data):,} bytes to {ns.out}")

    @line_magic
    def jax_output(self, line: str) -> None:
        """Choose whose output a set of processes shows: %jax_output all|0|K

        By default stdout, displays and results come from process 0 and stderr and errors from
        every process (prefixed with its index).  ``all`` shows every process' stdout and
        displays too (prefixed); ``K`` shows process K's instead of process 0's.
        """
        member = jax_ops.STATE.member
        if not member:
            raise UsageError(
                "%jax_output chooses among the processes of a set; this worker is a single process "
                "(start a set with %load_jax --processes N)"
            )
        value = line.strip().lower()
        count = int(member.get("count", 1))
        if value != "all" and not (value.isdigit() and int(value) < count):
            raise UsageError(f"usage: %jax_output all|0..{count - 1} (not {line.strip()!r})")
        jax_ops.STATE.output_mode = value  # the kernel routes output: it says what changed

    @line_magic
    def jax_array_view(self, line: str) -> None:
        """Turn the HTML card of JAX arrays on or off in this notebook: %jax_array_view on|off|default

        ``default`` follows ``JaxKernel.array_view`` again.  Off, an array shows JAX's own text only,
        as in the stock kernel.  A renderer registered for every object (treescope) is used either way.
        """
        from .jaxdisplay import VIEW

        value = line.strip().lower()
        choices = {"on": True, "off": False, "default": None}
        if value not in choices:
            raise UsageError(f"usage: %jax_array_view on|off|default (not {line.strip()!r})")
        VIEW.notebook = choices[value]
        print(f"JAX array card: {'on' if VIEW.enabled else 'off'}")

    @line_magic
    def jax_memory(self, line: str) -> None:
        """Show where the worker's memory is: per device, by live array, and the process' RSS.

        %jax_memory [--top N]

        Devices: bytes in use, peak and limit from device.memory_stats() (CPU devices keep none),
        and the bytes of live arrays on each.  Live arrays: the N largest (default 10) with shape,
        dtype and devices.  JAX is not started for this: before it runs, only the RSS is shown.
        """
        p = _Parser(prog="jax_memory", add_help=False)
        p.add_argument("--top", type=int, default=memory.DEFAULT_TOP)
        ns = p.parse_args(shlex.split(line))
        report = memory.memory_report(max(ns.top, 0))
        display({"text/plain": memory.render_text(report), "text/html": memory.render_html(report)}, raw=True)
