"""Device pinning, leases between kernels and the memory policy, seen from a frontend.

On this CPU-only host the leased units are cores: ``auto`` gives a worker one core of its own
(its affinity) and one JAX CPU device, ``N`` gives N of each.  Every test uses a lease dir of its
own, so kernels from other tests never hold what it asks for.
"""

from __future__ import annotations

import ast
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, kernel_command_line, start_kernel, stop_kernel

CORES = len(os.sched_getaffinity(0))

PLACEMENT = "import os, jax; (sorted(os.sched_getaffinity(0)), len(jax.devices()))"


def placement(k: Kernel) -> tuple[list[int], int]:
    """The worker's cores and its number of JAX devices."""
    return ast.literal_eval(k.ok(PLACEMENT).of("execute_result")[0]["data"]["text/plain"])


def kernel_with(*args: str) -> Kernel:
    return Kernel(*start_kernel(list(args)))


@pytest.fixture
def lease_dir(tmp_path: Path) -> str:
    return str(tmp_path / "leases")


@pytest.fixture
def kernels() -> Iterator[list[Kernel]]:
    """Kernels a test starts; all are shut down after it, the ones it killed included."""
    started: list[Kernel] = []
    yield started
    for k in started:
        if k.km.is_alive():
            stop_kernel(k.km, k.kc)
        else:
            k.kc.stop_channels()
            k.km.cleanup_resources()


@pytest.mark.skipif(CORES < 2, reason="needs two cores to lease one to each kernel")
def test_two_auto_kernels_get_different_cores(lease_dir: str, kernels: list[Kernel]) -> None:
    args = (f"--Accelerators.lease_dir={lease_dir}", "--Accelerators.devices=auto")
    kernels += [kernel_with(*args), kernel_with(*args)]
    (cores_a, devices_a), (cores_b, devices_b) = placement(kernels[0]), placement(kernels[1])
    assert len(cores_a) == len(cores_b) == 1
    assert cores_a != cores_b
    assert devices_a == devices_b == 1
    info = kernels[0].ok("%load_jax").of("execute_result")[0]["data"]["text/plain"]
    assert f"cores {cores_a[0]} (exclusive)" in info, info


@pytest.mark.skipif(CORES < 2, reason="needs two cores to pin a worker to two")
def test_load_jax_devices_pins_the_worker_to_that_many_cores(lease_dir: str, kernels: list[Kernel]) -> None:
    kernels.append(kernel_with(f"--Accelerators.lease_dir={lease_dir}"))
    k = kernels[0]
    assert placement(k) == (sorted(os.sched_getaffinity(0)), 1)  # 'all': no lease, no pinning
    res = k.ok("%load_jax --devices 2")
    assert "devices 2 are leased" in res.stderr
    cores, devices = placement(k)
    assert len(cores) == 2 and devices == 2
    assert sorted(f.split(".")[0] for f in os.listdir(lease_dir)) == sorted(
        [f"cpu-{c}" for c in cores] * 2  # exclusive: both sharing slots of each core
    )


def test_exclusive_lease_is_refused_by_name_and_freed_when_its_kernel_is_killed(
    lease_dir: str, kernels: list[Kernel]
) -> None:
    holder = kernel_with(f"--Accelerators.lease_dir={lease_dir}", "--Accelerators.devices=auto")
    asker = kernel_with(f"--Accelerators.lease_dir={lease_dir}")
    kernels += [holder, asker]
    (held,), _ = placement(holder)
    asker.ok("kept = 42")

    res = asker.run(f"%load_jax --devices {CORES}")
    assert res.reply["status"] == "error"
    assert res.error["ename"] == "DeviceLeaseError"
    holder_pid = holder.km.provisioner.pid
    assert f"core {held} is held by kernel pid {holder_pid}, exclusive" in res.error["evalue"]
    assert "The worker was kept as it was" in res.error["evalue"]
    assert asker.ok("kept").of("execute_result")[0]["data"]["text/plain"] == "42"

    os.kill(holder_pid, signal.SIGKILL)  # no shutdown, no cleanup: the OS drops its locks
    deadline = time.monotonic() + 10
    while holder.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    res = asker.ok(f"%load_jax --devices {CORES}")
    assert f"devices {CORES} are leased" in res.stderr
    assert placement(asker) == (sorted(os.sched_getaffinity(0)), CORES)


def test_shared_mode_caps_each_workers_memory(lease_dir: str, kernels: list[Kernel]) -> None:
    """A shared device's kernels each get at most 0.9 / max_sharing of it, and no preallocation."""
    k = kernel_with(f"--Accelerators.lease_dir={lease_dir}", "--Accelerators.mode=shared")
    kernels.append(k)
    env = "import os; [os.environ.get('XLA_PYTHON_CLIENT_' + v) for v in ('MEM_FRACTION', 'PREALLOCATE')]"

    def allocator() -> list[str | None]:
        return ast.literal_eval(k.ok(env).of("execute_result")[0]["data"]["text/plain"])

    assert allocator() == ["0.45", "false"]
    res = k.ok("%load_jax --memory-fraction 0.8")  # more than its share: held to it, no restart
    assert "memory_fraction 0.8 is over this kernel's share of a shared device; using 0.45" in res.stderr
    assert "Replacing the worker" not in res.stderr
    assert allocator() == ["0.45", "false"]
    k.ok("%load_jax --memory-fraction 0.2 --preallocate")
    assert allocator() == ["0.2", "true"]


def test_exclusive_policy_settings_reach_the_worker(kernels: list[Kernel]) -> None:
    k = kernel_with("--Accelerators.memory_fraction=0.3", "--Accelerators.allocator=platform")
    kernels.append(k)
    got = k.ok(
        "import os; [os.environ.get('XLA_PYTHON_CLIENT_' + v) for v in ('MEM_FRACTION', 'PREALLOCATE', 'ALLOCATOR')]"
    ).of("execute_result")[0]["data"]["text/plain"]
    assert ast.literal_eval(got) == ["0.3", None, "platform"]


def test_a_bad_device_policy_stops_the_kernel_with_a_clear_error(tmp_path: Path) -> None:
    code, out = kernel_command_line(str(tmp_path / "k.json"), "--Accelerators.mode=roomy")
    assert code != 0, out
    assert "Accelerators.mode must be 'exclusive' or 'shared', not 'roomy'" in out, out
