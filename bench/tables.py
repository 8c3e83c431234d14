"""Statistics and the tables of ratios every bench prints, with the header that says where and with
what the numbers were taken.

Why apart from :mod:`harness`: the tests share the kernel plumbing, only the benches report; one
definition of each, so every table in bench/RESULTS.md reads the same way.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

from harness import NOTES, PY


# statistics and the table of ratios -------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p10_p90(xs: Sequence[float]) -> tuple[float, float]:
    """Deciles need at least two samples; with fewer, the one value stands for both."""
    if len(xs) < 2:
        x = xs[0] if xs else float("nan")
        return x, x
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return q[0], q[8]


def fmt_time(seconds: float) -> str:
    """Milliseconds below a second (cells), seconds above (starts), so columns stay readable."""
    if seconds != seconds:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def spread(xs: Sequence[float]) -> str:
    """Median with p10–p90 for large samples and min–max for small ones (deciles of 5 are noise)."""
    if not xs:
        return "FAILED"
    lo, hi = p10_p90(xs) if len(xs) >= 20 else (min(xs), max(xs))
    label = "p10–p90" if len(xs) >= 20 else "min–max"
    return f"{fmt_time(median(xs))} ({label} {fmt_time(lo)}–{fmt_time(hi)})"


def ratio(a: Sequence[float], b: Sequence[float], target: float | None = None) -> str:
    """The ratio of the medians, with the verdict against an upper target if there is one."""
    if not a or not b:
        return "n/a"
    r = median(a) / median(b)
    text = f"{r:.2f}"
    if target is not None:
        text += f" (target ≤ {target:.2f}: {'met' if r <= target else '**missed**'})"
    return text


@dataclass
class Row:
    """One line of the results table."""

    what: str
    jax: str
    ref: str
    ratio: str
    n: str


def versus(
    what: str, jax: Sequence[float], ref: Sequence[float], ref_label: str = PY, target: float | None = None
) -> Row:
    """One jax-kernel measurement against its reference from the same run."""
    return Row(what, spread(jax), f"{ref_label}: {spread(ref)}", ratio(jax, ref, target), str(len(jax)))


COLUMNS = ("Measurement", "jax kernel", "reference", "jax ÷ reference", "n")


def table(rows: Sequence[Row], columns: Sequence[str] = COLUMNS) -> str:
    """The rows as a Markdown table, as bench/RESULTS.md keeps them."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [f"| {r.what} | {r.jax} | {r.ref} | {r.ratio} | {r.n} |" for r in rows]
    return "\n".join(lines)


# the report: where the numbers were taken ---------------------------------------------------------
def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(argv: Sequence[str]) -> str:
    """Where and with what the numbers were taken: they mean nothing without it."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    versions = ", ".join(
        f"{d} {version(d)}" for d in ("jax", "jaxlib", "ipykernel", "jupyter_client", "pyzmq", "jax-kernel")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return "\n".join(
        [
            f"- date: {now}",
            f"- machine: {platform.platform()}; CPU: {cpu_model()}; nproc: {nproc}; load at start: {load}",
            f"- python {platform.python_version()} ({sys.executable}); {versions}",
            f"- JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')}",
            f"- command: `{shlex.join(['python', *argv])}`",
        ]
    )


def report(argv: Sequence[str], rows: Sequence[Row], t_start: float, columns: Sequence[str] = COLUMNS) -> int:
    """Print the header, the table, the wall time and any notes; exit status 1 if there were notes."""
    print(header(argv))
    print()
    print(table(rows, columns))
    print()
    print(f"Total benchmark wall time: {time.perf_counter() - t_start:.0f} s.")
    if NOTES.items:
        print("\nNotes (unexpected behaviour seen during the run):\n")
        print("\n".join(f"- {item}" for item in NOTES.items))
    return 1 if NOTES.items else 0
