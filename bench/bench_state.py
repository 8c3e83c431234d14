#!/usr/bin/env python
"""Benchmark keeping the variables across workers, against the stock ``python3`` kernel, in one run.

Why this exists: the jax kernel saves what changed in a notebook's namespace while the worker is
idle, and restores it into the worker that replaces a dead one (:mod:`jax_kernel.worker.state`).
That must not slow cells down, must be fast enough for a GPU notebook's gigabytes, and must beat
what a stock-kernel user does after a crash: restart, re-run the cells that built the state.

1. cell latency with snapshots on vs off, a loop of small cells that each change a 100 MB array:
   back to back, and with a second of "thinking" between cells (the snapshot then runs between
   them); target <= 1.02;
2. snapshot throughput for 1 GiB of JAX arrays (``%jax_state save``), target >= 1 GB/s;
3. restore time after a crash for 1 GiB of state (what the cell's error reports), target <= 2 s;
4. a crash -> the next cell with 1 GiB restored, against the stock kernel's restart + ``import
   jax`` + re-running the cell that built it.

Usage::

    python bench/bench_state.py            # 5 rounds
    python bench/bench_state.py --quick    # 2 rounds
"""

from __future__ import annotations

import re
import sys
import time

from harness import JAX, NOTES, PY, BenchError, BenchKernel, bench_environment, rounds_from_argv
from tables import Row, median, report, spread, versus

#: 100 MB of float64 that every timed cell changes.
SETUP_100MB = "import numpy as np\narr = np.zeros(12_500_000)"
CHANGE_CELL = "arr += 1.0"
#: 1 GiB of float32 JAX arrays, built as a notebook would (random parameters).
BUILD_1GIB = (
    "import jax, jax.numpy as jnp\n"
    "keys = jax.random.split(jax.random.key(0), 8)\n"
    "weights = [jax.random.normal(k, (8192, 4096), jnp.float32) for k in keys]\n"
    "jax.block_until_ready(weights)"
)
GIB = 1 << 30


def cell_seconds(k: BenchKernel, code: str) -> float:
    return k.run_ok(code).seconds


def bench_latency(on: BenchKernel, off: BenchKernel, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for k in (on, off):
        k.run_ok(SETUP_100MB)
    for think, label in ((0.0, "back to back"), (1.0, "1 s between cells")):
        count = n if think == 0 else max(n // 3, 3)
        for i in range(count):
            for k in (on, off) if i % 2 == 0 else (off, on):
                out.setdefault(f"{label}:{k.extra_arguments[0]}", []).append(cell_seconds(k, CHANGE_CELL))
                time.sleep(think)
    return out


def saved_seconds(k: BenchKernel) -> float:
    cell = k.run_ok("%jax_state save")
    m = re.search(r"Saved in ([0-9.]+) s", cell.stdout)
    if m is None:
        raise BenchError(f"%jax_state save printed {cell.stdout[:200]!r}")
    return float(m.group(1))


def bench_state(reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    on = BenchKernel(JAX, ["--WorkerManager.keep_state=True"])
    off = BenchKernel(JAX, ["--WorkerManager.keep_state=False"])
    py = BenchKernel(PY)
    for k in (on, off, py):
        k.start()
    for key, values in bench_latency(on, off, 10 * reps).items():
        out.setdefault(key, []).extend(values)

    for i in range(reps):
        on.run_ok(BUILD_1GIB + f"\nround_ = {i}")
        add("save_gbps", GIB / 1e9 / saved_seconds(on))
        t0 = time.perf_counter()
        crash = on.run("import os; os._exit(3)")
        after = on.run("float(weights[0][0, 0])")
        total = time.perf_counter() - t0
        m = re.search(
            r"restored \d+ of \d+ variables saved after cell \[\d+\] \(([0-9.]+) s\)",
            crash.reply.get("evalue", ""),
        )
        if crash.ename != "WorkerDied" or m is None or after.status != "ok":
            NOTES.add(
                f"round {i + 1}: {crash.ename}: {crash.reply.get('evalue', '')[:300]}; then {after.status}"
            )
            continue
        add("restore_s", float(m.group(1)))
        add("crash_next:jax", total)

        t0 = time.perf_counter()
        py.restart()
        py.run_ok(BUILD_1GIB)
        py.run_ok("float(weights[0][0, 0])")
        add("crash_next:python3", time.perf_counter() - t0)
        print(f"  round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    for k in (on, off, py):
        k.shutdown()
    return out


def rows(r: dict[str, list[float]]) -> list[Row]:
    def g(key: str) -> list[float]:
        return r.get(key, [])

    on, off = "--WorkerManager.keep_state=True", "--WorkerManager.keep_state=False"
    result = [
        versus(
            f"Cell changing a 100 MB array, {label}: snapshots on ÷ off",
            g(f"{label}:{on}"),
            g(f"{label}:{off}"),
            "snapshots off",
            1.02,
        )
        for label in ("back to back", "1 s between cells")
    ]
    gbps = g("save_gbps")
    result += [
        Row(
            "`%jax_state save` of 1 GiB of JAX arrays (float32), GB/s",
            f"{median(gbps):.2f} GB/s (min–max {min(gbps):.2f}–{max(gbps):.2f})" if gbps else "FAILED",
            "target ≥ 1 GB/s",
            "met" if gbps and median(gbps) >= 1 else "**missed**",
            str(len(gbps)),
        ),
        Row(
            "Restore of 1 GiB after a crash (as the cell's error reports it)",
            spread(g("restore_s")),
            "target ≤ 2 s",
            "met" if g("restore_s") and median(g("restore_s")) <= 2 else "**missed**",
            str(len(g("restore_s"))),
        ),
        versus(
            "Crash → next cell with 1 GiB of arrays back",
            g("crash_next:jax"),
            g("crash_next:python3"),
            "python3 (restart, re-run the cell that built them)",
        ),
    ]
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    reps = rounds_from_argv(argv, __doc__)
    bench_environment()
    t0 = time.perf_counter()
    try:
        results = bench_state(reps)
    finally:
        BenchKernel.shutdown_all()
    return report(argv, rows(results), t0)


if __name__ == "__main__":
    sys.exit(main())
