"""The hostile-cell battery: each attack is contained AND the kernel answers the next cell.

Every test drives the real kernel.  A test that needs a primitive this host lacks
(Landlock, seccomp, a cgroup we may create, ...) skips with the reason the worker gave,
taken from its own report (``kernel_info_reply["sandbox"]``), so CI on a weaker host
skips instead of failing.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Kernel, kernel_command_line, request, start_kernel, stop_kernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

SECRET_ENV = {"JAX_KERNEL_TEST_SECRET": "hunter2", "JPY_TEST_VAR": "jpy", "MY_API_TOKEN": "tok"}
CPU_LIMIT = 3
FILE_LIMIT = 10 << 20
PROC_LIMIT = 200


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable folder (like a home with notebooks) that holds a hidden one."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A folder the worker can see but not write: the host's /tmp is not in its view (a private
    /tmp), so not under tmp_path."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="jax-kernel-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def secret_dir(workdir: Path) -> Path:
    (workdir / ".bashrc").write_text("# a dot-file the worker must not change\n")
    d = workdir / "secrets"
    d.mkdir()
    (d / "key").write_text("top secret")
    return d


@pytest.fixture(scope="module")
def limited(secret_dir: Path, workdir: Path) -> Iterator[Kernel]:
    """A standard-profile kernel with small limits set by the test, as a deployer would."""
    notebooks = workdir / "notebooks"
    notebooks.mkdir(exist_ok=True)
    km, kc = start_kernel(
        cwd=str(notebooks),
        extra_arguments=[
            "--Sandbox.memory_limit=1G",
            f"--Sandbox.max_file_size={FILE_LIMIT}",
            f"--Sandbox.max_processes={PROC_LIMIT}",
            f"--Sandbox.hidden_paths={json.dumps([str(secret_dir), '~/.ssh'])}",
            f"--Sandbox.writable_paths={json.dumps([str(workdir)])}",
        ],
        env={**os.environ, **SECRET_ENV},
    )
    yield Kernel(km, kc)
    stop_kernel(km, kc)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    km, kc = start_kernel(
        extra_arguments=["--Sandbox.profile=strict"], cwd=str(tmp_path_factory.mktemp("nb"))
    )
    yield Kernel(km, kc)
    stop_kernel(km, kc)


def sandbox_info(k: Kernel) -> dict:
    res = k.run("1")  # the worker is up, so its report is in
    if res.reply["status"] != "ok":
        pytest.skip(f"no worker starts under this profile on this host: {evalue(res)}")
    return request(k.kc, "kernel_info")["sandbox"]


def need(k: Kernel, *protections: str) -> dict:
    info = sandbox_info(k)
    for p in protections:
        if p not in info.get("active", {}):
            pytest.skip(f"{p} unavailable on this host: {info.get('unavailable', {}).get(p, 'not applied')}")
    return info


def refused(res: Any) -> None:
    """The cell failed on a write the sandbox does not allow: Landlock's EACCES, or EROFS where
    the path is on the worker's read-only view of the host."""
    assert res.reply["status"] == "error", res.outputs
    assert res.reply["ename"] == "PermissionError" or "[Errno 30]" in res.reply["evalue"], evalue(res)


def alive(k: Kernel) -> None:
    """The kernel answers the next cell."""
    assert k.km.is_alive()
    assert k.ok("6 * 7").of("execute_result")[0]["data"]["text/plain"] == "42"


def fresh_worker(k: Kernel) -> None:
    """Replace the worker (to get one with no JAX backend and no threads yet)."""
    k.run("import os; os._exit(0)")
    k.ok("1")


def evalue(res) -> str:
    return f"{res.reply.get('ename')}: {res.reply.get('evalue')}"


def test_sandbox_magic_and_kernel_info(limited: Kernel) -> None:
    out = limited.ok("%sandbox").stdout
    assert "Sandbox profile: standard" in out
    info = sandbox_info(limited)
    assert info["profile"] == "standard"
    assert info["max_file_size"] == FILE_LIMIT
    assert info["memory_limit"] == 1 << 30
    assert set(info["active"]) | set(info["unavailable"]) >= {"filesystem", "seccomp", "rlimits"}


def test_worker_environment_is_scrubbed(limited: Kernel) -> None:
    env = limited.ok("import os, json; print(json.dumps(dict(os.environ)))").stdout
    env = json.loads(env)
    for key in SECRET_ENV:
        assert key not in env
    # Of Jupyter's JPY_* variables only the one every kernel has passes, naming the worker's parent.
    assert [k for k in env if k.startswith("JPY_")] == ["JPY_PARENT_PID"]
    assert "jax_kernel" in psutil.Process(int(env["JPY_PARENT_PID"])).cmdline()  # the kernel process
    assert env["TMPDIR"] != "/tmp" and os.path.isdir(env["TMPDIR"])
    assert "PATH" in env and "JAX_PLATFORMS" in env


def test_write_outside_allowed_paths_is_refused(limited: Kernel, outside: Path) -> None:
    need(limited, "filesystem")
    target = outside / "escaped.txt"
    refused(limited.run(f"open({str(target)!r}, 'w').write('escaped')"))
    assert not target.exists()
    # The working directory (the notebook's folder) and the private temp dir stay writable.
    limited.ok(
        "import os, tempfile\n"
        "open('sandbox-test-probe.txt', 'w').write('ok'); os.remove('sandbox-test-probe.txt')\n"
        "with tempfile.NamedTemporaryFile() as f: f.write(b'ok')"
    )
    alive(limited)


def test_connection_file_and_hidden_paths_are_unreadable(limited: Kernel, secret_dir: Path) -> None:
    need(limited, "filesystem")
    for path in (limited.km.connection_file, secret_dir / "key"):
        res = limited.run(f"print(open({str(path)!r}).read())")
        # FileNotFoundError: a connection file in the host's /tmp is not in the worker's /tmp at all.
        expected = (
            ("PermissionError", "FileNotFoundError")
            if str(path).startswith("/tmp/")
            else ("PermissionError",)
        )
        assert res.reply["ename"] in expected, evalue(res)
        assert "top secret" not in res.stdout and "key" not in res.stdout.lower()
    res = limited.run(f"import os; os.listdir({str(secret_dir)!r})")
    assert res.reply["ename"] == "PermissionError", evalue(res)
    alive(limited)


def test_folder_holding_a_hidden_path_stays_usable(limited: Kernel, workdir: Path) -> None:
    info = need(limited, "filesystem")
    if not info.get("masking", "").startswith("mount namespace"):
        pytest.skip(f"no mount namespace here: {info.get('masking')}")
    res = limited.ok(
        f"import os\n_cwd = os.getcwd()\nos.chdir({str(workdir)!r})\nopen('new-notebook-output.txt', 'w').write('ok')\n"
        "print(sorted(os.listdir('.')), sorted(os.listdir('/'))[:3])\nos.chdir(_cwd)"
    )
    assert "new-notebook-output.txt" in res.stdout and "secrets" in res.stdout
    assert (workdir / "new-notebook-output.txt").read_text() == "ok"
    res = limited.run(f"open({str(workdir / 'secrets' / 'key')!r}).read()")
    assert res.reply["ename"] == "PermissionError", evalue(res)
    alive(limited)


def test_code_and_dotfiles_inside_writable_folders_stay_read_only(limited: Kernel, workdir: Path) -> None:
    info = need(limited, "filesystem")
    if not info.get("masking", "").startswith("mount namespace"):
        pytest.skip(f"no mount namespace here: {info.get('masking')}")
    # Planted in the kernel's own package or a dot-file, code would run outside the sandbox later.
    import jax_kernel

    for target in (Path(jax_kernel.__file__).parent / "planted.py", workdir / ".bashrc"):
        res = limited.run(f"open({str(target)!r}, 'a').write('import os  # planted')")
        assert res.reply["status"] == "error", f"{target} was writable"
        assert "planted" not in (target.read_text() if target.exists() else "")
    alive(limited)


def test_xla_threads_are_under_the_same_restrictions(limited: Kernel, outside: Path, workdir: Path) -> None:
    need(limited, "filesystem")
    target = outside / "from-xla-thread.txt"
    fresh_worker(limited)
    res = limited.ok(
        "import threading, jax, jax.numpy as jnp\n"
        "jax.config.update('jax_num_cpu_devices', 2)\n"
        "main, seen = threading.get_native_id(), {}\n"
        "import os\n"
        "def escape(x):\n"
        "    r = []\n"
        "    try:\n"
        f"        open({str(target)!r}, 'w').write('escaped'); r.append('written')\n"
        "    except OSError as e:  # EROFS: outside the writable folders the host is read-only\n"
        "        r.append(e.errno)\n"
        "    try:  # the mount is writable here: Landlock alone refuses a symlink\n"
        "        os.symlink('/etc/passwd', 'xla-link'); r.append('linked')\n"
        "    except PermissionError:\n"
        "        r.append('refused')\n"
        "    seen[threading.get_native_id()] = tuple(r)\n"
        "    return x\n"
        "f = jax.pmap(lambda x: jax.pure_callback(escape, jax.ShapeDtypeStruct(x.shape, x.dtype), x))\n"
        "f(jnp.ones((2, 3))).block_until_ready()\n"
        "print(sorted(set(seen.values())), any(t != main for t in seen))"
    )
    assert res.stdout.strip() == "[(30, 'refused')] True", res.stdout
    assert not target.exists()
    assert not os.path.lexists(workdir / "notebooks" / "xla-link")
    alive(limited)


def test_kernel_cannot_be_signalled_traced_or_read(limited: Kernel) -> None:
    need(limited, "seccomp", "signals")
    kpid = limited.km.provisioner.process.pid
    res = limited.ok(
        "import ctypes, os, signal\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out = {}\n"
        "for name, fn in [\n"
        f"    ('kill', lambda: os.kill({kpid}, signal.SIGKILL)),\n"
        f"    ('environ', lambda: open('/proc/{kpid}/environ', 'rb').read()),\n"
        f"    ('mem', lambda: open('/proc/{kpid}/mem', 'rb').read(1)),\n"
        "]:\n"
        "    try:\n"
        "        fn(); out[name] = 'done'\n"
        "    except OSError as e:\n"
        "        out[name] = e.errno\n"
        f"out['ptrace'] = (libc.ptrace(16, {kpid}, 0, 0), ctypes.get_errno())\n"
        "print(out)"
    )
    out = eval(res.stdout)  # noqa: S307 - our own cell's repr
    assert out["kill"] == 1 and out["ptrace"] == (-1, 1), out
    assert out["environ"] in (1, 13) and out["mem"] in (1, 13), out
    alive(limited)


def test_namespace_and_mount_calls_are_refused(limited: Kernel) -> None:
    need(limited, "seccomp")
    res = limited.ok(
        "import ctypes, os, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def call(f, *a):\n"
        "    r = f(*a); return (r, ctypes.get_errno())\n"
        "out = {\n"
        "    'unshare': call(libc.unshare, 0x10000000),\n"
        "    'clone3': call(libc.syscall, 435, None, 0),\n"
        "    'mount': call(libc.mount, b'none', b'/mnt', b'tmpfs', 0, None),\n"
        "    'setns': call(libc.setns, 0, 0),\n"
        "}\n"
        "r = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUSER | SIGCHLD)\n"
        "if r == 0:\n"
        "    os._exit(0)\n"
        "out['clone_newuser'] = (r, ctypes.get_errno())\n"
        "out['subprocess'] = subprocess.run(['true']).returncode\n"
        "print(out)"
    )
    out = eval(res.stdout)  # noqa: S307
    assert out["unshare"] == (-1, 1) and out["mount"] == (-1, 1) and out["setns"] == (-1, 1), out
    assert out["clone3"] == (-1, 38), out  # ENOSYS: glibc falls back to clone
    assert out["clone_newuser"] == (-1, 1), out
    assert out["subprocess"] == 0, "plain fork/exec still works"
    alive(limited)


def test_root_worker_cannot_chmod_system_files(limited: Kernel) -> None:
    need(limited, "seccomp")
    if os.geteuid() != 0:
        pytest.skip("only a root worker owns the system's files")
    before = os.stat(sys.executable).st_mode
    limited.ok(f"import os; os.chmod({os.path.realpath(sys.executable)!r}, 0o4777)")
    assert os.stat(sys.executable).st_mode == before
    alive(limited)


@pytest.mark.parametrize("profile", ["standard", "strict"])
def test_no_acl_or_xattr_opens_a_host_file(profile: str, request: pytest.FixtureRequest) -> None:
    """Landlock does not govern setxattr or utime: as uid 0 a POSIX ACL made a root-owned 0600
    file in a folder the worker can't write readable by everyone (/etc/shadow, say), and its
    times could be set back.  The worker's / is read-only; the notebook folder is bound back."""
    k = request.getfixturevalue("limited" if profile == "standard" else "strict")
    need(k, "seccomp", "readonly_root")
    import tempfile

    # /var/tmp: the worker sees it (its /tmp is private) and may not write it.
    secret = Path(tempfile.mkdtemp(dir="/var/tmp")) / "secret"
    request.addfinalizer(lambda: (secret.unlink(), secret.parent.rmdir()))
    secret.write_text("decoy")
    secret.chmod(0o600)
    # ACL: user::rw-, group::r--, other::r-- (version 2, three entries), as setfacl writes it.
    acl = b"\x02\x00\x00\x00" + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + (0xFFFFFFFF).to_bytes(4, "little")
        for tag, perm in ((1, 6), (4, 4), (32, 4))
    )
    res = k.run(
        "import os\nout = {}\n"
        f"for name, value in (('system.posix_acl_access', {acl!r}), ('user.note', b'x')):\n"
        "    try:\n"
        f"        os.setxattr({str(secret)!r}, name, value); out[name] = 'set'\n"
        "    except OSError as e:\n"
        "        out[name] = e.errno\n"
        "import shutil, tempfile\nown = os.path.join(tempfile.mkdtemp(), 'own-file')\n"
        "open(own, 'w').close()\n"
        "try:\n"
        "    os.setxattr(own, 'user.note', b'x'); out['own'] = 'set'\n"
        "except OSError as e:\n"
        "    out['own'] = e.errno\n"
        "shutil.copy2(own, own + '-copy')  # copies without its xattrs, no error\n"
        f"for name, path in (('utime', {str(secret)!r}), ('own_utime', 'nb-file')):\n"
        "    open('nb-file', 'w').close()  # in the notebook folder\n"
        "    try:\n"
        "        os.utime(path, (0, 0)); out[name] = 'set'\n"
        "    except OSError as e:\n"
        "        out[name] = e.errno\n"
        "os.unlink('nb-file')\n"
        "print(out)"
    )
    assert res.reply["status"] == "ok", evalue(res)
    # setxattr: EPERM from seccomp; utime: EROFS, the host is read-only outside writable folders
    assert eval(res.stdout) == {  # noqa: S307
        "system.posix_acl_access": 1,
        "user.note": 1,
        "own": 1,
        "utime": 30,
        "own_utime": "set",
    }
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert os.listxattr(secret) == []
    assert secret.stat().st_mtime > 0
    alive(k)


def test_fork_bomb_is_contained(limited: Kernel) -> None:
    need(limited, "process_limit")
    fresh_worker(limited)
    res = limited.ok(
        "import os\n"
        "r, w = os.pipe(); n = 0; err = None\n"
        "try:\n"
        "    while n < 5000:\n"
        "        if os.fork() == 0:\n"
        "            os.close(w); os.read(r, 1); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    err = type(e).__name__\n"
        "os.close(w)\n"
        "for _ in range(n):\n"
        "    os.wait()\n"
        "print(n, err)"
    )
    n, err = res.stdout.split()
    assert int(n) < PROC_LIMIT and err == "BlockingIOError", res.stdout
    alive(limited)


def test_after_a_fork_bomb_the_next_cell_runs(limited: Kernel) -> None:
    """A bomb whose children never exit fills the task limit: the next cell could not even start
    a thread ("can't start new thread") until a restart.  The kernel kills what the cell forked."""
    need(limited, "process_limit")
    limited.ok("kept = 'still here'")
    res = limited.ok(
        "import os, time\n"
        "pids = []\n"
        "try:\n"
        "    while len(pids) < 5000:\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(3600); os._exit(0)\n"
        "        pids.append(pid)\n"
        "except OSError:\n"
        "    pass\n"
        "print(len(pids))"
    )
    forked = int(res.stdout.split()[0])
    assert forked > 0
    assert "hit the sandbox's process limit" in res.stderr and "child processes were killed" in res.stderr
    res = limited.ok(
        "import threading\nt = threading.Thread(target=print, args=('thread ran',)); t.start(); t.join()\n"
        "import jax.numpy as jnp\nprint(int(jnp.arange(4).sum()), kept)"
    )
    assert res.stdout.split("\n")[:2] == ["thread ran", "6 still here"], res.stdout
    alive(limited)


def _contained_memory(res) -> bool:
    text = evalue(res)
    return res.reply["status"] == "error" and (
        "MemoryError" in text or "RESOURCE_EXHAUSTED" in text or "memory limit" in text
    )


def test_memory_bomb_in_one_piece(limited: Kernel) -> None:
    need(limited, "memory_limit")
    res = limited.run("x = bytearray(64 << 30)")
    assert _contained_memory(res), evalue(res)
    res = limited.run(
        "import jax.numpy as jnp\ny = jnp.ones((8, 1 << 30), dtype=jnp.uint8).block_until_ready()"
    )
    assert _contained_memory(res), evalue(res)
    alive(limited)


def test_memory_bomb_in_1gib_chunks(limited: Kernel) -> None:
    need(limited, "memory_limit")
    res = limited.run("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 30))")
    assert _contained_memory(res), evalue(res)
    alive(limited)


def test_shared_memory_chunks_end_in_a_named_memory_limit_kill(limited: Kernel) -> None:
    # Shared mappings escape RLIMIT_DATA; only the cgroup catches them (with the OOM killer).
    info = need(limited, "memory_limit")
    if "cgroup" not in info["active"]["memory_limit"]:
        pytest.skip("no memory cgroup on this host: shared memory is not limited (RLIMIT_DATA only)")
    res = limited.run(
        "import ctypes, mmap\nchunks = []\nfor _ in range(64):\n"
        "    m = mmap.mmap(-1, 1 << 30); chunks.append(m)\n"
        "    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 1, len(m))",
        timeout=120,
    )
    assert res.reply["ename"] == "WorkerDied", evalue(res)
    assert "memory limit" in res.reply["evalue"] and "Sandbox.memory_limit" in res.reply["evalue"]
    alive(limited)


def test_disk_filler_stops_at_max_file_size(limited: Kernel) -> None:
    need(limited, "rlimits")
    res = limited.run(
        "import os, tempfile\npath = os.path.join(tempfile.gettempdir(), 'filler.bin')\n"
        "try:\n"
        "    with open(path, 'wb') as f:\n"
        "        for _ in range(100):\n"
        "            f.write(b'\\0' * (1 << 20)); f.flush()\n"
        "finally:\n"
        "    print(os.path.getsize(path)); os.remove(path)"
    )
    assert res.reply["ename"] == "OSError" and "File too large" in res.reply["evalue"], evalue(res)
    assert int(res.stdout.split()[0]) <= FILE_LIMIT
    alive(limited)


def test_cpu_time_limit_kills_a_runaway_cell() -> None:
    # A kernel of its own: a small per-cell CPU limit would also stop JAX-heavy cells of other
    # tests on a busy machine (XLA's threads spin while they wait for a core).
    km, kc = start_kernel(extra_arguments=[f"--Sandbox.cpu_time_limit={CPU_LIMIT}"])
    k = Kernel(km, kc)
    try:
        assert sandbox_info(k)["cpu_time_limit"] == CPU_LIMIT
        started = time.monotonic()
        res = k.run("while True:\n    pass", timeout=60)
        assert res.reply["ename"] == "WorkerDied", evalue(res)
        assert "CPU time limit" in res.reply["evalue"] and "Sandbox.cpu_time_limit" in res.reply["evalue"]
        assert time.monotonic() - started < 30
        alive(k)
    finally:
        stop_kernel(km, kc)


def test_network_is_cut_under_strict(strict: Kernel) -> None:
    info = need(strict, "network")
    assert info["allow_network"] is False
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        res = strict.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)")
        assert res.reply["status"] == "error" and "OSError" in res.reply["ename"] + str(
            res.reply["traceback"]
        )
        with pytest.raises(TimeoutError):
            listener.accept()
    res = strict.run(
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))"
    )
    assert res.reply["status"] == "error", "UDP is cut too"
    alive(strict)


def test_no_unix_sockets_under_strict(strict: Kernel, tmp_path: Path) -> None:
    need(strict, "seccomp")
    path = str(tmp_path / "host-service.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        res = strict.run(f"import socket\nsocket.socket(socket.AF_UNIX).connect({path!r})")
        assert res.reply["ename"] == "PermissionError", evalue(res)
    strict.ok("import socket\na, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'")
    alive(strict)


# A worker launcher that installs our seccomp filter first: unshare is then denied, as on a host
# without namespaces, so the worker can make neither its mount nor its network namespace.
NO_NAMESPACES = json.dumps(
    [
        sys.executable,
        "-c",
        "import ctypes, os, sys\n"
        "from jax_kernel.worker import sandbox\n"
        "try:\n"
        "    sandbox._no_new_privs(sandbox._Report('x')); sandbox._apply_seccomp(sandbox._Report('x'))\n"
        "except sandbox.Unavailable:\n"
        "    pass  # no seccomp here: strict refuses for that reason instead\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'jax_kernel.worker', *sys.argv[1:]])",
    ]
)


def test_standard_degrades_gracefully_without_namespaces(tmp_path: Path) -> None:
    km, kc = start_kernel(
        extra_arguments=["--Sandbox.allow_network=False", f"--WorkerManager.worker_argv={NO_NAMESPACES}"]
    )
    k = Kernel(km, kc)
    try:
        info = sandbox_info(k)
        assert "network" in info["unavailable"], info
        assert info["masking"].startswith("hidden paths carved out"), info
        assert "Unavailable on this host" in k.ok("%sandbox").stdout
        if "filesystem" in info["active"]:  # the Landlock carve-out still hides and confines
            assert k.run(f"open({km.connection_file!r}).read()").reply["ename"] == "PermissionError"
            assert k.run(f"open({str(tmp_path / 'x')!r}, 'w')").reply["ename"] == "PermissionError"
        k.ok("import tempfile\nwith tempfile.TemporaryFile() as f: f.write(b'ok')")
        alive(k)
    finally:
        stop_kernel(km, kc)


def test_strict_refuses_to_start_without_a_protection() -> None:
    # Without namespaces the strict profile can't cut the network and must refuse to run any cell.
    argv = NO_NAMESPACES
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=strict", f"--WorkerManager.worker_argv={argv}"])
    k = Kernel(km, kc)
    try:
        res = k.run("1")
        assert res.reply["status"] == "error"
        assert "strict" in res.reply["evalue"] and "cannot apply" in res.reply["evalue"], evalue(res)
        assert km.is_alive() and request(kc, "kernel_info")["status"] == "ok"
    finally:
        stop_kernel(km, kc)


def test_bad_policy_is_a_clear_error(tmp_path: Path) -> None:
    code, out = kernel_command_line(str(tmp_path / "k.json"), "--Sandbox.memory_limit=lots")
    assert code != 0, out
    assert "Sandbox.memory_limit: 'lots' is not a size" in out, out


def test_off_profile_applies_nothing_and_none_hides_accelerators(tmp_path: Path) -> None:
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=off"])
    k = Kernel(km, kc)
    try:
        assert "Sandbox profile: off" in k.ok("%sandbox").stdout
        k.ok(f"open({str(tmp_path / 'free.txt')!r}, 'w').write('no sandbox')")
        assert (tmp_path / "free.txt").exists()
    finally:
        stop_kernel(km, kc)
    km, kc = start_kernel(extra_arguments=["--Sandbox.accelerators=none"])
    k = Kernel(km, kc)
    try:
        out = k.ok(
            "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), os.environ['JAX_PLATFORMS'])"
        )
        assert out.stdout.split() == ["''", "cpu"]
        k.ok("import multiprocessing; multiprocessing.Lock()")  # /dev/shm is usable when allowed
    finally:
        stop_kernel(km, kc)


def test_device_requests_cannot_exceed_the_policy() -> None:
    from jax_kernel.policy.sandbox import Sandbox

    assert Sandbox(accelerators="all").refuse_device("cuda", 3) is None
    assert "allows no accelerators" in (Sandbox(accelerators="none").refuse_device("cuda", 0) or "")
    assert Sandbox(accelerators="none").refuse_device("cpu") is None
    two = Sandbox(accelerators="0,2")
    assert two.refuse_device("cuda", 2) is None
    assert "not among the allowed devices [0, 2]" in (two.refuse_device("cuda", 1) or "")
