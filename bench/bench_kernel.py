#!/usr/bin/env python
"""Benchmark the ``jax`` kernel against the stock ``python3`` ipykernel, in one run.

Why this exists: the jax kernel puts a supervised worker process between the Jupyter
protocol and user code.  That hop must cost (almost) nothing per cell, must not make the
kernel slow to start, must bring a crashed worker back quickly, and must not slow JAX
itself down.  Each of those claims is measured here against the obvious reference (the
stock ipykernel, or plain JAX in a plain ``python``), with the two sides interleaved so
that machine noise hits both equally.

Usage::

    python bench/bench_kernel.py            # default counts, a few minutes on 2 cores
    python bench/bench_kernel.py --quick    # small counts, under a minute
    python bench/bench_kernel.py --n 1000   # more trivial-cell round trips
    python bench/bench_kernel.py --only cells,starts   # kernel start and trivial cells only

It prints a Markdown table.  Every kernel it starts is shut down before it exits, even on
error, and leftover worker processes are reported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

from harness import (
    JAX,
    NOTES,
    PY,
    BenchError,
    BenchKernel,
    Result,
    bench_environment,
    control_request,
    create_subshell,
    execute,
    settle,
    started,
)
from tables import Row, fmt_time, header, median, ratio, report, spread, versus

OK_CELL = "1"
CRASH_CELL = "import os; os._exit(3)"
CRASH_LATER_CELL = "import os, threading; threading.Timer(0.05, os._exit, (3,)).start()"
FIRST_JAX_CELL = "import jax.numpy as jnp; jnp.ones(3).sum()"
PLAIN_JAX_CMD = "import jax.numpy as jnp; jnp.ones(3).sum().block_until_ready()"
JIT_MARK = "JITRESULT"
#: Run as a cell and as ``python -c``: the same code, so the only difference is where it runs.
JIT_SNIPPET = f"""\
import statistics as _st, time as _time
import jax as _jax, jax.numpy as _jnp
_f = _jax.jit(lambda x: (x @ x).sum())
_x = _jax.random.normal(_jax.random.key(0), (256, 256), _jnp.float32)
for _ in range(20):
    _f(_x).block_until_ready()
_ts = []
for _ in range(200):
    _t0 = _time.perf_counter()
    _f(_x).block_until_ready()
    _ts.append(_time.perf_counter() - _t0)
print("{JIT_MARK}", _st.median(_ts), _jax.default_backend())
"""


#: Cells that print a lot, as a training loop does: every line is flushed (or is a logging record).
PRINT_CELL = "for i in range(10000):\n    print('line', i, flush=True)"
LOGGING_CELL = """\
import logging as _logging, sys as _sys
_log = _logging.getLogger('bench-flood')
_log.handlers[:] = [_logging.StreamHandler(_sys.stdout)]
_log.setLevel(_logging.INFO)
_log.propagate = False
for _i in range(3000):
    _log.info('record %d', _i)
"""
FLOOD_CELLS = {"print": (PRINT_CELL, 10000), "logging": (LOGGING_CELL, 3000)}


# measurements ---------------------------------------------------------------------------------
def bench_round_trip(
    jax_k: BenchKernel, py_k: BenchKernel, n: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Trivial cells, one on each kernel in turn (order swapped every round, so neither always goes first)."""
    codes = ("pass", "1")
    times: dict[str, dict[str, list[float]]] = {c: {JAX: [], PY: []} for c in codes}
    for i in range(warmup + n):
        pair = (jax_k, py_k) if i % 2 == 0 else (py_k, jax_k)
        for code in codes:
            for kernel in pair:
                cell = kernel.run_ok(code, timeout=30)
                if i >= warmup:
                    times[code][kernel.name].append(cell.seconds)
    return times


def time_start(name: str, code: str) -> tuple[float, float, float]:
    """Seconds from ``start_kernel()`` to ready and to ``code`` finished, and the shutdown's duration."""
    kernel = BenchKernel(name)
    try:
        t0 = time.perf_counter()
        kernel.start()
        ready = time.perf_counter() - t0
        cell = kernel.run(code)
        total = time.perf_counter() - t0
        if cell.status != "ok":
            raise BenchError(f"{name} kernel: first cell {code!r} failed: {cell.ename}")
        kernel.note_workers()
    finally:
        down = kernel.shutdown()
    return ready, total, down


def time_plain_jax() -> float:
    """Wall time of plain ``python -c`` importing JAX and computing one result: the floor for any kernel."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN_JAX_CMD], check=True, timeout=120)
    return time.perf_counter() - t0


def bench_starts(reps: int) -> dict[str, list[float]]:
    """Fresh kernels, one of each kind in turn, plus the plain-JAX subprocess in the same rotation."""
    out: dict[str, list[float]] = {}
    plan: list[tuple[str, str, str]] = [
        ("first1", JAX, OK_CELL),
        ("first1", PY, OK_CELL),
        ("firstjax", JAX, FIRST_JAX_CELL),
        ("firstjax", PY, FIRST_JAX_CELL),
    ]
    for i in range(reps):
        order = plan if i % 2 == 0 else plan[::-1]
        for key, name, code in order:
            try:
                ready, total, down = time_start(name, code)
            except (BenchError, OSError, RuntimeError) as e:
                NOTES.add(f"start {name} / {code!r}: {e}")
                continue
            out.setdefault(f"{key}:{name}", []).append(total)
            if key == "first1":
                out.setdefault(f"ready:{name}", []).append(ready)
            out.setdefault(f"shutdown:{name}", []).append(down)
        out.setdefault("plainjax", []).append(time_plain_jax())
        print(f"  starts: round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    return out


def expect(cell: Result, status: str, ename: str | None, what: str) -> None:
    """Record (not raise) a reply that differs from what the kernel documents."""
    if cell.status != status or (ename is not None and cell.ename != ename):
        NOTES.add(
            f"{what}: expected {status}{'/' + ename if ename else ''}, got {cell.status}/{cell.ename}: "
            f"{str(cell.reply.get('evalue', ''))[:200]}"
        )


def bench_crashes(jax_k: BenchKernel, py_k: BenchKernel, reps: int) -> dict[str, list[float]]:
    """Crash in a cell, crash between cells, and full kernel restarts, interleaved."""
    out: dict[str, list[float]] = {
        "crash_cell": [],
        "crash_cell_only": [],
        "crash_next": [],
        "crash_between": [],
        "restart:jax": [],
        "restart:python3": [],
    }
    for i in range(reps):
        # 1. the worker dies while running a cell
        t0 = time.perf_counter()
        crash = jax_k.run(CRASH_CELL)
        nxt = jax_k.run(OK_CELL)
        total = time.perf_counter() - t0
        expect(crash, "error", "WorkerDied", "crash in a cell")
        expect(nxt, "ok", None, "cell after a crash")
        if crash.status == "error" and nxt.status == "ok":
            out["crash_cell"].append(total)
            out["crash_cell_only"].append(crash.seconds)
            out["crash_next"].append(nxt.seconds)
        jax_k.note_workers()

        # 2. the stock kernel's answer to a crash: restart the whole kernel
        t0 = time.perf_counter()
        py_k.restart()
        cell = py_k.run(OK_CELL)
        if cell.status == "ok":
            out["restart:python3"].append(time.perf_counter() - t0)

        # 3. the worker dies between cells: the next cell reports it and does not run
        jax_k.run_ok(CRASH_LATER_CELL)
        time.sleep(0.5)
        t0 = time.perf_counter()
        reported = jax_k.run(OK_CELL)
        nxt = jax_k.run(OK_CELL)
        total = time.perf_counter() - t0
        expect(reported, "error", "WorkerDied", "cell after a death between cells")
        expect(nxt, "ok", None, "second cell after a death between cells")
        if reported.status == "error" and nxt.status == "ok":
            out["crash_between"].append(total)
        jax_k.note_workers()

        # 4. the same full restart on the jax kernel, for scale
        t0 = time.perf_counter()
        jax_k.restart()
        cell = jax_k.run(OK_CELL)
        if cell.status == "ok":
            out["restart:jax"].append(time.perf_counter() - t0)
        else:
            NOTES.add(f"jax kernel after restart_kernel(): {cell.ename}: {cell.reply.get('evalue')}")
        jax_k.note_workers()
        print(f"  crashes: round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    return out


def parse_jit(text: str, where: str) -> float | None:
    """The per-call median the snippet printed, or None (noted) if it printed something else."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == JIT_MARK:
            if parts[2] != "cpu":
                NOTES.add(f"jit loop {where} ran on backend {parts[2]!r}, not cpu")
            return float(parts[1])
    NOTES.add(f"jit loop {where}: no result in output {text[:200]!r}")
    return None


def bench_jit(jax_k: BenchKernel, py_k: BenchKernel, reps: int) -> dict[str, list[float]]:
    """The same jitted loop in the jax kernel's worker, in the stock kernel and in plain python."""
    out: dict[str, list[float]] = {JAX: [], PY: [], "plain": []}
    for i in range(reps):
        runs: list[tuple[str, Callable[[], str]]] = [
            (JAX, lambda: jax_k.run_ok(JIT_SNIPPET).stdout),
            (PY, lambda: py_k.run_ok(JIT_SNIPPET).stdout),
            (
                "plain",
                lambda: (
                    subprocess.run(
                        [sys.executable, "-c", JIT_SNIPPET],
                        check=True,
                        timeout=300,
                        capture_output=True,
                        text=True,
                    ).stdout
                ),
            ),
        ]
        for where, run in runs if i % 2 == 0 else runs[::-1]:
            value = parse_jit(run(), where)
            if value is not None:
                out[where].append(value)
        print(f"  jit: round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    return out


def bench_floods(jax_k: BenchKernel, py_k: BenchKernel, reps: int) -> dict[str, dict[str, list[float]]]:
    """Wall time of the print and logging flood cells on both kernels, interleaved; each run must
    deliver every line (a kernel that drops output would look fast)."""
    out: dict[str, dict[str, list[float]]] = {key: {JAX: [], PY: []} for key in FLOOD_CELLS}
    for i in range(reps):
        for key, (code, lines) in FLOOD_CELLS.items():
            for kernel in (jax_k, py_k) if i % 2 == 0 else (py_k, jax_k):
                cell = kernel.run_ok(code, timeout=300)
                got = cell.stdout.count("\n")
                if got != lines:
                    NOTES.add(f"{kernel.name}: the {key} flood delivered {got} of {lines} lines")
                out[key][kernel.name].append(cell.seconds)
        print(f"  floods: round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    return out


#: What the main shell runs while a subshell is timed: waiting (data loading, a sleep: the GIL is
#: free) or computing in Python (the GIL is held, and the subshell's thread gets it every 5 ms).
BUSY_CELLS = {
    "idle": None,
    "sleeping": "import time as _t\n_t.sleep({seconds})",
    "computing": "import time as _t\n_end = _t.monotonic() + {seconds}\nwhile _t.monotonic() < _end:\n    pass",
}


def bench_subshells(jax_k: BenchKernel, py_k: BenchKernel, n: int) -> dict[str, dict[str, list[float]]]:
    """A trivial cell in a subshell (request → reply + idle) while the main shell is idle, sleeps
    or computes: kernels in turn, the main cell long enough for all ``n`` subshell cells."""
    times: dict[str, dict[str, list[float]]] = {b: {JAX: [], PY: []} for b in BUSY_CELLS}
    subshells = {k.name: create_subshell(k._client()) for k in (jax_k, py_k)}
    for k in (jax_k, py_k):  # each subshell's threads started and warm
        for _ in range(5):
            execute(k._client(), "1", timeout=60, subshell_id=subshells[k.name])
    time.sleep(3)  # past WorkerManager.standby_delay: the standby's start does not land in the timings
    for busy, main_code in BUSY_CELLS.items():
        for i in range(2):
            kernel = (jax_k, py_k)[i] if busy != "computing" else (py_k, jax_k)[i]
            kc = kernel._client()
            if main_code is not None:
                kc.execute(main_code.format(seconds=max(3.0, n * 0.1)))
                time.sleep(0.3)
            for _ in range(n):
                cell = execute(kc, "1", timeout=60, subshell_id=subshells[kernel.name])
                if cell.status != "ok":
                    raise BenchError(f"{kernel.name}: a subshell cell failed: {cell.reply}")
                times[busy][kernel.name].append(cell.seconds)
            kernel.run_ok("2")  # queued behind the main cell: it has ended
    for k in (jax_k, py_k):
        control_request(k._client(), "delete_subshell_request", {"subshell_id": subshells[k.name]})
    return times


def subshell_rows(sub: dict[str, dict[str, list[float]]]) -> list[Row]:
    """A subshell's cell beside the main shell's: the extra hop must not cost more than in ipykernel."""
    return [
        versus(f"Subshell cell `1` while the main shell is {busy}", sub[busy][JAX], sub[busy][PY])
        for busy in BUSY_CELLS
    ]


def cell_rows(rt: dict[str, dict[str, list[float]]]) -> list[Row]:
    """Trivial cells against the stock kernel: the hop to the worker must cost (almost) nothing."""
    rows = []
    for code in ("pass", "1"):
        a, b = rt.get(code, {}).get(JAX, []), rt.get(code, {}).get(PY, [])
        rows.append(versus(f"Trivial cell `{code}`: execute_request → reply + idle", a, b, target=1.10))
    return rows


def start_rows(st: dict[str, list[float]]) -> list[Row]:
    """Fresh kernels against fresh stock kernels; the aim for the start itself is the stock kernel's."""

    def g(key: str) -> list[float]:
        return st.get(key, [])

    return [
        versus(
            "`start_kernel()` → kernel_info answered (shell + IOPub)",
            g("ready:jax"),
            g("ready:python3"),
            target=1.00,
        ),
        versus("`start_kernel()` → first `1` cell finished", g("first1:jax"), g("first1:python3")),
        versus(
            "`start_kernel()` → first `jnp.ones(3).sum()` cell finished",
            g("firstjax:jax"),
            g("firstjax:python3"),
            "python3 (plain JAX in stock kernel)",
        ),
        Row(
            "First JAX result vs plain `python -c` (import jax, one sum)",
            spread(g("firstjax:jax")),
            f"`python -c`: {spread(g('plainjax'))}",
            ratio(g("firstjax:jax"), g("plainjax")),
            str(len(g("plainjax"))),
        ),
        versus("`shutdown_kernel()` (polite)", g("shutdown:jax"), g("shutdown:python3")),
    ]


def crash_rows(cr: dict[str, list[float]]) -> list[Row]:
    """A worker's death against the stock kernel's only answer to one: a restart."""

    def g(key: str) -> list[float]:
        return cr.get(key, [])

    restart = "python3 `restart_kernel()` → `1` finished"
    return [
        versus(
            "Crash in a cell (`os._exit(3)`): crash cell start → next `1` finished",
            g("crash_cell"),
            g("restart:python3"),
            restart,
        ),
        Row(
            "… of which: the crashing cell's error reply / the next `1` cell",
            f"{fmt_time(median(g('crash_cell_only')))} / {fmt_time(median(g('crash_next')))}",
            "",
            "",
            str(len(g("crash_cell"))),
        ),
        versus(
            "Crash between cells: WorkerDied-reporting cell start → next `1` finished",
            g("crash_between"),
            g("restart:python3"),
            restart,
        ),
        versus("`restart_kernel()` → `1` finished", g("restart:jax"), g("restart:python3")),
    ]


def jit_rows(jit: dict[str, list[float]]) -> list[Row]:
    """JAX itself must not be slower in the worker than in a plain process."""
    return [
        versus(
            "jit `(x @ x).sum()`, 256×256 f32, median per call (200 calls)",
            jit.get(JAX, []),
            jit.get("plain", []),
            "plain `python -c`",
        ),
        Row(
            "… same loop in the stock python3 kernel",
            "",
            f"python3: {spread(jit.get(PY, []))}",
            f"python3 ÷ plain: {ratio(jit.get(PY, []), jit.get('plain', []))}",
            str(len(jit.get(PY, []))),
        ),
    ]


def flood_rows(floods: dict[str, dict[str, list[float]]]) -> list[Row]:
    """Cells that print a lot, as a training loop does."""
    rows = []
    for key, what in (
        ("print", "10,000 flushed `print` lines"),
        ("logging", "3,000 `logging` records to stdout"),
    ):
        a, b = floods.get(key, {}).get(JAX, []), floods.get(key, {}).get(PY, [])
        rows.append(versus(f"Cell printing {what} → reply + idle", a, b, target=1.20))
    return rows


PARTS = ("cells", "subshells", "starts", "crashes", "jit", "floods")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="trivial-cell round trips per kernel (300)")
    parser.add_argument("--quick", action="store_true", help="small counts: finishes in under a minute")
    parser.add_argument("--starts", type=int, default=None, help="rounds of 4 fresh kernels (5)")
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (all); e.g. --only cells,starts",
    )
    args = parser.parse_args(argv[1:])
    args.parts = [p for p in PARTS if p in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--only takes parts of {','.join(PARTS)}, not {','.join(sorted(unknown)) or 'nothing'}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the measurements asked for, then print the header, the table and the notes."""
    argv = sys.argv if argv is None else argv
    args = parse_args(argv)
    n = args.n if args.n is not None else (30 if args.quick else 300)
    warmup = 5 if args.quick else 20
    starts = args.starts if args.starts is not None else (2 if args.quick else 5)
    reps = 2 if args.quick else 5  # crash and flood rounds
    jit_reps = 1 if args.quick else 5
    bench_environment()  # kernels inherit it; the subprocesses below do too

    print(header(argv), "\n", file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    rows: dict[str, list[Row]] = {}
    try:
        if {"cells", "subshells", "crashes", "jit", "floods"} & set(args.parts):
            jax_k, py_k = started(JAX), started(PY)
            settle()  # the standby and spare processes warm up first: steady state is what is compared
            if "cells" in args.parts:
                print(f"round trips: {warmup} warm-up + {n} each…", file=sys.stderr, flush=True)
                rows["cells"] = cell_rows(bench_round_trip(jax_k, py_k, n, warmup))
            if "subshells" in args.parts:
                m = 10 if args.quick else 40
                print(
                    f"subshell cells: {m} each, main shell idle, sleeping, computing…",
                    file=sys.stderr,
                    flush=True,
                )
                rows["subshells"] = subshell_rows(bench_subshells(jax_k, py_k, m))
            if "crashes" in args.parts:
                print(f"crash recovery: {reps} rounds…", file=sys.stderr, flush=True)
                rows["crashes"] = crash_rows(bench_crashes(jax_k, py_k, reps))
            if "jit" in args.parts:
                print(f"jit loop: {jit_reps} rounds…", file=sys.stderr, flush=True)
                rows["jit"] = jit_rows(bench_jit(jax_k, py_k, jit_reps))
            if "floods" in args.parts:
                print(f"output floods: {reps} rounds…", file=sys.stderr, flush=True)
                rows["floods"] = flood_rows(bench_floods(jax_k, py_k, reps))
            jax_k.shutdown()
            py_k.shutdown()
        if "starts" in args.parts:
            print(f"start-up: {starts} rounds of 4 fresh kernels…", file=sys.stderr, flush=True)
            rows["starts"] = start_rows(bench_starts(starts))
    finally:
        BenchKernel.shutdown_all()
    return report(argv, [row for part in PARTS for row in rows.get(part, [])], t_start)


if __name__ == "__main__":
    sys.exit(main())
