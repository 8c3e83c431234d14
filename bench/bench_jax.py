#!/usr/bin/env python
"""Benchmark the JAX entry points: jitted work timed by ``%jax --time`` vs plain JAX, and message round trips.

Why this exists: ``%jax ... --time`` runs user functions in the worker, behind the kernel and
its wire.  Steady-state throughput there must match plain JAX in a plain ``python`` process
(target: at least 0.95 of it), and a trivial ``jax_transform_request`` must be cheap enough for
tools to call interactively.  Worker and plain-process trials alternate so machine noise hits
both sides alike; the ratio is computed from the medians of the per-trial medians.

Usage::

    python bench/bench_jax.py            # default sizes, a few minutes on 2 cores
    python bench/bench_jax.py --quick    # fewer runs and trials, about a minute

Prints a Markdown table.  The kernel it starts is shut down before it exits, even on error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from harness import JAX, BenchKernel
from tables import fmt_time as fmt
from tables import p10_p90, version

from jax_kernel.client import JaxClient

#: Defines the workloads; run as a cell in the worker and as the prelude of the plain process.
SETUP = """
import jax, jax.numpy as jnp

def matmul_chain(a, b):
    for _ in range(3):
        a = jnp.tanh(a @ b) * 0.5
    return a

def mlp_loss(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    logits = h @ w + b
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))

def mlp_step(params, x, y):
    grads = jax.grad(mlp_loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

_k = jax.random.split(jax.random.key(0), 8)
mm_a = jax.random.normal(_k[0], (2048, 2048), jnp.float32) / 45
mm_b = jax.random.normal(_k[1], (2048, 2048), jnp.float32) / 45
_sizes = [784, 1024, 1024, 10]
mlp_params = [
    (jax.random.normal(_k[2 + i], (m, n), jnp.float32) / m ** 0.5, jnp.zeros(n))
    for i, (m, n) in enumerate(zip(_sizes[:-1], _sizes[1:]))
]
mlp_x = jax.random.normal(_k[6], (256, 784), jnp.float32)
mlp_y = jax.nn.one_hot(jax.random.randint(_k[7], (256,), 0, 10), 10)

def ident(x):
    return x
"""

#: The plain-process side: the same setup, the same jit, the same timing loop as ``%jax --time``.
PLAIN = """
import json, statistics, sys, time
fn = jax.jit({fn})
args = ({args},)
jax.block_until_ready(fn(*args))
times = []
for _ in range({runs}):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
print("PLAINRESULT" + json.dumps(statistics.median(times)))
"""

WORKLOADS = {
    "matmul chain (3 x 2048x2048, tanh)": ("matmul_chain", "mm_a, mm_b"),
    "MLP train step (784-1024-1024-10, batch 256)": ("mlp_step", "mlp_params, mlp_x, mlp_y"),
}


class Kernel:
    """One `jax` kernel driven through jupyter_client, as a frontend would, and its JAX client."""

    def __init__(self) -> None:
        self.bench = BenchKernel(JAX)
        self.bench.start()
        assert self.bench.kc is not None
        self.jc = JaxClient(self.bench.kc, timeout=600)

    def run(self, code: str, timeout: float = 600) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """Run a cell that must succeed: its reply and outputs."""
        cell = self.bench.run(code, timeout)
        if cell.status != "ok":
            raise RuntimeError(f"cell failed: {code!r}: {cell.reply.get('evalue')}")
        return cell.reply, cell.outputs

    def shutdown(self) -> None:
        self.bench.shutdown()


def magic_time(k: Kernel, fn: str, args: str, runs: int) -> float:
    """Steady-state median of ``%jax jit FN ARGS --time --runs N`` (from its JSON report)."""
    _, outputs = k.run(f"%jax jit {fn} {args} --time --runs {runs}")
    reports = [c["data"]["application/json"] for t, c in outputs if t == "display_data"][-1]
    return float(reports["time"]["run_median_s"])


def plain_time(fn: str, args: str, runs: int) -> float:
    code = SETUP + PLAIN.format(fn=fn, args=args, runs=runs)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("PLAINRESULT"):
            return float(json.loads(line[len("PLAINRESULT") :]))
    raise RuntimeError(f"plain run failed: {out.stderr[-2000:]}")


def round_trips(k: Kernel, n: int) -> tuple[list[float], list[float]]:
    transform, execute = [], []
    for _ in range(5):  # warm both paths
        k.jc.transform("jit", "ident", "1.0")
        k.run("1")
    for _ in range(n):
        t0 = time.perf_counter()
        reply = k.jc.transform("jit", "ident", "1.0")
        transform.append(time.perf_counter() - t0)
        assert reply["status"] == "ok", reply
        t0 = time.perf_counter()
        k.run("1")
        execute.append(time.perf_counter() - t0)
    return transform, execute


def deciles(xs: list[float]) -> str:
    lo, hi = p10_p90(xs)
    return f"p10 {fmt(lo)}, p90 {fmt(hi)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and trials")
    parser.add_argument("--trials", type=int, help="alternating worker/plain trials per workload")
    parser.add_argument("--runs", type=int, help="timed calls per trial")
    parser.add_argument("--n", type=int, help="jax_transform_request round trips")
    opts = parser.parse_args(argv)
    trials = opts.trials or (2 if opts.quick else 5)
    runs = opts.runs or (5 if opts.quick else 20)
    n = opts.n or (50 if opts.quick else 300)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    rows = []
    try:
        k = Kernel()
        k.run(SETUP)
        for name, (fn, args) in WORKLOADS.items():
            kernel_s, plain_s = [], []
            for _ in range(trials):
                kernel_s.append(magic_time(k, fn, args, runs))
                plain_s.append(plain_time(fn, args, runs))
            km, pm = statistics.median(kernel_s), statistics.median(plain_s)
            ratio = pm / km
            verdict = "meets" if ratio >= 0.95 else "BELOW"
            rows.append(
                f"| {name}: `%jax jit --time` in the worker vs plain JAX | {fmt(km)} | {fmt(pm)} | "
                f"{ratio:.3f} ({verdict} target ≥ 0.95) | {trials} alternating trials × {runs} runs, median of medians |"
            )
        transform, execute = round_trips(k, n)
        rows.append(
            f"| trivial `jax_transform_request` round trip (`jit` of identity) | "
            f"{fmt(statistics.median(transform))} ({deciles(transform)}) | — | — | n = {n} |"
        )
        rows.append(
            f"| for reference: trivial `execute_request` (`1`) on the same kernel | "
            f"{fmt(statistics.median(execute))} ({deciles(execute)}) | — | — | n = {n}, interleaved with the above |"
        )
    finally:
        BenchKernel.shutdown_all()

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## bench_jax.py — {now}\n")
    print(
        f"Python {platform.python_version()}, jax {version('jax')}, jaxlib {version('jaxlib')}, "
        f"ipykernel {version('ipykernel')}, {os.cpu_count()} CPUs, JAX_PLATFORMS={os.environ['JAX_PLATFORMS']}, "
        f"`{' '.join(['bench/bench_jax.py', *(argv if argv is not None else sys.argv[1:])])}`\n"
    )
    print("| measurement | jax kernel | plain JAX | kernel / plain throughput | notes |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
