"""Instant restarts: a restart takes the standby worker in place (or, when the kernel process must
be replaced, the spare kernel process), a crash takes the standby worker, and what was compiled
before a restart comes from the persistent cache after it.

How fast that is belongs in bench/bench_restart.py; here only that it happens, as a frontend
sees it (the new kernel and worker are the processes that were waiting, cache hits).
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Kernel, start_kernel, stop_kernel, worker_pids

PID = "import os; os.getpid()"

# A function no other test compiles, so the first call misses a new cache dir and later ones hit it.
COMPILE = """
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
f = jax.jit(lambda x: jnp.tanh(x @ x.T) * 3.5 + jnp.cos(x).sum())
f(jnp.ones((16, 16))).block_until_ready()
(events.count('/jax/compilation_cache/cache_hits'), events.count('/jax/compilation_cache/cache_misses'))
"""


def value(k: Kernel, code: str) -> object:
    return ast.literal_eval(k.ok(code).of("execute_result")[0]["data"]["text/plain"])


@pytest.fixture
def cached_kernel(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kernel]:
    """A kernel with a compilation cache of its own and a standby started as soon as it can be,
    restarting in place or (``max_in_place_restarts=0``) into its spare kernel process."""
    km, kc = start_kernel(
        [
            f"--WorkerManager.compilation_cache_dir={tmp_path / 'cache'}",
            "--WorkerManager.standby_delay=0",
            f"--JaxKernel.max_in_place_restarts={getattr(request, 'param', 100)}",
        ],
        # As a notebook server does: a restart relaunches with this same environment. Without it
        # jupyter_client takes os.environ again, where pytest has changed PYTEST_CURRENT_TEST, and
        # a spare started for another environment is (rightly) not used.
        env=dict(os.environ),
    )
    k = Kernel(km, kc)
    yield k
    if km.is_alive():
        stop_kernel(km, kc)


def wait_for(check: Callable[[], object], what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.2)
    return got


def spare_process(k: Kernel) -> int:
    """The provisioner's spare kernel process, once it has a standby worker of its own."""
    spare = wait_for(lambda: k.km.provisioner._spare, "the provisioner started a spare kernel process")
    pid = spare.process.pid  # type: ignore[attr-defined]
    wait_for(lambda: worker_pids(pid), "the spare kernel process started its standby worker")
    return int(pid)


@pytest.mark.parametrize("cached_kernel", [100, 0], ids=["in place", "new process"], indirect=True)
def test_restart_takes_the_warm_processes_and_compiles_from_the_cache(
    cached_kernel: Kernel, tmp_path: Path
) -> None:
    k = cached_kernel
    hits, misses = value(k, COMPILE)  # type: ignore[misc]
    assert hits == 0 and misses >= 1
    assert any((tmp_path / "cache").iterdir()), "nothing was written to the compilation cache"
    k.ok("before_restart = 1")
    kernel_pid = k.km.provisioner.pid
    worker_pid = value(k, PID)
    in_place = "--JaxKernel.max_in_place_restarts=100" in k.km._launch_args["extra_arguments"]
    if in_place:  # the kernel's own standby worker takes over, in the same process
        (warm_worker,) = wait_for(
            lambda: [p for p in worker_pids(kernel_pid) if p != worker_pid], "a standby"
        )  # type: ignore[misc]
        warm_kernel = kernel_pid
    else:  # the spare kernel process, with its standby worker
        warm_kernel = spare_process(k)
        (warm_worker,) = worker_pids(warm_kernel)

    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=60)

    assert k.km.provisioner.spares_used == (0 if in_place else 1)
    assert k.km.provisioner.pid == warm_kernel
    assert (warm_kernel == kernel_pid) == in_place
    assert value(k, PID) == warm_worker != worker_pid
    assert k.run("before_restart").error["ename"] == "NameError"
    hits, misses = value(k, COMPILE)  # type: ignore[misc]
    assert hits >= 1 and misses == 0, "what was compiled before the restart was compiled again"


def test_a_crash_is_replaced_by_the_standby_worker(cached_kernel: Kernel) -> None:
    k = cached_kernel
    old = value(k, PID)
    kernel = k.km.provisioner.pid
    # The standby starts once the first worker is ready and no request is running.
    (standby,) = wait_for(lambda: [p for p in worker_pids(kernel) if p != old], "a standby worker started")  # type: ignore[misc]
    res = k.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert res.error["ename"] == "WorkerDied"
    assert value(k, PID) == standby
    assert value(k, "import sys; 'jax' in sys.modules") is True  # the standby had imported jax


def test_new_jax_settings_take_the_standby_worker(cached_kernel: Kernel) -> None:
    k = cached_kernel
    old = value(k, PID)
    kernel = k.km.provisioner.pid
    (standby,) = wait_for(lambda: [p for p in worker_pids(kernel) if p != old], "a standby worker started")  # type: ignore[misc]
    k.ok("import jax; jax.numpy.zeros(1)")  # the backend starts: x64 can no longer change in place
    res = k.ok("%load_jax --x64")
    assert "Replacing the worker" in res.stderr
    assert value(k, PID) == standby
    assert value(k, "import jax; jax.numpy.zeros(1).dtype.name") == "float64"


def test_no_standby_when_turned_off() -> None:
    km, kc = start_kernel(["--WorkerManager.standby=False"])
    k = Kernel(km, kc)
    try:
        worker = value(k, PID)
        time.sleep(3)  # longer than standby_delay: one would have been started by now
        assert worker_pids(km.provisioner.pid) == [worker]
        k.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        assert value(k, PID) != worker
        assert len(worker_pids(km.provisioner.pid)) == 1
    finally:
        stop_kernel(km, kc)
