"""Variables survive the worker: snapshots while idle, restored by the worker that replaces one.

Driven as a frontend would: a namespace a JAX user builds (numbers, strings, a dict of JAX arrays
that is an MLP's parameters, arrays on a chosen device and sharded over two, a NumPy array, a
function and a class defined in cells, a jitted function, a PRNG key, a mesh) plus two values no
one can save (a generator, an open file); then the worker dies each way a worker dies (its own
``os._exit``, SIGKILL, an interrupt it ignores, the memory limit), and after each the next cell
sees every saveable value equal (arrays bit-equal, on the same devices), while the cell's error
names exactly what was lost.  Also ``%jax_reset``, ``%load_jax --keep-state``, ``%jax_state``, a
tampered snapshot, a restart (which keeps nothing) and the kernel's end (which deletes it all).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Kernel, start_kernel, stop_kernel

pytestmark = pytest.mark.timeout(600)

NAMESPACE = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
count = 42
name = "jax-kernel"
rng = jax.random.key(0)
k1, k2 = jax.random.split(rng)
params = {"w1": jax.random.normal(k1, (8, 16)), "b1": jnp.zeros(16),
          "w2": jax.random.normal(k2, (16, 4)), "b2": jnp.full(4, 0.5, jnp.bfloat16)}
placed = jax.device_put(jnp.arange(8.0), jax.devices()[1])
mesh = Mesh(np.array(jax.devices()), ("x",))
sharded = jax.device_put(jnp.arange(16.0).reshape(4, 4), NamedSharding(mesh, P("x")))
table = np.arange(1000, dtype=np.float32).reshape(10, 100)
def mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
class Scaler:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        return x * self.k
scale = Scaler(3)
fast = jax.jit(mlp)
stream = (i for i in range(10))
log = open("keep-state-log.txt", "w")
"""
UNSAVEABLE = {"stream", "log"}

#: Everything that must come back, reduced to values a frontend can compare: digests of the
#: arrays' bytes with their dtypes and devices, what the function, class and jitted function give.
FINGERPRINT = """
import hashlib as _h
def _arr(v):
    return (str(v.dtype), tuple(v.shape), _h.sha256(np.asarray(v).tobytes()).hexdigest(),
            sorted(d.id for d in v.devices()))
(count, name, {k: _arr(v) for k, v in sorted(params.items())}, _arr(placed), _arr(sharded),
 str(sharded.sharding.spec), mesh.axis_names, [d.id for d in mesh.devices.flat],
 _h.sha256(table.tobytes()).hexdigest(), float(mlp(params, jnp.ones(8, jnp.float32)).sum()), scale(2),
 float(fast(params, jnp.ones(8, jnp.float32)).sum()), jax.random.key_data(rng).tolist())
"""


def value(k: Kernel, code: str) -> Any:
    return ast.literal_eval(k.ok(code).of("execute_result")[0]["data"]["text/plain"])


def fingerprint(k: Kernel) -> str:
    return k.ok(FINGERPRINT).of("execute_result")[0]["data"]["text/plain"]


def wait_snapshot(k: Kernel, names: set[str], timeout: float = 60, pause: float = 0.5) -> str:
    """Until ``%jax_state`` lists every name in a committed snapshot; its text.  Each look is a
    cell, which pre-empts the snapshot: ``pause`` leaves the worker idle long enough between them
    (a large NumPy array, which a cell may change in place, is hashed again after a pre-emption)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = k.ok("%jax_state")
        text = shown.stdout + "".join(c["data"].get("text/plain", "") for c in shown.of("display_data"))
        if all(re.search(rf"^\s+{re.escape(n)}:", text, re.M) for n in names):
            return text
        assert time.monotonic() < deadline, f"no snapshot with {sorted(names)} within {timeout} s:\n{text}"
        time.sleep(pause)


def saveable_names(k: Kernel) -> set[str]:
    names = value(
        k,
        "sorted(n for n in get_ipython().user_ns if not n.startswith('_') and n not in get_ipython().user_ns_hidden)",
    )
    return set(names) - UNSAVEABLE


def check_restored(k: Kernel, res: Any, expected: str, names: set[str]) -> None:
    """The dead worker's cell error says what came back and what did not; the next cell sees it."""
    assert res.reply["ename"] == "WorkerDied", res.reply
    evalue = res.reply["evalue"]
    m = re.search(r"A fresh worker restored (\d+) of (\d+) variables saved after cell \[(\d+)\]", evalue)
    assert m, evalue
    restored, total = int(m.group(1)), int(m.group(2))
    assert (restored, total) == (len(names), len(names) + len(UNSAVEABLE)), evalue
    lost = (
        set(re.findall(r"`(\w+)` \(", evalue.split("not restored:", 1)[1]))
        if "not restored:" in evalue
        else set()
    )
    assert lost == UNSAVEABLE, evalue
    assert "all variables were lost" not in evalue
    assert fingerprint(k) == expected


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    folder = tmp_path_factory.mktemp("notebook")
    km, kc = start_kernel(
        [
            "--WorkerManager.jax_settings=host_device_count=2",
            "--WorkerManager.interrupt_grace=1",
            "--Sandbox.memory_limit=2G",
        ],
        cwd=str(folder),
        env=dict(os.environ),
    )
    k = Kernel(km, kc)
    k.ok(NAMESPACE)
    yield k
    stop_kernel(km, kc)


@pytest.fixture(scope="module")
def expected(kept: Kernel) -> str:
    return fingerprint(kept)


def _die_and_check(k: Kernel, expected: str, kill_cell: str, **run: Any) -> None:
    names = saveable_names(k)
    wait_snapshot(k, names)
    res = k.run(kill_cell, **run)
    check_restored(k, res, expected, names)


def test_a_worker_that_exits_is_replaced_with_its_variables(kept: Kernel, expected: str) -> None:
    _die_and_check(kept, expected, "import os; os._exit(3)")


def test_a_worker_killed_with_sigkill_is_replaced_with_its_variables(kept: Kernel, expected: str) -> None:
    _die_and_check(kept, expected, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")


def test_a_stuck_jitted_loop_killed_after_the_interrupt_keeps_the_variables(
    kept: Kernel, expected: str
) -> None:
    names = saveable_names(kept)
    wait_snapshot(kept, names)
    threading.Timer(2.0, kept.km.interrupt_kernel).start()
    res = kept.run(
        "spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, lambda i, v: jnp.sin(v) + 1.0, x))\n"
        "spin(jnp.zeros(4)).block_until_ready()"
    )
    assert "did not stop within" in res.reply["evalue"]
    check_restored(kept, res, expected, names)


def test_a_worker_killed_by_the_memory_limit_keeps_the_variables(kept: Kernel, expected: str) -> None:
    info = kept.kc.kernel_info(reply=True)["content"]["sandbox"]
    if "cgroup" not in info.get("active", {}).get("memory_limit", ""):
        pytest.skip("no memory cgroup on this host: shared memory escapes RLIMIT_DATA")
    names = saveable_names(kept)
    wait_snapshot(kept, names)
    res = kept.run(
        "import ctypes, mmap\nchunks = []\nfor _ in range(64):\n"
        "    m = mmap.mmap(-1, 1 << 30); chunks.append(m)\n"
        "    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 1, len(m))",
        timeout=180,
    )
    assert "memory limit" in res.reply["evalue"]
    check_restored(kept, res, expected, names)


def test_a_cell_is_not_delayed_by_a_snapshot_in_progress(kept: Kernel) -> None:
    kept.ok("big = np.random.default_rng(0).random(100_000_000)")  # 800 MB: seconds to hash and write
    started = time.perf_counter()
    res = kept.ok("1 + 1")  # runs while the snapshot of `big` is being written
    assert time.perf_counter() - started < 1.0, "the cell waited for the snapshot"
    assert res.of("execute_result")[0]["data"]["text/plain"] == "2"
    wait_snapshot(kept, {"big"}, timeout=120, pause=5.0)
    kept.ok("del big")


def test_jax_state_shows_the_snapshot_and_what_it_skipped(kept: Kernel) -> None:
    kept.ok("another_stream = (i for i in range(3))\nanother_log = open('another-log.txt', 'w')")
    text = wait_snapshot(kept, {"params", "table"})
    deadline = time.monotonic() + 60
    while "another_stream" not in text:  # the snapshot of the cell that made them
        assert time.monotonic() < deadline, text
        time.sleep(0.5)  # idle time: what a snapshot needs
        text = wait_snapshot(kept, {"params", "table"})
    assert re.search(r"Snapshot after cell \[\d+\]", text), text
    assert "not saved: another_stream (generator: not saveable)" in text, text
    assert "not saved: another_log (TextIOWrapper (an open file): not saveable)" in text, text
    kept.ok("del another_stream, another_log")
    saved = kept.ok("%jax_state save")
    assert "Saved in" in saved.stdout


def test_a_tampered_snapshot_file_is_skipped_with_a_note(kept: Kernel) -> None:
    kept.ok("victim = np.arange(100_000.0)")  # 800 KB: its own .npy file, not inside a pickle
    wait_snapshot(kept, {"victim", "table"})
    kernel_pid = kept.km.provisioner.pid
    (folder,) = glob.glob(f"/tmp/jax-kernel-sandbox-{kernel_pid}-*/snapshots")
    npys = sorted(Path(folder).rglob("*.npy"), key=lambda p: p.stat().st_mtime)
    victim = npys[-1]  # the newest array file: victim's
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # one bit flipped by someone outside the worker
    victim.write_bytes(bytes(data))
    res = kept.run("import os; os._exit(3)")
    assert res.reply["ename"] == "WorkerDied"
    assert "victim" in res.reply["evalue"]  # named among what was not restored
    assert kept.run("victim").reply["ename"] == "NameError"
    assert value(kept, "int(table.sum())") == 499500  # the rest came back


def test_jax_reset_frees_device_buffers_and_keeps_the_variables(kept: Kernel, expected: str) -> None:
    for i in range(10):
        kept.ok(f"jnp.ones(1000) * {i}")  # results IPython keeps in Out: live buffers no name holds
    before = value(kept, "len(jax.live_arrays())")
    res = kept.ok("%jax_reset")
    text = res.stderr + res.stdout + "".join(c["data"]["text/plain"] for c in res.of("display_data"))
    assert "Restored" in text, text
    m = re.search(r"live JAX buffers: (\d+) before, (\d+) after", text)
    assert m, text
    assert int(m.group(2)) < int(m.group(1)) <= before + 5
    assert fingerprint(kept) == expected


def test_load_jax_keep_state_moves_the_variables_to_the_new_worker(kept: Kernel, expected: str) -> None:
    res = kept.ok("%load_jax --x64 --keep-state")
    text = res.stderr + "".join(c["data"].get("text/plain", "") for c in res.of("display_data"))
    assert "variables saved just now come back" in text and "Restored" in text, text
    assert value(kept, "jnp.ones(1).dtype.name") == "float64"
    assert fingerprint(kept) == expected


def test_a_restart_keeps_nothing_and_the_kernels_end_deletes_the_snapshots(tmp_path: Path) -> None:
    km, kc = start_kernel(cwd=str(tmp_path), env=dict(os.environ))
    k = Kernel(km, kc)
    kernel_pid = km.provisioner.pid
    try:
        k.ok("kept_across = 1")
        wait_snapshot(k, {"kept_across"})
        (folder,) = glob.glob(f"/tmp/jax-kernel-sandbox-{kernel_pid}-*/snapshots")
        assert any(Path(folder).rglob("*"))
        km.restart_kernel(now=False)
        assert k.run("kept_across").reply["ename"] == "NameError"
        assert not any(p.is_file() for p in Path(folder).rglob("*")), "a restart left the snapshot"
        k.ok("again = 2")
        wait_snapshot(k, {"again"})
    finally:
        stop_kernel(km, kc)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(kernel_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert glob.glob(f"/tmp/jax-kernel-sandbox-{kernel_pid}-*") == [], "a snapshot outlived its kernel"
