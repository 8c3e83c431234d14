"""Restarts that keep the kernel process: what a frontend sees, and what is reset.

jupyter_client's ``restart_kernel`` (JupyterLab's restart button, the console's ``%restart``)
and a raw ``shutdown_request(restart=True)``: the kernel process and its connection stay, the
worker is replaced by the standby, and everything a new kernel would have fresh is fresh: the
namespace, the execution count, comms (closed in the frontend), ``%load_jax`` settings, leases,
subshells; requests queued before the restart are aborted.  Without jax-kernel's provisioner, or
after ``JaxKernel.max_in_place_restarts``, a restart is a new process, as it always was.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import TIMEOUT, Kernel, execute, process_gone, start_kernel, stop_kernel, worker_pids
from jupyter_client import KernelManager

from bench.harness import control_request, create_subshell

PID = "import os; os.getpid()"


def value(k: Kernel, code: str) -> Any:
    return ast.literal_eval(k.ok(code).of("execute_result")[0]["data"]["text/plain"])


def drain(k: Kernel) -> None:
    while True:
        try:
            k.kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return


def statuses_after(k: Kernel, started: float, settle: float = 1.0) -> list[str]:
    """The IOPub execution states seen since the restart began (until ``settle`` s of quiet)."""
    seen = []
    while True:
        try:
            msg = k.kc.get_iopub_msg(timeout=settle)
        except queue.Empty:
            return seen
        if msg["msg_type"] == "status":
            seen.append(msg["content"]["execution_state"])


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    # As a notebook server does: a restart relaunches with the same environment.
    km, kc = start_kernel(env=dict(os.environ))
    k = Kernel(km, kc)
    yield k
    if km.is_alive():
        stop_kernel(km, kc)


@pytest.mark.timeout(300)
def test_a_restart_keeps_the_process_and_gives_a_fresh_worker_namespace_and_count(kernel: Kernel) -> None:
    k = kernel
    k.ok("before = 1")
    k.ok("2 + 2")
    kernel_pid, worker = k.km.provisioner.pid, value(k, PID)
    for now in (False, True):
        drain(k)
        started = time.monotonic()
        k.km.restart_kernel(now=now)
        # the usual sequence on IOPub, without a reconnect: restarting, then starting and idle
        seen = statuses_after(k, started)
        assert (
            seen.index("restarting") < seen.index("starting") < seen.index("idle", seen.index("starting"))
        ), seen
        res = k.ok("import jax.numpy as jnp; int(jnp.ones(3).sum())")
        assert res.reply["execution_count"] == 1
        assert res.of("execute_result")[0]["data"]["text/plain"] == "3"
        assert k.run("before").error["ename"] == "NameError"
        assert k.km.provisioner.pid == kernel_pid  # the same kernel process
        assert process_gone(worker), "the old worker outlived the restart"
        new_worker = value(k, PID)
        assert new_worker != worker
        worker = new_worker
        k.ok("before = 2")
    assert k.km.provisioner.in_place_restarts == 2
    assert len(worker_pids(kernel_pid)) <= 2  # the worker and its standby, nothing left behind


@pytest.mark.timeout(300)
def test_a_raw_restart_request_is_answered_and_two_in_a_row_leave_one_fresh_worker(kernel: Kernel) -> None:
    k = kernel
    k.ok("before = 1")
    kernel_pid = k.km.provisioner.pid
    # Two restart requests sent 0 ms apart, as an impatient frontend might.
    first = k.kc.session.msg("shutdown_request", {"restart": True})
    second = k.kc.session.msg("shutdown_request", {"restart": True})
    k.kc.control_channel.send(first)
    k.kc.control_channel.send(second)
    replies = {}
    while len(replies) < 2:
        reply = k.kc.get_control_msg(timeout=TIMEOUT)
        replies[reply["parent_header"]["msg_id"]] = reply["content"]
    assert (
        replies[first["header"]["msg_id"]]
        == replies[second["header"]["msg_id"]]
        == {
            "status": "ok",
            "restart": True,
        }
    )
    assert psutil.pid_exists(kernel_pid)
    res = k.ok("'before' in globals()")
    assert res.of("execute_result")[0]["data"]["text/plain"] == "False"
    assert res.reply["execution_count"] == 1
    time.sleep(1)
    assert len(worker_pids(kernel_pid)) <= 2


@pytest.mark.timeout(300)
def test_a_restart_during_a_cell_interrupts_it_aborts_the_queue_and_closes_widgets(kernel: Kernel) -> None:
    k = kernel
    k.ok("%load_jax --x64")  # settings asked for in the notebook: a restart forgets them
    k.ok("import ipywidgets as widgets\nslider = widgets.IntSlider()\ndisplay(slider)")
    slider = value(k, "slider.model_id")
    running = k.kc.execute("import time\ntime.sleep(60)")
    queued = k.kc.execute("print('queued before the restart')")
    time.sleep(0.5)
    drain_started = time.monotonic()
    k.km.restart_kernel(now=False)
    replies: dict[str, dict[str, Any]] = {}
    closed = []
    deadline = time.monotonic() + TIMEOUT
    while (len(replies) < 2 or slider not in closed) and time.monotonic() < deadline:
        try:
            reply = k.kc.get_shell_msg(timeout=0.1)
            replies[reply["parent_header"]["msg_id"]] = reply["content"]
        except queue.Empty:
            pass
        try:
            msg = k.kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            continue
        if msg["msg_type"] == "comm_close":
            closed.append(msg["content"]["comm_id"])
    assert time.monotonic() - drain_started < 30
    assert replies[running]["status"] == "error"  # interrupted (jupyter_client's SIGINT) or killed
    assert replies[queued]["status"] == "aborted"  # a new process would never have run it
    assert slider in closed, "the widget's comm was not closed in the frontend"
    assert value(k, "import jax.numpy as jnp; jnp.ones(1).dtype.name") == "float32"  # configured default


@pytest.mark.timeout(300)
def test_a_restart_returns_the_lease_and_deletes_subshells(tmp_path: Path) -> None:
    leases = str(tmp_path / "leases")
    km, kc = start_kernel([f"--Accelerators.lease_dir={leases}"], env=dict(os.environ))
    k = Kernel(km, kc)
    try:
        k.ok("%load_jax --devices 1")
        assert any(f.startswith("cpu-") for f in os.listdir(leases))
        sid = create_subshell(kc)
        km.restart_kernel(now=False)
        k.ok("1")
        # the configured policy ('all': no lease) again, and the lease files free for any kernel
        assert value(k, "import os; len(os.sched_getaffinity(0))") == len(os.sched_getaffinity(0))
        other = Kernel(*start_kernel([f"--Accelerators.lease_dir={leases}"]))
        try:
            taken = other.ok(f"%load_jax --devices {len(os.sched_getaffinity(0))}")
            assert "are leased" in taken.stderr
        finally:
            stop_kernel(other.km, other.kc)
        assert control_request(kc, "list_subshell_request", {})["subshell_id"] == []
        assert sid not in control_request(kc, "list_subshell_request", {})["subshell_id"]
    finally:
        stop_kernel(km, kc)


@pytest.mark.timeout(300)
def test_after_max_in_place_restarts_a_restart_is_a_new_process() -> None:
    km, kc = start_kernel(["--JaxKernel.max_in_place_restarts=1"], env=dict(os.environ))
    k = Kernel(km, kc)
    try:
        first = km.provisioner.pid
        km.restart_kernel(now=False)
        k.ok("1")
        assert km.provisioner.pid == first
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=TIMEOUT)
        assert k.ok("'fresh'").of("execute_result")[0]["data"]["text/plain"] == "'fresh'"
        assert km.provisioner.pid != first
        assert process_gone(first)
    finally:
        stop_kernel(km, kc)


@pytest.mark.timeout(300)
def test_without_the_provisioner_a_restart_is_a_new_process(tmp_path: Path) -> None:
    """What VS Code gets (it launches kernels itself): the kernel exits, as any kernel does."""
    spec_dir = tmp_path / "kernels" / "jax-plain"
    spec_dir.mkdir(parents=True)
    spec = json.loads((Path(sys.prefix) / "share/jupyter/kernels/jax/kernel.json").read_text())
    spec["metadata"].pop("kernel_provisioner")
    spec["argv"][0] = sys.executable
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path)}
    old_path = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(tmp_path)
    try:
        km = KernelManager(kernel_name="jax-plain")
        km.start_kernel(env=env)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=TIMEOUT)
        k = Kernel(km, kc)
        try:
            assert type(km.provisioner).__name__ == "LocalProvisioner"
            first = km.provisioner.pid
            k.ok("before = 1")
            msg = kc.session.msg("shutdown_request", {"restart": True})
            kc.control_channel.send(msg)
            assert kc.get_control_msg(timeout=TIMEOUT)["content"] == {"status": "ok", "restart": True}
            assert process_gone(first), "without the provisioner the process must exit on a restart"
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=TIMEOUT)
            assert (
                execute(kc, "'before' in globals()").of("execute_result")[0]["data"]["text/plain"] == "False"
            )
        finally:
            stop_kernel(km, kc)
    finally:
        if old_path is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old_path
        shutil.rmtree(tmp_path / "kernels", ignore_errors=True)


@pytest.mark.timeout(300)
def test_what_a_cell_started_does_not_outlive_a_restart(kernel: Kernel) -> None:
    k = kernel
    child = value(
        k, "import subprocess\np = subprocess.Popen(['sleep', '600'], start_new_session=True)\np.pid"
    )
    assert psutil.pid_exists(child)
    k.km.restart_kernel(now=False)
    k.ok("1")
    assert process_gone(child), "a process a cell started outlived the restart"


@pytest.mark.timeout(300)
def test_a_restart_of_a_kernel_configured_for_a_set_gives_a_fresh_set(tmp_path: Path) -> None:
    """A set that the configuration asks for (not %load_jax) is what a restart starts again."""
    km, kc = start_kernel(
        ["--WorkerManager.jax_settings=processes=2"], env=dict(os.environ), cwd=str(tmp_path)
    )
    k = Kernel(km, kc)
    try:
        members = "import jax, os, sys\nprint(f'pid={os.getpid()}', file=sys.stderr)\njax.process_count()"
        first = k.ok(members, timeout=120)
        assert first.of("execute_result")[0]["data"]["text/plain"] == "2"
        assert first.stderr.count("pid=") == 2, first.stderr
        old = [int(p.split("pid=")[1]) for p in first.stderr.split() if p.startswith("pid=")]
        k.ok("before = 1")
        km.restart_kernel(now=False)
        again = k.ok(members, timeout=120)
        assert again.of("execute_result")[0]["data"]["text/plain"] == "2"
        assert not {int(p.split("pid=")[1]) for p in again.stderr.split() if p.startswith("pid=")} & set(old)
        assert all(process_gone(pid) for pid in old), "a member of the old set outlived the restart"
        assert k.run("before", timeout=60).reply["ename"] == "NameError"
    finally:
        stop_kernel(km, kc)
