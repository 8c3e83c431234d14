"""Attacks on the processes jax-kernel starts, from a cell: none of them may run code the cell wrote.

A cell can write the notebook folder.  Every process the project starts with that folder as its
working directory (the kernel after a restart, the spare kernel process, each new worker before its
sandbox is on, both stages of a set member, ``python -m jax_kernel install``) must import nothing
from it, the kernel must import no launcher a cell names, and a worker whose sandbox is not in
force must be stopped before it runs a cell, whatever it reports.

Each planted module, if it ever runs, writes a marker into a folder that only code outside the
sandbox can write (the worker may write its notebook folder, its temp dir and caches, not this).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Kernel, execute, start_kernel, stop_kernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

SET_TIMEOUT = 120


def _plant(marker_dir: Path, name: str) -> str:
    """A module body that, when imported, leaves a marker naming the process, then fails."""
    return (
        "import os, sys\n"
        "try:\n"
        f"    open(os.path.join({str(marker_dir)!r}, {name!r} + '-' + str(os.getpid())), 'w')"
        ".write(' '.join(sys.argv))\n"
        "except OSError:\n"
        "    pass\n"
        f"raise ImportError('planted {name}')\n"
    )


def _plant_cell(marker_dir: Path) -> str:
    """A cell that plants a json.py, a package named like the kernel's lazy imports and like the
    kernel itself, and a launcher module, in the notebook folder."""
    files = {
        "json.py": _plant(marker_dir, "json"),
        "mymod.py": _plant(marker_dir, "mymod"),
        "ipyparallel/__init__.py": _plant(marker_dir, "ipyparallel"),
        "cryptography/__init__.py": _plant(marker_dir, "cryptography"),
        "jax_kernel/__init__.py": _plant(marker_dir, "jax_kernel"),
        "jax_kernel/worker/__init__.py": _plant(marker_dir, "jax_kernel.worker"),
    }
    return (
        "import os\n"
        f"for path, body in {files!r}.items():\n"
        "    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)\n"
        "    with open(path, 'w') as f:\n"
        "        f.write(body)\n"
        "sorted(os.listdir('.'))"
    )


@pytest.fixture
def marker_dir(tmp_path: Path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d


@pytest.fixture
def planted(tmp_path: Path, marker_dir: Path) -> Iterator[Kernel]:
    """A standard-profile kernel whose notebook folder a cell has filled with planted modules."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    # One restart in place, then into new processes (the spare, and the spare after it).
    # env: a restart relaunches with the same environment, as a notebook server's does.
    km, kc = start_kernel(["--JaxKernel.max_in_place_restarts=1"], env=dict(os.environ), cwd=str(notebooks))
    kernel = Kernel(km, kc)
    res = kernel.ok(_plant_cell(marker_dir))
    assert "json.py" in res.of("execute_result")[0]["data"]["text/plain"]
    kernel.notebooks = notebooks  # type: ignore[attr-defined]
    yield kernel
    if km.is_alive():
        stop_kernel(km, kc)


def _markers(marker_dir: Path) -> list[str]:
    return sorted(os.listdir(marker_dir))


def test_the_marker_folder_is_out_of_the_cells_reach(planted: Kernel, marker_dir: Path) -> None:
    # The decoy only means something if the worker itself can't write it.
    res = execute(planted.kc, f"open({str(marker_dir / 'from-cell')!r}, 'w')")
    assert res.reply["status"] == "error"
    assert res.reply["ename"] in ("PermissionError", "FileNotFoundError")  # FileNotFound: not in its /tmp
    assert _markers(marker_dir) == []


def test_a_cell_names_no_launcher_for_the_kernel_to_import(planted: Kernel, marker_dir: Path) -> None:
    planted.ok("kept = 'here'")
    for launcher in ("mymod:Cls", "slurm"):
        res = execute(planted.kc, f"%load_jax --processes 2 --launcher {launcher}", timeout=SET_TIMEOUT)
        assert res.reply["status"] == "error", res.reply
        assert "is not allowed here (allowed: local, mpi)" in res.reply["evalue"], res.reply["evalue"]
        assert "\n" not in res.reply["evalue"].strip()
    assert _markers(marker_dir) == []
    assert planted.ok("kept").of("execute_result")[0]["data"]["text/plain"] == "'here'"


def test_planted_modules_run_in_no_process_the_kernel_starts(planted: Kernel, marker_dir: Path) -> None:
    # A new worker from the standby refill (after a crash), a replacement for new JAX settings,
    # a restart in place, then the kernel after a restart into a new process (the spare kernel
    # process) and, after that, a restart into the spare started then.
    planted.run("import os; os._exit(3)")
    assert planted.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"
    planted.ok("%load_jax --x64", timeout=SET_TIMEOUT)
    assert planted.ok("import jax.numpy as jnp; jnp.ones(2).dtype.name").of("execute_result")
    first = planted.km.provisioner.pid
    planted.km.restart_kernel(now=False)  # in place
    planted.kc.wait_for_ready(timeout=60)
    assert planted.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"
    assert planted.km.provisioner.pid == first
    planted.km.restart_kernel(now=False)  # the spare started with the kernel
    planted.kc.wait_for_ready(timeout=60)
    assert planted.ok("1 + 1").of("execute_result")[0]["data"]["text/plain"] == "2"
    assert planted.km.provisioner.pid != first
    time.sleep(5)  # the spare started with that restart waits 3 s, then imports the kernel
    planted.km.restart_kernel(now=False)  # it (max_in_place_restarts counts per process)
    planted.kc.wait_for_ready(timeout=60)
    assert planted.ok("import json; json.__file__").of(
        "execute_result"
    )  # the cell's own import is its business
    assert _markers(marker_dir) == []


def test_install_run_in_a_planted_folder_imports_nothing_from_it(
    planted: Kernel, marker_dir: Path, tmp_path: Path
) -> None:
    # The installer as the README gives it (the console script), and as our kernelspec runs Python.
    # Plain `python -m jax_kernel` in a hostile folder is Python's own hole (it imports the package
    # and runpy's helpers from there before any of our code runs): the README says so.
    script = os.path.join(os.path.dirname(sys.executable), "jax-kernel")
    for i, argv in enumerate(([script], [sys.executable, "-P", "-m", "jax_kernel"])):
        proc = subprocess.run(
            [*argv, "install", "--prefix", str(tmp_path / "prefix"), "--name", f"jax-planted-{i}"],
            cwd=planted.notebooks,  # type: ignore[attr-defined]
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        spec = json.loads(
            (tmp_path / f"prefix/share/jupyter/kernels/jax-planted-{i}/kernel.json").read_text()
        )
        assert spec["argv"][1:3] == ["-P", "-m"]
    assert _markers(marker_dir) == []


def test_plain_python_m_drops_the_notebook_folder_before_its_own_imports(
    marker_dir: Path, tmp_path: Path
) -> None:
    # A launcher that runs `python -m jax_kernel` itself, in a folder with a planted stdlib module
    # that the kernel imports only later (json): our __main__ takes the folder off sys.path first.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "json.py").write_text(_plant(marker_dir, "json"))
    proc = subprocess.run(
        [sys.executable, "-m", "jax_kernel", "install", "--prefix", str(tmp_path / "p"), "--name", "jax-j"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert _markers(marker_dir) == []


def test_planted_packages_reach_neither_the_kernel_nor_a_set_member(
    planted: Kernel, marker_dir: Path
) -> None:
    # The first set request makes the kernel import ipyparallel (and the sealed wire, cryptography);
    # each member starts in the notebook folder and imports json before it is sandboxed.
    planted.ok("%load_jax --processes 2 --devices-per-process 1", timeout=SET_TIMEOUT)
    res = planted.ok("import jax\njax.process_count()", timeout=SET_TIMEOUT)
    assert res.of("execute_result")[0]["data"]["text/plain"] == "2"
    planted.ok("%load_jax --processes 1", timeout=SET_TIMEOUT)
    assert _markers(marker_dir) == []


LIAR = """\
import runpy
import jax_kernel.worker.sandbox as sandbox

def apply(policy):
    # What a module planted before the sandbox could do: skip it all and report strict, all active.
    sandbox.REPORT = {
        "profile": (policy or {}).get("profile", "off"),
        "active": {"no_new_privs": "set", "capabilities": "all dropped", "filesystem": "Landlock",
                    "seccomp": "deny-list filter", "network": "isolated"},
        "unavailable": {},
    }
    return sandbox.REPORT

sandbox.apply = apply
runpy.run_module("jax_kernel.worker", run_name="__main__")
"""


@pytest.mark.parametrize("profile", ["standard", "strict"])
def test_a_worker_that_forges_its_sandbox_report_runs_no_cell(tmp_path: Path, profile: str) -> None:
    liar = tmp_path / "liar.py"
    liar.write_text(LIAR)
    decoy = tmp_path / "decoy"
    decoy.write_text("untouched")
    km, kc = start_kernel(
        extra_arguments=[
            f"--Sandbox.profile={profile}",
            f"--WorkerManager.worker_argv={json.dumps([sys.executable, '-P', str(liar)])}",
        ]
    )
    try:
        for _ in range(2):  # and the next cell gets the same clear error, from a kernel still alive
            res = execute(kc, f"open({str(decoy)!r}, 'w').write('forged')", timeout=60)
            assert res.reply["status"] == "error", res.reply
            assert "sandbox is not in force" in res.reply["evalue"], res.reply["evalue"]
            assert "seccomp" in res.reply["evalue"] and "no_new_privs" in res.reply["evalue"]
            if profile == "standard" and shutil.which("slirp4netns"):  # it stayed on the host's network
                assert "the network namespace the kernel made for it" in res.reply["evalue"]
        assert decoy.read_text() == "untouched"
        assert km.is_alive()
    finally:
        stop_kernel(km, kc)


@pytest.fixture(scope="module")
def host_tmp() -> Iterator[dict[str, str]]:
    """Decoys in the host's /tmp: a file, a tmux-like socket with a server the test watches, and
    another kernel started as nbclient starts one, with its connection file in /tmp."""
    import socket
    import threading
    import uuid

    tag = uuid.uuid4().hex[:12]
    decoy = f"/tmp/jax-decoy-{tag}.txt"
    Path(decoy).write_text("host secret")
    sock_dir = f"/tmp/tmux-jaxtest-{tag}"
    os.mkdir(sock_dir, 0o700)
    server = socket.socket(socket.AF_UNIX)
    server.bind(f"{sock_dir}/default")
    server.listen(4)
    server.settimeout(0.2)
    connections: list[object] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                connections.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=watch, daemon=True).start()
    conn_file = f"/tmp/kernel-jaxtest-{tag}.json"
    km, kc = start_kernel(connection_file=conn_file)
    try:
        yield {
            "decoy": decoy,
            "socket": f"{sock_dir}/default",
            "connection_file": conn_file,
            "tag": tag,
            "other": Kernel(km, kc),  # type: ignore[dict-item]
            "connections": connections,  # type: ignore[dict-item]
        }
    finally:
        stop.set()
        stop_kernel(km, kc)
        server.close()
        for path in (decoy, f"{sock_dir}/default"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.rmdir(sock_dir)


@pytest.mark.parametrize("profile", ["standard", "strict"])
def test_a_worker_sees_a_tmp_of_its_own(host_tmp: dict, profile: str, tmp_path: Path) -> None:
    km, kc = start_kernel(extra_arguments=[f"--Sandbox.profile={profile}"], cwd=str(tmp_path))
    kernel = Kernel(km, kc)
    tag = host_tmp["tag"]
    try:
        assert os.path.exists(host_tmp["connection_file"])  # it is there, for code outside
        code = (
            "import os, socket\n"
            f"seen = [os.path.exists(p) for p in {[host_tmp['decoy'], host_tmp['connection_file']]!r}]\n"
            "try:\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect({host_tmp['socket']!r})\n"
            "    reached = True\n"
            "except OSError:\n"
            "    reached = False\n"
            "seen, reached, sorted(n for n in os.listdir('/tmp') if 'jaxtest' in n or 'jax-decoy' in n)"
        )
        assert kernel.ok(code).of("execute_result")[0]["data"]["text/plain"] == "([False, False], False, [])"
        assert host_tmp["connections"] == []
        # /tmp works as users expect, for this kernel alone: literal paths and tempfile, across cells.
        mine = f"/tmp/jax-cell-{tag}-{profile}"
        kernel.ok(f"import tempfile\nopen({mine!r}, 'w').write('mine')\nt = tempfile.mkstemp(dir='/tmp')[1]")
        res = kernel.ok(f"open({mine!r}).read(), open(t).read(), t.startswith('/tmp/')")
        assert res.of("execute_result")[0]["data"]["text/plain"] == "('mine', '', True)"
        assert not os.path.exists(mine)
        other = host_tmp["other"].ok(f"import os; os.path.exists({mine!r})")
        assert other.of("execute_result")[0]["data"]["text/plain"] == "False"
        assert kernel.ok("import jax.numpy as jnp; float(jnp.ones(3).sum())").of("execute_result")
    finally:
        stop_kernel(km, kc)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cached_folder(root: Path, prefix: str) -> Path:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        folders = [p for p in root.iterdir() if p.name.startswith(prefix)] if root.exists() else []
        if folders and _files(folders[0]):
            return folders[0]
        time.sleep(0.2)
    raise AssertionError(f"no {prefix}* folder with entries in {root}")


def test_notebooks_do_not_share_a_compilation_cache(tmp_path: Path) -> None:
    # A standard notebook against a strict one, both with the same cache root (the default's shape):
    # JAX runs what it reads from its cache, so reading or writing another notebook's entries is
    # reading its data and running code in it.
    root = tmp_path / "cache"
    folders = {name: tmp_path / name for name in ("a", "b")}
    for folder in folders.values():
        folder.mkdir()
    common = [f"--WorkerManager.compilation_cache_dir={root}"]
    km_b, kc_b = start_kernel(extra_arguments=[*common, "--Sandbox.profile=strict"], cwd=str(folders["b"]))
    km_a, kc_a = start_kernel(extra_arguments=common, cwd=str(folders["a"]))
    b, a = Kernel(km_b, kc_b), Kernel(km_a, kc_a)
    jit = "import jax, jax.numpy as jnp\nf = jax.jit(lambda x: x * 3 + 2)\nfloat(f(jnp.ones(3)).sum())"
    try:
        assert b.ok(jit).of("execute_result")[0]["data"]["text/plain"] == "15.0"
        b_folder = _cached_folder(root, "strict-")
        before = _files(b_folder)
        names = sorted(before)
        code = (
            "import os\n"
            "out = []\n"
            f"for action, path in [('list', {str(root)!r}), ('list', {str(b_folder)!r}),\n"
            f"                     ('read', os.path.join({str(b_folder)!r}, {names[0]!r})),\n"
            f"                     ('write', os.path.join({str(b_folder)!r}, {names[0]!r})),\n"
            f"                     ('write', os.path.join({str(b_folder)!r}, 'planted'))]:\n"
            "    try:\n"
            "        if action == 'list':  # an error, or a listing without B's folder\n"
            f"            if {b_folder.name!r} not in os.listdir(path):\n"
            "                raise PermissionError('not there')\n"
            "        elif action == 'read':\n"
            "            open(path, 'rb').read()\n"
            "        else:\n"
            "            open(path, 'wb').write(b'forged')\n"
            "        out.append(action)\n"
            "    except OSError:\n"
            "        out.append('denied')\n"
            "out"
        )
        res = a.ok(code)
        assert res.of("execute_result")[0]["data"]["text/plain"] == str(["denied"] * 5)
        assert _files(b_folder) == before
        # Each keeps a working cache of its own, and B's next cell still runs its own function.
        assert a.ok(jit).of("execute_result")[0]["data"]["text/plain"] == "15.0"
        assert _files(_cached_folder(root, "standard-"))
        assert b.ok("float(f(jnp.ones(3)).sum())").of("execute_result")[0]["data"]["text/plain"] == "15.0"
    finally:
        stop_kernel(km_a, kc_a)
        stop_kernel(km_b, kc_b)


def test_the_policy_is_not_on_the_workers_command_line(planted: Kernel) -> None:
    # Any process of the host can read /proc/<pid>/cmdline: every hidden and writable path of the
    # policy was there for another notebook's cell to read.
    pid = planted.worker_pid()
    with open(f"/proc/{pid}/cmdline") as f:
        cmdline = f.read().replace("\0", " ")
    assert "jax_kernel.worker" in cmdline
    for text in ('"sandbox"', '"hidden"', '"writable"', "parent_pid"):
        assert text not in cmdline, cmdline
    assert planted.ok("1 + 1").of("execute_result")


def test_a_notebooks_matplotlib_config_reaches_no_other(tmp_path: Path) -> None:
    # MPLCONFIGDIR was one folder for every kernel: notebook A's matplotlibrc (which can name
    # programs and backends) was read by notebook B's worker, and by the user's own Python.
    km_a, kc_a = start_kernel(cwd=str(tmp_path))
    a = Kernel(km_a, kc_a)
    shared = os.path.join(os.environ["XDG_CACHE_HOME"], "matplotlib")
    try:
        res = a.ok(
            "import os, matplotlib\n"
            "mine = matplotlib.get_configdir()\n"
            "open(os.path.join(mine, 'matplotlibrc'), 'w').write('lines.linewidth: 42\\n')\n"
            "try:\n"
            f"    open(os.path.join({shared!r}, 'matplotlibrc'), 'w').write('lines.linewidth: 42\\n')\n"
            "    shared = 'written'\n"
            "except OSError:\n"
            "    shared = 'refused'\n"
            f"shared, mine != {shared!r}"
        )
        assert res.of("execute_result")[0]["data"]["text/plain"] == "('refused', True)"
        assert not os.path.exists(os.path.join(shared, "matplotlibrc"))
        km_b, kc_b = start_kernel(cwd=str(tmp_path))
        try:
            b = Kernel(km_b, kc_b)
            res = b.ok("import matplotlib\nmatplotlib.rcParams['lines.linewidth']")
            assert res.of("execute_result")[0]["data"]["text/plain"] == "1.5"
        finally:
            stop_kernel(km_b, kc_b)
        # A's own config is A's business: its next worker (same kernel) reads it, as Matplotlib would.
        res = a.ok("import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()")
        assert res.of("display_data")
    finally:
        stop_kernel(km_a, kc_a)


def test_config_a_later_process_runs_cant_be_planted_in_a_home_without_it(tmp_path: Path) -> None:
    """Notebooks in ``~`` and no ``~/.jupyter`` yet: a cell once wrote
    ``~/.jupyter/jax_kernel_config.py`` (Python the next kernel runs; it turned the sandbox off for
    every later kernel).  The same for a kernelspec in Jupyter's data dir (the user's next
    ``python3`` kernel), a ``.pth`` in the user site-packages (runs in every Python) and git's
    config under ``~/.config``.  The kernel makes those folders, empty, before the worker starts,
    so that they are bound read-only like the ones that existed."""
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "marker"  # only code outside the sandbox can write here
    marker.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "XDG_CONFIG_HOME")
    }
    env["HOME"] = str(home)
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=strict"], env=env, cwd=str(home))
    plants = {
        ".jupyter/jax_kernel_config.py": f"open({str(marker / 'config')!r}, 'w'); c.Sandbox.profile = 'off'\n",
        ".local/share/jupyter/kernels/python3/kernel.json": '{"argv": ["sh", "-c", "touch marker"]}',
        f".local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages/evil.pth": (
            f"import os; open({str(marker / 'pth')!r}, 'w')\n"
        ),
        ".config/git/config": "[core]\n\tfsmonitor = touch marker\n",
    }
    try:
        res = execute(
            kc,
            "import os\nout = {}\n"
            f"for path, body in {plants!r}.items():\n"
            "    try:\n"
            "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            "        open(path, 'w').write(body); out[path] = 'written'\n"
            "    except OSError as e:\n"
            "        out[path] = e.strerror\n"
            "print(out)",
        )
        assert res.reply["status"] == "ok", res.outputs
        got = eval(res.stdout)  # noqa: S307
        assert "written" not in got.values(), got
        for path in plants:
            assert not (home / path).exists(), path
        assert (home / ".jupyter").is_dir() and not os.listdir(home / ".jupyter")  # a placeholder
        assert "config_locations" in execute(kc, "%sandbox").stdout
        assert execute(kc, "6 * 7").reply["status"] == "ok"
    finally:
        stop_kernel(km, kc)
    # The next kernel in that home runs under the policy it was given.
    km, kc = start_kernel(extra_arguments=["--Sandbox.profile=strict"], env=env, cwd=str(home))
    try:
        assert "Sandbox profile: strict" in execute(kc, "%sandbox").stdout
    finally:
        stop_kernel(km, kc)
    assert not os.listdir(marker)
