"""A cell can't change the rlimits, priority, CPU affinity or scheduling of other processes.

The kernel asks only for the same uid before ``prlimit64``, ``setpriority``, ``ioprio_set``
and ``sched_set*`` act on a pid, and every kernel and worker of a user share it: without the
seccomp rule a cell set another kernel's worker's CPU rlimit to 1 s, and that worker died.
Each attack targets a decoy the test started (and another real kernel's worker); the test,
outside any sandbox, reads the target's state back.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Kernel, start_kernel, stop_kernel
from test_sandbox import alive, need

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}

# Every call a cell could aim at another pid; prints {call: errno, or 0 if it succeeded}.
ATTACK = """
import ctypes, json, os, resource
pid = {pid}
libc = ctypes.CDLL(None, use_errno=True)
IOPRIO_SET = {{"x86_64": 251, "aarch64": 30}}[os.uname().machine]

def ioprio_set(which, who):
    if libc.syscall(IOPRIO_SET, which, who, (2 << 13) | 7) != 0:  # best-effort class, lowest
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

calls = {{
    "prlimit": lambda: resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1)),
    "prlimit_nofile": lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, 3)),
    "setpriority": lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
    "setpriority_pgrp": lambda: os.setpriority(os.PRIO_PGRP, os.getpgid(pid), 19),
    "sched_setaffinity": lambda: os.sched_setaffinity(pid, {{0}}),
    "sched_setscheduler": lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)),
    "sched_setparam": lambda: os.sched_setparam(pid, os.sched_param(0)),
    "ioprio_set": lambda: ioprio_set(1, pid),
    "ioprio_set_pgrp": lambda: ioprio_set(2, os.getpgid(pid)),
}}
out = {{}}
for name, call in calls.items():
    try:
        call()
        out[name] = 0
    except PermissionError as e:
        out[name] = "PermissionError"
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
"""

# What the worker may still do to itself: what Python, numpy and XLA's thread pools use.
SELF = """
import os, resource
os.sched_setaffinity(0, os.sched_getaffinity(0))
os.sched_setaffinity(os.getpid(), os.sched_getaffinity(0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.prlimit(0, resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
os.nice(0)
os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))
os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
print(resource.prlimit(1, resource.RLIMIT_CPU) is not None)  # reading another's limit is fine
"""

JAX = """
import jax, jax.numpy as jnp
x = jax.jit(lambda x: x @ x)(jnp.ones((64, 64)))
assert float(x[0, 0]) == 64.0
assert len(jax.devices()) == 4, jax.devices()
y = jax.pmap(lambda v: jax.lax.psum(v, "i"), axis_name="i")(jnp.arange(4.0))
print(float(x.sum()), [float(v) for v in y])
"""


def state(pid: int) -> dict[str, Any]:
    """What the attacks would change, read by the test (outside the sandbox)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    return {
        "limits": limits,
        "cpu": resource.prlimit(pid, resource.RLIMIT_CPU),
        "nice": os.getpriority(os.PRIO_PROCESS, pid),
        "affinity": os.sched_getaffinity(pid),
        "scheduler": os.sched_getscheduler(pid),
        "ioprio": libc.syscall(_IOPRIO_GET[os.uname().machine], 1, pid),
    }


@pytest.fixture(scope="module", params=["standard", "strict"])
def attacker(request: pytest.FixtureRequest) -> Iterator[Kernel]:
    km, kc = start_kernel(
        extra_arguments=[
            f"--Sandbox.profile={request.param}",
            "--WorkerManager.jax_settings=host_device_count=4",
        ]
    )
    yield Kernel(km, kc)
    stop_kernel(km, kc)


@pytest.fixture
def decoy() -> Iterator[int]:
    """A process of the same uid, in a process group of its own, that the cell must not touch."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def attack(k: Kernel, pid: int) -> dict[str, Any]:
    need(k, "seccomp")
    return json.loads(k.ok(ATTACK.format(pid=pid)).stdout)


def test_cell_cannot_change_another_process(attacker: Kernel, decoy: int) -> None:
    before = state(decoy)
    got = attack(attacker, decoy)
    assert got == dict.fromkeys(got, "PermissionError"), got
    assert state(decoy) == before
    alive(attacker)


def test_cell_cannot_change_another_kernels_worker(attacker: Kernel) -> None:
    km, kc = start_kernel()
    victim = Kernel(km, kc)
    try:
        pid = victim.worker_pid()
        before = state(pid)
        got = attack(attacker, pid)
        assert got == dict.fromkeys(got, "PermissionError"), got
        assert state(pid) == before
        # The victim's worker is the same process and still computes (with a 1 s CPU limit it died).
        victim.ok("import jax, jax.numpy as jnp\nfloat(jax.jit(lambda x: x @ x)(jnp.ones((64, 64))).sum())")
        assert victim.worker_pid() == pid
    finally:
        stop_kernel(km, kc)
    alive(attacker)


def test_worker_still_manages_itself_and_runs_jax(attacker: Kernel) -> None:
    need(attacker, "seccomp")
    assert attacker.ok(SELF).stdout.strip() == "True"
    out = attacker.ok(JAX).stdout
    assert out.split()[0] == str(64.0 * 64 * 64), out
    assert "[6.0, 6.0, 6.0, 6.0]" in out, out
    alive(attacker)


THREADS = """
import json, os, sys, jax, jax.numpy as jnp
jnp.ones((64, 64)).sum().block_until_ready()  # XLA's thread pools exist now
masks = {open(f'/proc/self/task/{t}/status').read().split('Cpus_allowed_list:')[1].split()[0]
         for t in os.listdir('/proc/self/task')}
print(json.dumps({"masks": sorted(masks), "cores": sorted(os.sched_getaffinity(0))}), file=sys.stderr)
"""


def placement(k: Kernel) -> dict[str, Any]:
    res = k.ok(THREADS)
    assert "could not pin" not in res.stderr, res.stderr
    return json.loads(res.stderr.splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to lease one")
def test_a_leased_worker_has_every_thread_on_its_cores(tmp_path: Any) -> None:
    """The worker may pin only itself now: the kernel pins its other threads from outside."""
    km, kc = start_kernel(["--Accelerators.devices=auto", f"--Accelerators.lease_dir={tmp_path}"])
    k = Kernel(km, kc)
    try:
        need(k, "seccomp")
        got = placement(k)
        assert len(got["masks"]) == 1 and len(got["cores"]) < len(os.sched_getaffinity(0)), got
        k.ok("%load_jax --devices 1")  # a new lease, taken up by the standby worker
        got = placement(k)
        assert len(got["masks"]) == 1 and len(got["cores"]) == 1, got
    finally:
        stop_kernel(km, kc)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to lease one to each process")
def test_leased_set_members_have_every_thread_on_their_cores(tmp_path: Any) -> None:
    """A member pins itself before it becomes a sandboxed worker, so its threads inherit the mask."""
    km, kc = start_kernel(["--Accelerators.devices=auto", f"--Accelerators.lease_dir={tmp_path}"])
    k = Kernel(km, kc)
    try:
        k.ok("%load_jax --processes 2 --devices-per-process 1", timeout=180)
        res = k.ok(THREADS, timeout=120)  # each member's stderr lines start with "[rank] "
        lines = [json.loads(line.split("] ", 1)[1]) for line in res.stderr.splitlines() if "] {" in line]
        assert len(lines) == 2, res.stderr
        for got in lines:
            assert len(got["masks"]) == 1 and len(got["cores"]) == 1, got
        assert lines[0]["cores"] != lines[1]["cores"], lines
    finally:
        stop_kernel(km, kc)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to lease one")
def test_a_leased_worker_cannot_widen_its_own_cores(tmp_path: Any) -> None:
    """sched_setaffinity on itself is allowed (seccomp), but its cpuset keeps it inside the lease."""
    km, kc = start_kernel(["--Accelerators.devices=auto", f"--Accelerators.lease_dir={tmp_path}"])
    k = Kernel(km, kc)
    try:
        need(k, "seccomp")
        code = (
            "import os, threading\n"
            "leased = sorted(os.sched_getaffinity(0))\n"
            "try:\n"
            "    os.sched_setaffinity(0, range(os.cpu_count()))\n"
            "except OSError:\n"
            "    pass\n"
            "seen = []\n"
            "t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))\n"
            "t.start(); t.join()\n"
            "(leased, sorted(os.sched_getaffinity(0)), seen[0], len(leased) < os.cpu_count())"
        )
        leased, after, thread, narrower = ast.literal_eval(
            k.ok(code).of("execute_result")[0]["data"]["text/plain"]
        )
        assert narrower and after == leased and thread == leased, (leased, after, thread)
        assert k.ok("1 + 1").of("execute_result")
    finally:
        stop_kernel(km, kc)


def test_a_worker_opens_only_its_leased_accelerators_device_files() -> None:
    """The standby's /dev holds every allowed accelerator; its lease is then enforced from outside
    (a devices cgroup).  No GPU here: two stand-in device files with an accelerator's name, whose
    nodes are /dev/full's and /dev/zero's, and a process in the worker's cgroups tries each."""
    import stat as statmod

    from jax_kernel.policy.sandbox import Sandbox, _own_cgroups

    if os.geteuid() != 0 or "devices" not in _own_cgroups():
        pytest.skip("no v1 devices cgroup controller this process can delegate (root, cgroup v1)")
    fakes = {"/dev/nvidia97": "/dev/full", "/dev/nvidia98": "/dev/zero"}
    if any(os.path.exists(f) for f in fakes):
        pytest.skip("this host has devices at the stand-ins' names")
    for fake, real in fakes.items():
        os.mknod(fake, statmod.S_IFCHR | 0o666, os.stat(real).st_rdev)
    try:
        ws = Sandbox(profile="standard").prepare_worker()
        try:
            assert set(fakes) <= set(ws.policy["fs"]["devices"])
            assert ws.restrict_devices(["/dev/nvidia98"])  # leased: 98 only
            probe = (
                "import json, os, sys\n"
                "for procs in json.loads(sys.argv[1]).values():\n"
                "    open(procs, 'w').write(str(os.getpid()))\n"
                "out = {}\n"
                "for path in ('/dev/nvidia97', '/dev/nvidia98', '/dev/null'):\n"
                "    try:\n"
                "        os.close(os.open(path, os.O_RDONLY)); out[path] = 'opened'\n"
                "    except OSError as e:\n"
                "        out[path] = e.strerror\n"
                "print(json.dumps(out))\n"
            )
            got = subprocess.run(
                [sys.executable, "-c", probe, json.dumps(ws.policy["cgroups"])],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert json.loads(got.stdout) == {
                "/dev/nvidia97": "Operation not permitted",
                "/dev/nvidia98": "opened",
                "/dev/null": "opened",
            }, got
        finally:
            ws.release(wait=True)
    finally:
        for fake in fakes:
            os.unlink(fake)
