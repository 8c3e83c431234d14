"""A warm first start: the server's pool of kernel processes (``JaxProvisioner.pool_size``).

The test process plays the Jupyter server: its provisioners share one pool.  After a launch, the
pool holds a kernel process (with a JAX-ready standby worker) for the next launch with the same
kernelspec command and environment; that launch takes it, and the kernel adopts the notebook's
folder and session name.  In another folder, the kernel's worker is made for that folder (its
sandbox follows the folder, not the pool's); a launch whose environment differs starts fresh.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Kernel, start_kernel, stop_kernel
from traitlets.config import Config

from jax_kernel.launch.pool import POOL

WITH_POOL = Config({"JaxProvisioner": {"pool_size": 1, "hot_spare": False}})


def value(k: Kernel, code: str) -> Any:
    return ast.literal_eval(k.ok(code).of("execute_result")[0]["data"]["text/plain"])


def pooled_pids() -> list[int]:
    return [e.process.pid for entries in POOL._warm.values() for e in entries if e.alive()]


def wait_pool_warm(timeout: float = 60) -> int:
    """The pooled kernel process, once it has started its standby worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in pooled_pids():
            try:
                children = psutil.Process(pid).children()
            except psutil.NoSuchProcess:
                continue
            if any("jax_kernel.worker" in " ".join(c.cmdline()) for c in children):
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no warm pooled kernel process within {timeout} s")


@pytest.fixture
def kernels() -> Iterator[list[Kernel]]:
    POOL.discard_all()  # what earlier launches in this process left warm (nbval's, for one)
    started: list[Kernel] = []
    yield started
    for k in started:
        if k.km.is_alive():
            stop_kernel(k.km, k.kc)
    POOL.discard_all()


def launch(kernels: list[Kernel], folder: Path, **env: str) -> Kernel:
    km, kc = start_kernel(env={**os.environ, **env}, cwd=str(folder), config=WITH_POOL)
    kernels.append(Kernel(km, kc))
    return kernels[-1]


@pytest.mark.timeout(300)
def test_a_launch_takes_the_warm_pooled_kernel_and_adopts_its_notebook(
    tmp_path: Path, kernels: list[Kernel]
) -> None:
    here = tmp_path / "project"
    here.mkdir()
    first = launch(kernels, here, JPY_SESSION_NAME=str(here / "one.ipynb"))
    assert first.km.provisioner.pooled_used == 0  # nothing was warm yet
    pooled = wait_pool_warm()
    second = launch(kernels, here, JPY_SESSION_NAME=str(here / "two.ipynb"))
    assert second.km.provisioner.pooled_used == 1
    assert second.km.provisioner.pid == pooled
    cwd, session, total = value(
        second, "import os, jax.numpy as jnp; (os.getcwd(), __session__, int(jnp.arange(4).sum()))"
    )
    assert (cwd, session, total) == (str(here), str(here / "two.ipynb"), 6)
    assert value(first, "__session__") == str(here / "one.ipynb")
    # It is a kernel like any other: a restart keeps it, in place.
    second.km.restart_kernel(now=False)
    assert value(second, "'cwd' in globals()") is False
    assert second.km.provisioner.pid == pooled


@pytest.mark.timeout(300)
def test_a_pooled_kernel_in_another_folder_gets_a_worker_made_for_that_folder(
    tmp_path: Path, kernels: list[Kernel]
) -> None:
    warmed, other = tmp_path / "warmed", tmp_path / "other"
    warmed.mkdir()
    other.mkdir()
    launch(kernels, warmed)
    pooled = wait_pool_warm()
    (warmed / "decoy.txt").write_text("only code outside the sandbox writes here")
    moved = launch(kernels, other)
    assert moved.km.provisioner.pid == pooled
    assert value(moved, "import os; os.getcwd()") == str(other)
    # The notebook folder is writable; the folder the pool was warmed in is not even there.
    moved.ok("open('mine.txt', 'w').write('ok')")
    assert (other / "mine.txt").read_text() == "ok"
    res = moved.run(f"open({str(warmed / 'decoy.txt')!r}, 'w').write('changed')")
    assert res.reply["status"] == "error"
    assert res.reply["ename"] in ("FileNotFoundError", "PermissionError")
    assert (warmed / "decoy.txt").read_text() == "only code outside the sandbox writes here"


@pytest.mark.timeout(300)
def test_a_launch_with_another_environment_does_not_take_the_pooled_kernel(
    tmp_path: Path, kernels: list[Kernel]
) -> None:
    launch(kernels, tmp_path)
    pooled = wait_pool_warm()
    different = launch(kernels, tmp_path, JAX_KERNEL_TEST_DIFFERENT="1")
    assert different.km.provisioner.pooled_used == 0
    assert different.km.provisioner.pid != pooled
    assert psutil.pid_exists(pooled)  # still there for a launch that matches


@pytest.mark.timeout(300)
def test_a_pooled_kernel_warmed_in_a_planted_folder_imports_nothing_from_it(
    tmp_path: Path, kernels: list[Kernel]
) -> None:
    """The pool warms its process in the last notebook's folder, which that notebook's cells
    write: modules planted there must not run in the pooled process, nor later in the kernel."""
    from test_sandbox_escape import _plant_cell

    notebooks, markers = tmp_path / "notebooks", tmp_path / "markers"
    notebooks.mkdir()
    markers.mkdir()
    attacker = launch(kernels, notebooks)
    assert "json.py" in attacker.ok(_plant_cell(markers)).of("execute_result")[0]["data"]["text/plain"]
    POOL.discard_all()  # a pooled process warmed after the planting, for the next launch here
    launch(kernels, notebooks)
    pooled = wait_pool_warm()
    victim = launch(kernels, notebooks)
    assert victim.km.provisioner.pid == pooled
    assert value(victim, "1 + 1") == 2
    victim.km.restart_kernel(now=False)
    assert value(victim, "2 + 2") == 4
    assert sorted(os.listdir(markers)) == []


@pytest.mark.timeout(300)
def test_the_link_to_the_provisioner_never_reaches_a_cell(tmp_path: Path, kernels: list[Kernel]) -> None:
    """Whoever held the kernel's link could tell the provisioner a restart kept the process."""
    k = launch(kernels, tmp_path)
    kernel = psutil.Process(k.km.provisioner.pid)
    fd = kernel.environ()["JAX_KERNEL_LINK_FD"]  # as it was at exec; the kernel removed it since
    link = os.stat(f"/proc/{kernel.pid}/fd/{fd}").st_ino  # the kernel's end of the socketpair
    in_env, inodes = value(
        k,
        "import os\n"
        "inodes = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        inodes.append(os.fstat(int(fd)).st_ino)\n"
        "    except OSError:\n"
        "        pass\n"
        "('JAX_KERNEL_LINK_FD' in os.environ, inodes)",
    )
    assert in_env is False
    assert link not in inodes, "the worker holds the kernel's end of the provisioner's link"
