#!/usr/bin/env python
"""Benchmark restarts, crash recovery and the compilation cache against the stock ``python3`` kernel.

Why this exists: a notebook user restarts to change JAX's platform or x64, or because a cell
wedged the process, and on the stock kernel each restart costs a new interpreter, ``import jax``
and every compilation again.  The jax kernel keeps a spare kernel process (its provisioner) with
a standby worker that has imported JAX, and a persistent compilation cache.  Measured here, in one
run, side by side with the stock kernel doing the same thing:

1. restart → first finished ``jnp`` cell (target: ≤ 0.25 × the stock kernel's restart +
   ``import jax`` + the same cell);
2. a crash in a cell → the next finished ``jnp`` cell (the stock kernel must restart);
3. compile time of a mid-sized jitted training step, before and after a restart.

Usage::

    python bench/bench_restart.py            # 5 rounds, about two minutes on 2 cores
    python bench/bench_restart.py --quick    # 2 rounds

Before each timed restart the benchmark waits until the spare (and its standby worker) is
warm, as it is a few seconds after any start; a restart sooner than that is slower and is
measured separately ("back-to-back").
"""

from __future__ import annotations

import sys
import tempfile
import time

import psutil
from harness import JAX, NOTES, PY, BenchError, BenchKernel, printed_seconds, rounds_from_argv
from tables import Row, ratio, report, spread, versus

JNP_CELL = "import jax.numpy as jnp; jnp.ones(3).sum()"
CRASH_CELL = "import os; os._exit(3)"
COMPILE_MARK = "COMPILESECONDS"

# A small transformer's training step (6 blocks, unrolled): tracing, lowering and compiling it
# take a second or more on a CPU, the kind of function a notebook recompiles after every restart.
COMPILE_CELL = f"""
import time, jax, jax.numpy as jnp
def _block(p, x):
    h = (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)
    q, k, v = (h @ p["wq"]).reshape(64, 4, 32), (h @ p["wk"]).reshape(64, 4, 32), (h @ p["wv"]).reshape(64, 4, 32)
    a = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k) / 32 ** 0.5, axis=-1)
    x = x + jnp.einsum("hqk,khd->qhd", a, v).reshape(64, 128) @ p["wo"]
    h = (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)
    return x + jax.nn.gelu(h @ p["w1"]) @ p["w2"]
def _loss(params, x, y):
    for p in params:
        x = _block(p, x)
    return jnp.mean((x - y) ** 2)
@jax.jit
def _step(params, x, y):
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), loss
_shapes = dict(wq=(128, 128), wk=(128, 128), wv=(128, 128), wo=(128, 128), w1=(128, 512), w2=(512, 128))
_keys = iter(jax.random.split(jax.random.key(0), 6 * len(_shapes)))
_params = [{{n: jax.random.normal(next(_keys), s) * 0.05 for n, s in _shapes.items()}} for _ in range(6)]
_x, _y = jnp.ones((64, 128)), jnp.zeros((64, 128))
jax.block_until_ready((_params, _x, _y))
_t0 = time.perf_counter()
_step.lower(_params, _x, _y).compile()
print("{COMPILE_MARK}", time.perf_counter() - _t0)
"""


def workers_of(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children() if "jax_kernel.worker" in " ".join(p.cmdline())]
    except psutil.Error:
        return []


def quiet(pids: list[int], seconds: float = 0.3) -> bool:
    """Whether these processes used (almost) no CPU for ``seconds``: done starting, now waiting."""
    try:
        procs = [psutil.Process(p) for p in pids]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(seconds)
        after = [sum(p.cpu_times()[:2]) for p in procs]
    except psutil.Error:
        return False
    return all(b - a < 0.02 for a, b in zip(before, after, strict=True))


def wait_warm(k: BenchKernel, timeout: float = 60.0) -> float:
    """Wait until the kernel's standby worker and the provisioner's spare (with its own standby)
    have finished starting; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        kernel_pid = getattr(k.km.provisioner, "pid", None)
        spare = getattr(k.km.provisioner, "_spare", None)
        if kernel_pid and spare is not None:
            standby, spares = workers_of(kernel_pid), workers_of(spare.pid)
            if len(standby) >= 2 and spares and quiet([*standby, spare.pid, *spares]):
                return time.perf_counter() - t0
        time.sleep(0.1)
    NOTES.add(f"the jax kernel had no warm spare and standby after {timeout:g} s")
    return time.perf_counter() - t0


def restart_then(k: BenchKernel, code: str) -> float:
    """Seconds from ``restart_kernel()`` to ``code`` finished, as a frontend's restart button does it."""
    t0 = time.perf_counter()
    k.restart()
    cell = k.run(code)
    if cell.status != "ok":
        raise BenchError(
            f"{k.name}: {code!r} after a restart failed: {cell.ename}: {cell.reply.get('evalue')}"
        )
    return time.perf_counter() - t0


def compile_seconds(k: BenchKernel) -> float:
    return printed_seconds(k, COMPILE_CELL, COMPILE_MARK)


def bench(reps: int, cache_dir: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    jax_k = BenchKernel(JAX, [f"--WorkerManager.compilation_cache_dir={cache_dir}"])
    py_k = BenchKernel(PY)
    jax_k.start()
    py_k.start()
    jax_k.run_ok(JNP_CELL)
    py_k.run_ok(JNP_CELL)

    # 3. compilation before a restart (the cache dir is new: a real compile), then after restarts;
    # first let the spare and standby finish starting, so that they do not share the CPU with it.
    wait_warm(jax_k)
    add(f"compile_before:{JAX}", compile_seconds(jax_k))
    add(f"compile_before:{PY}", compile_seconds(py_k))

    for i in range(reps):
        order = (jax_k, py_k) if i % 2 == 0 else (py_k, jax_k)
        for k in order:
            if k is jax_k:
                add("warm_wait", wait_warm(jax_k))
            add(f"restart:{k.name}", restart_then(k, JNP_CELL))
            add(f"compile_after:{k.name}", compile_seconds(k))

        # 2. crash in a cell → next jnp cell (the jax kernel swaps in its standby worker)
        wait_warm(jax_k)
        t0 = time.perf_counter()
        crash = jax_k.run(CRASH_CELL)
        nxt = jax_k.run(JNP_CELL)
        if crash.ename == "WorkerDied" and nxt.status == "ok":
            add("crash", time.perf_counter() - t0)
        else:
            NOTES.add(f"crash round {i + 1}: {crash.status}/{crash.ename}, then {nxt.status}/{nxt.ename}")
        print(f"  round {i + 1}/{reps} done", file=sys.stderr, flush=True)

    # 1b. back-to-back: restart again at once, before the new spare has warmed up.
    for _ in range(min(reps, 3)):
        wait_warm(jax_k)
        restart_then(jax_k, JNP_CELL)
        add("restart_cold:jax", restart_then(jax_k, JNP_CELL))
    jax_k.shutdown()
    py_k.shutdown()
    return out


def rows(r: dict[str, list[float]]) -> list[Row]:
    def g(key: str) -> list[float]:
        return r.get(key, [])

    def compare(what: str, mine: str, ref: str, ref_label: str, target: float | None = None) -> Row:
        """One jax-kernel figure against a stock-kernel one from the same run."""
        return versus(what, g(mine), g(ref), ref_label, target)

    stock_restart = "restart:python3"
    return [
        compare(
            "`restart_kernel()` → first `jnp.ones(3).sum()` cell finished",
            "restart:jax",
            stock_restart,
            "python3 (restart, `import jax`, same cell)",
            0.25,
        ),
        compare(
            "… the same, restarting again at once (spare not yet warm)",
            "restart_cold:jax",
            stock_restart,
            "python3",
        ),
        compare(
            "Crash in a cell (`os._exit(3)`) → next `jnp` cell finished",
            "crash",
            stock_restart,
            "python3 restart → `jnp` cell",
        ),
        compare(
            "Compile a 6-block transformer training step (`lower().compile()`), first time",
            "compile_before:jax",
            "compile_before:python3",
            "python3",
        ),
        compare(
            "… the same function after each restart", "compile_after:jax", "compile_after:python3", "python3"
        ),
        Row(
            "… jax kernel after a restart ÷ its own first compile",
            "",
            "",
            ratio(g("compile_after:jax"), g("compile_before:jax")),
            "",
        ),
        Row(
            "Wait before each timed restart until the spare and standby were warm",
            spread(g("warm_wait")),
            "",
            "",
            str(len(g("warm_wait"))),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    reps = rounds_from_argv(argv, __doc__)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jax-kernel-bench-cache-") as cache:
        try:
            results = bench(reps, cache)
        finally:
            BenchKernel.shutdown_all()
    return report(argv, rows(results), t0)


if __name__ == "__main__":
    sys.exit(main())
