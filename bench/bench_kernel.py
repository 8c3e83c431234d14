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

It prints a Markdown table.  Every kernel it starts is shut down before it exits, even on
error, and leftover worker processes are reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

try:
    import psutil
except ImportError:  # psutil is a test extra; without it the leak check is skipped
    psutil = None

JAX, PY = "jax", "python3"
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


class BenchError(RuntimeError):
    """A kernel did something the benchmark did not expect (timeout, wrong reply)."""


@dataclass
class Cell:
    """What one executed cell produced, and how long it took from request to idle + reply."""

    seconds: float
    reply: dict[str, Any]
    outputs: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return str(self.reply.get("status"))

    @property
    def ename(self) -> str | None:
        return self.reply.get("ename")

    def stdout(self) -> str:
        return "".join(
            m["content"].get("text", "")
            for m in self.outputs
            if m["msg_type"] == "stream" and m["content"].get("name") == "stdout"
        )


@dataclass
class Notes:
    """Anything unexpected seen during the run: it goes under the table, never silently away."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)
        print(f"  note: {text}", file=sys.stderr, flush=True)


NOTES = Notes()


# kernels ------------------------------------------------------------------------------------
class Kernel:
    """One kernel and its blocking client; :meth:`shutdown` is idempotent so cleanup can't double-fail."""

    live: list[Kernel] = []  # every kernel not yet shut down, for the final cleanup

    def __init__(self, name: str, extra_arguments: Sequence[str] = ()) -> None:
        self.name = name
        self.extra_arguments = list(extra_arguments)
        self.km = KernelManager(kernel_name=name)
        self.kc: BlockingKernelClient | None = None
        self.worker_pids: set[int] = set()
        self.closed = False
        Kernel.live.append(self)

    def start(self, timeout: float = 120.0) -> None:
        """Start the process, connect, and wait until shell and IOPub both answer."""
        self.km.start_kernel(extra_arguments=self.extra_arguments)
        kc = self.km.client()
        kc.start_channels()
        self.kc = kc
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """A kernel_info round trip on shell plus its idle status on IOPub.

        Why not ``kc.wait_for_ready()``: it ends by draining IOPub until 0.2 s of silence,
        which would add a fixed 0.2 s to every start-up number.  This version stops as soon
        as the IOPub subscription is proven to work (the idle status for our own request),
        and re-asks if that status was lost to the subscription not being connected yet.  It
        re-asks every 0.1 s, zmq's reconnect interval: after a restart the SUB socket reconnects
        within that, and a longer wait would time the client, not the kernel (both kernels alike).
        """
        kc = self._client()
        deadline = time.perf_counter() + timeout
        while True:
            msg_id = kc.kernel_info()
            if self._wait_for(kc.get_shell_msg, msg_id, "kernel_info_reply", min(1.0, self._left(deadline))):
                if self._wait_for(kc.get_iopub_msg, msg_id, "status", min(0.1, self._left(deadline))):
                    return
            if not self.km.is_alive():
                raise BenchError(f"{self.name} kernel died before it answered kernel_info")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} kernel did not become ready in {timeout:g} s")

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.perf_counter(), 0.01)

    @staticmethod
    def _wait_for(get: Callable[..., dict[str, Any]], msg_id: str, msg_type: str, timeout: float) -> bool:
        end = time.perf_counter() + timeout
        while (left := end - time.perf_counter()) > 0:
            try:
                msg = get(timeout=left)
            except queue.Empty:
                return False
            if msg["parent_header"].get("msg_id") != msg_id or msg["msg_type"] != msg_type:
                continue
            if msg_type != "status" or msg["content"].get("execution_state") == "idle":
                return True
        return False

    def _client(self) -> BlockingKernelClient:
        if self.kc is None:
            raise BenchError(f"{self.name} kernel is not started")
        return self.kc

    def run(self, code: str, timeout: float = 120.0) -> Cell:
        """Execute a cell the way a frontend does and wait for both its reply and its idle status.

        The clock stops when the later of the two has arrived, which is when a notebook
        would consider the cell finished.  Messages for other requests are skipped.
        """
        kc = self._client()
        t0 = time.perf_counter()
        deadline = t0 + timeout
        msg_id = kc.execute(code)
        outputs: list[dict[str, Any]] = []
        try:
            while True:
                msg = kc.get_iopub_msg(timeout=self._left(deadline))
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status":
                    if msg["content"].get("execution_state") == "idle":
                        break
                elif msg["msg_type"] != "execute_input":
                    outputs.append(msg)
            while True:
                msg = kc.get_shell_msg(timeout=self._left(deadline))
                if msg["parent_header"].get("msg_id") == msg_id:
                    break
        except queue.Empty:
            raise BenchError(f"{self.name} kernel: cell {code!r} did not finish in {timeout:g} s") from None
        return Cell(time.perf_counter() - t0, msg["content"], outputs)

    def run_ok(self, code: str, timeout: float = 120.0) -> Cell:
        """Run a cell that must succeed."""
        cell = self.run(code, timeout)
        if cell.status != "ok":
            raise BenchError(f"{self.name} kernel: {code!r} failed: {cell.ename}: {cell.reply.get('evalue')}")
        return cell

    def note_workers(self) -> None:
        """Remember the worker processes under this kernel, to check later that none outlived it."""
        if psutil is None or self.km.provisioner is None:
            return
        pid = getattr(self.km.provisioner, "pid", None)
        try:
            children = psutil.Process(pid).children(recursive=True) if pid else []
        except psutil.Error:
            return
        self.worker_pids.update(p.pid for p in children)

    def restart(self, timeout: float = 120.0) -> None:
        """``KernelManager.restart_kernel()`` as a frontend's restart button does it, then ready."""
        self.km.restart_kernel()
        self.wait_ready(timeout)

    def shutdown(self) -> float:
        """Polite shutdown (as a frontend does); returns its duration and checks for orphans."""
        if self.closed:
            return 0.0
        self.closed = True
        t0 = time.perf_counter()
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=False)
        finally:
            if self.kc is not None:
                self.kc.stop_channels()
            if self in Kernel.live:
                Kernel.live.remove(self)
        seconds = time.perf_counter() - t0
        self._check_orphans()
        return seconds

    def _check_orphans(self) -> None:
        if psutil is None:
            return
        for pid in self.worker_pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    NOTES.add(
                        f"{self.name} kernel: process {pid} ({' '.join(proc.cmdline())[:80]}) outlived it"
                    )
                    proc.kill()
            except psutil.Error:
                pass

    @classmethod
    def shutdown_all(cls) -> None:
        """Last-resort cleanup: every kernel still running is stopped, whatever happens."""
        for kernel in list(cls.live):
            try:
                kernel.shutdown()
            except (OSError, RuntimeError) as e:
                print(
                    f"could not shut down a {kernel.name} kernel politely ({e}); killing it", file=sys.stderr
                )
                kernel.km.shutdown_kernel(now=True)


# statistics & formatting ----------------------------------------------------------------------
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


# measurements ---------------------------------------------------------------------------------
def started(name: str) -> Kernel:
    """A kernel that has already run a cell, so later timings exclude its start-up."""
    kernel = Kernel(name)
    kernel.start()
    kernel.run_ok(OK_CELL)
    kernel.note_workers()
    return kernel


def bench_round_trip(jax_k: Kernel, py_k: Kernel, n: int, warmup: int) -> dict[str, dict[str, list[float]]]:
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
    kernel = Kernel(name)
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


def expect(cell: Cell, status: str, ename: str | None, what: str) -> None:
    """Record (not raise) a reply that differs from what the kernel documents."""
    if cell.status != status or (ename is not None and cell.ename != ename):
        NOTES.add(
            f"{what}: expected {status}{'/' + ename if ename else ''}, got {cell.status}/{cell.ename}: "
            f"{str(cell.reply.get('evalue', ''))[:200]}"
        )


def bench_crashes(jax_k: Kernel, py_k: Kernel, reps: int) -> dict[str, list[float]]:
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
        report = jax_k.run(OK_CELL)
        nxt = jax_k.run(OK_CELL)
        total = time.perf_counter() - t0
        expect(report, "error", "WorkerDied", "cell after a death between cells")
        expect(nxt, "ok", None, "second cell after a death between cells")
        if report.status == "error" and nxt.status == "ok":
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


def bench_jit(jax_k: Kernel, py_k: Kernel, reps: int) -> dict[str, list[float]]:
    """The same jitted loop in the jax kernel's worker, in the stock kernel and in plain python."""
    out: dict[str, list[float]] = {JAX: [], PY: [], "plain": []}
    for i in range(reps):
        runs: list[tuple[str, Callable[[], str]]] = [
            (JAX, lambda: jax_k.run_ok(JIT_SNIPPET).stdout()),
            (PY, lambda: py_k.run_ok(JIT_SNIPPET).stdout()),
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


def bench_floods(jax_k: Kernel, py_k: Kernel, reps: int) -> dict[str, dict[str, list[float]]]:
    """Wall time of the print and logging flood cells on both kernels, interleaved; each run must
    deliver every line (a kernel that drops output would look fast)."""
    out: dict[str, dict[str, list[float]]] = {key: {JAX: [], PY: []} for key in FLOOD_CELLS}
    for i in range(reps):
        for key, (code, lines) in FLOOD_CELLS.items():
            for kernel in (jax_k, py_k) if i % 2 == 0 else (py_k, jax_k):
                cell = kernel.run_ok(code, timeout=300)
                got = cell.stdout().count("\n")
                if got != lines:
                    NOTES.add(f"{kernel.name}: the {key} flood delivered {got} of {lines} lines")
                out[key][kernel.name].append(cell.seconds)
        print(f"  floods: round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    return out


# report -------------------------------------------------------------------------------------------
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


def header(argv: list[str]) -> str:
    """Where and with what the numbers were taken: they mean nothing without it."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    versions = ", ".join(
        f"{d} {version(d)}" for d in ("jax", "jaxlib", "ipykernel", "jupyter_client", "pyzmq", "jax-kernel")
    )
    return "\n".join(
        [
            f"- date: {now}",
            f"- machine: {platform.platform()}; CPU: {cpu_model()}; nproc: {nproc}",
            f"- python {platform.python_version()} ({sys.executable}); {versions}",
            f"- JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')}",
            f"- command: `{shlex.join(['python', *argv])}`",
        ]
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| Measurement | jax kernel | reference | jax ÷ reference | n |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.what} | {r.jax} | {r.ref} | {r.ratio} | {r.n} |" for r in rows]
    return "\n".join(lines)


def build_rows(
    rt: dict[str, dict[str, list[float]]],
    st: dict[str, list[float]],
    cr: dict[str, list[float]],
    jit: dict[str, list[float]],
    floods: dict[str, dict[str, list[float]]],
) -> list[Row]:
    """Turn the samples into table rows; a measurement that failed shows as FAILED, not as a number."""
    g = st.get
    rows = []
    for code in ("pass", "1"):
        a, b = rt.get(code, {}).get(JAX, []), rt.get(code, {}).get(PY, [])
        rows.append(versus(f"Trivial cell `{code}`: execute_request → reply + idle", a, b, target=1.10))
    rows += [
        Row(
            "`start_kernel()` → kernel_info answered (shell + IOPub)",
            spread(g("ready:jax", [])),
            f"python3: {spread(g('ready:python3', []))}",
            ratio(g("ready:jax", []), g("ready:python3", [])),
            str(len(g("ready:jax", []))),
        ),
        Row(
            "`start_kernel()` → first `1` cell finished",
            spread(g("first1:jax", [])),
            f"python3: {spread(g('first1:python3', []))}",
            ratio(g("first1:jax", []), g("first1:python3", [])),
            str(len(g("first1:jax", []))),
        ),
        Row(
            "`start_kernel()` → first `jnp.ones(3).sum()` cell finished",
            spread(g("firstjax:jax", [])),
            f"python3 (plain JAX in stock kernel): {spread(g('firstjax:python3', []))}",
            ratio(g("firstjax:jax", []), g("firstjax:python3", [])),
            str(len(g("firstjax:jax", []))),
        ),
        Row(
            "First JAX result vs plain `python -c` (import jax, one sum)",
            spread(g("firstjax:jax", [])),
            f"`python -c`: {spread(g('plainjax', []))}",
            ratio(g("firstjax:jax", []), g("plainjax", [])),
            str(len(g("plainjax", []))),
        ),
        Row(
            "`shutdown_kernel()` (polite)",
            spread(g("shutdown:jax", [])),
            f"python3: {spread(g('shutdown:python3', []))}",
            ratio(g("shutdown:jax", []), g("shutdown:python3", [])),
            str(len(g("shutdown:jax", []))),
        ),
        Row(
            "Crash in a cell (`os._exit(3)`): crash cell start → next `1` finished",
            spread(cr["crash_cell"]),
            f"python3 `restart_kernel()` → `1` finished: {spread(cr['restart:python3'])}",
            ratio(cr["crash_cell"], cr["restart:python3"]),
            str(len(cr["crash_cell"])),
        ),
        Row(
            "… of which: the crashing cell's error reply / the next `1` cell",
            f"{fmt_time(median(cr['crash_cell_only']))} / {fmt_time(median(cr['crash_next']))}",
            "",
            "",
            str(len(cr["crash_cell"])),
        ),
        Row(
            "Crash between cells: WorkerDied-reporting cell start → next `1` finished",
            spread(cr["crash_between"]),
            f"python3 `restart_kernel()` → `1` finished: {spread(cr['restart:python3'])}",
            ratio(cr["crash_between"], cr["restart:python3"]),
            str(len(cr["crash_between"])),
        ),
        Row(
            "`restart_kernel()` → `1` finished",
            spread(cr["restart:jax"]),
            f"python3: {spread(cr['restart:python3'])}",
            ratio(cr["restart:jax"], cr["restart:python3"]),
            str(len(cr["restart:jax"])),
        ),
        Row(
            "jit `(x @ x).sum()`, 256×256 f32, median per call (200 calls)",
            spread(jit[JAX]),
            f"plain `python -c`: {spread(jit['plain'])}",
            ratio(jit[JAX], jit["plain"]),
            str(len(jit[JAX])),
        ),
        Row(
            "… same loop in the stock python3 kernel",
            "",
            f"python3: {spread(jit[PY])}",
            f"python3 ÷ plain: {ratio(jit[PY], jit['plain'])}",
            str(len(jit[PY])),
        ),
    ]
    for key, what in (
        ("print", "10,000 flushed `print` lines"),
        ("logging", "3,000 `logging` records to stdout"),
    ):
        a, b = floods.get(key, {}).get(JAX, []), floods.get(key, {}).get(PY, [])
        rows.append(versus(f"Cell printing {what} → reply + idle", a, b, target=1.20))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, then print the header, the table and the notes."""
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="trivial-cell round trips per kernel (300)")
    parser.add_argument("--quick", action="store_true", help="small counts: finishes in under a minute")
    args = parser.parse_args(argv[1:])
    n = args.n if args.n is not None else (30 if args.quick else 300)
    warmup = 5 if args.quick else 20
    starts = 2 if args.quick else 5
    crash_reps = 2 if args.quick else 5
    jit_reps = 1 if args.quick else 5

    # Kernels inherit this environment; the subprocesses below do too.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

    print(header(argv), "\n", file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    rt: dict[str, dict[str, list[float]]] = {}
    st: dict[str, list[float]] = {}
    cr: dict[str, list[float]] = {}
    jit: dict[str, list[float]] = {JAX: [], PY: [], "plain": []}
    floods: dict[str, dict[str, list[float]]] = {}
    try:
        jax_k, py_k = started(JAX), started(PY)
        print(f"round trips: {warmup} warm-up + {n} each…", file=sys.stderr, flush=True)
        rt = bench_round_trip(jax_k, py_k, n, warmup)
        print(f"crash recovery: {crash_reps} rounds…", file=sys.stderr, flush=True)
        cr = bench_crashes(jax_k, py_k, crash_reps)
        print(f"jit loop: {jit_reps} rounds…", file=sys.stderr, flush=True)
        jit = bench_jit(jax_k, py_k, jit_reps)
        print(f"output floods: {crash_reps} rounds…", file=sys.stderr, flush=True)
        floods = bench_floods(jax_k, py_k, crash_reps)
        jax_k.shutdown()
        py_k.shutdown()
        print(f"start-up: {starts} rounds of 4 fresh kernels…", file=sys.stderr, flush=True)
        st = bench_starts(starts)
    finally:
        Kernel.shutdown_all()
    cr = {k: cr.get(k, []) for k in ("crash_cell", "crash_cell_only", "crash_next", "crash_between")} | {
        k: cr.get(k, []) for k in ("restart:jax", "restart:python3")
    }

    return report(argv, build_rows(rt, st, cr, jit, floods), t_start)


def printed_seconds(kernel: Kernel, code: str, mark: str) -> float:
    """Run ``code``, which prints ``MARK <seconds>`` (a time taken inside the cell), and return it."""
    import re

    cell = kernel.run_ok(code)
    m = re.search(mark + r" ([0-9.eE+-]+)", cell.stdout())
    if m is None:
        raise BenchError(f"{kernel.name}: the cell printed {cell.stdout()[:200]!r}, not {mark}")
    return float(m.group(1))


def rounds_from_argv(argv: list[str], doc: str) -> int:
    """``--quick`` (2 rounds) or ``--reps N`` (default 5), and the environment every script runs in."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv[1:])
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return args.reps or (2 if args.quick else 5)


def report(argv: list[str], rows: list[Row], t_start: float) -> int:
    """Print the header, the table, the wall time and any notes; exit status 1 if there were notes."""
    print(header(argv))
    print()
    print(table(rows))
    print()
    print(f"Total benchmark wall time: {time.perf_counter() - t_start:.0f} s.")
    if NOTES.items:
        print("\nNotes (unexpected behaviour seen during the run):\n")
        print("\n".join(f"- {item}" for item in NOTES.items))
    return 1 if NOTES.items else 0


if __name__ == "__main__":
    sys.exit(main())
