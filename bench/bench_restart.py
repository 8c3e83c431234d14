#!/usr/bin/env python
"""Benchmark restarts, first starts, crash recovery and the compilation cache against the stock kernel.

Why this exists: a notebook user restarts to change JAX's platform or x64, or because a cell
wedged the process, and on the stock kernel each restart costs a new interpreter, ``import jax``
and every compilation again.  The jax kernel restarts in place (its process stays, the standby
worker that has imported JAX takes over, :mod:`jax_kernel.kernel.restart`), keeps the standby
refilled at a low CPU priority, keeps a warm pool for first starts and a persistent compilation
cache.  Measured here, in one run, side by side with the stock kernel doing the same thing:

1. restart → first finished ``jnp`` cell, warm (target: ≤ 0.10 × the stock kernel's restart +
   ``import jax`` + the same cell); 5 restarts 3 s apart, each against the stock median (target:
   ≤ 0.25 for every one, the max reported); restarts back to back;
2. ``start_kernel()`` → first ``jnp`` cell with the server's pool warm (target ≤ 0.25 of stock);
3. a crash in a cell → the next finished ``jnp`` cell (the stock kernel must restart);
4. what the standby's refill costs a CPU-bound cell running meanwhile (1.00 = nothing; ≤ 1.05);
5. memory per pooled kernel process and per standby worker (unique set size);
6. compile time of a mid-sized jitted training step, before and after a restart.

Usage::

    python bench/bench_restart.py            # 5 rounds, a few minutes on 2 cores
    python bench/bench_restart.py --quick    # 2 rounds
"""

from __future__ import annotations

import sys
import tempfile
import time

import psutil
from harness import JAX, NOTES, PY, BenchError, BenchKernel, printed_seconds, rounds_from_argv, worker_pids
from tables import Row, median, ratio, report, spread, versus
from traitlets.config import Config

from jax_kernel.launch.pool import POOL as SERVER_POOL

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


#: CPU-bound cells for the refill's cost: one core (a Python loop) and every core (BLAS matmuls).
CPU_CELLS = {
    "one core": "import time\n_t0 = time.perf_counter()\n_n = 0\nfor _i in range(6_000_000):\n    _n += _i % 7\n"
    "print('CPUSECONDS', time.perf_counter() - _t0)",
    "all cores": "import time, numpy as _np\n_a = _np.ones((700, 700))\n_t0 = time.perf_counter()\n"
    "for _ in range(60):\n    _a = _a @ _a / 700.0\nprint('CPUSECONDS', time.perf_counter() - _t0)",
}
POOL = Config({"JaxProvisioner": {"pool_size": 1}})


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
    """Wait until the kernel's standby worker has finished starting; the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        kernel_pid = getattr(k.km.provisioner, "pid", None)
        standby = worker_pids(kernel_pid) if kernel_pid else []
        if len(standby) >= 2 and quiet(standby):
            return time.perf_counter() - t0
        time.sleep(0.1)
    NOTES.add(f"the jax kernel had no warm standby after {timeout:g} s")
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


def start_then(name: str, code: str, config: Config | None = None) -> tuple[float, BenchKernel]:
    """Seconds from ``start_kernel()`` to ``code`` finished (a notebook opened, its first cell run)."""
    k = BenchKernel(name, config=config)
    t0 = time.perf_counter()
    k.start()
    k.run_ok(code)
    return time.perf_counter() - t0, k


def pool_warm(timeout: float = 60.0) -> bool:
    """Whether the server's pool holds a kernel process whose standby has finished starting."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        warm = [e for entries in SERVER_POOL._warm.values() for e in entries if e.alive()]
        standby = [w for e in warm for w in worker_pids(e.process.pid)]
        if warm and standby and quiet([*standby, *(e.process.pid for e in warm)]):
            return True
        time.sleep(0.2)
    NOTES.add(f"the pool had no warm kernel process after {timeout:g} s")
    return False


def uss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().uss
        except psutil.Error:
            pass
    return total / 1e6


def cpu_cell_seconds(k: BenchKernel, code: str) -> float:
    return printed_seconds(k, code, "CPUSECONDS")


def compile_seconds(k: BenchKernel) -> float:
    return printed_seconds(k, COMPILE_CELL, COMPILE_MARK)


def bench_restarts(reps: int, cache_dir: str, out: dict[str, list[float]]) -> None:
    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    jax_k = BenchKernel(JAX, [f"--WorkerManager.compilation_cache_dir={cache_dir}"])
    py_k = BenchKernel(PY)
    jax_k.start()
    py_k.start()
    jax_k.run_ok(JNP_CELL)
    py_k.run_ok(JNP_CELL)

    # 6. compilation before a restart (the cache dir is new: a real compile), then after restarts;
    # first let the standby finish starting, so that it does not share the CPU with it.
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

        # 3. crash in a cell → next jnp cell (the jax kernel swaps in its standby worker)
        wait_warm(jax_k)
        t0 = time.perf_counter()
        crash = jax_k.run(CRASH_CELL)
        nxt = jax_k.run(JNP_CELL)
        if crash.ename == "WorkerDied" and nxt.status == "ok":
            add("crash", time.perf_counter() - t0)
        else:
            NOTES.add(f"crash round {i + 1}: {crash.status}/{crash.ename}, then {nxt.status}/{nxt.ename}")

        # 4. a CPU-bound cell while the standby refills (right after a crash took it) and, on
        # the same fresh worker, again with the standby warm and idle
        for name, code in CPU_CELLS.items():
            wait_warm(jax_k)
            jax_k.run(CRASH_CELL)
            add(f"refilling:{name}", cpu_cell_seconds(jax_k, code))
            wait_warm(jax_k)
            add(f"idle:{name}", cpu_cell_seconds(jax_k, code))
        print(f"  round {i + 1}/{reps} done", file=sys.stderr, flush=True)

    # 1b. the "edit, restart, run all" rhythm: 5 restarts 3 s apart, then back to back.
    wait_warm(jax_k)
    for _ in range(5):
        time.sleep(3.0)
        add("restart_3s:jax", restart_then(jax_k, JNP_CELL))
    for _ in range(min(reps, 3)):
        wait_warm(jax_k)
        restart_then(jax_k, JNP_CELL)
        add("restart_cold:jax", restart_then(jax_k, JNP_CELL))
    wait_warm(jax_k)
    worker = int(jax_k.run_ok("import os; os.getpid()").of("execute_result")[0]["data"]["text/plain"])
    for standby in [p for p in worker_pids(jax_k.km.provisioner.pid) if p != worker]:
        add("uss_standby", uss_mb([standby]))
    jax_k.shutdown()
    py_k.shutdown()


def bench_first_starts(reps: int, out: dict[str, list[float]]) -> None:
    """2. ``start_kernel()`` → first ``jnp`` cell: a pooled kernel (pool warm) against stock."""
    seed = BenchKernel(JAX, config=POOL)  # the first launch fills the pool for the next
    seed.start()
    for i in range(reps):
        if pool_warm():
            warm = [e for entries in SERVER_POOL._warm.values() for e in entries if e.alive()]
            pids = [p for e in warm for p in (e.process.pid, *worker_pids(e.process.pid))]
            out.setdefault("uss_pooled", []).append(uss_mb(pids))
        for name in (JAX, PY) if i % 2 == 0 else (PY, JAX):
            seconds, k = start_then(name, JNP_CELL, POOL if name == JAX else None)
            if name == JAX and not k.km.provisioner.pooled_used:
                NOTES.add(f"first start {i + 1}: the jax kernel did not come from the pool")
            out.setdefault(f"first:{name}", []).append(seconds)
            k.shutdown()
    seed.shutdown()
    SERVER_POOL.discard_all()


def bench(reps: int, cache_dir: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    bench_restarts(reps, cache_dir, out)
    bench_first_starts(reps, out)
    return out


def rows(r: dict[str, list[float]]) -> list[Row]:
    def g(key: str) -> list[float]:
        return r.get(key, [])

    def compare(what: str, mine: str, ref: str, ref_label: str, target: float | None = None) -> Row:
        """One jax-kernel figure against a stock-kernel one from the same run."""
        return versus(what, g(mine), g(ref), ref_label, target)

    stock_restart = "restart:python3"
    each_3s = [x / median(g(stock_restart)) for x in g("restart_3s:jax")] if g(stock_restart) else []
    worst = (
        f"{max(each_3s):.2f} (target ≤ 0.25 for each: {'met' if max(each_3s) <= 0.25 else '**missed**'})"
        if each_3s
        else "n/a"
    )
    rows_ = [
        compare(
            "`restart_kernel()` → first `jnp.ones(3).sum()` cell finished (in place, standby warm)",
            "restart:jax",
            stock_restart,
            "python3 (restart, `import jax`, same cell)",
            0.10,
        ),
        Row(
            "… 5 restarts 3 s apart, each ÷ the stock median (the worst shown)",
            spread(g("restart_3s:jax")),
            "",
            worst,
            str(len(g("restart_3s:jax"))),
        ),
        compare(
            "… restarting again at once (standby still warming)", "restart_cold:jax", stock_restart, "python3"
        ),
        compare(
            "`start_kernel()` → first `jnp` cell finished, the server's pool warm",
            "first:jax",
            "first:python3",
            "python3 (start, `import jax`, same cell)",
            0.25,
        ),
        compare(
            "Crash in a cell (`os._exit(3)`) → next `jnp` cell finished",
            "crash",
            stock_restart,
            "python3 restart → `jnp` cell",
        ),
    ]
    for name in CPU_CELLS:
        rows_.append(
            Row(
                f"CPU-bound cell ({name}) while the standby refills ÷ with it warm and idle",
                spread(g(f"refilling:{name}")),
                f"idle standby: {spread(g(f'idle:{name}'))}",
                ratio(g(f"refilling:{name}"), g(f"idle:{name}"), 1.05),
                str(len(g(f"refilling:{name}"))),
            )
        )
    rows_ += [
        Row(
            "Memory of a pooled kernel process with its standby (USS)",
            _mb(g("uss_pooled")),
            "",
            "",
            str(len(g("uss_pooled"))),
        ),
        Row("Memory of a standby worker (USS)", _mb(g("uss_standby")), "", "", str(len(g("uss_standby")))),
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
            "Wait before each timed restart until the standby was warm",
            spread(g("warm_wait")),
            "",
            "",
            str(len(g("warm_wait"))),
        ),
    ]
    return rows_


def _mb(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    return f"{median(xs):.0f} MB (min–max {min(xs):.0f}–{max(xs):.0f})" if xs else "n/a"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    reps = rounds_from_argv(argv, __doc__)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jax-kernel-bench-cache-") as cache:
        try:
            results = bench(reps, cache)
        finally:
            BenchKernel.shutdown_all()
            SERVER_POOL.discard_all()
    return report(argv, rows(results), t0)


if __name__ == "__main__":
    sys.exit(main())
