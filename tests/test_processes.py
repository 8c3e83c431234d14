"""A set of worker processes (multi-controller JAX) driven from one kernel, as a frontend sees it.

Loopback only.  Two processes with two CPU devices each, placed by ipyparallel's local launcher
and, where Debian's Open MPI is installed, by its MPI launcher (``mpirun`` on this host).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, execute, process_gone, request, shell_replies, start_kernel, stop_kernel

#: Open MPI refuses root and counts slots by cores; CI runs as root on 2 cores.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}
SET_TIMEOUT = 120

needs_mpi = pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")


def _value(res) -> str:  # noqa: ANN001 - a conftest Result
    return res.of("execute_result")[0]["data"]["text/plain"]


def _load_set(kernel: Kernel, launcher: str) -> str:
    return _load_set_of(kernel, f"%load_jax --processes 2 --launcher {launcher} --devices-per-process 2")


def _load_set_of(kernel: Kernel, line: str) -> str:
    """Run a %load_jax that starts a set; the table it shows."""
    res = kernel.ok(line, timeout=SET_TIMEOUT)
    _imports(kernel)
    return res.of("display_data")[0]["data"]["text/plain"]


def _imports(kernel: Kernel) -> None:
    """What every test here takes for granted, after a (re)start of the set."""
    kernel.ok("import jax, jax.numpy as jnp", timeout=SET_TIMEOUT)


def _member_pids(kernel: Kernel) -> list[int]:
    res = kernel.ok("import os, sys; print(f'pid={os.getpid()}', file=sys.stderr)")
    return sorted(int(part.split("pid=")[1]) for part in res.stderr.splitlines())


@pytest.fixture(scope="module", params=["local", pytest.param("mpi", marks=needs_mpi)])
def jset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One kernel per launcher, running a set of 2 processes x 2 CPU devices (in a folder of its own,
    which every process of the set can write)."""
    km, kc = start_kernel(env={**os.environ, **MPI_ENV}, cwd=str(tmp_path_factory.mktemp("set")))
    kernel = Kernel(km, kc)
    kernel.launcher = request.param  # type: ignore[attr-defined]
    kernel.table = _load_set(kernel, request.param)  # type: ignore[attr-defined]
    yield kernel
    stop_kernel(km, kc)


def test_load_shows_every_process_and_all_devices(jset: Kernel) -> None:
    table = jset.table  # type: ignore[attr-defined]
    assert "process_count: 2" in table and "device_count: 4" in table
    assert f"launcher: {jset.launcher}" in table  # type: ignore[attr-defined]
    assert "  0: " in table and "  1: " in table and "devices [0, 1]" in table
    res = jset.ok("import jax\n(jax.process_count(), jax.device_count(), jax.local_device_count())")
    assert _value(res) == "(2, 4, 2)"
    # Completion and inspection come from process 0 (one answer, not one per process).
    reply = request(jset.kc, "complete", "jax.process_co", 14)
    assert reply["status"] == "ok" and reply["matches"] == ["process_count"]
    reply = request(jset.kc, "inspect", "jax.process_index", 17)
    assert reply["found"] and "process" in reply["data"]["text/plain"]


def test_cross_process_psum_and_sharded_matmul_match_one_process(jset: Kernel) -> None:
    res = jset.ok(
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "summed = jax.pmap(lambda x: jax.lax.psum(x, 'i'), axis_name='i')(jnp.arange(2.0) + 2 * jax.process_index())\n"
        "mesh = Mesh(np.array(jax.devices()), ('d',))\n"
        "A = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 100\n"
        "B = np.linspace(-1, 1, 32 * 16, dtype=np.float32).reshape(32, 16)\n"
        "rows = A.reshape(2, 32, 32)[jax.process_index()]\n"
        "a = jax.make_array_from_process_local_data(NamedSharding(mesh, P('d', None)), rows)\n"
        "c = jax.jit(lambda a, b: a @ b, out_shardings=NamedSharding(mesh, P()))(a, B)\n"
        "one_process = jax.jit(lambda a, b: a @ b)(jnp.asarray(A), jnp.asarray(B))\n"
        "(a.shape, len(a.sharding.device_set), summed.tolist(),\n"
        " bool(np.allclose(np.asarray(c), np.asarray(one_process), rtol=1e-5)))"
    )
    assert _value(res) == "((64, 32), 4, [6.0, 6.0], True)"


def test_stdout_and_results_from_process_0_stderr_from_all(jset: Kernel) -> None:
    res = jset.ok(
        "import sys\nprint('out', jax.process_index())\nprint('err', jax.process_index(), file=sys.stderr)\n"
        "jax.process_index()"
    )
    assert res.stdout == "out 0\n"
    assert sorted(res.stderr.splitlines()) == ["[0] err 0", "[1] err 1"]
    assert _value(res) == "0"


def test_jax_output_chooses_whose_output_shows(jset: Kernel) -> None:
    try:
        res = jset.ok("%jax_output all")
        assert "every process" in res.stdout
        res = jset.ok("print('hi', jax.process_index())")
        assert sorted(res.stdout.splitlines()) == ["[0] hi 0", "[1] hi 1"]
        jset.ok("%jax_output 1")
        res = jset.ok("print('hi', jax.process_index())\njax.process_index()")
        assert res.stdout == "hi 1\n" and _value(res) == "1"
        bad = execute(jset.kc, "%jax_output 7")
        assert bad.reply["status"] == "error" and "usage: %jax_output all|0..1" in bad.reply["evalue"]
    finally:
        jset.ok("%jax_output 0")
    assert jset.ok("print('back')").stdout == "back\n"


def test_flushed_print_floods_from_every_process_all_arrive(jset: Kernel) -> None:
    # The members' sealed TCP wires are read like a worker's: a burst of small frames must not be left
    # in the kernel's buffer (the cell would never end).
    jset.ok("%jax_output all")
    try:
        for _ in range(5):
            res = jset.ok("for i in range(3000):\n    print('line', i, flush=True)", timeout=SET_TIMEOUT)
            for k in (0, 1):
                got = [
                    int(line.split()[-1])
                    for line in res.stdout.splitlines()
                    if line.startswith(f"[{k}] line ")
                ]
                assert got == list(range(3000)), f"process {k}: {len(got)} of 3000 lines"
            assert jset.ok("1 + 1").of("execute_result")
    finally:
        jset.ok("%jax_output 0")


def test_error_in_one_process_fails_the_cell_naming_it(jset: Kernel) -> None:
    jset.ok("kept = 'still here'")
    res = execute(jset.kc, "if jax.process_index() == 1:\n    raise ValueError('only in one')")
    assert res.reply["status"] == "error" and res.reply["ename"] == "ValueError"
    assert "[process 1]" in res.reply["evalue"]
    assert res.error is not None and res.error["traceback"][0] == "[process 1]"
    same = execute(jset.kc, "1 / 0")
    assert [e["traceback"][0] for e in same.of("error")] == ["[every process (0, 1)]"]
    assert _value(jset.ok("kept")) == "'still here'"


def test_input_is_asked_once_and_every_process_gets_the_answer(jset: Kernel) -> None:
    prompts: list[str] = []

    def answer(request: dict) -> str:
        prompts.append(request["prompt"])
        return ["bob", "alice"][len(prompts) - 1]

    # Process 1 asks only after the frontend has answered process 0: it must get the same answers.
    res = jset.run(
        "import sys, time\nif jax.process_index() == 1:\n    time.sleep(1)\n"
        "name = input('name? ')\nother = input('other? ')\n"
        "print(jax.process_index(), name, other, file=sys.stderr)",
        stdin=answer,
    )
    assert res.reply["status"] == "ok" and prompts == ["name? ", "other? "]
    assert sorted(res.stderr.splitlines()) == ["[0] 0 bob alice", "[1] 1 bob alice"]


def test_entry_points_run_across_the_set(jset: Kernel) -> None:
    res = jset.ok(
        "%jax pmap \"lambda x: jax.lax.psum(x, 'i')\" jnp.ones(2) --axis-name i --out psummed\n"
        "psummed.tolist()"
    )
    assert _value(res) == "[4.0, 4.0]"
    jset.ok(
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "import numpy as np\n"
        "mesh = Mesh(np.array(jax.devices()), ('d',))\n"
        "x = jax.make_array_from_process_local_data(\n"
        "    NamedSharding(mesh, P('d')), np.arange(4.0, dtype=np.float32) + 4 * jax.process_index())\n"
        "def twice_sum(v):\n    return jnp.sum(v * 2)\n"
        "if jax.process_index() == 0:\n"
        "    get_ipython().run_line_magic('jax_export', 'twice_sum x --out twice_sum.jax')\n"
        "from jax.experimental import multihost_utils\n"
        "multihost_utils.sync_global_devices('exported')"
    )
    res = jset.ok("%jax_program twice_sum.jax x --out total\nfloat(total)")
    assert _value(res) == str(2.0 * sum(range(8)))


def test_interrupt_reaches_every_process(jset: Kernel) -> None:
    pids = _member_pids(jset)
    msg_id = jset.kc.execute("import time\ntime.sleep(30)")
    time.sleep(1.0)
    started = time.monotonic()
    jset.km.interrupt_kernel()
    (reply,) = shell_replies(jset.kc, msg_id)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 3
    assert _member_pids(jset) == pids  # Python-level code stops in every process: the set is kept


def test_stuck_jitted_loop_is_interrupted_by_replacing_the_set(jset: Kernel) -> None:
    res_box: list = []
    code = (
        "spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, lambda i, v: jnp.sin(v) + 1.0, x))\n"
        "spin(1.0)"
    )
    runner = threading.Thread(target=lambda: res_box.append(execute(jset.kc, code, timeout=60)))
    runner.start()
    time.sleep(3.0)
    jset.km.interrupt_kernel()
    runner.join(60)
    res = res_box[0]
    assert res.reply["status"] == "error"
    assert "did not stop within" in res.reply["evalue"] and "set of 2" in res.reply["evalue"]
    assert "native code" in res.reply["evalue"], "the members' heartbeats are not output"
    assert _value(jset.ok("import jax\njax.process_count()", timeout=SET_TIMEOUT)) == "2"
    _imports(jset)


def test_crash_of_one_process_is_reported_and_the_set_replaced(jset: Kernel) -> None:
    old = _member_pids(jset)
    res = execute(
        jset.kc,
        "import os, signal, time\nif jax.process_index() == 1:\n    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(5)",
        timeout=SET_TIMEOUT,
    )
    assert res.reply["status"] == "error" and res.reply["ename"] == "WorkerDied"
    evalue = res.reply["evalue"]
    assert f"lost process 1 (pid {old[1]}" in evalue or f"lost process 1 (pid {old[0]}" in evalue
    assert "cannot lose a member" in evalue and "A fresh set of 2 processes was started" in evalue
    if jset.launcher == "local":  # type: ignore[attr-defined]  # the kernel is the members' parent
        assert "which was killed by SIGKILL" in evalue
    assert _value(jset.ok("import jax\njax.process_count()", timeout=SET_TIMEOUT)) == "2"
    _imports(jset)
    assert all(process_gone(pid, 5) for pid in old)


def test_each_member_gets_its_own_variables_back_after_a_member_dies(jset: Kernel) -> None:
    """Each process snapshots its own state (here: a value that differs per process, and a global
    array whose shards are spread over both), and the replacement set, of the same layout,
    restores each member's part."""
    jset.ok(
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax.sharding import NamedSharding, PartitionSpec as P\n"
        "mine = jax.process_index() * 10 + 7\n"
        "mesh = jax.make_mesh((4,), ('x',))\n"
        "spread = jax.make_array_from_callback((8,), NamedSharding(mesh, P('x')), lambda i: np.arange(8.0)[i])",
        timeout=SET_TIMEOUT,
    )
    before = _value(jset.ok("print('pid', jax.process_index()); (mine, float(jnp.sum(spread)))"))
    deadline = time.monotonic() + 60
    while "mine:" not in jset.ok("%jax_state").stdout + str(jset.ok("%jax_state").of("display_data")):
        assert time.monotonic() < deadline, "no snapshot of the set's variables"
        time.sleep(1.0)
    res = execute(
        jset.kc,
        "import os, signal, time\nif jax.process_index() == 1:\n    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(5)",
        timeout=SET_TIMEOUT,
    )
    assert "A fresh set of 2 processes was started and restored" in res.reply["evalue"], res.reply["evalue"]
    _imports(jset)
    assert _value(jset.ok("(mine, float(jnp.sum(spread)))", timeout=SET_TIMEOUT)) == before
    per_process = jset.ok("print('mine', jax.process_index(), mine, flush=True)", timeout=SET_TIMEOUT).stdout
    assert "mine 0 7" in per_process  # process 0's own value (process 1's stays in its own part)
    # The other way round: state saved by a set does not go into a single worker.
    moved = jset.ok("%load_jax --processes 1 --keep-state", timeout=SET_TIMEOUT)
    assert "could not be carried over" in moved.stderr, moved.stderr
    jset.table = _load_set(jset, jset.launcher)  # type: ignore[attr-defined]


def test_back_to_one_process_and_no_member_left(jset: Kernel) -> None:
    pids = _member_pids(jset)
    res = jset.ok("%load_jax --processes 1", timeout=SET_TIMEOUT)
    assert "process_count" not in res.of("display_data")[0]["data"]["text/plain"]
    assert _value(jset.ok("import jax\njax.process_count()")) == "1"
    assert all(process_gone(pid, 5) for pid in pids)
    jset.table = _load_set(jset, jset.launcher)  # type: ignore[attr-defined]


@pytest.mark.parametrize("launcher", ["local", pytest.param("mpi", marks=needs_mpi)])
def test_no_member_outlives_a_killed_kernel(launcher: str) -> None:
    km, kc = start_kernel(env={**os.environ, **MPI_ENV})
    kernel = Kernel(km, kc)
    try:
        _load_set(kernel, launcher)
        pids = _member_pids(kernel)
        kc.execute("import time; time.sleep(60)")  # busy in a cell, not waiting on the wire
        time.sleep(0.5)
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        assert all(process_gone(pid, 10) for pid in pids), "a set member outlived its kernel"
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_bad_set_requests_get_one_line_errors(jset: Kernel) -> None:
    for code, text in (
        ("%load_jax --processes 0", "processes must be between 1 and 1024"),
        ("%load_jax --processes 2 --launcher 'no such'", "launcher must be a launcher name"),
        ("%load_jax --processes 2 --host-devices 2", "a set of processes takes devices_per_process"),
        # Each member gets the per-worker limits: N members would take N times the host's share.
        ("%load_jax --processes 1024", "is more than this kernel allows (ProcessSet.max_processes = "),
    ):
        res = execute(jset.kc, code)
        assert res.reply["status"] == "error" and text in res.reply["evalue"], res.reply
    assert _value(jset.ok("jax.process_count()")) == "2"


def test_jax_load_request_makes_a_set_and_unknown_launchers_are_refused() -> None:
    from jax_kernel.client import JaxClient

    km, kc = start_kernel()
    kernel = Kernel(km, kc)
    client = JaxClient(kc, timeout=SET_TIMEOUT)
    try:
        kernel.ok("kept = 1")
        res = execute(kc, "%load_jax --processes 2 --launcher nosuch", timeout=SET_TIMEOUT)
        assert res.reply["status"] == "error"
        assert "launcher 'nosuch' is not allowed here (allowed: local, mpi)" in res.reply["evalue"]
        assert _value(kernel.ok("kept")) == "1"  # refused before the worker was replaced
        reply = client.load_jax(processes=2, devices_per_process=1)
        assert reply["status"] == "ok" and reply["worker_replaced"] is True, reply
        info = reply["info"]
        assert (info["process_count"], info["device_count"], info["launcher"]) == (2, 2, "local")
        assert [p["index"] for p in info["processes"]] == [0, 1]
        assert all(p["host"] and p["pid"] > 0 and len(p["devices"]) == 1 for p in info["processes"])
        assert _value(kernel.ok("import jax\njax.process_count()")) == "2"
    finally:
        stop_kernel(km, kc)


def _set_port() -> tuple[int, str]:
    """The port and key of the running set, from its connection file (tests own the runtime dir)."""
    import glob
    import json

    (path,) = glob.glob(os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], "jax-set-*", "connection.json"))
    with open(path) as f:
        info = json.load(f)
    return info["port"], info["key"]


@pytest.mark.parametrize("jset", ["local"], indirect=True)  # the wire is the same whatever the launcher
def test_connections_without_the_key_are_turned_away(jset: Kernel) -> None:
    import socket

    from jax_kernel.protocol import wire

    port, key = _set_port()
    for forged_key in (os.urandom(32), bytes.fromhex(key)):
        # Without the key the hello fails authentication; with it, the set is already complete.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            nonce = sock.recv(wire.NONCE_BYTES)
            conn = wire.SealedConnection(sock, forged_key, nonce, b"W")
            hello = {
                "type": "hello",
                "pid": 1,
                "protocol": wire.PROTOCOL_VERSION,
                "host": "x",
                "rank": 0,
                "port": 1,
            }
            try:
                conn.send(hello)
                assert conn.recv(timeout=10) is None, "a stranger got an answer"
            except (EOFError, ConnectionResetError):
                pass  # turned away: the kernel closed the connection
    assert _value(jset.ok("jax.process_count()")) == "2"


def _try_ports(ports: list[int]) -> str:
    """Cell code: ``out`` lists 'connected' or 'refused' for each loopback port."""
    return (
        "import socket\nout = []\n"
        f"for port in {ports!r}:\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=3).close()\n"
        "        out.append('connected')\n"
        "    except OSError:\n"
        "        out.append('refused')\n"
    )


def test_standard_members_share_the_kernels_egress_not_the_hosts_loopback(jset: Kernel) -> None:
    # Under standard every local member joins the kernel's user-mode egress namespace: they reach
    # each other there (the cross-process tests above), the kernel's own ports on the host do not.
    import shutil

    if shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns is not installed")
    assert "user-mode egress" in jset.ok("%sandbox").stdout
    ports = [jset.km.shell_port, jset.km.iopub_port]
    res = jset.ok(_try_ports(ports) + "import sys\nprint(out, file=sys.stderr)")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.endswith(str(["refused"] * len(ports))) for ln in lines), res.stderr


def test_a_member_that_forges_frames_loses_the_set(jset: Kernel) -> None:
    """Cell code in a member writing on its own wire (unsealed bytes) can't fool the kernel."""
    res = execute(
        jset.kc,
        "import os, struct, sys, time\n"
        "if jax.process_index() == 1:\n"
        "    args = open('/proc/self/cmdline').read().split('\\0')\n"
        "    fd = int(args[args.index('--member') + 1])\n"
        '    body = b\'{"type": "stream", "name": "stdout", "text": "forged"}\'\n'
        "    os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "time.sleep(5)",
        timeout=SET_TIMEOUT,
    )
    assert "forged" not in res.stdout
    assert res.reply["status"] == "error" and "lost process 1" in res.reply["evalue"]
    assert "failed authentication" in res.reply["evalue"]
    assert _value(jset.ok("import jax\njax.process_count()", timeout=SET_TIMEOUT)) == "2"
    _imports(jset)


@pytest.fixture(scope="module")
def strict_set() -> Iterator[Kernel]:
    """A set under the strict sandbox profile (no network but what the set needs), quick to call silent."""
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=strict", "--ProcessSet.heartbeat_timeout=3"])
    kernel = Kernel(km, kc)
    _load_set(kernel, "local")
    yield kernel
    stop_kernel(km, kc)


def _fixed_port_server():  # noqa: ANN202 - a socket
    import socket

    for port in range(20000, 20200):
        try:
            return socket.create_server(("127.0.0.1", port))
        except OSError:
            continue
    pytest.skip("no free port in 20000-20199")


def test_strict_profile_members_reach_each_other_and_nothing_else(strict_set: Kernel) -> None:
    # Members share a network namespace of their own: psum works, but neither a TCP port of the
    # host (another kernel's zmq port: the ephemeral range, where the Landlock rules once let them in)
    # nor a UDP socket of the host is reachable.
    import socket

    res = strict_set.ok("%sandbox")
    assert "the set's own network namespace" in res.stdout
    assert _value(
        strict_set.ok("jax.pmap(lambda x: jax.lax.psum(x, 'i'), axis_name='i')(jnp.ones(2)).tolist()")
    ) == ("[4.0, 4.0]")
    ports = [strict_set.km.shell_port, strict_set.km.iopub_port]
    with _fixed_port_server() as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(1.0)
        ports.append(server.getsockname()[1])
        code = (
            _try_ports(ports) + "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            f"    u.sendto(b'leak', ('127.0.0.1', {udp.getsockname()[1]}))\n"
            "except OSError:\n"
            "    pass\n"
            "print(out)"
        )
        res = execute(strict_set.kc, code)
        assert res.stdout == f"{['refused'] * len(ports)}\n", res.stdout
        with pytest.raises(OSError):  # a timeout: nothing arrived
            udp.recvfrom(16)
    assert _value(strict_set.ok("jax.process_count()")) == "2"


def test_a_silent_member_is_detected_and_the_set_replaced(strict_set: Kernel) -> None:
    pids = _member_pids(strict_set)
    os.kill(pids[1], signal.SIGSTOP)  # alive, connected, silent: a host that hangs
    try:
        res = execute(strict_set.kc, "import time\ntime.sleep(20)", timeout=SET_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[1], signal.SIGCONT)
    assert res.reply["status"] == "error" and "went silent: no heartbeat for 3 s" in res.reply["evalue"]
    assert _value(strict_set.ok("import jax\njax.process_count()", timeout=SET_TIMEOUT)) == "2"
    assert all(process_gone(pid, 5) for pid in pids)


def test_members_on_this_host_take_their_cores_through_leases() -> None:
    """With a leasing policy, each local process is pinned to its own leased core(s), as one worker is."""
    km, kc = start_kernel(extra_arguments=["--Accelerators.devices=auto"])
    kernel = Kernel(km, kc)
    try:
        table = _load_set_of(kernel, "%load_jax --processes 2 --devices-per-process 1")
        assert "lease: cores " in table
        res = kernel.ok("import os, sys\nprint(sorted(os.sched_getaffinity(0)), file=sys.stderr)")
        cores = sorted(line.split("] ", 1)[1] for line in res.stderr.splitlines())
        assert len(set(cores)) == 2, res.stderr  # two processes, two different cores
        kernel.ok("%load_jax --processes 1", timeout=SET_TIMEOUT)
        assert (
            _value(kernel.ok("import os\nlen(os.sched_getaffinity(0))")) == "1"
        )  # the single worker's lease again
    finally:
        stop_kernel(km, kc)


def test_restart_and_shutdown_leave_no_member() -> None:
    km, kc = start_kernel()
    kernel = Kernel(km, kc)
    try:
        _load_set_of(kernel, "%load_jax --processes 2")
        pids = _member_pids(kernel)
        km.restart_kernel()
        kc.wait_for_ready(timeout=60)
        assert all(process_gone(pid, 10) for pid in pids), "a set member outlived a kernel restart"
        assert _value(kernel.ok("import jax\njax.process_count()")) == "1"  # a restart starts one worker
        _load_set_of(kernel, "%load_jax --processes 2")
        pids = _member_pids(kernel)
    finally:
        stop_kernel(km, kc)
    assert all(process_gone(pid, 10) for pid in pids), "a set member outlived the kernel's shutdown"


def test_a_sets_members_share_one_task_limit(tmp_path: Path) -> None:
    """Sandbox.max_processes is the kernel's budget, not each member's: the local members of a set
    are in one parent cgroup with the limit one worker gets (two members once got twice the
    tasks, and 8 x 4096 was this host's pid_max).  Both members fork at once and hold their
    children; together they stay under the limit, and the set works afterwards."""
    limit = 200
    km, kc = start_kernel(extra_arguments=[f"--Sandbox.max_processes={limit}"], cwd=str(tmp_path))
    k = Kernel(km, kc)
    try:
        _load_set(k, "local")
        res = k.ok(
            "import os, sys, time\n"
            "r, w = os.pipe(); n = 0\n"
            "try:\n"
            f"    while n < {2 * limit}:\n"
            "        if os.fork() == 0:\n"
            "            os.close(w); os.read(r, 1); os._exit(0)\n"
            "        n += 1\n"
            "except OSError:\n"
            "    pass\n"
            "time.sleep(2)  # the other member forks meanwhile: both hold their children at once\n"
            "os.close(w)\n"
            "for _ in range(n):\n"
            "    os.wait()\n"
            "print(f'forked={n}', file=sys.stderr)",
            timeout=SET_TIMEOUT,
        )
        counts = [int(line.split("forked=")[1]) for line in res.stderr.splitlines() if "forked=" in line]
        assert len(counts) == 2 and 0 < sum(counts) < limit, (counts, res.stderr)
        assert _value(
            k.ok("jax.pmap(lambda x: jax.lax.psum(x, 'i'), axis_name='i')(jnp.ones(2)).tolist()")
        ) == ("[4.0, 4.0]")
    finally:
        stop_kernel(km, kc)


@pytest.mark.timeout(600)
def test_selftest_from_a_set_runs_once_and_every_process_returns(jset: Kernel) -> None:
    """Each process of the set runs ``%sandbox --selftest``; process 0's request starts the one
    battery and every process is told when it has ended (none waits forever)."""
    if jset.launcher != "local":  # type: ignore[attr-defined]
        pytest.skip("one launcher is enough: the kernel's side is the same")
    res = jset.run("%sandbox --selftest", timeout=600)
    assert res.reply["status"] == "ok", res.outputs
    assert res.stdout.count("contained or allowed by policy") == 1, res.stdout
    assert _value(jset.ok("import jax\njax.process_count()")) == "2"
