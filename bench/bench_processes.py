#!/usr/bin/env python
"""Benchmark a set of worker processes (``%load_jax --processes 2``) against one process and plain JAX.

Why this exists: a set costs a launcher, N interpreters, JAX's distributed runtime and a relay of
every cell to N processes; a user should know what that costs next to one worker and next to
starting the same processes by hand.  Measured in one run, on this host (loopback):

1. ``%load_jax --processes 2`` → a finished ``jax.process_count()`` cell, against plain JAX: two
   processes started by hand (``python -c``) that ``jax.distributed.initialize`` and finish one
   cross-process all-reduce;
2. the trivial-cell round trip (``pass``) with 2 processes against 1, and the stock ``python3`` kernel;
3. a data-parallel MLP training step (batch sharded over the mesh, gradients all-reduced) on
   2 processes x 1 CPU device against 1 process x 2 CPU devices: the cost of crossing processes
   (gloo over loopback) instead of sharing one address space.

Usage::

    python bench/bench_processes.py            # 5 rounds, about two minutes on 2 cores
    python bench/bench_processes.py --quick    # 2 rounds
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

from harness import JAX, NOTES, PY, BenchError, BenchKernel, printed_seconds, rounds_from_argv
from tables import Row, ratio, report, spread

SET = "%load_jax --processes 2 --devices-per-process 1"
ONE = "%load_jax --processes 1 --host-devices 2"
COUNT_CELL = "import jax; jax.process_count()"
STEP_MARK = "STEPSECONDS"

# A data-parallel step: each process holds its rows of a 2048-row batch, the loss is a mean over
# the global batch, so the gradients are all-reduced over every device (across processes in a set).
STEP_CELL = f"""
import time, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
_mesh = Mesh(np.array(jax.devices()), ("b",))
_bs, _rep = NamedSharding(_mesh, P("b")), NamedSharding(_mesh, P())
_n = 2048 // jax.process_count()
_rng = np.random.default_rng(jax.process_index())
_x = jax.make_array_from_process_local_data(_bs, _rng.normal(size=(_n, 256)).astype(np.float32))
_y = jax.make_array_from_process_local_data(_bs, _rng.normal(size=(_n, 1)).astype(np.float32))
_p = jax.device_put({{"w1": jnp.full((256, 512), 0.01), "w2": jnp.full((512, 1), 0.01)}}, _rep)
def _loss(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)
@jax.jit
def _step(p, x, y):
    l, g = jax.value_and_grad(_loss)(p, x, y)
    return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), l
_p, _l = _step(_p, _x, _y); _l.block_until_ready()
_ts = []
for _ in range(40):
    _t = time.perf_counter(); _p, _l = _step(_p, _x, _y); _l.block_until_ready(); _ts.append(time.perf_counter() - _t)
print("{STEP_MARK}", sorted(_ts)[len(_ts) // 2])
"""

PLAIN_MEMBER = textwrap.dedent(
    """
    import sys, jax, jax.numpy as jnp
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")(jnp.ones(1)).block_until_ready()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_jax_two_processes() -> float:
    """Seconds for two hand-started processes to join jax.distributed and finish one all-reduce."""
    coordinator = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PLAIN_MEMBER, coordinator, str(i)], env=env, stdout=subprocess.DEVNULL
        )
        for i in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    if any(codes):
        raise BenchError(f"plain JAX processes exited with {codes}")
    return time.perf_counter() - t0


def step_seconds(k: BenchKernel) -> float:
    return printed_seconds(k, STEP_CELL, STEP_MARK)


def round_trips(k: BenchKernel, n: int) -> list[float]:
    for _ in range(5):
        k.run_ok("pass")
    return [k.run_ok("pass").seconds for _ in range(n)]


def bench(reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    def add(key: str, values: float | list[float]) -> None:
        out.setdefault(key, []).extend(values if isinstance(values, list) else [values])

    jax_k = BenchKernel(JAX, ["--WorkerManager.standby=False"])
    py_k = BenchKernel(PY)
    jax_k.start()
    py_k.start()
    py_k.run_ok("pass")
    for i in range(reps):
        jax_k.run_ok(ONE, timeout=180)
        jax_k.run_ok(COUNT_CELL)
        add("rt:one", round_trips(jax_k, 40))
        add("rt:py", round_trips(py_k, 40))
        add("step:one", step_seconds(jax_k))
        t0 = time.perf_counter()
        jax_k.run_ok(SET, timeout=180)
        cell = jax_k.run_ok(COUNT_CELL)
        add("load:set", time.perf_counter() - t0)
        if cell.outputs and "2" not in str(cell.outputs[-1][1].get("data", {})):
            NOTES.add(f"round {i + 1}: the set reported {cell.outputs[-1][1]}")
        add("rt:set", round_trips(jax_k, 40))
        add("step:set", step_seconds(jax_k))
        add("plain", plain_jax_two_processes())
        print(f"  round {i + 1}/{reps} done", file=sys.stderr, flush=True)
    jax_k.shutdown()
    py_k.shutdown()
    return out


def rows(r: dict[str, list[float]]) -> list[Row]:
    def g(key: str) -> list[float]:
        return r.get(key, [])

    def compare(what: str, mine: str, ref: str, ref_label: str) -> Row:
        return Row(
            what, spread(g(mine)), f"{ref_label}: {spread(g(ref))}", ratio(g(mine), g(ref)), str(len(g(mine)))
        )

    return [
        compare(
            f"`{SET}` → `jax.process_count()` cell finished",
            "load:set",
            "plain",
            "plain JAX, 2 processes started by hand → first all-reduce",
        ),
        compare("Trivial cell (`pass`) round trip, set of 2 processes", "rt:set", "rt:one", "1 process"),
        compare("Trivial cell (`pass`) round trip, 1 process", "rt:one", "rt:py", "stock python3 kernel"),
        compare(
            "Data-parallel MLP step (2048×256 batch, all-reduced grads), 2 processes × 1 CPU device",
            "step:set",
            "step:one",
            "1 process × 2 CPU devices",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    reps = rounds_from_argv(argv, __doc__)
    t0 = time.perf_counter()
    try:
        results = bench(reps)
    finally:
        BenchKernel.shutdown_all()
    return report(argv, rows(results), t0)


if __name__ == "__main__":
    sys.exit(main())
